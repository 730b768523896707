"""Looking inside the bridge-attention action head (:mod:`vla_lab.model.action_head`).

From a capture: :func:`head_attention` (each block's attention per key group, with its gate),
:func:`head_task_patch_attention` (the task keys mapped back to image patches), :func:`key_group_sizes`.
By re-running the head: :func:`head_states` (what the head read in a forward pass), :func:`head_forward`
(the head with chosen key groups of chosen blocks taken out) and :func:`path_ablation` (every
(block, key group) taken out in turn). :func:`head_parameter_parts` counts parameters per block and part
(works on ``meta`` models).

Key groups are :data:`vla_lab.config.KEY_GROUPS`: ``self`` (the chunk tokens), ``action_queries`` (the
LLM's action-query states), ``proprio`` (the projected proprio token) and ``task`` (the LLM states at the
patch positions, multiplied by the gate). Block b reads hidden_index b + 1, the output of LLM layer b.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab.config import KEY_GROUPS
from vla_lab.errors import InputError
from vla_lab.interp.capture import ActivationCache
from vla_lab.interp.hooks import head_hook
from vla_lab.model.action_head import DROP_MODES, L1RegressionActionHead, key_group_columns
from vla_lab.model.inputs import forward_inputs
from vla_lab.model.vla import VLAAdapter

HOW = DROP_MODES


def key_group_sizes(cache: ActivationCache, block: int = 0) -> dict[str, int]:
    """Keys per group (:data:`KEY_GROUPS`) of a captured head block.

    ``cache`` is an :class:`vla_lab.ActivationCache` captured with ``head=True``. The proprio count is
    1 when the adapter input has one more key than there are query states, else 0.
    """
    weights = cache[head_hook("pattern", block)]
    chunk = int(weights.shape[2])
    num_task = int(cache[head_hook("task_states")].shape[2])
    num_queries = int(cache[head_hook("query_states")].shape[2])
    adapter = int(weights.shape[-1]) - chunk - num_task
    return {"self": chunk, "action_queries": num_queries, "proprio": adapter - num_queries, "task": num_task}


def _columns(cache: ActivationCache, block: int) -> dict[str, slice]:
    sizes = key_group_sizes(cache, block)
    return key_group_columns(sizes["self"], sizes["action_queries"], sizes["proprio"], sizes["task"])


def head_attention(cache: ActivationCache) -> pd.DataFrame:
    """Bridge-head attention per block split into its key groups, with the gate.

    Columns: sample, block, head, key_group (:data:`KEY_GROUPS`; ``proprio`` only when the head has a
    proprio token), value (attention mass on the group, mean over the chunk queries), gate (tanh g).
    """
    rows = []
    for block in range(cache.num_head_blocks):
        weights = cache[head_hook("pattern", block)].cpu().double()  # (B, H, T, T + Ka + Kt)
        gate = float(cache[head_hook("gate", block)])
        for name, columns in _columns(cache, block).items():
            if columns.stop == columns.start:
                continue
            mass = weights[..., columns].sum(dim=-1).mean(dim=-1)  # (B, H)
            for b in range(mass.shape[0]):
                for h in range(mass.shape[1]):
                    rows.append((b, block, h, name, float(mass[b, h]), gate))
    return pd.DataFrame(rows, columns=["sample", "block", "head", "key_group", "value", "gate"])


def head_task_patch_attention(cache: ActivationCache, offset: str = "released") -> pd.DataFrame:
    """The head's attention on its task keys, mapped back to image patches.

    With the released offset the task keys are tok0 and the first NP-1 patches, so key j is patch
    j-1 (key 0 is tok0 and is dropped) and the last patch, which the head never reads, is NaN.
    Columns: sample, block, head, image, row, col, value.
    """
    frames = []
    layout = cache.layouts[0]
    shift = 1 if offset == "released" else 0
    for block in range(cache.num_head_blocks):
        weights = cache[head_hook("pattern", block)].cpu().double()
        task = weights[..., _columns(cache, block)["task"]].mean(dim=2)  # (B, H, K_task), mean over chunk queries
        # Under the released offset the last patch is never read: NaN, not a measured zero.
        patches = torch.full((task.shape[0], task.shape[1], layout.num_patches), float("nan"), dtype=task.dtype)
        patches[..., : layout.num_patches - shift] = task[..., shift:]
        start = 0
        for image, grid in enumerate(layout.patch_grids):
            n = grid[0] * grid[1]
            values = patches[..., start : start + n].reshape(task.shape[0], task.shape[1], *grid).numpy()
            start += n
            b, h, r, c = np.indices(values.shape).reshape(4, -1)
            frames.append(pd.DataFrame({"sample": b, "block": block, "head": h, "image": image,
                                        "row": r, "col": c, "value": values.ravel()}))
    return pd.concat(frames, ignore_index=True)


def _parse_drop(drop: Any, num_blocks: int, has_proprio: bool) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for item in drop or ():
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError(f"drop: got {item!r}, expected (block, group) pairs")
        block, group = item
        if not isinstance(block, (int, np.integer)) or not 0 <= int(block) < num_blocks:
            raise InputError(f"drop: got block {block!r}, expected 0 <= block < {num_blocks}")
        if group not in KEY_GROUPS:
            raise InputError(f"drop: got group {group!r}, expected one of {KEY_GROUPS}")
        if group == "proprio" and not has_proprio:
            raise InputError("drop: got group 'proprio', but the head runs without a proprio token")
        out.setdefault(int(block), set()).add(group)
    return out


def head_forward(
    head: L1RegressionActionHead,
    task_states: torch.Tensor,
    query_states: torch.Tensor,
    proprio_features: torch.Tensor | None = None,
    drop: Iterable[tuple[int, str]] | None = None,
    how: str = "zero",
) -> torch.Tensor:
    """The head's inference forward (no latent noise) with the (block, group) pairs of ``drop`` taken out.

    Inputs as for :class:`vla_lab.model.action_head.L1RegressionActionHead` (see :func:`head_states`).
    ``how``: ``"zero"`` sets the dropped groups' attention weights to 0 (the other weights unchanged),
    ``"remove"`` sets their logits to -inf (the softmax renormalises over the rest). Without ``drop``
    the result equals the head's own output. Returns normalised actions (B, chunk, action_dim).
    """
    if how not in HOW:
        raise InputError(f"how: got {how!r}, expected one of {HOW}")
    has_proprio = proprio_features is not None
    plan = _parse_drop(drop, head.num_blocks, has_proprio)
    num_groups = 3 + int(has_proprio)
    for block, groups in plan.items():
        if how == "remove" and len(groups) == num_groups:
            raise InputError(f"drop: block {block} would keep no key group; how='remove' needs at least one")
    out: torch.Tensor = head(task_states, query_states, proprio_features, drop=plan, how=how, noise=False)
    return out


@torch.no_grad()
def head_states(model: VLAAdapter, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """One forward pass of ``model`` on ``inputs`` (its ``forward`` keyword arguments): what the head read.

    Returns ``task_states``, ``query_states``, ``proprio_features`` (None without proprio) and
    ``actions`` (the model's normalised actions), as the model's forward handed them to the head.
    """
    out = model(**forward_inputs(inputs))
    return {"task_states": out.task_states, "query_states": out.query_states,
            "proprio_features": out.proprio_features, "actions": out.normalized_actions}


@torch.no_grad()
def path_ablation(
    model: VLAAdapter,
    inputs: Mapping[str, Any],
    groups: Sequence[str] = ("task", "action_queries", "proprio"),
    how: str = "zero",
    targets: Any = None,
) -> pd.DataFrame:
    """Take each (block, key group) out of the head in turn and measure the change of the normalised actions.

    Columns: sample, block, hidden_index (of the LLM states the block reads, ``block + 1``), group,
    l1_change (mean |intervened - baseline| over the chunk and action dims), max_abs_change; with
    ``targets`` (B, chunk, dim) normalised actions also ``baseline_error`` and ``error`` (mean absolute
    error against them). Groups the head does not have (``proprio`` without a proprio token) are skipped.
    """
    states = head_states(model, inputs)
    head = model.action_head
    args = (states["task_states"], states["query_states"], states["proprio_features"])
    base = head_forward(head, *args).float().cpu().numpy()
    target = None
    if targets is not None:
        target = np.asarray(targets.float().cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.float64)
        if target.shape != base.shape:
            raise InputError(f"targets: got shape {target.shape}, expected {base.shape}")
    has_proprio = states["proprio_features"] is not None
    rows = []
    for block in range(head.num_blocks):
        for group in groups:
            if group == "proprio" and not has_proprio:
                continue
            new = head_forward(head, *args, drop=[(block, group)], how=how).float().cpu().numpy()
            diff = np.abs(new - base)
            for b in range(base.shape[0]):
                row = {"sample": b, "block": block, "hidden_index": block + 1, "group": group,
                       "l1_change": float(diff[b].mean()), "max_abs_change": float(diff[b].max())}
                if target is not None:
                    row["baseline_error"] = float(np.abs(base[b] - target[b]).mean())
                    row["error"] = float(np.abs(new[b] - target[b]).mean())
                rows.append(row)
    return pd.DataFrame(rows)


_PART_NAMES = {
    "layer_norm1": "input", "fc1": "input", "layer_norm2": "output", "fc2": "output",
    "q_proj": "q_proj", "o_proj": "o_proj", "ffn": "ffn", "gating_factor": "gate",
    "k_proj": "k/v shared", "v_proj": "k/v shared",
    "k_self": "k/v self", "v_self": "k/v self",
    "k_adapter": "k/v adapter", "v_adapter": "k/v adapter",
    "k_task": "k/v task", "v_task": "k/v task",
    "film_gen": "film_gen (unused)",
}


def head_parameter_parts(model_or_head: VLAAdapter | L1RegressionActionHead) -> pd.DataFrame:
    """Parameters of the action head per block and part (tidy).

    Columns: block (-1 for the input and output layers outside the blocks), part, parameters. Parts:
    ``input`` (LayerNorm + fc1), ``output`` (LayerNorm + fc2), and per block ``q_proj``, ``k/v shared``
    (v1) or ``k/v self`` / ``k/v adapter`` / ``k/v task`` (Pro), ``o_proj``, ``ffn``, ``gate`` and
    ``film_gen (unused)`` (Pro, kept for the checkpoint layout). Works on models built on ``meta``.
    """
    head = model_or_head.action_head if isinstance(model_or_head, VLAAdapter) else model_or_head
    counts: dict[tuple[int, str], int] = {}
    for name, param in head.named_parameters():
        parts = name.split(".")
        if parts[0] != "model":
            raise InputError(f"head_parameter_parts: unexpected parameter {name!r}")
        if parts[1] == "mlp_resnet_blocks":
            block, key = int(parts[2]), parts[3]
        else:
            block, key = -1, parts[1]
        part = _PART_NAMES.get(key, key)
        counts[(block, part)] = counts.get((block, part), 0) + param.numel()
    rows = [(b, p, n) for (b, p), n in counts.items()]
    return pd.DataFrame(rows, columns=["block", "part", "parameters"])
