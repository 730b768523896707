"""Checkpoints in the released layout: names and shapes, hand-written released directories, round trips, bad files.

The released-layout directories here are written by hand (safetensors + ``torch.save`` of plain state dicts),
not with :meth:`vla_lab.VLAAdapter.save_pretrained`, so that loading is checked against the file layout
itself. Their vision towers are timm's ``test_vit2`` (LayerScale + a register token, like DINOv2) and
``test_vit`` (no LayerScale): real timm ids at a tiny size with equal 4 x 4 patch grids at 64 px, which a
released ``config.json`` can name (it has no room for per-model width overrides).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from testkit import (
    DATA,
    NORM_STATS,
    RAW_PROPRIO,
    TEST_IMAGE_SIZE,
    TEST_TIMM_IDS,
    data_path,
    file_tensors,
    make_inputs,
    random_images,
    randomize,
    released_test_config,
    shrink,
    write_released,
)

from vla_lab import VLAAdapter, VLAConfig
from vla_lab.errors import CheckpointError, ExportError, InputError
from vla_lab.model import load_pretrained, meta_model, save_pretrained
from vla_lab.model.action_head import L1RegressionActionHead
from vla_lab.model.checkpoint import config_from_released, from_released_key, split_state_dict, to_released_key
from vla_lab.processing import VLAProcessor
from vla_lab.processing.tokenizer import load_qwen25_tokenizer

PRO_PRESET, V1_PRESET = "vla-adapter-pro-qwen2.5-0.5b", "vla-adapter-qwen2.5-0.5b"
HEAD_SECTION = {"pro": "action_head (Pro)", "v1": "action_head (v1)"}
INSTRUCTION = "Put the Red Block in the Bowl"

def rounded_copy(model: VLAAdapter, dtype: torch.dtype) -> VLAAdapter:
    """A float32 copy of ``model`` holding its weights rounded through ``dtype`` (what the files hold)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(dtype).float())
    return ref


def assert_same_state(loaded: VLAAdapter, ref: VLAAdapter, dtype: torch.dtype) -> None:
    got, want = loaded.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == dtype, key
        assert torch.equal(got[key], value.to(dtype)), key


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def released_models() -> dict[str, VLAAdapter]:
    """One random tiny model per head version, built from the equivalent VLAConfig."""
    models = {}
    for i, version in enumerate(("pro", "v1")):
        torch.manual_seed(10 + i)
        models[version] = randomize(VLAAdapter(released_test_config(version)), seed=20 + i).eval()
    return models


# =================================================================================================
# Full-size names and shapes (meta device, no weights)
# =================================================================================================


def released_keys() -> dict:
    return json.loads(data_path("released_checkpoint_keys.json").read_text())


@pytest.mark.parametrize("preset, version", [(PRO_PRESET, "pro"), (V1_PRESET, "v1")])
def test_full_size_preset_has_the_released_keys_and_shapes(preset, version):
    ref = released_keys()
    model = meta_model(VLAConfig.preset(preset))
    parts = split_state_dict(model.state_dict(), model.config)
    assert all(t.is_meta for part in parts.values() for t in part.values())
    sections = {
        "model": "model.safetensors",
        "action_head": HEAD_SECTION[version],
        "proprio_projector": "proprio_projector",
    }
    for ours, theirs in sections.items():
        got = {k: list(v.shape) for k, v in parts[ours].items()}
        want = ref[theirs]
        assert sorted(set(want) - set(got)) == [], f"{ours}: missing"
        assert sorted(set(got) - set(want)) == [], f"{ours}: unexpected"
        assert {k: v for k, v in got.items() if v != want[k]} == {}, f"{ours}: mis-shaped"
    assert "language_model.lm_head.weight" not in parts["model"]


def test_layerscale_names_map_both_ways():
    ref = released_keys()["model.safetensors"]
    scale = [k for k in ref if k.endswith("scale_factor")]
    # DINOv2-L has LayerScale in all 24 blocks; SigLIP has none.
    assert len(scale) == 48 and all(".featurizer." in k for k in scale)
    ours = meta_model(VLAConfig.preset(PRO_PRESET)).state_dict()
    for key in ref:
        assert from_released_key(key) in ours
        assert to_released_key(from_released_key(key)) == key
    assert from_released_key(scale[0]).endswith(".gamma")


@pytest.mark.parametrize("preset, version", [(PRO_PRESET, "pro"), (V1_PRESET, "v1")])
def test_released_config_json_gives_the_full_size_architecture(preset, version):
    """The real config.json + tensors of the released shapes -> the preset's architecture, all keys fitting."""
    ref = released_keys()
    config_json = json.loads(data_path("released_checkpoint", "config.json").read_text())

    def meta(section: str) -> dict[str, torch.Tensor]:
        return {k: torch.empty(shape, device="meta") for k, shape in ref[section].items()}

    weights, head, proprio = meta("model.safetensors"), meta(HEAD_SECTION[version]), meta("proprio_projector")
    config = config_from_released(config_json, weights, head, proprio, 2, None)
    expected = VLAConfig.preset(preset)
    assert config.vision.timm_model_ids == expected.vision.timm_model_ids
    assert config.vision.image_sizes == [224, 224] and config.vision.fused
    assert config.vision.backbone_id == "dinosiglip-vit-so-224px"
    assert config.projector == "fused-gelu-mlp"
    assert config.head_version == version
    assert config.robot == expected.robot and config.use_proprio
    assert config.num_action_queries == 64
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert config.llm[key] == expected.llm[key]
    assert len(config.norm_stats) == 25
    model = meta_model(config)
    state = {from_released_key(k): v for k, v in weights.items()}
    state.update({f"action_head.{k}": v for k, v in head.items()})
    state.update({f"proprio_projector.{k}": v for k, v in proprio.items()})
    expected_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "language_model.lm_head.weight"}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes


def test_hand_written_files_use_the_released_names(tmp_path, released_models):
    """The writer of this module produces the released key patterns for every non-vision part."""
    ref = released_keys()

    def patterns(keys) -> set[str]:
        return {re.sub(r"\.\d+\.", ".N.", k) for k in keys if not k.startswith("vision_backbone.")}

    for version, model in released_models.items():
        parts = file_tensors(model, torch.bfloat16)
        assert patterns(parts["model"]) == patterns(ref["model.safetensors"])
        assert patterns(parts["action_head"]) == patterns(ref[HEAD_SECTION[version]])
        assert set(parts["proprio_projector"]) == set(ref["proprio_projector"])
    scale = [k for k in parts["model"] if "scale_factor" in k]
    assert scale and not any(k.endswith(".gamma") for k in parts["model"])


# =================================================================================================
# Hand-written released directories -> load_pretrained
# =================================================================================================

CASES = [
    # head, file dtype, shards, .pt key prefix, step names
    pytest.param("pro", torch.bfloat16, 1, "module.", ("latest",), id="pro-bf16-single-ddp-latest"),
    pytest.param("v1", torch.float32, 3, "", (20000,), id="v1-fp32-sharded-plain-step"),
    pytest.param("pro", torch.float32, 2, "module.", (150000,), id="pro-fp32-sharded-ddp-step"),
    pytest.param("v1", torch.bfloat16, 1, "", ("latest",), id="v1-bf16-single-plain-latest"),
]


@pytest.mark.parametrize("version, dtype, shards, prefix, steps", CASES)
def test_load_hand_written_released_directory(tmp_path, released_models, version, dtype, shards, prefix, steps):
    model = released_models[version]
    directory = write_released(tmp_path / "ckpt", model, dtype=dtype, prefix=prefix, steps=steps, shards=shards)
    loaded = load_pretrained(directory, dtype=torch.float32)

    # Everything inferred from config.json and the key shapes.
    config = loaded.config
    assert config.head_version == version
    assert config.vision.timm_model_ids == TEST_TIMM_IDS and config.vision.image_size == TEST_IMAGE_SIZE
    assert config.projector == "fused-gelu-mlp" and config.use_proprio and config.num_images == 2
    assert config.robot.name == "libero" and (config.robot.chunk, config.robot.action_dim) == (8, 7)
    assert config.llm_dim == 32 and config.num_llm_layers == 2
    assert config.attention == "causal"
    assert config.norm_stats == NORM_STATS  # dataset_statistics.json wins over config.json's mixture stats

    # The caller's dtype wins: float32 parameters holding the file's (possibly bf16-rounded) values.
    ref = rounded_copy(model, dtype)
    assert_same_state(loaded, ref, torch.float32)
    assert loaded.language_model.lm_head.weight.data_ptr() == loaded.language_model.model.embed_tokens.weight.data_ptr()

    # Identical actions to a model holding the same tensors, raw images + instruction + raw proprio in.
    ref.processor = loaded.processor
    images = random_images(0)
    got = loaded.predict_action(images, INSTRUCTION, RAW_PROPRIO)
    want = ref.predict_action(images, INSTRUCTION, RAW_PROPRIO)
    np.testing.assert_array_equal(got.normalized_actions, want.normalized_actions)
    np.testing.assert_array_equal(got.actions, want.actions)
    assert got.actions.shape == (1, 8, 7) and got.unnorm_key == "libero_spatial_no_noops"
    assert loaded.processor.image_processor.config.image_size == TEST_IMAGE_SIZE


def test_caller_dtype_wins_both_ways(tmp_path, released_models):
    model = released_models["pro"]
    bf16_dir = write_released(tmp_path / "bf16", model, dtype=torch.bfloat16)
    fp32_dir = write_released(tmp_path / "fp32", model, dtype=torch.float32)
    files = load_file(str(bf16_dir / "model.safetensors"))
    assert {t.dtype for t in files.values()} == {torch.bfloat16}
    assert "language_model.lm_head.weight" not in files
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in files

    as_bf16 = load_pretrained(bf16_dir, dtype=torch.bfloat16)
    state = as_bf16.state_dict()
    for key, tensor in files.items():
        assert torch.equal(state[from_released_key(key)], tensor), key
    assert {p.dtype for p in as_bf16.parameters()} == {torch.bfloat16}

    as_fp32 = load_pretrained(bf16_dir, dtype="float32")
    assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}
    for key, tensor in files.items():
        assert torch.equal(as_fp32.state_dict()[from_released_key(key)], tensor.float()), key

    # float32 files loaded in bf16 equal bf16 files loaded in bf16.
    down = load_pretrained(fp32_dir, dtype=torch.bfloat16)
    assert_same_state(down, as_bf16, torch.bfloat16)
    inputs = make_inputs(model.config, [9])
    with torch.no_grad():
        out = down(**inputs).normalized_actions
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_step_selection(tmp_path, released_models):
    model = released_models["v1"]
    directory = write_released(tmp_path / "ckpt", model, dtype=torch.float32, steps=(1000, "latest"))
    other = copy.deepcopy(model)
    randomize(other.action_head, seed=99)
    randomize(other.proprio_projector, seed=98)
    parts = file_tensors(other, torch.float32)
    head = {"module." + k: v for k, v in parts["action_head"].items()}
    torch.save(head, directory / "action_head--2000_checkpoint.pt")
    torch.save(parts["proprio_projector"], directory / "proprio_projector--2000_checkpoint.pt")

    with pytest.raises(CheckpointError, match="step="):
        load_pretrained(directory)
    with pytest.raises(CheckpointError, match="step 3000"):
        load_pretrained(directory, step=3000)
    inputs = make_inputs(model.config, [6])
    for step, source in ((1000, model), ("latest", model), (2000, other), ("2000", other)):
        loaded = load_pretrained(directory, step=step)
        assert_same_state(loaded, source, torch.float32)
        with torch.no_grad():
            assert torch.equal(loaded(**inputs).normalized_actions, source(**inputs).normalized_actions)


def test_tokenizer_files_in_the_directory(tmp_path, released_models):
    """Released tokenizer files are read (and written again on save); they encode like the offline Qwen2.5."""
    source = data_path("released_checkpoint")
    model = released_models["v1"]
    directory = write_released(tmp_path / "ckpt", model, dtype=torch.float32)
    names = ["vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"]
    for name in names:
        (directory / name).write_bytes((source / name).read_bytes())
    loaded = load_pretrained(directory)
    assert not loaded.processor.tokenizer.is_stock_qwen25
    images = random_images(1)
    got = loaded.predict_action(images, INSTRUCTION, RAW_PROPRIO)
    ref = copy.deepcopy(model)
    ref.processor = VLAProcessor(loaded.processor.image_processor, load_qwen25_tokenizer(), 2)
    want = ref.predict_action(images, INSTRUCTION, RAW_PROPRIO)
    assert got.input_ids == want.input_ids
    np.testing.assert_array_equal(got.actions, want.actions)
    out = save_pretrained(loaded, tmp_path / "again")
    assert all((out / name).exists() for name in names)
    again = load_pretrained(out)
    assert again.predict_action(images, INSTRUCTION, RAW_PROPRIO).input_ids == got.input_ids


def test_no_remote_code_and_weights_only(tmp_path, released_models, monkeypatch):
    directory = write_released(tmp_path / "ckpt", released_models["pro"])
    marker = tmp_path / "remote-code-ran"
    for module in ("configuration_prismatic", "modeling_prismatic", "processing_prismatic"):
        (directory / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.syspath_prepend(str(directory))
    load_pretrained(directory)
    assert calls and all(flag is True for flag in calls), calls
    assert not marker.exists()
    assert not {"configuration_prismatic", "modeling_prismatic", "processing_prismatic"} & set(sys.modules)


def test_released_directory_survives_save_and_load(tmp_path, released_models):
    model = released_models["pro"]
    first = load_pretrained(write_released(tmp_path / "released", model, dtype=torch.float32))
    out = save_pretrained(first, tmp_path / "ours")
    again = load_pretrained(out)
    assert_same_state(again, first, torch.float32)
    # Our config.json alone (no vla_lab_config.json) describes this model too.
    (out / "vla_lab_config.json").unlink()
    plain = load_pretrained(out)
    assert_same_state(plain, first, torch.float32)
    inputs = make_inputs(model.config, [5])
    with torch.no_grad():
        want = first(**inputs).normalized_actions
        assert torch.equal(again(**inputs).normalized_actions, want)
        assert torch.equal(plain(**inputs).normalized_actions, want)


def test_saved_files_have_the_released_layout(tmp_path, tiny_model):
    out = save_pretrained(tiny_model, tmp_path / "ckpt", step=500, dtype=torch.bfloat16)
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "dataset_statistics.json",
        "preprocessor_config.json",
        "action_head--500_checkpoint.pt",
        "proprio_projector--500_checkpoint.pt",
    } <= names
    weights = load_file(str(out / "model.safetensors"))
    assert "language_model.lm_head.weight" not in weights
    assert any(k.endswith(".ls1.scale_factor") for k in weights) and not any(k.endswith(".gamma") for k in weights)
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    head = torch.load(out / "action_head--500_checkpoint.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in head.values()) and "model.fc1.weight" in head
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["model_type"] == "openvla" and config_json["torch_dtype"] == "bfloat16"
    released = DATA / "released_checkpoint"
    if released.exists():
        assert set(json.loads((released / "config.json").read_text())) <= set(config_json)
        assert set(json.loads((released / "preprocessor_config.json").read_text())) - {"auto_map"} <= set(
            json.loads((out / "preprocessor_config.json").read_text())
        )


# =================================================================================================
# save_pretrained -> load_pretrained round trips (vla_lab_config.json path)
# =================================================================================================


@pytest.mark.parametrize(
    "mode", ["causal", "bidirectional", "prefix-lm", {"base": "bidirectional", "block": [["vision", "action_queries"]]}]
)
def test_round_trip_is_exact_in_float32(tmp_path, tiny_model, mode):
    tiny_model.set_attention(mode)
    out = save_pretrained(tiny_model, tmp_path / "ckpt")
    loaded = load_pretrained(out)
    assert loaded.config.attention == tiny_model.config.attention
    assert_same_state(loaded, tiny_model, torch.float32)
    inputs = make_inputs(tiny_model.config, [7, 4], seed=3)
    with torch.no_grad():
        for attention in (None, "causal", "bidirectional"):  # None: the saved mode
            got = loaded(**inputs, attention=attention)
            want = tiny_model(**inputs, attention=attention)
            assert torch.equal(got.normalized_actions, want.normalized_actions)
            assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, want.hidden_states))
    # The attention argument of load_pretrained overrides the saved mode.
    other = "bidirectional" if mode == "causal" else "causal"
    switched = load_pretrained(out, attention=other)
    assert switched.config.attention == other
    with torch.no_grad():
        assert torch.equal(
            switched(**inputs).normalized_actions, tiny_model(**inputs, attention=other).normalized_actions
        )


def test_round_trip_sharded_bf16_ddp_v1(tmp_path):
    torch.manual_seed(0)
    model = randomize(VLAAdapter(shrink(VLAConfig.preset(V1_PRESET))), seed=4).eval()
    out = save_pretrained(
        model, tmp_path / "ckpt", step="latest", dtype=torch.bfloat16, max_shard_bytes=2_000_000, ddp_prefix=True
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    assert not (out / "model.safetensors").exists()
    head = torch.load(out / "action_head--latest_checkpoint.pt", weights_only=True)
    assert all(k.startswith("module.") for k in head)
    loaded = load_pretrained(out)
    assert loaded.config.head_version == "v1"
    ref = rounded_copy(model, torch.bfloat16)
    assert_same_state(loaded, ref, torch.float32)
    inputs = make_inputs(model.config, [6])
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).normalized_actions, ref(**inputs).normalized_actions)


# =================================================================================================
# Bad input: one clear error, nothing loaded or written
# =================================================================================================


@pytest.fixture()
def good_dir(tmp_path, released_models) -> Path:
    return write_released(tmp_path / "ckpt", released_models["pro"], dtype=torch.float32, prefix="module.")


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(
    "remove, named",
    [
        ("config.json", "config.json"),
        ("model.safetensors", "model.safetensors"),
        ("action_head--latest_checkpoint.pt", "action_head"),
    ],
)
def test_missing_file(good_dir, remove, named):
    (good_dir / remove).unlink()
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(good_dir)
    assert named in one_line(exc)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="expected a checkpoint directory"):
        load_pretrained(tmp_path / "nowhere")


def test_missing_shard_and_bad_index(tmp_path, released_models):
    directory = write_released(tmp_path / "ckpt", released_models["v1"], shards=2)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(directory)
    assert "model-00002-of-00002.safetensors" in one_line(exc)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="weight_map"):
        load_pretrained(directory)


def test_every_key_problem_in_one_error(good_dir):
    weights = load_file(str(good_dir / "model.safetensors"))
    del weights["projector.fc2.bias"]  # missing
    weights["language_model.model.layers.0.mlp.extra.weight"] = torch.zeros(3)  # unexpected
    weights["action_queries.weight"] = torch.zeros(64, 33)  # mis-shaped
    weights["vision_backbone.featurizer.blocks.0.ls1.scale_factor"] = torch.zeros(5)  # mis-shaped
    save_file(weights, str(good_dir / "model.safetensors"))
    head = torch.load(good_dir / "action_head--latest_checkpoint.pt", weights_only=True)
    del head["module.model.mlp_resnet_blocks.1.q_proj.weight"]  # missing, in another file
    del head["module.model.fc2.weight"]  # missing, and the key action_dim is read from
    torch.save(head, good_dir / "action_head--latest_checkpoint.pt")
    proprio = torch.load(good_dir / "proprio_projector--latest_checkpoint.pt", weights_only=True)
    proprio["module.fc3.weight"] = torch.zeros(2, 2)  # unexpected, in a third file
    del proprio["module.fc1.weight"]  # missing, and the key proprio_dim is read from
    torch.save(proprio, good_dir / "proprio_projector--latest_checkpoint.pt")

    with pytest.raises(CheckpointError) as exc:
        load_pretrained(good_dir)
    message = one_line(exc)
    for part in (
        "missing",
        "projector.fc2.bias",
        "action_head.model.mlp_resnet_blocks.1.q_proj.weight",
        "action_head.model.fc2.weight",
        "proprio_projector.fc1.weight",
        "unexpected",
        "language_model.model.layers.0.mlp.extra.weight",
        "proprio_projector.fc3.weight",
        "mis-shaped",
        "action_queries.weight (64, 33) vs (64, 32)",
        "vision_backbone.featurizer.blocks.0.ls1.scale_factor (5,)",
    ):
        assert part in message, part


def test_head_width_disagrees_with_llm(good_dir):
    wide = L1RegressionActionHead(64, 2, 8, 7, version="pro", num_heads=8)
    torch.save(wide.state_dict(), good_dir / "action_head--latest_checkpoint.pt")
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(good_dir)
    assert "64" in one_line(exc) and "32" in str(exc.value)


def test_head_depth_disagrees_with_llm(good_dir):
    deep = L1RegressionActionHead(32, 3, 8, 7, version="pro", num_heads=8)
    torch.save(deep.state_dict(), good_dir / "action_head--latest_checkpoint.pt")
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(good_dir)
    assert "blocks" in one_line(exc)


class Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class Holder:
    def __init__(self) -> None:
        self.weight = torch.zeros(2)


@pytest.mark.parametrize("component", ["action_head", "proprio_projector"])
@pytest.mark.parametrize("kind", ["reduce-payload", "class-instance", "not-tensors"])
def test_pickled_objects_are_refused(good_dir, tmp_path, component, kind):
    marker = tmp_path / "executed"
    target = good_dir / f"{component}--latest_checkpoint.pt"
    payloads = {
        "reduce-payload": {"model.fc1.weight": Payload(marker)},
        "class-instance": Holder(),
        "not-tensors": {"model.fc1.weight": [1.0, 2.0]},
    }
    torch.save(payloads[kind], target)
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(good_dir)
    assert target.name in one_line(exc)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["model.safetensors", "action_head--latest_checkpoint.pt"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_files(good_dir, target, damage):
    path = good_dir / target
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07not a weight file" * 8)
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(good_dir)
    assert target in one_line(exc)


def edit_config(directory: Path, change) -> None:
    path = directory / "config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.clear(), "lacks 'timm_model_ids'"),
        (lambda c: c["text_config"].pop("hidden_size"), "lacks 'hidden_size'"),
        (lambda c: c.update(image_sizes=[64, 32]), "vision.image_sizes"),
        (lambda c: c.update(use_fused_vision_backbone=False), "vision.fused"),
        (lambda c: c["text_config"].update(model_type="llama"), "llm.model_type"),
    ],
)
def test_unusable_config_json(good_dir, change, message):
    edit_config(good_dir, change)
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(good_dir)
    assert message in one_line(exc) and "config.json" in str(exc.value)


@pytest.mark.parametrize(
    "name, text, error, message",
    [
        ("config.json", "{not json", CheckpointError, "config.json is not valid JSON"),
        ("dataset_statistics.json", "[1, 2]", CheckpointError, "dataset_statistics.json"),
        ("preprocessor_config.json", "{}", CheckpointError, "preprocessor_config"),
        ("model.safetensors.index.json", "{}", CheckpointError, "weight_map"),
    ],
)
def test_malformed_side_files(good_dir, name, text, error, message):
    (good_dir / name).write_text(text)
    with pytest.raises(error) as exc:
        load_pretrained(good_dir)
    assert message in one_line(exc)


@pytest.mark.parametrize("dtype", ["float64x", "int8", torch.int32, 3])
def test_bad_dtype(good_dir, dtype):
    with pytest.raises(InputError, match="dtype"):
        load_pretrained(good_dir, dtype=dtype)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_save_refuses_to_overwrite(tmp_path, tiny_model):
    out = save_pretrained(tiny_model, tmp_path / "ckpt", step=100)
    before = snapshot(out)
    changed = copy.deepcopy(tiny_model)
    randomize(changed, seed=7)
    for step in (100, 200, None):
        with pytest.raises(ExportError) as exc:
            save_pretrained(changed, out, step=step)
        assert "overwrite=True" in one_line(exc)
        assert snapshot(out) == before  # nothing replaced, nothing added
    save_pretrained(changed, out, step=100, overwrite=True)
    assert snapshot(out).keys() == before.keys()
    assert_same_state(load_pretrained(out), changed, torch.float32)


@pytest.mark.parametrize("existing, save_tokenizer", [("config.json", None), ("vocab.json", True)])
def test_save_refuses_any_existing_file(tmp_path, released_models, existing, save_tokenizer):
    """A released config.json, or tokenizer files when the tokenizer is saved: nothing is written at all."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / existing).write_text("{}")
    with pytest.raises(ExportError) as exc:
        save_pretrained(released_models["pro"], directory, save_tokenizer=save_tokenizer)
    assert existing in one_line(exc)
    assert [p.name for p in directory.iterdir()] == [existing]
    assert (directory / existing).read_text() == "{}"
