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
pytestmark = [pytest.mark.torchrun,
              pytest.mark.skipif(not HAVE_LIBERO, reason="LIBERO is not installed (pip install -e '.[libero]')")]
EVAL = ["eval", "libero", "--model", "tiny", "--suite", "libero_spatial", "--no-progress"]


def launch(*args: str) -> subprocess.Popen:
    """``python -m vla_lab.torchrun --standalone --nproc-per-node 2 args`` in a process group of its own (a
    terminal's Ctrl-C reaches the whole group)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "vla_lab.torchrun", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def test_refused_inputs_are_one_line(tmp_path):
    """Every rank refuses the input alike; rank 0 says it. A bad launcher option is one line too."""
    proc = launch(*EVAL, "--trials", "0", "--out", str(tmp_path / "run"))
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, out) == (2, "")
    assert err.splitlines() == ["vla-lab eval: error: --trials: got 0, expected a positive integer"]
    assert not (tmp_path / "run").exists()
    done = subprocess.run([sys.executable, "-m", "vla_lab.torchrun", "--nproc-per-node"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "vla-lab torchrun: error: argument --nproc-per-node/--nproc_per_node: expected one argument"]


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
