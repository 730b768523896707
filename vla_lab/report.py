"""The standard attention report: figures, tables and a mask audit for one input under one or two masks.

Used by ``vla-lab attention`` and the demo notebook::

    inputs, images, description = example_inputs(model)
    summary = attention_report(model, inputs, images, ("causal", "bidirectional"), out_dir="report",
                               description=description)

Layout of ``out_dir``: ``{mode}/`` per mask (figures as png/svg/pdf + JSON sidecars, ``segment_mass.csv``,
``query_patch_attention.csv``, ``entropy.csv``, ``head_attention.csv``, ``rollout.csv``,
``mask_audit.json``), ``comparison/`` for two masks, and ``report.json`` (the returned summary).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import analysis, figures
from vla_lab.capture import capture, estimate_full_bytes
from vla_lab.errors import InputError
from vla_lab.sequence import AttentionSpec

FORWARD_KEYS = ("pixel_values", "input_ids", "attention_mask", "proprio")
TABLES = ("segment_mass.csv", "query_patch_attention.csv", "entropy.csv", "head_attention.csv", "rollout.csv")
#: Head-averaged maps (for attention rollout) are kept when they take at most this many bytes.
HEAD_MEAN_BUDGET = 512 * 1024**2
EXAMPLE_SEED = 0


def forward_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The :meth:`VLAAdapter.forward` keyword arguments of a :meth:`prepare_inputs` result."""
    missing = [k for k in ("pixel_values", "input_ids") if k not in inputs]
    if missing:
        raise InputError(f"inputs: missing {missing}, expected the output of model.prepare_inputs(...)")
    return {k: inputs[k] for k in FORWARD_KEYS if k in inputs}


# ---------------------------------------------------------------------------------------------
# Example input
# ---------------------------------------------------------------------------------------------


def _example_scene(model: Any) -> Any:
    from vla_lab import world

    return world.sample_scene(EXAMPLE_SEED, world.WorldConfig(image_size=model.config.vision.image_size))


def _match_views(views: Sequence[Any], count: int) -> list[Any]:
    """Drop views past ``count``, or repeat the last one up to it."""
    views = list(views)[:count]
    return views + [views[-1]] * (count - len(views))


def example_inputs(model: Any) -> tuple[dict[str, Any], list[np.ndarray], str]:
    """A built-in observation for any model: scene 0 of the tabletop world at the model's image size.

    Returns (forward keyword arguments, the uint8 images, a one-line description). The third-person
    and wrist views are dropped or repeated to ``config.num_images``; the raw 8-d proprio is padded or
    cut to the robot's ``proprio_dim`` (normalised with the model's statistics when it has them).
    """
    from vla_lab import world

    scene = _example_scene(model)
    obs = world.render(scene)
    count = model.config.num_images
    images = _match_views(obs.images, count)
    proprio = None
    if model.config.use_proprio:
        dim = model.config.robot.proprio_dim
        proprio = np.zeros(dim, dtype=np.float64)
        proprio[: min(dim, obs.state.size)] = obs.state[:dim]
    inputs = model.prepare_inputs(images, obs.instruction, proprio, proprio_is_normalized=not model.config.norm_stats)
    size = images[0].shape[0]
    views = ", ".join(_match_views(["third-person", "wrist"], count))
    description = (
        f"tabletop world scene {EXAMPLE_SEED} ({scene.kind}): {obs.instruction!r}, {count} image(s) {size}x{size} "
        f"({views}), gripper start proprio"
    )
    return forward_inputs(inputs), images, description


def example_outlines(model: Any) -> dict[str, list[np.ndarray]]:
    """Target / distractor patch masks of :func:`example_inputs`' images, one per image (for overlays)."""
    from vla_lab import world

    scene = _example_scene(model)
    grid = tuple(model.vision_backbone.patch_grid)
    views = _match_views(["full", "wrist"], model.config.num_images)
    per_view = [world.object_patch_masks(scene, grid, view=v) for v in views]
    return {name: [m[name] for m in per_view] for name in ("target", "distractors")}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _dirname(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "mode"


def _layer_picks(num_layers: int) -> list[int]:
    """Middle and last layer (one layer when they coincide)."""
    return sorted({(num_layers - 1) // 2, num_layers - 1})


def _mode_figures(num_layers: int) -> list[str]:
    return [
        "segment_mass_layers",
        "action_query_layer_curves",
        *(f"action_query_patches_layer{layer}" for layer in _layer_picks(num_layers)),
        "head_gates",
    ]


COMPARISON_FIGURES = ("mode_difference", "hidden_cosine", "action_query_layer_curves")
COMPARISON_TABLES = ("attention_difference.csv", "hidden_cosine.csv", "actions.csv")


def report_paths(
    out_dir: str | Path, labels: Sequence[str], num_layers: int, formats: Sequence[str] = figures.EXPORT_FORMATS
) -> list[Path]:
    """Every file :func:`attention_report` writes for these modes (checked before anything is written)."""
    root = Path(out_dir)
    paths: list[Path] = []
    for label in labels:
        directory = root / _dirname(label)
        for name in _mode_figures(num_layers):
            paths += figures.export_paths(name, directory, formats)
        paths += [directory / t for t in TABLES] + [directory / "mask_audit.json"]
    if len(labels) == 2:
        for name in COMPARISON_FIGURES:
            paths += figures.export_paths(name, root / "comparison", formats)
        paths += [root / "comparison" / t for t in COMPARISON_TABLES]
    return [*paths, root / "report.json"]


def _model_name(model: Any) -> str:
    path = getattr(model, "checkpoint_path", None)
    return str(path) if path else str(model.config.name)


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False, float_format="%.9g")
    return path


def _write_json(data: Any, path: Path) -> Path:
    path.write_text(json.dumps(figures.to_jsonable(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def attention_report(
    model: Any,
    inputs: Mapping[str, Any],
    images: Sequence[np.ndarray],
    modes: Sequence[Any] = ("causal", "bidirectional"),
    *,
    out_dir: str | Path,
    description: str = "",
    overwrite: bool = False,
    outlines: Mapping[str, Any] | None = None,
    formats: Sequence[str] = figures.EXPORT_FORMATS,
    dpi: int = 150,
) -> dict[str, Any]:
    """Capture ``inputs`` under each mask and write the standard figures and tables; return a JSON-able summary.

    Per mode (in ``out_dir/{mode}/``): segment heatmaps of every layer, action-query mass by layer,
    action-query -> patch overlays (middle and last layer), bridge-head gates and key-group shares,
    and the tables. With two modes also ``out_dir/comparison/``. Summary::

        {"model", "input", "out_dir", "modes": {mode: {"mask_audit": verdict, "mask_audit_evidence",
         "segment_mass": {"QUERY->KEY": mean over layers and heads}, "normalized_actions", "files"}},
         "comparison": {"modes", "action_l1", "action_max_abs", "files"}}

    Figures use sample 0 and ``images`` are its images; tables hold every sample. Nothing is written
    if any target file exists and ``overwrite`` is False (:class:`ExportError`).
    """
    specs = [AttentionSpec.parse(m) for m in modes]
    labels = [s.label for s in specs]
    if not specs:
        raise InputError("modes: got none, expected one or two attention masks")
    if len({_dirname(lab) for lab in labels}) != len(labels):
        raise InputError(f"modes: got {labels}, expected distinct masks")
    forward = forward_inputs(inputs)
    num_layers = int(model.config.num_llm_layers)
    root = Path(out_dir)
    paths = report_paths(root, labels, num_layers, formats)
    if not overwrite:
        figures.check_free(paths)

    images = [np.asarray(im) for im in images]
    batch, seq = int(forward["input_ids"].shape[0]), _sequence_length(model, forward)
    keep_mean = estimate_full_bytes(num_layers, batch, 1, seq) <= HEAD_MEAN_BUDGET
    summary: dict[str, Any] = {"model": _model_name(model), "input": description, "out_dir": str(root), "modes": {}}
    for spec, label in zip(specs, labels):
        directory = root / _dirname(label)
        directory.mkdir(parents=True, exist_ok=True)
        with capture(model, "segments", keep_head_mean=keep_mean, hidden_states=False) as cache, torch.no_grad():
            out = model(**forward, attention=spec)
        meta = figures.provenance(model, label, description)

        def export(fig: Any, name: str, directory: Path = directory, meta: dict = meta) -> list[Path]:
            return figures.export_figure(fig, name, directory, provenance=meta, formats=formats, overwrite=True,
                                         dpi=dpi)

        segments = analysis.segment_mass(cache)
        patches = analysis.query_patch_attention(cache, "action_queries")
        heads = analysis.head_attention(cache)
        audit = analysis.mask_audit(cache)
        written: list[Path] = []
        written += export(figures.segment_heatmap_grid(segments, title=f"{label}: segment attention mass per layer "
                                                       "(mean over heads)"), "segment_mass_layers")
        written += export(figures.layer_curves(segments, title=f"{label}: attention mass of the action queries "
                                               "by layer\n(line: mean over heads, band: range over heads)"),
                          "action_query_layer_curves")
        for layer in _layer_picks(num_layers):
            fig = figures.patch_overlay(images, patches, layer=layer, outlines=outlines,
                                        title=f"{label}: action queries → image patches, layer {layer} (head mean)")
            written += export(fig, f"action_query_patches_layer{layer}")
        written += export(figures.head_gates(heads, title=f"{label}: bridge-attention head"), "head_gates")
        written.append(_write_csv(segments, directory / "segment_mass.csv"))
        written.append(_write_csv(patches, directory / "query_patch_attention.csv"))
        written.append(_write_csv(analysis.attention_entropy(cache), directory / "entropy.csv"))
        written.append(_write_csv(heads, directory / "head_attention.csv"))
        rollout = analysis.attention_rollout(cache) if keep_mean else pd.DataFrame(
            columns=["sample", "layer", "query_segment", "key_segment", "value"])
        written.append(_write_csv(rollout, directory / "rollout.csv"))
        written.append(_write_json({"verdict": audit.verdict, "evidence": audit.evidence, "pairs": audit.pairs,
                                    "provenance": meta}, directory / "mask_audit.json"))
        summary["modes"][label] = {
            "mask_audit": audit.verdict,
            "mask_audit_evidence": figures.to_jsonable(audit.evidence),
            "segment_mass": analysis.segment_mass_summary(cache),
            "normalized_actions": figures.to_jsonable(out.normalized_actions[0].float().cpu().numpy()),
            "files": [str(p) for p in written],
        }

    if len(specs) == 2:
        summary["comparison"] = _comparison(model, forward, specs, root / "comparison", description, formats, dpi)
    summary = figures.to_jsonable(summary)
    _write_json(summary, root / "report.json")
    return summary


def _sequence_length(model: Any, forward: Mapping[str, Any]) -> int:
    """LLM sequence length of a batch: prompt (tok0 included) + patches + queries + STOP."""
    patches = model.vision_backbone.patches_per_image * model.config.num_images
    return int(forward["input_ids"].shape[1]) + patches + model.config.num_action_queries + 1


def _comparison(
    model: Any, forward: dict[str, Any], specs: list[AttentionSpec], directory: Path, description: str,
    formats: Sequence[str], dpi: int,
) -> dict[str, Any]:
    comparison = analysis.compare_modes(model, forward, specs)
    first, second = comparison.modes
    directory.mkdir(parents=True, exist_ok=True)
    meta = figures.provenance(model, f"{first} vs {second}", description)

    def export(fig: Any, name: str) -> list[Path]:
        return figures.export_figure(fig, name, directory, provenance=meta, formats=formats, overwrite=True, dpi=dpi)

    written = export(figures.mode_difference_heatmap(comparison), "mode_difference")
    written += export(figures.hidden_cosine_curves(comparison), "hidden_cosine")
    written += export(figures.layer_curves(comparison, title=f"Attention mass of the action queries by layer: "
                                           f"{first} vs {second}\n(line: mean over heads, band: range over heads)"),
                      "action_query_layer_curves")
    written.append(_write_csv(comparison.attention, directory / "attention_difference.csv"))
    written.append(_write_csv(comparison.hidden_cosine, directory / "hidden_cosine.csv"))
    written.append(_write_csv(comparison.actions, directory / "actions.csv"))
    return {
        "modes": [first, second],
        "action_l1": comparison.action_l1,
        "action_max_abs": float(comparison.actions["abs_difference"].max()),
        "files": [str(p) for p in written],
    }


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_attention_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``vla-lab attention`` (on a subcommand's parser)."""
    from vla_lab.config import PRESETS

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory in the released layout")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a preset with random weights")
    parser.add_argument("--image", action="append", help="image file (repeat: third-person, wrist, ...); "
                        "default: the built-in tabletop example")
    parser.add_argument("--instruction", help="the task instruction (with --image)")
    parser.add_argument("--proprio", help="raw robot state, comma-separated (default: zeros, normalised)")
    parser.add_argument("--unnorm-key", dest="unnorm_key", help="dataset statistics for the proprio")
    parser.add_argument("--center-crop", dest="center_crop", action="store_true", help="LIBERO centre crop")
    parser.add_argument("--attention", choices=("causal", "bidirectional", "both"), default="both",
                        help="LLM mask(s) to report on (default: both)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--format", dest="formats", action="append", choices=figures.EXPORT_FORMATS,
                        help="figure format (repeat; default: png, svg and pdf)")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of the png figures (default: 150)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report's files")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed for random preset weights")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _user_inputs(model: Any, args: argparse.Namespace) -> tuple[dict[str, Any], list[np.ndarray], str]:
    from PIL import Image

    from vla_lab.cli import parse_proprio, proprio_for

    images = []
    for path in args.image:
        if not Path(path).is_file():
            raise InputError(f"--image: got {path!r}, expected an image file")
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))
    proprio, normalized = proprio_for(model, parse_proprio(args.proprio))
    inputs = model.prepare_inputs(images, args.instruction, proprio, unnorm_key=args.unnorm_key,
                                  proprio_is_normalized=normalized, center_crop=args.center_crop)
    description = f"{args.instruction!r} with images {', '.join(args.image)}"
    if args.proprio is not None:
        description += f", proprio {args.proprio}"
    return forward_inputs(inputs), images, description


def run_attention(args: argparse.Namespace) -> int:
    """``vla-lab attention``: write the attention report of one input and print its summary."""
    from vla_lab.cli import load_model

    if bool(args.image) != bool(args.instruction):
        raise InputError("--image/--instruction: expected both (a user input) or neither (the built-in example)")
    modes = ["causal", "bidirectional"] if args.attention == "both" else [args.attention]
    formats = tuple(dict.fromkeys(args.formats or figures.EXPORT_FORMATS))
    if not args.overwrite:  # the files whose names do not depend on the model, before loading it
        out = Path(args.out)
        figures.check_free([out / "report.json", *(out / _dirname(m) / "mask_audit.json" for m in modes)])
    model = load_model(args)
    if not args.overwrite:
        figures.check_free(report_paths(args.out, modes, model.config.num_llm_layers, formats))
    if args.image:
        inputs, images, description = _user_inputs(model, args)
        outlines = None
    else:
        inputs, images, description = example_inputs(model)
        outlines = example_outlines(model)
    summary = attention_report(model, inputs, images, modes, out_dir=args.out, description=description,
                               overwrite=args.overwrite, outlines=outlines, formats=formats, dpi=args.dpi)
    source = str(args.checkpoint) if args.checkpoint else f"preset {args.preset} (random weights, seed {args.seed})"
    summary = {"model": source, **{k: v for k, v in summary.items() if k != "model"},
               "dtype": args.dtype, "device": args.device}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"model: {source}")
    print(f"input: {description}")
    for label, result in summary["modes"].items():
        mass = result["segment_mass"]
        picks = ("action_queries->vision", "action_queries->text", "vision->action_queries", "text->action_queries")
        shown = ", ".join(f"{k} {mass[k]:.3f}" for k in picks if k in mass)
        print(f"{label}: mask audit {result['mask_audit']}; {shown}; {len(result['files'])} files")
    if "comparison" in summary:
        print(f"comparison: action L1 {summary['comparison']['action_l1']:.4g}")
    print(f"written to {args.out}/ (summary in {Path(args.out) / 'report.json'})")
    return 0


__all__ = [
    "add_attention_arguments",
    "attention_report",
    "example_inputs",
    "example_outlines",
    "forward_inputs",
    "report_paths",
    "run_attention",
]
