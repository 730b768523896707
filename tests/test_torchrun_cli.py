"""``python -m vla_lab.torchrun``: torch's launcher with the command line's manners. Under plain torchrun a Ctrl-C
ends with torchrun's warnings and traceback (exit 1) after a line from every rank; here it is one line and 130."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

HAVE_LIBERO = importlib.util.find_spec("libero") is not None
needs_libero = pytest.mark.skipif(not HAVE_LIBERO, reason="LIBERO is not installed (pip install -e '.[libero]')")
EVAL = ["eval", "libero", "--model", "tiny", "--suite", "libero_spatial", "--no-progress"]


def launch(*args: str) -> subprocess.Popen:
    """``python -m vla_lab.torchrun --standalone --nproc-per-node 2 args`` in a process group of its own (a
    terminal's Ctrl-C reaches the whole group)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "vla_lab.torchrun", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


@pytest.mark.parametrize("raised, failed_ranks, status, lines", [
    ("signal", (), 130, []),  # the workers got the signal too; rank 0 said so
    ("child", (0, 1), 2, []),  # rank 0 failed too and said why
    ("child", (1,), 2, ["vla-lab torchrun: error: rank 1: got exit status 2, expected 0 (rank 0 ran without "
                        "error)"]),
])
def test_the_launcher_reports_in_one_line_at_most(monkeypatch, capsys, raised, failed_ranks, status, lines):
    """torch's launcher replaced by one that raises what torchrun raises: no traceback, the workers' status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    import vla_lab.torchrun as launcher

    seen = []

    def fake_run(args):
        seen.append((args.module, args.training_script, args.training_script_args))
        if raised == "signal":
            raise SignalException("got signal: 2", sigval=signal.SIGINT)
        failures = {r: ProcessFailure(local_rank=r, pid=1000 + r, exitcode=2, error_file="") for r in failed_ranks}
        raise ChildFailedError("vla_lab", failures)

    monkeypatch.setattr("torch.distributed.run.run", fake_run)
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert launcher.main(["--standalone", "--nproc-per-node", "2", "eval", "libero", "--trials", "0"]) == status
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [(True, "vla_lab", ["eval", "libero", "--trials", "0"])]
    assert capsys.readouterr().err.splitlines() == lines


@pytest.mark.parametrize("argv, message", [
    (["--nproc-per-node", "2", "-m", "vla_lab", "demo"], "-m/--module, --no-python: got -m"),
    (["--nproc-per-node"], "argument --nproc-per-node/--nproc_per_node: expected one argument"),
])
def test_bad_launcher_options_are_one_line(capsys, argv, message):
    import vla_lab.torchrun as launcher

    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            launcher.main(argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(f"vla-lab torchrun: error: {message}")


@pytest.mark.torchrun
@needs_libero
def test_refused_inputs_are_one_line(tmp_path):
    """Every rank refuses the input alike; rank 0 says it, and the launcher adds nothing."""
    proc = launch(*EVAL, "--trials", "0", "--out", str(tmp_path / "run"))
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, out) == (2, "")
    assert err.splitlines() == ["vla-lab eval: error: --trials: got 0, expected a positive integer"]
    assert not (tmp_path / "run").exists()


@pytest.mark.torchrun
@needs_libero
def test_ctrl_c_during_the_episodes_is_one_line_and_exit_130(tmp_path):
    run = tmp_path / "run"
    proc = launch(*EVAL, "--tasks", "0,1", "--trials", "2", "--max-steps", "40", "--out", str(run))
    deadline = time.monotonic() + 240
    while not (run / "run.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    time.sleep(1.0)  # into the first episodes
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130
    assert err.splitlines() == ["vla-lab eval: error: interrupted"]
