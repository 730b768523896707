"""A study: models x conditions x scenes -> per-scene tidy records -> summaries with 95 % intervals.

A study (:class:`Study`, registered by name in :data:`STUDIES`) cuts its scenes into fixed *units*
(``batch_size`` consecutive seeds of one split) and turns one unit into records for every model. The
engine (:func:`run_study`) owns the run directory:

* ``study.json`` -- the settings; ``--resume`` requires the same ones (device and threads may differ);
* ``parts/<unit>.parquet`` -- each unit's records, written atomically as soon as it is done (a killed run
  loses at most the units in progress; ``resume`` skips the finished ones);
* ``records.parquet`` -- every record, in unit order (one row per model, condition, scene and whatever
  else the study measures per scene);
* ``summary.json`` -- ``{"study", "records", "num_records", "summary", "tests", "settings"}``: rows with
  ``n``, ``value`` and ``ci95`` (Wilson for rates, bootstrap over scenes for means and ratios) and the
  paired tests (exact McNemar, Wilcoxon signed-rank) from :mod:`vla_lab.stats`.

Under ``torchrun`` the units are dealt round robin to the ranks (:mod:`vla_lab.parallel`), gathered on
rank 0 and written in unit order, so the records are exactly those of one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from vla_lab import files, parallel, registry
from vla_lab.config import PROMPTS, resolve_device
from vla_lab.errors import InputError
from vla_lab.libero.models import camera_resolution
from vla_lab.model import VLAAdapter
from vla_lab.registry import ModelSpec
from vla_lab.run_dir import RunDir
from vla_lab.worlds import Episode, Observation, World, create_world
from vla_lab.worlds import tabletop as world
from vla_lab.worlds.libero.suites import check_suite
from vla_lab.worlds.libero.world import LiberoWorld

STUDY_FILE, RECORDS_FILE, SUMMARY_FILE, PARTS_DIR = "study.json", "records.parquet", "summary.json", "parts"
MARKERS = (STUDY_FILE, RECORDS_FILE, SUMMARY_FILE, PARTS_DIR)
#: Settings that may change between a run and its resumption.
FREE_SETTINGS = ("device", "num_threads")
#: Columns every record starts with.
MODEL_COLUMNS = ("model", "trained_with", "model_seed", "recipe", "random_init")
#: The worlds a study runs in (``--world``).
STUDY_WORLDS = ("tabletop", "libero")
#: Settings of a LIBERO study only (with ``world``).
LIBERO_FIELDS = ("world", "suite", "tasks", "init_states", "selection_states")


@dataclass
class StudySettings:
    """What a study run measures (stored as ``study.json``).

    ``models``: ``--model`` values (empty: every shipped model); ``scenes`` test-split scenes from
    ``start``; ``validation_scenes`` validation-split scenes for studies that select (a layer); units of
    ``batch_size`` scenes; closed-loop episodes execute ``execute`` actions per chunk for at most
    ``max_steps`` steps; ``closed_loop`` False skips episodes where a study allows, ``closed_loop_scenes``
    limits them to the first N scenes of each split (open-loop measures still cover every scene);
    ``seed`` seeds its random draws (random-key controls, bootstrap). ``num_threads`` torch CPU threads
    per process (0: torch's default): matrix products can round differently with another thread count,
    so the records of N processes equal those of one at the same count (torchrun's default is 1).
    ``prompt`` overrides every model's prompt (None: each model's own). ``conditions`` runs only these of the
    study's conditions (:attr:`Study.conditions`; its baseline always, first; None: every one).

    ``world`` is ``tabletop`` (scenes as above) or ``libero``: the episodes of ``suite`` (default
    libero_spatial), ``tasks`` (default every task) and ``init_states`` (reported; default 40-49, held out from
    training), with ``selection_states`` (default 0-4, training init states) for studies that select.
    """

    study: str
    models: list[str] = field(default_factory=list)
    world: str = "tabletop"
    suite: str | None = None
    tasks: list[int] | None = None
    init_states: list[int] | None = None
    selection_states: list[int] | None = None
    scenes: int = 200
    split: str = "test"
    start: int = 0
    validation_scenes: int = 50
    batch_size: int = 20
    execute: int = 8
    max_steps: int | None = None
    closed_loop: bool = True
    closed_loop_scenes: int | None = None
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 1
    prompt: str | None = None
    conditions: list[str] | None = None

    def __post_init__(self) -> None:
        if self.study not in STUDIES:
            raise InputError(f"study: got {self.study!r}, expected one of {sorted(STUDIES)}")
        if self.conditions is not None:
            self.conditions = STUDIES[self.study].check_conditions(self.conditions)
        if self.prompt is not None and self.prompt not in PROMPTS:
            raise InputError(f"--prompt: got {self.prompt!r}, expected one of {PROMPTS}")
        for name in ("scenes", "batch_size", "execute"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')}: got {value!r}, expected a positive integer")
        for name in ("start", "validation_scenes", "seed", "num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"--{name.replace('_', '-')}: got {value!r}, expected a non-negative integer")
        for name in ("max_steps", "closed_loop_scenes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"--{name.replace('_', '-')}: got {value!r}, expected a positive integer")
        if self.split not in ("test", "validation"):
            raise InputError(f"--split: got {self.split!r}, expected 'test' or 'validation'")
        if self.world not in STUDY_WORLDS:
            raise InputError(f"--world: got {self.world!r}, expected one of {list(STUDY_WORLDS)}")
        study = STUDIES[self.study]
        if self.world not in study.worlds:
            raise InputError(f"--world: got {self.world!r} for {self.study}, expected one of {list(study.worlds)} "
                             "(the study is not written for that world yet)")
        if self.world == "tabletop":
            for name in ("suite", "tasks", "init_states", "selection_states"):
                if getattr(self, name) is not None:
                    raise InputError(f"--{name.replace('_', '-')}: got {getattr(self, name)!r}, expected it only "
                                     "with --world libero")
            world.split_seeds(self.split, self.scenes, self.start)
            return
        defaults = StudySettings.__dataclass_fields__
        for name in ("scenes", "start", "validation_scenes", "closed_loop_scenes", "split"):
            if getattr(self, name) != defaults[name].default:
                raise InputError(f"--{name.replace('_', '-')}: got {getattr(self, name)!r}, expected it only with "
                                 "--world tabletop (LIBERO episodes are --tasks x --init-states)")
        if not self.closed_loop:
            raise InputError("--no-closed-loop: got it with --world libero, expected it only with --world tabletop "
                             "(a LIBERO study runs every episode it lists)")
        self.suite = check_suite("libero_spatial" if self.suite is None else self.suite, "--suite")
        self.init_states = list(range(40, 50)) if self.init_states is None else [int(i) for i in self.init_states]
        self.selection_states = (list(range(5)) if self.selection_states is None
                                 else [int(i) for i in self.selection_states])
        for name in ("tasks", "init_states", "selection_states"):
            values = getattr(self, name)
            if values is not None and (not values or any(isinstance(v, bool) or int(v) < 0 for v in values)):
                raise InputError(f"--{name.replace('_', '-')}: got {values!r}, expected non-negative integers")

    @property
    def world_name(self) -> str:
        """The world's name in :func:`vla_lab.worlds.create_world` (``tabletop`` or the LIBERO suite)."""
        return "tabletop" if self.world == "tabletop" else str(self.suite)

    @property
    def report_split(self) -> str:
        """The ``split`` of the records a study reports on."""
        return self.split if self.world == "tabletop" else "report"

    @property
    def selection_split(self) -> str:
        """The ``split`` of the records a study selects on (before it looks at the reported ones)."""
        return "validation" if self.world == "tabletop" else "selection"

    def to_dict(self) -> dict[str, Any]:
        """The settings as ``study.json`` stores them; a tabletop study leaves out the LIBERO fields (all unset), so
        its file is the one earlier versions wrote and their runs still resume."""
        data = asdict(self)
        if self.world == "tabletop":
            for name in LIBERO_FIELDS:
                data.pop(name)
        if self.conditions is None:
            data.pop("conditions")  # every condition: the file earlier versions wrote
        return data


@dataclass(frozen=True)
class Unit:
    """Episodes of one ``split`` (their :attr:`Episode.key <vla_lab.worlds.Episode.key>`): the smallest piece of
    work, written as one part file."""

    index: int
    split: str
    keys: tuple[tuple[Any, ...], ...]

    @property
    def name(self) -> str:
        return f"{self.index:05d}-{self.split}"


class UnitEpisodes:
    """A unit's episodes in one world (built for one model's configuration): the episodes, their first
    observations (with region masks; made once, shared by the models that act in the same world)."""

    def __init__(self, env: World, episodes: list[Episode]) -> None:
        self.world, self.episodes = env, episodes
        self._first: list[Observation] | None = None
        #: What one model's records leave for the next models of the unit (e.g. rollouts to measure again).
        self.cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.episodes)

    def first_observations(self) -> list[Observation]:
        """Each episode's observation after :meth:`World.reset <vla_lab.worlds.World.reset>` (with regions)."""
        if self._first is None:
            self._first = [self.world.reset(e) for e in self.episodes]
        return self._first

    @property
    def scenes(self) -> list[world.Scene]:
        """The tabletop scenes of the episodes (a one-line error in another world)."""
        if not all(isinstance(e.spec, world.Scene) for e in self.episodes):
            raise InputError(f"world: got {self.world.name!r}, expected tabletop scenes for this study")
        return [e.spec for e in self.episodes]


@dataclass
class StudyResult:
    """A finished study: its records, summary rows and tests (and where they were written)."""

    study: str
    records: pd.DataFrame
    summary: pd.DataFrame
    tests: pd.DataFrame
    out: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: study, records (path), num_records, summary rows, tests."""
        return {
            "study": self.study,
            "records": None if self.out is None else str(self.out / RECORDS_FILE),
            "num_records": len(self.records),
            "summary": files.finite_json(_rows(self.summary)),
            "tests": files.finite_json(_rows(self.tests)),
        }


def _rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [{str(k): (list(v) if isinstance(v, tuple) else v) for k, v in row.items()} for row in rows]


class Study:
    """One kind of study. Subclasses set ``name`` and ``description`` and define :meth:`records` and
    :meth:`summarize`; :meth:`units` and :meth:`model_specs` have defaults."""

    name: str = ""
    description: str = ""
    #: Whether the study also measures selection episodes (validation scenes, training init states) for a
    #: selection made before it looks at the reported ones.
    uses_validation: bool = False
    #: The worlds the study is written for.
    worlds: tuple[str, ...] = ("tabletop",)
    #: The conditions ``--conditions`` may choose from (empty: the study has none to choose), the baseline first.
    conditions: tuple[str, ...] = ()

    def check_conditions(self, names: list[str]) -> list[str]:
        """``names`` as the study runs them: known, the baseline added, in :attr:`conditions` order."""
        if not self.conditions:
            raise InputError(f"--conditions: got {','.join(names)!r} for {self.name}, expected none (the study has "
                             "no conditions to choose)")
        unknown = [n for n in names if n not in self.conditions]
        if unknown or not names:
            raise InputError(f"--conditions: got {','.join(names)!r}, expected a comma-separated list of "
                             f"{', '.join(self.conditions)}")
        return [c for c in self.conditions if c in names or c == self.conditions[0]]

    def run_conditions(self, settings: StudySettings) -> tuple[str, ...]:
        """The conditions a run measures: ``settings.conditions`` or every one."""
        return tuple(settings.conditions) if settings.conditions is not None else self.conditions

    def model_specs(self, specs: list[ModelSpec]) -> list[ModelSpec]:
        """The models measured (default: those given)."""
        return specs

    def units(self, settings: StudySettings) -> list[Unit]:
        """Selection units (when the study selects on them) then reported units, ``batch_size`` episodes each."""
        splits = []
        if settings.world == "tabletop":
            if self.uses_validation and settings.validation_scenes:
                splits.append(("validation", [("validation", s) for s in
                                              world.split_seeds("validation", settings.validation_scenes)]))
            splits.append((settings.split, [(settings.split, s) for s in
                                            world.split_seeds(settings.split, settings.scenes, settings.start)]))
        else:
            env = create_world(settings.world_name)
            if self.uses_validation:
                splits.append(("selection", [e.key for e in env.episodes(tasks=settings.tasks,
                                                                         init_states=settings.selection_states)]))
            splits.append(("report", [e.key for e in env.episodes(tasks=settings.tasks,
                                                                 init_states=settings.init_states)]))
        for task in sorted({int(key[1]) for _, keys in splits for key in keys} if settings.world == "libero" else ()):
            self.check_task(str(settings.suite), task)
        units: list[Unit] = []
        for split, keys in splits:
            for lo in range(0, len(keys), settings.batch_size):
                units.append(Unit(len(units), split, tuple(keys[lo : lo + settings.batch_size])))
        return units

    def check_task(self, suite: str, task: int) -> None:
        """A one-line error when the study cannot run on a LIBERO task (called for every task before anything
        runs); by default every task is fine."""

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        """Per-episode records of one model on one unit's episodes: an ``episode`` column (the index into
        ``episodes``; the engine replaces it by the columns naming the episode), then the study's columns."""
        raise NotImplementedError

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(summary rows with n / value / ci95, paired tests) of all records."""
        raise NotImplementedError


STUDIES: dict[str, Study] = {}


def register_study(cls: type[Study]) -> type[Study]:
    """Class decorator: add an instance of ``cls`` to :data:`STUDIES` under ``cls.name``."""
    STUDIES[cls.name] = cls()
    return cls


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


class Worlds:
    """The worlds of a run, one per model configuration that changes what a world shows (the tabletop renders at
    the model's image size and plans its chunk; LIBERO's cameras draw as ``eval libero`` draws them for the model,
:func:`vla_lab.libero.models.camera_resolution`), and each
    unit's episodes in them (observations made once)."""

    def __init__(self, settings: StudySettings) -> None:
        self.settings = settings
        self._worlds: dict[Any, World] = {}

    def get(self, model: VLAAdapter, spec: ModelSpec) -> World:
        if self.settings.world == "tabletop":
            key: Any = (model.config.vision.image_size, model.config.robot.chunk)
            if key not in self._worlds:
                self._worlds[key] = world.TabletopWorld(world.WorldConfig(image_size=key[0], chunk=key[1]))
        else:
            key = (self.settings.world_name, camera_resolution(spec.path))
            if key not in self._worlds:
                options = {} if self.settings.max_steps is None else {"max_steps": self.settings.max_steps}
                self._worlds[key] = create_world(key[0], resolution=key[1], **options)
        return self._worlds[key]

    def episodes(self, env: World, unit: Unit) -> UnitEpisodes:
        if isinstance(env, world.TabletopWorld):
            return UnitEpisodes(env, [env.episode(*key) for key in unit.keys])
        return UnitEpisodes(env, [env.episode(*key[1:]) for key in unit.keys])  # type: ignore[attr-defined]

    def close(self) -> None:
        for env in self._worlds.values():
            env.close()
        self._worlds.clear()


def _unit_records(study: Study, loaded: list[tuple[ModelSpec, VLAAdapter]], unit: Unit,
                  settings: StudySettings, worlds: Worlds) -> pd.DataFrame:
    frames = []
    shared: dict[int, UnitEpisodes] = {}
    for spec, model in loaded:
        env = worlds.get(model, spec)
        if id(env) not in shared:
            shared[id(env)] = worlds.episodes(env, unit)
        episodes = shared[id(env)]
        with torch.inference_mode():
            part = study.records(model, spec, episodes, settings, unit)
        named = pd.DataFrame([{"split": unit.split, **episodes.episodes[int(i)].columns} for i in part["episode"]],
                             index=part.index)
        if "scene" in named.columns:
            named["scene"] = named["scene"].astype("int64")
        if isinstance(env, LiberoWorld):
            named["resolution"] = env.resolution
        part = pd.concat([named, part.drop(columns="episode")], axis=1)
        for i, column in enumerate(MODEL_COLUMNS):
            value = {"model": spec.name, "trained_with": spec.trained_with, "model_seed": spec.seed,
                     "recipe": spec.recipe, "random_init": spec.random_init}[column]
            part.insert(i, column, value)
        frames.append(part)
    records = pd.concat(frames, ignore_index=True)
    records["model_seed"] = records["model_seed"].astype("Int64")
    return records


STUDY_KIND = "study"


def study_run_dir(directory: str | Path) -> RunDir:
    """The run directory of ``study``: ``study.json`` holds the settings (only :data:`FREE_SETTINGS` may
    change on resume); the parts, records and summary are its results."""
    return RunDir(directory, STUDY_KIND, markers=MARKERS, records=(f"{PARTS_DIR}/*", RECORDS_FILE, SUMMARY_FILE),
                  settings_file=STUDY_FILE, free=FREE_SETTINGS)


def _load_part(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def _write_part(path: Path, records: pd.DataFrame) -> None:
    path.parent.mkdir(exist_ok=True)
    files.write_atomic(path, lambda temporary: records.to_parquet(temporary, index=False))


def run_study(
    settings: StudySettings,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    ranks: parallel.Ranks | None = None,
    on_unit: Callable[[Unit], None] | None = None,
) -> StudyResult:
    """Run ``settings.study``; with ``out`` write the run directory described in the module docstring.

    ``ranks``: this process's place under torchrun (default: from the environment, no process group
    needed for one process). ``on_unit`` is called after each unit this process finished.
    """
    study = STUDIES[settings.study]
    place = ranks or parallel.ranks_from_env()
    directory = Path(out) if out is not None else None
    specs = study.model_specs(registry.resolve(settings.models, world=settings.world_name))
    claimed: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if directory is not None:
        run = study_run_dir(directory)
        run.claim(settings.to_dict(), resume=resume, overwrite=overwrite, ranks=place)
        claimed = run.guard()  # a run that fails before its first part leaves nothing behind
    threads = torch.get_num_threads()
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    try:
        with claimed:
            return _run(study, settings, specs, directory, progress, place, on_unit)
    finally:
        torch.set_num_threads(threads)


def _run(study: Study, settings: StudySettings, specs: list[ModelSpec], directory: Path | None, progress: bool,
         place: parallel.Ranks, on_unit: Callable[[Unit], None] | None) -> StudyResult:
    stored = settings.to_dict()
    device = str(resolve_device(parallel.device_for(settings.device, place), "--device"))
    loaded = [(spec, registry.load(spec, device, settings.prompt)) for spec in specs]
    worlds = Worlds(settings)
    units = study.units(settings)
    by_index = {u.index: u for u in units}

    def part_path(unit: Unit) -> Path | None:
        return directory / PARTS_DIR / f"{unit.name}.parquet" if directory is not None else None

    def compute(index: int) -> pd.DataFrame:
        unit = by_index[index]
        records = _unit_records(study, loaded, unit, settings, worlds)
        path = part_path(unit)
        if path is not None:
            _write_part(path, records)
        if on_unit is not None:
            on_unit(unit)
        return records

    done = {u.index: _load_part(path) for u in units if (path := part_path(u)) is not None and path.exists()}
    # Every rank must shard the same units: none starts (and writes a part) before all have read what is done.
    parallel.barrier(place)
    try:
        gathered = parallel.run_shards(list(by_index), compute, place, done=done,
                                       progress=f"study {settings.study}" if progress else None)
    finally:
        worlds.close()
    records = pd.concat([gathered[u.index] for u in units], ignore_index=True)
    summary, tests = study.summarize(records, settings)
    result = StudyResult(settings.study, records, summary, tests, directory)
    if directory is not None and place.is_main:
        _write_part(directory / RECORDS_FILE, records)
        files.write_json(directory / SUMMARY_FILE, {**result.to_json(), "settings": stored})
    parallel.barrier(place)
    return result
