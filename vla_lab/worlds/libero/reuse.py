"""What a LIBERO episode can skip without changing a bit: camera frames nobody reads, and rebuilding the scene.

**Deferred cameras** (:class:`DeferredCameras`). robosuite samples a camera partway through a step: its
observable fires at the first substep of each sampling period (after that substep's ``mj_step``, whose
kinematics are those of the substep's start), not at the end of the step, so the end-of-step state renders
differently (a few levels per pixel). Here each camera's sensor keeps a copy of the simulator data at the
moment robosuite asks for a frame (~0.25 ms) instead of drawing it (~100 ms on llvmpipe), and
:meth:`DeferredCameras.images` draws the latest copies when an observation is read: the same frames as
drawing at every step, bit for bit, at the cost of the frames actually read.

**Reset without rebuilding** (:class:`SavedReset`). robosuite's reset recompiles the scene from XML and
builds a new renderer (~3 s). What a rebuild leaves behind is saved the first time: the global NumPy random
state as the reset's placement samplers start drawing, and the freshly compiled model's arrays. A later reset
of the same task restores both and runs robosuite's reset on the existing simulator (``mj_resetData`` and the
``mj_forward`` a fresh simulator gets, the samplers, the robots' controllers), and clears the one piece of
Python state a rebuild would renew (each gripper's rate-limited ``current_action``). Simulator data, model,
frames and random state after the settle steps are the rebuilt reset's, bit for bit (``tests/test_libero_reuse.py``).
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from vla_lab.worlds.libero.compiled import scene_xml

#: robosuite's camera observables: ``<camera>_image``.
IMAGE_SUFFIX = "_image"


def make_current(sim: Any) -> None:
    """Make the GL context of ``sim``'s renderer the current one, if it has a renderer. robosuite draws into
    whichever context is current; with several simulators in a process (or one closed since) that may be
    another simulator's, or a freed one."""
    context = getattr(sim, "_render_context_offscreen", None)
    if context is not None:
        context.gl_ctx.make_current()


class DeferredCameras:
    """The camera observables of a robosuite environment, drawn only when :meth:`images` is called."""

    def __init__(self, env: Any, cameras: tuple[str, ...], resolution: int) -> None:
        self.env = env
        self.names = [f"{camera}{IMAGE_SUFFIX}" for camera in cameras]
        self.pending: dict[str, Any] = {}
        self._draw: dict[str, Callable[[dict[str, Any]], np.ndarray]] = {}
        self._blank = np.zeros((resolution, resolution, 3), dtype=np.uint8)
        self.install()

    def install(self) -> None:
        """Put the deferring sensors in place (again after a rebuild, which brings new sensors)."""
        self.pending.clear()
        for name in self.names:
            observable = self.env._observables[name]
            draw = observable._sensor
            self._draw[name] = draw

            def keep(obs_cache: dict[str, Any], name: str = name) -> np.ndarray:
                self.pending[name] = copy.copy(self.env.sim.data._data)
                return self._blank

            keep.__modality__ = draw.__modality__  # type: ignore[attr-defined]
            observable._sensor = keep

    def images(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The latest frame of each camera of ``names`` (default all), drawn from the simulator data of the
        moment robosuite sampled it."""
        names = self.names if names is None else names
        missing = [name for name in names if name not in self.pending]
        if missing:
            raise RuntimeError(f"cameras: got no sample of {missing} yet, expected a reset first")
        make_current(self.env.sim)
        context = self.env.sim._render_context_offscreen
        live = context.data
        try:
            out = {}
            for name in names:
                context.data = types.SimpleNamespace(_data=self.pending[name])
                out[name] = self._draw[name]({})
            return out
        finally:
            context.data = live


def model_arrays(model: Any) -> dict[str, np.ndarray]:
    """Every array of a MuJoCo model, as views into it."""
    out = {}
    for name in dir(model):
        if name.startswith("_"):
            continue
        value = getattr(model, name, None)
        if isinstance(value, np.ndarray):
            out[name] = value
    return out


class SavedReset:
    """A task's reset as a rebuild leaves it, replayed on the existing simulator (module docstring)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.random_state: Any = None
        self.arrays: list[tuple[np.ndarray, np.ndarray]] = []
        self.complete = False
        self.model_xml = ""

    def rebuild(self) -> None:
        """robosuite's reset (a rebuild), saving the model and random state its placement starts from."""
        inner = self.env.env
        rebuilt_reset = type(inner)._reset_internal.__get__(inner)

        def save_then_reset() -> None:
            self.random_state = np.random.get_state()
            self.arrays = [(view, view.copy()) for view in model_arrays(inner.sim.model._model).values()]
            rebuilt_reset()

        self.complete = False
        inner._reset_internal = save_then_reset
        try:
            self.env.reset()
        finally:
            del inner._reset_internal
        # MuJoCo writes the XML it parsed last (another scene's if one was compiled since): read now.
        self.model_xml = scene_xml(inner.sim)
        self.complete = self.random_state is not None

    @property
    def saved(self) -> bool:
        """A rebuild ran to its end and was saved."""
        return self.complete

    def replay(self) -> None:
        """The saved reset without a rebuild: the same simulator data, model and random state afterwards."""
        if not self.saved:
            raise RuntimeError("reset: got no saved rebuild, expected rebuild() first")
        inner = self.env.env
        for view, value in self.arrays:
            np.copyto(view, value)
        np.random.set_state(self.random_state)
        inner.sim.reset()
        inner.sim.forward()  # a rebuilt simulator is forwarded once before its reset
        inner._reset_internal()
        inner.sim.forward()
        inner._obs_cache = {}
        inner.visualize(vis_settings={name: False for name in inner._visualizations})
        for robot in inner.robots:
            if robot.has_gripper:
                robot.gripper.current_action = np.zeros(robot.gripper.dof)
        inner._get_observations(force_update=True)
