"""Tests of vla_lab.processing.images against independent re-statements of upstream's transforms."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.transforms.functional as TVF

from vla_lab.errors import ConfigError, InputError
from vla_lab.processing.images import (
    ImageProcessor,
    ImageProcessorConfig,
    center_crop_image,
    load_image,
)

DATA = Path(__file__).resolve().parent / "data"
RELEASED_PATH = DATA / "released_checkpoint" / "preprocessor_config.json"
FIXTURE_PATH = DATA / "libero_spatial_observation.npz"
DINOSIGLIP = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]

# The tvf_* entries of the released checkpoint's preprocessor_config.json, written out so that the tests
# state the values; test_embedded_copy_matches_released_file checks them against the file in tests/data.
RELEASED_TVF = {
    "image_resize_strategy": "resize-naive",
    "tvf_crop_params": [{"output_size": [224, 224]}, {"output_size": [224, 224]}],
    "tvf_do_letterbox": False,
    "tvf_letterbox_fill": None,
    "tvf_normalize_params": [
        {
            "inplace": False,
            "mean": [0.484375, 0.455078125, 0.40625],
            "std": [0.228515625, 0.2236328125, 0.224609375],
        },
        {"inplace": False, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    ],
    "tvf_resize_params": [
        {"antialias": True, "interpolation": 3, "max_size": None, "size": [224, 224]},
        {"antialias": True, "interpolation": 3, "max_size": None, "size": [224, 224]},
    ],
}


def released_variant(strategy: str, fill: list[int] | None = None) -> dict:
    """The released tvf_* values as upstream's __init__ would have saved them for ``strategy``."""
    pp = copy.deepcopy(RELEASED_TVF)
    pp["image_resize_strategy"] = strategy
    if strategy != "resize-naive":
        for params in pp["tvf_resize_params"]:
            params["size"] = 224
    if strategy == "letterbox":
        pp["tvf_do_letterbox"] = True
        # Upstream: int(255 * mean) of the last featurizer's (unrounded) mean, SigLIP's 0.5 here.
        pp["tvf_letterbox_fill"] = fill if fill is not None else [127, 127, 127]
    return pp


def reference_pixels(img: PIL.Image.Image, pp: dict) -> torch.Tensor:
    """Upstream's apply_transform re-stated with torchvision functional calls and the saved params."""
    if pp["tvf_do_letterbox"]:
        (w, h), side = img.size, max(img.size)
        pad_w, pad_h = int((side - w) / 2), int((side - h) / 2)
        img = TVF.pad(
            img, (pad_w, pad_h, pad_w, pad_h), fill=pp["tvf_letterbox_fill"], padding_mode="constant"
        )
    outs = []
    for resize, crop, norm in zip(pp["tvf_resize_params"], pp["tvf_crop_params"], pp["tvf_normalize_params"]):
        x = TVF.center_crop(TVF.resize(img, **resize), **crop)
        outs.append(TVF.normalize(TVF.to_tensor(x), **norm))
    return torch.vstack(outs)


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Pixel equality with upstream's transform
# ---------------------------------------------------------------------------------------------

SIZES = [(224, 224), (480, 640), (300, 200), (97, 131), (50, 400), (17, 3), (101, 64), (64, 225)]
VARIANTS = [
    ("resize-naive", None),
    ("resize-crop", None),
    ("letterbox", None),
    ("letterbox", [10, 200, 30]),
]


@pytest.mark.parametrize(("strategy", "fill"), VARIANTS)
def test_pixels_equal_upstream_restatement(strategy: str, fill: list[int] | None) -> None:
    pp = released_variant(strategy, fill)
    processor = ImageProcessor(ImageProcessorConfig.from_preprocessor_config(pp))
    assert processor.config.resize_strategy == strategy
    rng = np.random.default_rng(len(strategy))
    for h, w in SIZES:
        array = random_image(rng, h, w)
        expected = reference_pixels(PIL.Image.fromarray(array).convert("RGB"), pp)
        got = processor.preprocess_image(array)
        assert got.dtype == torch.float32
        assert got.shape == (6, 224, 224)
        assert torch.equal(got, expected), f"{strategy} {h}x{w}: max diff {(got - expected).abs().max()}"


def test_strategies_differ_on_non_square_images() -> None:
    array = random_image(np.random.default_rng(1), 120, 200)
    outs = {
        s: ImageProcessor(
            ImageProcessorConfig.from_preprocessor_config(released_variant(s))
        ).preprocess_image(array)
        for s in ("resize-naive", "resize-crop", "letterbox")
    }
    assert not torch.equal(outs["resize-naive"], outs["resize-crop"])
    assert not torch.equal(outs["resize-naive"], outs["letterbox"])
    # Padded rows of the letterbox carry the fill (127 -> SigLIP-normalised (127/255 - 0.5) / 0.5).
    assert torch.allclose(outs["letterbox"][3:, 0, :], torch.tensor(127 / 255 * 2 - 1), atol=1e-6)


def test_single_featurizer_gives_three_channels() -> None:
    config = ImageProcessorConfig.for_timm_models(["vit_so400m_patch14_siglip_224"], 224)
    processor = ImageProcessor(config)
    array = random_image(np.random.default_rng(2), 64, 80)
    got = processor([array, array])
    assert got.shape == (1, 6, 224, 224)
    pp = released_variant("resize-naive")
    for key in ("tvf_resize_params", "tvf_crop_params", "tvf_normalize_params"):
        pp[key] = pp[key][1:]
    assert torch.equal(got[0, :3], reference_pixels(PIL.Image.fromarray(array), pp))


# ---------------------------------------------------------------------------------------------
# Released file and LIBERO fixture
# ---------------------------------------------------------------------------------------------


def released_file() -> dict:
    return json.loads(RELEASED_PATH.read_text())


def test_embedded_copy_matches_released_file() -> None:
    data = released_file()
    assert {k: data[k] for k in RELEASED_TVF} == RELEASED_TVF
    assert ImageProcessorConfig.from_preprocessor_config(RELEASED_PATH) == (
        ImageProcessorConfig.from_preprocessor_config(RELEASED_TVF)
    )
    assert ImageProcessorConfig.from_preprocessor_config(RELEASED_PATH.parent) == (
        ImageProcessorConfig.from_preprocessor_config(data)
    )


def test_to_preprocessor_config_matches_released_layout() -> None:
    data = released_file()
    written = ImageProcessorConfig.from_preprocessor_config(data).to_preprocessor_config()
    assert set(written) == set(data) - {"auto_map"}
    # "means"/"stds" differ on purpose: upstream saves timm's unrounded values there; only tvf_* are applied.
    for key in set(written) - {"means", "stds"}:
        assert written[key] == data[key], key


def load_fixture() -> np.lib.npyio.NpzFile:
    return np.load(FIXTURE_PATH)


def test_libero_fixture_two_images() -> None:
    fixture = load_fixture()
    images = [fixture["full_image"], fixture["wrist_image"]]
    assert all(im.shape == (224, 224, 3) and im.dtype == np.uint8 for im in images)
    processor = ImageProcessor(ImageProcessorConfig.from_preprocessor_config(RELEASED_TVF))
    got = processor(images, num_images=2)
    assert got.shape == (1, 12, 224, 224)
    expected = torch.cat(
        [reference_pixels(PIL.Image.fromarray(im).convert("RGB"), RELEASED_TVF) for im in images]
    )
    assert torch.equal(got[0], expected)
    cropped = processor(images, center_crop=True, num_images=2)
    assert cropped.shape == (1, 12, 224, 224)
    assert not torch.equal(cropped, got)
    with pytest.raises(InputError, match=r"^num_images: .*expected 1"):
        processor(images, num_images=1)


# Sha-256 of TensorFlow 2.21's output of upstream's center_crop_image (convert_image_dtype, crop_and_resize,
# clip, convert_image_dtype(saturate=True)) on the fixture images, computed once with real TF.
TF_CROP_SHA256 = {
    "full_image": "9a7cab80cfa8742c5495d490b846067e74d4ef984712fd97b2c7d1917b71a742",
    "wrist_image": "51d19304f905a7e58904c635f52d37099c3462bb84ce5818b3dca22c2eef9cce",
}


@pytest.mark.parametrize("key", sorted(TF_CROP_SHA256))
def test_center_crop_matches_tensorflow_digest(key: str) -> None:
    out = np.asarray(center_crop_image(load_fixture()[key]))
    assert hashlib.sha256(out.tobytes()).hexdigest() == TF_CROP_SHA256[key]


# ---------------------------------------------------------------------------------------------
# timm metadata
# ---------------------------------------------------------------------------------------------


def test_for_timm_models_equals_released_normalisation() -> None:
    config = ImageProcessorConfig.for_timm_models(DINOSIGLIP, 224)
    assert config == ImageProcessorConfig.from_preprocessor_config(RELEASED_TVF)
    assert config.to_preprocessor_config()["tvf_normalize_params"] == RELEASED_TVF["tvf_normalize_params"]
    assert config.means[0] == [0.484375, 0.455078125, 0.40625]
    assert config.stds[0] == [0.228515625, 0.2236328125, 0.224609375]


def test_for_timm_models_equals_released_file() -> None:
    data = released_file()
    written = ImageProcessorConfig.for_timm_models(DINOSIGLIP, 224).to_preprocessor_config()
    for key in ("tvf_normalize_params", "tvf_resize_params", "tvf_crop_params", "tvf_letterbox_fill"):
        assert written[key] == data[key], key


def test_for_timm_models_letterbox_fill_uses_unrounded_mean() -> None:
    assert ImageProcessorConfig.for_timm_models(DINOSIGLIP, 224, "letterbox").letterbox_fill == [
        127,
        127,
        127,
    ]
    dino = ImageProcessorConfig.for_timm_models(DINOSIGLIP[:1], 224, "letterbox")
    assert dino.letterbox_fill == [123, 116, 103]
    # CLIP's 0.48145466 * 255 = 122.77 -> 122, while its bf16 value 0.482421875 would give 123.
    clip = ImageProcessorConfig.for_timm_models(["vit_large_patch14_clip_336.openai"], 336, "letterbox")
    assert clip.letterbox_fill == [122, 116, 104]
    assert clip.means[0] == [0.482421875, 0.45703125, 0.408203125]


def test_for_timm_models_rejects_unknown_ids() -> None:
    with pytest.raises(ConfigError, match=r"^timm_model_ids\[1\]: got 'not_a_model'"):
        ImageProcessorConfig.for_timm_models([DINOSIGLIP[0], "not_a_model"], 224)


# ---------------------------------------------------------------------------------------------
# LIBERO centre crop
# ---------------------------------------------------------------------------------------------


def tf_center_crop_loop(image: np.ndarray, scale: float) -> np.ndarray:
    """Slow re-statement of TF's CPU kernels, pixel by pixel, every step in float32."""
    f32 = np.float32
    height, width, depth = image.shape
    as_float = [
        [[f32(image[y, x, d]) * f32(1.0 / 255) for d in range(depth)] for x in range(width)]
        for y in range(height)
    ]
    side = min(max(np.sqrt(f32(scale)), f32(0)), f32(1))
    y1 = x1 = (f32(1) - side) / f32(2)
    y2 = x2 = y1 + side
    height_scale = (y2 - y1) * f32(height - 1) / f32(height - 1) if height > 1 else f32(0)
    width_scale = (x2 - x1) * f32(width - 1) / f32(width - 1) if width > 1 else f32(0)
    out = np.zeros_like(image)
    for y in range(height):
        in_y = (
            y1 * f32(height - 1) + f32(y) * height_scale
            if height > 1
            else f32(0.5 * (y1 + y2) * (height - 1))
        )
        top_i, bottom_i = int(np.floor(in_y)), int(np.ceil(in_y))
        y_lerp = in_y - f32(top_i)
        for x in range(width):
            in_x = (
                x1 * f32(width - 1) + f32(x) * width_scale
                if width > 1
                else f32(0.5 * (x1 + x2) * (width - 1))
            )
            left_i, right_i = int(np.floor(in_x)), int(np.ceil(in_x))
            x_lerp = in_x - f32(left_i)
            for d in range(depth):
                tl, tr = as_float[top_i][left_i][d], as_float[top_i][right_i][d]
                bl, br = as_float[bottom_i][left_i][d], as_float[bottom_i][right_i][d]
                top = tl + (tr - tl) * x_lerp
                bottom = bl + (br - bl) * x_lerp
                value = min(max(top + (bottom - top) * y_lerp, f32(0)), f32(1))
                out[y, x, d] = int(min(max(value * f32(255.5), f32(0)), f32(255)))
    return out


@pytest.mark.parametrize(("h", "w", "scale"), [(48, 64, 0.9), (31, 17, 0.9), (40, 40, 0.5), (9, 12, 1.0)])
def test_center_crop_matches_loop_restatement(h: int, w: int, scale: float) -> None:
    image = random_image(np.random.default_rng(h * w), h, w)
    out = center_crop_image(image, scale)
    assert isinstance(out, PIL.Image.Image) and out.mode == "RGB" and out.size == (w, h)
    got = np.asarray(out)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, tf_center_crop_loop(image, scale))


def test_center_crop_hand_computed_values() -> None:
    # 2x2 image, rows 0 and 255: sample rows sit at (1 -/+ sqrt(0.9)) / 2 = 0.02566 and 0.97434, so the
    # values are floor(0.02566 * 255.5) = floor(6.556) = 6 and floor(0.97434 * 255.5) = floor(248.94) = 248
    # (rounding x * 255 instead would give 7 in the top row).
    image = np.zeros((2, 2, 3), np.uint8)
    image[1] = 255
    np.testing.assert_array_equal(np.asarray(center_crop_image(image))[..., 0], [[6, 6], [248, 248]])
    # Rows 100 and 200: (100 + 100 * 0.02566) / 255 * 255.5 = 102.77 -> 102 and
    # (100 + 100 * 0.97434) / 255 * 255.5 = 197.82 -> 197.
    image[0], image[1] = 100, 200
    np.testing.assert_array_equal(np.asarray(center_crop_image(image))[..., 1], [[102, 102], [197, 197]])
    # Rows 109 and 118: the bottom sample lands on 118.0000076 * (1/255) * 255.5 in float32 -> 118, where
    # scaling by x / 255 instead of TF's x * float32(1/255) gives 117.9999924 -> 117 (checked with TF 2.21).
    image[0], image[1] = 109, 118
    np.testing.assert_array_equal(np.asarray(center_crop_image(image))[..., 2], [[109, 109], [118, 118]])
    # A 1x1 image takes the kernel's single-sample branch and comes back unchanged.
    pixel = np.array([[[7, 130, 255]]], np.uint8)
    np.testing.assert_array_equal(np.asarray(center_crop_image(pixel)), pixel)


def test_center_crop_accepts_pil_and_is_identity_at_scale_one_for_values() -> None:
    image = random_image(np.random.default_rng(5), 30, 20)
    assert np.array_equal(
        np.asarray(center_crop_image(PIL.Image.fromarray(image))), np.asarray(center_crop_image(image))
    )
    # Scale 1 samples exactly on the pixel grid: x / 255 * 255.5 floors back to x.
    np.testing.assert_array_equal(np.asarray(center_crop_image(image, 1.0)), image)
    with pytest.raises(InputError, match=r"^scale: got 1.5"):
        center_crop_image(image, 1.5)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor() -> ImageProcessor:
    return ImageProcessor(ImageProcessorConfig.from_preprocessor_config(RELEASED_TVF))


def test_array_pil_and_path_inputs_agree(processor: ImageProcessor, tmp_path: Path) -> None:
    array = random_image(np.random.default_rng(3), 90, 120)
    png = tmp_path / "frame.png"
    PIL.Image.fromarray(array).save(png)
    rgba = PIL.Image.fromarray(array).convert("RGBA")
    by_array = processor(array)
    assert by_array.shape == (1, 6, 224, 224)
    for other in (PIL.Image.fromarray(array), rgba, png, str(png)):
        assert torch.equal(processor(other), by_array), type(other)
    assert np.array_equal(np.asarray(load_image(png)), array)
    assert load_image(rgba).mode == "RGB"


def test_batches_of_observations(processor: ImageProcessor) -> None:
    rng = np.random.default_rng(4)
    obs = [[random_image(rng, 64, 64), random_image(rng, 32, 48)] for _ in range(3)]
    batch = processor(obs, num_images=2)
    assert batch.shape == (3, 12, 224, 224)
    for b in range(3):
        assert torch.equal(batch[b : b + 1], processor(obs[b]))
    assert torch.equal(processor(obs[0])[0, 6:], processor.preprocess_image(obs[0][1]))
    with pytest.raises(InputError, match=r"^images: got \[1, 2\] images per observation"):
        processor([obs[0], obs[1][:1]])
    with pytest.raises(InputError, match=r"^num_images: got \[2\] image\(s\) per observation, expected 3$"):
        processor(obs, num_images=3)


BAD_INPUTS = [
    (
        np.zeros((224, 224, 4), np.uint8),
        r"got array of shape \(224, 224, 4\) and dtype uint8, expected \(H, W, 3\)",
    ),
    (
        np.zeros((8, 8, 3), np.float32),
        r"got array of shape \(8, 8, 3\) and dtype float32, expected \(H, W, 3\) uint8",
    ),
    (np.zeros((8, 8), np.uint8), r"got array of shape \(8, 8\)"),
    ("/no/such/dir/frame.png", r"got '/no/such/dir/frame.png', which does not exist, expected an image file"),
    (7, r"got int, expected a uint8 \(H, W, 3\) numpy array, a PIL image or an image file path"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_INPUTS)
def test_bad_inputs_raise_one_line_input_errors(processor: ImageProcessor, bad: object, message: str) -> None:
    good = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(InputError, match=rf"^images\[1\]: {message}") as info:
        processor([good, bad])
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=rf"^images\[0\]\[1\]: {message}"):
        processor([[good, bad]])
    with pytest.raises(InputError, match=rf"^image: {message}"):
        load_image(bad)


def test_unreadable_file_and_empty_inputs(processor: ImageProcessor, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InputError, match=r"^images: got path .*notes.txt', which PIL cannot read") as info:
        processor(text)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"^images: got empty list"):
        processor([])
    with pytest.raises(InputError, match=r"^images\[0\]: got an empty list"):
        processor([[]])
    with pytest.raises(InputError, match=r"^images: got dict"):
        processor({"full_image": np.zeros((4, 4, 3), np.uint8)})


# ---------------------------------------------------------------------------------------------
# Config round trips and validation
# ---------------------------------------------------------------------------------------------

CONFIGS = [
    ImageProcessorConfig(),
    ImageProcessorConfig.for_timm_models(DINOSIGLIP, 224),
    ImageProcessorConfig.for_timm_models(DINOSIGLIP, 384, "resize-crop"),
    ImageProcessorConfig.for_timm_models(DINOSIGLIP, 224, "letterbox"),
    ImageProcessorConfig.for_timm_models(["vit_large_patch14_clip_336.openai"], 336, "letterbox"),
    ImageProcessorConfig(resize_strategy="letterbox", letterbox_fill=[1, 2, 3], interpolation="bilinear"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.resize_strategy}-{c.num_featurizers}")
def test_config_round_trips(config: ImageProcessorConfig, tmp_path: Path) -> None:
    written = config.to_preprocessor_config()
    assert ImageProcessorConfig.from_preprocessor_config(written) == config
    assert ImageProcessorConfig.from_preprocessor_config(json.loads(json.dumps(written))) == config
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(written, indent=2))
    assert ImageProcessorConfig.from_preprocessor_config(path) == config
    assert ImageProcessorConfig.from_json(config.to_json()) == config
    config.to_json(tmp_path / "image_processor.json")
    assert ImageProcessorConfig.from_json(tmp_path / "image_processor.json") == config
    assert ImageProcessorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_saved_letterbox_values_win() -> None:
    pp = released_variant("letterbox", [9, 8, 7])
    assert ImageProcessorConfig.from_preprocessor_config(pp).letterbox_fill == [9, 8, 7]
    pp["tvf_letterbox_fill"] = None  # TVF.pad pads with black when fill is None
    assert ImageProcessorConfig.from_preprocessor_config(pp).letterbox_fill == [0, 0, 0]
    # The default fill follows upstream: int(255 * mean) of the last featurizer.
    config = ImageProcessorConfig(
        resize_strategy="letterbox", means=[[0.485, 0.456, 0.406]], stds=[[1, 1, 1]]
    )
    assert config.letterbox_fill == [123, 116, 103]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resize_strategy": "squash"}, r"^resize_strategy: got 'squash'"),
        ({"image_size": 0}, r"^image_size: got 0"),
        ({"interpolation": "cubic"}, r"^interpolation: got 'cubic'"),
        ({"means": [[0.5, 0.5]]}, r"^means\[0\]: got \[0.5, 0.5\], expected 3 numbers"),
        ({"stds": [[0.5] * 3, [0.5] * 3]}, r"^stds: got 2 entries, expected 1"),
        ({"stds": [[0.5, 0.0, 0.5]]}, r"^stds\[0\]: got \[0.5, 0.0, 0.5\], expected positive"),
        (
            {"letterbox_fill": [1, 2, 3]},
            r"^letterbox_fill: got \[1, 2, 3\] with resize_strategy 'resize-naive'",
        ),
        ({"resize_strategy": "letterbox", "letterbox_fill": [1, 2]}, r"^letterbox_fill: got \[1, 2\]"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageProcessorConfig(**kwargs)


def test_from_preprocessor_config_rejects_what_it_cannot_express(tmp_path: Path) -> None:
    pp = copy.deepcopy(RELEASED_TVF)
    del pp["tvf_crop_params"]
    with pytest.raises(ConfigError, match=r"^preprocessor_config.tvf_crop_params: missing"):
        ImageProcessorConfig.from_preprocessor_config(pp)
    pp = released_variant("resize-crop")
    pp["tvf_resize_params"][0]["size"] = 256
    with pytest.raises(ConfigError, match=r"got sizes \[224, 256\]"):
        ImageProcessorConfig.from_preprocessor_config(pp)
    pp = released_variant("resize-naive")
    pp["tvf_do_letterbox"] = True
    with pytest.raises(ConfigError, match=r"tvf_resize_params\[0\].size: got \[224, 224\]"):
        ImageProcessorConfig.from_preprocessor_config(pp)
    with pytest.raises(ConfigError, match=r"^preprocessor_config: got .*missing.json'"):
        ImageProcessorConfig.from_preprocessor_config(tmp_path / "missing.json")
