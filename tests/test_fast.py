"""The fast inference path equals the straightforward path (CPU; CUDA graphs need a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import make_inputs, randomize

from vla_lab import VLAAdapter, VLAConfig, interp
from vla_lab.errors import InputError
from vla_lab.interp import capture, run_with_cache
from vla_lab.model import FastVLA

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
    with capture(model) as cache:
        actions = fast(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["proprio"],
                       "bidirectional")
    out, ref = run_with_cache(model, **inputs, attention="bidirectional")
    assert (actions - out.normalized_actions).abs().max() <= 1e-5
    a, b = interp.segment_mass(cache), interp.segment_mass(ref)
    np.testing.assert_allclose(a["value"], b["value"], atol=1e-5)
    assert interp.mask_audit(cache).verdict == "bidirectional"
    assert sorted(cache) == sorted(ref)  # the same hooks, the same shapes
    for name in ref:
        torch.testing.assert_close(cache[name], ref[name], atol=1e-5, rtol=1e-4)
    assert fast.stats["eager_runs"] == 0  # a captured call is recorded, not counted as a fast run


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("offset", ["released", "aligned"])
def test_fast_follows_every_setting_change(model, kernel, offset):
    """Cached plans never outlive the settings they were built for (kernel, hidden offset, mask, dtype)."""
    fast = FastVLA(model)
    inputs = make_inputs(model.config, [7, 4], seed=3)
    args = (inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["proprio"])
    fast(*args)  # plan built under the defaults (sdpa, released, causal)
    model.set_attention_kernel(kernel)
    model.config.hidden_offset = offset
    try:
        for mode in MODES:
            model.set_attention(mode)
            with torch.no_grad():
                ref = model(**inputs).normalized_actions
            assert (fast(*args) - ref).abs().max() <= 1e-5, (kernel, offset, mode)
    finally:
        model.set_attention_kernel("sdpa")
        model.config.hidden_offset = "released"
        model.set_attention("causal")


def test_cuda_graphs_need_cuda(model):
    with pytest.raises(InputError, match="cuda_graphs"):
        FastVLA(model, cuda_graphs=True)
