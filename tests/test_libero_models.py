"""The shipped LIBERO models (vla_lab.libero.models): they load by name, say what they were trained on, and
the evaluation renders at their demonstrations' resolution. LIBERO itself is not needed here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vla_lab.cli import build_parser
from vla_lab.cli.libero import camera_resolution
from vla_lab.errors import InputError
from vla_lab.libero.models import MASKS, SHIPPED, demos_manifest, load_shipped, shipped_name, shipped_path

SUITE = "libero_spatial"


@pytest.fixture(scope="module")
def models():
    return {mask: load_shipped(mask) for mask in MASKS}


def test_both_masks_are_shipped_from_one_recipe_and_seed(models) -> None:
    assert SHIPPED == ("libero-spatial-causal", "libero-spatial-bidirectional")
    configs = {m: json.loads((shipped_path(m) / "train_config.json").read_text()) for m in MASKS}
    for mask, model in models.items():
        assert model.config.name == "libero-small" and model.config.attention == mask
        assert sum(p.numel() for p in model.parameters()) == 1_150_006
        assert SUITE in model.config.norm_stats
        assert configs[mask]["attention"] == mask and configs[mask]["steps"] == 12_000
    # Everything but the mask is the same recipe: same seed, steps, data, augmentation.
    a, b = (dict(configs[m]) for m in MASKS)
    a.pop("attention"), b.pop("attention")
    assert a == b
    first, second = (load_file(str(shipped_path(m) / "model.safetensors")) for m in MASKS)
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first), "each mask was trained separately"


def test_the_manifest_names_the_training_demonstrations_and_holds_out_40_to_49() -> None:
    for mask in MASKS:
        manifest = demos_manifest(shipped_path(mask))
        assert manifest is not None and manifest["suite"] == SUITE and manifest["resolution"] == 128
        init_states = {int(i) for task in manifest["tasks"].values() for i in task["init_states"]}
        assert init_states <= set(range(40)) and not init_states & set(range(40, 50))


def test_eval_renders_at_the_demonstrations_resolution_unless_told(tmp_path) -> None:
    parser = build_parser()
    common = ["eval", "libero", "--suite", SUITE, "--out", str(tmp_path / "run")]
    args = parser.parse_args([*common, "--model", shipped_name("bidirectional")])
    assert camera_resolution(args) == 128
    assert camera_resolution(parser.parse_args([*common, "--model", shipped_name("causal"), "--resolution",
                                                "256"])) == 256
    assert camera_resolution(parser.parse_args([*common, "--model", str(shipped_path("causal"))])) == 128
    assert camera_resolution(parser.parse_args([*common, "--model", "libero-small"])) == 256  # upstream's


def test_the_models_act_on_a_libero_instruction(models) -> None:
    """A forward pass on a grey frame pair: finite chunks in robot units, deterministic, different per mask."""
    instruction = demos_manifest(shipped_path("causal"))["tasks"]["0"]["instruction"]
    image = np.full((128, 128, 3), 127, np.uint8)
    state = np.zeros(8, np.float32)
    chunks = {}
    for mask, model in models.items():
        first = model.predict_action([image, image], instruction, proprio=state, unnorm_key=SUITE)
        again = model.predict_action([image, image], instruction, proprio=state, unnorm_key=SUITE)
        assert first.actions is not None and first.actions.shape == (1, model.config.robot.chunk, 7)
        assert np.isfinite(first.actions).all() and np.array_equal(first.actions, again.actions)
        chunks[mask] = first.actions
    assert not np.allclose(chunks["causal"], chunks["bidirectional"])


def test_an_unknown_mask_is_one_input_error() -> None:
    with pytest.raises(InputError, match="trained_with: got 'sideways'"):
        load_shipped("sideways")
