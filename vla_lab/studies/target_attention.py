"""``target-attention``: does a source look at the object it was asked for, more than at the others?

Per model (each trained model and its random-init baseline, :func:`~vla_lab.registry.random_init_of`),
episode, source and depth -- the LLM's action queries per ``layer``, the bridge head's task attention per
``block`` -- and head: the mean attention per patch of each region of the episode's first observation
(:mod:`vla_lab.interp.target_attention`, the one measurement for every world; tabletop: both views,
``target`` / ``distractors``; LIBERO: the agentview, ``target`` / ``place`` / ``same_category`` (the other black
bowl) / ``distractors``). Rows with ``head`` missing are the head mean. Two ratios, each summary row naming the
region it divides by (``against``): the target against the distractors (``target_attention_ratio``) and, where
scenes have them, against the objects of the target's own category (``target_vs_same_category_ratio``: the bowl
asked for, or the other black bowl?).

The depth each model is reported at is chosen on the selection episodes (tabletop: validation scenes;
LIBERO: training init states) and reported on the others: the ratio of the means over episodes, with a
paired bootstrap interval over the unit the episodes cluster by (tabletop scenes are independent; a LIBERO
task's init states share one layout, so tasks are resampled). Each trained model is compared with its
random-init baseline unit by unit (Wilcoxon on the per-unit ratios, each at its own selected depth).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from vla_lab import interp
from vla_lab.interp import target_attention as ta
from vla_lab.model import VLAAdapter
from vla_lab.registry import RANDOM_PREFIX, ModelSpec, random_init_of
from vla_lab.studies.engine import (
    Study,
    StudySettings,
    Unit,
    UnitEpisodes,
    register_study,
)
from vla_lab.studies.rows import (
    frame,
    model_keys,
    test_row,
)

#: Per world: the record columns naming an episode, the column episodes cluster by (None: independent) and
#: the noun of the interval's resampling unit.
EPISODE_UNITS: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "tabletop": (("scene",), None, "scenes"),
    "libero": (("task", "init_state"), "task", "tasks"),
}


@register_study
class TargetAttention(Study):
    name = "target-attention"
    description = "attention per target patch / per distractor patch, per layer, block and head, vs random init"
    uses_validation = True
    worlds = ("tabletop", "libero")

    def model_specs(self, specs: list[ModelSpec]) -> list[ModelSpec]:
        out = []
        for spec in specs:
            out.append(spec)
            baseline = random_init_of(spec)
            if baseline.name not in {s.name for s in specs}:
                out.append(baseline)
        return out

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        values = ta.measure(model, episodes.world, episodes.first_observations(), heads=True,
                            batch_size=max(len(episodes), 1))
        values = values.rename(columns={"sample": "episode"})
        values["layer"] = values["depth"].where(values["source"] == "llm").astype("Int64")
        values["block"] = values["depth"].where(values["source"] == "head").astype("Int64")
        values = values.sort_values(["episode", "source", "depth", "head", "region"], na_position="first",
                                    kind="stable")
        return values[["episode", "source", "layer", "block", "head", "region", "value"]].reset_index(drop=True)

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        unit, cluster, noun = EPISODE_UNITS[settings.world]
        rows: list[dict[str, Any]] = []
        tests: list[dict[str, Any]] = []
        reports: dict[tuple[str, str, str], ta.RatioReport] = {}
        for keys, part in model_keys(records):
            for source in interp.SOURCES:
                depth_kind = interp.SOURCE_DEPTH[source]
                sub = part[part["source"] == source].assign(depth=lambda df, k=depth_kind: df[k])
                if sub.empty:
                    continue
                for against, metric in ta.AGAINST.items():
                    label = {**keys, "source": source, "depth_kind": depth_kind, "against": against}
                    found = self._ratios(sub, settings, against, metric, label, unit, cluster, noun, rows)
                    if found is not None:
                        reports[(keys["model"], source, against)] = found
        for keys, _ in model_keys(records):
            if keys["random_init"]:
                continue
            baseline = RANDOM_PREFIX + keys["model"]
            for source in interp.SOURCES:
                for against, metric in ta.AGAINST.items():
                    a, b = reports.get((keys["model"], source, against)), reports.get((baseline, source, against))
                    if a is None or b is None:
                        continue
                    per = f"per-{noun[:-1]} ratio"
                    tests.append(test_row(ta.compare(a, b, unit, cluster), **keys, source=source,
                                          comparison=f"{keys['model']} vs {baseline} ({per}, selected depths)",
                                          metric=metric))
        summary = frame(rows)
        for column in [c for c in summary.columns if c.startswith("n_")]:
            summary[column] = summary[column].astype("Int64")  # absent on the selection rows
        return summary, frame(tests)

    @staticmethod
    def _ratios(sub: pd.DataFrame, settings: StudySettings, against: str, metric: str, label: dict[str, Any],
                unit: tuple[str, ...], cluster: str | None, noun: str,
                rows: list[dict[str, Any]]) -> ta.RatioReport | None:
        """The rows of one model, source and ratio (every depth, per head, the selection's ratios); the report at
        the selected depth (None when no episode shows both regions)."""
        shown = sub[sub["split"] == settings.report_split]
        chosen = sub[sub["split"] == settings.selection_split]
        rule = f"highest ratio on the {settings.selection_split} episodes"
        if chosen.empty:
            chosen, rule = shown, f"highest ratio on the {settings.report_split} episodes (no selection set)"
        selection = ta.per_unit(chosen, unit, against)
        report = ta.per_unit(shown, unit, against)
        if report.empty or selection.empty:
            return None
        at, on_selection = ta.select_depth(selection)
        selected = None
        for d in sorted(report["depth"].unique()):
            result = ta.report(report, at=int(d), cluster=cluster, seed=settings.seed)
            rows.append(_row(result, label, metric, int(d), None, d == at, noun, cluster))
            if d == at:
                selected = result
        for h, per_head in shown[shown["head"].notna()].groupby("head", sort=True):
            table = ta.per_unit(per_head.drop(columns="head"), unit, against)
            for d in sorted(table["depth"].unique()):
                result = ta.report(table, at=int(d), cluster=cluster, seed=settings.seed)
                rows.append(_row(result, label, metric, int(d), int(h), False, noun, cluster))
        for d, value in on_selection.items():
            rows.append({**label, "depth": int(d), "head": None, "selected": d == at,
                         "metric": "validation_ratio" if against == "distractors" else f"validation_{metric}",
                         "statistic": "ratio of means", "n": int((selection["depth"] == d).sum()),
                         "value": float(value), "ci95": [math.nan, math.nan], "interval": "none (selection only)",
                         "rule": rule})
        return selected


def _row(result: ta.RatioReport, label: dict[str, Any], metric: str, depth: int, head: int | None, selected: bool,
         noun: str, cluster: str | None) -> dict[str, Any]:
    row = {**label, "depth": depth, "head": head, "selected": bool(selected), "metric": metric,
           "statistic": "ratio of means", "n": result.n, "value": result.value, "ci95": list(result.ci95),
           "interval": f"bootstrap over {noun} (percentile, paired)"}
    if cluster is not None:
        row["n_" + noun] = result.n_clusters
    return row
