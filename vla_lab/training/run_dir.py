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
from pathlib import Path
from typing import Any

import torch

from vla_lab import files
from vla_lab.config import JSONConfig, VLAConfig
from vla_lab.errors import CheckpointError
from vla_lab.run_dir import RunDir, differences

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


TRAIN_KIND = "train"
#: What a training run writes, and what holds its results (a run without them has not started).
MARKERS = (TRAIN_CONFIG, MODEL_CONFIG, METRICS, "step-[0-9]*", "final")
RECORDS = (METRICS, "step-[0-9]*", "final")


def training_run_dir(out_dir: str | Path, config_type: type[JSONConfig], *, field: str = "out_dir",
                     run_settings: tuple[str, ...] = RUN_SETTINGS) -> RunDir:
    """The run directory of ``train``: ``train_config.json`` (read as ``config_type``) holds the settings,
    ``resume`` may change only ``run_settings``."""
    return RunDir(out_dir, TRAIN_KIND, markers=MARKERS, records=RECORDS, settings_file=TRAIN_CONFIG,
                  free=run_settings, read_settings=lambda path: config_type.from_json(path).to_dict(), field=field)


def prepare_run_dir(
    out_dir: str | Path, config: JSONConfig, model_config: VLAConfig, *, resume: bool = False,
    overwrite: bool = False, field: str = "out_dir", run_settings: tuple[str, ...] = RUN_SETTINGS,
) -> tuple[RunDir, Path | None]:
    """Claim ``out_dir`` for this run before any work (:class:`vla_lab.run_dir.RunDir`); the claimed
    directory and the checkpoint to resume from (or None).

    A directory that holds anything is refused unless ``resume`` (the stored TrainConfig and model
    configuration must equal the given ones, except ``run_settings``; every difference is named) or
    ``overwrite`` (only a training run's own files are deleted; any other file is refused). Leftovers of an
    interrupted write are removed; a resumed run drops the metrics its checkpoint had not reached.
    """
    out_dir = Path(out_dir)
    run = training_run_dir(out_dir, type(config), field=field, run_settings=run_settings)

    def model_differences() -> list[str]:
        if not (out_dir / MODEL_CONFIG).is_file():
            return []
        return differences(VLAConfig.read(out_dir / MODEL_CONFIG).to_dict(), model_config.to_dict(), prefix="model.")

    if not run.claim(config.to_dict(), resume=resume, overwrite=overwrite, check_also=model_differences,
                     write=False):
        return run, None
    latest = latest_checkpoint(out_dir)
    truncate_metrics(out_dir, step_of(latest) if latest is not None else 0)
    return run, latest


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
