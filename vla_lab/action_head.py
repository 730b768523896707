"""LLM hidden states -> normalised actions: the bridge-attention L1 regression head (SPEC section 5).

``L1RegressionActionHead`` wraps ``MLPResNet``: a zero "action latent" of shape
(chunk, action_dim * width) goes through LayerNorm, fc1, ReLU, then one bridge-attention block per
LLM layer, LayerNorm and fc2. Block i reads layer i+1's task states and action-query states.

In every block the chunk tokens x are the only queries. The keys and values are, in this order:
x itself ("self"), the action-query states followed by the proprio token ("adapter"), and the task
states ("task"), whose scores are multiplied by tanh(gating_factor) before the softmax.

* v1 (``MLPResNetBlock``): one k/v projection shared by the three groups, no positions.
* Pro (``MLPResNetBlock_Pro``): separate k/v projections per group and upstream's RoPE on the
  queries and on each key group over its own positions 0..K-1. ``film_gen`` is kept for the
  checkpoint layout but, as upstream, never used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

#: Called by every block with (block index, attention weights (B, H, T, T + K_adapter + K_task), tanh(g)).
BlockRecorder = Callable[[int, torch.Tensor, torch.Tensor], None]

KEY_GROUPS = ("self", "adapter", "task")


class UpstreamRoPE(nn.Module):
    """Rotary tables as upstream builds them for the Pro head.

    Upstream pairs an interleaved rotation (even/odd dims) with cos/sin tables laid out as
    ``[freqs, freqs]`` (half-split). The mismatch is part of what the released heads learnt, so it
    is reproduced exactly. ``inv_freq`` is a non-persistent buffer: casting the head to bf16 casts
    it too, and the positions are then built in bf16, as upstream does.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(length, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        freqs = torch.einsum("i,j->ij", t, self.inv_freq)
        table = torch.cat([freqs, freqs], dim=-1)
        return table.cos().to(dtype), table.sin().to(dtype)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    even, odd = x[..., ::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).reshape_as(x)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_interleaved(x) * sin


class _BridgeBlock(nn.Module):
    """Shared parts of both block versions: heads, gate, output projection and FFN."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())
        self.q_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.gating_factor = nn.Parameter(torch.zeros(1))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _project_keys(
        self, x: torch.Tensor, adapter: torch.Tensor, task: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        adapter: torch.Tensor,
        task: torch.Tensor,
        index: int = 0,
        recorder: BlockRecorder | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) chunk tokens; adapter: (B, K_a, C) queries (+ proprio); task: (B, K_t, C)."""
        gate = torch.tanh(self.gating_factor)
        q, keys, values = self._project_keys(x, adapter, task)
        scores = [q @ keys[0].transpose(-2, -1), q @ keys[1].transpose(-2, -1), (q @ keys[2].transpose(-2, -1)) * gate]
        weights = torch.softmax(torch.cat(scores, dim=-1) / math.sqrt(self.head_dim), dim=-1)
        if recorder is not None:
            recorder(index, weights, gate)
        out = weights @ torch.cat(values, dim=2)
        b, t, c = x.shape
        out = self.o_proj(out.transpose(1, 2).reshape(b, t, c))
        return self.ffn(out + x)


class MLPResNetBlock(_BridgeBlock):
    """v1 bridge block: one k/v projection for all three key groups."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__(dim, num_heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)

    def _project_keys(self, x, adapter, task):
        q = self._heads(self.q_proj(x))
        groups = (x, adapter, task)
        return q, [self._heads(self.k_proj(g)) for g in groups], [self._heads(self.v_proj(g)) for g in groups]


class MLPResNetBlock_Pro(_BridgeBlock):  # noqa: N801 - the released class name
    """Pro bridge block: k/v per key group and upstream's RoPE."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__(dim, num_heads)
        self.k_self, self.v_self = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_adapter, self.v_adapter = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_task, self.v_task = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.rope = UpstreamRoPE(self.head_dim)
        self.film_gen = nn.Sequential(nn.Linear(dim, 2 * dim))  # unused upstream; kept for the checkpoint keys

    def _project_keys(self, x, adapter, task):
        dtype = x.dtype
        q = self._heads(self.q_proj(x))
        keys = [self._heads(self.k_self(x)), self._heads(self.k_adapter(adapter)), self._heads(self.k_task(task))]
        values = [self._heads(self.v_self(x)), self._heads(self.v_adapter(adapter)), self._heads(self.v_task(task))]
        cos, sin = self.rope(x.shape[1], dtype)
        q, keys[0] = apply_rope(q, cos, sin), apply_rope(keys[0], cos, sin)
        for i, group in ((1, adapter), (2, task)):
            cos, sin = self.rope(group.shape[1], dtype)
            keys[i] = apply_rope(keys[i], cos, sin)
        return q, keys, values


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

    def forward(
        self,
        x: torch.Tensor,
        query_states: torch.Tensor,
        task_states: torch.Tensor,
        proprio: torch.Tensor | None,
        recorder: BlockRecorder | None = None,
    ) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for i, block in enumerate(self.mlp_resnet_blocks):
            adapter = query_states[:, i + 1]
            if proprio is not None:
                adapter = torch.cat([adapter, proprio], dim=1)
            x = block(x, adapter, task_states[:, i + 1], index=i, recorder=recorder)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """The released action head; ``forward`` maps the LLM's per-layer states to a normalised chunk.

    During training upstream adds fresh N(0, ``train_noise_std``) noise to the zero latent (a
    parameter re-created on every call, so in effect noise); ``train_noise`` controls that here.
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

    def forward(
        self, task_states: torch.Tensor, query_states: torch.Tensor, proprio_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """task_states (B, layers+1, K_t, C), query_states (B, layers+1, Q, C), proprio (B, C) -> (B, chunk, dim)."""
        batch = task_states.shape[0]
        latent = torch.zeros(
            batch, self.chunk, self.action_dim * self.hidden_dim, device=task_states.device, dtype=task_states.dtype
        )
        if self.training and self.train_noise_std > 0:
            latent = latent + torch.randn_like(latent[0]) * self.train_noise_std
        proprio = proprio_features[:, None] if proprio_features is not None else None
        return self.model(latent, query_states, task_states, proprio, recorder=self.recorder)
