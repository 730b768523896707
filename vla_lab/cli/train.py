"""``vla-lab train``: the parser, the configurations its options describe, and the handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vla_lab import files
from vla_lab.cli import options
from vla_lab.config import VLAConfig, resolve_device
from vla_lab.errors import ConfigError, InterruptError

if TYPE_CHECKING:
    from vla_lab.training.train import TrainConfig


def register(sub: options.Subparsers) -> None:
    """Add ``train`` to the subparsers of the ``vla-lab`` parser."""
    p = sub.add_parser("train", help="train a model on the synthetic tabletop world or on LIBERO demonstrations")
    options.add_out(p, "output directory (checkpoints, metrics.jsonl)", required=True)
    p.add_argument("--data", default=None,
                   help="a 'vla-lab libero demos' directory: train the LIBERO recipe (preset libero-small) on it "
                        "(default: the tabletop world)")
    options.add_attention(p, (*options.MASK_CHOICES, "prefix-lm"), default_text="causal")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    options.add_seed(p, None, "seed of weights, data order and noise")
    p.add_argument("--config", default=None, help="TrainConfig as a JSON file or string")
    p.add_argument("--model-config", dest="model_config", default=None,
                   help="VLAConfig JSON (default: vla_lab.tabletop.tabletop_config())")
    options.add_prompt(p, "the prompt the model is trained with, saved in its configuration (default: the model "
                          "configuration's; openvla for the tabletop and libero-small models, whose tokenizers have "
                          "no chat tokens)")
    options.add_device(p, default=None)
    options.add_num_threads(p, None, "torch CPU threads")
    p.add_argument("--test-episodes", dest="test_episodes", type=int, default=None,
                   help="test-split episodes evaluated after training (0: none)")
    p.add_argument("--stop-at", dest="stop_at", type=int, default=None,
                   help="end after this many steps with the schedule unchanged (a checkpoint is written there)")
    options.add_resume(p, "continue the run in --out from its latest checkpoint (its settings must match)")
    options.add_overwrite(p)
    options.add_no_progress(p, "no progress bars")
    p.set_defaults(func=run)


def train_configs(args: argparse.Namespace) -> tuple[TrainConfig, VLAConfig]:
    """The configurations ``vla-lab train`` options describe: explicit options override ``--config``, which
    overrides :class:`TrainConfig`'s defaults (with ``--data``: :meth:`TrainConfig.libero_recipe`; with
    ``--resume``: the stored run's); the whole is checked once, after everything applies. The model is
    ``--model-config``, else the tabletop architecture or, with ``--data``, the preset ``libero-small``."""
    from vla_lab import tabletop
    from vla_lab.training.run_dir import MODEL_CONFIG, TRAIN_CONFIG
    from vla_lab.training.train import TrainConfig

    stored = Path(args.out) if getattr(args, "resume", False) else None
    demos = getattr(args, "data", None)
    if demos is not None and not (Path(demos) / "demos.json").is_file():
        raise ConfigError(f"--data: got {demos!r}, expected a directory written by 'vla-lab libero demos' "
                          "(with demos.json)")
    with _option("--config"):
        if stored is not None and (stored / TRAIN_CONFIG).is_file():  # --resume continues the stored run
            data = TrainConfig.from_json(stored / TRAIN_CONFIG).to_dict()
        elif demos is not None:
            data = TrainConfig.libero_recipe(demos).to_dict()
        else:
            data = TrainConfig().to_dict()
        if args.config:  # checked once below, with --data and the other options applied
            fields = TrainConfig.json_fields(args.config)
            if not isinstance(fields, dict):
                TrainConfig.from_dict(fields)  # the one-line refusal of a JSON value that is no object
            data.update(fields)
    for name in ("data", "attention", "steps", "seed", "device", "num_threads", "test_episodes"):
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    with _option("--config"):
        config = TrainConfig.from_dict(data)
    with _option("--model-config"):
        if args.model_config:
            model_config = VLAConfig.from_json(args.model_config)
        elif stored is not None and (stored / MODEL_CONFIG).is_file():
            model_config = VLAConfig.read(stored / MODEL_CONFIG)
        elif config.libero:
            model_config = VLAConfig.preset("libero-small")
        else:
            model_config = tabletop.tabletop_config()
    if getattr(args, "prompt", None):  # the trainer checks it against its tokenizer before claiming --out
        model_config = model_config.replace(prompt=args.prompt)
    return config, model_config


class _option:  # noqa: N801 - used as a context manager, like contextlib's
    """Prefix a ConfigError raised while reading an option's value with the option's name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, ConfigError) and not str(exc).startswith("--"):
            raise ConfigError(f"{self.name}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab train``: train, then print the checkpoint and its test evaluation as JSON."""
    from vla_lab.training.run_dir import latest_checkpoint
    from vla_lab.training.train import train

    config, model_config = train_configs(args)
    resolve_device(config.device, "--device")
    if args.stop_at is not None and args.stop_at < 1:
        raise ConfigError(f"--stop-at: got {args.stop_at}, expected a positive number of steps")
    out = Path(args.out)
    try:  # train() claims (or refuses) the directory before any data is generated
        final = train(config, model_config, out, resume=args.resume, overwrite=args.overwrite, out_field="--out",
                      progress=args.progress, stop_at=args.stop_at)
    except KeyboardInterrupt:
        latest = latest_checkpoint(out)
        kept = f"--resume continues from {latest.name}" if latest else "no checkpoint yet; --resume starts at step 0"
        raise InterruptError(f"interrupted; {kept} (in {out})") from None
    report: dict[str, Any] = {"checkpoint": str(final)}
    result_path = final / "eval_test.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        report["test_success_rate"] = result["success_rate"]
        report["test_success_ci95"] = result.get("success_ci95")
        report["test_by_kind"] = {k: v["success_rate"] for k, v in result["by_kind"].items()}
        report["test_action_l1"] = result.get("action_l1")
    print(files.dumps(report))
    return 0
