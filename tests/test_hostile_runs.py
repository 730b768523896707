"""A training run directory belongs to one run: never overwritten or mixed, resumable after a kill, never
half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testkit import assert_one_line_error, read_metrics, run_cli, snapshot, tiny_tabletop_config, tiny_train_config

from vla_lab import tabletop
from vla_lab.errors import CheckpointError, InputError
from vla_lab.model import load_pretrained, save_pretrained
from vla_lab.run_dir import KIND_FILE, RunDir
from vla_lab.training import run_dir
from vla_lab.training import train as train_module
from vla_lab.training.train import train

ROOT = Path(__file__).resolve().parents[1]


def small_config(**changes):
    base = {"steps": 4, "num_examples": 24, "val_examples": 8, "eval_episodes": 0, "checkpoint_interval": 2}
    base.update(changes)
    return tiny_train_config(**base)


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> tuple[Path, Path]:
    """``--config`` and ``--model-config`` files of a run that takes seconds."""
    root = tmp_path_factory.mktemp("configs")
    small_config().to_json(root / "train.json")
    tiny_tabletop_config().to_json(root / "model.json")
    return root / "train.json", root / "model.json"


def cli_train(out: Path, configs: tuple[Path, Path], *extra: str) -> tuple[int, str, str]:
    train_json, model_json = configs
    return run_cli(["train", "--out", out, "--config", train_json, "--model-config", model_json, "--no-progress",
                    *extra])


def metric_steps(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out) if "loss" in r]


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The reference: the small run trained without interruption."""
    out = tmp_path_factory.mktemp("straight")
    return train(small_config(), tiny_tabletop_config(), out, progress=False)


# --- a run is never overwritten or mixed ----------------------------------------------------------


def test_train_refuses_an_existing_run_and_changes_no_byte(tmp_path, configs) -> None:
    out = tmp_path / "run"
    status, stdout, stderr = cli_train(out, configs)
    assert status == 0, stderr
    before = snapshot(out)
    for extra in ((), ("--seed", "5"), ("--steps", "2")):
        status, _, stderr = cli_train(out, configs, *extra)
        line = assert_one_line_error(status, stderr, "train")
        assert "--resume" in line and "--overwrite" in line
        assert snapshot(out) == before
    with pytest.raises(InputError, match="holds an earlier run"):
        train(small_config(), tiny_tabletop_config(), out, progress=False)
    assert snapshot(out) == before


def test_overwrite_replaces_the_whole_run(tmp_path, configs) -> None:
    out = tmp_path / "run"
    assert cli_train(out, configs)[0] == 0
    status, _, stderr = cli_train(out, configs, "--overwrite", "--seed", "5", "--steps", "2")
    assert status == 0, stderr
    final = out / "final"
    heads = sorted(p.name for p in final.glob("action_head--*"))
    assert heads == ["action_head--2_checkpoint.pt"]
    assert metric_steps(out) == [1, 2]
    assert not (out / "step-00004").exists() and (out / "step-00002").exists()
    assert json.loads((out / "train_config.json").read_text())["seed"] == 5
    with pytest.raises(CheckpointError, match="step 4"):
        load_pretrained(final, step=4)  # no head of the old run is left behind
    load_pretrained(final)


def test_overwrite_deletes_only_a_run_directory(tmp_path, configs) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("months of work")
    status, _, stderr = cli_train(out, configs, "--overwrite")
    line = assert_one_line_error(status, stderr, "train")
    assert "not a vla-lab run" in line
    assert (out / "thesis.tex").read_text() == "months of work"


def test_overwrite_refuses_a_checkpoint_directory_and_a_run_with_a_users_file(tmp_path, configs) -> None:
    """A checkpoint directory (final/ holds a train_config.json) and a run beside a user's notes used to be
    emptied by --overwrite; now nothing but a training run's own files is ever deleted."""
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    for name, text in (("train_config.json", "{}"), ("config.json", "{}"), ("model.safetensors", "weights")):
        (checkpoint / name).write_text(text)
    run = tmp_path / "run"
    run.mkdir()
    for name, text in (("train_config.json", "{}"), ("metrics.jsonl", ""), ("notes.txt", "mine")):
        (run / name).write_text(text)
    for out, named in ((checkpoint, "config.json, model.safetensors"), (run, "notes.txt")):
        before = snapshot(out)
        status, _, stderr = cli_train(out, configs, "--overwrite")
        line = assert_one_line_error(status, stderr, "train")
        assert f"other files ({named})" in line and "nothing was deleted" in line
        assert snapshot(out) == before


def test_overwrite_refuses_another_commands_run(tmp_path, configs) -> None:
    out = tmp_path / "eval"
    RunDir(out, "eval-libero", markers=("run.json",), records=(), settings_file="run.json").claim({"suite": "x"})
    before = snapshot(out)
    for flag in ("--overwrite", "--resume"):
        status, _, stderr = cli_train(out, configs, flag)
        assert "holds a vla-lab eval-libero run" in assert_one_line_error(status, stderr, "train")
    assert snapshot(out) == before


def test_a_failed_start_leaves_no_run_directory(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no data")

    monkeypatch.setattr(tabletop.TabletopData, "generate", broken)
    with pytest.raises(RuntimeError, match="no data"):
        train(small_config(), tiny_tabletop_config(), tmp_path / "new" / "run", progress=False)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="no data"):
        train(small_config(), tiny_tabletop_config(), empty, progress=False)
    assert list(empty.iterdir()) == []


def test_resume_and_overwrite_together_are_refused(tmp_path, configs) -> None:
    status, _, stderr = cli_train(tmp_path / "run", configs, "--resume", "--overwrite")
    assert "at most one" in assert_one_line_error(status, stderr, "train")
    assert not (tmp_path / "run").exists()


def test_resume_of_nothing_is_refused(tmp_path, configs) -> None:
    status, _, stderr = cli_train(tmp_path / "empty", configs, "--resume")
    assert "expected a run to resume" in assert_one_line_error(status, stderr, "train")
    assert not (tmp_path / "empty").exists()


# --- resume checks what it continues --------------------------------------------------------------


@pytest.fixture
def half_run(tmp_path) -> Path:
    out = tmp_path / "half"
    train(small_config(), tiny_tabletop_config(), out, stop_at=2, progress=False)
    return out


def test_resume_with_other_settings_names_every_difference(half_run, configs) -> None:
    before = snapshot(half_run)
    status, _, stderr = cli_train(half_run, configs, "--resume", "--seed", "9", "--steps", "1")
    line = assert_one_line_error(status, stderr, "train")
    assert "seed: got 9, expected 3" in line and "steps: got 1, expected 4" in line
    assert snapshot(half_run) == before
    with pytest.raises(InputError, match="batch_size: got 4, expected 8"):
        train(small_config(batch_size=4), tiny_tabletop_config(), half_run, resume=True, progress=False)
    with pytest.raises(InputError, match="model.num_action_queries: got 4, expected"):
        changed = tiny_tabletop_config().replace(num_action_queries=4)
        train(small_config(), changed, half_run, resume=True, progress=False)
    assert snapshot(half_run) == before


def test_resume_without_options_continues_the_stored_run_exactly(half_run, straight) -> None:
    status, _, stderr = run_cli(["train", "--out", half_run, "--resume", "--no-progress"])
    assert status == 0, stderr
    assert same_weights(half_run / "final", straight)
    assert metric_steps(half_run) == [1, 2, 3, 4]
    again = snapshot(half_run)  # resuming a finished run changes nothing
    assert run_cli(["train", "--out", half_run, "--resume", "--no-progress"])[0] == 0
    assert snapshot(half_run) == again


def test_a_run_written_before_kinds_were_recorded_still_resumes(half_run, straight) -> None:
    (half_run / KIND_FILE).unlink()
    train(small_config(), tiny_tabletop_config(), half_run, resume=True, progress=False)
    assert same_weights(half_run / "final", straight)
    assert metric_steps(half_run) == [1, 2, 3, 4]


def test_interrupt_leaves_a_resumable_run_and_metrics_are_not_repeated(tmp_path, configs, straight, monkeypatch):
    out = tmp_path / "run"
    logged = run_dir.log_metrics

    def interrupted_after_step_3(directory, record):
        logged(directory, record)  # the line of step 3 is written, its checkpoint (step 4) never is
        if record.get("step") == 3 and "loss" in record:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "log_metrics", interrupted_after_step_3)
    status, _, stderr = cli_train(out, configs)
    line = assert_one_line_error(status, stderr, "train")
    assert status == 130 and "--resume continues from step-00002" in line
    assert metric_steps(out) == [1, 2, 3]
    monkeypatch.setattr(train_module, "log_metrics", logged)
    status, _, stderr = cli_train(out, configs, "--resume")
    assert status == 0, stderr
    assert metric_steps(out) == [1, 2, 3, 4]  # step 3 once: the lines after the checkpoint were dropped
    assert same_weights(out / "final", straight)


def test_interrupt_during_data_generation_then_resume_says_it_starts_over(tmp_path, configs, straight, monkeypatch):
    out = tmp_path / "run"
    generate = tabletop.TabletopData.generate

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tabletop.TabletopData, "generate", killed)
    status, _, stderr = cli_train(out, configs)
    assert status == 130 and "no checkpoint yet" in assert_one_line_error(status, stderr, "train")
    monkeypatch.setattr(tabletop.TabletopData, "generate", generate)
    status, _, stderr = cli_train(out, configs, "--resume")
    assert status == 0
    assert stderr.splitlines() == [
        f"vla-lab train: warning: resume: {out} holds no checkpoint yet; training starts again from step 0"
    ]
    assert same_weights(out / "final", straight)


def test_truncated_trainer_state_is_one_line(half_run) -> None:
    state = half_run / "step-00002" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    status, _, stderr = run_cli(["train", "--out", half_run, "--resume", "--no-progress"])
    line = assert_one_line_error(status, stderr, "train")
    assert "trainer state" in line and "step-00002" in line


# --- nothing half-written ---------------------------------------------------------------------------


def test_a_failed_checkpoint_write_leaves_no_step_directory(tmp_path, monkeypatch) -> None:
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_module.torch, "save", full_disk)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="No space"):
        train(small_config(), tiny_tabletop_config(), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "model_config.json", "train_config.json",
                                                     KIND_FILE]


def test_save_pretrained_over_an_old_checkpoint_keeps_no_stale_file(tmp_path, monkeypatch) -> None:
    model = tabletop.initial_model(tiny_tabletop_config(), seed=0)
    out = tmp_path / "ckpt"
    save_pretrained(model, out, step=100, max_shard_bytes=20_000)
    save_pretrained(model, out, step=200, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert "action_head--200_checkpoint.pt" in names and "action_head--100_checkpoint.pt" not in names
    assert not [n for n in names if n.startswith("model-0")] and "model.safetensors.index.json" not in names
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("vla_lab.model.checkpoint.save_file", broken)
    with pytest.raises(OSError):
        save_pretrained(model, out, step=300, overwrite=True)
    assert snapshot(out) == before  # the old checkpoint is whole
    with pytest.raises(OSError):
        save_pretrained(model, tmp_path / "new", step=1)
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sigint_to_a_real_training_process(tmp_path, configs) -> None:
    """Ctrl-C in a real process: exit 130, one line, and the newest checkpoint loads."""
    train_json = tmp_path / "long.json"
    small_config(steps=400, checkpoint_interval=1).to_json(train_json)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_lab", "train", "--out", str(out), "--config", str(train_json),
         "--model-config", str(configs[1]), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        # A test run started in the background inherits SIGINT ignored, and Python then keeps ignoring it;
        # the child gets the default disposition, so Python installs its KeyboardInterrupt handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while run_dir.latest_checkpoint(out) is None or run_dir.step_of(run_dir.latest_checkpoint(out)) < 3:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    line = assert_one_line_error(process.returncode, stderr, "train")
    assert process.returncode == 130 and "--resume continues from step-" in line
    latest = run_dir.latest_checkpoint(out)
    assert run_dir.load_trainer_state(latest)["step"] == run_dir.step_of(latest)
    load_pretrained(latest)
    assert all(isinstance(r, dict) for r in read_metrics(out))


@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN])
def test_sigint_while_the_command_line_imports(tmp_path, inherited) -> None:
    """Ctrl-C during the seconds torch and transformers take to import: exit 130 and one line, no traceback;
    also for a process started in the background, which inherits SIGINT ignored (``kill -INT`` must work)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_lab", "predict", "--model", "tiny", "--image", "x.png", "--instruction", "a"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
    )
    time.sleep(0.5)  # the interpreter is up; importing the command line takes seconds more
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert (process.returncode, stdout, stderr) == (130, "", "vla-lab predict: error: interrupted\n")
