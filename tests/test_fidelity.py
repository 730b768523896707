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
from testkit import literal_block, make_inputs, randomize

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


@pytest.mark.parametrize("version", ["v1", "pro"])
def test_released_directory_with_the_chat_prompt_matches_upstream(version, tmp_path):
    """A released-layout directory (no vla_lab config: prompt qwen-chat) run on a real LIBERO instruction: our
    forward equals the restatement fed transformers' Qwen2Tokenizer ids of upstream's chat template."""
    import shutil

    import transformers
    from testkit import DATA, RAW_PROPRIO, random_images, released_test_config, write_released

    from vla_lab import load_pretrained
    from vla_lab.processing.tokenizer import SAVED_FILES

    torch.manual_seed(0)
    source = randomize(VLAAdapter(released_test_config(version)), seed=5, scale=0.1).eval()
    directory = write_released(tmp_path / "ckpt", source, dtype=torch.float32)
    for name in SAVED_FILES:
        shutil.copyfile(DATA / "released_checkpoint" / name, directory / name)
    model = load_pretrained(directory)
    instruction = "Pick up the black bowl between the plate and the ramekin and place it on the plate"
    text = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\nWhat action should the robot take to {instruction.lower()}?<|im_end|>\n"
            "<|im_start|>assistant\n")
    ids = transformers.Qwen2Tokenizer.from_pretrained(str(DATA / "released_checkpoint"))(text, return_tensors="pt")
    batch = model.prepare_inputs(random_images(9), instruction, RAW_PROPRIO)
    assert batch["prompt"] == "qwen-chat" and torch.equal(batch["input_ids"], ids["input_ids"])
    assert batch["input_ids"].shape == (1, 56)
    with torch.no_grad():
        ours = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["proprio"])
        ref, ref_hidden = upstream_predict(model, batch["pixel_values"], ids["input_ids"], batch["proprio"])
    for a, b in zip(ours.hidden_states, ref_hidden):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (ours.normalized_actions - ref).abs().max() <= 1e-5
