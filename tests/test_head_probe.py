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


@pytest.mark.parametrize("version", ["pro", "v1"])
def test_head_block_closes_single_task_states(tiny_config, version):
    """``head_block`` closes the head's task attention to single positions: nothing closed is the model itself,
    every task position closed is the task group removed from every block, a position the head does not read
    changes nothing; the eager and SDPA kernels agree."""
    model = _model(tiny_config, version)
    inputs = make_inputs(model.config, [5, 3])
    with torch.no_grad():
        out = model(**inputs)
        plan = model.plan(inputs["attention_mask"].sum(dim=1).tolist(), inputs["input_ids"].shape[1])
        closed = torch.zeros(2, plan.length, dtype=torch.bool)
        torch.testing.assert_close(model(**inputs, head_block=closed).normalized_actions, out.normalized_actions,
                                   rtol=0, atol=0)
        everything = closed.clone()
        everything[:, plan.task.slice] = True
        drop = {b: ["task"] for b in range(model.action_head.num_blocks)}
        removed = model.action_head(out.task_states, out.query_states, out.proprio_features, drop=drop, how="remove")
        torch.testing.assert_close(model(**inputs, head_block=everything).normalized_actions, removed,
                                   rtol=0, atol=1e-6)
        elsewhere = closed.clone()
        elsewhere[:, plan.task.stop :] = True  # the prompt, queries and STOP: not task states
        torch.testing.assert_close(model(**inputs, head_block=elsewhere).normalized_actions, out.normalized_actions,
                                   rtol=0, atol=0)
        one = closed.clone()
        one[0, plan.task.start + 2] = True
        single = model(**inputs, head_block=one).normalized_actions
        assert not torch.allclose(single[0], out.normalized_actions[0])
        torch.testing.assert_close(single[1], out.normalized_actions[1], rtol=0, atol=0)  # sample 1 untouched
    with pytest.raises(InputError, match=r"^head_block: got a torch.int64 tensor"):
        model(**inputs, head_block=closed.long())


def test_bridge_attention_closes_task_keys_alike_in_both_kernels():
    from vla_lab.model.action_head import bridge_attention

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 3, 4, generator=gen)
    keys = [torch.randn(2, 2, k, 4, generator=gen) for k in (3, 5, 6)]
    values = [torch.randn(2, 2, k, 4, generator=gen) for k in (3, 5, 6)]
    gate = torch.tensor(0.6)
    closed = torch.zeros(2, 6, dtype=torch.bool)
    closed[0, [1, 4]] = True
    eager, weights = bridge_attention(q, keys, values, gate, closed_task=closed)
    sdpa, _ = bridge_attention(q, keys, values, gate, closed_task=closed, kernel="sdpa")
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-6)
    assert weights is not None and (weights[0, ..., 8 + 1] == 0).all() and (weights[0, ..., 8 + 4] == 0).all()
    assert (weights[1, ..., 8:] > 0).all()
    with pytest.raises(InputError, match=r"^closed_task: got shape \(2, 5\), expected \(2, 6\)"):
        bridge_attention(q, keys, values, gate, closed_task=closed[:, :5])


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_a_knockout_of_every_reader_makes_the_patches_irrelevant(tiny_config, attention, monkeypatch):
    """target-knockout's ``all`` reach: with every LLM edge to some patches and the head's view of their states
    closed, what those patches show cannot change the actions; the ``queries`` reach alone does not have that
    property (the patches reach the queries through other positions and the head)."""
    from vla_lab.studies.target_knockout import knockout_options

    model = _model(tiny_config, "pro")
    model.set_attention(attention)
    inputs = make_inputs(model.config, [5, 3])
    plan = model.plan(inputs["attention_mask"].sum(dim=1).tolist(), inputs["input_ids"].shape[1])
    start = plan.layouts[0].vision[0].start
    keys = [[start + 1, start + 4], [start + 2]]
    embed = model.embed_images

    def noisy(pixel_values):
        out = embed(pixel_values).clone()
        for b, positions in enumerate(keys):
            for p in positions:
                out[b, p - start] += 5.0 * torch.randn(out.shape[-1])
        return out

    with torch.no_grad():
        actions = {}
        for reach in ("queries", "head", "all"):
            options = knockout_options(reach, plan.layouts, keys, plan.length)
            assert set(options) == {"queries": {"block"}, "head": {"head_block"}, "all": {"block", "head_block"}}[reach]
            clean = model(**inputs, **options).normalized_actions
            monkeypatch.setattr(model, "embed_images", noisy)
            actions[reach] = (clean, model(**inputs, **options).normalized_actions)
            monkeypatch.setattr(model, "embed_images", embed)
    torch.testing.assert_close(actions["all"][1], actions["all"][0], rtol=0, atol=1e-6)
    for reach in ("queries", "head"):
        assert not torch.allclose(actions[reach][1], actions[reach][0], atol=1e-4)
    assert knockout_options("all", plan.layouts, [[], []], plan.length) == {}
