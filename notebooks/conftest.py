"""The notebooks under nbval: every cell is marked ``notebook`` (a tier, see ``tests/conftest.py``); a notebook that
needs the LIBERO simulator is also marked ``libero`` and skipped, with the reason, where the ``libero`` extra is not
installed (as the LIBERO tests are)."""

from __future__ import annotations

import importlib.util

import pytest

NEEDS_LIBERO = ("05_libero.ipynb",)
HAVE_LIBERO = importlib.util.find_spec("libero") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="LIBERO is not installed (pip install -e '.[libero]')")
    for item in items:
        if item.path.suffix != ".ipynb":
            continue
        item.add_marker(pytest.mark.notebook)
        if item.path.name in NEEDS_LIBERO:
            item.add_marker(pytest.mark.libero)
            if not HAVE_LIBERO:
                item.add_marker(skip)
