"""Tests of the synthetic tabletop world (vla_lab.worlds.tabletop)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from vla_lab.errors import InputError
from vla_lab.stats import wilson_interval
from vla_lab.worlds import tabletop as world
from vla_lab.worlds.tabletop import (
    COLORS,
    KINDS,
    RELATIONS,
    SUPERLATIVES,
    VOCABULARY,
    SceneObject,
    State,
    WorldConfig,
)

CONFIG = WorldConfig()


def _free_state(scene: world.Scene) -> State:
    """A gripper position at least 0.45 from every object (so it occludes none)."""
    for x in np.linspace(-0.9, 0.9, 13):
        for y in np.linspace(-0.9, 0.9, 13):
            if all(math.hypot(x - o.x, y - o.y) >= 0.45 for o in scene.objects):
                return State(float(x), float(y))
    raise AssertionError("no free gripper position")  # pragma: no cover


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_everything() -> None:
    for seed in (0, 7, 1_000_003):
        a, b = world.sample_scene(seed), world.sample_scene(seed)
        assert a.objects == b.objects and a.target == b.target and a.kind == b.kind
        assert a.instruction == b.instruction and a.gripper_start == b.gripper_start
        oa, ob = world.render(a), world.render(b)
        np.testing.assert_array_equal(oa.full_image, ob.full_image)
        np.testing.assert_array_equal(oa.wrist_image, ob.wrist_image)
        np.testing.assert_array_equal(oa.proprio, ob.proprio)
        state = world.initial_state(a)
        np.testing.assert_array_equal(world.expert_chunk(a, state), world.expert_chunk(b, state))
        ea, eb = world.sample_training_example(seed), world.sample_training_example(seed)
        np.testing.assert_array_equal(ea.full_image, eb.full_image)
        np.testing.assert_array_equal(ea.wrist_image, eb.wrist_image)
        np.testing.assert_array_equal(ea.actions, eb.actions)
        np.testing.assert_array_equal(ea.proprio, eb.proprio)
        assert ea.instruction == eb.instruction


def test_different_seeds_differ() -> None:
    images = [world.render(world.sample_scene(s)).full_image for s in range(20)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j])
    # The table texture alone differs between scenes.
    a, b = world.sample_scene(0), world.sample_scene(1)
    xs, ys = np.zeros((1, 1)), np.zeros((1, 1))
    assert not np.array_equal(a.texture.sample(xs, ys), b.texture.sample(xs, ys))


def test_independent_of_global_random_state() -> None:
    np.random.seed(0)
    a = world.sample_training_example(3)
    np.random.seed(123)
    np.random.random(10)
    b = world.sample_training_example(3)
    np.testing.assert_array_equal(a.full_image, b.full_image)
    np.testing.assert_array_equal(a.actions, b.actions)


# --- scenes and instructions -----------------------------------------------------------------


def test_instructions_are_unambiguous_and_use_the_vocabulary() -> None:
    for seed in range(500):
        scene = world.sample_scene(seed)
        # The resolver sees only the objects (colours, shapes, positions), never the target index.
        assert world.resolve_instruction(scene.objects, scene.instruction) == scene.target, scene
        text = scene.instruction
        assert text == text.lower() and text == text.strip() and text[-1] not in ".!?,"
        assert set(text.split()) <= set(VOCABULARY), text


def test_resolver_rejects_ambiguous_and_unknown_instructions() -> None:
    objects = [
        SceneObject("red", "circle", -0.5, 0.0, 0.14),
        SceneObject("red", "circle", 0.5, 0.0, 0.14),
        SceneObject("blue", "square", 0.0, 0.5, 0.14),
    ]
    with pytest.raises(InputError):
        world.resolve_instruction(objects, "pick up the red circle")
    with pytest.raises(InputError):
        world.resolve_instruction(objects, "pick up the object below the blue square")  # two below
    with pytest.raises(InputError):
        world.resolve_instruction(objects, "fetch the blue square")
    assert world.resolve_instruction(objects, "grasp the blue square") == 2
    assert world.resolve_instruction(objects, "grasp the rightmost circle") == 1
    assert world.resolve_instruction(objects, "pick up the topmost object") == 2


def test_scene_layout_rules() -> None:
    margin = CONFIG.relation_margin
    for seed in range(300):
        scene = world.sample_scene(seed)
        objs = scene.objects
        assert CONFIG.min_objects <= len(objs) <= CONFIG.max_objects
        assert len({(o.color, o.shape) for o in objs}) == len(objs)
        for i, a in enumerate(objs):
            assert max(abs(a.x), abs(a.y)) + a.extent <= 1.0
            for b in objs[i + 1 :]:
                assert math.hypot(a.x - b.x, a.y - b.y) >= a.extent + b.extent + CONFIG.object_gap
        target = scene.target_object
        assert math.hypot(target.x - scene.gripper_start[0], target.y - scene.gripper_start[1]) >= 0.3
        if scene.kind == "attribute":
            assert len({o.color for o in objs}) == len(objs)
        elif scene.kind == "disambiguation":
            assert sum(o.color == target.color for o in objs) >= 2
            assert sum(o.shape == target.shape for o in objs) >= 2
        else:
            words = scene.instruction.split()
            pos = np.array([[o.x, o.y] for o in objs])
            if words[-2] in SUPERLATIVES:
                axis, sign = SUPERLATIVES[words[-2]]
                group = [i for i, o in enumerate(objs) if words[-1] in (o.shape, "object")]
                assert len(group) >= 2
                others = [sign * pos[i, axis] for i in group if i != scene.target]
                assert sign * pos[scene.target, axis] - max(others) >= margin
            else:
                relation = " ".join(words[words.index("object") + 1 : -3])
                axis, sign = RELATIONS[relation]
                assert scene.anchor is not None and scene.anchor != scene.target
                offsets = sign * (pos[:, axis] - pos[scene.anchor, axis])
                assert offsets[scene.target] >= margin
                assert all(abs(d) >= margin for i, d in enumerate(offsets) if i != scene.anchor)


def test_kind_proportions() -> None:
    kinds = [world.sample_scene(s).kind for s in range(2000)]
    for kind, expected in zip(KINDS, CONFIG.kind_proportions):
        assert abs(kinds.count(kind) / len(kinds) - expected) < 0.04, kind
    relations = [world.sample_scene(s).instruction for s in range(2000) if kinds[s] == "relation"]
    superlative = sum(any(w in t for w in SUPERLATIVES) for t in relations) / len(relations)
    assert 0.35 < superlative < 0.65


# --- rendering -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 56])
def test_observation_types_and_sizes(size: int) -> None:
    config = WorldConfig(image_size=size)
    scene = world.sample_scene(5, config)
    obs = world.render(scene)
    for image in obs.images:
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert obs.proprio.shape == (8,) and obs.proprio.dtype == np.float32
    x, y = scene.gripper_start
    np.testing.assert_allclose(obs.proprio, [x, y, config.gripper_height, 0, 0, 0, 0.04, -0.04], atol=1e-6)
    closed = world.proprio(State(x, y, closed=True), config)
    assert closed[6] == 0 and closed[7] == 0
    assert obs.instruction == scene.instruction


def test_world_to_pixel_mapping() -> None:
    assert world.world_to_pixel(-1.0, 1.0) == (0.0, 0.0)
    assert world.world_to_pixel(1.0, -1.0) == (64.0, 64.0)
    assert world.world_to_pixel(0.0, 0.0) == (32.0, 32.0)
    row, col = world.world_to_pixel(0.3, 0.2, 64, center=(0.3, 0.2), half_width=0.5)
    assert (row, col) == (32.0, 32.0)
    # An object's colour appears at the pixel under its centre.
    scene = world.sample_scene(11)
    obs = world.render(scene, _free_state(scene))
    for obj in scene.objects:
        row, col = world.world_to_pixel(obj.x, obj.y)
        assert tuple(obs.full_image[int(row), int(col)]) == obj.rgb


def test_gripper_is_visible_and_moves() -> None:
    scene = world.sample_scene(2)
    a, b = _free_state(scene), None
    b = State(-a.x * 0.5, -a.y * 0.5)
    ia, ib = world.render(scene, a), world.render(scene, b)
    white = np.array(world.GRIPPER_RGB)
    assert (ia.full_image == white).all(-1).sum() >= 8
    assert not np.array_equal(ia.full_image, ib.full_image)
    # In the wrist view the gripper marker stays at the centre.
    for obs in (ia, ib):
        centre = obs.wrist_image[20:44, 20:44]
        assert (centre == white).all(-1).sum() >= 20
    # Open and closed grippers look different.
    closed = world.render(scene, State(a.x, a.y, closed=True))
    assert not np.array_equal(closed.wrist_image, ia.wrist_image)


def test_wrist_view_outside_table_is_constant() -> None:
    scene = world.sample_scene(4)
    obs = world.render(scene, State(-1.0, 1.0))
    # The top-left quarter of the wrist view lies outside the table (the gripper marker sits at the centre).
    np.testing.assert_array_equal(obs.wrist_image[:20, :20], np.zeros((20, 20, 3), np.uint8))
    assert obs.wrist_image[40:, 40:].mean() > 50


def test_wrist_view_near_target_shows_the_target() -> None:
    for seed in range(30):
        scene = world.sample_scene(seed)
        target = scene.target_object
        obs = world.render(scene, State(target.x + 0.05, target.y - 0.05))
        assert (obs.wrist_image == np.array(target.rgb)).all(-1).sum() >= 50
        masks = world.object_patch_masks(
            scene, (8, 8), view="wrist", state=State(target.x + 0.05, target.y - 0.05)
        )
        assert masks["target"][2:6, 2:6].any()


# --- ground-truth masks ----------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(8, 8), (4, 4), (16, 16), (2, 4)])
def test_patch_masks_agree_with_pixels(grid: tuple[int, int]) -> None:
    patch = (64 // grid[0], 64 // grid[1])
    for seed in range(40):
        scene = world.sample_scene(seed)
        state = _free_state(scene)
        image = world.render(scene, state).full_image
        masks = world.object_patch_masks(scene, grid, state=state)
        assert masks["target"].shape == grid and masks["target"].dtype == bool
        assert masks["target"].any()
        np.testing.assert_array_equal(masks["target"], masks[f"object_{scene.target}"])
        assert not (masks["distractors"] & masks["target"]).any()
        for i, obj in enumerate(scene.objects):
            colour = (image == np.array(obj.rgb)).all(-1)
            for r, c in zip(*np.nonzero(masks[f"object_{i}"])):
                block = colour[r * patch[0] : (r + 1) * patch[0], c * patch[1] : (c + 1) * patch[1]]
                assert block.any(), (seed, i, r, c)
        # Pixel level: a colour shows exactly where the objects of that colour are (the gripper is away).
        pixels = world.object_pixel_masks(scene)
        for name, rgb in COLORS.items():
            expected = np.zeros((64, 64), bool)
            for i, obj in enumerate(scene.objects):
                if obj.color == name:
                    expected |= pixels[i]
            np.testing.assert_array_equal((image == np.array(rgb)).all(-1), expected)
        union = np.zeros(grid, bool)
        for i in scene.distractors:
            union |= masks[f"object_{i}"]
        np.testing.assert_array_equal(masks["distractors"], union & ~masks["target"])
        assert masks["gripper"].any()


def test_patch_masks_wrist_view_and_errors() -> None:
    scene = world.sample_scene(9)
    target = scene.target_object
    state = State(target.x, target.y)
    masks = world.object_patch_masks(scene, (4, 4), view="wrist", state=state)
    assert masks["target"][1:3, 1:3].all()
    image = world.render(scene, state).wrist_image
    colour = (image == np.array(target.rgb)).all(-1)
    for r, c in zip(*np.nonzero(masks["target"])):
        assert colour[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16].any()
    with pytest.raises(InputError):
        world.object_patch_masks(scene, (5, 5))
    with pytest.raises(InputError):
        world.object_patch_masks(scene, (8, 8), view="side")
    relation = next(world.sample_scene(s) for s in range(100) if world.sample_scene(s).anchor is not None)
    assert world.object_patch_masks(relation, (8, 8))["anchor"].any()


# --- dynamics and expert ---------------------------------------------------------------------


def test_success_semantics() -> None:
    scene = world.sample_scene(21)
    target = scene.target_object
    close = np.array([0, 0, 0, 0, 0, 0, 1.0])
    # Closing on the target grasps it.
    done = world.step(scene, State(target.x + 0.06, target.y), close)
    assert done.holding and done.closed and done.success and done.done and done.steps == 1
    # Closing on nothing (just outside the grasp radius, or far away) is a miss: the episode goes on.
    edge = world.step(scene, State(target.x + CONFIG.grasp_radius + 0.01, target.y), close)
    assert not edge.done and not edge.closed and edge.misses == 1
    far = _free_state(scene)
    missed = world.step(scene, far, close)
    assert not missed.done and missed.misses == 1
    assert world.step(scene, missed, close).misses == 2
    # Closing on a distractor grasps the wrong object: failure.
    distractor = scene.objects[scene.distractors[0]]
    wrong = world.step(scene, State(distractor.x, distractor.y), close)
    assert wrong.failed and wrong.closed and not wrong.success
    # A finished episode does not change.
    assert world.step(scene, done, np.array([1, 1, 0, 0, 0, 0, -1.0])) == done
    # Moving: clipped to [-1, 1] and scaled by max_step; pose dims are ignored; -1 keeps the gripper open.
    moved = world.step(scene, State(0.0, 0.0), np.array([5.0, -0.5, 9, 9, 9, 9, -1.0]))
    assert moved.x == pytest.approx(CONFIG.max_step) and moved.y == pytest.approx(-0.5 * CONFIG.max_step)
    assert not moved.closed and not moved.done
    assert world.step(scene, State(0.99, 0.0), np.array([1.0, 0, 0, 0, 0, 0, -1])).x == 1.0
    with pytest.raises(InputError):
        world.step(scene, State(0.0, 0.0), np.array([np.nan, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(InputError):
        world.step(scene, State(0.0, 0.0), np.zeros(6))
    # A policy that only closes, far from every object, misses until the time runs out.
    result = world.rollout(scene, lambda obs: np.tile(close, (8, 1)))
    assert result.outcome == "timeout" and not result.success and result.final_state.misses == CONFIG.max_steps
    # One that heads for a distractor and closes there fails.
    def to_distractor(obs):
        dx, dy = distractor.x - obs.proprio[0], distractor.y - obs.proprio[1]
        move = np.clip(np.array([dx, dy]) / CONFIG.max_step, -1, 1)
        grasp = 1.0 if np.hypot(dx, dy) < 0.05 else -1.0
        return np.tile(np.array([*move, 0, 0, 0, 0, grasp]), (1, 1))

    result = world.rollout(scene, to_distractor, execute=1)
    assert result.outcome == "wrong_object" and not result.success


def test_expert_chunk_is_consistent_open_loop() -> None:
    for seed in range(50):
        scene = world.sample_scene(seed)
        state = world.initial_state(scene)
        chunk = world.expert_chunk(scene, state)
        assert chunk.shape == (8, 7) and chunk.dtype == np.float32
        assert np.abs(chunk).max() <= 1.0
        assert (chunk[:, 2:6] == 0).all()
        assert set(np.unique(chunk[:, 6])) <= {-1.0, 1.0}
        for action in chunk:
            np.testing.assert_array_equal(action, world.expert_action(scene, state))
            state = world.step(scene, state, action)
    # Near the target: a short proportional move, then close, then hold.
    scene = world.sample_scene(3)
    target = scene.target_object
    chunk = world.expert_chunk(scene, State(target.x - 0.08, target.y + 0.05))
    np.testing.assert_allclose(chunk[0, :2], [0.8, -0.5], atol=1e-5)
    assert chunk[0, 6] == -1 and (chunk[1:, 6] == 1).all() and (chunk[1:, :6] == 0).all()
    # Far away the expert saturates and heads straight for the target.
    chunk = world.expert_chunk(scene, State(-target.x, -target.y) if abs(target.x) > 0.3 else State(0.9, 0.9))
    assert np.abs(chunk[0, :2]).max() == pytest.approx(1.0)


def test_expert_succeeds_closed_loop() -> None:
    seeds = world.split_seeds("test", 200)
    results = [
        world.rollout(world.sample_scene(s), world.expert_policy(world.sample_scene(s))) for s in seeds
    ]
    rate = sum(r.success for r in results) / len(results)
    assert rate >= 0.99
    assert max(r.steps for r in results) <= CONFIG.max_steps
    summary = world.evaluate("expert", world.split_seeds("validation", 30))
    assert summary["success_rate"] >= 0.99 and summary["num_episodes"] == 30
    assert summary["outcomes"]["success"] == 30
    assert set(summary["by_kind"]) <= set(KINDS)
    assert {"seed", "kind", "instruction", "success", "outcome", "steps", "queries"} <= set(
        summary["episodes"][0]
    )


def test_rollout_executes_partial_chunks_and_times_out() -> None:
    scene = world.sample_scene(1)
    calls = []

    def still(obs: world.Observation) -> np.ndarray:
        calls.append(obs)
        return np.tile(np.array([0, 0, 0, 0, 0, 0, -1.0]), (8, 1))

    result = world.rollout(scene, still, max_steps=20, execute=4, record=True)
    assert result.outcome == "timeout" and result.steps == 20 and result.queries == 5 == len(calls)
    assert len(result.frames) == 5 and result.positions.shape == (21, 2)

    class Counting:
        resets = 0

        def reset(self) -> None:
            self.resets += 1

        def __call__(self, obs: world.Observation) -> np.ndarray:
            return np.zeros((8, 7))

    policy = Counting()
    summary = world.evaluate(policy, [0, 1, 2], max_steps=8)
    assert policy.resets == 3 and summary["success_rate"] == 0.0
    with pytest.raises(InputError):
        world.rollout(scene, lambda obs: np.zeros((8, 6)))


# --- training data ---------------------------------------------------------------------------


def test_training_examples() -> None:
    examples = [world.sample_training_example(s) for s in range(400)]
    e = examples[0]
    assert e.full_image.shape == (64, 64, 3) and e.wrist_image.dtype == np.uint8
    assert e.actions.shape == (8, 7) and e.actions.dtype == np.float32
    assert e.proprio.shape == (8,) and e.proprio.dtype == np.float32
    np.testing.assert_array_equal(e.actions, world.expert_chunk(e.scene, e.state))
    assert e.instruction == world.sample_scene(0).instruction
    closing = np.array([(x.actions[:, 6] > 0).any() for x in examples])
    first = np.array([x.actions[0, 6] > 0 for x in examples])
    assert 0.3 < closing.mean() < 0.95 and first.mean() > 0.03
    # States are spread over the table, not only near the target.
    distances = [
        math.hypot(x.state.x - x.scene.target_object.x, x.state.y - x.scene.target_object.y) for x in examples
    ]
    assert np.mean(np.array(distances) > 0.7) > 0.2
    assert not any(x.state.closed for x in examples)


def test_dataset_statistics_layout() -> None:
    stats = world.dataset_statistics(200, seed=0)
    assert set(stats) == {"tabletop"}
    entry = stats["tabletop"]
    assert set(entry) == {"action", "proprio", "num_transitions", "num_trajectories"}
    keys = {"mean", "std", "max", "min", "q01", "q99", "mask"}
    assert set(entry["action"]) == keys and set(entry["proprio"]) == keys
    assert entry["action"]["mask"] == [True] * 6 + [False]
    for group, dim in (("action", 7), ("proprio", 8)):
        for key in keys - {"mask"}:
            values = entry[group][key]
            assert len(values) == dim and all(type(v) is float for v in values)
    assert entry["action"]["min"][6] == -1.0 and entry["action"]["max"][6] == 1.0
    assert entry["num_trajectories"] == 200 and entry["num_transitions"] == 200 * 8
    assert stats == world.dataset_statistics(200, seed=0)


@pytest.mark.slow
def test_the_committed_statistics_are_the_computed_ones() -> None:
    """``vla_lab/tabletop/statistics.json`` (read by every tabletop configuration) is what the world computes, and
    the shipped models were trained with it."""
    import json

    from vla_lab.tabletop import models

    assert models.world_statistics() == json.loads(json.dumps(models.computed_statistics()))
    for name in ("causal", "bidirectional"):
        stored = json.loads((models.shipped_path(name) / "vla_lab_config.json").read_text())["norm_stats"]
        assert stored == models.world_statistics(), name


def test_splits_are_disjoint() -> None:
    ranges = list(world.SPLITS.values())
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            assert a.stop <= b.start or b.stop <= a.start
    assert world.split_seeds("test", 3) == range(1_000_000, 1_000_003)
    assert world.split_seeds("validation", 2, start=5) == range(2_000_005, 2_000_007)
    with pytest.raises(InputError):
        world.split_seeds("holdout", 3)
    with pytest.raises(InputError):
        world.split_seeds("train", 2_000_000)


def _observation_policy(observation: world.Observation) -> np.ndarray:
    """A deterministic function of the observation alone: random moves and grasps seeded by what it sees."""
    seed = zlib.crc32(observation.instruction.encode()) + int(round(1000 * (observation.proprio[0] + 2)))
    rng = np.random.default_rng(seed)
    chunk = rng.uniform(-1, 1, size=(8, 7))
    chunk[:, 6] = rng.choice([-1.0, 1.0], size=8, p=[0.85, 0.15])
    return chunk


def test_lockstep_episodes_equal_one_at_a_time() -> None:
    """run_episodes over many scenes gives, episode by episode, what rollout gives for each scene alone."""
    scenes = [world.sample_scene(s) for s in world.split_seeds("test", 12)]
    queried: list[tuple[int, int]] = []
    lockstep = world.run_episodes(
        scenes, lambda obs: [_observation_policy(o) for o in obs], execute=5, max_steps=30,
        on_query=lambda episode, row, query, state: queried.append((episode, query)),
    )
    for i, (scene, result) in enumerate(zip(scenes, lockstep)):
        alone = world.rollout(scene, _observation_policy, execute=5, max_steps=30)
        assert result.record(scene) == alone.record(scene)
        np.testing.assert_array_equal(result.positions, alone.positions)
        assert sorted(q for e, q in queried if e == i) == list(range(result.queries))
    assert {r.outcome for r in lockstep} >= {"timeout"} and len({r.steps for r in lockstep}) > 1


def test_summary_carries_counts_and_wilson_intervals() -> None:
    episodes = [{"seed": i, "kind": "attribute" if i < 6 else "relation", "instruction": "x", "success": i % 3 != 0,
                 "outcome": "success" if i % 3 else "timeout", "steps": 4, "queries": 1, "misses": 0}
                for i in range(9)]
    summary = world.summarize(episodes, [0.1] * 9)
    assert summary["num_episodes"] == 9 and summary["success_rate"] == pytest.approx(6 / 9)
    low, high = summary["success_ci95"]
    assert low < 6 / 9 < high and (low, high) == pytest.approx(wilson_interval(6, 9))
    assert summary["by_kind"]["relation"]["num_episodes"] == 3
    assert summary["by_kind"]["relation"]["success_ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert summary["outcomes"] == {"success": 6, "wrong_object": 0, "timeout": 3}
    with pytest.raises(InputError, match="action_l1"):
        world.summarize(episodes, [0.1])
