"""``vla-lab eval libero`` and ``vla_lab.libero`` on the real simulator (``pip install -e '.[libero]'``).

Each simulated episode costs ~20 s on a 2-core machine (scene construction, reset, settle steps), so the
runs are tiny: ``--model tiny``, one init state, ``--max-steps 8`` (one policy query). One reference
run (tasks 0 and 1) is shared: the resumed and the 2-process runs must give the same records.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import testkit

from vla_lab import parallel
from vla_lab.errors import InputError
from vla_lab.libero import evaluate as libero_eval
from vla_lab.worlds import Episode, Observation, Step
from vla_lab.worlds.libero.observation import process_action
from vla_lab.worlds.runner import OpenLoop

HAVE_LIBERO = importlib.util.find_spec("libero") is not None
needs_libero = pytest.mark.skipif(not HAVE_LIBERO, reason="LIBERO is not installed (pip install -e '.[libero]')")
SUITE = "libero_spatial"
COMMON = ["eval", "libero", "--model", "tiny", "--suite", SUITE, "--trials", "1", "--max-steps", "8", "--no-progress"]


def run_cli(*args: str) -> tuple[int, str, str]:
    return testkit.run_cli(list(args))


def untimed(records: list[dict]) -> list[dict]:
    return [libero_eval.untimed(r) for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-process run of tasks 0 and 1 (init state 0), as ``--json``."""
    out = tmp_path_factory.mktemp("libero") / "reference"
    code, stdout, err = run_cli(*COMMON, "--tasks", "0,1", "--out", str(out), "--json")
    assert code == 0, err
    return json.loads(stdout), out


# --- without the simulator --------------------------------------------------------------------------


def test_missing_libero_is_one_line(monkeypatch, tmp_path):
    for name in [n for n in sys.modules if n == "libero" or n.startswith("libero.")] + ["libero"]:
        monkeypatch.setitem(sys.modules, name, None)
    code, stdout, err = run_cli(*COMMON, "--out", str(tmp_path / "run"))
    assert code == 2 and stdout == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vla-lab eval: error: libero:") and "pip install -e '.[libero]'" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, field", [
    (["--trials", "0"], "--trials"),
    (["--trials", "2", "--init-states", "0:2"], "--trials/--init-states"),
    (["--init-states", "3:1"], "--init-states"),
    (["--tasks", "a,b"], "--tasks"),
    (["--max-steps", "0"], "--max-steps"),
    (["--envs-per-process", "0"], "--envs-per-process"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, field):
    base = [a for a in COMMON if a not in ("--trials", "1", "--max-steps", "8")]
    code, _, err = run_cli(*base, *args, "--out", str(tmp_path / "run"))
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vla-lab eval: error: {field}: got"), err


class FakeWorld:
    """Just enough of LiberoWorld for run_episode: reports success after ``done_at`` steps."""

    name = stats_key = SUITE
    center_crop = True

    def __init__(self, done_at: int | None = None, max_steps: int = 30) -> None:
        self.done_at, self.max_steps, self.steps, self.actions, self.observed = done_at, max_steps, 0, [], 0
        self.raw = None

    def _observe(self):
        rng = np.random.default_rng(self.steps)
        self.raw = {"agentview_image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)}
        image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        return Observation([image, image], "pick up the bowl", np.zeros(8))

    def reset(self, episode, *, regions=True):
        self.steps = 0
        return self._observe()

    def step(self, action, *, observe=True):
        self.steps += 1
        self.actions.append(np.asarray(action))
        self.observed += observe
        success = self.done_at is not None and self.steps >= self.done_at
        observation = self._observe()
        return Step(observation if observe else None, success or self.steps >= self.max_steps, success)


def test_episode_protocol_open_loop_chunks_and_errors():
    seen = []

    def chunks(observations, slots):
        seen.append((observations[0].full_image.shape, observations[0].proprio.shape, observations[0].instruction))
        chunk = np.zeros((1, 8, 7))
        chunk[0, :, 0] = np.arange(8)
        chunk[0, :, 6] = 0.9  # close -> LIBERO's -1 after the sign inversion
        return chunk

    episode = Episode(SUITE, (SUITE, 0, 0), "pick up the bowl", {})
    env, frames = FakeWorld(done_at=11), []
    policy = OpenLoop(chunks, libero_eval.NUM_OPEN_LOOP_STEPS, process_action)
    result = libero_eval.run_episode(env, policy, episode, frames)
    assert result["success"] and result["steps"] == 11 and result["queries"] == 2 and result["error"] is None
    assert seen[0] == ((224, 224, 3), (8,), "pick up the bowl") and len(frames) == 11
    assert [a[0] for a in env.actions] == [*range(8), 0, 1, 2] and all(a[6] == -1 for a in env.actions)
    assert env.observed == 1  # only after step 8, where the next chunk is needed
    timeout = libero_eval.run_episode(FakeWorld(max_steps=5), policy, episode)
    assert not timeout["success"] and timeout["steps"] == 5 and timeout["queries"] == 1

    def broken(observations, slots):
        raise RuntimeError("no weights")

    failed = libero_eval.run_episode(FakeWorld(), OpenLoop(broken), episode)
    assert not failed["success"] and failed["error"] == "RuntimeError: no weights" and failed["steps"] == 0


def test_records_file_tolerates_a_cut_line_and_summary(tmp_path):
    path = tmp_path / "episodes.jsonl"
    rows = [{"suite": SUITE, "task": t, "task_name": f"t{t}", "instruction": "x", "init_state": i,
             "success": (t + i) % 2 == 0, "error": None} for t in (1, 0) for i in (0, 1)]
    for row in rows:
        libero_eval.append_record(path, row)
    with path.open("a") as f:
        f.write('{"suite": "libero_spatial", "task": 3')  # killed mid-write
    records = libero_eval.read_records(path)
    assert [libero_eval.record_key(r) for r in records] == sorted(libero_eval.record_key(r) for r in rows)
    summary = libero_eval.summarize(records, SUITE)
    assert summary["num_episodes"] == 4 and summary["success_rate"] == 0.5
    low, high = summary["success_ci95"]
    assert summary["by_task"]["0"]["successes"] == 1 and 0 < low < 0.5 < high
    assert summary["num_tasks"] == 2 and set(summary["intervals"]) == {"success_ci95", "success_ci95_tasks"}
    # Resampling the tasks: both tasks have rate 1/2, so every resample does too.
    assert summary["success_ci95_tasks"] == [0.5, 0.5]
    uneven = libero_eval.summarize([{**r, "success": r["task"] == 0} for r in records], SUITE)
    assert uneven["success_ci95_tasks"] == [0.0, 1.0]  # two tasks, 0 % and 100 %: the resamples span both
    assert libero_eval.summarize(records[:2], SUITE)["success_ci95_tasks"] is None  # one task: nothing to resample


def test_world_and_shards(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.ranks_from_env() == parallel.Ranks(0, 1, 0)
    with parallel.process_group("cpu") as ranks:  # one process: no process group
        assert not ranks.distributed and parallel.gather("x", ranks) == ["x"]
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranks = parallel.ranks_from_env()
    keys = [(SUITE, t, i) for t in (2, 0, 1) for i in (0, 1)]
    shards = [parallel.shard(keys, parallel.Ranks(r, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(keys) and shards[1] == parallel.shard(keys, ranks)
    assert parallel.device_for("cuda", ranks) == "cuda:1" and parallel.device_for("cpu", ranks) == "cpu"


# --- on the simulator ---------------------------------------------------------------------------------


@needs_libero
def test_eval_json_end_to_end(reference):
    result, out = reference
    assert result["suite"] == SUITE and result["world_size"] == 1
    episodes = result["episodes"]
    assert [(e["task"], e["init_state"]) for e in episodes] == [(0, 0), (1, 0)]
    for e in episodes:
        assert isinstance(e["success"], bool) and 1 <= e["steps"] <= 8 and e["queries"] >= 1 and e["error"] is None
        assert e["instruction"].startswith("pick up the black bowl") and e["seed"] == 0
    assert set(result["by_task"]) == {"0", "1"}
    low, high = result["success_ci95"]
    assert 0 <= low <= result["success_rate"] <= high <= 1
    assert result["intervals"]["success_ci95"] == "Wilson over episodes" and len(result["success_ci95_tasks"]) == 2
    on_disk = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert on_disk == episodes
    assert json.loads((out / "results.json").read_text())["episodes"] == episodes
    code, _, err = run_cli(*COMMON, "--tasks", "0,1", "--out", str(out))  # never overwritten silently
    assert code == 2 and "holds an earlier run" in err.strip().splitlines()[-1]


@needs_libero
def test_resume_after_a_crash_gives_the_same_records(reference, tmp_path, monkeypatch):
    expected, _ = reference
    out = tmp_path / "crashed"
    append = libero_eval.append_record

    def append_then_die(path, record):
        append(path, record)
        raise KeyboardInterrupt  # the process is killed after its first episode is recorded

    monkeypatch.setattr(libero_eval, "append_record", append_then_die)
    code, _, err = run_cli(*COMMON, "--tasks", "0,1", "--out", str(out), "--json")
    assert code == 130
    monkeypatch.setattr(libero_eval, "append_record", append)
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1
    code, stdout, err = run_cli(*COMMON, "--tasks", "0,1", "--out", str(out), "--json", "--resume")
    assert code == 0, err
    resumed = json.loads(stdout)
    assert untimed(resumed["episodes"]) == untimed(expected["episodes"])
    assert resumed["episodes"][0] == json.loads((out / "episodes.jsonl").read_text().splitlines()[0])


@needs_libero
def test_resume_refuses_records_outside_the_selection(tmp_path):
    """A resumed run counts only the episodes it was asked for: a record of another task is refused in one line,
    before anything runs, and the run directory is left as it was."""
    out = tmp_path / "run"
    keys = [("libero_spatial", 0, 0), ("libero_spatial", 1, 0)]

    def episode(env, key, frames):
        return {"success": key.key[1] == 0, "steps": 1, "queries": 1, "error": None}

    failed = {"success": False, "steps": 0, "queries": 0, "error": None}
    episode = libero_eval.one_at_a_time(episode)
    first = libero_eval.run_episodes(episode, keys, out, {"model": "fake"}, failed=failed, progress=False)
    assert first["num_episodes"] == 2 and first["successes"] == 1
    before = testkit.snapshot(out)
    with pytest.raises(InputError, match="^--resume: got 1 recorded episode\\(s\\) in .* outside this run's episodes "
                                         "\\(first: task 1, init state 0\\)"):
        libero_eval.run_episodes(episode, keys[:1], out, {"model": "fake"}, failed=failed, resume=True, progress=False)
    assert testkit.snapshot(out) == before
    grown = libero_eval.run_episodes(episode, [*keys, ("libero_spatial", 2, 0)], out, {"model": "fake"},
                                     failed=failed, resume=True, progress=False)  # a larger selection goes on
    assert grown["num_episodes"] == 3


@needs_libero
def test_two_ranks_equal_one(reference, tmp_path):
    expected, _ = reference
    out = tmp_path / "two"
    proc = testkit.run_torchrun([*COMMON, "--tasks", "0,1", "--out", out, "--json"])
    assert proc.returncode == 0, testkit.failed_run(proc)
    result = json.loads(proc.stdout)
    assert result["world_size"] == 2
    assert untimed(result["episodes"]) == untimed(expected["episodes"])
    written = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert written == result["episodes"]


@needs_libero
def test_episodes_in_lockstep_give_the_records_of_one_at_a_time(reference, tmp_path):
    """Both episodes in one process, their observations queried in one batch: the records of one at a time."""
    expected, _ = reference
    code, stdout, err = run_cli(*COMMON, "--tasks", "0,1", "--out", str(tmp_path / "run"), "--json",
                                "--envs-per-process", "2")
    assert code == 0, err
    result = json.loads(stdout)
    assert untimed(result["episodes"]) == untimed(expected["episodes"])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["envs_per_process"] == 2


@needs_libero
def test_regions_leave_out_a_region_of_the_table_among_the_objects_of_interest():
    """libero_goal task 5 ("push the plate to the front of the stove") lists the stove's front, a region of the
    table, among its objects of interest: the plate is the target, the goal has no place, every other object of
    the scene is a distractor."""
    from vla_lab.worlds.libero import LiberoWorld, object_segmentation

    with LiberoWorld("libero_goal") as world:
        regions = world.reset(world.episode(5, 0)).regions[0]
        env = world.env
        assert "main_table_stove_front_region" in env.target_objects
        labels, names = object_segmentation(env)
    assert set(regions) == {"target", "distractors", "background"}
    np.testing.assert_array_equal(regions["target"], labels == names.index("plate_1") + 1)
    np.testing.assert_array_equal(regions["distractors"], (labels > 0) & ~regions["target"])
    assert regions["distractors"].any()


@needs_libero
def test_a_failed_start_leaves_no_run_directory(tmp_path):
    """The shipped tabletop models have no LIBERO statistics: one line, and --out is not left behind."""
    code, stdout, err = run_cli("eval", "libero", "--model", "tabletop-causal", "--suite", SUITE, "--tasks", "0",
                                "--trials", "1", "--out", str(tmp_path / "run"))
    assert code == 2 and stdout == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vla-lab eval: error: unnorm_key:"), err
    assert not (tmp_path / "run").exists()


@needs_libero
def test_ctrl_c_stops_an_evaluation_even_inside_libero_and_in_the_background(tmp_path):
    """LIBERO's scene loading has bare ``except:`` clauses that swallowed a KeyboardInterrupt, so a SIGINT during
    an episode was ignored and the run finished with exit 0. Now: exit 130, one line, the episodes recorded so
    far kept for --resume. The process starts with SIGINT ignored, as a background job does."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_lab", *[a for a in COMMON if a not in ("--trials", "1")], "--tasks", "0",
         "--init-states", "0:3", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    records = out / "episodes.jsonl"
    deadline = time.monotonic() + 300
    while not (records.exists() and records.read_text().strip()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no episode was recorded"
        time.sleep(0.2)
    time.sleep(1.0)  # inside the next episode's reset, where LIBERO's bare excepts run
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, (stdout, stderr)
    assert stderr == "vla-lab eval: error: interrupted\n"
    assert 1 <= len(records.read_text().splitlines()) < 3
