"""End-to-end fidelity: our forward against an independent re-statement of upstream's predict_action.

The reference below is written from reading upstream's ``modeling_prismatic.py`` and
``action_heads.py`` and deliberately avoids our own code paths: it loops over images with timm's
``get_intermediate_layers``, applies the projector by hand, runs transformers' own
``Qwen2ForCausalLM.forward`` (all-ones 2-D mask -> causal, or a 4-D mask for bidirectional),
slices hidden states with upstream's ``NUM_PATCHES + NUM_PROMPT_TOKENS`` arithmetic, and runs the
bridge blocks with the literal head from ``test_action_head``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_action_head import literal_block
from testkit import make_inputs, randomize

from vla_lab import VLAAdapter, VLAConfig


def upstream_predict(model: VLAAdapter, pixel_values, input_ids, proprio, bidirectional: bool = False):
    cfg = model.config
    vb = model.vision_backbone
    n_images = cfg.num_images
    patches = []
    for img in torch.split(pixel_values, [6] * n_images, dim=1):
        dino, siglip = torch.split(img, [3, 3], dim=1)
        feats = [
            vit.get_intermediate_layers(x, n=[len(vit.blocks) - 2])[0]
            for vit, x in ((vb.featurizer, dino), (vb.fused_featurizer, siglip))
        ]
        patches.append(torch.cat(feats, dim=2))
    patches = torch.cat(patches, dim=1)
    pr = model.projector
    projected = pr.fc3(F.gelu(pr.fc2(F.gelu(pr.fc1(patches)))))

    num_prompt_tokens = input_ids.shape[-1] - 1
    placeholders = torch.ones((1, cfg.num_action_queries), dtype=input_ids.dtype)
    ids = torch.cat([input_ids, placeholders, torch.full((1, 1), 2)], dim=-1)
    embeds = model.language_model.get_input_embeddings()(ids)
    length = input_ids.shape[1]
    embeds[:, length : length + cfg.num_action_queries] = model.action_queries.weight
    sequence = torch.cat([embeds[:, :1], projected, embeds[:, 1:]], dim=1)
    if bidirectional:
        mask = torch.zeros(1, 1, sequence.shape[1], sequence.shape[1])
    else:
        mask = torch.ones(sequence.shape[:2], dtype=torch.long)
    out = model.language_model(inputs_embeds=sequence, attention_mask=mask, output_hidden_states=True)

    num_patches = patches.shape[1]
    start = num_patches + num_prompt_tokens
    task = torch.stack([h[:, :num_patches] for h in out.hidden_states], dim=1)
    queries = torch.stack([h[:, start : start + cfg.num_action_queries] for h in out.hidden_states], dim=1)

    head = model.action_head.model
    proprio_features = model.proprio_projector(proprio)[:, None]
    x = torch.zeros(1, cfg.robot.chunk, cfg.robot.action_dim * cfg.llm_dim)
    x = torch.relu(head.fc1(head.layer_norm1(x)))
    for i, block in enumerate(head.mlp_resnet_blocks):
        adapter = torch.cat([queries[:, i + 1], proprio_features], dim=1)
        x = literal_block(block, x, adapter, task[:, i + 1], cfg.head_version)
    return head.fc2(head.layer_norm2(x)), out.hidden_states


@pytest.mark.parametrize("version", ["v1", "pro"])
@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_forward_matches_upstream_restatement(version, mode):
    config = VLAConfig.preset("tiny", head_version=version, attention=mode)
    torch.manual_seed(0)
    model = randomize(VLAAdapter(config), seed=3, scale=0.1).eval()
    inputs = make_inputs(config, [9], seed=7)
    with torch.no_grad():
        ours = model(**inputs)
        ref, ref_hidden = upstream_predict(
            model, inputs["pixel_values"], inputs["input_ids"], inputs["proprio"], bidirectional=mode == "bidirectional"
        )
    for a, b in zip(ours.hidden_states, ref_hidden):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (ours.normalized_actions - ref).abs().max() <= 1e-5


def test_bf16_casts_option_rounds_like_upstream():
    config = VLAConfig.preset("tiny")
    torch.manual_seed(0)
    model = randomize(VLAAdapter(config), seed=4, scale=0.1).eval()
    inputs = make_inputs(config, [6], seed=1)
    with torch.no_grad():
        exact = model(**inputs)
        model.config.upstream_bf16_casts = True
        rounded = model(**inputs)
        head = model.action_head
        queries = exact.query_states.to(torch.bfloat16).float()
        proprio = model.proprio_projector(inputs["proprio"].to(torch.bfloat16).float())
        by_hand = head(exact.task_states, queries, proprio)
    torch.testing.assert_close(rounded.normalized_actions, by_hand, atol=0, rtol=0)
    assert not torch.equal(rounded.normalized_actions, exact.normalized_actions)
