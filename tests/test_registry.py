"""The model registry: one naming scheme for presets, the shipped models of both worlds, their random-init
baselines and checkpoint directories (``vla_lab.registry``)."""

from __future__ import annotations

import pytest
import torch

from vla_lab import random_model, registry
from vla_lab.config import PRESETS, VLAConfig
from vla_lab.errors import InputError
from vla_lab.libero import models as libero_models
from vla_lab.tabletop import shipped_path

pytestmark = pytest.mark.usefixtures("one_thread")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_list_models_names_every_model_once():
    names = registry.list_models()
    assert len(names) == len(set(names))
    shipped = registry.list_models("shipped")
    assert {"tabletop-causal", "tabletop-bidirectional-seed2", "tabletop-causal-v1-head"} < set(shipped)
    assert {"libero-spatial-causal", "libero-spatial-bidirectional"} < set(shipped)
    assert len(shipped) == sum(1 for w in registry.WORLDS_SHIPPED for p in registry.checkpoints_dir(w).iterdir()
                               if (p / "config.json").is_file())
    assert registry.list_models("preset") == sorted(PRESETS)
    assert registry.list_models("random-init") == [registry.RANDOM_PREFIX + n for n in shipped]
    assert names == [*sorted(PRESETS), *shipped, *registry.list_models("random-init")]
    with pytest.raises(InputError, match=r"^kind: got 'released', expected one of \['preset', 'shipped'"):
        registry.list_models("released")


def test_specs_say_which_world_a_model_acts_in():
    tabletop, libero = registry.resolve(["tabletop-causal", "libero-spatial-bidirectional"])
    assert (tabletop.world, tabletop.trained_with, tabletop.path) == ("tabletop", "causal", str(shipped_path()))
    assert (libero.world, libero.trained_with) == ("libero_spatial", "bidirectional")
    assert libero.path == str(libero_models.shipped_path("bidirectional"))
    assert {s.world for s in registry.resolve(None)} == {"tabletop"}  # a study's default: the tabletop's
    assert {s.name for s in registry.resolve(None, "libero_spatial")} == set(libero_models.SHIPPED)
    baseline = registry.resolve(["random-init:libero-spatial-causal"])[0]
    assert baseline.random_init and baseline.world == "libero_spatial" and baseline.seed is not None
    with pytest.raises(InputError, match="^world: got 'libero_goal', expected one with shipped models"):
        registry.resolve(None, "libero_goal")


def test_create_builds_each_kind_of_name(tmp_path):
    preset = registry.create("tiny", seed=3)
    assert not preset.training and preset.dtype == torch.float32
    assert same_weights(preset, random_model(VLAConfig.preset("tiny"), seed=3))
    assert registry.create("tiny", attention="bidirectional").config.attention == "bidirectional"
    shipped = registry.create("tabletop-causal")
    assert not shipped.training and shipped.dtype == torch.float32  # the dtype it was saved in
    by_path = registry.create(str(shipped_path()))
    assert same_weights(shipped, by_path)
    spec = registry.resolve(["tabletop-causal"])[0]
    baseline = registry.create("random-init:tabletop-causal")
    assert same_weights(baseline, registry.load(registry.random_init_of(spec)))
    assert not same_weights(baseline, shipped)
    libero = registry.create("libero-spatial-causal")
    assert libero.config.prompt == "openvla" and "libero_spatial" in libero.config.norm_stats
    with pytest.raises(InputError, match="^prompt: got 'qwen-chat', expected one of \\('openvla',\\)"):
        registry.create("libero-spatial-causal", prompt="qwen-chat")  # its word tokenizer has no chat tokens
    with pytest.raises(InputError, match="^--model: got 'tabletop-causl', expected a shipped model name or a "):
        registry.create("tabletop-causl")
