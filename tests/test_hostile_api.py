"""The Python API as strict as the command line: a model that predicts NaN or infinite actions is an error at
``forward``, ``predict_action`` and ``FastVLA`` (the one line the CLI prints); ``save_pretrained`` refuses
non-finite weights and loading refuses integer weight tensors, before anything is written or built; a keyword
nobody takes is an error, never silently dropped."""

from __future__ import annotations

import math
import re

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


@pytest.mark.parametrize("seed", ["abc", 1.5, True, -1, 2**32, 2**70])
def test_a_seed_that_is_no_integer_in_range_is_refused(seed) -> None:
    with pytest.raises(InputError, match=r"^seed: got .*, expected an integer in \[0, 2\*\*32\)$"):
        random_model(VLAConfig.preset("tiny"), seed=seed)


def test_seeds_are_python_or_numpy_integers() -> None:
    from vla_lab.errors import check_seed

    assert check_seed(np.int64(7)) == 7 and check_seed(2**32 - 1) == 2**32 - 1


@pytest.mark.parametrize("ids, shown", [
    (torch.tensor([[1.0, 2.0, 3.0]]), "dtype torch.float32"),
    (torch.tensor([[True, False]]), "dtype torch.bool"),
    ([1.5, 2.0], "1.5 (float)"),  # torch.tensor(..., dtype=long) would have truncated it to 1
    ([[1, 2], [3, "4"]], "'4' (str)"),
])
def test_token_ids_that_are_not_integers_are_refused(model, ids, shown) -> None:
    batch = forward_inputs(inputs(model))
    batch["input_ids"], batch["attention_mask"] = ids, None
    with torch.no_grad(), pytest.raises(InputError, match=rf"^input_ids: got {re.escape(shown)}, expected integer"):
        model(**batch)


def test_integer_token_ids_of_any_width_still_work(model) -> None:
    batch = forward_inputs(inputs(model))
    with torch.no_grad():
        wide = model(**batch).normalized_actions
        narrow = model(**{**batch, "input_ids": batch["input_ids"].to(torch.int32)}).normalized_actions
    assert torch.equal(wide, narrow)


def test_a_module_that_is_not_a_vla_adapter_is_refused_by_capture_and_save(tmp_path) -> None:
    from vla_lab import capture

    other = torch.nn.Linear(2, 2)
    expected = r"^model: got Linear, expected a vla_lab VLAAdapter"
    with pytest.raises(InputError, match=expected), capture(other):
        pass
    with pytest.raises(InputError, match=expected):
        run_with_cache(other, torch.zeros(1, 2))
    with pytest.raises(InputError, match=expected):
        save_pretrained(other, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("writer", ["save_file", "torch.save"])
def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing(model, tmp_path, monkeypatch, writer) -> None:
    """What safetensors and torch raise when the file system is full (seen on a 1 MB tmpfs)."""
    from vla_lab.model import checkpoint

    def full(*args, **kwargs):
        if writer == "save_file":
            from safetensors import SafetensorError

            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                  'message: "No space left on device" })')
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    if writer == "save_file":
        monkeypatch.setattr(checkpoint, "save_file", full)
    else:
        monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"ckpt: got an error writing .* expected a writable file system with "
                                              r"room for the checkpoint$") as caught:
        save_pretrained(model, tmp_path / "ckpt")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
