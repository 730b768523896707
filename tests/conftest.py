"""Shared fixtures (tiny models built on the helpers in ``testkit``) and the tier markers every test gets.

Markers are applied at collection, so a new test is in the right tier without remembering to mark it:
``libero`` (a test module of the LIBERO package, or a test skipped without the simulator), ``torchrun`` (it or one of
its fixtures launches ``run_torchrun``), ``subprocess`` (it or a fixture starts another process, torchrun included).
``slow`` is set by hand; ``notebook`` by ``notebooks/conftest.py``. The fast tier is everything else::

    python -m pytest -n 2 --dist loadfile tests -m "not (slow or libero or torchrun or subprocess)"

Under pytest-xdist (the README's test command: ``-n 2 --dist loadfile``) each worker has one core: one torch thread
in the worker, in the notebooks' kernels and in every process a test starts; and whole files are handed out
costliest tier first (notebooks and LIBERO, then the tests that start processes or are slow, then the rest), so
the many small files fill the gaps at the end.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The suite starts ~80 Python processes (workers, notebook kernels, CLI subprocesses, torchrun ranks and launchers).
# Where bytecode writes are turned off (PYTHONDONTWRITEBYTECODE, as on a CI machine), each of them compiled torch's
# modules again: 1.5 min of a fresh clone's run. The suite's processes keep their bytecode in a cache inside the
# environment instead (nothing is written beside the sources, in the checkout or in site-packages).
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    os.environ["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix = str(Path(sys.prefix) / "pycache")
    sys.dont_write_bytecode = False

import pytest  # noqa: E402
import torch  # noqa: E402
from testkit import gray_png, randomize, tiny_checkpoint, tiny_libero_recipe, write_demos

from vla_lab import VLAAdapter, VLAConfig

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by notebook kernels, subprocesses and torchrun
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models gain
    nothing from intra-op threads, and on a shared machine they only add contention. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_config() -> VLAConfig:
    return VLAConfig.preset("tiny")


@pytest.fixture()
def tiny_model(tiny_config: VLAConfig) -> VLAAdapter:
    torch.manual_seed(0)
    return randomize(VLAAdapter(tiny_config), seed=1).eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tabletop checkpoint directory (``testkit.tiny_checkpoint``); read only: copy it to change it."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 px gray PNG file (``testkit.gray_png``)."""
    return gray_png(tmp_path_factory.mktemp("img") / "view.png")


# --- expensive things built once a session, for the tests that only observe, reset or read them -----------
# A test that changes what it is given (steps a simulator it then resets, writes into a run directory it must
# own) resets it first, or copies the directory into its tmp_path.


@pytest.fixture(scope="session")
def libero_spatial_world() -> Iterator[Any]:
    """LIBERO-Spatial as a ``vla_lab.worlds.World`` (cameras at 256 px, seed 0): one simulator for the session,
    rebuilt only when a test resets an episode of another task (~20 s a build on 2 cores). Every test resets
    the episode it looks at first."""
    from vla_lab.worlds.libero import LiberoWorld

    with LiberoWorld("libero_spatial") as world:
        yield world


@pytest.fixture(scope="session")
def libero_spatial_physics() -> Iterator[Any]:
    """Task 0 of LIBERO-Spatial without cameras (``LiberoEnv(..., render=False)``), for the session: the
    scripted expert and the demonstration replays, each from a reset to its init state."""
    from vla_lab.worlds.libero.env import LiberoEnv

    with LiberoEnv("libero_spatial", 0, render=False) as env:
        yield env


@pytest.fixture(scope="session")
def libero_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demonstrations in the layout of ``vla-lab libero demos``, written without the simulator
    (``testkit.write_demos``); read only (the data pipeline adds its frame cache beside them)."""
    pytest.importorskip("h5py")
    return write_demos(tmp_path_factory.mktemp("libero-demos") / "demos")


@pytest.fixture(scope="session")
def libero_two_step_run(libero_demos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final checkpoint of the LIBERO recipe trained 2 steps on :func:`libero_demos` (seed 5); read only."""
    from vla_lab.training.train import train

    out = tmp_path_factory.mktemp("libero-run") / "run"
    return train(tiny_libero_recipe(libero_demos, steps=2), VLAConfig.preset("libero-small"), out, progress=False)


def _source(function: object) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _source_of(item: pytest.Item) -> str:
    """The source of the test function, of the fixtures it uses and of the functions of its module they call."""
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for definitions in (info.name2fixturedefs.values() if info is not None else []):
        functions += [d.func for d in definitions]
    sources = [_source(f) for f in functions]
    module = getattr(item, "module", None)
    for name, function in (vars(module).items() if module is not None else []):
        if inspect.isfunction(function) and function.__module__ == module.__name__ and \
                any(f"{name}(" in s for s in sources):
            sources.append(_source(function))
    return "\n".join(sources)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # --dist loadfile keeps the order of _costliest_first


def _tier(item: pytest.Item) -> int:
    if item.path.suffix == ".ipynb" or item.get_closest_marker("libero"):
        return 0
    return 1 if any(item.get_closest_marker(m) for m in ("torchrun", "subprocess", "slow")) else 2


def _costliest_first(items: list[pytest.Item]) -> None:
    """Files in the order of their costliest tier (the order within a file and among equals unchanged)."""
    tier: dict[Path, int] = {}
    for item in items:
        tier[item.path] = min(tier.get(item.path, 2), _tier(item))
    items.sort(key=lambda item: tier[item.path])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix != ".py" or item.path.parent.name != "tests":
            continue
        reasons = " ".join(str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))
        if item.path.name.startswith("test_libero") or "LIBERO" in reasons:
            item.add_marker(pytest.mark.libero)
        source = _source_of(item)
        if "run_torchrun(" in source:
            item.add_marker(pytest.mark.torchrun)
        if "run_torchrun(" in source or "subprocess." in source:
            item.add_marker(pytest.mark.subprocess)
    if XDIST_WORKER:
        _costliest_first(items)
