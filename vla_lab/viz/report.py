"""The standard attention report: figures, tables and a mask audit for one input under one or two masks.

Used by ``vla-lab attention`` and ``vla-lab demo``::

    inputs, images, description = tabletop.example_inputs(model)
    summary = viz.attention_report(model, inputs, images, ("causal", "bidirectional"), out_dir="report",
                                   description=description)

Layout of ``out_dir``: ``{mask}/`` per mask (figures as png/svg/pdf + JSON sidecars, ``segment_mass.csv``,
``query_patch_attention.csv``, ``entropy.csv``, ``head_attention.csv``, ``rollout.csv``,
``mask_audit.json``), ``comparison/`` for two masks, and ``report.json`` (the returned summary).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import interp
from vla_lab.config import AttentionLike, AttentionSpec
from vla_lab.errors import InputError
from vla_lab.files import write_atomic, write_text
from vla_lab.model import VLAAdapter, forward_inputs
from vla_lab.viz import masks, overlays, plots
from vla_lab.viz.export import EXPORT_FORMATS, check_free, export_figure, export_paths, provenance, to_jsonable

TABLES = ("segment_mass.csv", "query_patch_attention.csv", "entropy.csv", "head_attention.csv", "rollout.csv")
#: Head-averaged maps (for attention rollout) are kept when they take at most this many bytes.
HEAD_MEAN_BUDGET = 512 * 1024**2


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def report_dirname(label: str) -> str:
    """The directory name of one mask's results (a file-system-safe form of its label)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "mask"


def _layer_picks(num_layers: int) -> list[int]:
    """Middle and last layer (one layer when they coincide)."""
    return sorted({(num_layers - 1) // 2, num_layers - 1})


def _mask_figures(num_layers: int) -> list[str]:
    return [
        "segment_mass_layers",
        "action_query_layer_curves",
        *(f"action_query_patches_layer{layer}" for layer in _layer_picks(num_layers)),
        "head_gates",
    ]


COMPARISON_FIGURES = ("mask_difference", "hidden_cosine", "action_query_layer_curves")
COMPARISON_TABLES = ("attention_difference.csv", "hidden_cosine.csv", "actions.csv")


def report_paths(
    out_dir: str | Path, labels: Sequence[str], num_layers: int, formats: Sequence[str] = EXPORT_FORMATS
) -> list[Path]:
    """Every file :func:`attention_report` writes for these masks (checked before anything is written)."""
    root = Path(out_dir)
    paths: list[Path] = []
    for label in labels:
        directory = root / report_dirname(label)
        for name in _mask_figures(num_layers):
            paths += export_paths(name, directory, formats)
        paths += [directory / t for t in TABLES] + [directory / "mask_audit.json"]
    if len(labels) == 2:
        for name in COMPARISON_FIGURES:
            paths += export_paths(name, root / "comparison", formats)
        paths += [root / "comparison" / t for t in COMPARISON_TABLES]
    return [*paths, root / "report.json"]


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    write_atomic(path, lambda temp: df.to_csv(temp, index=False, float_format="%.9g"))
    return path


def _write_json(data: Any, path: Path) -> Path:
    write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")
    return path


def attention_report(
    model: VLAAdapter,
    inputs: Mapping[str, Any],
    images: Sequence[np.ndarray],
    masks: Sequence[AttentionLike] = ("causal", "bidirectional"),
    *,
    out_dir: str | Path,
    description: str = "",
    overwrite: bool = False,
    outlines: Mapping[str, Any] | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    dpi: int = 150,
) -> dict[str, Any]:
    """Capture ``inputs`` under each mask and write the standard figures and tables; return a JSON-able summary.

    Per mask (in ``out_dir/{mask}/``): segment heatmaps of every layer, action-query mass by layer,
    action-query -> patch overlays (middle and last layer), bridge-head gates and key-group shares,
    and the tables. With two masks also ``out_dir/comparison/``. Summary::

        {"model", "input", "out_dir", "masks": {mask: {"mask_audit": verdict, "mask_audit_evidence",
         "segment_mass": {"QUERY->KEY": mean over layers and heads}, "normalized_actions", "files"}},
         "comparison": {"masks", "action_l1", "action_max_abs", "files"}}

    Figures use sample 0 and ``images`` are its images; tables hold every sample. Nothing is written
    if any target file exists and ``overwrite`` is False (:class:`ExportError`).
    """
    specs = [model.config.attention_spec(m) for m in masks]
    labels = [s.label for s in specs]
    if not specs:
        raise InputError("masks: got none, expected one or two attention masks")
    if len({report_dirname(lab) for lab in labels}) != len(labels):
        raise InputError(f"masks: got {labels}, expected distinct masks")
    forward = forward_inputs(inputs)
    num_layers = int(model.config.num_llm_layers)
    root = Path(out_dir)
    paths = report_paths(root, labels, num_layers, formats)
    if not overwrite:
        check_free(paths)

    images = [np.asarray(im) for im in images]
    batch, seq = int(forward["input_ids"].shape[0]), _sequence_length(model, forward)
    keep_mean = interp.estimate_full_bytes(num_layers, batch, 1, seq) <= HEAD_MEAN_BUDGET
    summary: dict[str, Any] = {"model": model.source, "input": description, "out_dir": str(root), "masks": {}}
    for spec, label in zip(specs, labels):
        directory = root / report_dirname(label)
        directory.mkdir(parents=True, exist_ok=True)
        with interp.capture(model, "segments", keep_head_mean=keep_mean, hidden_states=False) as cache, torch.no_grad():
            out = model(**forward, attention=spec)
        meta = provenance(model, label, description)

        def export(fig: Any, name: str, directory: Path = directory, meta: dict = meta) -> list[Path]:
            return export_figure(fig, name, directory, provenance=meta, formats=formats, overwrite=True,
                                         dpi=dpi)

        segments = interp.segment_mass(cache)
        patches = interp.query_patch_attention(cache, "action_queries")
        heads = interp.head_attention(cache)
        audit = interp.mask_audit(cache)
        written: list[Path] = []
        written += export(plots.segment_heatmap_grid(segments, title=f"{label}: segment attention mass per layer "
                                                       "(mean over heads)"), "segment_mass_layers")
        written += export(plots.layer_curves(segments, title=f"{label}: attention mass of the action queries "
                                               "by layer\n(line: mean over heads, band: range over heads)"),
                          "action_query_layer_curves")
        for layer in _layer_picks(num_layers):
            fig = overlays.patch_overlay(images, patches, layer=layer, outlines=outlines,
                                        title=f"{label}: action queries → image patches, layer {layer} (head mean)")
            written += export(fig, f"action_query_patches_layer{layer}")
        written += export(plots.head_gates(heads, title=f"{label}: bridge-attention head"), "head_gates")
        written.append(_write_csv(segments, directory / "segment_mass.csv"))
        written.append(_write_csv(patches, directory / "query_patch_attention.csv"))
        written.append(_write_csv(interp.attention_entropy(cache), directory / "entropy.csv"))
        written.append(_write_csv(heads, directory / "head_attention.csv"))
        rollout = interp.attention_rollout(cache) if keep_mean else pd.DataFrame(
            columns=["sample", "layer", "query_segment", "key_segment", "value"])
        written.append(_write_csv(rollout, directory / "rollout.csv"))
        written.append(_write_json({"verdict": audit.verdict, "evidence": audit.evidence, "pairs": audit.pairs,
                                    "provenance": meta}, directory / "mask_audit.json"))
        summary["masks"][label] = {
            "mask_audit": audit.verdict,
            "mask_audit_evidence": to_jsonable(audit.evidence),
            "segment_mass": interp.segment_mass_summary(cache),
            "normalized_actions": to_jsonable(out.normalized_actions[0].float().cpu().numpy()),
            "files": [str(p) for p in written],
        }

    if len(specs) == 2:
        summary["comparison"] = _comparison(model, forward, specs, root / "comparison", description, formats, dpi)
    summary = to_jsonable(summary)
    _write_json(summary, root / "report.json")
    return summary


def _sequence_length(model: VLAAdapter, forward: Mapping[str, Any]) -> int:
    """Padded LLM sequence length of a batch (its assembly plan's)."""
    ids, mask = model.check_ids(forward["input_ids"], forward.get("attention_mask"))
    return model.plan(mask.sum(dim=1).tolist(), ids.shape[1]).length


def _comparison(
    model: VLAAdapter, forward: dict[str, Any], specs: list[AttentionSpec], directory: Path, description: str,
    formats: Sequence[str], dpi: int,
) -> dict[str, Any]:
    comparison = interp.compare_masks(model, forward, specs)
    first, second = comparison.masks
    directory.mkdir(parents=True, exist_ok=True)
    meta = provenance(model, f"{first} vs {second}", description)

    def export(fig: Any, name: str) -> list[Path]:
        return export_figure(fig, name, directory, provenance=meta, formats=formats, overwrite=True, dpi=dpi)

    written = export(masks.mask_difference_heatmap(comparison), "mask_difference")
    written += export(masks.hidden_cosine_curves(comparison), "hidden_cosine")
    written += export(plots.layer_curves(comparison, title=f"Attention mass of the action queries by layer: "
                                           f"{first} vs {second}\n(line: mean over heads, band: range over heads)"),
                      "action_query_layer_curves")
    written.append(_write_csv(comparison.attention, directory / "attention_difference.csv"))
    written.append(_write_csv(comparison.hidden_cosine, directory / "hidden_cosine.csv"))
    written.append(_write_csv(comparison.actions, directory / "actions.csv"))
    return {
        "masks": [first, second],
        "action_l1": comparison.action_l1,
        "action_max_abs": float(comparison.actions["abs_difference"].max()),
        "files": [str(p) for p in written],
    }


__all__ = ["COMPARISON_FIGURES", "TABLES", "attention_report", "report_dirname", "report_paths"]
