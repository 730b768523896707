"""Training on LIBERO demonstrations: the data pipeline (vla_lab.libero.data) and the trainer on it.

The demonstrations here are written by the test in the layout of ``vla-lab libero demos`` (h5py, no
simulator): real LIBERO camera frames (tests/data/libero_sim_observations.npz) with made-up actions.
The command that writes real ones is tested in test_libero_demos.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from testkit import DEMO_INSTRUCTIONS as INSTRUCTIONS
from testkit import tiny_libero_recipe, write_demos

from vla_lab.cli import build_parser
from vla_lab.cli.train import train_configs
from vla_lab.config import VLAConfig
from vla_lab.errors import ConfigError, InputError
from vla_lab.libero import data as libero_data
from vla_lab.model import load_pretrained
from vla_lab.processing import VLAProcessor, build_prompt
from vla_lab.training.train import TrainConfig, train
from vla_lab.worlds.libero.tokenizer import VOCABULARY, build_libero_tokenizer, write_libero_tokenizer_files

h5py = pytest.importorskip("h5py")

DATA = Path(__file__).parent / "data"
@pytest.fixture()
def demos(libero_demos) -> Path:
    """The session's demonstrations (tests/conftest.py), read only."""
    return libero_demos


def libero_config(demos_dir: Path) -> VLAConfig:
    return VLAConfig.preset("libero-small", norm_stats=libero_data.demo_statistics(
        libero_data.read_demonstrations(demos_dir), "libero_spatial"))


# --- the tokenizer ---------------------------------------------------------------------------------


def test_the_libero_tokenizer_ships_as_files_the_generator_reproduces(tmp_path) -> None:
    from importlib import resources

    shipped = Path(str(resources.files("vla_lab.processing") / "tokenizers" / "libero"))
    written = write_libero_tokenizer_files(tmp_path / "regenerated")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (written / name).read_bytes() == (shipped / name).read_bytes(), name
    tokenizer = build_libero_tokenizer()
    assert tokenizer.vocab_size == VLAConfig.preset("libero-small").llm["vocab_size"] == 588
    assert tokenizer.eos_token_id == 587
    for word in VOCABULARY:  # one token per word, after a space as inside an instruction
        assert len(tokenizer.encode(" " + word)) == 1, word


def test_the_vocabulary_covers_every_libero_instruction() -> None:
    pytest.importorskip("libero")
    from vla_lab.worlds.libero.env import num_tasks, task_info
    from vla_lab.worlds.libero.suites import SUITES

    words = {w for suite in SUITES for t in range(num_tasks(suite)) for w in task_info(suite, t)["instruction"].split()}
    assert words == set(VOCABULARY)


# --- conversions ---------------------------------------------------------------------------------


def test_gripper_and_chunks_follow_upstream() -> None:
    actions = np.array([[0.1] * 6 + [-1.0], [0.2] * 6 + [1.0], [0.3] * 6 + [0.0]])
    converted = libero_data.libero_gripper(actions)
    assert converted[:, -1].tolist() == [1.0, 0.0, 1.0]  # -1 (LIBERO open) -> 1 (open)
    assert (converted[:, :6] == actions[:, :6]).all() and actions[0, -1] == -1.0  # input untouched
    chunked = libero_data.chunks(np.arange(4.0)[:, None], 3)
    assert chunked[..., 0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3]]


def test_statistics_are_those_of_every_step(demos) -> None:
    read = libero_data.read_demonstrations(demos)
    assert [(d.task, d.init_state) for d in read] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    stats = libero_data.demo_statistics(read, "libero_spatial")["libero_spatial"]
    rows = libero_data.libero_gripper(np.concatenate([d.actions for d in read]))
    assert stats["num_transitions"] == len(rows) == 46 and stats["num_trajectories"] == 4
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert np.allclose(stats["action"]["q99"], np.quantile(rows, 0.99, axis=0))
    assert libero_data.read_demonstrations(demos, init_states=[1])[0].init_state == 1


# --- batches -------------------------------------------------------------------------------------


def test_batches_have_the_model_shapes_and_normalised_targets(demos) -> None:
    config = libero_config(demos)
    data = libero_data.LiberoDemoData.load(demos, config, build_libero_tokenizer())
    assert len(data) == 46 and data.frames.shape == (46, 2, 102, 102, 3)
    batch = data.batch([0, 5, 45], labels=True, generator=torch.Generator().manual_seed(0))
    assert batch["pixel_values"].shape == (3, 12, 96, 96)
    assert batch["actions"].shape == (3, 8, 7) and batch["proprio"].shape == (3, 8)
    assert batch["actions"].abs().max() <= 1.0 and batch["targets"].shape == (3, 2)
    assert set(batch["actions"][..., -1].unique().tolist()) <= {0.0, 1.0}  # the gripper is not normalised
    # The instruction of the example's task, tokenised as the processor does at inference.
    expected = build_libero_tokenizer().encode(build_prompt(INSTRUCTIONS[1], "openvla"))
    assert batch["input_ids"][2, : len(expected)].tolist() == expected


def test_random_crops_come_from_the_generator_and_the_centre_crop_is_fixed(demos) -> None:
    config = libero_config(demos)
    data = libero_data.LiberoDemoData.load(demos, config, build_libero_tokenizer())
    idx = np.arange(8)
    a = data.images(idx, torch.Generator().manual_seed(1))
    b = data.images(idx, torch.Generator().manual_seed(1))
    c = data.images(idx, torch.Generator().manual_seed(2))
    assert (a == b).all() and not (a == c).all()
    data.augment = False
    assert (data.images(idx, torch.Generator().manual_seed(1)) == data.images(idx, None)).all()


def test_the_centre_crop_matches_what_the_evaluation_gives_the_model(demos) -> None:
    """Training without augmentation sees (up to resampling) the pixels the evaluation feeds the model."""
    config = libero_config(demos)
    data = libero_data.LiberoDemoData.load(demos, config, build_libero_tokenizer(), augment=False)
    with h5py.File(demos / "task_0_demo.hdf5", "r") as f:
        stored = f["data/demo_0/obs/agentview_rgb"][0]
    processor = VLAProcessor.for_config(config, tokenizer=build_libero_tokenizer()).image_processor
    evaluated = processor.preprocess_image(libero_data.policy_frame(stored, 224), center_crop=True)[:3]
    trained = torch.from_numpy(data.images(np.array([0]))[0, 0]).permute(2, 0, 1).float() / 255
    mean, std = processor.config.means[0], processor.config.stds[0]
    trained = (trained - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    pixels = (evaluated - trained).abs() * torch.tensor(std)[:, None, None] * 255
    print(f'mean |difference| {float(pixels.mean()):.2f} grey levels')
    assert pixels.mean() < 4.0, pixels.mean()


def test_the_frame_cache_is_built_once_and_workers_build_the_same(demos, tmp_path) -> None:
    path = demos / "policy_frames_102.npy"
    libero_data.frame_cache(demos, 102)
    before = path.stat().st_mtime_ns
    cache = libero_data.frame_cache(demos, 102)
    assert path.stat().st_mtime_ns == before and not cache.flags.writeable
    copy = write_demos(tmp_path / "copy")
    assert np.array_equal(libero_data.frame_cache(copy, 102, workers=2), cache)


def test_a_directory_without_a_manifest_is_refused(tmp_path) -> None:
    with pytest.raises(InputError, match="demos.json"):
        libero_data.read_manifest(tmp_path)


# --- training ------------------------------------------------------------------------------------


def test_training_on_demonstrations_resumes_bit_exactly(demos, tmp_path) -> None:
    config = tiny_libero_recipe(demos)
    model_config = VLAConfig.preset("libero-small")
    straight = train(config, model_config, tmp_path / "straight", progress=False)
    train(config, model_config, tmp_path / "resumed", stop_at=3, progress=False)
    resumed = train(config, model_config, tmp_path / "resumed", resume=True, progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = load_pretrained(straight)
    assert model.config.tokenizer == "libero" and "libero_spatial" in model.config.norm_stats
    # The checkpoint names its demonstrations; the evaluation renders at their resolution by default.
    import argparse

    from vla_lab.cli.libero import camera_resolution
    from vla_lab.libero.models import demos_manifest

    assert demos_manifest(straight) == json.loads((demos / "demos.json").read_text())
    assert demos_manifest(tmp_path / "resumed" / "step-00003")["resolution"] == 128
    options = {"resolution": None, "model": str(straight)}
    assert camera_resolution(argparse.Namespace(**options)) == 128
    assert camera_resolution(argparse.Namespace(**{**options, "resolution": 200})) == 200
    assert camera_resolution(argparse.Namespace(**{**options, "model": "tiny"})) == 256
    metrics = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert all("aux_target_loss" in m and "aux_patch_loss" not in m for m in metrics if "loss" in m)
    # The saved model acts on a LIBERO observation with the suite's statistics.
    from vla_lab.policy import Policy
    from vla_lab.worlds import Observation
    from vla_lab.worlds.libero import LiberoWorld

    obs = np.load(DATA / "libero_spatial_observation.npz")
    policy = Policy(model, LiberoWorld("libero_spatial"))
    assert policy.unnorm_key == "libero_spatial"
    chunk = policy.predict([Observation([obs["full_image"], obs["wrist_image"]], INSTRUCTIONS[0], obs["state"])])
    assert chunk.shape == (1, 8, 7) and np.isfinite(chunk).all()


def test_another_seed_gives_other_crops_and_weights(demos, libero_two_step_run, tmp_path) -> None:
    a = libero_two_step_run  # tiny_libero_recipe(demos, steps=2): seed 5
    b = train(tiny_libero_recipe(demos, steps=2, seed=6), VLAConfig.preset("libero-small"), tmp_path / "b",
              progress=False)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_command_line_trains_the_libero_recipe(demos, tmp_path) -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--out", str(tmp_path / "run"), "--data", str(demos), "--attention",
                              "bidirectional"])
    config, model_config = train_configs(args)
    assert config == TrainConfig.libero_recipe(str(demos), attention="bidirectional")
    assert model_config.name == "libero-small" and config.augment
    with pytest.raises(ConfigError, match="--data"):
        train_configs(parser.parse_args(["train", "--out", str(tmp_path / "x"), "--data", str(tmp_path)]))


@pytest.mark.parametrize("change", [{"aux_patch_weight": 1.0}, {"relabel": True}, {"eval_episodes": 5}])
def test_world_only_settings_are_refused_with_libero_data(demos, change) -> None:
    with pytest.raises(ConfigError, match=next(iter(change))):
        TrainConfig.libero_recipe(str(demos), **change)
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(augment=True)


# --- shipped LIBERO models -----------------------------------------------------------------------


def test_shipped_libero_models_are_named_by_suite_and_mask() -> None:
    from vla_lab.libero import models

    assert models.SHIPPED == ("libero-spatial-causal", "libero-spatial-bidirectional")
    assert models.shipped_path("bidirectional").name == "libero-spatial-bidirectional"
    with pytest.raises(InputError, match="trained_with"):
        models.shipped_name("prefix-lm")
    assert models.demos_manifest(DATA) is None
