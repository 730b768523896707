"""Analyses: tidy DataFrames, the mask audit, mode comparison, rollout, patch maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import make_inputs

from vla_lab import interp
from vla_lab.interp import run_with_cache

COLUMNS = ["sample", "layer", "head", "query_segment", "key_segment", "value"]


@pytest.fixture()
def inputs(tiny_config):
    return make_inputs(tiny_config, [7, 4], seed=11)


@pytest.mark.parametrize(
    "mode,verdict",
    [
        ("causal", "causal"),
        ("bidirectional", "bidirectional"),
        ("prefix-lm", "prefix-lm"),
        ({"base": "bidirectional", "block": [["vision", "action_queries"]]}, "custom"),
        ({"base": "causal", "block": [["action_queries", "vision.1"]]}, "custom"),
    ],
)
def test_mask_audit_infers_the_mask(tiny_model, inputs, mode, verdict):
    _, cache = run_with_cache(tiny_model, **inputs, attention=mode)
    audit = interp.mask_audit(cache)
    assert audit.verdict == verdict, str(audit)
    assert {"future_mass_max", "min_pair_mass", "zero_pairs"} <= set(audit.evidence)
    if verdict == "causal":
        assert audit.evidence["future_mass_max"] == 0.0
    if verdict == "bidirectional":
        assert audit.evidence["future_mass_min"] > 0 and audit.evidence["zero_pairs"] == []
    if isinstance(mode, dict) and mode["base"] == "bidirectional":
        assert audit.evidence["zero_pairs"] == ["vision.0->action_queries", "vision.1->action_queries"]


def test_vision_and_text_never_see_queries_under_causal(tiny_model, inputs):
    _, causal = run_with_cache(tiny_model, **inputs, attention="causal")
    _, bidir = run_with_cache(tiny_model, **inputs, attention="bidirectional")
    c, b = interp.segment_mass_summary(causal), interp.segment_mass_summary(bidir)
    for pair in ("vision->action_queries", "text->action_queries", "tok0->action_queries"):
        assert c[pair] == 0.0
        assert b[pair] > 0
    df = interp.segment_mass(causal)
    assert (df[(df.query_segment == "vision") & (df.key_segment == "action_queries")]["value"] == 0).all()


def test_segment_mass_is_tidy_and_rows_sum_to_one(tiny_model, inputs):
    _, cache = run_with_cache(tiny_model, **inputs, attention="bidirectional")
    df = interp.segment_mass(cache)
    assert list(df.columns) == COLUMNS
    layers, heads = tiny_model.config.num_llm_layers, tiny_model.config.llm["num_attention_heads"]
    assert len(df) == 2 * layers * heads * 5 * 5
    sums = df.groupby(["sample", "layer", "head", "query_segment"])["value"].sum()
    assert np.allclose(sums, 1.0, atol=1e-5)
    fine = interp.segment_mass(cache, fine=True)
    assert {"vision.0", "vision.1"} <= set(fine.query_segment)
    # the coarse vision row is the token-weighted mean of the per-image rows
    sel = fine[(fine["sample"] == 0) & (fine.layer == 0) & (fine["head"] == 0) & (fine.key_segment == "text")]
    per_image = sel[sel.query_segment.isin(["vision.0", "vision.1"])]["value"].mean()
    coarse = df[(df["sample"] == 0) & (df.layer == 0) & (df["head"] == 0) & (df.query_segment == "vision")
                & (df.key_segment == "text")]["value"].item()
    assert coarse == pytest.approx(per_image)


def test_query_patch_maps_follow_the_patch_grid(tiny_model, inputs):
    _, cache = run_with_cache(tiny_model, **inputs, mode="full")
    df = interp.query_patch_attention(cache, layers=[1])
    assert set(df.columns) == {"sample", "layer", "head", "image", "row", "col", "value"}
    grid = interp.patch_grid(df, sample=0, layer=1, image=1)
    assert grid.shape == (4, 4)
    probs = cache["llm.blocks.1.attn.hook_pattern"][0].mean(0)
    layout = cache.layouts[0]
    direct = probs[layout.action_queries.slice, layout.vision[1].slice].mean(0).reshape(4, 4).numpy()
    np.testing.assert_allclose(grid, direct, atol=1e-6)


def test_entropy(tiny_model, inputs):
    _, cache = run_with_cache(tiny_model, **inputs, mode="full")
    df = interp.attention_entropy(cache)
    probs = cache["llm.blocks.0.attn.hook_pattern"][1, 0]
    tok0 = -(probs[0] * probs[0].clamp(min=1e-30).log()).sum().item()
    row = df[(df["sample"] == 1) & (df.layer == 0) & (df["head"] == 0) & (df.query_segment == "tok0")]
    assert row["value"].item() == pytest.approx(tok0, abs=1e-5)
    assert tok0 == pytest.approx(0.0, abs=1e-6)  # the first token can only see itself under causal


def test_rollout(tiny_model, inputs):
    _, cache = run_with_cache(tiny_model, **inputs, mode="segments", keep_head_mean=True, attention="causal")
    maps = interp.rollout_maps(cache)
    assert maps.shape[0] == tiny_model.config.num_llm_layers
    # rows of a rollout are distributions, and under causal they stay lower-triangular
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones_like(maps[-1].sum(-1)))
    seq = maps.shape[-1]
    assert torch.count_nonzero(torch.triu(maps[-1], diagonal=1)[:, : cache.layouts[1].num_tokens]) == 0
    # one layer by hand
    a = cache["llm.blocks.0.attn.hook_head_mean"].double()
    eye = torch.eye(seq, dtype=torch.float64)
    first = (0.5 * eye + 0.5 * a) / (0.5 * eye + 0.5 * a).sum(-1, keepdim=True)
    torch.testing.assert_close(maps[0], first)
    df = interp.attention_rollout(cache)
    assert set(df.columns) == {"sample", "layer", "query_segment", "key_segment", "value"}
    with pytest.raises(Exception, match="keep_head_mean"):
        interp.attention_rollout(run_with_cache(tiny_model, **inputs)[1])


def test_compare_masks(tiny_model, inputs):
    cmp = interp.compare_masks(tiny_model, inputs)
    assert cmp.masks == ("causal", "bidirectional")
    att = cmp.attention
    vision_to_q = att[(att.query_segment == "vision") & (att.key_segment == "action_queries")]
    assert (vision_to_q["causal"] == 0).all() and (vision_to_q["difference"] > 0).all()
    cos = cmp.hidden_cosine
    assert set(cos.columns) == {"sample", "hidden_index", "segment", "cosine"}
    assert set(cos.hidden_index) == set(range(tiny_model.config.num_llm_layers + 1))
    first = cos[cos.hidden_index == 0]
    assert np.allclose(first["cosine"], 1.0)  # embeddings do not depend on the mask
    # under causal vs bidirectional, the vision states differ after the first layer
    later = cos[(cos.hidden_index == 1) & (cos.segment == "vision")]
    assert (later["cosine"] < 1).all()
    assert cmp.action_l1 > 0
    assert set(cmp.actions.columns) >= {"sample", "step", "dim", "abs_difference"}


def test_head_task_patch_attention_maps_released_offset(tiny_model, inputs):
    _, cache = run_with_cache(tiny_model, **inputs)
    df = interp.head_task_patch_attention(cache)
    weights = cache["head.blocks.0.hook_pattern"][0, 3].double().mean(0)  # (keys,), sample 0, head 3
    task = weights[-32:]
    sel = df[(df["sample"] == 0) & (df.block == 0) & (df["head"] == 3) & (df.image == 0)]
    grid = sel.sort_values(["row", "col"])["value"].to_numpy().reshape(4, 4)
    # task key 0 is tok0 (dropped); key j is patch j-1
    np.testing.assert_allclose(grid.ravel()[:16], task[1:17].numpy(), atol=1e-9)
    # the last patch of the last image is never read under the released offset: NaN, not zero
    last = df[(df.image == df.image.max()) & (df.row == df.row.max()) & (df.col == df.col.max())]["value"]
    assert last.isna().all()
    assert df.drop(last.index)["value"].notna().all()


def test_segment_mass_per_key_token_divides_by_the_key_segment_length(tiny_model, inputs):
    _, cache = run_with_cache(tiny_model, **inputs, attention="bidirectional")
    keys = ["sample", "layer", "head", "query_segment", "key_segment"]
    mass = interp.segment_mass(cache).set_index(keys)["value"]
    per_token = interp.segment_mass(cache, per_key_token=True).set_index(keys)["value"]
    sizes = {(s, name): len(layout.span(name)) for s, layout in enumerate(cache.layouts)
             for name in ("tok0", "vision", "text", "action_queries", "stop")}
    expected = mass / [sizes[(s, k)] for s, *_, k in mass.index]
    np.testing.assert_allclose(per_token.to_numpy(), expected.to_numpy())
    assert per_token.xs("tok0", level="key_segment").equals(mass.xs("tok0", level="key_segment"))
    assert len({len(layout.text) for layout in cache.layouts}) == 2  # samples differ in prompt length


def test_compare_masks_counts_identical_zero_states_as_unchanged(tiny_model, inputs):
    """A token whose states are identical zero vectors under both masks (e.g. an untrained action query's
    embedding) has not drifted: cosine 1, not torch's 0 for zero vectors."""
    with torch.no_grad():
        saved = tiny_model.action_queries.weight[-1].clone()
        tiny_model.action_queries.weight[-1].zero_()
        try:
            cos = interp.compare_masks(tiny_model, inputs).hidden_cosine
        finally:
            tiny_model.action_queries.weight[-1].copy_(saved)
    first = cos[cos.hidden_index == 0]
    assert np.allclose(first["cosine"], 1.0)
