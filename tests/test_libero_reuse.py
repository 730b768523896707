"""The LIBERO savings that must not change a bit: frames drawn only when read, resets that replay the first rebuild
instead of recompiling the scene (``vla_lab.worlds.libero.reuse``), and a scene copied from the last one compiled
(``vla_lab.worlds.libero.compiled``). The reference is ``reuse=False``: a rebuild at every reset and both cameras
drawn at every step, as upstream's loop runs LIBERO (and, where a test says so, every scene compiled from its XML)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vla_lab.errors import InputError

HAVE_LIBERO = importlib.util.find_spec("libero") is not None
pytestmark = pytest.mark.skipif(not HAVE_LIBERO, reason="LIBERO is not installed (pip install -e '.[libero]')")
IMAGES = ("agentview_image", "robot0_eye_in_hand_image")
# Scratch and statistics of MuJoCo's data that no step reads: the constraint solver's arrays (rebuilt at every
# step; their unused tail is whatever the arena held) and the arena's high-water marks.
SCRATCH = ("efc_", "maxuse_")


def _data(env) -> dict[str, np.ndarray]:
    data = env.env.sim.data._data
    out = {}
    for name in dir(data):
        if name.startswith(("_", *SCRATCH)) or name == "contact":
            continue
        value = getattr(data, name)
        if isinstance(value, (np.ndarray, int, float)):
            out[name] = np.array(value)
    return out


def _assert_same_simulator(ours, reference) -> None:
    from vla_lab.worlds.libero.reuse import model_arrays

    mine, theirs = _data(ours), _data(reference)
    assert sorted(mine) == sorted(theirs)
    assert [k for k in mine if not np.array_equal(mine[k], theirs[k])] == []
    mine, theirs = model_arrays(ours.env.sim.model._model), model_arrays(reference.env.sim.model._model)
    assert [k for k in mine if not np.array_equal(mine[k], theirs[k])] == []


def _actions(seed: int, steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.r_[rng.normal(0.0, 0.6, 6), rng.choice([-1.0, 1.0])] for _ in range(steps)]


def test_frames_read_are_the_frames_drawn_at_every_step():
    """robosuite samples the cameras one substep into a step's last sampling period; a frame drawn later from the
    copy kept then is the frame drawn at the time, and steps nobody observes draw nothing. robosuite draws into
    whatever GL context is current, and MuJoCo frees a renderer's objects in the current context: another simulator
    built and closed in between must not matter."""
    from vla_lab.worlds.libero.env import LiberoEnv

    with LiberoEnv("libero_spatial", 0, resolution=128) as ours, \
            LiberoEnv("libero_spatial", 0, resolution=128, reuse=False) as reference:
        for init_state in (2, 5):
            mine, theirs = ours.reset(init_state), reference.reset(init_state)
            for name in IMAGES:
                assert np.array_equal(mine[name], theirs[name]), name
            if init_state == 5:  # another simulator built, then closed while ours drew last (its context current)
                scene = ours.env.sim.model.get_xml()  # MuJoCo's XML of the last model compiled: ours, still
                assert ours.model_xml == scene  # read at the rebuild (MuJoCo keeps only the last compiled one)
                other = LiberoEnv("libero_spatial", 1, resolution=64)
                ours.camera_images()
                other.close()
                assert ours.model_xml == scene
            for t, action in enumerate(_actions(init_state, 16)):
                observe = True if t % 8 == 7 else [IMAGES[0]] if t == 3 else False  # a video's frame: agentview
                mine, theirs = ours.step(action, observe=observe)[0], reference.step(action, observe=observe)[0]
                assert np.array_equal(ours.sim_state(), reference.sim_state()), t
                assert np.array_equal(mine["robot0_eef_pos"], theirs["robot0_eef_pos"])
                drawn = IMAGES if observe is True else observe or []
                assert set(IMAGES) & set(mine) == set(drawn)  # nothing stale can be read by mistake
                assert set(IMAGES) <= set(theirs)  # upstream's way draws every camera at every step, whatever asked
                for name in drawn:
                    assert np.array_equal(mine[name], theirs[name]), (t, name)
        before = ours.sim_state()
        with pytest.raises(InputError, match=r"^observe: got \['depth'\], expected True, False or some of"):
            ours.step(np.zeros(7), observe=["depth"])
        assert np.array_equal(ours.sim_state(), before)  # refused before stepping
        # A state set directly is drawn the same way (the demonstrations' path).
        state = reference.sim_state()
        mine, theirs = ours.set_sim_state(state), reference.set_sim_state(state)
        for name in IMAGES:
            assert np.array_equal(mine[name], theirs[name]), name


def test_a_reset_without_rebuilding_is_the_rebuilt_reset_whatever_ran_before(monkeypatch):
    """libero_goal task 7 ("turn on the stove"): a cabinet whose drawers LIBERO's property samplers open at every
    reset, and a stove whose burner is drawn when its knob is on. Between the compared resets our simulator ran
    random actions and had its stove turned on. Our simulator's scene is a copy of the one its construction
    compiled (``compiled.keep_compiled``); the reference compiles its scene from the XML at every reset."""
    import mujoco

    from vla_lab.worlds.libero import compiled
    from vla_lab.worlds.libero.env import DUMMY_ACTION, LiberoEnv

    compiles = []
    compile_xml = mujoco.MjModel.from_xml_string
    monkeypatch.setattr(mujoco.MjModel, "from_xml_string", lambda xml: compiles.append(1) or compile_xml(xml))
    previous = compiled.keep_compiled(True)
    try:
        ours = LiberoEnv("libero_goal", 7, resolution=64)
        ours.reset(0)
        assert len(compiles) <= 1  # the construction's compile (none if the last scene compiled here was this one)
        assert compiled.keep_compiled(False) and compiled._STATE["model"] is None  # freed
        with pytest.raises(InputError, match=r"^keep: got 1, expected True or False"):
            compiled.keep_compiled(1)  # type: ignore[arg-type]
        del compiles[:]
        reference = LiberoEnv("libero_goal", 7, resolution=64, reuse=False)
    finally:
        compiled.keep_compiled(previous)
    with ours, reference:
        inner = ours.env.env
        for init_state in (3, 41):
            for action in _actions(init_state, 15):
                ours.step(action, observe=False)
            for name, state in inner.object_states_dict.items():
                if getattr(state, "has_turnon_affordance", False):
                    knob = inner.get_object(name)
                    for joint in knob.joints:
                        inner.sim.data.set_joint_qpos(joint, max(knob.object_properties["articulation"]
                                                                 ["default_turnon_ranges"]))
            ours.step(DUMMY_ACTION, observe=False)
            mine = ours.reset(init_state)
            mine_random = np.random.get_state()
            previous = compiled.keep_compiled(False)
            try:
                theirs = reference.reset(init_state)
            finally:
                compiled.keep_compiled(previous)
            assert ours.model_xml == reference.model_xml
            assert ours._saved_reset.saved
            _assert_same_simulator(ours, reference)
            for name in IMAGES:
                assert np.array_equal(mine[name], theirs[name]), name
            assert all(np.array_equal(a, b) for a, b in zip(mine_random[1:], np.random.get_state()[1:]))
            for action in _actions(100 + init_state, 6):  # the controllers and the gripper continue alike
                ours.step(action, observe=False)
                reference.step(action)
            _assert_same_simulator(ours, reference)
        assert len(compiles) == 3  # the reference's construction and its two resets compiled the scene


def test_a_kept_simulator_gives_the_next_world_the_observations_of_a_new_one():
    """A world's released simulator is kept (``keep_simulators``) and handed to the next world of the process that
    needs the same one: its reset replays the saved rebuild, whatever the last world did with it, and observes
    what the simulator's first (rebuilt) reset observed (a replay is a rebuild in every bit of the simulator:
    the test above)."""
    from vla_lab.worlds.libero import LiberoWorld, keep_simulators
    from vla_lab.worlds.libero import env as libero_env

    before = keep_simulators(0)  # frees what earlier tests of this process kept
    keep_simulators(1)
    try:
        with LiberoWorld("libero_spatial", resolution=64) as world:
            episode = world.episode(0, 3)
            first = world.reset(episode)
            kept = world.env
            for action in _actions(7, 5):
                world.step(action)
        assert kept is not None and kept.env is not None and list(libero_env._KEPT.values())[-1] is kept
        with LiberoWorld("libero_spatial", resolution=64) as world:
            again = world.reset(episode)
            assert world.env is kept
            assert all(np.array_equal(a, b) for a, b in zip(again.images, first.images, strict=True))
            assert np.array_equal(again.proprio, first.proprio)
            assert sorted(again.regions[0]) == sorted(first.regions[0])
            assert all(np.array_equal(again.regions[0][k], v) for k, v in first.regions[0].items())
        assert kept.env is not None and list(libero_env._KEPT.values()) == [kept]  # kept again
        for bad in (-1, True):
            with pytest.raises(InputError, match=rf"^count: got {bad}, expected a non-negative integer"):
                keep_simulators(bad)
        # A call that raised (a Ctrl-C inside a step) leaves the simulator unkept: closed when its world releases it.
        with LiberoWorld("libero_spatial", resolution=64) as world:
            world.reset(episode)
            assert world.env is kept and not kept.interrupted

            def interrupted_step(action):
                raise KeyboardInterrupt

            kept.env.step = interrupted_step
            with pytest.raises(KeyboardInterrupt):
                world.step(np.zeros(7))
            assert kept.interrupted
        assert kept.env is None and not libero_env._KEPT
    finally:
        keep_simulators(before)


class _Simulator:
    """What ``release_simulator`` reads of a LiberoEnv."""

    def __init__(self, interrupted: bool = False, saved: bool = True) -> None:
        self.suite, self.task_id, self.resolution, self.seed, self.render_cameras = "libero_spatial", 0, 64, 0, True
        self.reuse, self.interrupted, self.env = True, interrupted, object()
        self._saved_reset = type("Saved", (), {"saved": saved})()

    def close(self) -> None:
        self.env = None


def test_only_a_simulator_that_finished_its_calls_and_a_rebuild_is_kept():
    from vla_lab.worlds.libero import LiberoWorld, keep_simulators
    from vla_lab.worlds.libero import env as libero_env

    before = keep_simulators(0)  # frees what earlier tests of this process kept
    keep_simulators(1)
    try:
        for simulator in (_Simulator(interrupted=True), _Simulator(saved=False)):
            libero_env.release_simulator(simulator)
            assert simulator.env is None and not libero_env._KEPT
        simulator = _Simulator()
        libero_env.release_simulator(simulator)
        libero_env.release_simulator(simulator)  # twice: still kept, not closed
        assert simulator.env is not None and list(libero_env._KEPT.values()) == [simulator]
        newer = _Simulator()
        libero_env.release_simulator(newer)  # the same key: the older one is closed
        assert simulator.env is None and list(libero_env._KEPT.values()) == [newer]
        assert libero_env.open_simulator("libero_spatial", 0, 64) is newer and not libero_env._KEPT
        world = LiberoWorld("libero_spatial", resolution=64)  # builds nothing until an episode is reset
        world.env = newer
        with pytest.raises(RuntimeError), world:  # left on an exception: closed, not kept
            raise RuntimeError
        assert newer.env is None and world.env is None and not libero_env._KEPT
    finally:
        keep_simulators(before)
