"""Tests of the architecture ablation helpers (vla_lab.studies.ablation) at tiny sizes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from testkit import tiny_tabletop_config

from vla_lab import VLAConfig, tabletop
from vla_lab.config import VISION_BACKBONES
from vla_lab.errors import ConfigError, InputError
from vla_lab.stats import wilson_interval
from vla_lab.studies import ablation
from vla_lab.studies.ablation import Variant
from vla_lab.studies.ablation import plots as ablation_plots
from vla_lab.training.train import TrainConfig
from vla_lab.worlds import tabletop as world

SINGLE = ("dinov2", "siglip", "clip")
FUSED = ("dinov2+siglip", "dinov2+clip")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base() -> VLAConfig:
    return tiny_tabletop_config()


@pytest.fixture(scope="module")
def tokenizer():
    return world.build_world_tokenizer()


@pytest.fixture(scope="module")
def pools(base, tokenizer):
    train_pool = tabletop.TabletopData.generate(base, world.split_seeds("train", 24), tokenizer)
    val_pool = tabletop.TabletopData.generate(base, world.split_seeds("validation", 6), tokenizer)
    return train_pool, val_pool


def tiny_train_config(**changes) -> TrainConfig:
    data = {"steps": 3, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "num_examples": 24, "val_examples": 0,
            "eval_interval": 0, "eval_episodes": 0, "test_episodes": 0, "checkpoint_interval": 0,
            "num_threads": 1, "seed": 5}
    data.update(changes)
    return TrainConfig(**data)


# --- grid and validity -------------------------------------------------------------------------


def test_fused_projector_is_refused_on_single_backbones_only() -> None:
    for backbone in SINGLE:
        assert not ablation.is_fused(backbone)
        assert "fused (two-ViT) backbone" in ablation.skip_reason(backbone, "fused-gelu-mlp")
        assert ablation.skip_reason(backbone, "linear") is None
        assert ablation.skip_reason(backbone, "gelu-mlp") is None
    for backbone in FUSED:
        assert ablation.is_fused(backbone)
        assert all(ablation.skip_reason(backbone, p) is None for p in ("linear", "gelu-mlp", "fused-gelu-mlp"))
    with pytest.raises(ConfigError, match="backbone"):
        ablation.skip_reason("resnet", "linear")
    with pytest.raises(ConfigError, match="projector"):
        Variant("dinov2", "mlp")
    with pytest.raises(ConfigError, match="attention"):
        Variant("dinov2", "linear", "prefix-lm")


def test_variant_grid_designs() -> None:
    full = ablation.variant_grid()
    assert len(full) == 5 * 3 * 2 and len(set(full)) == len(full)
    assert sorted(v.name for v in full if not v.valid) == sorted(
        f"{b} | fused-gelu-mlp | {m}" for b in SINGLE for m in ("causal", "bidirectional")
    )
    reduced = ablation.variant_grid(design="reduced")
    archs = {v.architecture for v in reduced}
    assert archs == {f"dinov2+siglip | {p}" for p in ("linear", "gelu-mlp", "fused-gelu-mlp")} | {
        f"{b} | gelu-mlp" for b in (*SINGLE, "dinov2+clip")
    }
    assert len(reduced) == 14 and all(v.valid for v in reduced)
    assert {v.attention for v in reduced} == {"causal", "bidirectional"}
    with pytest.raises(ConfigError, match="design"):
        ablation.variant_grid(design="half")


def test_variant_config_small_and_real(base) -> None:
    for name, backbone_id in ablation.BACKBONES.items():
        config = ablation.variant_config(base, Variant(name, "linear", "bidirectional"))
        known = VISION_BACKBONES[backbone_id]
        assert config.vision.timm_model_ids == known["timm_model_ids"]
        assert config.vision.act_layers == known["act_layers"]
        assert config.vision.fused is ablation.is_fused(name)
        assert config.vision.image_sizes == [base.vision.image_size] * len(known["timm_model_ids"])
        assert all(kw == base.vision.timm_kwargs[0] for kw in config.vision.timm_kwargs)
        assert config.projector == "linear" and config.attention == "bidirectional"
        assert config.llm == base.llm and config.norm_stats == base.norm_stats
        real = ablation.variant_config(base, Variant(name, "gelu-mlp"), scale="real")
        assert real.vision.backbone_id == backbone_id and real.vision.timm_kwargs == [{}] * len(known["timm_model_ids"])
    with pytest.raises(ConfigError, match="fused"):
        ablation.variant_config(base, Variant("clip", "fused-gelu-mlp"))
    with pytest.raises(ConfigError, match="scale"):
        ablation.variant_config(base, Variant("clip", "linear"), scale="medium")


# --- parameters ----------------------------------------------------------------------------------


def _projector_formula(kind: str, d: int, c: int) -> int:
    if kind == "linear":
        return d * c + c
    if kind == "gelu-mlp":
        return d * c + c + c * c + c
    return d * 4 * d + 4 * d + 4 * d * c + c + c * c + c


def test_parameter_counts_follow_the_projector_shapes(base) -> None:
    c = base.llm_dim
    width = base.vision.timm_kwargs[0]["embed_dim"]
    for v in ablation.variant_grid(masks=("causal",)):
        if not v.valid:
            continue
        counts = ablation.parameter_counts(ablation.variant_config(base, v))
        d = width * (2 if ablation.is_fused(v.backbone) else 1)
        assert counts["projector"] == _projector_formula(v.projector, d, c), v.name
        parts = sum(counts[k] for k in counts if k not in ("total", "vision.unused"))
        assert counts["total"] == parts
    # The released layout: DINOv2 (1024) + SigLIP (1152) -> Qwen2.5-0.5B (896).
    real = ablation.parameter_counts(VLAConfig.preset("vla-adapter-pro-qwen2.5-0.5b"))
    assert real["projector"] == _projector_formula("fused-gelu-mlp", 2176, 896) == 27_552_000


@pytest.mark.parametrize("backbone", list(ablation.BACKBONES))
def test_unused_vision_parameters_are_the_ones_without_gradient(base, tokenizer, backbone) -> None:
    config = ablation.variant_config(base, Variant(backbone, "gelu-mlp"))
    model = tabletop.initial_model(config, tokenizer=tokenizer)
    model.train()
    batch = {
        "pixel_values": torch.randn(2, config.vision.channels_per_image * 2, 64, 64),
        "input_ids": torch.randint(3, 300, (2, 5)),
        "proprio": torch.rand(2, 8),
    }
    model(**batch).normalized_actions.sum().backward()
    no_grad = sum(p.numel() for p in model.vision_backbone.parameters() if p.grad is None)
    assert no_grad > 0
    assert ablation.unused_vision_parameters(model) == no_grad


def test_parameter_table_keeps_skipped_architectures(base) -> None:
    table = ablation.parameter_table(base, ablation.variant_grid(), "small")
    assert set(table.columns) == {"backbone", "projector", "scale", "status", "reason", "component", "value"}
    skipped = table[table["status"] == "skipped"]
    assert len(skipped) == 3 and skipped["value"].isna().all() and skipped["reason"].str.contains("fused").all()
    ok = table[(table["status"] == "ok") & (table["component"] == "total")]
    assert len(ok) == 12 and (ok["value"] > 0).all()


# --- latency and memory ------------------------------------------------------------------------


def test_peak_memory_tracks_allocations_and_frees() -> None:
    with ablation.PeakMemory() as tracker:
        a = torch.ones(1000)  # 4000 bytes
        view = a.view(10, 100)
        del a
        assert tracker.current == 4000  # the view keeps the storage alive
        del view
        assert tracker.current == 0
        parts = [torch.zeros(250, dtype=torch.float64) for _ in range(3)]  # 3 x 2000 bytes
        assert tracker.current == 6000
        del parts
    assert tracker.peak == 6000 and tracker.current == 0


def test_forward_memory_grows_with_the_batch_and_cost_rows(base) -> None:
    from vla_lab.bench.inference import synthetic_batch
    from vla_lab.model import random_model

    model = random_model(ablation.variant_config(base, Variant("dinov2", "linear")))
    one = ablation.forward_peak_bytes(model, synthetic_batch(model, 1))
    four = ablation.forward_peak_bytes(model, synthetic_batch(model, 4))
    assert 0 < one < four
    table = ablation.cost_table(base, [Variant("dinov2", "linear"), Variant("clip", "fused-gelu-mlp")],
                                batch_sizes=(1, 2), warmup=0, repeats=2)
    ok = table[table["status"] == "ok"]
    assert set(ok["metric"]) == {"latency_ms", "peak_activation_bytes", "weight_bytes"}
    assert len(ok) == 6 and (ok["value"] > 0).all()
    latency = ok[ok["metric"] == "latency_ms"]
    assert (latency["min"] <= latency["value"]).all() and (latency["value"] <= latency["max"]).all()
    assert table[table["status"] == "skipped"]["variant"].tolist() == ["clip | fused-gelu-mlp | causal"]
    both = ablation.cost_table(base, [Variant("dinov2", "linear", m) for m in ("causal", "bidirectional")],
                               batch_sizes=(2,), warmup=0, repeats=1)
    memory = both[both["metric"] == "weight_bytes"]
    assert list(memory["attention"]) == ["causal", "bidirectional"] and memory["value"].nunique() == 1


# --- data, training, evaluation --------------------------------------------------------------------


def test_data_for_matches_a_fresh_pool(base, tokenizer, pools) -> None:
    train_pool, _ = pools
    config = ablation.variant_config(base, Variant("clip", "gelu-mlp"))
    rebound = ablation.data_for(train_pool, config, tokenizer)
    fresh = tabletop.TabletopData.generate(config, world.split_seeds("train", 24), tokenizer)
    a, b = rebound.batch(range(5)), fresh.batch(range(5))
    assert a["pixel_values"].shape[1] == 6  # 2 images x 3 channels for a single ViT
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(InputError, match="image"):
        ablation.data_for(train_pool, config.replace(num_images=1), tokenizer)


def test_short_recipe_scales_the_step_phases_only() -> None:
    default = TrainConfig()
    short = ablation.short_recipe(default.steps // 10, 8, 100, seed=3)
    assert (short.steps, short.batch_size, short.num_examples, short.seed) == (default.steps // 10, 8, 100, 3)
    for name in ("warmup_steps", "mse_warmup_steps"):
        assert getattr(short, name) == max(1, round(getattr(default, name) / 10)) if getattr(default, name) else 0
    changed = {"steps", "batch_size", "num_examples", "seed", "warmup_steps", "mse_warmup_steps"}
    for name, value in default.to_dict().items():
        if name not in changed:
            assert short.to_dict()[name] == value, name
    assert ablation.short_recipe(1, 2, 10).warmup_steps == 1


def test_train_variant_runs_the_trainer_and_loads_the_model(tmp_path, base, tokenizer) -> None:
    tc = tiny_train_config()
    config = ablation.variant_config(base, Variant("clip", "gelu-mlp", "bidirectional"))
    result = ablation.train_variant(config, tc, tmp_path / "run")
    model = result.model
    assert model.config.attention == "bidirectional" and model.config.projector == "gelu-mlp"
    assert model.config.vision.timm_model_ids == config.vision.timm_model_ids and not model.config.vision.fused
    assert list(result.losses["step"]) == list(range(1, tc.steps + 1))
    assert np.isfinite(result.losses["loss"]).all() and result.train_time_s > 0
    written = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert written["attention"] == "bidirectional" and written["test_episodes"] == 0 and written["seed"] == tc.seed
    # Trained weights differ from the initial ones, are reproducible, and depend on the seed.
    start = tabletop.initial_model(config, seed=tc.seed, tokenizer=tokenizer, init=tc.init, gate=tc.gate_init)
    assert not torch.equal(start.projector.fc1.weight, model.projector.fc1.weight)
    again = ablation.train_variant(config, tc).model
    torch.testing.assert_close(again.projector.fc1.weight, model.projector.fc1.weight, rtol=0, atol=0)
    other = ablation.train_variant(config, tiny_train_config(seed=6)).model
    assert not torch.equal(other.projector.fc1.weight, model.projector.fc1.weight)
    effective = ablation.trainer_config(tc, "causal")
    assert (effective.attention, effective.eval_episodes, effective.test_episodes, effective.log_interval) == (
        "causal", 0, 0, 1)
    assert (effective.steps, effective.lr, effective.seed) == (tc.steps, tc.lr, tc.seed)
    with pytest.raises(InputError, match="named mask"):
        ablation.train_variant(config.replace(attention={"base": "causal", "block": [["text", "vision"]]}), tc)


def test_wilson_interval() -> None:
    low, high = wilson_interval(0, 20)
    assert low == 0 and high == pytest.approx(0.1611, abs=1e-4)
    low, high = wilson_interval(10, 20)
    assert low == pytest.approx(1 - high) and low == pytest.approx(0.2993, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_constant_l1_is_the_median_predictor(pools) -> None:
    train_pool, val_pool = pools
    value = ablation.constant_l1(train_pool, val_pool)
    median = np.median(train_pool.actions, axis=0)
    assert value == pytest.approx(float(np.abs(val_pool.actions - median).mean()))
    # On its own training data the median beats any other constant, e.g. the mean.
    mean = train_pool.actions.mean(axis=0)
    own = ablation.constant_l1(train_pool, train_pool)
    assert own <= float(np.abs(train_pool.actions - mean).mean()) + 1e-9


def test_uniform_mass_and_action_query_attention(base, tokenizer, pools) -> None:
    _, val_pool = pools
    frames = {}
    for mask in ("causal", "bidirectional"):
        config = ablation.variant_config(base, Variant("dinov2", "linear", mask))
        model = tabletop.initial_model(config, tokenizer=tokenizer)
        frame = ablation.action_query_attention(model, ablation.data_for(val_pool, config, tokenizer), n=3)
        assert list(frame.columns) == ["layer", "key_segment", "value", "uniform", "ratio"]
        sums = frame.groupby("layer")[["value", "uniform"]].sum()
        np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
        frames[mask] = frame.set_index(["layer", "key_segment"])
    causal, bidirectional = frames["causal"], frames["bidirectional"]
    assert (causal.xs("stop", level="key_segment")[["value", "uniform"]] == 0).all().all()
    assert (bidirectional.xs("stop", level="key_segment")["uniform"] > 0).all()
    # More visible keys under the bidirectional mask: a smaller uniform share for vision.
    assert (bidirectional.xs("vision", level="key_segment")["uniform"]
            < causal.xs("vision", level="key_segment")["uniform"]).all()


def test_run_grid_tidy_frames_and_summary(base, tokenizer, pools) -> None:
    _, val_pool = pools
    variants = [Variant("siglip", "linear", "causal"), Variant("siglip", "fused-gelu-mlp", "causal")]
    tc = tiny_train_config(steps=2)
    runs = ablation.run_grid(base, variants, tc, val_pool, episodes=2, seeds=[0, 1],
                             attention_examples=2, tokenizer=tokenizer, evaluate_init=True)
    metrics = runs.metrics
    assert {"variant", "backbone", "projector", "attention", "seed", "status", "reason", "stage", "metric",
            "value"} <= set(metrics.columns)
    ok = metrics[metrics["status"] == "ok"]
    assert set(ok["seed"]) == {0, 1} and set(ok["stage"]) == {"init", "trained"}
    assert {"success_rate", "val_action_l1", "initial_action_l1", "train_loss_final"} <= set(ok["metric"])
    skipped = metrics[metrics["status"] == "skipped"]
    assert len(skipped) == 2 and skipped["reason"].str.contains("single ViT").all()
    assert len(runs.losses) == 2 * tc.steps and set(runs.attention["stage"]) == {"init", "trained"}
    summary = ablation.summarize_runs(metrics)
    assert len(summary) == 2 and list(summary["projector"]) == ["linear", "fused-gelu-mlp"]  # grid order
    row = summary.set_index("projector").loc["linear"]
    assert row["seeds"] == 2 and row["skip_reason"] == ""
    assert summary.set_index("projector").loc["fused-gelu-mlp", "skip_reason"].startswith("fused-gelu-mlp needs")
    pooled = ablation.pooled_success(metrics)
    assert set(pooled["stage"]) == {"init", "trained"} and (pooled["episodes"] == 4).all()
    assert ((pooled["ci_low"] <= pooled["success_rate"]) & (pooled["success_rate"] <= pooled["ci_high"])).all()


def test_figures_have_titles_labels_and_colourbars(base, tokenizer, pools) -> None:
    _, val_pool = pools
    params = ablation.parameter_table(base, ablation.variant_grid(masks=("causal",)), "small")
    fig = ablation_plots.plot_parameters(params)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # heatmap + colourbar
    runs = ablation.run_grid(base, [Variant("dinov2", "linear", m) for m in ("causal", "bidirectional")],
                             tiny_train_config(steps=1), val_pool, episodes=1, attention_examples=2,
                             tokenizer=tokenizer, evaluate_init=False)
    init = ablation.pooled_success(runs.metrics).set_index("stage").loc["init"]
    assert init["success_rate"].isna().all() and init["val_action_l1"].notna().all()
    for fig in (ablation_plots.plot_training(runs.metrics, 0.2), ablation_plots.plot_losses(runs.losses),
                ablation_plots.plot_attention(runs.attention)):
        assert all(ax.get_xlabel() for ax in fig.axes if ax.get_label() != "<colorbar>")
        assert any(ax.get_title() for ax in fig.axes)
    assert len(ablation_plots.plot_attention(runs.attention).axes) == 4  # two heatmaps, two colourbars
    segments = ablation_plots.plot_attention_segments(runs.attention)
    assert len(segments.axes) == 2 and segments.axes[0].get_xlabel() == "key segment"
    texts = [t.get_text() for t in segments.axes[0].texts]
    assert texts.count("masked") == 1  # STOP is hidden from the queries by the causal mask only
    labels = [t.get_text() for t in segments.axes[0].get_yticklabels()]
    assert labels == ["dinov2 | linear | causal", "dinov2 | linear | bidirectional"]
    matrix = ablation_plots.attention_matrix(runs.attention, "vision", "trained", "ratio")
    assert list(matrix.index) == ["dinov2 | linear | causal", "dinov2 | linear | bidirectional"]
    assert isinstance(matrix, pd.DataFrame) and matrix.shape[1] == base.num_llm_layers


def test_deepened_config_matches_the_parameters_of_a_fused_reference(base) -> None:
    target = ablation.parameter_counts(ablation.variant_config(base, Variant("dinov2+siglip", "gelu-mlp")))["total"]
    config, depth = ablation.deepened_config(base, Variant("dinov2", "gelu-mlp"), target)
    assert [k["depth"] for k in config.vision.timm_kwargs] == [depth]
    total = ablation.parameter_counts(config)["total"]
    neighbours = []
    for d in (depth - 1, depth + 1):
        vision = ablation.stand_in_vision(base, "dinov2")
        vision["timm_kwargs"] = [{**vision["timm_kwargs"][0], "depth": d}]
        neighbours.append(ablation.parameter_counts(config.replace(vision=vision))["total"])
    assert depth > base.vision.timm_kwargs[0]["depth"]
    assert all(abs(total - target) <= abs(n - target) for n in neighbours)
    same, same_depth = ablation.deepened_config(base, Variant("dinov2+siglip", "gelu-mlp"), target)
    assert same_depth == base.vision.timm_kwargs[0]["depth"] and ablation.parameter_counts(same)["total"] == target
    with pytest.raises(ConfigError, match="total"):
        ablation.deepened_config(base, Variant("dinov2", "gelu-mlp"), 0)


def test_equal_parameter_cost_rows(base) -> None:
    reference = Variant("dinov2+siglip", "gelu-mlp")
    table = ablation.equal_parameter_cost(base, [Variant("clip", "gelu-mlp"), Variant("clip", "fused-gelu-mlp")],
                                          reference, batch_sizes=(1,), warmup=0, repeats=1)
    ok = table[table["status"] == "ok"]
    assert list(dict.fromkeys(ok["variant"])) == [reference.name, "clip | gelu-mlp | causal"]
    assert (ok["reference_parameters"] == ok[ok["variant"] == reference.name]["parameters"].iloc[0]).all()
    clip = ok[ok["variant"] == "clip | gelu-mlp | causal"].iloc[0]
    assert clip["depth"] > base.vision.timm_kwargs[0]["depth"]
    assert abs(clip["parameters"] / clip["reference_parameters"] - 1) < 0.1
    assert set(ok["metric"]) == {"latency_ms", "peak_activation_bytes", "weight_bytes"}
    assert table[table["status"] == "skipped"]["variant"].tolist() == ["clip | fused-gelu-mlp | causal"]


def _swap_records(models: dict[str, tuple[str, int, list[bool]]]) -> pd.DataFrame:
    rows = []
    for model, (recipe, seed, successes) in models.items():
        for scene, ok in enumerate(successes):
            for own in (True, False):
                rows.append({"model": model, "trained_with": "causal", "model_seed": seed, "recipe": recipe,
                             "random_init": False, "split": "test", "scene": scene, "own_mask": own,
                             "success": ok if own else False, "action_l1": 0.1 if ok else 0.3})
    return pd.DataFrame(rows)


def test_trained_architectures_are_compared_with_the_preset_seed_by_seed() -> None:
    assert ablation.architecture_of_recipe("shipped") == ablation.PRESET
    assert ablation.architecture_of_recipe("shipped; projector=linear") == "projector=linear"
    assert ablation.architecture_of_recipe("no-target-aux") is None
    good, bad = [True] * 30, [False] * 28 + [True] * 2
    records = _swap_records({
        "p0": ("shipped", 0, good), "p1": ("shipped", 1, good),
        "lin0": ("shipped; projector=linear", 0, bad), "lin1": ("shipped; projector=linear", 1, bad),
        "gelu0": ("shipped; projector=gelu-mlp", 0, good), "gelu1": ("shipped; projector=gelu-mlp", 1, bad),
        "v1": ("shipped; head_version=v1", 0, good), "other": ("no-target-aux", 0, bad)})
    summary = ablation.trained_summary(records)
    pooled = summary[summary["model_seed"] == "pooled"].set_index("architecture")
    assert set(pooled.index) == {"preset", "projector=linear", "projector=gelu-mlp", "head_version=v1"}
    assert pooled.loc["projector=linear", "n"] == 60 and pooled.loc["projector=linear", "successes"] == 4
    low, high = pooled.loc["preset", "success_ci95"]
    assert (low, high) == wilson_interval(60, 60)
    table = ablation.compare_to_preset(records)
    verdict = table.groupby("architecture")["verdict"].first()
    assert verdict.to_dict() == {"head_version=v1": "one seed", "projector=gelu-mlp": "not separated",
                                 "projector=linear": "worse"}
    lin = table[table["architecture"] == "projector=linear"]
    assert (lin["n"] == 30).all() and (lin["mcnemar_p"] < 1e-6).all() and (lin["wilcoxon_p"] < 1e-4).all()
    with pytest.raises(InputError, match="records"):
        ablation.trained_summary(records.drop(columns=["action_l1"]))


def test_the_trained_figure_draws_every_seed_with_its_interval() -> None:
    from vla_lab.studies.ablation import plots

    good, mixed = [True] * 30, [True] * 24 + [False] * 6
    records = _swap_records({"p0": ("shipped", 0, good), "p1": ("shipped", 1, mixed),
                             "lin0": ("shipped; projector=linear", 0, mixed)})
    summary = ablation.trained_summary(records)
    fig = plots.plot_trained(summary, "preset (fused-gelu-mlp)")
    ax_s, ax_l = fig.axes[:2]
    # one interval per seed and one for the pooled seeds of each architecture, none clipped by the axis
    assert len(ax_s.containers) == 1 + 2 and len(ax_l.containers) == 2
    lows = [low for low, _ in summary["success_ci95"]]
    assert ax_s.get_xlim()[0] <= min(lows) and ax_s.get_xlim()[1] >= 1.0
    assert [t.get_text() for t in ax_s.get_yticklabels()] == ["preset (fused-gelu-mlp)", "projector=linear"]
