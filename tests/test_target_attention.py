"""Target-attention ratio (vla_lab.tabletop.target_attention) on tiny models with known patches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from testkit import tiny_tabletop_config

from vla_lab import interp, tabletop
from vla_lab.interp import capture
from vla_lab.tabletop import target_attention as ta
from vla_lab.worlds import tabletop as world


@pytest.fixture(scope="module")
def model():
    return tabletop.initial_model(tiny_tabletop_config(), seed=0).eval()


def test_ratio_is_a_ratio_of_means() -> None:
    df = pd.DataFrame(
        [
            (1, "attribute", 0, "target", 0.2), (2, "attribute", 0, "target", 0.4),
            (1, "attribute", 0, "distractors", 0.1), (2, "attribute", 0, "distractors", 0.1),
            (1, "attribute", 1, "target", 0.1), (1, "attribute", 1, "distractors", 0.2),
        ],
        columns=["scene", "kind", "layer", "region", "value"],
    )
    ratios = ta.ratio_by_depth(df)
    assert ratios.loc[0] == pytest.approx(3.0) and ratios.loc[1] == pytest.approx(0.5)


def test_llm_values_are_the_action_queries_attention_on_the_objects(model) -> None:
    df = ta.target_attention(model, "test", 3, source="llm")
    assert set(df.region) == {"target", "distractors"} and set(df.layer) == set(range(model.config.num_llm_layers))
    forward, scenes, _ = tabletop.scene_inputs(model, "test", 3)
    with capture(model, "segments", hidden_states=False) as cache, torch.no_grad():
        model(**forward)
    patches = interp.query_patch_attention(cache, "action_queries", layers=[1])
    grid = tuple(model.vision_backbone.patch_grid)
    for b, scene in enumerate(scenes):
        masks = [world.object_patch_masks(scene, grid, view=v) for v in ("full", "wrist")]
        maps = [interp.patch_grid(patches, sample=b, layer=1, image=i) for i in range(2)]
        expected = np.concatenate([maps[i][masks[i]["target"]] for i in range(2)]).mean()
        got = df[(df.scene == scene.seed) & (df.layer == 1) & (df.region == "target")]["value"].item()
        assert got == pytest.approx(expected, rel=1e-9)


def test_head_source_and_depth_rule(model) -> None:
    head = ta.target_attention(model, "test", 2, source="head")
    assert "layer" not in head.columns
    assert set(head.block) == set(range(model.action_head.num_blocks)) and (head.value >= 0).all()
    result = ta.target_attention_ratio(model, "test", 4, selection_episodes=4)
    selection = result["selection_ratio_by_depth"]
    assert result["depth_kind"] == "layer" and result["depth"] == max(selection, key=selection.get)
    assert result["value"] == pytest.approx(result["ratio_by_depth"][result["depth"]])
    assert result["n"] == 4 and result["interval"].startswith("bootstrap")
    low, high = result["ci95"]
    assert low <= result["value"] <= high
    fixed = ta.target_attention_ratio(model, "test", 4, at=0)
    assert fixed["depth"] == 0 and fixed["selection_ratio_by_depth"] is None and fixed["rule"] == "given"
    blocks = ta.target_attention_ratio(model, "test", 4, source="head", selection_episodes=4)
    assert blocks["depth_kind"] == "block" and "layer" not in blocks  # a head block is never called a layer
    assert blocks["depth"] == max(blocks["selection_ratio_by_depth"], key=blocks["selection_ratio_by_depth"].get)
    with pytest.raises(Exception, match="source"):
        ta.target_attention(model, source="vision")
