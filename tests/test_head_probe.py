"""vla_lab.interp.head: the head re-run with key groups taken out, parameter parts; target/distractor ratios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from testkit import make_inputs, randomize

from vla_lab import VLAAdapter, capture
from vla_lab.errors import InputError
from vla_lab.interp import head_task_patch_attention
from vla_lab.interp.head import (
    head_forward,
    head_parameter_parts,
    head_states,
    key_group_sizes,
    path_ablation,
)
from vla_lab.model import meta_model
from vla_lab.tabletop.target_attention import object_attention_ratio
from vla_lab.worlds import tabletop as world


def _model(config, version: str) -> VLAAdapter:
    torch.manual_seed(0)
    model = randomize(VLAAdapter(config.replace(head_version=version)), seed=3, scale=0.3).eval()
    with torch.no_grad():
        for block in model.action_head.model.mlp_resnet_blocks:
            block.gating_factor.fill_(0.7)
    return model


@pytest.mark.parametrize("version", ["pro", "v1"])
def test_head_forward_without_drop_equals_model(tiny_config, version):
    model = _model(tiny_config, version)
    inputs = make_inputs(model.config, [5, 3])
    states = head_states(model, inputs)
    with torch.no_grad():
        expected = model(**inputs).normalized_actions
        got = head_forward(model.action_head, states["task_states"], states["query_states"],
                           states["proprio_features"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(states["actions"], expected)


def test_zero_task_path_equals_zero_task_values(tiny_config):
    """Zeroing the task weights is the same as a head whose task values are 0 (Pro: separate v_task)."""
    model = _model(tiny_config, "pro")
    inputs = make_inputs(model.config, [4])
    states = head_states(model, inputs)
    args = (states["task_states"], states["query_states"], states["proprio_features"])
    with torch.no_grad():
        dropped = head_forward(model.action_head, *args, drop=[(1, "task")])
        block = model.action_head.model.mlp_resnet_blocks[1]
        block.v_task.weight.zero_()
        block.v_task.bias.zero_()
        manual = head_forward(model.action_head, *args)
    torch.testing.assert_close(dropped, manual, rtol=0, atol=1e-6)


def test_remove_renormalises_and_refuses_empty_blocks(tiny_config):
    model = _model(tiny_config, "pro")
    inputs = make_inputs(model.config, [4])
    states = head_states(model, inputs)
    args = (states["task_states"], states["query_states"], states["proprio_features"])
    with torch.no_grad():
        base = head_forward(model.action_head, *args)
        removed = head_forward(model.action_head, *args, drop=[(0, "task")], how="remove")
        zeroed = head_forward(model.action_head, *args, drop=[(0, "task")], how="zero")
    assert torch.isfinite(removed).all()
    assert not torch.allclose(removed, base)
    assert not torch.allclose(removed, zeroed)
    everything = [(0, g) for g in ("self", "action_queries", "proprio", "task")]
    with pytest.raises(InputError, match="no key group"):
        head_forward(model.action_head, *args, drop=everything, how="remove")
    with pytest.raises(InputError, match="group"):
        head_forward(model.action_head, *args, drop=[(0, "vision")])
    with pytest.raises(InputError, match="block"):
        head_forward(model.action_head, *args, drop=[(9, "task")])
    with pytest.raises(InputError, match="how"):
        head_forward(model.action_head, *args, how="mean")


def test_path_ablation_table(tiny_config):
    model = _model(tiny_config, "pro")
    inputs = make_inputs(model.config, [5, 4, 6])
    targets = torch.zeros(3, model.config.robot.chunk, model.config.robot.action_dim)
    df = path_ablation(model, inputs, targets=targets)
    blocks = model.action_head.num_blocks
    assert len(df) == 3 * blocks * 3
    assert set(df["group"]) == {"task", "action_queries", "proprio"}
    assert (df["hidden_index"] == df["block"] + 1).all()
    assert (df["l1_change"] >= 0).all() and (df["l1_change"] > 0).any()
    assert np.isfinite(df[["baseline_error", "error"]].to_numpy()).all()
    with pytest.raises(InputError, match="targets"):
        path_ablation(model, inputs, targets=np.zeros((1, 2, 3)))


@pytest.mark.parametrize("version", ["pro", "v1"])
def test_parameter_parts_sum_to_head(tiny_config, version):
    model = _model(tiny_config, version)
    df = head_parameter_parts(model)
    assert df["parameters"].sum() == model.parameter_counts()["action_head"]
    parts = set(df.loc[df["block"] >= 0, "part"])
    if version == "v1":
        assert "k/v shared" in parts and "k/v task" not in parts
    else:
        assert {"k/v self", "k/v adapter", "k/v task", "film_gen (unused)"} <= parts
    assert set(df.loc[df["block"] == -1, "part"]) == {"input", "output"}


def test_parameter_parts_on_meta():
    from vla_lab import VLAConfig

    model = meta_model(VLAConfig.preset("vla-adapter-qwen2.5-0.5b"))
    df = head_parameter_parts(model)
    assert df["parameters"].sum() == model.parameter_counts()["action_head"]
    assert df["block"].max() == 23


def test_key_group_sizes(tiny_model):
    inputs = make_inputs(tiny_model.config, [5])
    with capture(tiny_model, "none") as cache, torch.no_grad():
        tiny_model(**inputs)
    sizes = key_group_sizes(cache)
    layout = cache.layouts[0]
    assert sizes == {"self": tiny_model.config.robot.chunk, "action_queries": tiny_model.config.num_action_queries,
                     "proprio": 1, "task": layout.num_patches}


def _scene_with_masks(grid=(4, 4)):
    for seed in range(100):
        scene = world.sample_scene(seed)
        masks = world.object_patch_masks(scene, grid, view="full")
        if masks["target"].any() and masks["distractors"].any():
            return scene, masks
    raise AssertionError("no scene with target and distractor patches")  # pragma: no cover


def test_object_attention_ratio():
    scene, masks = _scene_with_masks()
    rows = []
    for r in range(4):
        for c in range(4):
            value = 2.0 if masks["target"][r, c] else 1.0
            for head in range(2):
                rows.append((0, 0, head, 0, r, c, value + (0.5 if head else -0.5)))
    df = pd.DataFrame(rows, columns=["sample", "block", "head", "image", "row", "col", "value"])
    out = object_attention_ratio(df, [scene])
    assert len(out) == 1
    row = out.iloc[0]
    assert row["view"] == "full"
    assert row["ratio"] == pytest.approx(2.0)
    assert row["target_patches"] == int(masks["target"].sum())
    assert row["distractors_patches"] == int(masks["distractors"].sum())
    with pytest.raises(InputError, match="one per sample"):
        object_attention_ratio(df.assign(sample=3), [scene])
    with pytest.raises(InputError, match="lacks"):
        object_attention_ratio(df.drop(columns="head"), [scene])


def test_object_attention_ratio_from_capture(tiny_config):
    """End to end on the world's images with a tiny model (both views, grids from the layout)."""
    from vla_lab.tabletop import world_processor

    config = tiny_config.replace(vision={**tiny_config.vision.to_dict(), "image_sizes": [64, 64],
                                         "timm_kwargs": [{"embed_dim": 32, "depth": 2, "num_heads": 2,
                                                          "patch_size": 16},
                                                         {"embed_dim": 48, "depth": 2, "num_heads": 2,
                                                          "patch_size": 16}]},
                                 llm={**tiny_config.llm, "vocab_size": 381}, prompt="openvla")
    torch.manual_seed(0)
    model = randomize(VLAAdapter(config), seed=1).eval()
    model.processor = world_processor(config)
    scenes = [world.sample_scene(s) for s in (1, 2)]
    obs = [world.render(s) for s in scenes]
    inputs = model.prepare_inputs([o.images for o in obs], [o.instruction for o in obs],
                                  np.stack([o.proprio for o in obs]), proprio_is_normalized=True)
    inputs = {k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask", "proprio")}
    with capture(model, "none") as cache, torch.no_grad():
        model(**inputs)
    out = object_attention_ratio(head_task_patch_attention(cache), scenes)
    assert len(out) == 2 * model.action_head.num_blocks * 2
    assert set(out["view"]) == {"full", "wrist"}
    finite = out["ratio"].dropna()
    assert (finite > 0).all()
