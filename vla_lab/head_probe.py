"""Probes of the bridge-attention action head (:mod:`vla_lab.action_head`).

* :func:`head_forward`: the head re-run on given LLM states with chosen key groups of chosen blocks
  taken out (``how="zero"``: their attention weights set to 0, the other weights unchanged;
  ``how="remove"``: their logits set to -inf, so the softmax renormalises over the rest).
* :func:`path_ablation`: every (block, key group) taken out in turn on one batch, as a tidy DataFrame
  of action changes (and errors against targets when given).
* :func:`head_parameter_parts`: parameters of the head per block and part (works on ``meta`` models).
* :func:`key_group_sizes`: how many keys each group of a captured block holds.
* :func:`object_attention_ratio`: mean attention per target patch over mean attention per distractor
  patch, from :func:`vla_lab.analysis.head_task_patch_attention` (or any patch DataFrame) and the scenes.

Key groups: ``self`` (the chunk tokens), ``action_queries`` (the LLM's action-query states),
``proprio`` (the projected proprio token, appended to the queries) and ``task`` (the LLM states at
the patch positions, multiplied by the gate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab.errors import InputError

GROUPS = ("self", "action_queries", "proprio", "task")
HOW = ("zero", "remove")
#: Image index -> world view name (the order of ``world.Observation.images``).
VIEWS = ("full", "wrist")


def _columns(chunk: int, num_queries: int, has_proprio: bool, num_task: int) -> dict[str, slice]:
    """Key columns of each group in a block's (T + K_adapter + K_task) attention row."""
    a = chunk + num_queries
    p = a + int(has_proprio)
    return {"self": slice(0, chunk), "action_queries": slice(chunk, a), "proprio": slice(a, p),
            "task": slice(p, p + num_task)}


def _parse_drop(drop: Any, num_blocks: int, has_proprio: bool) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for item in drop or ():
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError(f"drop: got {item!r}, expected (block, group) pairs")
        block, group = item
        if not isinstance(block, (int, np.integer)) or not 0 <= int(block) < num_blocks:
            raise InputError(f"drop: got block {block!r}, expected 0 <= block < {num_blocks}")
        if group not in GROUPS:
            raise InputError(f"drop: got group {group!r}, expected one of {GROUPS}")
        if group == "proprio" and not has_proprio:
            raise InputError("drop: got group 'proprio', but the head runs without a proprio token")
        out.setdefault(int(block), set()).add(group)
    return out


def _block_forward(
    block: torch.nn.Module, x: torch.Tensor, adapter: torch.Tensor, task: torch.Tensor,
    columns: dict[str, slice], drop: set[str], how: str,
) -> torch.Tensor:
    gate = torch.tanh(block.gating_factor)
    q, keys, values = block._project_keys(x, adapter, task)
    scores = [q @ keys[0].transpose(-2, -1), q @ keys[1].transpose(-2, -1), (q @ keys[2].transpose(-2, -1)) * gate]
    logits = torch.cat(scores, dim=-1) / math.sqrt(block.head_dim)
    if drop and how == "remove":
        logits = logits.clone()
        for group in drop:
            logits[..., columns[group]] = float("-inf")
    weights = torch.softmax(logits, dim=-1)
    if drop and how == "zero":
        weights = weights.clone()
        for group in drop:
            weights[..., columns[group]] = 0.0
    out = weights @ torch.cat(values, dim=2)
    b, t, c = x.shape
    out = block.o_proj(out.transpose(1, 2).reshape(b, t, c))
    return block.ffn(out + x)


def head_forward(
    head: torch.nn.Module,
    task_states: torch.Tensor,
    query_states: torch.Tensor,
    proprio_features: torch.Tensor | None = None,
    drop: Iterable[tuple[int, str]] | None = None,
    how: str = "zero",
) -> torch.Tensor:
    """The head's inference forward (no latent noise) with the (block, group) pairs of ``drop`` taken out.

    Inputs as for :class:`vla_lab.action_head.L1RegressionActionHead`: task_states (B, layers+1, K_t, C),
    query_states (B, layers+1, Q, C), proprio_features (B, C) or None. Without ``drop`` the result equals
    the head's own output. Returns normalised actions (B, chunk, action_dim).
    """
    if how not in HOW:
        raise InputError(f"how: got {how!r}, expected one of {HOW}")
    mlp = head.model
    blocks = mlp.mlp_resnet_blocks
    has_proprio = proprio_features is not None
    plan = _parse_drop(drop, len(blocks), has_proprio)
    num_groups = 3 + int(has_proprio)
    for block, groups in plan.items():
        if how == "remove" and len(groups) == num_groups:
            raise InputError(f"drop: block {block} would keep no key group; how='remove' needs at least one")
    batch = task_states.shape[0]
    latent = torch.zeros(batch, head.chunk, head.action_dim * head.hidden_dim, device=task_states.device,
                         dtype=task_states.dtype)
    proprio = proprio_features[:, None] if has_proprio else None
    x = mlp.relu(mlp.fc1(mlp.layer_norm1(latent)))
    columns = _columns(head.chunk, query_states.shape[2], has_proprio, task_states.shape[2])
    for i, block in enumerate(blocks):
        adapter = query_states[:, i + 1]
        if proprio is not None:
            adapter = torch.cat([adapter, proprio], dim=1)
        x = _block_forward(block, x, adapter, task_states[:, i + 1], columns, plan.get(i, set()), how)
    return mlp.fc2(mlp.layer_norm2(x))


@torch.no_grad()
def head_states(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """One forward pass of ``model`` on ``inputs`` (its ``forward`` keyword arguments): what the head read.

    Returns ``task_states``, ``query_states``, ``proprio_features`` (None without proprio) and
    ``actions`` (the model's normalised actions), with the model's bf16 casts applied as its forward does.
    """
    keys = ("pixel_values", "input_ids", "attention_mask", "proprio")
    out = model(**{k: inputs[k] for k in keys if k in inputs})
    queries = out.query_states
    proprio = inputs.get("proprio")
    if proprio is not None:
        proprio = torch.as_tensor(proprio, device=model.device).to(model.dtype)
        if proprio.ndim == 1:
            proprio = proprio[None]
    if model.config.upstream_bf16_casts:
        queries = queries.to(torch.bfloat16).to(queries.dtype)
        proprio = proprio.to(torch.bfloat16).to(proprio.dtype) if proprio is not None else None
    projector = model.proprio_projector
    features = projector(proprio) if (proprio is not None and projector is not None) else None
    return {"task_states": out.task_states, "query_states": queries, "proprio_features": features,
            "actions": out.normalized_actions}


@torch.no_grad()
def path_ablation(
    model: Any,
    inputs: dict[str, Any],
    groups: Sequence[str] = ("task", "action_queries", "proprio"),
    how: str = "zero",
    targets: Any = None,
) -> pd.DataFrame:
    """Take each (block, key group) out of the head in turn and measure the change of the normalised actions.

    Columns: sample, block, layer (the LLM layer whose states the block reads, ``block + 1``; 0 would be
    the embeddings), group, l1_change (mean |intervened - baseline| over the chunk and action dims),
    max_abs_change; with ``targets`` (B, chunk, dim) normalised actions also ``baseline_error`` and
    ``error`` (mean absolute error against them). Groups the head does not have (``proprio`` without a
    proprio token) are skipped.
    """
    states = head_states(model, inputs)
    head = model.action_head
    base = head_forward(head, states["task_states"], states["query_states"], states["proprio_features"])
    base = base.float().cpu().numpy()
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
            new = head_forward(head, states["task_states"], states["query_states"], states["proprio_features"],
                               drop=[(block, group)], how=how).float().cpu().numpy()
            diff = np.abs(new - base)
            for b in range(base.shape[0]):
                row = {"sample": b, "block": block, "layer": block + 1, "group": group,
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


def head_parameter_parts(model_or_head: Any) -> pd.DataFrame:
    """Parameters of the action head per block and part (tidy).

    Columns: block (-1 for the input and output layers outside the blocks), part, parameters. Parts:
    ``input`` (LayerNorm + fc1), ``output`` (LayerNorm + fc2), and per block ``q_proj``, ``k/v shared``
    (v1) or ``k/v self`` / ``k/v adapter`` / ``k/v task`` (Pro), ``o_proj``, ``ffn``, ``gate`` and
    ``film_gen (unused)`` (Pro, kept for the checkpoint layout). Works on models built on ``meta``.
    """
    head = getattr(model_or_head, "action_head", model_or_head)
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


def key_group_sizes(cache: Any, block: int = 0) -> dict[str, int]:
    """Keys per group of a captured head block: ``self``, ``action_queries``, ``proprio``, ``task``.

    ``cache`` is an :class:`vla_lab.ActivationCache` captured with ``head=True``. The proprio count is
    1 when the adapter group has one more key than there are query states, else 0.
    """
    weights = cache[f"head.blocks.{block}.hook_pattern"]
    chunk = int(weights.shape[2])
    num_task = int(cache["head.hook_task_states"].shape[2])
    num_queries = int(cache["head.hook_query_states"].shape[2])
    adapter = int(weights.shape[-1]) - chunk - num_task
    return {"self": chunk, "action_queries": num_queries, "proprio": adapter - num_queries, "task": num_task}


def object_attention_ratio(
    patch_df: pd.DataFrame,
    scenes: Sequence[Any],
    states: Sequence[Any] | None = None,
    by: str = "block",
    views: Sequence[str] = VIEWS,
) -> pd.DataFrame:
    """Mean attention per target patch / mean attention per distractor patch, per sample, ``by`` and image.

    ``patch_df`` has columns sample, ``by`` (e.g. block or layer), head, image, row, col, value (as from
    :func:`vla_lab.analysis.head_task_patch_attention` or :func:`vla_lab.analysis.query_patch_attention`);
    heads are averaged first. ``scenes[s]`` is the :class:`vla_lab.world.Scene` of sample s and
    ``states[s]`` its gripper state (the start state when omitted; it centres the wrist view). Image i
    is the world view ``views[i]``. Patch masks come from :func:`vla_lab.world.object_patch_masks`
    (distractor patches hold no target pixel). Columns: sample, ``by``, image, view, target_patches,
    distractor_patches, target_mean, distractor_mean, ratio (NaN when a view shows no target or no
    distractor patch).
    """
    from vla_lab import world

    needed = ["sample", by, "head", "image", "row", "col", "value"]
    missing = [c for c in needed if c not in patch_df.columns]
    if missing:
        raise InputError(f"object_attention_ratio: DataFrame lacks column(s) {missing}, expected {needed}")
    samples = sorted(patch_df["sample"].unique().tolist())
    if samples and samples[-1] >= len(scenes):
        raise InputError(f"scenes: got {len(scenes)} scenes, expected one per sample (samples up to {samples[-1]})")
    if states is not None and len(states) != len(scenes):
        raise InputError(f"states: got {len(states)} states, expected {len(scenes)} (one per scene)")
    mean = patch_df.groupby(["sample", by, "image", "row", "col"], sort=True)["value"].mean().reset_index()
    rows = []
    for (sample, key, image), part in mean.groupby(["sample", by, "image"], sort=True):
        if image >= len(views):
            raise InputError(f"views: got {len(views)} view names, expected one for image {image}")
        grid = (int(part["row"].max()) + 1, int(part["col"].max()) + 1)
        values = np.zeros(grid)
        values[part["row"].to_numpy(), part["col"].to_numpy()] = part["value"].to_numpy()
        state = states[sample] if states is not None else None
        masks = world.object_patch_masks(scenes[sample], grid, view=views[image], state=state)
        target, distractors = masks["target"], masks["distractors"]
        t_mean = float(np.nanmean(values[target])) if target.any() else float("nan")
        d_mean = float(np.nanmean(values[distractors])) if distractors.any() else float("nan")
        ratio = t_mean / d_mean if (target.any() and distractors.any() and d_mean > 0) else float("nan")
        rows.append((int(sample), key, int(image), views[image], int(target.sum()), int(distractors.sum()),
                     t_mean, d_mean, ratio))
    return pd.DataFrame(rows, columns=["sample", by, "image", "view", "target_patches", "distractor_patches",
                                       "target_mean", "distractor_mean", "ratio"])


__all__ = [
    "GROUPS",
    "HOW",
    "VIEWS",
    "head_forward",
    "head_parameter_parts",
    "head_states",
    "key_group_sizes",
    "object_attention_ratio",
    "path_ablation",
]
