"""Region attention (vla_lab.interp.regions) and the hook-name builders (vla_lab.interp.hooks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from testkit import make_inputs

from vla_lab import interp
from vla_lab.errors import InputError
from vla_lab.interp import head_hook, llm_hook, vision_hook

GRID = (2, 2)
#: Per image: the target on patch (0, 0), the distractors on (1, 1) (image 1: none).
MASKS = {
    0: {"target": np.array([[1, 0], [0, 0]], bool), "distractors": np.array([[0, 0], [0, 1]], bool)},
    1: {"target": np.array([[0, 1], [0, 0]], bool), "distractors": np.zeros(GRID, bool)},
}


def _frame(values: dict[tuple[int, int], np.ndarray]) -> pd.DataFrame:
    """patch_df rows: (sample, layer) -> (images, 2, 2) values, two heads that average to them."""
    rows = []
    for (sample, layer), grids in values.items():
        for image, grid in enumerate(grids):
            for (r, c), v in np.ndenumerate(grid):
                rows += [(sample, layer, 0, image, r, c, v - 0.1), (sample, layer, 1, image, r, c, v + 0.1)]
    return pd.DataFrame(rows, columns=["sample", "layer", "head", "image", "row", "col", "value"])


def _masks(sample: int, image: int, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    assert grid == GRID
    return MASKS[image]


def test_region_attention_and_its_reducers():
    values = {
        (0, 0): np.array([[[4.0, 1], [1, 2]], [[1, 6], [1, 1]]]),
        (1, 0): np.array([[[1.0, 1], [1, 4]], [[1, 2], [1, 1]]]),
        (0, 1): np.array([[[np.nan, 1], [1, 2]], [[1, 1], [1, 1]]]),  # a patch never read: NaN, not 0
    }
    regions = interp.region_attention(_frame(values), _masks, by="layer")
    assert set(regions.columns) == {"sample", "layer", "image", "region", "patches", "valid", "total"}
    per_image = interp.scene_ratio(regions)
    row = per_image[(per_image["sample"] == 0) & (per_image.layer == 0) & (per_image.image == 0)].iloc[0]
    assert row.target_mean == pytest.approx(4.0) and row.distractors_mean == pytest.approx(2.0)
    assert row.ratio == pytest.approx(2.0)
    assert per_image[per_image.image == 1]["ratio"].isna().all()  # no distractor patch in image 1
    nan_row = per_image[(per_image["sample"] == 0) & (per_image.layer == 1) & (per_image.image == 0)].iloc[0]
    assert nan_row.target_patches == 1 and np.isnan(nan_row.target_mean) and np.isnan(nan_row.ratio)
    # both images pooled per scene: the target mean is over the target patches of both images
    pooled = interp.scene_ratio(regions, pool_images=True)
    first = pooled[(pooled["sample"] == 0) & (pooled.layer == 0)].iloc[0]
    assert first.target_mean == pytest.approx((4 + 6) / 2) and first.ratio == pytest.approx(5 / 2)
    # the ratio of means over scenes (not the mean of per-scene ratios)
    scenes = interp.region_values(regions)
    ratio = interp.pooled_ratio(scenes)
    target, distractors = np.mean([(4 + 6) / 2, (1 + 2) / 2]), np.mean([2, 4])
    assert ratio.loc[0] == pytest.approx(target / distractors)
    assert ratio.loc[0] != pytest.approx(np.mean([5 / 2, 1.5 / 4]))  # not the mean of per-scene ratios
    with pytest.raises(InputError, match="lacks"):
        interp.region_attention(_frame(values).drop(columns="head"), _masks)


def test_hook_builders_name_every_captured_tensor(tiny_model):
    inputs = make_inputs(tiny_model.config, [5])
    _, cache = interp.run_with_cache(tiny_model, **inputs, mode="full", vision_attention=True, store_qk=True,
                                     keep_head_mean=True)
    built = {llm_hook("embed"), llm_hook("norm_final")}
    for layer in range(tiny_model.config.num_llm_layers):
        built.add(llm_hook("resid_post", layer))
        built |= {llm_hook(name, layer) for name in ("pattern", "q", "k", "segment_pattern", "query_profile",
                                                      "entropy", "future_mass", "head_mean")}
    built |= {head_hook(name) for name in ("task_states", "query_states", "actions")}
    for block in range(tiny_model.action_head.num_blocks):
        built |= {head_hook("pattern", block), head_hook("gate", block)}
    for featurizer in ("featurizer", "fused_featurizer"):
        vit = getattr(tiny_model.vision_backbone, featurizer)
        built |= {vision_hook(featurizer, layer) for layer in range(len(vit.blocks) - 1)}  # the last one never runs
    assert built == set(cache)
    assert cache.names(llm_hook("pattern", "*")) == [llm_hook("pattern", i) for i in range(cache.num_layers)]


def test_hook_builders_refuse_what_the_grammar_does_not_have():
    with pytest.raises(InputError, match="llm hook"):
        llm_hook("attention", 1)
    with pytest.raises(InputError, match="layer"):
        llm_hook("pattern")
    with pytest.raises(InputError, match="layer"):
        llm_hook("pattern", -1)
    with pytest.raises(InputError, match="expected none"):
        llm_hook("embed", 2)
    with pytest.raises(InputError, match="head hook"):
        head_hook("resid_post", 0)
    with pytest.raises(InputError, match="featurizer"):
        vision_hook("siglip", 0)
