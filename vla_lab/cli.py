"""The ``vla-lab`` command line: every parser and every handler.

Every failure ends a command with one line on stderr, ``vla-lab <command>: error: <field>: got ...,
expected ...``, and a non-zero exit status: 2 for bad input, unusable checkpoints, existing outputs and
bad options; 130 after Ctrl-C; 1 for anything unforeseen. Warnings are one line each too. ``--debug``
(anywhere on the line, or ``VLA_LAB_DEBUG=1``) shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from vla_lab import eval_cli, files, study_cli, train_cli
from vla_lab.config import PRESETS, PROMPTS, VLAConfig, resolve_device
from vla_lab.errors import InputError, InterruptError, VLALabError
from vla_lab.model import VLAAdapter, build_on_meta, build_random, default_dtype, forward_inputs, load_pretrained
from vla_lab.processing.normalization import finite_numbers

Handler = Callable[[argparse.Namespace], int]
_HANDLERS: dict[str, Handler] = {}
MASK_CHOICES = ("causal", "bidirectional")


def _handler(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[name] = fn
        return fn

    return register


def _print_json(data: object) -> None:
    """Strict JSON on stdout: a NaN or infinite number is printed as null, never as bare NaN."""
    print(files.dumps(data))


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``vla-lab <command>: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------------------------------------
# Shared options and their meaning
# ---------------------------------------------------------------------------------------------


#: ``--prompt``'s help: what each choice is and the default.
PROMPT_HELP = ("the prompt the instruction is put in: qwen-chat (Qwen's chat template, as upstream runs released "
               "checkpoints) or openvla (In: ... Out:); default: the model's own (qwen-chat for a released "
               "checkpoint, openvla for vla-lab's trained models)")


def add_model_arguments(
    parser: argparse.ArgumentParser,
    attention: tuple[str, ...] | None = MASK_CHOICES,
    attention_default: str | None = None,
    prompt: bool = True,
    dtype_default: str | None = "float32",
) -> Any:
    """``--checkpoint DIR | --preset NAME`` (random weights, ``--seed``), ``--dtype`` (``dtype_default``; None:
    the model's own, :data:`DTYPE_HELP`), ``--device``, ``--prompt`` (when ``prompt``: commands that build
    inputs from an instruction) and, unless ``attention`` is None, ``--attention`` with those choices. Returns
    the group of model sources."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory in the released layout")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a preset with random weights")
    if attention is not None:
        parser.add_argument("--attention", choices=attention, default=attention_default,
                            help=f"LLM mask (default: {attention_default or 'the model' + chr(39) + 's'})")
    if prompt:
        parser.add_argument("--prompt", choices=PROMPTS, default=None, help=PROMPT_HELP)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=dtype_default,
                        help=f"weights and activations (default: {dtype_default or DTYPE_HELP})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed for random preset weights")
    return source


#: What ``--dtype`` defaults to where it follows the model (:func:`vla_lab.model.default_dtype`).
DTYPE_HELP = ("bfloat16 for a released checkpoint, as upstream runs it; the dtype of its weights for a vla-lab "
              "checkpoint; float32 for a preset")


def load_model(args: argparse.Namespace) -> VLAAdapter:
    """The model named by ``--checkpoint`` or ``--preset`` (random weights) with the CLI's options."""
    import torch

    args.dtype = args.dtype or default_dtype(args.checkpoint)
    dtype = getattr(torch, args.dtype)
    args.device = str(resolve_device(args.device, "--device"))
    attention = getattr(args, "attention", None)
    attention = None if attention == "both" else attention
    prompt = getattr(args, "prompt", None)
    if args.checkpoint:
        return load_pretrained(args.checkpoint, attention=attention, dtype=dtype, device=args.device, prompt=prompt)
    overrides = {k: v for k, v in (("attention", attention), ("prompt", prompt)) if v}
    return build_random(VLAConfig.preset(args.preset, **overrides), seed=args.seed, dtype=dtype, device=args.device)


def model_source(args: argparse.Namespace) -> str:
    return str(args.checkpoint) if args.checkpoint else f"preset {args.preset} (random weights, seed {args.seed})"


def _attach_proprio_value(argv: list[str]) -> list[str]:
    """``--proprio -0.2,0.1`` -> ``--proprio=-0.2,0.1``: argparse takes a value starting with '-' for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--proprio" and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"--proprio={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def parse_proprio(text: str | None) -> list[float] | None:
    """``--proprio v1,v2,...`` -> finite floats (None when not given)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--proprio: got {text!r}, expected comma-separated numbers") from None
    return finite_numbers(values, "--proprio").tolist()


def proprio_for(model: VLAAdapter, proprio: list[float] | None) -> tuple[list[float] | None, bool]:
    """The CLI's proprio rule: (values, already normalised?).

    A given ``--proprio`` is the raw robot state (normalised with the model's statistics when it has
    them); without one, a model that uses proprio gets a normalised zero state.
    """
    if proprio is None and model.config.use_proprio:
        return [0.0] * model.config.robot.proprio_dim, True
    return proprio, not model.config.norm_stats


def _read_images(paths: list[str]) -> list[np.ndarray]:
    from vla_lab.processing.images import load_image

    return [np.asarray(load_image(path, "--image")) for path in paths]


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


@_handler("params")
def _params(args: argparse.Namespace) -> int:
    counts = build_on_meta(VLAConfig.preset(args.preset)).parameter_counts()
    if args.json:
        _print_json(counts)
    else:
        width = max(len(k) for k in counts)
        for key, value in counts.items():
            print(f"{key:<{width}}  {value:>15,}")
    return 0


@_handler("predict")
def _predict(args: argparse.Namespace) -> int:
    proprio = parse_proprio(args.proprio)
    images = _read_images(args.image)
    model = load_model(args)
    proprio, normalized = proprio_for(model, proprio)
    pred = model.predict_action(
        images, args.instruction, proprio, unnorm_key=args.unnorm_key, proprio_is_normalized=normalized,
        center_crop=args.center_crop,
    )
    actions = pred.actions if pred.actions is not None else pred.normalized_actions
    if not np.isfinite(np.asarray(actions, dtype=np.float64)).all():
        raise InputError("actions: the model predicted NaN or infinite values, expected finite actions "
                         "(check the checkpoint's weights and the inputs)")
    result = {
        "actions": np.asarray(actions)[0].tolist(),
        "normalized_actions": pred.normalized_actions[0].tolist(),
        "unnormalized": pred.actions is not None,
        "unnorm_key": pred.unnorm_key,
        "prompt": pred.prompt,
        "prompt_text": pred.prompts[0] if pred.prompts else None,
        "input_ids": pred.input_ids[0],
        "num_patches": pred.layout.num_patches,
        "sequence_length": pred.layout.num_tokens,
        "segments": pred.layout.to_dict(),
        "attention": pred.attention,
        "model": str(args.checkpoint or args.preset),
        "dtype": args.dtype,
        "device": args.device,
    }
    if args.json:
        _print_json(result)
        return 0
    print(f"prompt ({result['prompt']}): {result['prompt_text']!r}  ({len(result['input_ids'])} tokens)")
    print(f"sequence: {result['sequence_length']} tokens, {result['num_patches']} patches, attention {pred.attention}")
    print(("actions" if pred.actions is not None else "normalized actions (no dataset statistics)") + ":")
    for row in result["actions"]:
        print("  " + " ".join(f"{v:+.4f}" for v in row))
    return 0


@_handler("bench")
def _bench(args: argparse.Namespace) -> int:
    import torch

    from vla_lab.experiments.bench import run_benchmarks

    out = files.check_output_file(args.out, "--out") if args.out else None
    for name in ("batch", "warmup", "repeats", "threads"):
        values = getattr(args, name)
        minimum = 0 if name == "warmup" else 1
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value < minimum:
                raise InputError(f"--{name}: got {value}, expected an integer >= {minimum}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args)
    result = run_benchmarks(model, args.batch, tuple(args.paths), tuple(args.capture), args.warmup, args.repeats,
                            preset=args.checkpoint or args.preset, capture_vision=args.capture_vision)
    text = files.dumps(result)
    if out is not None:
        files.write_text(out, text + "\n")
    if args.json:
        print(text)
        return 0
    for row in result["results"]:
        print(f"{row['name']:<28} batch {row['batch']:>3}  median {row['median_ms']:9.2f} ms  "
              f"[{row['min_ms']:.2f}, {row['max_ms']:.2f}]  {row['actions_per_second']:10.1f} actions/s  "
              f"peak {row['peak_memory_bytes'] / 2**20:8.1f} MiB")
    print(f"device: {result['results'][0]['device_name']}, dtype {args.dtype}")
    return 0


@_handler("attention")
def _attention(args: argparse.Namespace) -> int:
    from vla_lab import tabletop, viz
    from vla_lab.viz.report import report_dirname

    if bool(args.image) != bool(args.instruction):
        raise InputError("--image/--instruction: expected both (a user input) or neither (the built-in example)")
    unused = [o for o, v in (("--proprio", args.proprio), ("--unnorm-key", args.unnorm_key),
                             ("--center-crop", args.center_crop)) if v and not args.image]
    if unused:
        raise InputError(f"{unused[0]}: given without --image, expected it only with a user input "
                         "(the built-in example has its own)")
    modes = list(MASK_CHOICES) if args.attention == "both" else [args.attention]
    formats = tuple(dict.fromkeys(args.formats or viz.EXPORT_FORMATS))
    if args.dpi < 10 or args.dpi > 2400:
        raise InputError(f"--dpi: got {args.dpi}, expected 10 to 2400")
    proprio_values = parse_proprio(args.proprio)
    images = _read_images(args.image) if args.image else None
    out = files.check_output_dir(args.out, "--out")
    if not args.overwrite:  # the files whose names do not depend on the model, before loading it
        viz.check_free([out / "report.json", *(out / report_dirname(m) / "mask_audit.json" for m in modes)])
    model = load_model(args)
    if not args.overwrite:
        viz.check_free(viz.report_paths(out, modes, model.config.num_llm_layers, formats))
    outlines = None
    if images is not None:
        proprio, normalized = proprio_for(model, proprio_values)
        inputs = forward_inputs(model.prepare_inputs(images, args.instruction, proprio, unnorm_key=args.unnorm_key,
                                                     proprio_is_normalized=normalized, center_crop=args.center_crop))
        description = f"{args.instruction!r} with images {', '.join(args.image)}"
        description += f", proprio {args.proprio}" if args.proprio is not None else ""
    else:
        inputs, images, description = tabletop.example_inputs(model)
        outlines = tabletop.example_outlines(model)
    summary = viz.attention_report(model, inputs, images, modes, out_dir=out, description=description,
                                   overwrite=args.overwrite, outlines=outlines, formats=formats, dpi=args.dpi)
    summary = {"model": model_source(args), **{k: v for k, v in summary.items() if k != "model"},
               "dtype": args.dtype, "device": args.device}
    if args.json:
        _print_json(summary)
        return 0
    print(f"model: {summary['model']}")
    print(f"input: {description}")
    picks = ("action_queries->vision", "action_queries->text", "vision->action_queries", "text->action_queries")
    for label, result in summary["modes"].items():
        shown = ", ".join(f"{k} {result['segment_mass'][k]:.3f}" for k in picks if k in result["segment_mass"])
        print(f"{label}: mask audit {result['mask_audit']}; {shown}; {len(result['files'])} files")
    if "comparison" in summary:
        print(f"comparison: action L1 {summary['comparison']['action_l1']:.4g}")
    print(f"written to {out}/ (summary in {out / 'report.json'})")
    return 0


@_handler("demo")
def _demo(args: argparse.Namespace) -> int:
    from vla_lab.experiments.demo import run_demo

    if args.episodes < 1:
        raise InputError(f"--episodes: got {args.episodes}, expected a positive integer")
    summary = run_demo(args.out, episodes=args.episodes, overwrite=args.overwrite, baseline=args.baseline)
    if args.json:
        _print_json(summary)
        return 0
    print(f"shipped tabletop models on {summary['episodes']} held-out test scenes (closed loop):")
    for mask, m in summary["models"].items():
        layer = m["target_attention"]["llm_action_queries"]["layer"]
        low, high = m["success_ci95"]
        print(f"  {mask:<14} success {m['success_rate']:6.1%} [{low:.1%}, {high:.1%}]  action L1 {m['action_l1']:.4f}"
              f"  target-attention ratio {m['target_attention_ratio']:5.2f}x (LLM layer {layer})")
    for mask, m in summary["random_baseline"].items():
        layer = m["target_attention"]["llm_action_queries"]["layer"]
        print(f"  random init, {mask:<14}{'':53}target-attention ratio {m['target_attention_ratio']:5.2f}x "
              f"(LLM layer {layer})")
    print(f"figures and demo.json in {summary['out_dir']}/ ({summary['seconds']} s)")
    return 0


@_handler("train")
def _train(args: argparse.Namespace) -> int:
    return train_cli.run(args)


@_handler("eval")
def _eval(args: argparse.Namespace) -> int:
    return eval_cli.run(args, load_model)


@_handler("libero")
def _libero(args: argparse.Namespace) -> int:
    handlers = {"demos": eval_cli.run_demos, "attention": eval_cli.run_attention, "expert": eval_cli.run_expert}
    return handlers[args.tool](args)


@_handler("study")
def _study(args: argparse.Namespace) -> int:
    return study_cli.run(args)


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vla-lab", description="VLA-Adapter as released, and tools to look inside it")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (also VLA_LAB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="evaluate the shipped models and export their attention figures (main job)")
    p.add_argument("--out", default="vla_lab_demo", help="output directory (default: ./vla_lab_demo)")
    p.add_argument("--episodes", type=int, default=200, help="held-out test scenes per model (default 200)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo in --out")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the random baseline")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    train_cli.add_parser(sub, MASK_CHOICES)

    p = sub.add_parser("params", help="parameter counts per component of a preset (no weights needed)")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("predict", help="predict an action chunk for images + instruction")
    add_model_arguments(p)
    p.add_argument("--image", action="append", required=True, help="image file (repeat: third-person, wrist, ...)")
    p.add_argument("--instruction", required=True)
    p.add_argument("--proprio", help="raw robot state, comma-separated (default: zeros, normalised)")
    p.add_argument("--unnorm-key", dest="unnorm_key", help="dataset statistics to use")
    p.add_argument("--center-crop", dest="center_crop", action="store_true", help="LIBERO centre crop (0.9 area)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("bench", help="latency of the straightforward and fast paths (JSON)")
    add_model_arguments(p, attention=None, prompt=False)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--paths", nargs="+", default=["straightforward", "fast"], choices=("straightforward", "fast"))
    p.add_argument("--capture", nargs="*", default=[], choices=("segments", "full"), help="also time capture")
    p.add_argument("--capture-vision", dest="capture_vision", action="store_true",
                   help="captures also record every ViT layer's attention")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="also write the JSON to this file (never overwritten)")
    p.add_argument("--json", action="store_true", help="print JSON")

    from vla_lab.viz import EXPORT_FORMATS

    p = sub.add_parser("attention", help="attention figures and numbers under one or both masks")
    add_model_arguments(p, attention=(*MASK_CHOICES, "both"), attention_default="both")
    p.add_argument("--image", action="append", help="image file (repeat: third-person, wrist, ...); "
                   "default: the built-in tabletop example")
    p.add_argument("--instruction", help="the task instruction (with --image)")
    p.add_argument("--proprio", help="raw robot state, comma-separated (default: zeros, normalised)")
    p.add_argument("--unnorm-key", dest="unnorm_key", help="dataset statistics for the proprio")
    p.add_argument("--center-crop", dest="center_crop", action="store_true", help="LIBERO centre crop")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", dest="formats", action="append", choices=EXPORT_FORMATS,
                   help="figure format (repeat; default: png, svg and pdf)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the png figures (default: 150)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report's files")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    eval_cli.add_parser(sub, add_model_arguments)
    eval_cli.add_libero_parser(sub)
    study_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and a non-zero exit status (see the module doc)."""
    argv = _attach_proprio_value(sys.argv[1:] if argv is None else list(argv))
    debug = "--debug" in argv or os.environ.get("VLA_LAB_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    prog = f"vla-lab {args.command}"

    def one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        text = " ".join(str(message).split())
        print(f"{prog}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = one_line_warning
        try:
            return _HANDLERS[args.command](args)
        except BrokenPipeError:  # the reader of stdout went away (``| head``): nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except Exception as exc:
            if debug:
                raise
            print(f"{prog}: error: {_describe(exc)}", file=sys.stderr)
            return 130 if isinstance(exc, InterruptError) else 2 if isinstance(exc, (VLALabError, OSError)) else 1
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"{prog}: error: interrupted", file=sys.stderr)
            return 130


def _describe(exc: BaseException) -> str:
    """One line for any exception: vla_lab's own messages as they are, others with their type."""
    if isinstance(exc, VLALabError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename!r}" if exc.filename else ""
        text = f"file{where}: {exc.strerror}"
    elif isinstance(exc, MemoryError):
        text = "memory: the machine ran out of memory; expected a smaller model, batch or input"
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
