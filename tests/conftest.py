"""Shared fixtures: tiny models built on the helpers in ``testkit``."""

from __future__ import annotations

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
