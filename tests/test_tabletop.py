"""Tests of the world <-> model glue (vla_lab.tabletop): tokenizer, config, batches, policies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import tiny_tabletop_config

from vla_lab import VLAConfig, registry, tabletop
from vla_lab.errors import InputError
from vla_lab.processing import PROMPT_TEMPLATE, build_prompt
from vla_lab.processing.normalization import normalize_actions, normalize_proprio
from vla_lab.processing.tokenizer import bytes_to_unicode
from vla_lab.processing.tokenizer_files import load_tokenizer_from_files
from vla_lab.worlds import tabletop as world


@pytest.fixture(scope="module")
def tokenizer():
    return world.build_world_tokenizer()


# --- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_is_deterministic(tmp_path, tokenizer) -> None:
    a = world.write_world_tokenizer_files(tmp_path / "a")
    b = world.write_world_tokenizer_files(tmp_path / "b")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    other = world.build_world_tokenizer()
    text = build_prompt("pick up the object left of the purple triangle", "openvla")
    assert other.encode(text) == tokenizer.encode(text)
    # The preset's vocabulary size is a constant because the build is deterministic.
    assert tokenizer.vocab_size == VLAConfig.preset("tabletop").llm["vocab_size"] == 381


def test_tokenizer_layout_follows_qwen(tokenizer) -> None:
    order = list(bytes_to_unicode().values())
    assert tokenizer.convert_ids_to_tokens(list(range(256))) == order
    assert tokenizer.convert_ids_to_tokens(2) == "#"  # the released STOP id
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.vocab_size - 1
    assert not tokenizer.is_stock_qwen25


def test_world_words_are_single_tokens(tokenizer) -> None:
    for word in world.VOCABULARY:
        assert len(tokenizer.encode(" " + word)) == 1, word
        assert len(tokenizer.encode(word)) == 1, word
    head = ["In", ":", "ĠWhat", "Ġaction", "Ġshould", "Ġthe", "Ġrobot", "Ġtake", "Ġto"]
    tail = ["?Ċ", "Out", ":"]
    assert PROMPT_TEMPLATE.startswith("In: What action should the robot take to {instruction}?")
    for seed in world.split_seeds("train", 50):
        scene = world.sample_scene(seed)
        prompt = build_prompt(scene.instruction, "openvla")
        ids = tokenizer.encode(prompt)
        assert tokenizer.decode(ids) == prompt
        words = ["Ġ" + w for w in scene.instruction.split()]
        assert tokenizer.convert_ids_to_tokens(ids) == head + words + tail


def test_tokenizer_survives_save_and_load(tmp_path, tokenizer) -> None:
    tokenizer.save(tmp_path)
    loaded = load_tokenizer_from_files(tmp_path)
    text = build_prompt("grasp the rightmost object", "openvla")
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.eos_token_id == tokenizer.eos_token_id


# --- configuration ---------------------------------------------------------------------------


def test_tabletop_config_is_the_released_topology() -> None:
    config = tabletop.tabletop_config("bidirectional")
    assert config.name == "tabletop" and config.attention == "bidirectional"
    assert config.vision.fused and config.vision.timm_model_ids == VLAConfig.preset(
        "vla-adapter-pro-qwen2.5-0.5b"
    ).vision.timm_model_ids
    assert config.projector == "fused-gelu-mlp" and config.head_version == "pro"
    assert config.num_action_queries == 16 and config.num_images == 2 and config.use_proprio
    assert (config.robot.chunk, config.robot.action_dim, config.robot.proprio_dim) == (8, 7, 8)
    assert config.llm["tie_word_embeddings"] and config.llm["vocab_size"] == 381
    assert set(config.norm_stats) == {"tabletop"}
    from vla_lab.model import meta_model

    model = meta_model(config)
    assert model.vision_backbone.patch_grid == (4, 4)
    assert model.action_head.num_blocks == config.num_llm_layers
    assert model.parameter_counts()["total"] < 2_000_000  # a few MB in float32


def test_config_checks() -> None:
    config = tiny_tabletop_config()
    with pytest.raises(Exception, match="norm_stats"):
        tabletop.check_config(config.replace(norm_stats=None))
    with pytest.raises(Exception, match="action_dim"):
        tabletop.check_config(config.replace(robot="aloha"))


# --- data ------------------------------------------------------------------------------------


def test_batches_have_the_right_shapes_and_values(tokenizer) -> None:
    config = tiny_tabletop_config()
    seeds = world.split_seeds("train", 6, start=100)
    data = tabletop.TabletopData.generate(config, seeds, tokenizer)
    assert len(data) == 6
    batch = data.batch([0, 3, 5])
    assert batch["pixel_values"].shape == (3, 12, 64, 64) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["proprio"].shape == (3, 8) and batch["proprio"].dtype == torch.float32
    assert batch["actions"].shape == (3, 8, 7) and batch["actions"].dtype == torch.float32
    assert batch["actions"].abs().max() <= 1 and batch["proprio"].abs().max() <= 1

    stats = config.norm_stats["tabletop"]
    processor = tabletop.world_processor(config, tokenizer)
    for row, index in enumerate([0, 3, 5]):
        ex = world.sample_training_example(seeds[index])
        expected = processor(ex.images, ex.instruction)
        torch.testing.assert_close(batch["pixel_values"][row], expected["pixel_values"][0], rtol=0, atol=0)
        n = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert batch["input_ids"][row, :n].tolist() == expected["input_ids"][0].tolist()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        np.testing.assert_allclose(
            batch["proprio"][row].numpy(), normalize_proprio(ex.proprio, stats["proprio"]), rtol=0, atol=1e-6
        )
        np.testing.assert_allclose(
            batch["actions"][row].numpy(), normalize_actions(ex.actions, stats["action"]), rtol=0, atol=1e-6
        )


def test_model_trains_on_a_batch(tokenizer) -> None:
    config = tiny_tabletop_config()
    model = tabletop.initial_model(config, seed=0, tokenizer=tokenizer).train()
    data = tabletop.TabletopData.generate(config, world.split_seeds("train", 4), tokenizer)
    batch = data.batch(range(4))
    target = batch.pop("actions")
    out = model(**batch).normalized_actions
    assert out.shape == target.shape
    torch.nn.L1Loss()(out, target).backward()
    assert model.action_queries.weight.grad is not None


# --- policies and evaluation -----------------------------------------------------------------


@pytest.fixture(scope="module")
def random_model(tokenizer):
    model = tabletop.initial_model(tiny_tabletop_config(), seed=3, tokenizer=tokenizer).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_policy_for_runs_a_rollout(random_model) -> None:
    policy = tabletop.policy_for(random_model)
    scene = world.sample_scene(world.SPLITS["test"][0])
    chunk = policy(world.render(scene))
    assert chunk.shape == (8, 7) and np.isfinite(chunk).all()
    result = world.rollout(scene, policy, max_steps=12, execute=4)
    assert result.outcome in world.OUTCOMES
    assert result.queries >= 1


def test_evaluate_model_matches_world_evaluate(random_model) -> None:
    seeds = world.split_seeds("test", 4)
    reference = world.evaluate(tabletop.policy_for(random_model), seeds, max_steps=12, execute=4)
    ours = tabletop.evaluate_model(random_model, "test", 4, progress=False, execute=4, batch_size=1, max_steps=12)
    assert ours["episodes"] == reference["episodes"]
    for key in ("success_rate", "by_kind", "outcomes", "num_episodes"):
        assert ours[key] == reference[key]
    batched = tabletop.evaluate_model(random_model, "test", 4, progress=False, execute=4, batch_size=4, max_steps=12)
    assert batched["num_episodes"] == 4
    assert 0 <= batched["action_l1"] <= 2 and set(batched["action_l1_by_kind"]) <= set(world.KINDS)
    json.dumps(batched)  # JSON-serialisable


# --- auxiliary-loss labels -----------------------------------------------------------------------


def test_patch_labels_name_each_objects_patches() -> None:
    scene = world.sample_scene(world.SPLITS["test"][3])
    state = world.initial_state(scene)
    labels = tabletop.patch_labels(scene, state, (4, 4), num_images=2)
    assert labels.shape == (32, 2) and labels.dtype == np.int64
    full = labels[:16].reshape(4, 4, 2)
    pixels = world.object_pixel_masks(scene, "full", state)
    cover = pixels.reshape(len(pixels), 4, 16, 4, 16).sum(axis=(2, 4))
    colors, shapes = list(world.COLORS), list(world.SHAPES)
    for r in range(4):
        for c in range(4):
            best = int(cover[:, r, c].argmax())
            if cover[best, r, c] >= tabletop.MIN_LABEL_PIXELS:
                obj = scene.objects[best]
                assert tuple(full[r, c]) == (colors.index(obj.color) + 1, shapes.index(obj.shape) + 1)
            else:
                assert tuple(full[r, c]) == (0, 0)
    assert (full[..., 0] > 0).sum() >= len(scene.objects)  # every object shows on some patch


def test_labelled_batches_carry_targets(tokenizer) -> None:
    config = tiny_tabletop_config()
    seeds = list(world.split_seeds("train", 4))
    data = tabletop.TabletopData.generate(config, seeds, tokenizer, relabel=True, labels=True)
    batch = data.batch(range(len(data)), labels=True)
    assert batch["patch_labels"].shape == (len(data), 32, 2) and batch["targets"].shape == (len(data), 2)
    row = 0
    for seed in seeds:
        scene = world.sample_training_example(seed).scene
        order = [scene.target] + [i for i in range(len(scene.objects)) if i != scene.target]
        for index in order:  # the original example, then one relabelled copy per other object
            obj = scene.objects[index]
            assert batch["targets"][row].tolist() == pytest.approx([obj.x, obj.y])
            row += 1
    plain = tabletop.TabletopData.generate(config, seeds[:1], tokenizer)
    with pytest.raises(Exception, match="labels"):
        plain.batch([0], labels=True)


# --- regressions of the restructuring (issue 10) ---------------------------------------------------


def test_the_world_tokenizer_ships_as_files_the_generator_reproduces(tmp_path, monkeypatch) -> None:
    from importlib import resources

    shipped = Path(str(resources.files("vla_lab.processing") / "tokenizers" / "tabletop"))
    written = world.write_world_tokenizer_files(tmp_path / "regenerated")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (written / name).read_bytes() == (shipped / name).read_bytes(), name
    # Building the tokenizer reads the files: no BPE training at run time.
    from vla_lab.processing import word_tokenizer

    monkeypatch.setattr(word_tokenizer, "train_word_bpe", lambda words: pytest.fail("the tokenizer was re-trained"))
    built = world.build_world_tokenizer()
    assert built.vocab_size == VLAConfig.preset("tabletop").llm["vocab_size"] == 381
    assert built.eos_token_id == 380
    # ... and it is the tokenizer the shipped models carry.
    saved = load_tokenizer_from_files(tabletop.shipped_path("causal"))
    text = build_prompt(" ".join(world.VOCABULARY), "openvla")
    assert built.encode(text) == saved.encode(text)


def test_data_is_rendered_at_the_model_image_size(tokenizer) -> None:
    """A variant with another resolution trains on native renders (no upsampling) and gets labels on its grid."""
    data = tiny_tabletop_config().to_dict()
    data["vision"]["image_sizes"] = [32, 32]
    for kwargs in data["vision"]["timm_kwargs"]:
        kwargs["patch_size"] = 8
    config = VLAConfig.from_dict(data)
    pool = tabletop.TabletopData.generate(config, world.split_seeds("train", 3), tokenizer, labels=True)
    assert pool.images.shape[2:4] == (32, 32)
    batch = pool.batch([0, 1], labels=True)
    assert batch["pixel_values"].shape[-2:] == (32, 32)
    assert batch["patch_labels"].shape == (2, 2 * 16, 2)
    native = world.sample_training_example(world.split_seeds("train", 1)[0], world.WorldConfig(image_size=32))
    assert np.array_equal(pool.images[0, 0], native.full_image)
    assert tabletop.world_config(config).image_size == 32


def test_models_do_not_share_their_configuration() -> None:
    from vla_lab import VLAAdapter

    config = tiny_tabletop_config()
    first, second = VLAAdapter(config), VLAAdapter(config)
    first.set_attention("bidirectional")
    assert first.attention.label == "bidirectional"
    assert second.attention.label == "causal" and config.attention == "causal"


def test_load_shipped_names_the_model_first_and_overrides_the_mask_with_attention() -> None:
    swapped = tabletop.load_shipped("causal", attention="bidirectional")
    assert swapped.attention.label == "bidirectional"
    assert swapped.checkpoint_path == tabletop.shipped_path("causal")
    assert tabletop.load_shipped("bidirectional").attention.label == "bidirectional"
    with pytest.raises(TypeError):
        tabletop.load_shipped("causal", mask="bidirectional")  # the old, inverted keyword is gone


def test_shipped_names_for_seeds_and_recipes() -> None:
    assert tabletop.shipped_name("causal") == "tabletop-causal"
    assert tabletop.shipped_name("bidirectional", seed=2) == "tabletop-bidirectional-seed2"
    assert tabletop.shipped_name("causal", recipe="no-target-aux") == "tabletop-causal-no-target-aux"
    linear = tabletop.shipped_name("causal", seed=1, recipe="linear-projector")
    assert linear == "tabletop-causal-linear-projector-seed1"
    for bad in ({"trained_with": "prefix"}, {"seed": -1}, {"seed": True}, {"recipe": "magic"}):
        with pytest.raises(InputError):
            tabletop.shipped_name(**{"trained_with": "causal", **bad})
    with pytest.raises(InputError, match="tabletop-causal"):
        tabletop.load_shipped("causal", seed=99)


def _train_config_against_seed_0(mask: str, path: Path) -> tuple[dict, set[str]]:
    """A shipped model's training configuration and the fields in which it differs from seed 0's."""
    stored = json.loads((path / "train_config.json").read_text())
    shipped = json.loads((tabletop.shipped_path(mask) / "train_config.json").read_text())
    return stored, {k for k in stored.keys() | shipped.keys() if stored.get(k) != shipped.get(k)}


@pytest.mark.parametrize("seed", [1, 2])
def test_the_other_seeds_are_shipped_in_the_released_layout(seed: int) -> None:
    for mask in tabletop.MASKS:
        stored, differing = _train_config_against_seed_0(mask, tabletop.shipped_path(mask, seed=seed))
        assert differing == {"seed"}
        assert stored["seed"] == seed and stored["attention"] == mask and stored["steps"] == 16000
        model = tabletop.load_shipped(mask, seed=seed)
        assert model.attention.label == mask
        other = tabletop.load_shipped(mask)
        assert not torch.equal(model.action_queries.weight, other.action_queries.weight)


@pytest.mark.parametrize(("recipe", "seed", "field", "value"), [
    ("linear-projector", 0, "projector", "linear"), ("linear-projector", 1, "projector", "linear"),
    ("v1-head", 0, "head_version", "v1")])
def test_the_architecture_variants_are_the_recipe_on_another_architecture(recipe: str, seed: int, field: str,
                                                                          value: str) -> None:
    path = tabletop.shipped_path("causal", seed=seed, recipe=recipe)
    stored, differing = _train_config_against_seed_0("causal", path)
    assert differing == ({"seed"} if seed else set()) and stored["seed"] == seed
    assert registry.architecture_of(path, "causal") == f"{field}={value}"  # only that field differs
    model = tabletop.load_shipped("causal", seed=seed, recipe=recipe)
    assert getattr(model.config, field) == value and model.attention.label == "causal"


def test_the_no_target_aux_models_are_the_seed_0_recipe_without_the_target_loss() -> None:
    for mask in tabletop.MASKS:
        stored, differing = _train_config_against_seed_0(mask, tabletop.shipped_path(mask, recipe="no-target-aux"))
        assert differing == {"aux_target_weight"} and stored["aux_target_weight"] == 0.0
        model = tabletop.load_shipped(mask, recipe="no-target-aux")
        assert model.attention.label == mask
