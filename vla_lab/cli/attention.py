"""``vla-lab attention``: the standard attention report (figures and numbers) under one or both LLM masks."""

from __future__ import annotations

import argparse

from vla_lab.cli import options
from vla_lab.errors import InputError


def register(sub: options.Subparsers) -> None:
    """Add ``attention`` to the subparsers of the ``vla-lab`` parser."""
    from vla_lab.viz import EXPORT_FORMATS

    p = sub.add_parser("attention", help="attention figures and numbers under one or both masks")
    options.add_model_arguments(p, attention=(*options.MASK_CHOICES, "both"), attention_default="both")
    options.add_observation(p, required=False)
    options.add_out(p, "output directory", required=True)
    p.add_argument("--format", dest="formats", action="append", choices=EXPORT_FORMATS,
                   help="figure format (repeat; default: png, svg and pdf)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the png figures (default: 150)")
    options.add_overwrite(p, "replace an existing report's files")
    options.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab attention``: everything cheap is checked before the model is loaded."""
    from vla_lab import files, tabletop, viz
    from vla_lab.model import forward_inputs
    from vla_lab.viz.report import report_dirname

    if bool(args.image) != bool(args.instruction):
        raise InputError("--image/--instruction: expected both (a user input) or neither (the built-in example)")
    unused = [o for o, v in (("--proprio", args.proprio), ("--unnorm-key", args.unnorm_key),
                             ("--center-crop", args.center_crop)) if v and not args.image]
    if unused:
        raise InputError(f"{unused[0]}: given without --image, expected it only with a user input "
                         "(the built-in example has its own)")
    masks = list(options.MASK_CHOICES) if args.attention == "both" else [args.attention]
    formats = tuple(dict.fromkeys(args.formats or viz.EXPORT_FORMATS))
    if args.dpi < 10 or args.dpi > 2400:
        raise InputError(f"--dpi: got {args.dpi}, expected 10 to 2400")
    proprio_values = options.parse_proprio(args.proprio)
    images = options.read_images(args.image) if args.image else None
    out = files.check_output_dir(args.out, "--out")
    if not args.overwrite:  # the files whose names do not depend on the model, before loading it
        viz.check_free([out / "report.json", *(out / report_dirname(m) / "mask_audit.json" for m in masks)])
    model = options.load_model(args)
    if not args.overwrite:
        viz.check_free(viz.report_paths(out, masks, model.config.num_llm_layers, formats))
    outlines = None
    if images is not None:
        proprio, normalized = options.proprio_for(model, proprio_values)
        inputs = forward_inputs(model.prepare_inputs(images, args.instruction, proprio, unnorm_key=args.unnorm_key,
                                                     proprio_is_normalized=normalized, center_crop=args.center_crop))
        description = f"{args.instruction!r} with images {', '.join(args.image)}"
        description += f", proprio {args.proprio}" if args.proprio is not None else ""
    else:
        inputs, images, description = tabletop.example_inputs(model)
        outlines = tabletop.example_outlines(model)
    summary = viz.attention_report(model, inputs, images, masks, out_dir=out, description=description,
                                   overwrite=args.overwrite, outlines=outlines, formats=formats, dpi=args.dpi)
    summary = {"model": options.model_source(args), **{k: v for k, v in summary.items() if k != "model"},
               "dtype": args.dtype, "device": args.device}
    if args.json:
        options.print_json(summary)
        return 0
    print(f"model: {summary['model']}")
    print(f"input: {description}")
    picks = ("action_queries->vision", "action_queries->text", "vision->action_queries", "text->action_queries")
    for label, result in summary["masks"].items():
        shown = ", ".join(f"{k} {result['segment_mass'][k]:.3f}" for k in picks if k in result["segment_mass"])
        print(f"{label}: mask audit {result['mask_audit']}; {shown}; {len(result['files'])} files")
    if "comparison" in summary:
        print(f"comparison: action L1 {summary['comparison']['action_l1']:.4g}")
    print(f"written to {out}/ (summary in {out / 'report.json'})")
    return 0
