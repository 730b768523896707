"""Shared fixtures: tiny models built on the helpers in ``testkit``."""

from __future__ import annotations

import pytest
import torch
from testkit import randomize

from vla_lab import VLAAdapter, VLAConfig


@pytest.fixture(scope="session")
def tiny_config() -> VLAConfig:
    return VLAConfig.preset("tiny")


@pytest.fixture()
def tiny_model(tiny_config: VLAConfig) -> VLAAdapter:
    torch.manual_seed(0)
    return randomize(VLAAdapter(tiny_config), seed=1).eval()
