"""Shared fixtures (tiny models built on the helpers in ``testkit``) and the tier markers every test gets.

Markers are applied at collection, so a new test is in the right tier without remembering to mark it:
``libero`` (a test module of the LIBERO package, or a test skipped without the simulator), ``torchrun`` (it or one of
its fixtures launches ``run_torchrun``), ``subprocess`` (it or a fixture starts another process, torchrun included).
``slow`` is set by hand; ``notebook`` by ``notebooks/conftest.py``. The fast tier is everything else::

    python -m pytest tests -m "not (slow or libero or torchrun or subprocess)"
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch
from testkit import randomize

from vla_lab import VLAAdapter, VLAConfig


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
