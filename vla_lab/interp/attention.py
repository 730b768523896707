"""Where the LLM's attention goes, from a capture: tidy (long-format) pandas DataFrames.

Segment vocabulary: ``tok0``, ``vision`` (or ``vision.{i}`` per image with ``fine=True``), ``text``,
``action_queries``, ``stop``. "Mass" from segment Q to segment K is the attention that Q's tokens
put on K's tokens, summed over K and averaged over Q's tokens; it sums to 1 over K for every Q.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab.config import FINE_SEGMENTS, coarse_segment
from vla_lab.errors import InputError
from vla_lab.interp.capture import ActivationCache
from vla_lab.interp.hooks import llm_hook
from vla_lab.model.sequence import SequenceLayout


def _present(layout: SequenceLayout, fine: bool) -> list[str]:
    """Non-empty, non-padding segment names of one sample, in sequence order."""
    names = [n for n, s in layout.segments(fine=True).items() if n != "padding" and len(s) > 0]
    if fine:
        return names
    return list(dict.fromkeys(coarse_segment(n) for n in names))


def segment_positions(layout: SequenceLayout, fine: bool = False) -> dict[str, list[int]]:
    """Non-empty, non-padding segment -> its sequence positions (coarse ``vision`` unless ``fine``)."""
    groups: dict[str, list[int]] = {}
    for name, span in layout.segments(fine=True).items():
        if name != "padding" and len(span):
            groups.setdefault(name if fine else coarse_segment(name), []).extend(span.positions())
    return groups


def _group_matrix(layout: SequenceLayout, fine: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, M, counts): M maps the fine segments onto the reported ones, counts = tokens per fine segment."""
    names = _present(layout, fine)
    spans = layout.segments(fine=True)
    counts = np.array([len(spans[n]) if n in spans else 0 for n in FINE_SEGMENTS], dtype=np.float64)
    matrix = np.zeros((len(FINE_SEGMENTS), len(names)))
    for i, fine_name in enumerate(FINE_SEGMENTS):
        target = fine_name if fine else coarse_segment(fine_name)
        if target in names:
            matrix[i, names.index(target)] = 1.0
    return names, matrix, counts


def _merge_segment_pattern(pattern: np.ndarray, layout: SequenceLayout, fine: bool) -> tuple[list[str], np.ndarray]:
    """(H, G, G) fine masses -> (H, N, N) masses over the reported segments of one sample."""
    names, matrix, counts = _group_matrix(layout, fine)
    summed_keys = pattern @ matrix  # (H, G, N): mass on each reported key segment
    weights = matrix * counts[:, None]  # token counts of each fine query segment within its group
    totals = weights.sum(axis=0)
    merged = np.einsum("gn,hgk->hnk", weights, summed_keys) / np.where(totals > 0, totals, 1)[None, :, None]
    return names, merged


def segment_mass(cache: ActivationCache, fine: bool = False, per_key_token: bool = False) -> pd.DataFrame:
    """Segment -> segment attention mass per sample, layer and head (LLM).

    Columns: sample, layer, head, query_segment, key_segment, value. With ``per_key_token`` the value is the
    mass divided by the number of tokens of the key segment in that sample (the mean attention per key
    token), so that a segment of one token (``tok0``) and one of many (``vision``) can be compared; the
    masses of a query segment then no longer sum to 1.
    """
    rows = []
    patterns = cache.stack(llm_hook("segment_pattern", "*")).cpu().double().numpy()  # (L, B, H, G, G)
    for b, layout in enumerate(cache.layouts):
        for layer in range(patterns.shape[0]):
            names, merged = _merge_segment_pattern(patterns[layer, b], layout, fine)
            if per_key_token:
                merged = merged / np.array([len(layout.span(k)) for k in names], dtype=np.float64)[None, None, :]
            for head in range(merged.shape[0]):
                for qi, q in enumerate(names):
                    for ki, k in enumerate(names):
                        rows.append((b, layer, head, q, k, merged[head, qi, ki]))
    return pd.DataFrame(rows, columns=["sample", "layer", "head", "query_segment", "key_segment", "value"])


def segment_mass_summary(cache: ActivationCache, fine: bool = False) -> dict[str, float]:
    """``"QUERY->KEY"`` -> mean mass over samples, layers and heads (the CLI's flat map)."""
    df = segment_mass(cache, fine)
    means = df.groupby(["query_segment", "key_segment"], sort=False)["value"].mean()
    return {f"{q}->{k}": float(v) for (q, k), v in means.items()}


def query_patch_attention(
    cache: ActivationCache, query_segment: str = "action_queries", layers: Iterable[int] | None = None
) -> pd.DataFrame:
    """Mean attention of a query segment's tokens on every image patch, on each image's patch grid.

    Columns: sample, layer, head, image, row, col, value.
    """
    fine_index = FINE_SEGMENTS.index(query_segment) if query_segment in FINE_SEGMENTS else None
    if fine_index is None:
        raise InputError(f"query_segment: got {query_segment!r}, expected one of {FINE_SEGMENTS[:-1]}")
    layers = list(range(cache.num_layers)) if layers is None else list(layers)
    frames = []
    for layer in layers:
        profile = cache[llm_hook("query_profile", layer)][:, :, fine_index].cpu().double().numpy()
        for b, layout in enumerate(cache.layouts):
            for image, (span, grid) in enumerate(zip(layout.vision, layout.patch_grids)):
                values = profile[b, :, span.start : span.stop].reshape(-1, grid[0], grid[1])
                heads, rows, cols = np.meshgrid(np.arange(values.shape[0]), np.arange(grid[0]), np.arange(grid[1]),
                                                indexing="ij")
                frames.append(pd.DataFrame({
                    "sample": b, "layer": layer, "head": heads.ravel(), "image": image,
                    "row": rows.ravel(), "col": cols.ravel(), "value": values.ravel(),
                }))
    return pd.concat(frames, ignore_index=True)


def patch_grid(
    df: pd.DataFrame, sample: int = 0, layer: int | None = None, image: int = 0, *, block: int | None = None
) -> np.ndarray:
    """A (rows, cols) array of patch attention, averaged over heads (and over every depth unless one is given).

    ``df``: :func:`query_patch_attention` output (select with ``layer``) or
    :func:`vla_lab.interp.head_task_patch_attention` output (select with ``block``).
    """
    sel = df[(df["sample"] == sample) & (df["image"] == image)]
    for column, value in (("layer", layer), ("block", block)):
        if value is not None:
            sel = sel[sel[column] == value]
    table = sel.groupby(["row", "col"])["value"].mean().unstack("col")
    return table.to_numpy()


def attention_entropy(cache: ActivationCache, fine: bool = False) -> pd.DataFrame:
    """Mean entropy (nats) of the attention distributions of each segment's queries.

    Columns: sample, layer, head, query_segment, value.
    """
    entropy = cache.stack(llm_hook("entropy", "*")).cpu().double().numpy()  # (L, B, H, S)
    rows = []
    for b, layout in enumerate(cache.layouts):
        spans = segment_positions(layout, fine)
        for layer in range(entropy.shape[0]):
            for head in range(entropy.shape[2]):
                for name, positions in spans.items():
                    rows.append((b, layer, head, name, float(entropy[layer, b, head, positions].mean())))
    return pd.DataFrame(rows, columns=["sample", "layer", "head", "query_segment", "value"])


def _head_mean_maps(cache: ActivationCache) -> torch.Tensor:
    if cache.names(llm_hook("head_mean", "*")):
        return cache.stack(llm_hook("head_mean", "*")).double()
    if cache.names(llm_hook("pattern", "*")):
        return cache.stack(llm_hook("pattern", "*")).double().mean(dim=2)
    raise InputError("attention_rollout: needs full maps (mode='full') or keep_head_mean=True in the capture")


def rollout_maps(cache: ActivationCache, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): (L, B, S, S) products of head-averaged maps.

    Each layer's map is mixed with the identity for the residual stream, ``residual * I +
    (1 - residual) * A``, rows renormalised, and multiplied from the first layer up.
    """
    maps = _head_mean_maps(cache).cpu()
    layers, batch, seq, _ = maps.shape
    eye = torch.eye(seq, dtype=maps.dtype)
    rolled = eye.expand(batch, seq, seq)
    out = []
    for layer in range(layers):
        mixed = residual * eye + (1 - residual) * maps[layer]
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rolled = torch.matmul(mixed, rolled)
        out.append(rolled)
    return torch.stack(out)


def attention_rollout(cache: ActivationCache, residual: float = 0.5, fine: bool = False) -> pd.DataFrame:
    """Segment -> segment mass of the rolled-out attention after each layer.

    Columns: sample, layer, query_segment, key_segment, value.
    """
    rolled = rollout_maps(cache, residual).numpy()
    rows = []
    for b, layout in enumerate(cache.layouts):
        groups = segment_positions(layout, fine)
        for layer in range(rolled.shape[0]):
            for q, qpos in groups.items():
                block = rolled[layer, b][qpos]
                for k, kpos in groups.items():
                    rows.append((b, layer, q, k, float(block[:, kpos].sum(axis=1).mean())))
    return pd.DataFrame(rows, columns=["sample", "layer", "query_segment", "key_segment", "value"])


# ---------------------------------------------------------------------------------------------
# Mask audit
# ---------------------------------------------------------------------------------------------


@dataclass
class MaskAudit:
    """What the captured maps say about the mask: a verdict and the numbers behind it."""

    verdict: str
    evidence: dict[str, Any]
    pairs: pd.DataFrame = field(repr=False)

    def __str__(self) -> str:
        ev = self.evidence
        return (
            f"{self.verdict}: future mass max {ev['future_mass_max']:.3g}, "
            f"min segment-pair mass {ev['min_pair_mass']:.3g}, zero pairs {ev['zero_pairs'] or 'none'}"
        )


def mask_audit(cache: ActivationCache, tol: float = 0.0) -> MaskAudit:
    """Infer the LLM's effective mask from captured attention alone.

    A masked position gets exactly zero probability; an allowed one a positive probability, however
    small (a trained model can put 1e-7 on a segment), so the default ``tol`` is 0.

    ``causal``: no query puts mass on a later position, and every (query segment, earlier-or-same key
    segment) pair gets mass. ``bidirectional``: every query except the last puts mass on later
    positions, and every segment pair gets mass. ``prefix-lm``: tok0/vision/text see each other, the
    queries and STOP only the past. Anything else is reported as ``custom`` with the zero pairs.
    """
    future = cache.stack(llm_hook("future_mass", "*")).cpu().double()  # (L, B, H, S)
    segment = segment_mass(cache, fine=True)
    pair_min = segment.groupby(["query_segment", "key_segment"], sort=False)["value"].min().reset_index()
    order = {name: i for i, name in enumerate(FINE_SEGMENTS)}
    pair_min["key_after_query"] = [order[k] > order[q] for q, k in zip(pair_min.query_segment, pair_min.key_segment)]
    zero = pair_min[pair_min["value"] <= tol]
    zero_pairs = [f"{q}->{k}" for q, k in zip(zero.query_segment, zero.key_segment)]

    # Per-query future mass, excluding padding and each sample's last real token (it has no future).
    prefix = {"tok0", "vision", "text"}
    real, tail = [], []
    for b, layout in enumerate(cache.layouts):
        last = layout.num_tokens - 1
        real.append(future[:, b, :, :last].flatten())
        in_tail = torch.tensor([coarse_segment(layout.segment_of(p)) not in prefix for p in range(last)])
        tail.append(future[:, b, :, :last][..., in_tail].flatten())
    future_real, future_tail = torch.cat(real), torch.cat(tail)
    earlier = pair_min[~pair_min["key_after_query"]]
    later = pair_min[pair_min["key_after_query"]]
    evidence: dict[str, Any] = {
        "future_mass_max": float(future_real.max()),
        "future_mass_mean": float(future_real.mean()),
        "future_mass_min": float(future_real.min()),
        "min_pair_mass": float(pair_min["value"].min()),
        "min_earlier_pair_mass": float(earlier["value"].min()),
        "max_later_pair_mass": float(later["value"].max()) if len(later) else 0.0,
        "zero_pairs": zero_pairs,
        "layers": int(future.shape[0]),
        "heads": int(future.shape[2]),
    }
    earlier_ok = bool((earlier["value"] > tol).all())
    later_into_tail = {
        f"{q}->{k}" for q, k in zip(later.query_segment, later.key_segment) if coarse_segment(k) not in prefix
    }
    if evidence["future_mass_max"] <= tol and earlier_ok:
        verdict = "causal"
    elif evidence["future_mass_min"] > tol and not zero_pairs:
        verdict = "bidirectional"
    elif earlier_ok and float(future_tail.max()) <= tol and set(zero_pairs) == later_into_tail:
        verdict = "prefix-lm"
    else:
        verdict = "custom"
    return MaskAudit(verdict, evidence, pair_min)
