"""A training run's directory: owned by one run, resumable, never half-written.

``out_dir`` holds ``train_config.json``, ``model_config.json``, ``metrics.jsonl`` (one JSON object per
line, each with its ``step``), ``step-XXXXX/`` checkpoints (released layout + ``trainer_state.pt``) and
``final/``. Directories appear whole (written aside, then renamed); a resumed run first drops the
metrics of steps its checkpoint had not reached.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from vla_lab import files
from vla_lab.config import JSONConfig, VLAConfig
from vla_lab.errors import CheckpointError, ConfigError, ExportError

TRAINER_STATE = "trainer_state.pt"
TRAIN_CONFIG = "train_config.json"
METRICS = "metrics.jsonl"
MODEL_CONFIG = "model_config.json"
#: TrainConfig fields a resumed run may change: where and how fast it runs, and the final test's size.
RUN_SETTINGS = ("device", "num_threads", "test_episodes")
_STEP_DIR = re.compile(r"^step-(\d+)$")


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest ``out_dir/step-XXXXX`` that holds a trainer state (None when there is none)."""
    found = []
    for path in Path(out_dir).glob("step-*"):
        match = _STEP_DIR.match(path.name)
        if match and (path / TRAINER_STATE).exists():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _is_run(out_dir: Path) -> bool:
    return any((out_dir / name).exists() for name in (TRAIN_CONFIG, METRICS, "final")) or any(
        _STEP_DIR.match(p.name) for p in out_dir.glob("step-*")
    )


def _differences(stored: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(stored) | set(given))
    return [f"{prefix}{k} stored {stored.get(k)!r}, given {given.get(k)!r}" for k in keys
            if stored.get(k) != given.get(k)]


def prepare_run_dir(
    out_dir: str | Path, config: JSONConfig, model_config: VLAConfig, *, resume: bool = False,
    overwrite: bool = False, field: str = "out_dir", run_settings: tuple[str, ...] = RUN_SETTINGS,
) -> Path | None:
    """Claim ``out_dir`` for this run before any work; return the checkpoint to resume from (or None).

    A directory that holds anything is refused unless ``resume`` (the stored TrainConfig and model
    configuration must equal the given ones, except ``run_settings``; every difference is named) or
    ``overwrite`` (only a vla-lab run directory is deleted). Leftovers of an interrupted write are removed.
    """
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ConfigError("resume/overwrite: got both, expected at most one")
    empty = files.is_empty_dir(out_dir)
    if empty and resume:
        raise ConfigError(f"{field}: got {str(out_dir)!r}, an empty directory, expected a run to resume")
    files.check_output_dir(out_dir, field)
    if empty:
        return None
    if overwrite:
        if not _is_run(out_dir):
            raise ExportError(f"{field}: {out_dir} holds files that are not a vla-lab run; refusing to delete them")
        for child in out_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        return None
    if not resume:
        what = "an earlier run" if _is_run(out_dir) else "other files"
        raise ExportError(
            f"{field}: {out_dir} already holds {what}; pass --resume to continue it or --overwrite to replace it"
        )
    if not (out_dir / TRAIN_CONFIG).is_file():
        raise ConfigError(f"{field}: {out_dir} holds no {TRAIN_CONFIG}, expected a vla-lab run to resume")
    stored = type(config).from_json(out_dir / TRAIN_CONFIG).to_dict()
    given = config.to_dict()
    problems = _differences({k: v for k, v in stored.items() if k not in run_settings},
                            {k: v for k, v in given.items() if k not in run_settings})
    if (out_dir / MODEL_CONFIG).is_file():
        stored_model = VLAConfig.read(out_dir / MODEL_CONFIG).to_dict()
        problems += _differences(stored_model, model_config.to_dict(), "model.")
    if problems:
        shown = "; ".join(problems[:4]) + (f" ({len(problems)} in all)" if len(problems) > 4 else "")
        raise ConfigError(f"resume: the run in {out_dir} was started with other settings: {shown}")
    files.remove_temporaries(out_dir)
    latest = latest_checkpoint(out_dir)
    truncate_metrics(out_dir, step_of(latest) if latest is not None else 0)
    return latest


def step_of(step_dir: Path) -> int:
    match = _STEP_DIR.match(step_dir.name)
    return int(match.group(1)) if match else 0


def _metric_lines(out_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """The run's metrics lines with their records, torn or non-object lines left out."""
    path = out_dir / METRICS
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append((line, record))
    return found


def truncate_metrics(out_dir: Path, step: int) -> None:
    """Keep the metrics of steps up to ``step`` (what the resumed checkpoint had seen); drop torn lines."""
    if not (out_dir / METRICS).exists():
        return
    kept = [line for line, record in _metric_lines(out_dir)
            if isinstance(record.get("step"), int) and record["step"] <= step]
    files.write_text(out_dir / METRICS, "".join(f"{line}\n" for line in kept))


def load_trainer_state(step_dir: Path) -> dict[str, Any]:
    path = step_dir / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"trainer state: {path} is not readable ({first}); delete {step_dir.name} to resume from an earlier one"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] != step_of(step_dir):
        raise CheckpointError(f"trainer state: {path} does not hold the state of step {step_of(step_dir)}")
    return state


def logged_train_time(out_dir: Path) -> float:
    """The training time the run's metrics have logged so far (0 without any): a resumed run counts on from it."""
    times = [float(r["train_time_s"]) for _, r in _metric_lines(out_dir)
             if isinstance(r.get("train_time_s"), int | float)]
    return times[-1] if times else 0.0


def log_metrics(out_dir: Path, record: dict[str, Any]) -> None:
    with open(out_dir / METRICS, "a") as f:
        f.write(files.dumps(record, indent=None) + "\n")
        f.flush()
