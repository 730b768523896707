"""Interventions on the LLM: the same input under two masks, blocked segment paths, patched states.

Depth vocabulary: ``layer`` is a decoder layer (0-based); ``hidden_index`` numbers hidden states
(0 = embeddings, i = output of layer i - 1, the last after the final norm).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab.config import AttentionLike
from vla_lab.errors import InputError
from vla_lab.interp.attention import segment_mass, segment_positions
from vla_lab.interp.capture import ActivationCache, capture
from vla_lab.model.sequence import SequenceLayout
from vla_lab.model.vla import VLAAdapter


@dataclass
class MaskComparison:
    """One input under two attention masks."""

    masks: tuple[str, str]
    attention: pd.DataFrame
    hidden_cosine: pd.DataFrame
    actions: pd.DataFrame
    caches: tuple[ActivationCache, ActivationCache] = field(repr=False)

    @property
    def action_l1(self) -> float:
        return float(self.actions["abs_difference"].mean())


def compare_masks(
    model: VLAAdapter, inputs: Mapping[str, Any], masks: Sequence[AttentionLike] = ("causal", "bidirectional")
) -> MaskComparison:
    """Run ``inputs`` (``forward`` keyword arguments) under two masks on the same weights.

    ``attention``: segment mass per layer/head under each mask and the difference (b - a).
    ``hidden_cosine``: per sample, hidden_index (0 = embeddings) and segment, the mean cosine similarity
    of the tokens' hidden states between the masks (1 for a token whose states are identical, zero vectors
    included). ``actions``: normalised actions of both masks.
    """
    if len(masks) != 2:
        raise InputError(f"masks: got {len(masks)} masks, expected 2")
    specs = [model.config.attention_spec(m) for m in masks]
    caches, outputs = [], []
    for spec in specs:
        with capture(model, "segments") as cache, torch.no_grad():
            outputs.append(model(**inputs, attention=spec))
        caches.append(cache)
    a, b = (segment_mass(c) for c in caches)
    keys = ["sample", "layer", "head", "query_segment", "key_segment"]
    merged = a.merge(b, on=keys, suffixes=("_a", "_b"))
    merged = merged.rename(columns={"value_a": specs[0].label, "value_b": specs[1].label})
    merged["difference"] = merged[specs[1].label] - merged[specs[0].label]

    rows = []
    hidden_a, hidden_b = caches[0].hidden_states(), caches[1].hidden_states()
    for s, layout in enumerate(caches[0].layouts):
        for name, positions in segment_positions(layout).items():
            for index, (ha, hb) in enumerate(zip(hidden_a, hidden_b)):
                a_states, b_states = ha[s, positions].float(), hb[s, positions].float()
                cos = torch.nn.functional.cosine_similarity(a_states, b_states, dim=-1)
                # identical states are unchanged (cosine 1), also where they are zero vectors (cosine_similarity: 0)
                cos = torch.where((a_states == b_states).all(dim=-1), torch.ones_like(cos), cos)
                rows.append((s, index, name, float(cos.mean())))
    cosine = pd.DataFrame(rows, columns=["sample", "hidden_index", "segment", "cosine"])

    acts = [o.normalized_actions.float().cpu().numpy() for o in outputs]
    batch, chunk, dim = acts[0].shape
    idx = np.indices((batch, chunk, dim)).reshape(3, -1)
    actions = pd.DataFrame({
        "sample": idx[0], "step": idx[1], "dim": idx[2],
        specs[0].label: acts[0].ravel(), specs[1].label: acts[1].ravel(),
    })
    actions["abs_difference"] = np.abs(acts[1] - acts[0]).ravel()
    return MaskComparison((specs[0].label, specs[1].label), merged, cosine, actions, (caches[0], caches[1]))


@dataclass
class InterventionResult:
    """Actions of a baseline run and of the intervened run on the same input."""

    label: str
    baseline: np.ndarray
    intervened: np.ndarray

    @property
    def delta(self) -> np.ndarray:
        return self.intervened - self.baseline

    @property
    def l1(self) -> float:
        """Mean absolute change of the normalised actions."""
        return float(np.abs(self.delta).mean())

    @property
    def max_abs(self) -> float:
        return float(np.abs(self.delta).max())


def intervene(
    model: VLAAdapter,
    inputs: Mapping[str, Any],
    attention: AttentionLike | None = None,
    patches: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> InterventionResult:
    """Change the mask and/or patch hidden states; report the change in normalised actions.

    The baseline runs ``inputs`` with the model's own mask and no patches.
    """
    with torch.no_grad():
        base = model(**inputs).normalized_actions.float().cpu().numpy()
        if patches:
            with capture(model, "none", hidden_states=False, head=False, patches=patches):
                new = model(**inputs, attention=attention)
        else:
            new = model(**inputs, attention=attention)
    spec = model.config.attention_spec(attention)
    name = label or (spec.label + (f" + patch {sorted(patches)}" if patches else ""))
    return InterventionResult(name, base, new.normalized_actions.float().cpu().numpy())


def block_paths(
    model: VLAAdapter, inputs: Mapping[str, Any], pairs: Sequence[tuple[str, str]] | None = None
) -> pd.DataFrame:
    """Block each (query segment, key segment) pair in turn on top of the model's mask.

    Columns: query_segment, key_segment, l1, max_abs (changes of the normalised actions).
    """
    if pairs is None:
        pairs = [
            ("action_queries", "vision"), ("action_queries", "text"), ("action_queries", "tok0"),
            ("action_queries", "action_queries"), ("text", "vision"), ("vision", "text"),
            ("vision", "action_queries"), ("text", "action_queries"),
        ]
    base = model.attention
    rows = []
    for q, k in pairs:
        result = intervene(model, inputs, base.with_blocked((q, k)))
        rows.append((q, k, result.l1, result.max_abs))
    return pd.DataFrame(rows, columns=["query_segment", "key_segment", "l1", "max_abs"])


def patch_segments_from(
    source: ActivationCache, hook: str, segments: Sequence[str]
) -> Callable[[torch.Tensor, list[SequenceLayout]], torch.Tensor]:
    """A patch replacing ``segments`` positions of ``hook`` with the source run's values.

    Both runs must have the same layout (same prompt length and images).
    """
    values = source[hook]

    def patch(tensor: torch.Tensor, layouts: list[SequenceLayout]) -> torch.Tensor:
        out = tensor.clone()
        for b, layout in enumerate(layouts):
            if layout != source.layouts[b]:
                raise InputError("patch: the source run's layout differs from this run's; expected the same layout")
            for name in segments:
                span = layout.span(name)
                out[b, span.slice] = values[b, span.slice].to(out.dtype)
        return out

    return patch
