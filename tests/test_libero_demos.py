"""``vla-lab libero demos``: expert demonstrations in LIBERO's HDF5 layout, sharded and resumable.

Needs the ``libero`` extra and h5py; an episode with cameras costs ~40 s here, so the runs are two episodes.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import testkit

HAVE_LIBERO = importlib.util.find_spec("libero") is not None and importlib.util.find_spec("h5py") is not None
needs_libero = pytest.mark.skipif(not HAVE_LIBERO, reason="LIBERO is not installed (pip install -e '.[libero]')")
SUITE = "libero_spatial"
COMMON = ["libero", "demos", "--tasks", "0", "--episodes-per-task", "2", "--no-progress", "--json"]
LIBERO_DATASETS = ("actions", "states", "robot_states", "rewards", "dones", "obs/agentview_rgb", "obs/eye_in_hand_rgb",
                   "obs/ee_pos", "obs/ee_ori", "obs/ee_states", "obs/gripper_states", "obs/joint_states")


@pytest.mark.parametrize(("argv", "message"), [
    (["--suite", "libero_goal"], "--suite: got 'libero_goal'"),
    (["--episodes-per-task", "0"], "--episodes-per-task: got 0, expected a positive integer"),
    (["--resolution", "8"], "--resolution: got 8"),
])
def test_bad_options_get_one_line(tmp_path, argv, message):
    status, stdout, err = testkit.run_cli(["libero", "demos", *argv, "--out", tmp_path / "x"])
    line = testkit.assert_one_line_error(status, err, "libero")
    assert message in line and stdout == ""
    assert not (tmp_path / "x").exists()


def test_eval_checks_the_camera_resolution_before_building_anything(tmp_path):
    status, stdout, err = testkit.run_cli(["eval", "libero", "--suite", SUITE, "--model", "tiny", "--resolution",
                                            "4", "--out", tmp_path / "x"])
    assert "--resolution: got 4" in testkit.assert_one_line_error(status, err, "eval")
    assert not (tmp_path / "x").exists()


def read_file(path) -> dict:
    import h5py

    out: dict = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = dict(f["data"].attrs)
        for name in f["data"]:
            demo = f["data"][name]
            out[name] = {key: demo[key][()] for key in (*LIBERO_DATASETS, "target_pos")}
            out[name]["attrs"] = dict(demo.attrs)
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "one"
    status, stdout, err = testkit.run_cli([*COMMON, "--out", out])
    assert status == 0, err
    return out, json.loads(stdout)


@needs_libero
def test_demonstrations_are_written_in_libero_layout(one_process):
    out, manifest = one_process
    assert manifest["num_demos"] == 2 and manifest["run"]["successes"] == 2 and manifest["resolution"] == 128
    task = manifest["tasks"]["0"]
    assert task["init_states"] == [0, 1] and task["file"] == f"{task['task_name']}_demo.hdf5"
    content = read_file(out / task["file"])
    attrs = content["attrs"]
    assert attrs["num_demos"] == 2 and attrs["total"] == manifest["total"] == task["total"]
    assert attrs["macros_image_convention"] == "opengl"
    assert json.loads(attrs["problem_info"])["problem_name"] == json.loads(attrs["env_args"])["problem_name"]
    assert attrs["bddl_file_content"].startswith("(define")
    for k in (0, 1):
        demo = content[f"demo_{k}"]
        steps = int(demo["attrs"]["num_samples"])
        assert demo["attrs"]["init_state_index"] == k
        assert demo["actions"].shape == (steps, 7) and demo["robot_states"].shape == (steps, 9)
        assert demo["obs/agentview_rgb"].shape == (steps, 128, 128, 3) and demo["obs/agentview_rgb"].dtype == np.uint8
        assert np.array_equal(demo["obs/ee_states"], np.concatenate([demo["obs/ee_pos"], demo["obs/ee_ori"]], 1))
        assert demo["dones"].tolist() == [0] * (steps - 1) + [1] == demo["rewards"].tolist()
        assert np.array_equal(demo["attrs"]["init_state"], demo["states"][0])
        assert "<mujoco" in demo["attrs"]["model_file"]


@needs_libero
def test_the_stored_actions_replay_to_the_stored_states(one_process, libero_spatial_physics):
    """As LIBERO's own dataset script checks: the actions from the init state lead through the states."""
    out, manifest = one_process
    demo = read_file(out / manifest["tasks"]["0"]["file"])["demo_1"]
    env = libero_spatial_physics  # LiberoEnv(SUITE, 0, render=False), whatever ran on it before
    env.reset(1)
    assert np.array_equal(env.sim_state(), demo["states"][0])
    done = False
    for t, action in enumerate(demo["actions"]):
        if t:
            assert np.array_equal(env.sim_state(), demo["states"][t]), t
        done = env.step(action)[2]
    assert done  # the last action finishes the task


@needs_libero
def test_libero_dataset_script_builds_the_environment_from_env_args(one_process, libero_spatial_physics):
    """``env_args`` as LIBERO's ``scripts/create_dataset.py`` uses it: ``TASK_MAPPING[problem_name](**env_kwargs)``
    builds the raw environment the expert ran in. Run through the evaluation's protocol (seed, reset, the init
    state, the settle steps), it reproduces a stored demonstration state for state; replayed as the script does
    (the stored first state set into a fresh simulator) the actions still complete the task, though the states
    drift: robosuite's controller caches the end effector's pose from before a state is set, which no simulator
    state holds. The cameras the arguments ask for are checked, then left off: drawing does not change the
    physics (``test_libero_expert``), and at ~0.2 s a step it would be most of this test's time."""
    from libero.libero.envs import TASK_MAPPING
    from libero.libero.utils.utils import postprocess_model_xml

    from vla_lab.worlds.libero.env import DUMMY_ACTION, NUM_STEPS_WAIT

    out, manifest = one_process
    content = read_file(out / manifest["tasks"]["0"]["file"])
    env_args = json.loads(content["attrs"]["env_args"])
    kwargs = env_args["env_kwargs"]
    assert kwargs["controller_configs"]["type"] == "OSC_POSE" and "controller" not in kwargs
    assert (kwargs["camera_heights"], kwargs["camera_widths"]) == (128, 128)
    ours = libero_spatial_physics  # LiberoEnv(SUITE, 0, render=False)
    init_states = ours.init_states
    samplers = ours._num_property_samplers  # len(ours.env.env.object_property_initializers) when it was built
    assert kwargs["has_offscreen_renderer"] and kwargs["use_camera_obs"]
    assert kwargs["camera_names"] == ["agentview", "robot0_eye_in_hand"]
    env = TASK_MAPPING[env_args["problem_name"]](**{**kwargs, "has_offscreen_renderer": False,
                                                   "use_camera_obs": False})
    try:
        assert len(env.object_property_initializers) == samplers
        demo = content["demo_1"]
        env.seed(0)
        env.reset()
        env.sim.set_state_from_flattened(init_states[1])
        env.sim.forward()
        env._post_process()
        env._update_observables(force=True)
        for _ in range(NUM_STEPS_WAIT):
            env.step(list(DUMMY_ACTION))
        for t, action in enumerate(demo["actions"]):
            assert np.array_equal(env.sim.get_state().flatten(), demo["states"][t]), t
            env.step(action)
        assert env._check_success()

        env.reset()
        env.reset_from_xml_string(postprocess_model_xml(demo["attrs"]["model_file"], {}))
        env.sim.reset()
        env.sim.set_state_from_flattened(demo["states"][0])
        env.sim.forward()
        for action in demo["actions"]:
            env.step(action)
        assert env._check_success()
    finally:
        env.close()


@needs_libero
def test_resume_runs_nothing_again_and_a_resumed_torchrun_run_writes_the_same_files(one_process, tmp_path):
    """``--resume`` of a finished run runs nothing and rewrites the same files. Under torchrun (2 ranks), a copy of
    the run that lost its second episode (record and part) is resumed: rank 0 runs that episode, rank 1 has
    nothing to run but joins the gather, and rank 0 writes the files of the one-process run."""
    import shutil

    from vla_lab.libero.demos import part_name

    out, manifest = one_process
    before = read_file(out / manifest["tasks"]["0"]["file"])
    status, stdout, err = testkit.run_cli([*COMMON, "--out", out, "--resume"])
    assert status == 0, err
    again = json.loads(stdout)
    assert again["tasks"] == manifest["tasks"] and again["run"]["num_episodes"] == 2
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    after = read_file(out / manifest["tasks"]["0"]["file"])
    assert after.keys() == before.keys() == {"attrs", "demo_0", "demo_1"}
    for name in ("demo_0", "demo_1"):  # gathered again from the same parts: the same datasets
        for key in (*LIBERO_DATASETS, "target_pos"):
            assert np.array_equal(after[name][key], before[name][key]), (name, key)
    status, _, err = testkit.run_cli([*COMMON, "--out", out])
    assert "--resume or --overwrite" in testkit.assert_one_line_error(status, err, "libero")

    two_dir = tmp_path / "two"
    shutil.copytree(out, two_dir)
    records = (two_dir / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(r)["init_state"] for r in records] == [0, 1]
    (two_dir / "episodes.jsonl").write_text(records[0] + "\n")
    (two_dir / "parts" / part_name(0, 1)).unlink()
    proc = testkit.run_torchrun([*COMMON, "--out", two_dir, "--resume"])
    assert proc.returncode == 0, testkit.failed_run(proc)
    two = json.loads(proc.stdout)
    assert two["world_size"] == 2 and two["tasks"] == manifest["tasks"] and two["run"]["num_episodes"] == 2
    assert (two_dir / "episodes.jsonl").read_text().splitlines()[0] == records[0]
    one_file, two_file = (read_file(d / manifest["tasks"]["0"]["file"]) for d in (out, tmp_path / "two"))
    for name in ("demo_0", "demo_1"):
        for key in (*LIBERO_DATASETS, "target_pos"):
            assert np.array_equal(one_file[name][key], two_file[name][key]), (name, key)


def test_the_committed_demonstration_records_match_the_expert_run():
    """notebooks/records/libero-demos: every training init state (0-39) of every task was run; the kept ones
    are the successes, and each episode ended as the physics-only expert run of the same init state did."""
    from pathlib import Path

    from vla_lab.libero import evaluate as libero_eval

    root = Path(__file__).parent.parent / "notebooks" / "records"
    records = libero_eval.read_records(root / "libero-demos" / SUITE / "episodes.jsonl")
    manifest = json.loads((root / "libero-demos" / SUITE / "demos.json").read_text())
    assert sorted((r["task"], r["init_state"]) for r in records) == [(t, i) for t in range(10) for i in range(40)]
    assert all(r["kept"] == r["success"] for r in records)
    assert manifest["num_demos"] == sum(r["success"] for r in records) == manifest["run"]["successes"]
    for task, entry in manifest["tasks"].items():
        kept = [r for r in records if r["task"] == int(task) and r["kept"]]
        assert entry["init_states"] == [r["init_state"] for r in kept]
        assert entry["total"] == sum(r["steps"] for r in kept)
    expert_records = libero_eval.read_records(root / "libero-expert" / SUITE / "episodes.jsonl")
    expert = {libero_eval.record_key(r): (r["success"], r["steps"]) for r in expert_records}
    for r in records:  # the cameras do not change the physics
        assert (r["success"], r["steps"]) == expert[libero_eval.record_key(r)]


def test_overwrite_deletes_nothing_before_the_directory_is_validated(tmp_path):
    """generate(overwrite=True) on a directory that holds no earlier run (a user's files beside an old demo file)
    is refused before anything is deleted."""
    from vla_lab.errors import InputError
    from vla_lab.libero.demos import generate

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "old_demo.hdf5").write_bytes(b"not ours to delete")
    (out / "parts").mkdir()
    (out / "parts" / "x.hdf5").write_bytes(b"nor this")
    before = testkit.snapshot(out)
    with pytest.raises(InputError, match="a directory with other files"):
        generate(SUITE, [(SUITE, 0, 0)], out, overwrite=True, progress=False)
    assert testkit.snapshot(out) == before


@needs_libero
@pytest.mark.parametrize("legacy", [False, True])
def test_other_commands_refuse_a_demonstrations_directory(tmp_path, legacy):
    """``eval libero --overwrite`` / ``libero expert --overwrite`` on a demonstrations directory used to replace the
    expert run's records (the same run.json and episodes.jsonl); a directory written before runs recorded their
    kind is recognised by its demonstration files."""
    from vla_lab.libero.demos import demos_run_dir

    out = tmp_path / "demos"
    if legacy:
        out.mkdir()
        (out / "run.json").write_text(json.dumps({"suite": SUITE, "model": "scripted expert"}))
    else:
        demos_run_dir(out).claim({"suite": SUITE, "model": "scripted expert"})
    (out / "episodes.jsonl").write_text("{}\n")
    (out / "demos.json").write_text("{}")
    (out / "parts").mkdir()
    (out / "parts" / "task00_init00.hdf5").write_bytes(b"a demonstration")
    before = testkit.snapshot(out)
    expected = "other files (demos.json, parts)" if legacy else "holds a vla-lab libero-demos run"
    commands = (["eval", "libero", "--suite", SUITE, "--model", "tiny", "--tasks", "0", "--trials", "1"],
                ["libero", "expert", "--tasks", "0", "--trials", "1"])
    for command in commands:
        for flag in ("--overwrite", "--resume"):
            status, _, err = testkit.run_cli([*command, "--out", out, "--no-progress", flag])
            assert expected in testkit.assert_one_line_error(status, err, command[0])
    assert testkit.snapshot(out) == before
