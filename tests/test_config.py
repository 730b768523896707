"""Configuration: presets, JSON round trip, validation with one-line errors."""

from __future__ import annotations

import json

import pytest

from vla_lab import AttentionSpec, RobotConfig, VLAConfig
from vla_lab.config import PRESETS, VISION_BACKBONES
from vla_lab.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    config = VLAConfig.preset(name)
    path = tmp_path / "config.json"
    config.to_json(path)
    again = VLAConfig.from_json(path)
    assert again == config
    assert VLAConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["name"] == name


def test_released_preset_fields():
    config = VLAConfig.preset("vla-adapter-pro-qwen2.5-0.5b")
    assert config.vision.timm_model_ids == [
        "vit_large_patch14_reg4_dinov2.lvd142m",
        "vit_so400m_patch14_siglip_224",
    ]
    assert config.vision.fused and config.num_images == 2 and config.projector == "fused-gelu-mlp"
    assert config.llm["hidden_size"] == 896 and config.num_llm_layers == 24
    assert (config.robot.chunk, config.robot.action_dim, config.robot.proprio_dim) == (8, 7, 8)
    assert config.head_version == "pro" and config.attention == "causal" and config.num_action_queries == 64
    assert VLAConfig.preset("vla-adapter-qwen2.5-0.5b").head_version == "v1"


def test_every_backbone_id_is_known():
    for backbone in VISION_BACKBONES:
        data = VLAConfig.preset("tiny").to_dict()
        data["vision"] = {"backbone_id": backbone}
        config = VLAConfig.from_dict(data)
        assert config.vision.fused == backbone.startswith(("dinosiglip", "dinoclip"))
    clip = VLAConfig.preset("tiny", vision={"backbone_id": "clip-vit-l-336px"})
    assert clip.vision.act_layers == ["quick_gelu"] and clip.vision.image_size == 336


def test_custom_timm_ids():
    config = VLAConfig.preset(
        "tiny",
        vision={"backbone_id": "custom", "timm_model_ids": ["vit_small_patch16_224"], "image_sizes": [64]},
        num_images=1,
    )
    assert not config.vision.fused and config.vision.channels_per_image == 3


@pytest.mark.parametrize(
    "spelling,canonical",
    [("no-align+fused-gelu-mlp", "fused-gelu-mlp"), ("no-align+gelu-mlp", "gelu-mlp"), ("linear", "linear")],
)
def test_projector_spellings(spelling, canonical):
    assert VLAConfig.preset("tiny", projector=spelling).projector == canonical


@pytest.mark.parametrize("name", ["libero", "calvin", "aloha", "bridge"])
def test_robot_presets(name):
    robot = RobotConfig.preset(name)
    expected = {"libero": (8, 7, 8), "calvin": (8, 7, 8), "aloha": (25, 14, 14), "bridge": (5, 7, 7)}[name]
    assert (robot.chunk, robot.action_dim, robot.proprio_dim) == expected
    assert robot.normalization == ("bounds" if name == "aloha" else "bounds_q99")


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"vision": {"backbone_id": "resnet-50"}}, "vision.backbone_id"),
        ({"projector": "mlp"}, "projector"),
        ({"num_images": 4}, "num_images"),
        ({"head_version": "v2"}, "head_version"),
        ({"robot": "franka"}, "robot"),
        ({"attention": "sideways"}, "attention"),
        ({"attention": {"base": "causal", "block": [["vision", "actions"]]}}, "segment"),
        ({"attn_kernel": "flash"}, "attn_kernel"),
        ({"hidden_offset": "left"}, "hidden_offset"),
        ({"head_num_heads": 5}, "head_num_heads"),
        ({"llm": {"model_type": "llama", "hidden_size": 32}}, "llm.model_type"),
    ],
)
def test_bad_fields_give_one_line_errors(overrides, field):
    with pytest.raises(ConfigError) as info:
        VLAConfig.preset("tiny", **overrides)
    message = str(info.value)
    assert "\n" not in message and field in message and "expected" in message


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="preset"):
        VLAConfig.preset("huge")
    with pytest.raises(ConfigError, match="unknown field"):
        VLAConfig.from_dict({"colour": "red"})


def test_attention_specs_round_trip():
    custom = {"base": "bidirectional", "allow": [], "block": [["vision", "action_queries"]], "name": None}
    config = VLAConfig.preset("tiny", attention=custom)
    assert config.attention == custom
    spec = AttentionSpec.parse(config.attention)
    assert spec.block == (("vision", "action_queries"),)
    assert spec.label == "bidirectional -vision->action_queries"
    assert AttentionSpec.parse("prefix-lm").to_config() == "prefix-lm"
