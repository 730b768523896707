"""The fast inference path equals the straightforward path (CPU; CUDA graphs need a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_inputs, randomize

from vla_lab import VLAAdapter, VLAConfig, analysis
from vla_lab.capture import run_with_cache
from vla_lab.errors import InputError
from vla_lab.fast import FastVLA

MODES = ["causal", "bidirectional", {"base": "bidirectional", "block": [["vision", "action_queries"]]}]


@pytest.fixture(params=["pro", "v1"])
def model(request):
    torch.manual_seed(0)
    return randomize(VLAAdapter(VLAConfig.preset("tiny", head_version=request.param)), seed=2).eval()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m if isinstance(m, str) else "custom")
def test_fast_equals_straightforward(model, mode):
    fast = FastVLA(model)
    inputs = make_inputs(model.config, [9, 4, 6], seed=1)
    with torch.no_grad():
        ref = model(**inputs, attention=mode).normalized_actions
    out = fast(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["proprio"], mode)
    assert (out - ref).abs().max() <= 1e-5


def test_layout_change_builds_a_new_plan_and_stays_equal(model):
    fast = FastVLA(model, max_plans=1)
    for lengths in ([7], [7], [3, 5], [7]):
        inputs = make_inputs(model.config, lengths, seed=len(lengths))
        with torch.no_grad():
            ref = model(**inputs).normalized_actions
        out = fast(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["proprio"])
        assert (out - ref).abs().max() <= 1e-5
    # [7] planned, reused, evicted by [3, 5], planned again
    assert fast.stats["plans_built"] == 3 and len(fast.plans) == 1
    assert fast.stats["eager_runs"] == 4 and fast.stats["graph_captures"] == 0


def test_refresh_after_weight_change(model):
    fast = FastVLA(model)
    inputs = make_inputs(model.config, [5])
    before = fast(inputs["pixel_values"], inputs["input_ids"], None, inputs["proprio"])
    with torch.no_grad():
        for block in model.action_head.model.mlp_resnet_blocks:
            block.gating_factor.fill_(0.7)
        ref = model(**inputs).normalized_actions
    fast.refresh()
    after = fast(inputs["pixel_values"], inputs["input_ids"], None, inputs["proprio"])
    assert (after - ref).abs().max() <= 1e-5 and not torch.allclose(before, after)


def test_fast_predict_action_matches(model):
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(2)] for _ in range(2)]
    instructions = ["pick up the red cup", "open the top drawer of the cabinet please"]
    proprio = np.zeros((2, 8))
    fast = FastVLA(model)
    a = fast.predict_action(images, instructions, proprio, proprio_is_normalized=True)
    b = model.predict_action(images, instructions, proprio, proprio_is_normalized=True)
    np.testing.assert_allclose(a.normalized_actions, b.normalized_actions, atol=1e-5)
    assert a.layouts == b.layouts and a.input_ids == b.input_ids


def test_capture_on_the_fast_path_equals_capture_on_the_plain_path(model):
    fast = FastVLA(model)
    inputs = make_inputs(model.config, [8, 5], seed=4)
    actions, cache = fast.capture_forward(**inputs, attention="bidirectional")
    out, ref = run_with_cache(model, **inputs, attention="bidirectional")
    assert (actions - out.normalized_actions).abs().max() <= 1e-5
    a, b = analysis.segment_mass(cache), analysis.segment_mass(ref)
    np.testing.assert_allclose(a["value"], b["value"], atol=1e-5)
    assert analysis.mask_audit(cache).verdict == "bidirectional"
    for block in range(cache.num_head_blocks):
        torch.testing.assert_close(cache[f"head.blocks.{block}.hook_pattern"], ref[f"head.blocks.{block}.hook_pattern"])


def test_cuda_graphs_need_cuda(model):
    with pytest.raises(InputError, match="cuda_graphs"):
        FastVLA(model, cuda_graphs=True)
