"""The ``vla-lab`` command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable

from vla_lab.config import PRESETS, VLAConfig
from vla_lab.errors import VLALabError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def _command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


@_command("params")
def _params(args: argparse.Namespace) -> int:
    from vla_lab.model import build_on_meta

    counts = build_on_meta(VLAConfig.preset(args.preset)).parameter_counts()
    if args.json:
        _print_json(counts)
    else:
        width = max(len(k) for k in counts)
        for key, value in counts.items():
            print(f"{key:<{width}}  {value:>15,}")
    return 0


def load_model(args: argparse.Namespace):
    """The model named by ``--checkpoint`` or ``--preset`` (random weights) with the CLI's options."""
    import torch

    from vla_lab.checkpoint import load_pretrained
    from vla_lab.model import build_random

    dtype = getattr(torch, args.dtype)
    attention = getattr(args, "attention", None)
    if attention == "both":
        attention = None
    if args.checkpoint:
        return load_pretrained(args.checkpoint, attention=attention, dtype=dtype, device=args.device)
    config = VLAConfig.preset(args.preset)
    if attention:
        config.attention = attention
    return build_random(config, seed=args.seed, dtype=dtype, device=args.device)


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
    """``--proprio v1,v2,...`` -> floats (None when not given)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise VLALabError(f"--proprio: got {text!r}, expected comma-separated numbers") from None


def proprio_for(model, proprio: list[float] | None) -> tuple[list[float] | None, bool]:
    """The CLI's proprio rule: (values, already normalised?).

    A given ``--proprio`` is the raw robot state (normalised with the model's statistics when it has
    them); without one, a model that uses proprio gets a normalised zero state.
    """
    if proprio is None and model.config.use_proprio:
        return [0.0] * model.config.robot.proprio_dim, True
    return proprio, not model.config.norm_stats


@_command("predict")
def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    proprio = parse_proprio(args.proprio)
    model = load_model(args)
    proprio, normalized = proprio_for(model, proprio)
    pred = model.predict_action(
        args.image,
        args.instruction,
        proprio,
        unnorm_key=args.unnorm_key,
        proprio_is_normalized=normalized,
        center_crop=args.center_crop,
    )
    actions = pred.actions if pred.actions is not None else pred.normalized_actions
    result = {
        "actions": np.asarray(actions)[0].tolist(),
        "normalized_actions": pred.normalized_actions[0].tolist(),
        "unnormalized": pred.actions is not None,
        "unnorm_key": pred.unnorm_key,
        "prompt": pred.prompts[0],
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
    else:
        print(f"prompt: {result['prompt']!r}  ({len(result['input_ids'])} tokens)")
        layout = f"{result['sequence_length']} tokens, {result['num_patches']} patches"
        print(f"sequence: {layout}, attention {pred.attention}")
        label = "actions" if pred.actions is not None else "normalized actions (no dataset statistics)"
        print(label + ":")
        for row in result["actions"]:
            print("  " + " ".join(f"{v:+.4f}" for v in row))
    return 0


@_command("bench")
def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from vla_lab.bench import load_for_bench, run_benchmarks

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise VLALabError(f"--out: {out} exists; choose another file")
    model = load_for_bench(args.preset, args.checkpoint, args.dtype, args.device, args.seed)
    result = run_benchmarks(model, args.batch, tuple(args.paths), tuple(args.capture), args.warmup, args.repeats,
                            preset=args.checkpoint or args.preset)
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        for row in result["results"]:
            print(f"{row['name']:<28} batch {row['batch']:>3}  median {row['median_ms']:9.2f} ms  "
                  f"[{row['min_ms']:.2f}, {row['max_ms']:.2f}]  {row['actions_per_second']:10.1f} actions/s  "
                  f"peak {row['peak_memory_bytes'] / 2**20:8.1f} MiB")
        print(f"device: {result['results'][0]['device_name']}, dtype {args.dtype}")
    return 0


@_command("demo")
def _demo(args: argparse.Namespace) -> int:
    from vla_lab.demo import run_demo_command

    return run_demo_command(args)


@_command("train")
def _train(args: argparse.Namespace) -> int:
    from vla_lab.train import run_train

    return run_train(args)


@_command("attention")
def _attention(args: argparse.Namespace) -> int:
    from vla_lab.report import run_attention

    return run_attention(args)


def _add_model_arguments(p: argparse.ArgumentParser, attention_choices: tuple[str, ...]) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory in the released layout")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a preset with random weights")
    p.add_argument("--attention", choices=attention_choices, default=None, help="LLM mask (default: the model's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed for random preset weights")
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from vla_lab.demo import add_demo_arguments
    from vla_lab.train import add_train_arguments

    p = sub.add_parser("demo", help="evaluate the shipped models and export their attention figures (main job)")
    add_demo_arguments(p)

    p = sub.add_parser("train", help="train a model on the synthetic tabletop world")
    add_train_arguments(p)

    p = sub.add_parser("params", help="parameter counts per component of a preset (no weights needed)")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("predict", help="predict an action chunk for images + instruction")
    _add_model_arguments(p, ("causal", "bidirectional"))
    p.add_argument("--image", action="append", required=True, help="image file (repeat: third-person, wrist, ...)")
    p.add_argument("--instruction", required=True)
    p.add_argument("--proprio", help="raw robot state, comma-separated (default: zeros, normalised)")
    p.add_argument("--unnorm-key", dest="unnorm_key", help="dataset statistics to use")
    p.add_argument("--center-crop", dest="center_crop", action="store_true", help="LIBERO centre crop (0.9 area)")

    p = sub.add_parser("bench", help="latency of the straightforward and fast paths (JSON)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory in the released layout")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a preset with random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--paths", nargs="+", default=["straightforward", "fast"], choices=("straightforward", "fast"))
    p.add_argument("--capture", nargs="*", default=[], choices=("segments", "full"), help="also time capture")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON to this file (never overwritten)")
    p.add_argument("--json", action="store_true", help="print JSON")

    from vla_lab.report import add_attention_arguments

    p = sub.add_parser("attention", help="attention figures and numbers under one or both masks")
    add_attention_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_attach_proprio_value(sys.argv[1:] if argv is None else list(argv)))
    try:
        return _COMMANDS[args.command](args)
    except VLALabError as exc:
        print(f"vla-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
