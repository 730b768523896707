"""What the studies share to turn per-episode records into summary rows and tests: the row builders (a rate with
its Wilson interval, a mean or a ratio of means with a bootstrap interval, a paired test), the per-model grouping
of records, a model under another mask, and which scenes of a unit run closed loop."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vla_lab.config import AttentionLike
from vla_lab.model import VLAAdapter
from vla_lab.stats import (
    PairedTest,
    bootstrap_interval,
    cluster_mean_interval,
    ratio_of_means_interval,
    wilcoxon_signed_rank,
    wilson_interval,
)
from vla_lab.studies.engine import MODEL_COLUMNS, StudySettings, Unit
from vla_lab.worlds import tabletop as world


@contextlib.contextmanager
def using_attention(model: VLAAdapter, attention: AttentionLike) -> Iterator[VLAAdapter]:
    """``model`` with another default mask for the ``with`` block."""
    before = model.config.attention
    model.set_attention(attention)
    try:
        yield model
    finally:
        model.config.attention = before


def rate_row(successes: Any, **keys: Any) -> dict[str, Any]:
    """A summary row for a success rate: n, value, Wilson ci95."""
    values = pd.Series(successes).dropna().astype(bool)
    n, k = len(values), int(values.sum())
    low, high = wilson_interval(k, n)
    return {**keys, "statistic": "rate", "n": n, "value": k / n if n else math.nan, "ci95": [low, high],
            "interval": "Wilson"}


def mean_row(values: Any, seed: int = 0, **keys: Any) -> dict[str, Any]:
    """A summary row for the mean of per-scene values: n, value, BCa bootstrap ci95 over scenes."""
    array = pd.Series(values, dtype="float64").dropna().to_numpy()
    low, high = bootstrap_interval(array, seed=seed) if array.size else (math.nan, math.nan)
    return {**keys, "statistic": "mean", "n": int(array.size), "value": float(array.mean()) if array.size else math.nan,
            "ci95": [low, high], "interval": "bootstrap over scenes (BCa)"}


def ratio_row(numerators: Any, denominators: Any, seed: int = 0, **keys: Any) -> dict[str, Any]:
    """A summary row for a ratio of means over scenes: n, value, percentile bootstrap ci95 (scenes paired)."""
    pairs = pd.DataFrame({"a": pd.Series(numerators, dtype="float64").to_numpy(),
                          "b": pd.Series(denominators, dtype="float64").to_numpy()}).dropna()
    n = len(pairs)
    value = float(pairs["a"].mean() / pairs["b"].mean()) if n and pairs["b"].mean() != 0 else math.nan
    low, high = ratio_of_means_interval(pairs["a"], pairs["b"], seed=seed) if n else (math.nan, math.nan)
    return {**keys, "statistic": "ratio of means", "n": n, "value": value, "ci95": [low, high],
            "interval": "bootstrap over scenes (percentile, paired)"}


def cluster_row(values: Any, clusters: Any, seed: int = 0, statistic: str = "mean", noun: str = "tasks",
                **keys: Any) -> dict[str, Any]:
    """A summary row for the mean of per-episode values (a success rate when they are 0 / 1) whose episodes cluster
    (a LIBERO task's init states share one layout): n, the number of clusters, value and a percentile bootstrap
    ci95 that resamples clusters (each one's sum over its count: the ratio of means is the episodes' mean)."""
    table = pd.DataFrame({"value": pd.Series(values, dtype="float64").to_numpy(), "cluster": list(clusters)}).dropna()
    low, high = (cluster_mean_interval(table["value"], table["cluster"], seed=seed) if len(table)
                 else (math.nan, math.nan))
    return {**keys, "statistic": statistic, "n": len(table), f"n_{noun}": table["cluster"].nunique(),
            "value": float(table["value"].mean()) if len(table) else math.nan, "ci95": [low, high],
            "interval": f"bootstrap over {noun} (percentile, cluster)"}


def test_row(result: PairedTest, **keys: Any) -> dict[str, Any]:
    """A tests row: the keys, then name, statistic, p, n, note."""
    return {**keys, "name": result.name, "statistic": result.statistic, "p": result.p, "n": result.n,
            "note": result.note}


def closed_loop_mask(scenes: Sequence[world.Scene], settings: StudySettings, unit: Unit) -> list[bool]:
    """Which of ``scenes`` get closed-loop episodes: all, unless ``closed_loop`` is off or
    ``closed_loop_scenes`` keeps only the first N scenes the study takes from the unit's split."""
    if not settings.closed_loop:
        return [False] * len(scenes)
    if settings.closed_loop_scenes is None:
        return [True] * len(scenes)
    first = world.SPLITS[unit.split].start + (settings.start if unit.split == settings.split else 0)
    return [s.seed - first < settings.closed_loop_scenes for s in scenes]


def paired(first: pd.Series, second: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Two per-scene series (indexed by scene) restricted to the scenes both measured."""
    both = pd.concat([first.rename("first"), second.rename("second")], axis=1).dropna()
    return both["first"], both["second"]


#: The record columns naming a LIBERO episode (a task's init states share one layout: tasks are the clusters).
LIBERO_EPISODE = ["task", "init_state"]


def by_condition(part: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One model's LIBERO records per condition (in order of appearance), indexed by episode (task, init state)."""
    return {c: sub.set_index(LIBERO_EPISODE).sort_index() for c, sub in part.groupby("condition", sort=False)}


def per_task_test(first: pd.Series, second: pd.Series, **keys: Any) -> dict[str, Any]:
    """A tests row: Wilcoxon signed-rank of two per-episode LIBERO series (indexed by task, init state) paired by
    episode and averaged per task (the episodes of a task are not independent; the tasks are the pairs)."""
    a, b = paired(first.astype(float), second.astype(float))
    per_task = pd.DataFrame({"a": a, "b": b}).groupby(level="task").mean()
    return test_row(wilcoxon_signed_rank(per_task["a"], per_task["b"]), **keys)


def condition_rows(by: Mapping[str, pd.DataFrame], metrics: Mapping[str, str], seed: int = 0,
                   baseline_skips: Collection[str] = (), **keys: Any) -> list[dict[str, Any]]:
    """Summary rows of one model's LIBERO conditions (:func:`by_condition`): per condition, in order, and per metric
    (``metrics``: column -> statistic, ``rate`` for 0 / 1 values) the mean over episodes with a bootstrap over tasks;
    ``baseline_skips`` are left out for the baseline ``none`` (e.g. its change against itself)."""
    rows = []
    for condition, sub in by.items():
        tasks = sub.index.get_level_values("task")
        for metric, statistic in metrics.items():
            if condition == "none" and metric in baseline_skips:
                continue
            rows.append(cluster_row(sub[metric].astype(float), tasks, seed, statistic, **keys, condition=condition,
                                    metric=metric))
    return rows


def holm_by_model(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (tests) with ``p_holm``: each model's rows as one family, Holm-adjusted (statsmodels); NaN p stay
    out of the family and get NaN."""
    from statsmodels.stats.multitest import multipletests

    for name in dict.fromkeys(r["model"] for r in rows):
        family = [r for r in rows if r["model"] == name and np.isfinite(r["p"])]
        if family:
            adjusted = multipletests([r["p"] for r in family], method="holm")[1]
            for row, value in zip(family, adjusted):
                row["p_holm"] = float(value)
    for row in rows:
        row.setdefault("p_holm", float("nan"))
    return rows


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def model_keys(records: pd.DataFrame) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    """(model columns as a dict, that model's records) for each model, in order of appearance."""
    for name in dict.fromkeys(records["model"]):
        part = records[records["model"] == name]
        first = part.iloc[0]
        yield {c: _plain(first[c]) for c in MODEL_COLUMNS}, part


def _plain(value: Any) -> Any:
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value
