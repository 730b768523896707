"""Figures of the ablation tables (matplotlib Figures without pyplot; export with
:func:`vla_lab.viz.export_figure`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vla_lab.config import CONTENT_SEGMENTS, PROJECTORS
from vla_lab.studies.ablation.grid import BACKBONES, MASKS, SCALES
from vla_lab.studies.ablation.runs import order_key, pooled_success

_MASK_COLORS = {"causal": "#1b9e77", "bidirectional": "#d95f02"}


def _architectures(frame: pd.DataFrame) -> list[str]:
    rows = frame.drop_duplicates(["backbone", "projector"]).copy()
    rows = rows.iloc[np.argsort(order_key(rows).to_numpy(), kind="stable")]
    return [f"{b} | {p}" for b, p in zip(rows["backbone"], rows["projector"])]


def _masks(frame: pd.DataFrame) -> list[str]:
    present = set(frame["attention"])
    return [m for m in MASKS if m in present]


def _barh(ax: Any, frame: pd.DataFrame, value: str, low: str | None = None, high: str | None = None) -> list[str]:
    """Horizontal bars per architecture, one per mask; returns the architecture labels (top to bottom)."""
    labels = _architectures(frame)
    masks = _masks(frame)
    height = 0.8 / max(len(masks), 1)
    for j, mask in enumerate(masks):
        sel = frame[frame["attention"] == mask]
        lookup = {f"{b} | {p}": i for i, (b, p) in enumerate(zip(sel["backbone"], sel["projector"]))}
        ys: list[float] = []
        xs: list[float] = []
        err: list[list[float]] = [[], []]
        for i, label in enumerate(labels):
            if label not in lookup:
                continue
            row = sel.iloc[lookup[label]]
            ys.append(i + (j - (len(masks) - 1) / 2) * height)
            xs.append(row[value])
            err[0].append(row[value] - row[low] if low else 0.0)
            err[1].append(row[high] - row[value] if high else 0.0)
        ax.barh(ys, xs, height=height, color=_MASK_COLORS.get(mask, "grey"), label=mask,
                xerr=err if low or high else None, capsize=2)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    return labels


def plot_parameters(params: pd.DataFrame) -> Figure:
    """Total parameters (millions) per backbone x projector, one heatmap per scale; skipped cells hatched."""
    scales = [s for s in SCALES if s in set(params["scale"])]
    fig = Figure(figsize=(5.2 * len(scales), 3.6), layout="constrained")
    axes = fig.subplots(1, len(scales), squeeze=False)[0]
    for ax, scale in zip(axes, scales):
        sel = params[(params["scale"] == scale) & (params["component"] == "total")]
        backbones = [b for b in BACKBONES if b in set(sel["backbone"])]
        matrix = np.full((len(backbones), len(PROJECTORS)), np.nan)
        for _, row in sel.iterrows():
            matrix[backbones.index(row["backbone"]), PROJECTORS.index(row["projector"])] = row["value"] / 1e6
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", aspect="auto")
        low, high = np.nanmin(matrix), np.nanmax(matrix)
        for (i, j), value in np.ndenumerate(matrix):
            if np.isnan(value):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="grey"))
                ax.text(j, i, "skipped", ha="center", va="center", fontsize=8, color="dimgrey")
            else:
                bright = high > low and (value - low) / (high - low) > 0.6
                text = f"{value:,.1f}M" if value >= 10 else f"{value:.3f}M"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
        ax.set_xticks(range(len(PROJECTORS)), PROJECTORS)
        ax.set_yticks(range(len(backbones)), backbones)
        ax.set_xlabel("projector")
        ax.set_ylabel("vision backbone")
        ax.set_title(f"total parameters, {scale} scale")
        fig.colorbar(image, ax=ax, label="parameters (millions)")
    return fig


def plot_cost(cost: pd.DataFrame, batch: int, note: str = "") -> Figure:
    """Forward latency (median, min-max bars) and peak activation memory per variant at ``batch``.

    ``note`` is added to both titles (e.g. "equal total parameters").
    """
    ok = cost[(cost["status"] == "ok") & (cost["batch"] == batch)]
    latency = ok[ok["metric"] == "latency_ms"]
    memory = ok[ok["metric"] == "peak_activation_bytes"].assign(value=lambda d: d["value"] / 2**20)
    fig = Figure(figsize=(10, 0.45 * latency["projector"].count() / max(len(_masks(latency)), 1) + 1.8),
                 layout="constrained")
    ax_lat, ax_mem = fig.subplots(1, 2, sharey=True)
    _barh(ax_lat, latency, "value", "min", "max")
    _barh(ax_mem, memory, "value")
    device = ", ".join(sorted(set(latency["device"]))) if len(latency) else "?"
    ax_lat.set_xlabel("forward latency (ms, median; bars min-max)")
    ax_mem.set_xlabel("peak memory allocated in the forward (MiB)")
    ax_lat.set_ylabel("backbone | projector")
    suffix = f"\n{note}" if note else ""
    ax_lat.set_title(f"forward latency, batch {batch}, {device}{suffix}")
    ax_mem.set_title(f"forward memory beyond the weights, batch {batch}{suffix}")
    ax_lat.legend(title="LLM mask", loc="lower right", fontsize=8)
    return fig


def plot_training(metrics: pd.DataFrame, constant: float | None = None) -> Figure:
    """Closed-loop success (Wilson 95% interval) and held-out action L1 per variant, after training
    (bars) and at initialisation (black ticks); ``constant``: the input-independent predictor's L1."""
    pooled = pooled_success(metrics)
    trained, init = pooled[pooled["stage"] == "trained"], pooled[pooled["stage"] == "init"]
    count = len(_architectures(trained)) if len(trained) else 1
    fig = Figure(figsize=(10, 0.45 * count + 1.9), layout="constrained")
    ax_s, ax_l = fig.subplots(1, 2, sharey=True)
    labels = _barh(ax_s, trained, "success_rate", "ci_low", "ci_high")
    _barh(ax_l, trained, "val_action_l1")
    masks = _masks(trained)
    height = 0.8 / max(len(masks), 1)
    for j, mask in enumerate(masks):
        sel = trained[trained["attention"] == mask]
        for b, p, k, n in zip(sel["backbone"], sel["projector"], sel["successes"], sel["episodes"]):
            y = labels.index(f"{b} | {p}") + (j - (len(masks) - 1) / 2) * height
            ax_s.text(0.99, y, f"{int(k)}/{int(n)}", ha="right", va="center", fontsize=7)
    for ax, value in ((ax_s, "success_rate"), (ax_l, "val_action_l1")):
        for j, mask in enumerate(masks):
            sel = init[init["attention"] == mask]
            ys = [labels.index(f"{b} | {p}") + (j - (len(masks) - 1) / 2) * height
                  for b, p in zip(sel["backbone"], sel["projector"])]
            if sel[value].notna().any():
                ax.scatter(sel[value], ys, marker="|", s=120, color="black",
                           label="at initialisation" if j == 0 else None, zorder=3)
    if constant is not None:
        ax_l.axvline(constant, color="grey", linestyle="--", label="constant predictor")
    seeds = int(pooled["seeds"].max()) if len(pooled) else 0
    episodes = int(trained["episodes"].max()) if len(trained) else 0
    ax_s.set_xlabel(f"success rate ({episodes} test episodes x {seeds} seed(s); 95% Wilson)")
    ax_l.set_xlabel("action L1, held-out chunks (normalised units)")
    ax_s.set_ylabel("backbone | projector")
    ax_s.set_xlim(0, 1)
    ax_s.set_title("closed-loop success")
    ax_l.set_title("open-loop action L1")
    ax_s.legend(loc="lower center", fontsize=8)
    ax_l.legend(loc="best", fontsize=8)
    return fig


def plot_losses(losses: pd.DataFrame, mse_warmup_steps: int = 0) -> Figure:
    """The trainer's logged action loss per step and variant, one panel per LLM mask (a dashed line
    where the loss switches from MSE to L1, when ``mse_warmup_steps`` > 0)."""
    masks = _masks(losses)
    fig = Figure(figsize=(5 * len(masks), 3.4), layout="constrained")
    axes = fig.subplots(1, len(masks), sharey=True, squeeze=False)[0]
    for ax, mask in zip(axes, masks):
        sel = losses[losses["attention"] == mask]
        for label in _architectures(sel):
            backbone, projector = label.split(" | ")
            curve = sel[(sel["backbone"] == backbone) & (sel["projector"] == projector)]
            curve = curve.groupby("step")["loss"].mean()
            ax.plot(curve.index, curve.to_numpy(), label=label, linewidth=1.2)
        if mse_warmup_steps > 0:
            ax.axvline(mse_warmup_steps + 0.5, color="grey", linestyle="--", linewidth=1, label="MSE -> L1")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"training loss, {mask} mask")
    axes[0].set_ylabel("action loss (normalised actions)")
    axes[-1].legend(fontsize=7, loc="upper right")
    return fig


def attention_matrix(attention: pd.DataFrame, key_segment: str, stage: str, value: str) -> pd.DataFrame:
    """Variants (rows, grid order) x layers of ``value`` for the action queries' mass on ``key_segment``."""
    sel = attention[(attention["key_segment"] == key_segment) & (attention["stage"] == stage)]
    table = sel.pivot_table(index=["backbone", "projector", "attention"], columns="layer", values=value)
    order = table.reset_index()
    keys = order_key(order) * 10 + order["attention"].map({m: i for i, m in enumerate(MASKS)})
    table = table.iloc[np.argsort(keys.to_numpy(), kind="stable")]
    table.index = [" | ".join(i) for i in table.index]
    return table


def plot_attention(attention: pd.DataFrame, key_segment: str = "vision") -> Figure:
    """Action queries -> ``key_segment`` in every LLM layer: trained mass relative to the uniform
    baseline (1 = spread evenly over the allowed keys), and the change from initialisation."""
    ratio = attention_matrix(attention, key_segment, "trained", "ratio")
    delta = (attention_matrix(attention, key_segment, "trained", "value")
             - attention_matrix(attention, key_segment, "init", "value")) * 100
    fig = Figure(figsize=(11, 0.32 * len(ratio) + 1.8), layout="constrained")
    ax_r, ax_d = fig.subplots(1, 2, sharey=True)
    spread = float(np.nanmax(np.abs(ratio.to_numpy() - 1))) if ratio.size else 0.0
    spread = max(spread, 1e-3)
    image = ax_r.imshow(ratio.to_numpy(), cmap="RdBu_r", aspect="auto",
                        norm=TwoSlopeNorm(1.0, max(0.0, 1 - spread), 1 + spread))
    fig.colorbar(image, ax=ax_r, label="mass / uniform-baseline mass")
    limit = max(float(np.nanmax(np.abs(delta.to_numpy()))) if delta.size else 0.0, 1e-3)
    image = ax_d.imshow(delta.to_numpy(), cmap="PuOr_r", aspect="auto", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax_d, label="trained - init (percentage points)")
    for ax in (ax_r, ax_d):
        ax.set_xticks(range(ratio.shape[1]), [str(c) for c in ratio.columns])
        ax.set_xlabel("LLM layer")
    ax_r.set_yticks(range(len(ratio)), list(ratio.index))
    ax_r.set_ylabel("backbone | projector | mask")
    ax_r.set_title("after training, relative to uniform")
    ax_d.set_title("change from initialisation")
    fig.suptitle(f"LLM attention mass of the action queries on {key_segment} (mean over heads and examples)")
    return fig


def plot_attention_segments(attention: pd.DataFrame, stage: str = "trained") -> Figure:
    """Action-query mass on every key segment relative to the uniform baseline, mean over layers, per
    variant; segments a mask hides from the queries (uniform share 0) are marked "masked"."""
    sel = attention[attention["stage"] == stage]
    segments = [s for s in CONTENT_SEGMENTS if s in set(sel["key_segment"])]
    ratios = {s: attention_matrix(attention, s, stage, "ratio").mean(axis=1) for s in segments}
    order = attention_matrix(attention, segments[0], stage, "value").index
    table = pd.DataFrame(ratios).reindex(order)[segments]
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(7.5, 0.32 * len(table) + 1.8), layout="constrained")
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    spread = max(float(np.max(np.abs(finite - 1))) if finite.size else 0.0, 1e-3)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", aspect="auto",
                      norm=TwoSlopeNorm(1.0, max(0.0, 1 - spread), 1 + spread))
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, "masked" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="dimgrey" if not np.isfinite(value) else "black")
    fig.colorbar(image, ax=ax, label="mass / uniform-baseline mass (mean over layers)")
    ax.set_xticks(range(len(segments)), segments, rotation=30, ha="right")
    ax.set_yticks(range(len(table)), list(table.index))
    ax.set_xlabel("key segment")
    ax.set_ylabel("backbone | projector | mask")
    ax.set_title(f"where the action queries attend ({stage})")
    return fig


def _interval_err(value: pd.Series, ci95: pd.Series) -> np.ndarray:
    """Error-bar lengths (2, n) of intervals around ``value``; an end that rounding puts a hair inside the
    value (a Wilson bound of 30/30 is 1 - 1e-16) draws as zero length."""
    v = value.to_numpy(dtype=float)
    return np.clip(np.stack([v - ci95.str[0].to_numpy(dtype=float), ci95.str[1].to_numpy(dtype=float) - v]), 0, None)


def plot_trained(summary: pd.DataFrame, preset_label: str = "preset") -> Figure:
    """Own-mask success (Wilson 95 %) and action L1 (95 % bootstrap) per trained architecture: one marker with its
    interval per training seed, a black bar for the seeds pooled (:func:`vla_lab.studies.ablation.
    trained_summary`). The success axis is cut to the range the intervals span (a dot plot, no bars from 0)."""
    architectures = list(dict.fromkeys(summary["architecture"]))
    labels = [preset_label if a == "preset" else a for a in architectures]
    fig = Figure(figsize=(10, 0.7 * len(architectures) + 1.9), layout="constrained")
    ax_s, ax_l = fig.subplots(1, 2, sharey=True)
    pooled = summary[summary["model_seed"] == "pooled"].set_index("architecture").reindex(architectures)
    ys = np.arange(len(architectures))
    ax_s.errorbar(pooled["success"], ys, xerr=_interval_err(pooled["success"], pooled["success_ci95"]),
                  fmt="|", markersize=14, color="black", capsize=4, label="seeds pooled")
    seeds = summary[summary["model_seed"] != "pooled"]
    markers = {s: "osD^v"[i % 5] for i, s in enumerate(sorted(set(seeds["model_seed"])))}
    for j, (seed, part) in enumerate(seeds.groupby("model_seed")):
        y = [architectures.index(a) + 0.17 * (j + 1) for a in part["architecture"]]
        ax_s.errorbar(part["success"], y, xerr=_interval_err(part["success"], part["success_ci95"]),
                      fmt=markers[seed], color="#1f77b4", capsize=3, label=f"seed {seed}")
        ax_l.errorbar(part["action_l1"], y, xerr=_interval_err(part["action_l1"], part["action_l1_ci95"]),
                      fmt=markers[seed], color="#1f77b4", capsize=3, label=f"seed {seed}")
    ax_s.set_yticks(ys, labels)
    ax_s.invert_yaxis()
    n = int(seeds["n"].max()) if len(seeds) else 0
    low = float(summary["success_ci95"].str[0].min()) if len(summary) else 0.0
    ax_s.set(xlim=(max(0.0, low - 0.03), 1.005), xlabel="closed-loop success, own mask (95% Wilson CI)",
             ylabel="architecture", title=f"Success on {n} test scenes per seed")
    ax_l.set(xlim=(0, None), xlabel="first-chunk action L1 (95% bootstrap CI)", title="Action L1 per seed")
    fig.legend(*ax_s.get_legend_handles_labels(), loc="outside lower center", ncol=len(markers) + 1, fontsize=7)
    return fig
