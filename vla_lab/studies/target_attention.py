"""``target-attention``: does a source look at the object it was asked for, more than at the others?

Per model (each trained model and its random-init baseline, :func:`~vla_lab.registry.random_init_of`; a checkpoint
whose training seed is unknown, such as a released one, has none and is measured without the comparison),
episode, source and depth -- the LLM's action queries per ``layer``, the bridge head's task attention per
``block`` -- and head: the mean attention per patch of each region (:mod:`vla_lab.interp.target_attention`, the one
measurement for every world; tabletop: both views, ``target`` / ``distractors``; LIBERO: the agentview, ``target`` /
``place`` / ``same_category`` (the other black bowl) / ``distractors`` / ``background``). Rows with ``head`` missing
are the head mean. Two ratios, each summary row naming the region it divides by (``against``): the target against
the distractors (``target_attention_ratio``) and, where scenes have them, against the objects of the target's own
category (``target_vs_same_category_ratio``: the bowl asked for, or the other black bowl?).

Tabletop: the episode's first observation. LIBERO: every policy query of the trained model's closed-loop episode
(:func:`~vla_lab.studies.rollouts.rollout`), with its ``step``, ``phase`` (approach, grasp, carry, place:
:mod:`vla_lab.worlds.libero.phases`) and the target's ``lift``; per head only at the first query. A random-init
baseline is measured on its trained model's frames (``frames_of``: the same pixels, other weights). Each record
also carries its episode's ``success``, ``episode_steps`` and the object it ``picked``.

The depth each model is reported at is chosen on the selection episodes (tabletop: validation scenes;
LIBERO: training init states, over all queries) and reported on the others: the ratio of the means over episodes
(LIBERO: of each episode's means over its queries; ``frames``: all queries, the first one, or one phase), with a
paired bootstrap interval over the unit the episodes cluster by (tabletop scenes are independent; a LIBERO task's
init states share one layout, so tasks are resampled). Each trained model is compared with its random-init baseline
unit by unit (Wilcoxon on the per-unit ratios, each at its own selected depth). LIBERO, attention and outcome: per
trained model, source and ratio, a logistic regression of success, and of picking the same-category object, on the
episode's log ratio (all queries; the grasp's queries), standard errors clustered by task, Holm-adjusted within
each model's family.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from vla_lab import interp
from vla_lab.interp import target_attention as ta
from vla_lab.model import VLAAdapter
from vla_lab.registry import RANDOM_PREFIX, ModelSpec, random_init_of
from vla_lab.stats import logistic_regression_clustered
from vla_lab.studies.engine import (
    Study,
    StudySettings,
    Unit,
    UnitEpisodes,
    register_study,
)
from vla_lab.studies.rollouts import rollout
from vla_lab.studies.rows import (
    frame,
    holm_by_model,
    model_keys,
    test_row,
)
from vla_lab.worlds.libero.phases import PHASES

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
            if spec.seed is not None and baseline.name not in {s.name for s in specs}:
                out.append(baseline)
        return out

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        if settings.world == "libero":
            return _libero_records(model, spec, episodes, settings)
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
        outcome_tests: list[dict[str, Any]] = []
        for keys, part in model_keys(records):
            for source in interp.SOURCES:
                depth_kind = interp.SOURCE_DEPTH[source]
                sub = part[part["source"] == source].assign(depth=lambda df, k=depth_kind: df[k])
                if sub.empty:
                    continue
                for against, metric in ta.AGAINST.items():
                    label = {**keys, "source": source, "depth_kind": depth_kind, "against": against}
                    if "query" in sub.columns:
                        label["frames"] = "all queries"
                    found = self._ratios(sub, settings, against, metric, label, unit, cluster, noun, rows)
                    if found is None:
                        continue
                    reports[(keys["model"], source, against)] = found
                    if "query" in sub.columns:
                        shown = sub[sub["split"] == settings.report_split]
                        rows += _frames_rows(shown, found, settings, metric, label, unit, cluster, noun)
                        if not keys["random_init"]:
                            outcome_tests += _outcome_tests(shown, found, unit, cluster, {**keys, "source": source},
                                                            metric)
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
        tested = frame(tests + holm_by_model(outcome_tests))
        if "n_tasks" in tested.columns:
            tested["n_tasks"] = tested["n_tasks"].astype("Int64")  # only the regressions have it
        return summary, tested

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
        per_head_label = {**label, "frames": "first query"} if "frames" in label else label  # heads: query 0 only
        for h, per_head in shown[shown["head"].notna()].groupby("head", sort=True):
            table = ta.per_unit(per_head.drop(columns="head"), unit, against)
            for d in sorted(table["depth"].unique()):
                result = ta.report(table, at=int(d), cluster=cluster, seed=settings.seed)
                rows.append(_row(result, per_head_label, metric, int(d), int(h), False, noun, cluster))
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


#: LIBERO record columns of an episode's query and of the episode, after the measurement's.
QUERY_COLUMNS = ("query", "step", "phase", "lift")
EPISODE_COLUMNS = ("success", "episode_steps", "picked", "error", "frames_of")


def _libero_records(model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes,
                    settings: StudySettings) -> pd.DataFrame:
    """Every query of every episode: the trained model's rollouts (kept in the unit's cache), or for a random-init
    baseline its trained model's, when that model ran this unit before it."""
    source = spec.name[len(RANDOM_PREFIX):] if spec.random_init else spec.name
    runs = episodes.cache.get(("rollouts", source))
    if runs is None:
        source = spec.name
        runs = [rollout(model, episodes.world, e, settings.execute) for e in episodes.episodes]
        episodes.cache[("rollouts", spec.name)] = runs
    frames = []
    for b, run in enumerate(runs):
        if not run.observations:  # the reset failed: one row that says so, no measurement
            frames.append(pd.DataFrame([{"episode": b, "query": 0, "step": 0, "phase": None, "lift": float("nan"),
                                         "source": None, "depth": pd.NA, "head": pd.NA, "region": None,
                                         "value": float("nan"), "success": False, "episode_steps": run.steps,
                                         "picked": "none", "error": run.error, "frames_of": source}]))
            continue
        first = ta.measure(model, episodes.world, run.observations[:1], heads=True, batch_size=1)
        rest = ta.measure(model, episodes.world, run.observations[1:], heads=False, batch_size=32)
        rest["sample"] += 1
        values = pd.concat([first, rest], ignore_index=True).rename(columns={"sample": "query"})
        phases = run.phases
        values["step"] = [run.steps_at[q] for q in values["query"]]
        values["phase"] = [phases[q] for q in values["query"]]
        values["lift"] = [run.lifts[q].get("target", float("nan")) for q in values["query"]]
        values["episode"] = b
        values["success"], values["episode_steps"], values["picked"] = run.success, run.steps, run.picked
        values["error"] = run.error
        values["frames_of"] = source
        frames.append(values)
    columns = ["episode", *QUERY_COLUMNS, "source", "layer", "block", "head", "region", "value", *EPISODE_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    values = pd.concat(frames, ignore_index=True)
    values["layer"] = values["depth"].where(values["source"] == "llm").astype("Int64")
    values["block"] = values["depth"].where(values["source"] == "head").astype("Int64")
    values = values.sort_values(["episode", "query", "source", "depth", "head", "region"], na_position="first",
                                kind="stable")
    return values[columns].reset_index(drop=True)


def _frames_rows(shown: pd.DataFrame, selected: ta.RatioReport, settings: StudySettings, metric: str,
                 label: dict[str, Any], unit: tuple[str, ...], cluster: str | None, noun: str) -> list[dict[str, Any]]:
    """The ratio at the selected depth on the first query of each episode and on each phase's queries."""
    rows = []
    subsets = [("first query", shown[shown["query"] == 0])]
    subsets += [(phase, shown[shown["phase"] == phase]) for phase in PHASES]
    for name, subset in subsets:
        table = ta.per_unit(subset, unit, label["against"])
        if table.empty or selected.depth not in set(table["depth"]):
            continue
        result = ta.report(table, at=selected.depth, cluster=cluster, seed=settings.seed)
        rows.append(_row(result, {**label, "frames": name}, metric, selected.depth, None, True, noun, cluster))
    return rows


#: The outcomes regressed on attention: each episode's success, and whether it picked the same-category object.
OUTCOMES = ("success", "picked_same_category")


def _outcome_tests(shown: pd.DataFrame, selected: ta.RatioReport, unit: tuple[str, ...], cluster: str | None,
                   keys: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """Logistic regressions of each outcome on the episode's log ratio at the selected depth (all queries; the
    grasp's queries), standard errors clustered by ``cluster``."""
    if "error" in shown.columns:  # an episode that raised is no outcome of the policy
        shown = shown[shown["error"].isna()]
    outcomes = shown.groupby(list(unit), sort=True)[["success", "picked"]].first().reset_index()
    outcomes["picked_same_category"] = outcomes["picked"] == "same_category"
    features = [("all queries", selected.units)]
    grasp = ta.per_unit(shown[shown["phase"] == "grasp"], unit, selected.against)
    features.append(("grasp", grasp[grasp["depth"] == selected.depth]))
    rows = []
    for frames, table in features:
        data = table.merge(outcomes, on=list(unit))
        data = data[(data["ratio"] > 0) & np.isfinite(data["ratio"])]
        groups = data[cluster] if cluster is not None else data.index
        for outcome in OUTCOMES:
            fit = logistic_regression_clustered(np.log(data["ratio"]), data[outcome].astype(float), groups)
            rows.append({**keys, "comparison": f"{outcome} ~ log ratio ({frames}, depth {selected.depth})",
                         "metric": metric, "name": "logistic regression", "statistic": fit.slope, "p": fit.p,
                         "n": fit.n, "note": f"{fit.events} events; {fit.note}", "ci95": list(fit.ci95),
                         "n_tasks": fit.n_clusters})
    return rows
