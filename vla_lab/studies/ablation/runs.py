"""Training and evaluating ablation variants: a short run of the repository's trainer from scratch on the
tabletop world (:func:`train_variant`, recipe :func:`short_recipe`), then closed-loop success, action L1
and where the action queries attend (:func:`action_query_attention`), at initialisation and after training.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import tabletop
from vla_lab.config import CONTENT_SEGMENTS, PROJECTORS, AttentionLike, VLAConfig, coarse_segment
from vla_lab.errors import InputError
from vla_lab.interp import capture, segment_mass
from vla_lab.model import SequenceLayout, VLAAdapter, load_pretrained
from vla_lab.processing import QwenTokenizer
from vla_lab.stats import wilson_interval
from vla_lab.studies.ablation.grid import BACKBONES, MASKS, Variant, variant_config
from vla_lab.training.run_dir import METRICS
from vla_lab.training.train import TrainConfig, train

# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def data_for(
    data: tabletop.TabletopData, config: VLAConfig, tokenizer: QwenTokenizer | None = None
) -> tabletop.TabletopData:
    """The same world examples prepared for ``config``'s featurizers (pixel normalisation and channels).

    Images, prompts, proprio and actions do not depend on the backbone, so a pool generated once
    serves every variant with the same ``num_images`` and normalisation statistics.
    """
    if data.images.shape[1] != config.num_images:
        raise InputError(f"data: holds {data.images.shape[1]} image(s) per example, config wants {config.num_images}")
    processor = tabletop.world_processor(config, tokenizer)
    return dataclasses.replace(data, image_processor=processor.image_processor)


def short_recipe(steps: int, batch_size: int, num_examples: int, **overrides: Any) -> TrainConfig:
    """The trainer's recipe (:class:`TrainConfig` defaults) shortened to ``steps`` optimizer steps.

    Phases counted in steps (learning-rate warm-up, MSE warm-up) are scaled by ``steps`` / the default
    number of steps (at least one step where the default has any); every other field keeps its default
    unless given in ``overrides``.
    """
    default = TrainConfig()
    scale = steps / default.steps
    values: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "num_examples": num_examples}
    for name in ("warmup_steps", "mse_warmup_steps"):
        if hasattr(default, name):
            base = getattr(default, name)
            values[name] = max(1, round(base * scale)) if base > 0 else 0
    values.update(overrides)
    return dataclasses.replace(default, **values)


@dataclass
class TrainResult:
    """A trained model, its per-step training losses (``loss`` and any auxiliary ones) and wall time."""

    model: VLAAdapter
    losses: pd.DataFrame
    train_time_s: float


def trainer_config(train_config: TrainConfig, attention: AttentionLike) -> TrainConfig:
    """What :func:`train_variant` hands the trainer: ``train_config`` with ``attention`` (a named mask),
    without the trainer's own validation, test episodes and intermediate checkpoints, logging every step."""
    if not isinstance(attention, str):
        raise InputError(f"attention: got {attention!r}, expected a named mask for the trainer")
    return dataclasses.replace(train_config, attention=attention, val_examples=0, eval_interval=0, eval_episodes=0,
                               test_episodes=0, checkpoint_interval=0, log_interval=1)


def train_variant(
    config: VLAConfig, train_config: TrainConfig, out_dir: str | Path | None = None
) -> TrainResult:
    """Train ``config`` from scratch with the repository's trainer (:func:`vla_lab.training.train.train`), load it.

    The trainer's own validation, test evaluation and intermediate checkpoints are switched off (the
    ablation evaluates every variant itself) and it logs every step; ``train_config.attention`` is set
    to ``config.attention``. The run goes to ``out_dir`` (kept) or to a temporary directory (removed).
    """
    tc = trainer_config(train_config, config.attention)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(out_dir) if out_dir is not None else Path(tmp)
        final = train(tc, config, directory, progress=False)
        model = load_pretrained(final, device=tc.device)
        records = [json.loads(line) for line in (directory / METRICS).read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    losses = pd.DataFrame(steps).drop(columns=["lr", "grad_norm", "train_time_s"], errors="ignore")
    train_time = max((float(r["train_time_s"]) for r in steps if "train_time_s" in r), default=float("nan"))
    return TrainResult(model.eval(), losses, train_time)


def evaluate_variant(
    model: VLAAdapter, episodes: int, val_data: tabletop.TabletopData | None = None, split: str = "test"
) -> dict[str, float]:
    """Closed-loop success on ``episodes`` scenes of ``split`` and action L1 (normalised units).

    ``initial_action_l1``: L1 to the expert chunk at each episode's first state (closed-loop scenes);
    ``val_action_l1``: L1 over every chunk of ``val_data`` (open loop, held-out examples).
    """
    result = tabletop.evaluate_model(model, split, episodes, progress=False)
    low, high = result["success_ci95"]
    out = {
        "success_rate": result["success_rate"],
        "success_ci_low": low,
        "success_ci_high": high,
        "episodes": float(result["num_episodes"]),
        "initial_action_l1": result.get("action_l1", float("nan")),
        "wrong_object_rate": result["outcomes"]["wrong_object"] / max(result["num_episodes"], 1),
    }
    if val_data is not None and len(val_data):
        out["val_action_l1"] = tabletop.action_l1(model, val_data)
    return out


@torch.no_grad()
def action_query_attention(model: VLAAdapter, data: tabletop.TabletopData, n: int = 8) -> pd.DataFrame:
    """Where the action queries attend in the LLM, per layer and key segment.

    Mean over the first ``n`` examples of ``data`` and over heads of ``interp.segment_mass``
    (mode ``"segments"``), next to ``uniform``: the mass a query spreading evenly over the keys its
    mask allows would put on the segment (the token-count baseline), and ``ratio`` = value / uniform.
    Columns: layer, key_segment, value, uniform, ratio.
    """
    was_training = model.training
    model.eval()
    batch = data.batch(range(min(n, len(data))))
    batch.pop("actions")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    try:
        with capture(model, mode="segments") as cache:
            out = model(**batch)
    finally:
        model.train(was_training)
    df = segment_mass(cache)
    df = df[df["query_segment"] == "action_queries"]
    mean = df.groupby(["layer", "key_segment"], as_index=False)["value"].mean()
    uniform = uniform_mass(out.allowed.cpu(), out.layouts, "action_queries")
    mean["uniform"] = mean["key_segment"].map(uniform).astype(float)
    mean["ratio"] = mean["value"] / mean["uniform"].where(mean["uniform"] > 0)
    order = {s: i for i, s in enumerate(CONTENT_SEGMENTS)}
    mean = mean.sort_values(["layer", "key_segment"], key=lambda c: c.map(order) if c.name == "key_segment" else c)
    return mean.reset_index(drop=True)


def uniform_mass(allowed: torch.Tensor, layouts: Sequence[SequenceLayout], query_segment: str) -> dict[str, float]:
    """Mass per key segment of a uniform distribution over the allowed keys, averaged over the queries
    of ``query_segment`` and over samples (``allowed``: the model's boolean (B, S, S) mask)."""
    totals: dict[str, list[float]] = {}
    for b, layout in enumerate(layouts):
        segments = layout.segments(fine=True)
        rows = allowed[b, layout.span(query_segment).slice].double()
        rows = rows / rows.sum(dim=1, keepdim=True)
        per_key: dict[str, float] = {}
        for name, span in segments.items():
            if name == "padding" or not len(span):
                continue
            key = coarse_segment(name)
            per_key[key] = per_key.get(key, 0.0) + float(rows[:, span.slice].sum(dim=1).mean())
        for key, value in per_key.items():
            totals.setdefault(key, []).append(value)
    return {k: float(np.mean(v)) for k, v in totals.items()}


@dataclass
class VariantRun:
    """Everything one trained variant produced (tidy frames carry the variant's key columns)."""

    metrics: pd.DataFrame
    losses: pd.DataFrame
    attention: pd.DataFrame


def _key(variant: Variant, seed: int) -> dict[str, Any]:
    return {"variant": variant.name, "backbone": variant.backbone, "projector": variant.projector,
            "attention": variant.attention, "seed": seed}


def run_variant(
    base: VLAConfig,
    variant: Variant,
    train_config: TrainConfig,
    val_data: tabletop.TabletopData,
    episodes: int,
    scale: str = "small",
    attention_examples: int = 8,
    tokenizer: QwenTokenizer | None = None,
    evaluate_init: bool = True,
) -> VariantRun:
    """Train one variant (:func:`train_variant`, seed ``train_config.seed``), evaluate it on
    ``episodes`` test scenes and ``val_data`` (re-prepared for the variant), and read where its action
    queries attend.

    Skipped variants give one metrics row (``status`` "skipped", ``reason``) and empty frames.
    Attention and the held-out action L1 (with ``evaluate_init`` also the closed-loop evaluation) are
    read at initialisation (``stage`` "init") and after training (``"trained"``), so every variant is
    compared with its own start.
    """
    key = _key(variant, train_config.seed)
    if not variant.valid:
        metrics = pd.DataFrame([{**key, "status": "skipped", "reason": variant.skip_reason, "stage": "trained",
                                 "metric": "success_rate", "value": np.nan}])
        return VariantRun(metrics, pd.DataFrame(), pd.DataFrame())
    config = variant_config(base, variant, scale)
    val_pool = data_for(val_data, config, tokenizer)
    init_model = tabletop.initial_model(config, seed=train_config.seed, tokenizer=tokenizer, init=train_config.init,
                                      gate=train_config.gate_init).to(train_config.device)
    attention = [action_query_attention(init_model, val_pool, attention_examples).assign(stage="init")]
    if evaluate_init:
        stages = {"init": evaluate_variant(init_model, episodes, val_pool)}
    else:
        stages = {"init": {"val_action_l1": tabletop.action_l1(init_model, val_pool)}}
    del init_model
    result = train_variant(config, train_config)
    attention.append(action_query_attention(result.model, val_pool, attention_examples).assign(stage="trained"))
    trained = evaluate_variant(result.model, episodes, val_pool)
    loss = result.losses["loss"].to_numpy()
    trained["train_loss_final"] = float(np.mean(loss[-max(1, len(loss) // 10):]))
    trained["train_time_s"] = result.train_time_s
    trained["train_steps"] = float(train_config.steps)
    trained["train_examples_seen"] = float(train_config.steps * train_config.batch_size)
    trained["parameters"] = float(sum(p.numel() for p in result.model.parameters()))
    stages["trained"] = trained
    metrics = pd.DataFrame([{**key, "status": "ok", "reason": "", "stage": stage, "metric": m, "value": float(v)}
                            for stage, values in stages.items() for m, v in values.items()])
    losses = result.losses.copy()
    for name, value in reversed(key.items()):
        losses.insert(0, name, value)
    frame = pd.concat(attention, ignore_index=True)
    for name, value in reversed(key.items()):
        frame.insert(0, name, value)
    return VariantRun(metrics, losses, frame)


def constant_l1(data: tabletop.TabletopData, val_data: tabletop.TabletopData) -> float:
    """Action L1 on ``val_data`` of the best input-independent predictor fitted on ``data``.

    The per-element median of the training chunks (the minimiser of L1 over ``data``): a model must
    beat this to have used its inputs at all.
    """
    median = np.median(data.actions, axis=0)
    return float(np.abs(val_data.actions - median[None]).mean())


def run_grid(
    base: VLAConfig,
    variants: Sequence[Variant],
    train_config: TrainConfig,
    val_data: tabletop.TabletopData,
    episodes: int,
    seeds: Sequence[int] = (0,),
    scale: str = "small",
    attention_examples: int = 8,
    tokenizer: QwenTokenizer | None = None,
    on_variant: Callable[[Variant, int], None] | None = None,
    evaluate_init: bool = True,
) -> VariantRun:
    """:func:`run_variant` for every variant and seed, concatenated."""
    runs = []
    for variant in variants:
        for seed in seeds:
            if on_variant is not None:
                on_variant(variant, seed)
            tc = dataclasses.replace(train_config, seed=int(seed))
            runs.append(run_variant(base, variant, tc, val_data, episodes, scale, attention_examples, tokenizer,
                                    evaluate_init))

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return VariantRun(cat([r.metrics for r in runs]), cat([r.losses for r in runs]), cat([r.attention for r in runs]))


def summarize_runs(metrics: pd.DataFrame, stage: str = "trained") -> pd.DataFrame:
    """Wide view of :func:`run_grid` metrics at ``stage``: one row per variant, mean over seeds.

    Skipped variants keep a row with their ``skip_reason``; ``seeds`` counts the seeds averaged.
    """
    index = ["backbone", "projector", "attention"]
    ok = metrics[(metrics["status"] == "ok") & (metrics["stage"] == stage)]
    wide = ok.pivot_table(index=index, columns="metric", values="value", aggfunc="mean")
    wide.columns.name = None
    wide["seeds"] = ok.groupby(index)["seed"].nunique()
    skipped = metrics[metrics["status"] == "skipped"].drop_duplicates(index).set_index(index)["reason"]
    wide = wide.reindex(wide.index.union(skipped.index))
    wide["skip_reason"] = skipped.reindex(wide.index).fillna("")
    wide = wide.reset_index()
    keys = order_key(wide) * 10 + wide["attention"].map({m: i for i, m in enumerate(MASKS)})
    return wide.iloc[np.argsort(keys.to_numpy(), kind="stable")].reset_index(drop=True)



def order_key(frame: pd.DataFrame) -> pd.Series:
    """Sort key of variants in grid order (backbone, then projector)."""
    backbone = frame["backbone"].map({b: i for i, b in enumerate(BACKBONES)})
    projector = frame["projector"].map({p: i for i, p in enumerate(PROJECTORS)})
    return backbone * 10 + projector




def pooled_success(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per variant and stage: success pooled over seeds (Wilson interval), held-out L1 averaged.

    Columns: backbone, projector, attention, stage, successes, episodes, val_action_l1, seeds,
    success_rate, ci_low, ci_high (NaN where a stage was not evaluated closed-loop).
    """
    ok = metrics[metrics["status"] == "ok"]
    wide = ok.pivot_table(index=["backbone", "projector", "attention", "stage", "seed"], columns="metric",
                          values="value").reset_index()
    for column in ("success_rate", "episodes", "val_action_l1"):
        if column not in wide:
            wide[column] = np.nan
    wide["successes"] = (wide["success_rate"] * wide["episodes"]).round()
    group = wide.groupby(["backbone", "projector", "attention", "stage"], as_index=False)
    out = group.agg(successes=("successes", "sum"), episodes=("episodes", "sum"),
                    val_action_l1=("val_action_l1", "mean"), seeds=("seed", "nunique"))
    out["episodes"] = out["episodes"].where(out["episodes"] > 0)
    out["success_rate"] = out["successes"] / out["episodes"]
    bounds = [wilson_interval(int(k), int(n)) if n == n else (np.nan, np.nan)
              for k, n in zip(out["successes"], out["episodes"])]
    out["ci_low"], out["ci_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return out
