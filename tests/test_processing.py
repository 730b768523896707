"""Observation -> model inputs (released prompt, tokenizer, image processor) and the dataset-statistics maths."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from testkit import LIBERO_IDS_PREFIX, data_path

from vla_lab import VLAConfig
from vla_lab.errors import InputError
from vla_lab.processing import VLAProcessor, build_prompt
from vla_lab.processing.images import ImageProcessor, ImageProcessorConfig
from vla_lab.processing.normalization import (
    normalize_actions,
    normalize_proprio,
    resolve_unnorm_key,
    unnormalize_actions,
)
from vla_lab.processing.tokenizer import load_qwen25_tokenizer
from vla_lab.processing.tokenizer_files import load_tokenizer_from_files

LIBERO_PROMPT = (
    "In: What action should the robot take to pick up the black bowl between the plate and the ramekin "
    "and place it on the plate?\nOut:"
)
LIBERO_CHAT_PROMPT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat action should the robot take to pick up the black bowl between the plate and the "
    "ramekin and place it on the plate?<|im_end|>\n<|im_start|>assistant\n"
)
#: The chat prompt's first ids: <|im_start|> system \n You are Qwen
CHAT_IDS_PREFIX = [151644, 8948, 198, 2610, 525, 1207]


pytestmark = pytest.mark.usefixtures("one_thread")


def fixture_observation() -> tuple[list[np.ndarray], np.ndarray, str]:
    data = np.load(data_path("libero_spatial_observation.npz"))
    meta = json.loads(data_path("libero_spatial_observation.json").read_text())
    return [data["full_image"], data["wrist_image"]], data["state"], meta["task_description"]


def released_dir():
    return data_path("released_checkpoint")


@pytest.fixture(scope="module")
def released_tokenizer():
    return load_tokenizer_from_files(released_dir())


# =================================================================================================
# Prompt and tokens
# =================================================================================================


def test_fixture_prompt():
    _, state, instruction = fixture_observation()
    assert state.shape == (8,)
    assert build_prompt(instruction, "qwen-chat") == LIBERO_CHAT_PROMPT
    assert build_prompt(instruction, "openvla") == LIBERO_PROMPT


def test_prompt_lower_cases_and_rejects_empty():
    in_out = "In: What action should the robot take to open the drawer?\nOut:"
    assert build_prompt("Open The Drawer", "openvla") == in_out
    assert "user\nWhat action should the robot take to open the drawer?<|im_end|>" in build_prompt(
        "Open The Drawer", "qwen-chat")
    for bad in ("", "   ", None, 3):
        with pytest.raises(InputError, match="^instruction: "):
            build_prompt(bad, "qwen-chat")
    with pytest.raises(InputError, match="^prompt: got 'chatml', expected one of"):
        build_prompt("open the drawer", "chatml")


@pytest.mark.parametrize("source", ["offline", "released files"])
@pytest.mark.parametrize("prompt", ["qwen-chat", "openvla"])
def test_fixture_prompt_token_ids(source, prompt, request):
    _, _, instruction = fixture_observation()
    tokenizer = load_qwen25_tokenizer() if source == "offline" else request.getfixturevalue("released_tokenizer")
    processor = VLAProcessor(ImageProcessor(ImageProcessorConfig()), tokenizer, num_images=2, prompt=prompt)
    batch = processor.tokenize([instruction])
    ids = batch["input_ids"][0].tolist()
    text = LIBERO_CHAT_PROMPT if prompt == "qwen-chat" else LIBERO_PROMPT
    assert len(ids) == (56 if prompt == "qwen-chat" else 31)
    assert ids[:6] == (CHAT_IDS_PREFIX if prompt == "qwen-chat" else LIBERO_IDS_PREFIX[:6])
    assert ids == tokenizer(text)["input_ids"]
    assert batch["attention_mask"].tolist() == [[1] * len(ids)]
    assert tokenizer.decode(ids) == text
    assert tokenizer.bos_token_id is None  # no BOS: token 0 of the sequence is the first prompt token
    # A call's prompt= overrides the processor's.
    other = "openvla" if prompt == "qwen-chat" else "qwen-chat"
    assert processor.tokenize([instruction], other)["prompts"] == [build_prompt(instruction, other)]


def test_a_tokenizer_without_chat_tokens_refuses_the_chat_prompt():
    from vla_lab.processing import builtin_tokenizer

    for name in ("tabletop", "libero"):
        tokenizer = builtin_tokenizer(name)
        refused = r"^prompt: got 'qwen-chat', expected one of \('openvla',\) .*<\|im_start\|>"
        with pytest.raises(InputError, match=refused):
            VLAProcessor(ImageProcessor(ImageProcessorConfig()), tokenizer, num_images=2)
        processor = VLAProcessor(ImageProcessor(ImageProcessorConfig()), tokenizer, num_images=2, prompt="openvla")
        with pytest.raises(InputError, match="^prompt: got 'qwen-chat'"):
            processor.tokenize(["open the drawer"], "qwen-chat")


def test_batch_is_right_padded():
    processor = VLAProcessor(ImageProcessor(ImageProcessorConfig()), load_qwen25_tokenizer(), num_images=1)
    batch = processor.tokenize(["open the drawer", "pick up the black bowl between the plate and the ramekin"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(1).tolist()
    assert lengths[0] < lengths[1] == ids.shape[1]
    assert mask[0].tolist() == [1] * lengths[0] + [0] * (ids.shape[1] - lengths[0])
    assert ids[0, lengths[0] :].eq(0).all()
    assert ids[0, : lengths[0]].tolist() == processor.tokenizer(batch["prompts"][0])["input_ids"]


# =================================================================================================
# Images
# =================================================================================================


def test_fixture_pixel_values_with_the_released_preprocessor():
    images, _, instruction = fixture_observation()
    pre = json.loads((released_dir() / "preprocessor_config.json").read_text())
    processor = VLAProcessor(
        ImageProcessor(ImageProcessorConfig.from_preprocessor_config(pre)), load_qwen25_tokenizer(), num_images=2
    )
    batch = processor(images, instruction)
    pixels = batch["pixel_values"]
    assert pixels.shape == (1, 12, 224, 224) and pixels.dtype == torch.float32
    assert batch["input_ids"][0, :6].tolist() == CHAT_IDS_PREFIX
    assert batch["prompts"] == [LIBERO_CHAT_PROMPT]

    # Per image: 3 channels normalised for DINOv2 (bf16-rounded constants), then 3 for SigLIP, of one image.
    dino, siglip = pre["tvf_normalize_params"]
    for image in range(2):
        block = pixels[0, 6 * image : 6 * image + 6]
        first = block[:3] * torch.tensor(dino["std"])[:, None, None] + torch.tensor(dino["mean"])[:, None, None]
        second = block[3:] * torch.tensor(siglip["std"])[:, None, None] + torch.tensor(siglip["mean"])[:, None, None]
        torch.testing.assert_close(first, second, atol=1e-5, rtol=0)
        assert first.min() >= -1e-5 and first.max() <= 1 + 1e-5
    # Third-person view first, wrist view second.
    assert not torch.equal(pixels[0, :6], pixels[0, 6:])
    alone = processor([images[0], images[0]], instruction)["pixel_values"]
    assert torch.equal(alone[0, :6], pixels[0, :6])


def test_processor_from_the_released_directory():
    images, _, instruction = fixture_observation()
    processor = VLAProcessor.from_directory(released_dir(), VLAConfig.preset("vla-adapter-pro-qwen2.5-0.5b"))
    assert processor.image_processor.config.image_size == 224 and processor.num_images == 2
    assert processor.image_processor.config.means[0] == [0.484375, 0.455078125, 0.40625]
    assert processor.prompt == "qwen-chat"  # the released architecture's prompt, as upstream's evaluation builds it
    batch = processor(images, instruction)
    assert batch["pixel_values"].shape == (1, 12, 224, 224)
    assert batch["input_ids"][0, :6].tolist() == CHAT_IDS_PREFIX
    assert processor(images, instruction, prompt="openvla")["input_ids"][0, :12].tolist() == LIBERO_IDS_PREFIX


def test_processor_bad_input():
    processor = VLAProcessor(ImageProcessor(ImageProcessorConfig(image_size=28)), load_qwen25_tokenizer(), 2)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="num_images"):
        processor([image], "open the drawer")
    with pytest.raises(InputError, match="num_images"):
        processor([image, image, image], "open the drawer")
    with pytest.raises(InputError, match="instruction"):
        processor([[image, image], [image, image]], ["open the drawer"])
    with pytest.raises(InputError, match="instruction"):
        processor([image, image], "")
    batch = processor([[image, image], [image, image]], ["open the drawer", "close it"])
    # One featurizer (the default config): 3 channels per image.
    assert batch["pixel_values"].shape == (2, 6, 28, 28) and batch["input_ids"].shape[0] == 2


# =================================================================================================
# Dataset statistics
# =================================================================================================

STATS = {
    "q01": [-1.0, 0.0, 2.0, -0.5],
    "q99": [1.0, 4.0, 2.0, 0.5],
    "min": [-2.0, -1.0, 0.0, -1.0],
    "max": [2.0, 9.0, 3.0, 1.0],
    "mask": [True, True, False, True],
}


def test_normalize_proprio_q99_by_hand():
    # dim 0: 2 (0.5 + 1) / 2 - 1 = 0.5; dim 1: 2 * 1 / 4 - 1 = -0.5; dim 2: masked out, 7 kept then clipped to 1;
    # dim 3: 2 (2 + 0.5) / 1 - 1 = 4, clipped to 1.
    got = normalize_proprio([0.5, 1.0, 7.0, 2.0], STATS, "bounds_q99")
    np.testing.assert_allclose(got, [0.5, -0.5, 1.0, 1.0], atol=1e-7, rtol=0)
    got = normalize_proprio([[-1.0, 4.0, -3.0, -0.5]], STATS, "bounds_q99")
    np.testing.assert_allclose(got, [[-1.0, 1.0, -1.0, -1.0]], atol=1e-7, rtol=0)


def test_normalize_proprio_bounds_by_hand():
    # dim 0: 2 (1 + 2) / 4 - 1 = 0.5; dim 1: 2 (3.5 + 1) / 10 - 1 = -0.1; dim 2 masked: 0.25 kept;
    # dim 3: 2 (-2 + 1) / 2 - 1 = -2, clipped to -1.
    got = normalize_proprio([1.0, 3.5, 0.25, -2.0], STATS, "bounds")
    np.testing.assert_allclose(got, [0.5, -0.1, 0.25, -1.0], atol=1e-7, rtol=0)


def test_unnormalize_actions_by_hand():
    # a = 0.5 (a_n + 1)(q99 - q01 + 1e-8) + q01 where the mask is true, else a_n unchanged (no clipping).
    a_n = np.array([[0.0, 0.5, 0.3, -1.0], [1.0, -1.0, -0.7, 1.5]])
    got = unnormalize_actions(a_n, STATS, "bounds_q99")
    want = [[0.0 + 0.5e-8, 3.0 + 0.75e-8, 0.3, -0.5], [1.0 + 1e-8, 0.0, -0.7, 0.75 + 1.25e-8]]
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
    got = unnormalize_actions(a_n, STATS, "bounds")
    want = [[0.0 + 0.5e-8, 6.5 + 0.75e-8, 0.3, -1.0], [2.0 + 1e-8, -1.0, -0.7, 1.5 + 1.25e-8]]
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
    back = normalize_actions(unnormalize_actions(a_n[:1], STATS), STATS)
    np.testing.assert_allclose(back, a_n[:1], atol=1e-7, rtol=0)


def released_norm_stats() -> dict:
    return json.loads((released_dir() / "config.json").read_text())["norm_stats"]


def test_released_action_statistics_by_hand():
    action = released_norm_stats()["bridge_orig"]["action"]
    assert action["mask"] == [True] * 6 + [False]
    a_n = np.array([-1.0, 0.0, 1.0, 0.5, -0.5, 0.25, 0.7])
    # Worked out in decimal from the file's q01/q99 (mask false for the gripper: 0.7 stays).
    want = [
        -0.02872725307941437,
        -0.000424117512340588,
        0.040161596627364146,
        0.04121010300988653,
        -0.05018311749738218,
        0.049697560435986425,
        0.7,
    ]
    np.testing.assert_allclose(unnormalize_actions(a_n, action, "bounds_q99"), want, atol=1e-15, rtol=0)


def test_released_proprio_statistics_by_hand():
    # The pre-training mixture's proprio statistics are all zero (q01 = q99 = 0, no mask): x -> 2 x / 1e-8 - 1.
    proprio = released_norm_stats()["bridge_orig"]["proprio"]
    assert proprio["q01"] == [0.0] * 7 and proprio["q99"] == [0.0] * 7 and "mask" not in proprio
    x = [0.0, 5e-9, 1e-9, 0.5, -0.5, 2e-8, -1e-9]
    np.testing.assert_allclose(normalize_proprio(x, proprio), [-1.0, 0.0, -0.8, 1.0, -1.0, 1.0, -1.0], atol=1e-9)


def test_unnorm_key_resolution():
    stats = released_norm_stats()
    assert resolve_unnorm_key(stats, "bridge_orig") == "bridge_orig"
    assert resolve_unnorm_key({"only": {}}, None) == "only"
    cases = [(stats, None, "25 datasets"), (stats, "libero_spatial", "'libero_spatial'"), ({}, None, "no dataset")]
    for norm_stats, key, detail in cases:
        with pytest.raises(InputError) as exc:
            resolve_unnorm_key(norm_stats, key)
        message = str(exc.value)
        assert message.startswith("unnorm_key: ") and "\n" not in message and detail in message


def test_statistics_bad_input():
    with pytest.raises(InputError, match="proprio"):
        normalize_proprio([0.0, 1.0], STATS)
    with pytest.raises(InputError, match="actions"):
        unnormalize_actions(np.zeros((8, 3)), STATS)
    partial = copy.deepcopy(STATS)
    del partial["q99"]
    with pytest.raises(InputError, match="q99"):
        unnormalize_actions(np.zeros((8, 4)), partial)
    with pytest.raises(InputError, match="q01"):
        normalize_proprio(np.zeros(4), {"min": [0] * 4, "max": [1] * 4})


def test_predict_action_needs_a_known_unnorm_key(tiny_model):
    stats = {"action": {"q01": [-1] * 7, "q99": [1] * 7}, "proprio": {"q01": [-1] * 8, "q99": [1] * 8}}
    tiny_model.config.norm_stats = {"libero_spatial": stats, "libero_object": copy.deepcopy(stats)}
    image = np.zeros((56, 56, 3), dtype=np.uint8)
    with pytest.raises(InputError, match=r"^unnorm_key: .*2 datasets"):
        tiny_model.predict_action([image, image], "open the drawer", np.zeros(8))
    with pytest.raises(InputError, match=r"^unnorm_key: got 'bridge_orig'"):
        tiny_model.predict_action([image, image], "open the drawer", np.zeros(8), unnorm_key="bridge_orig")
    pred = tiny_model.predict_action([image, image], "open the drawer", np.zeros(8), unnorm_key="libero_object")
    assert pred.unnorm_key == "libero_object" and pred.actions.shape == (1, 8, 7)
    tiny_model.config.norm_stats = None
    with pytest.raises(InputError, match=r"^unnorm_key: got 'libero_object'"):
        tiny_model.predict_action([image, image], "open the drawer", np.zeros(8), unnorm_key="libero_object")
