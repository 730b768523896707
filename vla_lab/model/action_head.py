"""LLM hidden states -> normalised actions: the bridge-attention L1 regression head (SPEC section 5).

``L1RegressionActionHead`` wraps ``MLPResNet``: a zero "action latent" of shape
(chunk, action_dim * width) goes through LayerNorm, fc1, ReLU, then one bridge-attention ``block``
per LLM layer, LayerNorm and fc2. Block b reads hidden_index b + 1 (the output of LLM ``layer`` b):
its task states and its action-query states.

In every block the chunk tokens x are the only queries. The keys and values are, in this order
(:data:`vla_lab.config.KEY_GROUPS`): x itself (``self``), the action-query states (``action_queries``)
and the proprio token (``proprio``) -- together upstream's "adapter" input -- and the task states
(``task``), whose logits are multiplied by tanh(gating_factor) before the softmax.

* v1 (``MLPResNetBlock``): one k/v projection shared by all key groups, no positions.
* Pro (``MLPResNetBlock_Pro``): k/v projections for self, adapter and task, and upstream's RoPE on
  the queries and on each of those three inputs over its own positions 0..K-1. ``film_gen`` is kept
  for the checkpoint layout but, as upstream, never used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vla_lab.config.attention import KEY_GROUPS
from vla_lab.errors import InputError

#: Called by every block with (block, attention weights (B, H, T, T + K_adapter + K_task), tanh(gate)).
BlockRecorder = Callable[[int, torch.Tensor, torch.Tensor], None]
#: How a dropped key group is taken out: ``zero`` sets its attention weights to 0 (the others keep
#: theirs), ``remove`` sets its logits to -inf (the softmax renormalises over the rest).
DROP_MODES = ("zero", "remove")
#: The three inputs a block projects to keys and values (the adapter input holds queries + proprio).
INPUTS = ("self", "adapter", "task")


def rope_tables(length: int, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's Pro-head cos/sin tables, (length, head_dim): positions built in ``inv_freq``'s dtype.

    Upstream pairs an interleaved rotation (even/odd dims, :func:`rotate_interleaved`) with tables laid
    out as ``[freqs, freqs]`` (half-split). The mismatch is part of what the released heads learnt, so it
    is reproduced exactly; in bf16 the positions themselves are rounded (257 becomes 256), as upstream.
    """
    t = torch.arange(length, device=inv_freq.device, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    table = torch.cat([freqs, freqs], dim=-1)
    return table.cos().to(dtype), table.sin().to(dtype)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    even, odd = x[..., ::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).reshape_as(x)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_interleaved(x) * sin


class UpstreamRoPE(nn.Module):
    """The Pro head's rotary frequencies as a module (:func:`rope_tables` builds the tables).

    ``inv_freq`` is a non-persistent buffer: casting the head to bf16 casts it too, and the positions
    are then built in bf16, as upstream does.
    """

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(length, self.inv_freq, dtype)


def key_group_columns(chunk: int, num_queries: int, num_proprio: int, num_task: int) -> dict[str, slice]:
    """Columns of each key group (:data:`KEY_GROUPS`) in a block's (T + K_adapter + K_task) attention row."""
    sizes = {"self": chunk, "action_queries": num_queries, "proprio": num_proprio, "task": num_task}
    columns, start = {}, 0
    for group in KEY_GROUPS:
        columns[group] = slice(start, start + sizes[group])
        start += sizes[group]
    return columns


def bridge_attention(
    q: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    gate: torch.Tensor,
    *,
    columns: Mapping[str, slice] | None = None,
    drop: Collection[str] = (),
    how: str = "zero",
    kernel: str = "eager",
    closed_task: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of the chunk queries on the self, adapter and task keys: (output (B, H, T, d), weights).

    ``keys`` / ``values`` are the three inputs' (B, H, K, d) projections in :data:`INPUTS` order; the task
    logits are multiplied by ``gate`` (tanh of the gating factor). ``kernel="eager"`` computes the
    weights as upstream does and returns them; ``drop`` takes key groups out (``how`` in
    :data:`DROP_MODES`; ``columns`` from :func:`key_group_columns` locates them). ``kernel="sdpa"``
    folds the gate into the task keys and calls SDPA: the same result, no weights (the fast path).
    ``closed_task`` (B, K_task) bool closes single task keys (True: the logit is -inf, the softmax renormalises
    over the rest), in either kernel.
    """
    fixed = keys[0].shape[2] + keys[1].shape[2]
    if closed_task is not None and closed_task.shape != (q.shape[0], keys[2].shape[2]):
        raise InputError(f"closed_task: got shape {tuple(closed_task.shape)}, expected "
                         f"{(q.shape[0], keys[2].shape[2])} (batch, task keys)")
    if kernel == "sdpa":
        if drop:
            raise InputError("drop: key groups can only be taken out with kernel='eager'")
        task_keys = keys[2] * gate.to(keys[2].dtype)
        mask = None
        if closed_task is not None:
            open_ = torch.ones(q.shape[0], fixed, dtype=torch.bool, device=q.device)
            mask = torch.cat([open_, ~closed_task.to(q.device)], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, torch.cat([keys[0], keys[1], task_keys], 2), torch.cat(list(values), 2),
                                             attn_mask=mask)
        return out, None
    scores = [q @ keys[0].transpose(-2, -1), q @ keys[1].transpose(-2, -1), (q @ keys[2].transpose(-2, -1)) * gate]
    logits = torch.cat(scores, dim=-1) / math.sqrt(q.shape[-1])
    if closed_task is not None:
        closed = torch.cat([torch.zeros(q.shape[0], fixed, dtype=torch.bool, device=q.device),
                            closed_task.to(q.device)], dim=1)
        logits = logits.masked_fill(closed[:, None, None, :], float("-inf"))
    if drop and how == "remove":
        logits = logits.clone()
        for group in drop:
            logits[..., _column(columns, group)] = float("-inf")
    weights = torch.softmax(logits, dim=-1)
    if drop and how == "zero":
        weights = weights.clone()
        for group in drop:
            weights[..., _column(columns, group)] = 0.0
    return weights @ torch.cat(list(values), dim=2), weights


def _column(columns: Mapping[str, slice] | None, group: str) -> slice:
    if columns is None or group not in columns:
        raise InputError(f"drop: got group {group!r}, expected one of {KEY_GROUPS} with their columns")
    return columns[group]


class _BridgeBlock(nn.Module):
    """What both block versions share: heads, gate, output projection and FFN; the forward."""

    rope: UpstreamRoPE | None

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.rope = None
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())
        self.q_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.gating_factor = nn.Parameter(torch.zeros(1))

    def projections(self, source: str) -> tuple[nn.Linear, nn.Linear]:
        """The (key, value) projections of one of :data:`INPUTS`."""
        raise NotImplementedError

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, H, N, d)."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def gate(self) -> torch.Tensor:
        return torch.tanh(self.gating_factor)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        q = self.heads(self.q_proj(x))
        if self.rope is not None:
            q = apply_rope(q, *self.rope(x.shape[1], x.dtype))
        return q

    def keys_values(self, source: str, states: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (with RoPE over the input's own positions, Pro) and values of one of :data:`INPUTS`."""
        k_proj, v_proj = self.projections(source)
        k, v = self.heads(k_proj(states)), self.heads(v_proj(states))
        if self.rope is not None:
            k = apply_rope(k, *self.rope(states.shape[1], dtype))
        return k, v

    def finish(self, attended: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Merge the heads of the attention output, project it and add the FFN residual."""
        b, t, c = x.shape
        return self.ffn(self.o_proj(attended.transpose(1, 2).reshape(b, t, c)) + x)

    def forward(
        self,
        x: torch.Tensor,
        adapter: torch.Tensor,
        task: torch.Tensor,
        *,
        block: int = 0,
        recorder: BlockRecorder | None = None,
        num_proprio: int = 0,
        drop: Collection[str] = (),
        how: str = "zero",
        closed_task: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) chunk; adapter (B, K_a, C) queries then ``num_proprio`` proprio tokens; task (B, K_t, C);
        ``closed_task`` (B, K_t) bool: task keys closed (:func:`bridge_attention`)."""
        gate = self.gate()
        pairs = [self.keys_values(s, states, x.dtype) for s, states in zip(INPUTS, (x, adapter, task))]
        columns = None
        if drop:
            columns = key_group_columns(x.shape[1], adapter.shape[1] - num_proprio, num_proprio, task.shape[1])
        out, weights = bridge_attention(
            self.query(x), [k for k, _ in pairs], [v for _, v in pairs], gate, columns=columns, drop=drop, how=how,
            closed_task=closed_task,
        )
        if recorder is not None and weights is not None:
            recorder(block, weights, gate)
        return self.finish(out, x)


class MLPResNetBlock(_BridgeBlock):
    """v1 bridge block: one k/v projection for every key group, no positions."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__(dim, num_heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)

    def projections(self, source: str) -> tuple[nn.Linear, nn.Linear]:
        return self.k_proj, self.v_proj


class MLPResNetBlock_Pro(_BridgeBlock):  # noqa: N801 - the released class name
    """Pro bridge block: k/v per input (self, adapter, task) and upstream's RoPE."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__(dim, num_heads)
        self.k_self, self.v_self = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_adapter, self.v_adapter = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_task, self.v_task = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.rope = UpstreamRoPE(self.head_dim)
        self.film_gen = nn.Sequential(nn.Linear(dim, 2 * dim))  # unused upstream; kept for the checkpoint keys

    def projections(self, source: str) -> tuple[nn.Linear, nn.Linear]:
        return getattr(self, f"k_{source}"), getattr(self, f"v_{source}")


class MLPResNet(nn.Module):
    """LayerNorm, fc1, ReLU, one bridge block per LLM layer, LayerNorm, fc2."""

    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int, version: str, num_heads: int):
        super().__init__()
        block = MLPResNetBlock_Pro if version == "pro" else MLPResNetBlock
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(block(hidden_dim, num_heads) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    @property
    def blocks(self) -> list[_BridgeBlock]:
        return list(self.mlp_resnet_blocks)  # type: ignore[arg-type]

    def embed(self, latent: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc1(self.layer_norm1(latent)))

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.layer_norm2(x))

    def forward(
        self,
        x: torch.Tensor,
        query_states: torch.Tensor,
        task_states: torch.Tensor,
        proprio: torch.Tensor | None,
        recorder: BlockRecorder | None = None,
        drop: Mapping[int, Collection[str]] | None = None,
        how: str = "zero",
        closed_task: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embed(x)
        for b, block in enumerate(self.blocks):
            adapter = query_states[:, b + 1]
            if proprio is not None:
                adapter = torch.cat([adapter, proprio], dim=1)
            x = block(x, adapter, task_states[:, b + 1], block=b, recorder=recorder,
                      num_proprio=int(proprio is not None), drop=(drop or {}).get(b, ()), how=how,
                      closed_task=closed_task)
        return self.readout(x)


class L1RegressionActionHead(nn.Module):
    """The released action head; ``forward`` maps the LLM's per-layer states to a normalised chunk.

    During training upstream adds fresh N(0, ``train_noise_std``) noise to the zero latent (a
    parameter re-created on every call, so in effect noise); ``train_noise_std`` controls that here.
    """

    def __init__(
        self,
        llm_dim: int,
        num_llm_layers: int,
        chunk: int,
        action_dim: int,
        version: str = "pro",
        num_heads: int = 8,
        train_noise_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.chunk, self.action_dim, self.hidden_dim, self.version = chunk, action_dim, llm_dim, version
        self.train_noise_std = train_noise_std
        self.recorder: BlockRecorder | None = None
        self.model = MLPResNet(num_llm_layers, llm_dim * action_dim, llm_dim, action_dim, version, num_heads)

    @property
    def num_blocks(self) -> int:
        return len(self.model.mlp_resnet_blocks)

    def latent(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The zero action latent (B, chunk, action_dim * width) on ``like``'s device and dtype."""
        return torch.zeros(batch, self.chunk, self.action_dim * self.hidden_dim, device=like.device, dtype=like.dtype)

    def forward(
        self,
        task_states: torch.Tensor,
        query_states: torch.Tensor,
        proprio_features: torch.Tensor | None = None,
        closed_task: torch.Tensor | None = None,
        *,
        drop: Mapping[int, Collection[str]] | None = None,
        how: str = "zero",
        noise: bool | None = None,
    ) -> torch.Tensor:
        """task_states (B, L+1, K_t, C), query_states (B, L+1, Q, C), proprio (B, C) -> (B, chunk, dim).

        The first axis of the states is the hidden_index (block b reads b + 1). ``drop`` maps a block to
        the key groups taken out of it (``how`` in :data:`DROP_MODES`); ``closed_task`` (B, K_t) bool closes
        single task keys in every block (their logits -inf); ``noise`` adds the training noise to the latent
        (default: in training mode).
        """
        if how not in DROP_MODES:
            raise InputError(f"how: got {how!r}, expected one of {DROP_MODES}")
        latent = self.latent(task_states.shape[0], task_states)
        if (self.training if noise is None else noise) and self.train_noise_std > 0:
            latent = latent + torch.randn_like(latent[0]) * self.train_noise_std
        proprio = proprio_features[:, None] if proprio_features is not None else None
        return self.model(latent, query_states, task_states, proprio, recorder=self.recorder, drop=drop, how=how,
                          closed_task=closed_task)
