"""The LIBERO simulator's reproducibility and the scripted expert (``vla-lab libero expert``).

Needs the ``libero`` extra; each scene costs seconds to build, so the runs are a handful of episodes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import testkit

from vla_lab.libero import evaluate as libero_eval

HAVE_LIBERO = importlib.util.find_spec("libero") is not None
needs_libero = pytest.mark.skipif(not HAVE_LIBERO, reason="LIBERO is not installed (pip install -e '.[libero]')")
SUITE = "libero_spatial"
DRAWER_TASK = 4  # its scene has a drawer-opening sampler, which LIBERO appends again on every reset
EXPERT_RECORDS = Path(__file__).resolve().parents[1] / "notebooks" / "records" / "libero-expert" / SUITE


def untimed(records: list[dict]) -> list[dict]:
    return [libero_eval.untimed(r) for r in records]


def test_expert_refuses_other_suites_in_one_line(tmp_path):
    code, stdout, err = testkit.run_cli(["libero", "expert", "--suite", "libero_goal", "--out", tmp_path / "x"])
    assert code == 2 and stdout == ""
    assert err.splitlines() == [err.strip()] and err.startswith("vla-lab libero: error: --suite: got 'libero_goal'")
    assert not (tmp_path / "x").exists()


@needs_libero
def test_a_trial_is_the_same_whatever_ran_before_and_without_cameras():
    from vla_lab.worlds.libero.env import LiberoEnv

    with LiberoEnv(SUITE, DRAWER_TASK, resolution=64) as cameras, \
            LiberoEnv(SUITE, DRAWER_TASK, resolution=64, render=False) as physics:
        first = cameras.reset(1)
        fixtures = cameras.env.sim.model.body_pos.copy()
        cameras.reset(3)
        again = cameras.reset(1)
        assert np.array_equal(cameras.env.sim.model.body_pos, fixtures)  # cabinet and stove did not move
        assert np.array_equal(first["agentview_image"], again["agentview_image"])
        physics.reset(1)
        assert "agentview_image" not in physics.env.env._get_observations()
        assert np.array_equal(physics.sim_state(), cameras.sim_state())
        for _ in range(3):
            shown = cameras.step([0.5, 0.0, -0.3, 0.0, 0.0, 0.1, 1.0])[0]
            physics.step([0.5, 0.0, -0.3, 0.0, 0.0, 0.1, 1.0])
        assert np.array_equal(physics.sim_state(), cameras.sim_state())
        # A saved state renders the same on either simulator, after anything else ran there.
        state = cameras.sim_state()
        physics.reset(2)
        physics.set_sim_state(state)
        cameras.set_sim_state(state)
        drawn, expected = physics.camera_images(), cameras.camera_images()
        assert set(drawn) == {"agentview_image", "robot0_eye_in_hand_image"}
        for key in drawn:
            assert drawn[key].shape == (64, 64, 3) and drawn[key].dtype == np.uint8
            assert np.array_equal(drawn[key], expected[key])
            # the step's observation was drawn mid-step, so it is close to but not the saved state's image
            assert np.abs(drawn[key].astype(int) - shown[key]).mean() < 5


@needs_libero
def test_the_expert_puts_the_bowl_on_the_plate_deterministically(libero_spatial_physics):
    from vla_lab.worlds.libero.expert import PHASES, run_expert_episode

    env = libero_spatial_physics  # LiberoEnv(SUITE, 0, render=False), whatever ran on it before
    one = run_expert_episode(env, 0)
    two = run_expert_episode(env, 0)
    assert one["success"] and one["steps"] < env.max_steps
    assert one["phase"] in PHASES[PHASES.index("lower"):]
    assert np.array_equal(one["actions"], two["actions"]) and np.array_equal(one["states"], two["states"])
    actions = one["actions"]
    assert actions.shape == (one["steps"], 7) and np.abs(actions).max() <= 1.0
    assert set(np.unique(actions[:, 6])) == {-1.0, 1.0}  # it opened and closed the gripper
    assert one["states"].shape[0] == one["steps"] + 1


@needs_libero
def test_expert_runs_sharded_over_two_ranks_give_the_committed_records(tmp_path):
    """Two ranks in threads of this process (the real torchrun run is test_libero_demos', through the same
    run_episodes) record what the committed run (``notebooks/records/make_libero_records.sh``) holds for these
    episodes, field for field apart from the timings; rank 0 alone prints."""
    common = ["libero", "expert", "--tasks", "0,4", "--trials", "1", "--no-progress", "--json"]
    statuses, stdout, err = testkit.run_cli_ranks([*common, "--out", tmp_path / "two"], 2)
    assert statuses == [0, 0], err
    two = json.loads(stdout)
    assert two["world_size"] == 2 and two["num_episodes"] == 2 and two["errors"] == 0
    assert [r["task"] for r in two["episodes"]] == [0, 4]
    assert all(r["success"] for r in two["episodes"])  # both scenes in the run above
    committed = {(r["task"], r["init_state"]): r for r in libero_eval.read_records(EXPERT_RECORDS / "episodes.jsonl")}
    assert untimed(two["episodes"]) == untimed([committed[0, 0], committed[4, 0]])
    assert json.loads((tmp_path / "two" / "run.json").read_text())["model"] == "scripted expert"


def test_grasp_geometry_without_the_simulator():
    from vla_lab.worlds.libero.expert import _clearance, finger_yaw

    # fingers close along y at the start: a grasp on the +-y side needs no turn, one on the x side a quarter turn
    assert finger_yaw(np.pi / 2) == 0.0 and finger_yaw(-np.pi / 2) == 0.0
    assert np.isclose(abs(finger_yaw(0.0)), np.pi / 2) and np.isclose(abs(finger_yaw(np.pi)), np.pi / 2)
    assert all(-np.pi / 2 <= finger_yaw(t) < np.pi / 2 for t in np.linspace(-np.pi, np.pi, 17))
    box = (np.array([0.2, -0.05, 0.0]), np.array([0.3, 0.05, 0.2]))
    radial = np.array([1.0, 0.0])
    # a 2 x 2 cm square at the origin: its nearest point is 19 cm from the box's face
    assert np.isclose(_clearance(np.zeros(2), radial, 0.01, 0.01, (0.0, 0.1), [box]), 0.19)
    # a 20 cm long hand reaches into the box: negative room
    assert _clearance(np.array([0.15, 0.0]), radial, 0.10, 0.01, (0.0, 0.1), [box]) < 0
    # a box entirely above or below the height range does not count
    assert _clearance(np.zeros(2), radial, 0.01, 0.01, (0.3, 0.4), [box]) == 1.0


def test_the_committed_expert_records_are_every_init_state_and_match_their_summary():
    run = EXPERT_RECORDS
    records = libero_eval.read_records(run / libero_eval.EPISODES_FILE)
    assert [(r["task"], r["init_state"]) for r in records] == [(t, i) for t in range(10) for i in range(50)]
    stored = json.loads((run / libero_eval.RESULTS_FILE).read_text())
    summary = libero_eval.summarize(records, SUITE)
    assert stored["successes"] == summary["successes"] and stored["success_ci95"] == summary["success_ci95"]
    assert stored["by_task"] == summary["by_task"] and stored["errors"] == 0
    assert summary["success_rate"] >= 0.95  # the goal for the expert
    assert json.loads((run / libero_eval.RUN_FILE).read_text())["model"] == "scripted expert"
