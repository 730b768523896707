"""LIBERO as a ``vla_lab.worlds.World`` on the real simulator (``pip install -e '.[libero]'``): one task's
simulator is built once for the session (~20 s on 2 cores; ``libero_spatial_world`` in tests/conftest.py)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vla_lab.errors import InputError
from vla_lab.worlds import World
from vla_lab.worlds.libero import LiberoWorld, object_segmentation, prepare_observation, task_info

HAVE_LIBERO = importlib.util.find_spec("libero") is not None
pytestmark = pytest.mark.skipif(not HAVE_LIBERO, reason="LIBERO is not installed (pip install -e '.[libero]')")
SUITE = "libero_spatial"


@pytest.fixture()
def env(libero_spatial_world):
    assert isinstance(libero_spatial_world, LiberoWorld) and libero_spatial_world.name == SUITE
    return libero_spatial_world


def test_episodes_are_tasks_and_init_states(env):
    assert isinstance(env, World) and env.max_steps == 220 and env.stats_key == SUITE
    episodes = env.episodes(tasks=[3, 0], init_states=[1, 0])
    assert [e.key for e in episodes] == [(SUITE, 0, 0), (SUITE, 0, 1), (SUITE, 3, 0), (SUITE, 3, 1)]
    info = task_info(SUITE, 3)
    assert episodes[2].instruction == info["instruction"]
    assert episodes[2].record() == {"suite": SUITE, "task": 3, "task_name": info["task_name"], "init_state": 0,
                                    "instruction": info["instruction"], "variant": "original"}
    assert len(env.episodes(tasks=[0])) == info["num_init_states"]
    with pytest.raises(InputError, match=r"^init_state: got 50, expected 0\.\.49 \(task 0\)$"):
        env.episode(0, 50)
    with pytest.raises(InputError, match="^task: got 10, expected a task of libero_spatial in 0..9$"):
        env.episode(10, 0)
    with pytest.raises(InputError, match=r"^selection: got \['split'\], expected tasks, init_states$"):
        env.episodes(split="test")


def test_reset_is_upstreams_observation_with_regions(env):
    episode = env.episode(0, 0)
    observation = env.reset(episode)
    again = prepare_observation(env.env.reset(0), 224)  # the same simulator, reset the way LiberoEnv does
    np.testing.assert_array_equal(observation.full_image, again["full_image"])
    np.testing.assert_array_equal(observation.wrist_image, again["wrist_image"])
    np.testing.assert_array_equal(observation.proprio, again["state"])
    assert observation.full_image.shape == (224, 224, 3) and observation.instruction == episode.instruction
    views = env.reset(episode).regions
    assert len(views) == 1  # the agentview; the wrist view has no masks
    regions = views[0]
    assert set(regions) == {"target", "place", "same_category", "distractors", "background"}
    assert all(regions[name].shape == (224, 224) and regions[name].any() for name in regions)
    masks = list(regions.values())
    assert not any((a & b).any() for i, a in enumerate(masks) for b in masks[i + 1 :])  # no pixel in two regions
    labels, names = object_segmentation(env.env)
    ids = {name: names.index(name) + 1 for name in names}
    np.testing.assert_array_equal(regions["target"], labels == ids["akita_black_bowl_1"])  # the bowl to pick
    np.testing.assert_array_equal(regions["place"], labels == ids["plate_1"])  # the plate it goes on
    np.testing.assert_array_equal(regions["same_category"], labels == ids["akita_black_bowl_2"])  # the other bowl
    assert env.env.category("akita_black_bowl_2") == env.env.category("akita_black_bowl_1") == "akita_black_bowl"
    others = (labels > 0) & ~np.isin(labels, [ids[n] for n in ("akita_black_bowl_1", "akita_black_bowl_2", "plate_1")])
    np.testing.assert_array_equal(regions["distractors"], others)  # the ramekin, the cookie box, the cabinet, ...
    np.testing.assert_array_equal(regions["background"], labels == 0)  # robot, table, walls, floor
    assert sum(int(m.sum()) for m in masks) == 224 * 224  # every pixel in one region
    with pytest.raises(InputError, match="^object: got 'no_such_object', expected one of"):
        env.env.category("no_such_object")


def test_what_a_rollout_can_read_at_every_step(env):
    """Region masks at every observation when asked (``step_regions``), the latest action, and how high each
    movable object stands above where the reset left it (the bowl rises when the arm lifts it)."""
    env.reset(env.episode(0, 2), regions=False)
    assert env.last_action is None
    assert set(env.lifts()) == {"akita_black_bowl_1", "akita_black_bowl_2", "cookies_1",
                                "glazed_rim_porcelain_ramekin_1", "plate_1"}
    assert all(abs(v) < 1e-9 for v in env.lifts().values())
    action = np.array([0, 0, 0.5, 0, 0, 0, -1.0])
    assert env.step(action).observation.regions == []  # only the reset's observation has them by default
    assert np.array_equal(env.last_action, action)
    env.step_regions = True
    try:
        regions = env.step(action).observation.regions[0]
    finally:
        env.step_regions = False
    assert set(regions) == {"target", "place", "same_category", "distractors", "background"}
    assert all(abs(v) < 0.005 for v in env.lifts().values())  # the arm moved up, nothing else did
    # drawing the masks changes no frame and no state: the same actions without them give the same observation
    seen = env.step(action).observation
    env.reset(env.episode(0, 2), regions=False)
    env.step(action)
    env.step(action)
    again = env.step(action).observation
    assert all(np.array_equal(a, b) for a, b in zip(seen.images, again.images))
    np.testing.assert_array_equal(seen.proprio, again.proprio)


def test_steps_and_their_limit(env):
    episode = env.episode(0, 1)
    env.reset(episode, regions=False)
    action = np.array([0, 0, 0, 0, 0, 0, -1.0])
    blind = env.step(action, observe=False)
    assert blind.observation is None and not blind.done and not blind.success
    seen = env.step(action)
    assert seen.observation is not None and seen.observation.full_image.shape == (224, 224, 3)
    env.steps = env.max_steps - 1  # the next step is the last one allowed
    assert env.step(action, observe=False).done
    with pytest.raises(InputError, match=r"^action: got shape \(7,\) \(finite: False\)"):
        env.step([np.inf] * 7)


def test_counterfactual_instruction_of_another_task(env):
    episode = env.episode(0, 2)  # task 0: the module's simulator, not another one
    other = env.counterfactual(episode, "other_instruction", seed=1)
    donor = other.columns["instruction_from"]
    assert donor != 0 and other.instruction == task_info(SUITE, donor)["instruction"] != episode.instruction
    assert other.key == episode.key and other.variant == "other_instruction"
    assert env.counterfactual(episode, "other_instruction", seed=1) == other
    assert env.reset(other, regions=False).instruction == other.instruction
    with pytest.raises(InputError, match="^variant: got 'target_swap' for libero_spatial, expected 'other_instr"):
        env.counterfactual(episode, "target_swap")


class _Goal:
    """What goal_objects reads of a LiberoEnv: the parsed goal and the objects of interest."""

    def __init__(self, goal: list[list[str]], interest: list[str]) -> None:
        self.goal_state, self.target_objects = goal, interest


@pytest.mark.parametrize("goal, interest, targets, places", [
    ([["on", "akita_black_bowl_1", "plate_1"]], ["akita_black_bowl_1", "plate_1"], ["akita_black_bowl_1"],
     ["plate_1"]),  # libero_spatial: the bowl to pick, the plate
    ([["in", "cream_cheese_1", "basket_1_contain_region"], ["in", "butter_1", "basket_1_contain_region"]],
     ["cream_cheese_1", "butter_1", "basket_1"], ["cream_cheese_1", "butter_1"], ["basket_1"]),  # both objects
    ([["on", "plate_1", "main_table_stove_front_region"]], ["plate_1", "main_table_stove_front_region"],
     ["plate_1"], []),  # a region of the table is no place
    ([["open", "wooden_cabinet_1_top_region"]], ["wooden_cabinet_1"], ["wooden_cabinet_1"], []),
    ([["turnon", "unknown_thing"]], ["flat_stove_1"], ["flat_stove_1"], []),  # nothing known: first of interest
])
def test_goal_objects_come_from_the_bddl_goal(goal, interest, targets, places):
    from vla_lab.worlds.libero.env import goal_objects

    names = ["akita_black_bowl_1", "akita_black_bowl_2", "plate_1", "cream_cheese_1", "butter_1", "basket_1",
             "main_table", "flat_stove_1", "wooden_cabinet_1"]
    assert goal_objects(_Goal(goal, interest), names) == (targets, places)
