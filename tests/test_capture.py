"""Capture: hook names, recomputed attention, reduced mode, memory budget, patches, interventions."""

from __future__ import annotations

import pytest
import torch
from testkit import make_inputs

from vla_lab import interp
from vla_lab.config import FINE_SEGMENTS
from vla_lab.errors import InputError
from vla_lab.interp import capture, run_with_cache
from vla_lab.interp.capture import summarize_attention
from vla_lab.interp.hooks import llm_hook
from vla_lab.model.sequence import segment_id_matrix

MODES = ["causal", "bidirectional", "prefix-lm", {"base": "bidirectional", "block": [["vision", "action_queries"]]}]


def eager_maps(model, inputs, attention):
    model.set_attention_kernel("eager")
    maps = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda _m, _i, out: maps.append(out[1].detach()))
        for layer in model.language_model.model.layers
    ]
    try:
        with torch.no_grad():
            model(**inputs, attention=attention)
    finally:
        for h in hooks:
            h.remove()
        model.set_attention_kernel("sdpa")
    return maps


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m if isinstance(m, str) else "custom")
def test_recomputed_attention_equals_eager(tiny_model, mode):
    inputs = make_inputs(tiny_model.config, [8, 5], seed=2)
    _, cache = run_with_cache(tiny_model, **inputs, mode="full", attention=mode)
    for layer, probs in enumerate(eager_maps(tiny_model, inputs, mode)):
        full = cache[f"llm.blocks.{layer}.attn.hook_pattern"]
        for b, layout in enumerate(cache.layouts):
            n = layout.num_tokens
            assert (full[b, :, :n, :n] - probs[b, :, :n, :n]).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m if isinstance(m, str) else "custom")
def test_rows_sum_to_one_over_visible_keys(tiny_model, mode):
    inputs = make_inputs(tiny_model.config, [8, 5], seed=3)
    out, cache = run_with_cache(tiny_model, **inputs, mode="full", attention=mode)
    allowed = out.allowed
    for layer in range(cache.num_layers):
        probs = cache[f"llm.blocks.{layer}.attn.hook_pattern"]
        visible = (probs * allowed[:, None]).sum(-1)
        torch.testing.assert_close(visible, torch.ones_like(visible))
        assert torch.count_nonzero(probs * ~allowed[:, None]) == 0


def test_capture_does_not_change_outputs_or_kernel(tiny_model):
    inputs = make_inputs(tiny_model.config, [6])
    with torch.no_grad():
        plain = tiny_model(**inputs)
    out, cache = run_with_cache(tiny_model, **inputs, mode="full", vision_attention=True)
    torch.testing.assert_close(out.normalized_actions, plain.normalized_actions, atol=0, rtol=0)
    for a, b in zip(out.hidden_states, plain.hidden_states):
        assert torch.equal(a, b)
    assert tiny_model.language_model.config._attn_implementation == "sdpa"
    assert tiny_model._recorder is None and tiny_model.action_head.recorder is None
    for a, b in zip(cache.hidden_states(), plain.hidden_states):
        assert torch.equal(a, b)


def test_hook_names_follow_the_grammar(tiny_model):
    inputs = make_inputs(tiny_model.config, [5])
    _, cache = run_with_cache(tiny_model, **inputs, mode="full", vision_attention=True, store_qk=True)
    layers, blocks = tiny_model.config.num_llm_layers, tiny_model.action_head.num_blocks
    expected = {"llm.hook_embed", "llm.hook_norm_final", "head.hook_task_states", "head.hook_query_states",
                "head.hook_actions"}
    for layer in range(layers):
        expected.add(f"llm.blocks.{layer}.hook_resid_post")
        for hook in ("pattern", "segment_pattern", "query_profile", "entropy", "future_mass", "q", "k"):
            expected.add(f"llm.blocks.{layer}.attn.hook_{hook}")
    for block in range(blocks):
        expected |= {f"head.blocks.{block}.hook_pattern", f"head.blocks.{block}.hook_gate"}
    vit_depth = len(tiny_model.vision_backbone.featurizer.blocks)
    for vit in ("featurizer", "fused_featurizer"):
        for layer in range(vit_depth - 1):  # the last block never runs (features of the second-to-last)
            expected.add(f"vision.{vit}.blocks.{layer}.attn.hook_pattern")
    assert set(cache) == expected
    assert cache.names("llm.blocks.*.attn.hook_pattern") == [f"llm.blocks.{i}.attn.hook_pattern" for i in range(layers)]
    assert cache.stack("llm.blocks.*.hook_resid_post").shape[0] == layers
    with pytest.raises(KeyError, match="not captured"):
        cache["llm.blocks.99.attn.hook_pattern"]


def test_vision_attention_rows_sum_to_one(tiny_model):
    inputs = make_inputs(tiny_model.config, [5])
    _, cache = run_with_cache(tiny_model, **inputs, mode="none", vision_attention=True)
    probs = cache["vision.featurizer.blocks.0.attn.hook_pattern"]
    n_images = tiny_model.config.num_images
    assert probs.shape[0] == n_images and probs.shape[-1] == 16 + 5  # patches + cls + 4 registers
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    siglip = cache["vision.fused_featurizer.blocks.0.attn.hook_pattern"]
    assert siglip.shape[-1] == 16  # SigLIP has no prefix tokens


def test_head_capture(tiny_model):
    inputs = make_inputs(tiny_model.config, [5])
    _, cache = run_with_cache(tiny_model, **inputs)
    pattern = cache["head.blocks.0.hook_pattern"]
    chunk, np_ = tiny_model.config.robot.chunk, tiny_model.vision_backbone.num_patches
    assert pattern.shape == (1, tiny_model.config.head_num_heads, chunk, chunk + 64 + 1 + np_)
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    gate = torch.tanh(tiny_model.action_head.model.mlp_resnet_blocks[1].gating_factor).item()
    assert cache["head.blocks.1.hook_gate"].item() == pytest.approx(gate)
    shares = interp.head_attention(cache).groupby(["sample", "block", "head"])["value"].sum()
    assert (shares - 1).abs().max() < 1e-5


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m if isinstance(m, str) else "custom")
def test_reduced_mode_equals_reducing_full_maps(tiny_model, mode):
    inputs = make_inputs(tiny_model.config, [9, 4], seed=5)
    _, full = run_with_cache(tiny_model, **inputs, mode="full", attention=mode)
    _, reduced = run_with_cache(tiny_model, **inputs, mode="segments", attention=mode)
    assert not reduced.names("llm.blocks.*.attn.hook_pattern")
    onehot = torch.nn.functional.one_hot(segment_id_matrix(full.layouts), len(FINE_SEGMENTS)).float()
    for layer in range(full.num_layers):
        from_full = summarize_attention(full[llm_hook("pattern", layer)], onehot)
        for name, tensor in from_full.items():
            torch.testing.assert_close(reduced[llm_hook(name, layer)], tensor, atol=1e-6, rtol=1e-5)
    # and the segment mass computed straight from the full maps, token by token
    probs = full["llm.blocks.1.attn.hook_pattern"][0, 2]
    layout = full.layouts[0]
    q, k = layout.action_queries, layout.vision_span
    direct = probs[q.slice, k.slice].sum(-1).mean().item()
    df = interp.segment_mass(reduced)
    row = df[(df["sample"] == 0) & (df.layer == 1) & (df["head"] == 2) & (df.query_segment == "action_queries")
             & (df.key_segment == "vision")]
    assert row["value"].item() == pytest.approx(direct, abs=1e-6)


def test_full_capture_over_budget_is_refused(tiny_model):
    inputs = make_inputs(tiny_model.config, [6, 6])
    with pytest.raises(InputError) as info:
        run_with_cache(tiny_model, **inputs, mode="full", memory_budget=1000)
    message = str(info.value)
    assert "bytes" in message and "memory_budget" in message and "\n" not in message
    seq = 1 + 32 + 5 + 64 + 1
    assert f"{2 * 2 * 4 * seq * seq * 4:,}" in message  # layers x batch x heads x S^2 x 4 bytes
    assert tiny_model._recorder is None
    _, cache = run_with_cache(tiny_model, **inputs, mode="segments", memory_budget=1000)  # reduced mode fits
    assert cache.names("llm.blocks.*.attn.hook_segment_pattern")


def test_one_forward_per_capture(tiny_model):
    inputs = make_inputs(tiny_model.config, [4])
    with capture(tiny_model) as cache, torch.no_grad():
        tiny_model(**inputs)
        with pytest.raises(InputError, match="one forward pass"):
            tiny_model(**inputs)
    assert cache.layouts
    with pytest.raises(InputError, match="mode"), capture(tiny_model, mode="everything"):
        pass


def test_capture_through_predict_action(tiny_model):
    import numpy as np

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(2)]
    with capture(tiny_model, mode="segments") as cache:
        pred = tiny_model.predict_action(images, "pick up the red cup", np.zeros(8), proprio_is_normalized=True)
    assert cache.layouts[0] == pred.layout
    assert cache.attention == "causal"


def test_patching_from_another_run(tiny_model):
    a = make_inputs(tiny_model.config, [6], seed=1)
    b = dict(a, pixel_values=make_inputs(tiny_model.config, [6], seed=2)["pixel_values"])
    _, cache_a = run_with_cache(tiny_model, **a, mode="none")
    _, cache_b = run_with_cache(tiny_model, **b, mode="none")
    # Patching every position of layer 0's output from run b makes run a's later layers equal b's.
    patch = interp.patch_segments_from(cache_b, "llm.blocks.0.hook_resid_post",
                                         ["tok0", "vision", "text", "action_queries", "stop"])
    result = interp.intervene(tiny_model, a, patches={"llm.blocks.0.hook_resid_post": patch})
    with torch.no_grad():
        target = tiny_model(**b).normalized_actions.numpy()
    assert abs(result.intervened - target).max() < 1e-5
    assert result.l1 > 0
    with pytest.raises(InputError, match="patches"):
        interp.intervene(tiny_model, a, patches={"llm.blocks.0.mlp": patch})


def test_interventions_block_changes_actions_and_noop_does_not(tiny_model):
    inputs = make_inputs(tiny_model.config, [6])
    noop = interp.intervene(tiny_model, inputs, attention="causal")
    assert noop.l1 == 0.0 and noop.max_abs == 0.0
    # blocking a pair the causal mask already blocks is also a no-op
    again = interp.intervene(tiny_model, inputs, attention={"base": "causal", "block": [["vision", "text"]]})
    assert again.l1 == 0.0
    cut = interp.intervene(tiny_model, inputs, attention={"base": "causal", "block": [["action_queries", "vision"]]})
    assert cut.l1 > 0
    table = interp.block_paths(tiny_model, inputs)
    assert set(table.columns) == {"query_segment", "key_segment", "l1", "max_abs"}
    zero = table[(table.query_segment == "vision") & (table.key_segment == "action_queries")]
    assert zero["l1"].item() == 0.0
