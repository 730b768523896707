"""The one policy and the one episode runner: action queues (``OpenLoop``), lockstep episodes over any world
(``run_lockstep``), and a model acting in a world (``Policy``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import tiny_tabletop_config

from vla_lab import VLAAdapter
from vla_lab.errors import InputError
from vla_lab.policy import Policy
from vla_lab.worlds import Episode, Observation, Step
from vla_lab.worlds import tabletop as world
from vla_lab.worlds.libero import LiberoWorld, process_action
from vla_lab.worlds.runner import OpenLoop, run_lockstep

pytestmark = pytest.mark.usefixtures("one_thread")


def observation(value: float = 0.0, instruction: str = "pick up the red cube") -> Observation:
    image = np.full((64, 64, 3), int(value) % 256, dtype=np.uint8)
    return Observation([image, image], instruction, np.full(8, value, dtype=np.float32))


def counting_chunks(length: int = 5):
    calls = []

    def chunks(observations, slots):
        calls.append(list(slots))
        out = np.zeros((len(slots), length, 7))
        out[:, :, 0] = np.arange(length)
        out[:, :, 1] = np.asarray(slots)[:, None]
        return out

    return chunks, calls


def test_open_loop_runs_execute_actions_of_each_chunk():
    chunks, calls = counting_chunks(5)
    policy = OpenLoop(chunks, execute=3)
    actions = [policy.select_action(observation() if policy.needs_observation(0) else None) for _ in range(7)]
    assert [a[0] for a in actions] == [0, 1, 2, 0, 1, 2, 0] and len(calls) == 3 and policy.queries == [3]
    policy.reset()
    assert policy.needs_observation(0) and policy.queries == [0]
    with pytest.raises(InputError, match=r"^observations: got none for slots \[0\], expected one for every slot"):
        policy.select_action(None)
    with pytest.raises(InputError, match="^execute: got 0, expected a positive integer$"):
        OpenLoop(chunks, execute=0)


def test_open_loop_batches_the_slots_that_ask_and_processes_chunks():
    chunks, calls = counting_chunks(4)
    seen = []
    policy = OpenLoop(chunks, execute=2, process=process_action, on_query=lambda *a: seen.append(a))
    policy.reset(3)
    first = policy.select_actions([0, 1, 2], {s: observation(s) for s in range(3)})
    assert calls == [[0, 1, 2]] and [a[1] for a in first] == [0, 1, 2]
    assert all(a[6] == -0.0 or a[6] == 1.0 for a in first)  # gripper 0 -> -1 -> sign -> negated: LIBERO's units
    policy.select_actions([0, 2], {})  # the second action of the chunk: nobody asks
    assert calls == [[0, 1, 2]]
    policy.select_actions([0, 2], {0: observation(), 2: observation()})
    assert calls[-1] == [0, 2] and seen[-2:] == [(0, 0, 1), (2, 1, 1)]

    def wrong(observations, slots):
        return np.zeros((len(slots) + 1, 4, 7))

    with pytest.raises(InputError, match=r"^policy output: got 2 chunks, expected one per observation \(1\)$"):
        OpenLoop(wrong).select_action(observation())
    with pytest.raises(InputError, match=r"^policy output: got shape \(4, 6\), expected \(chunk, 7\)$"):
        OpenLoop(lambda o, s: np.zeros((1, 4, 6))).select_action(observation())


class CountingWorld:
    """A world that ends after ``done_at`` steps (success) and counts the observations it makes."""

    name, stats_key, center_crop = "counting", "counting", False

    def __init__(self, done_at: int | None, max_steps: int = 10) -> None:
        self.done_at, self.max_steps, self.observed, self.steps = done_at, max_steps, 0, 0

    def reset(self, episode, *, regions=True):
        self.steps = 0
        return observation()

    def step(self, action, *, observe=True):
        self.steps += 1
        self.observed += observe
        success = self.done_at is not None and self.steps >= self.done_at
        return Step(observation() if observe else None, success or self.steps >= self.max_steps, success)


def test_lockstep_observes_only_where_a_chunk_is_needed():
    chunks, calls = counting_chunks(8)
    worlds = [CountingWorld(5), CountingWorld(None), CountingWorld(None, max_steps=0)]
    episodes = [Episode("counting", (i,), "x", {}) for i in range(3)]
    stepped = []
    runs = run_lockstep(worlds, episodes, OpenLoop(chunks, execute=4), on_step=lambda s, r: stepped.append(s))
    assert [(r.success, r.steps, r.queries) for r in runs] == [(True, 5, 2), (False, 10, 3), (False, 0, 0)]
    assert calls == [[0, 1], [0, 1], [1]]  # one batched query per round while both run
    assert worlds[0].observed == 1 and worlds[1].observed == 2  # after steps 4 and 8 only
    assert stepped.count(0) == 5 and stepped.count(2) == 0
    with pytest.raises(InputError, match=r"^worlds: got 1, expected one per episode \(2\)$"):
        run_lockstep(worlds[:1], episodes[:2], OpenLoop(chunks))


class FailingWorld(CountingWorld):
    """A counting world whose step ``fail_at`` raises."""

    def __init__(self, fail_at: int, max_steps: int = 10) -> None:
        super().__init__(None, max_steps)
        self.fail_at = fail_at

    def step(self, action, *, observe=True):
        if self.steps + 1 == self.fail_at:
            raise RuntimeError("the simulator diverged")
        return super().step(action, observe=observe)


def test_isolate_ends_only_the_episode_that_raises_and_the_others_run_as_alone():
    """In a world's step, and in a batched query (then each asking slot is queried alone): the episode that raises
    fails with its error; the others get the records they get alone; without ``isolate`` the error propagates."""
    chunks, _ = counting_chunks(8)
    episodes = [Episode("counting", (i,), "x", {}) for i in range(3)]

    def records(runs):
        return [(r.success, r.steps, r.queries, r.error) for r in runs]

    def worlds():
        return [CountingWorld(6), FailingWorld(fail_at=3), CountingWorld(None, max_steps=9)]

    together = run_lockstep(worlds(), episodes, OpenLoop(chunks, execute=4), isolate=True)
    alone = [run_lockstep([w], [e], OpenLoop(chunks, execute=4), isolate=True)[0] for w, e in zip(worlds(), episodes)]
    assert records(together) == records(alone) == [
        (True, 6, 2, None), (False, 2, 1, "RuntimeError: the simulator diverged"), (False, 9, 3, None)]
    with pytest.raises(RuntimeError, match="diverged"):
        run_lockstep(worlds(), episodes, OpenLoop(chunks, execute=4))

    def refuses_slot_1(observations, slots):  # a query raises for the whole batch when slot 1 is in it
        if 1 in slots:
            raise InputError("predicted actions: got NaN, expected finite numbers")
        return chunks(observations, slots)

    fresh = [CountingWorld(6), CountingWorld(None), CountingWorld(None, max_steps=9)]
    runs = run_lockstep(fresh, episodes, OpenLoop(refuses_slot_1, execute=4), isolate=True)
    assert records(runs) == [
        (True, 6, 2, None), (False, 0, 0, "InputError: predicted actions: got NaN, expected finite numbers"),
        (False, 9, 3, None)]
    assert fresh[1].steps == 0


def test_each_slot_gets_its_share_of_the_query_time():
    chunks, _ = counting_chunks(8)
    policy = OpenLoop(chunks, execute=4)
    runs = run_lockstep([CountingWorld(5), CountingWorld(None)], [Episode("counting", (i,), "x", {}) for i in (0, 1)],
                        policy)
    assert sum(policy.slot_seconds) == pytest.approx(policy.query_seconds)
    assert policy.slot_seconds[1] > policy.slot_seconds[0] > 0  # slot 1 also asked alone, for its third chunk
    assert all(r.reset_seconds > 0 and r.step_seconds > 0 for r in runs)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VLAAdapter(tiny_tabletop_config()).eval()


def test_policy_is_the_model_with_the_worlds_conventions(model):
    scene = world.sample_scene(3)
    obs = world.render(scene)
    policy = Policy(model, world.TabletopWorld(), execute=2)
    assert policy.unnorm_key == "tabletop"
    with torch.inference_mode():
        expected = model.predict_action([obs.images], [obs.instruction], obs.proprio[None], unnorm_key="tabletop")
    np.testing.assert_array_equal(policy.predict([obs]), np.asarray(expected.actions, dtype=np.float64))
    np.testing.assert_array_equal(policy.last_normalized, expected.normalized_actions)
    first, second = policy.select_action(obs), policy.select_action(None)
    np.testing.assert_array_equal(np.stack([first, second]), np.asarray(expected.actions[0, :2], dtype=np.float64))


def test_policy_in_libero_crops_picks_the_suites_statistics_and_processes_the_gripper(model):
    stats = model.config.norm_stats["tabletop"]
    model.config.norm_stats = {"libero_spatial_no_noops": stats}
    try:
        libero = LiberoWorld("libero_spatial")  # no simulator is built
        policy = Policy(model, libero)
        assert policy.unnorm_key == "libero_spatial_no_noops" and libero.center_crop
        obs = observation(3.0)
        with torch.inference_mode():
            expected = model.predict_action([obs.images], [obs.instruction], obs.proprio[None],
                                            unnorm_key="libero_spatial_no_noops", center_crop=True)
        np.testing.assert_array_equal(policy.predict([obs]), np.asarray(expected.actions, dtype=np.float64))
        np.testing.assert_array_equal(policy.select_action(obs), process_action(policy.predict([obs])[0])[0])
        model.config.norm_stats = {"libero_goal": stats}
        with pytest.raises(InputError, match="^unnorm_key: got a model with statistics for \\['libero_goal'\\]"):
            Policy(model, libero)
    finally:
        model.config.norm_stats = {"tabletop": stats}


def test_policy_refuses_a_model_that_cannot_act_in_the_world():
    config = tiny_tabletop_config()
    data = config.to_dict()
    data["robot"]["action_dim"] = 6
    model = VLAAdapter(type(config).from_dict(data))
    with pytest.raises(InputError, match=r"^robot.action_dim: got 6, expected 7 \(tabletop's actions\)$"):
        Policy(model, world.TabletopWorld())
