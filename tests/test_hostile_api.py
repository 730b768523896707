"""The Python API as strict as the command line: a model that predicts NaN or infinite actions is an error at
``forward``, ``predict_action`` and ``FastVLA`` (the one line the CLI prints); ``save_pretrained`` refuses
non-finite weights and loading refuses integer weight tensors, before anything is written or built; a keyword
nobody takes is an error, never silently dropped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from testkit import snapshot, tiny_tabletop_config

from vla_lab import VLAConfig, run_with_cache, tabletop
from vla_lab.errors import CheckpointError, InputError
from vla_lab.model import FastVLA, load_pretrained, random_model, save_pretrained
from vla_lab.model.inputs import forward_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
NAN_ACTIONS = r"^actions: the model predicted NaN or infinite values, expected finite actions"
IMAGE = np.full((64, 64, 3), 120, np.uint8)


@pytest.fixture(scope="module")
def model():
    return random_model(VLAConfig.preset("tiny"), seed=0).eval()


@pytest.fixture()
def poisoned(model):
    """The tiny model with one action-head weight set to ``value`` (restored afterwards)."""
    weight = model.action_head.model.fc2.weight
    saved = weight.detach().clone()

    def poison(value: float):
        with torch.no_grad():
            weight[0, 0] = value
        return model

    yield poison
    with torch.no_grad():
        weight.copy_(saved)


def inputs(model) -> dict:
    views = [IMAGE] * model.config.num_images
    return model.prepare_inputs(views, "pick up the red cube", [0.0] * model.config.robot.proprio_dim,
                                proprio_is_normalized=True)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_actions_are_refused_by_forward_predict_action_and_fast(poisoned, value) -> None:
    model = poisoned(value)
    batch = inputs(model)
    with torch.no_grad(), pytest.raises(InputError, match=NAN_ACTIONS):
        model(**forward_inputs(batch))
    with pytest.raises(InputError, match=NAN_ACTIONS):
        model.predict_action([IMAGE] * model.config.num_images, "pick up the red cube",
                             [0.0] * model.config.robot.proprio_dim, proprio_is_normalized=True)
    fast = FastVLA(model)
    with pytest.raises(InputError, match=NAN_ACTIONS):
        fast(**forward_inputs(batch))
    with pytest.raises(InputError, match=NAN_ACTIONS):
        fast.predict_action([IMAGE] * model.config.num_images, "pick up the red cube",
                            [0.0] * model.config.robot.proprio_dim, proprio_is_normalized=True)


def test_finite_actions_still_pass(model) -> None:
    out = model.predict_action([IMAGE] * model.config.num_images, "pick up the red cube",
                               [0.0] * model.config.robot.proprio_dim, proprio_is_normalized=True)
    assert np.isfinite(out.normalized_actions).all()


def test_save_pretrained_refuses_non_finite_weights_before_writing(poisoned, tmp_path) -> None:
    model = poisoned(math.inf)
    with pytest.raises(CheckpointError, match=r"^save_pretrained: weights hold NaN or infinite values in "
                                              r"action_head\.model\.fc2\.weight; expected finite numbers"):
        save_pretrained(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_save_pretrained_refuses_weights_that_overflow_the_file_dtype(model, tmp_path) -> None:
    """float16 tops out at 65504: a finite float32 weight of 1e6 would be written as inf."""
    with torch.no_grad():
        model.action_head.model.fc2.bias[0] = 1e6
    try:
        with pytest.raises(CheckpointError, match=r"^save_pretrained: .*action_head\.model\.fc2\.bias"):
            save_pretrained(model, tmp_path / "ckpt", dtype=torch.float16)
        assert not (tmp_path / "ckpt").exists()
    finally:
        with torch.no_grad():
            model.action_head.model.fc2.bias[0] = 0.0


def test_integer_weight_tensors_are_refused_at_load(tmp_path) -> None:
    directory = tmp_path / "ckpt"
    save_pretrained(tabletop.initial_model(tiny_tabletop_config(), seed=0), directory, step=1)
    weights = load_file(str(directory / "model.safetensors"))
    key = next(k for k in weights if "layers.0.mlp.up_proj" in k)
    weights[key] = weights[key].round().to(torch.int64)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    before = snapshot(directory)
    with pytest.raises(CheckpointError, match=r"^checkpoint: weights hold int64 tensors in "
                                              r"language_model\.model\.layers\.0\.mlp\.up_proj\.weight; expected "
                                              r"floating-point weights"):
        load_pretrained(directory)
    assert snapshot(directory) == before


def test_an_unknown_keyword_of_forward_is_an_error(model) -> None:
    batch = forward_inputs(inputs(model))
    with torch.no_grad(), pytest.raises(TypeError, match="unexpected keyword argument 'atention'"):
        model(**batch, atention="bidirectional")


def test_an_unknown_keyword_of_run_with_cache_is_an_error(model) -> None:
    batch = forward_inputs(inputs(model))
    with pytest.raises(InputError, match=r"^hiden_states: got an unknown keyword argument, expected a capture "
                                         r"option \[.*'hidden_states'.*\] or an argument of the model's forward"):
        run_with_cache(model, **batch, hiden_states=False)
    out, cache = run_with_cache(model, **batch, hidden_states=False, attention="bidirectional")
    assert out.attention.label == "bidirectional" and len(cache) > 0
