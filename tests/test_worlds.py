"""The world interface (``vla_lab.worlds``) on the tabletop; LIBERO's implementation is in test_libero_world.py."""

from __future__ import annotations

import numpy as np
import pytest

from vla_lab.errors import InputError
from vla_lab.worlds import COUNTERFACTUALS, WORLD_NAMES, Episode, World, create_world
from vla_lab.worlds import tabletop as world
from vla_lab.worlds.tabletop import TabletopWorld


@pytest.fixture()
def env() -> TabletopWorld:
    return TabletopWorld()


def test_both_worlds_implement_the_interface(env):
    assert isinstance(env, World)
    assert isinstance(create_world("tabletop"), TabletopWorld)
    libero = create_world("libero_spatial")  # builds no simulator until an episode is reset
    assert isinstance(libero, World) and libero.stats_key == "libero_spatial" and libero.max_steps == 220
    assert set(WORLD_NAMES) == {"tabletop", *world_suites()}
    with pytest.raises(InputError, match=r"^world: got 'tabletop2', expected one of \['tabletop'"):
        create_world("tabletop2")
    physics = create_world("libero_spatial", render=False)
    episode = Episode("libero_spatial", ("libero_spatial", 0, 0), "x", {}, spec=0)
    with pytest.raises(InputError, match=r"^render: got a LiberoWorld without cameras"):
        physics.reset(episode)  # refused before any simulator is built
    assert physics.env is None


def world_suites() -> tuple[str, ...]:
    from vla_lab.worlds.libero.suites import ALL_SUITES

    return ALL_SUITES


def test_episodes_are_the_scenes_of_a_split(env):
    episodes = env.episodes(split="validation", count=3, start=5)
    seeds = list(world.split_seeds("validation", 3, 5))
    assert [e.key for e in episodes] == [("validation", s) for s in seeds] == sorted(e.key for e in episodes)
    for episode, seed in zip(episodes, seeds):
        scene = world.sample_scene(seed)
        assert episode.instruction == scene.instruction and episode.variant == "original"
        assert episode.record() == {"split": "validation", "scene": seed, "kind": scene.kind,
                                    "instruction": scene.instruction, "variant": "original"}
    with pytest.raises(InputError, match=r"^selection: got \['seeds'\], expected split, count, start$"):
        env.episodes(seeds=[1])
    with pytest.raises(InputError, match="^split: got 'dev'"):
        env.episodes(split="dev", count=1)


def test_reset_is_the_rendered_start_with_the_object_regions(env):
    episode = env.episodes(count=1)[0]
    observation = env.reset(episode)
    expected = world.render(episode.spec)
    for got, want in zip(observation.images, expected.images):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(observation.proprio, expected.proprio)
    assert observation.instruction == episode.instruction and observation.full_image is observation.images[0]
    assert len(observation.regions) == len(world.VIEWS)  # one dict per view, the wrist view centred on the gripper
    for view, regions in zip(world.VIEWS, observation.regions):
        pixels = world.object_pixel_masks(episode.spec, view)
        assert set(regions) == {"target", "distractors"}  # the tabletop has no place target
        np.testing.assert_array_equal(regions["target"], pixels[episode.spec.target])
        others = np.any([pixels[i] for i in episode.spec.distractors], axis=0)
        np.testing.assert_array_equal(regions["distractors"], others & ~pixels[episode.spec.target])
    assert observation.regions[0]["target"].shape == observation.full_image.shape[:2]
    assert observation.regions[0]["target"].any()
    assert env.reset(episode, regions=False).regions == []


def test_stepping_the_world_is_the_lockstep_runner(env):
    """The expert through reset / step gives the episodes of ``run_episodes`` (same outcomes, steps, positions)."""
    episodes = env.episodes(count=6)
    scenes = [e.spec for e in episodes]
    reference = world.run_episodes(
        scenes, lambda obs, rows, _: [world.expert_policy(scenes[i])(o) for i, o in zip(rows, obs)], indexed=True)
    for episode, expected in zip(episodes, reference):
        observation = env.reset(episode)
        policy = world.expert_policy(episode.spec)
        steps, positions, done, success = 0, [(env.state.x, env.state.y)], False, False
        while not done:
            for action in policy(observation)[:8]:
                result = env.step(action)
                steps += 1
                positions.append((env.state.x, env.state.y))
                observation, done, success = result.observation, result.done, result.success
                if done:
                    break
        assert (success, steps) == (expected.success, expected.steps)
        np.testing.assert_array_equal(np.asarray(positions, dtype=np.float32), expected.positions)


def test_step_without_observing_renders_nothing_and_changes_nothing(env):
    episode = env.episodes(count=1)[0]
    env.reset(episode)
    action = np.array([0.5, -0.25, 0, 0, 0, 0, -1.0])
    blind = env.step(action, observe=False)
    state = env.state
    env.reset(episode)
    seen = env.step(action)
    assert blind.observation is None and seen.observation is not None and env.state == state
    np.testing.assert_array_equal(seen.observation.full_image, world.render(episode.spec, state).full_image)


def test_bad_steps_are_one_line_errors(env):
    with pytest.raises(InputError, match=r"^step: got no running episode, expected reset\(episode\) first$"):
        env.step(np.zeros(7))
    env.reset(env.episodes(count=1)[0])
    with pytest.raises(InputError, match=r"^action: got shape \(6,\)"):
        env.step(np.zeros(6))
    with pytest.raises(InputError, match=r"^action: got shape \(7,\) \(finite: False\)"):
        env.step([np.nan] * 7)
    with pytest.raises(InputError, match="^episode: got an episode of 'libero_spatial'"):
        env.reset(env.episodes(count=1)[0].__class__("libero_spatial", ("libero_spatial", 0, 0), "x", {}))


def test_target_swap_names_another_object_of_the_same_scene(env):
    for episode in env.episodes(count=8):
        swapped = env.counterfactual(episode, "target_swap", seed=3)
        scene, changed = episode.spec, swapped.spec
        assert swapped.key == episode.key and swapped.variant == "target_swap"
        assert changed.target != scene.target and changed.objects == scene.objects
        assert world.resolve_instruction(changed.objects, swapped.instruction) == changed.target
        assert swapped.instruction.split(" the ")[0] == world.verb_of(episode.instruction)
        assert swapped.columns["target_from"] == scene.target
        assert env.counterfactual(episode, "target_swap", seed=3).spec.target == changed.target  # seeded
        images = env.reset(swapped).images
        for got, want in zip(images, world.render(scene).images):
            np.testing.assert_array_equal(got, want)  # same scene, same pixels
        target = env.reset(swapped).regions[0]["target"]
        assert target.tolist() == world.object_pixel_masks(scene)[changed.target].tolist()


def test_other_instruction_keeps_the_scene_and_its_target(env):
    episode = env.episodes(split="test", count=1, start=2)[0]
    other = env.counterfactual(episode, "other_instruction", seed=0)
    donor = world.sample_scene(other.columns["instruction_from"])
    assert other.instruction == donor.instruction and donor.seed != episode.spec.seed
    assert world.split_seeds("test", 1)[0] <= donor.seed < world.split_seeds("test", 1)[0] + world.SPLIT_SIZE
    assert other.spec.target == episode.spec.target and other.spec.objects == episode.spec.objects
    assert env.reset(other).instruction == donor.instruction
    assert sorted(COUNTERFACTUALS) == ["other_instruction", "target_swap"]
    with pytest.raises(InputError, match=r"^variant: got 'swap', expected one of \['other_instruction'"):
        env.counterfactual(episode, "swap")
