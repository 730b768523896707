"""Core model behaviour: masks, padding, kernels, presets, head inputs."""

from __future__ import annotations

import pytest
import torch
from testkit import ALL_BACKBONES, make_inputs, randomize, shrink

from vla_lab import AttentionSpec, VLAAdapter, VLAConfig
from vla_lab.config import FINE_SEGMENTS, PRESETS

MODES = ["causal", "bidirectional", "prefix-lm", {"base": "bidirectional", "block": [["vision", "action_queries"]]}]


def eager_attention_maps(model: VLAAdapter, inputs: dict, attention=None) -> tuple[list[torch.Tensor], object]:
    """Attention probabilities of every LLM layer, read from transformers' eager kernel."""
    model.set_attention_kernel("eager")
    maps: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda _m, _i, out: maps.append(out[1].detach()))
        for layer in model.language_model.model.layers
    ]
    try:
        with torch.no_grad():
            out = model(**inputs, attention=attention)
    finally:
        for h in hooks:
            h.remove()
        model.set_attention_kernel("sdpa")
    return maps, out


def test_causal_mode_never_attends_forward(tiny_model):
    inputs = make_inputs(tiny_model.config, [7])
    maps, out = eager_attention_maps(tiny_model, inputs, "causal")
    seq = out.layouts[0].length
    later = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    for probs in maps:
        assert probs.shape[-1] == seq
        assert torch.count_nonzero(probs[..., later]) == 0
        assert torch.all(probs[..., ~later] > 0)


def test_bidirectional_mode_attends_everywhere(tiny_model):
    inputs = make_inputs(tiny_model.config, [7])
    maps, out = eager_attention_maps(tiny_model, inputs, "bidirectional")
    for probs in maps:
        assert torch.all(probs > 0)
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_action_queries_reach_vision_and_text_only_when_bidirectional(tiny_model, mode):
    inputs = make_inputs(tiny_model.config, [6])
    with torch.no_grad():
        before = tiny_model(**inputs, attention=mode)
        tiny_model.action_queries.weight.add_(torch.randn_like(tiny_model.action_queries.weight))
        after = tiny_model(**inputs, attention=mode)
    lay = before.layouts[0]
    prefix = slice(0, lay.text.stop)  # tok0, vision, text
    pairs = list(zip(before.hidden_states, after.hidden_states))
    if mode == "causal":
        assert all(torch.equal(h0[:, prefix], h1[:, prefix]) for h0, h1 in pairs)
    changed = [not torch.allclose(h0[:, prefix], h1[:, prefix]) for h0, h1 in pairs]
    if mode == "bidirectional":
        assert all(changed[1:]), "every layer's vision/text states must see the queries"
    else:
        assert not any(changed)
    assert not torch.allclose(before.normalized_actions, after.normalized_actions)


def test_custom_mask_blocks_exactly_one_pair(tiny_model):
    inputs = make_inputs(tiny_model.config, [6])
    spec = AttentionSpec("bidirectional", block=(("vision", "action_queries"),))
    maps, out = eager_attention_maps(tiny_model, inputs, spec)
    base = AttentionSpec.parse("bidirectional")
    _, out_base = eager_attention_maps(tiny_model, inputs, base)
    lay = out.layouts[0]
    diff = out.allowed[0] != out_base.allowed[0]
    expected = torch.zeros_like(diff)
    expected[lay.vision_span.slice, lay.action_queries.slice] = True
    assert torch.equal(diff, expected)
    for probs in maps:
        assert torch.count_nonzero(probs[0][:, lay.vision_span.slice, lay.action_queries.slice]) == 0
        assert torch.all(probs[0][:, lay.text.slice, lay.action_queries.slice] > 0)
        assert torch.all(probs[0][:, lay.vision_span.slice, lay.text.slice] > 0)


def test_custom_mask_on_one_image(tiny_model):
    inputs = make_inputs(tiny_model.config, [5])
    spec = AttentionSpec("causal", block=(("action_queries", "vision.1"),))
    maps, out = eager_attention_maps(tiny_model, inputs, spec)
    lay = out.layouts[0]
    for probs in maps:
        assert torch.count_nonzero(probs[0][:, lay.action_queries.slice, lay.vision[1].slice]) == 0
        assert torch.all(probs[0][:, lay.action_queries.slice, lay.vision[0].slice] > 0)


def test_prefix_lm_mask_layout(tiny_model):
    inputs = make_inputs(tiny_model.config, [5])
    with torch.no_grad():
        out = tiny_model(**inputs, attention="prefix-lm")
    allowed, lay = out.allowed[0], out.layouts[0]
    prefix = slice(0, lay.text.stop)
    assert allowed[prefix, prefix].all()
    assert not allowed[prefix, lay.action_queries.slice].any()
    q = lay.action_queries
    assert torch.equal(allowed[q.slice, q.slice], torch.tril(torch.ones(len(q), len(q), dtype=torch.bool)))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m if isinstance(m, str) else "custom")
def test_right_padded_batch_equals_samples_alone(tiny_model, mode):
    lengths = [9, 4, 6]
    inputs = make_inputs(tiny_model.config, lengths, seed=3)
    with torch.no_grad():
        batched = tiny_model(**inputs, attention=mode)
        for b, n in enumerate(lengths):
            alone = tiny_model(
                inputs["pixel_values"][b : b + 1],
                inputs["input_ids"][b : b + 1, :n],
                None,
                inputs["proprio"][b : b + 1],
                attention=mode,
            )
            torch.testing.assert_close(batched.normalized_actions[b], alone.normalized_actions[0], atol=1e-5, rtol=0)
            stop = alone.layouts[0].num_tokens
            assert batched.layouts[b].num_tokens == stop
            for hb, ha in zip(batched.hidden_states, alone.hidden_states):
                torch.testing.assert_close(hb[b, :stop], ha[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m if isinstance(m, str) else "custom")
def test_eager_and_sdpa_agree(tiny_model, mode):
    inputs = make_inputs(tiny_model.config, [8, 5], seed=4)
    with torch.no_grad():
        sdpa = tiny_model(**inputs, attention=mode)
        tiny_model.set_attention_kernel("eager")
        eager = tiny_model(**inputs, attention=mode)
        tiny_model.set_attention_kernel("sdpa")
    torch.testing.assert_close(sdpa.normalized_actions, eager.normalized_actions, atol=1e-5, rtol=0)
    for b, lay in enumerate(sdpa.layouts):
        for hs, he in zip(sdpa.hidden_states, eager.hidden_states):
            torch.testing.assert_close(hs[b, : lay.num_tokens], he[b, : lay.num_tokens], atol=1e-5, rtol=0)


def test_layout_matches_spec(tiny_model):
    inputs = make_inputs(tiny_model.config, [7, 3])
    with torch.no_grad():
        out = tiny_model(**inputs)
    np_ = tiny_model.vision_backbone.num_patches
    lay = out.layouts[0]
    assert (lay.tok0.start, lay.tok0.stop) == (0, 1)
    assert lay.vision_span.start == 1 and lay.vision_span.stop == 1 + np_
    assert (lay.text.start, lay.text.stop) == (np_ + 1, np_ + 7)
    assert (lay.action_queries.start, lay.action_queries.stop) == (np_ + 7, np_ + 7 + 64)
    assert (lay.stop.start, lay.stop.stop) == (np_ + 71, np_ + 72)
    short = out.layouts[1]
    assert short.action_queries.start == np_ + 3 and len(short.padding) == 4
    assert short.patch_grids == ((4, 4), (4, 4))
    # the STOP token is id 2 and the query positions hold the action query embeddings
    embed = tiny_model.language_model.get_input_embeddings().weight
    h0 = out.hidden_states[0]
    torch.testing.assert_close(h0[0, lay.stop.start], embed[2])
    torch.testing.assert_close(h0[1, short.action_queries.slice], tiny_model.action_queries.weight)
    torch.testing.assert_close(h0[0, 0], embed[inputs["input_ids"][0, 0]])


def test_head_reads_released_offsets(tiny_model):
    inputs = make_inputs(tiny_model.config, [7, 4])
    with torch.no_grad():
        out = tiny_model(**inputs)
    np_ = tiny_model.vision_backbone.num_patches
    for b, length in enumerate([7, 4]):
        for layer, h in enumerate(out.hidden_states):
            torch.testing.assert_close(out.task_states[b, layer], h[b, 0:np_])
            torch.testing.assert_close(out.query_states[b, layer], h[b, np_ + length - 1 : np_ + length + 63])
    task, queries = tiny_model.head_inputs(out.hidden_states, out.layouts, offset="aligned")
    lay = out.layouts[1]
    torch.testing.assert_close(task[1, 2], out.hidden_states[2][1, lay.vision_span.slice])
    torch.testing.assert_close(queries[1, 2], out.hidden_states[2][1, lay.action_queries.slice])


def test_aligned_offset_option_changes_actions(tiny_config):
    torch.manual_seed(0)
    model = randomize(VLAAdapter(tiny_config), seed=5).eval()
    inputs = make_inputs(tiny_config, [6])
    with torch.no_grad():
        released = model(**inputs).normalized_actions
        model.config.hidden_offset = "aligned"
        aligned = model(**inputs).normalized_actions
    assert not torch.allclose(released, aligned)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_end_to_end(preset):
    config = VLAConfig.preset(preset)
    if config.llm_dim >= 512:
        config = shrink(config)
    torch.manual_seed(0)
    model = VLAAdapter(config).eval()
    inputs = make_inputs(config, [5])
    with torch.no_grad():
        out = model(**inputs)
    assert out.normalized_actions.shape == (1, config.robot.chunk, config.robot.action_dim)
    assert len(out.hidden_states) == config.num_llm_layers + 1
    assert torch.isfinite(out.normalized_actions).all()


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_every_backbone_id_builds_and_runs(backbone):
    base = VLAConfig.preset("tiny")
    data = base.to_dict()
    fused = backbone.startswith(("dinosiglip", "dinoclip"))
    data["vision"] = {"backbone_id": backbone}
    data["projector"] = "fused-gelu-mlp" if fused else "gelu-mlp"
    config = shrink(VLAConfig.from_dict(data))
    model = VLAAdapter(config).eval()
    assert model.vision_backbone.config.fused is fused
    inputs = make_inputs(config, [4])
    with torch.no_grad():
        out = model(**inputs)
    grid = model.vision_backbone.patch_grid
    patch = 16 if backbone == "in1k-vit-l" else 14
    assert grid == (56 // patch, 56 // patch)
    assert out.normalized_actions.shape == (1, 8, 7)


ROBOT_SHAPES = [("libero", (8, 7)), ("calvin", (8, 7)), ("aloha", (25, 14)), ("bridge", (5, 7))]


@pytest.mark.parametrize("robot,shape", ROBOT_SHAPES)
def test_robot_presets_set_chunk_and_dims(robot, shape):
    config = VLAConfig.preset("tiny", robot=robot)
    model = VLAAdapter(config).eval()
    inputs = make_inputs(config, [4])
    assert inputs["proprio"].shape[1] == {"libero": 8, "calvin": 8, "aloha": 14, "bridge": 7}[robot]
    with torch.no_grad():
        out = model(**inputs)
    assert out.normalized_actions.shape == (1, *shape)


@pytest.mark.parametrize("projector", ["linear", "gelu-mlp", "fused-gelu-mlp", "no-align+gelu-mlp"])
def test_projectors(projector):
    config = VLAConfig.preset("tiny", projector=projector)
    model = VLAAdapter(config).eval()
    names = {n.split(".")[0] for n, _ in model.projector.named_parameters()}
    assert names == {"linear": {"fc1"}, "gelu-mlp": {"fc1", "fc2"}}.get(config.projector, {"fc1", "fc2", "fc3"})
    with torch.no_grad():
        assert model(**make_inputs(config, [3])).normalized_actions.shape == (1, 8, 7)


def test_single_image_and_three_images():
    for n in (1, 3):
        config = VLAConfig.preset("tiny", num_images=n)
        model = VLAAdapter(config).eval()
        with torch.no_grad():
            out = model(**make_inputs(config, [4]))
        assert out.layouts[0].num_images == n
        assert out.layouts[0].num_patches == 16 * n


def test_without_proprio():
    config = VLAConfig.preset("tiny", use_proprio=False)
    model = VLAAdapter(config).eval()
    assert model.proprio_projector is None
    with torch.no_grad():
        out = model(**make_inputs(config, [4]))
    assert out.normalized_actions.shape == (1, 8, 7)


def test_bf16_runs_and_keeps_llm_rope_in_float32(tiny_model):
    model = tiny_model.to(torch.bfloat16)
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert model.action_head.model.mlp_resnet_blocks[0].rope.inv_freq.dtype == torch.bfloat16
    inputs = make_inputs(model.config, [5])
    with torch.no_grad():
        out = model(**inputs)
    assert out.normalized_actions.dtype == torch.bfloat16
    model.float()


def test_segment_names_are_stable():
    assert FINE_SEGMENTS[0] == "tok0" and FINE_SEGMENTS[-1] == "padding"
