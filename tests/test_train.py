"""Tests of the trainer (vla_lab.training.train) at tiny sizes."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from testkit import read_metrics, tiny_tabletop_config, tiny_train_config

from vla_lab import tabletop
from vla_lab.cli import build_parser
from vla_lab.cli.train import train_configs
from vla_lab.errors import ConfigError
from vla_lab.model import load_pretrained
from vla_lab.training.train import (
    TRAINER_STATE,
    TrainConfig,
    batch_indices,
    learning_rate,
    train,
)
from vla_lab.worlds import tabletop as world

# --- configuration and schedule ----------------------------------------------------------------


def test_train_config_json_round_trip(tmp_path) -> None:
    config = TrainConfig(steps=7, lr=2e-4, betas=(0.8, 0.95), attention="bidirectional", seed=5)
    assert TrainConfig.from_json(config.to_json()) == config
    config.to_json(tmp_path / "train.json")
    assert TrainConfig.from_json(tmp_path / "train.json") == config
    assert TrainConfig.from_dict(json.loads(config.to_json())).betas == (0.8, 0.95)
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError, match="steps"):
        TrainConfig(steps=0)


def test_learning_rate_schedule() -> None:
    config = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    floor = 1e-4
    assert learning_rate(0, config) == pytest.approx(1e-4)
    assert learning_rate(4, config) == pytest.approx(5e-4)
    assert learning_rate(9, config) == pytest.approx(1e-3)
    assert learning_rate(10, config) == pytest.approx(1e-3)
    assert learning_rate(60, config) == pytest.approx(floor + (1e-3 - floor) * 0.5)
    assert learning_rate(35, config) == pytest.approx(floor + (1e-3 - floor) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(110, config) == pytest.approx(floor)
    values = [learning_rate(s, config) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    no_warmup = TrainConfig(steps=10, lr=1.0, warmup_steps=0, min_lr_ratio=0.0)
    assert learning_rate(0, no_warmup) == pytest.approx(1.0)


def test_batch_indices_are_seeded_permutations() -> None:
    first_epoch = torch.cat([batch_indices(s, 5, 20, seed=1) for s in range(4)])
    assert sorted(first_epoch.tolist()) == list(range(20))
    assert torch.equal(batch_indices(2, 5, 20, seed=1), batch_indices(2, 5, 20, seed=1))
    assert not torch.equal(first_epoch, torch.cat([batch_indices(s, 5, 20, seed=2) for s in range(4)]))
    crossing = batch_indices(3, 6, 20, seed=1)  # 18..23: two from epoch 0, four from epoch 1
    assert len(crossing) == 6


# --- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = tiny_train_config(steps=40, eval_interval=40)
    final = train(config, tiny_tabletop_config(), out, progress=False)
    return out, final, config


def test_training_lowers_the_loss(trained) -> None:
    out, final, _ = trained
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:4]) / 4


def test_bf16_autocast_trains_float32_weights(tmp_path) -> None:
    """``mixed_precision="bf16"`` (meant for CUDA) runs the forward pass under bf16 autocast here on CPU: the
    losses differ from float32 training by rounding only, still fall, and the saved weights stay float32."""
    losses = {}
    for mode in ("no", "bf16"):
        final = train(tiny_train_config(mixed_precision=mode), tiny_tabletop_config(), tmp_path / mode, progress=False)
        losses[mode] = [r["loss"] for r in read_metrics(tmp_path / mode) if "loss" in r]
        weights = load_file(str(final / "model.safetensors"))
        assert {w.dtype for w in weights.values()} == {torch.float32}
    assert losses["bf16"] != losses["no"]
    assert losses["bf16"][0] == pytest.approx(losses["no"][0], rel=0.02)
    assert all(math.isfinite(v) for v in losses["bf16"])
    assert sum(losses["bf16"][-4:]) / 4 < 0.5 * losses["bf16"][0]


def test_checkpoint_is_released_layout_and_predicts_identically(trained) -> None:
    out, final, config = trained
    names = {p.name for p in final.iterdir()}
    expected = {
        "config.json", "model.safetensors", "action_head--40_checkpoint.pt", "proprio_projector--40_checkpoint.pt",
        "dataset_statistics.json", "preprocessor_config.json", "vla_lab_config.json", "vocab.json", "merges.txt",
    }
    assert expected <= names
    assert json.loads((final / "config.json").read_text())["model_type"] == "openvla"
    model = load_pretrained(final)
    assert model.processor.tokenizer.vocab_size == 381
    # The in-memory model's validation L1 at the last step equals the reloaded checkpoint's, bit for bit.
    logged = [r for r in read_metrics(out) if "val_action_l1" in r][-1]
    val = tabletop.TabletopData.generate(
        model.config, world.split_seeds("validation", config.val_examples), model.processor.tokenizer
    )
    assert tabletop.action_l1(model, val) == logged["val_action_l1"]
    # And the checkpoint of the step directory is the same model.
    twin = load_pretrained(out / "step-00040")
    scene = world.sample_scene(world.SPLITS["test"][5])
    obs = world.render(scene)
    a = tabletop.policy_for(model)(obs)
    b = tabletop.policy_for(twin)(obs)
    assert (a == b).all()
    state = torch.load(out / "step-00040" / TRAINER_STATE, weights_only=True)
    assert state["step"] == 40 and isinstance(state["rng"]["torch"], torch.Tensor)


def test_resume_equals_straight_training(tmp_path) -> None:
    config = tiny_train_config(steps=8, num_examples=24, attention="bidirectional")
    model_config = tiny_tabletop_config()
    straight = train(config, model_config, tmp_path / "straight", progress=False)
    half = train(config, model_config, tmp_path / "resumed", stop_at=4, progress=False)
    assert half.name == "step-00004" and not (tmp_path / "resumed" / "final").exists()
    # The resumed run counts its training time on from what the first half logged (marked here as 1000 s).
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert logged[-1]["step"] == 4
    logged[-1]["train_time_s"] = 1000.0
    metrics.write_text("".join(json.dumps(r) + "\n" for r in logged))
    resumed = train(config, model_config, tmp_path / "resumed", resume=True, progress=False)
    for name in ("model.safetensors",):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("action_head--8_checkpoint.pt", "proprio_projector--8_checkpoint.pt"):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(resumed / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_pretrained(resumed).config.attention == "bidirectional"
    last = [r for r in read_metrics(tmp_path / "resumed") if "train_time_s" in r][-1]
    assert last["step"] == 8 and 1000.0 < last["train_time_s"] < 1000.0 + 600


def test_command_line_options(tmp_path) -> None:
    parser = build_parser()
    base = tiny_train_config(steps=50)
    args = parser.parse_args(
        ["train", "--out", str(tmp_path), "--attention", "bidirectional", "--steps", "3", "--config", base.to_json()]
    )
    config, model_config = train_configs(args)
    assert config.steps == 3 and config.attention == "bidirectional" and config.batch_size == 8
    assert model_config.name == "tabletop"
    defaults, _ = train_configs(parser.parse_args(["train", "--out", str(tmp_path)]))
    assert defaults == TrainConfig()


def test_auxiliary_losses_are_logged_and_learn(tmp_path) -> None:
    config = tiny_train_config(steps=30, aux_patch_weight=1.0, aux_target_weight=1.0, relabel=True, num_examples=32)
    train(config, tiny_tabletop_config(), tmp_path / "aux", progress=False)
    records = [r for r in read_metrics(tmp_path / "aux") if "aux_patch_loss" in r]
    assert len(records) == 30
    first, last = records[0]["aux_patch_loss"], sum(r["aux_patch_loss"] for r in records[-5:]) / 5
    assert last < 0.7 * first
    off = tiny_train_config(steps=2, aux_patch_weight=0.0, aux_target_weight=0.0, relabel=False)
    train(off, tiny_tabletop_config(), tmp_path / "plain", progress=False)
    assert not any("aux_patch_loss" in r for r in read_metrics(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="aux_target_weight"):
        tiny_train_config(aux_target_weight=-1.0)


def test_the_world_split_bounds_apply_to_the_tabletop_world_only(tmp_path) -> None:
    """num_examples / data_start choose tabletop training seeds; with LIBERO demonstrations they mean nothing and
    are not checked against the world's train split."""
    beyond = len(world.SPLITS["train"])
    with pytest.raises(ConfigError, match="exceeds the train split"):
        TrainConfig(data_start=beyond)
    config = TrainConfig.libero_recipe(str(tmp_path / "demos"), data_start=beyond)
    assert config.libero and config.data_start == beyond


def test_train_command_leaves_the_environment_alone(tmp_path, monkeypatch) -> None:
    """--num-threads reaches torch through the trainer; the command does not set OMP_NUM_THREADS in its own
    environment (torch is imported long before, so it only leaked into later subprocesses)."""
    from vla_lab.cli.train import run
    from vla_lab.training import train as train_module

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = {}

    def fake_train(config, model_config, out, **kwargs):
        seen["num_threads"] = config.num_threads
        (out / "final").mkdir(parents=True)
        return out / "final"

    monkeypatch.setattr(train_module, "train", fake_train)
    args = build_parser().parse_args(["train", "--out", str(tmp_path / "run"), "--num-threads", "1"])
    assert run(args) == 0
    assert seen == {"num_threads": 1} and "OMP_NUM_THREADS" not in os.environ
