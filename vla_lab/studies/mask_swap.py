"""``mask-swap``: each trained model under its own mask and under the other one, on the same episodes.

Tabletop, per model, condition and scene: closed-loop success, outcome and steps
(:func:`vla_lab.tabletop.evaluate_scenes`) and the action L1 of the first chunk against the expert's. Summaries:
success (Wilson) and mean action L1 (bootstrap) per model and condition; paired tests own vs other mask per model:
exact McNemar on success, Wilcoxon signed-rank on action L1.

LIBERO, per model, condition and episode (task, init state): closed-loop success and steps under upstream's protocol
(:class:`~vla_lab.policy.Policy` on :func:`~vla_lab.worlds.runner.run_lockstep`, cameras as ``eval libero`` draws
them for the model) and ``action_change``, the mean absolute change of the first chunk (normalised units) from the
one under the model's own mask. A task's init states share one layout, so the episodes cluster by task: success
and action change with a bootstrap over tasks, the own-minus-other success difference likewise, and the paired
test is Wilcoxon signed-rank on the per-task success rates (own vs other).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vla_lab import tabletop
from vla_lab.model import VLAAdapter
from vla_lab.policy import Policy
from vla_lab.registry import ModelSpec
from vla_lab.stats import mcnemar_exact, wilcoxon_signed_rank
from vla_lab.studies.engine import (
    Study,
    StudySettings,
    Unit,
    UnitEpisodes,
    register_study,
)
from vla_lab.studies.rows import (
    LIBERO_EPISODE,
    cluster_row,
    frame,
    mean_row,
    model_keys,
    paired,
    per_task_test,
    rate_row,
    test_row,
    using_attention,
)
from vla_lab.worlds.runner import run_lockstep

MASKS = ("causal", "bidirectional")


def conditions_for(trained_with: str) -> list[str]:
    """The model's own mask first, then the other (both, in order, for a model trained otherwise)."""
    if trained_with in MASKS:
        return [trained_with] + [m for m in MASKS if m != trained_with]
    return list(MASKS)


@register_study
class MaskSwap(Study):
    name = "mask-swap"
    description = "each model under its own and the other LLM mask: success, action L1, paired tests"
    worlds = ("tabletop", "libero")

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        if settings.world == "libero":
            return _libero_records(model, spec, episodes, settings)
        scenes = episodes.scenes
        frames = []
        for condition in conditions_for(spec.trained_with):
            with using_attention(model, condition):
                results, first = tabletop.evaluate_scenes(model, scenes, settings.execute, settings.max_steps)
            part = pd.DataFrame({
                "episode": range(len(scenes)),
                "condition": condition,
                "own_mask": condition == spec.trained_with,
                "success": [e["success"] for e in results],
                "outcome": [e["outcome"] for e in results],
                "steps": [e["steps"] for e in results],
                "action_l1": first,
            })
            frames.append(part)
        return pd.concat(frames, ignore_index=True)

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        if settings.world == "libero":
            return _libero_summary(records, settings)
        rows, tests = [], []
        for keys, part in model_keys(records):
            for condition, sub in part.groupby("condition", sort=False):
                label = {**keys, "condition": condition, "own_mask": bool(sub["own_mask"].iloc[0])}
                rows.append(rate_row(sub["success"], **label, metric="success"))
                rows.append(mean_row(sub["action_l1"], seed=settings.seed, **label, metric="action_l1"))
            own = part[part["own_mask"]].set_index("scene")
            other = part[~part["own_mask"]].set_index("scene")
            if len(own) and len(other):
                label = {**keys, "comparison": f"{own['condition'].iloc[0]} vs {other['condition'].iloc[0]}"}
                tests.append(test_row(mcnemar_exact(*paired(own["success"], other["success"])), **label,
                                      metric="success"))
                tests.append(test_row(wilcoxon_signed_rank(*paired(own["action_l1"], other["action_l1"])), **label,
                                      metric="action_l1"))
        return frame(rows), frame(tests)


def _libero_records(model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes,
                    settings: StudySettings) -> pd.DataFrame:
    """One LIBERO unit: the first chunks of every episode under each mask (one batch), then the closed-loop
    episodes one at a time (an episode that raises is a failure with its ``error``)."""
    first = episodes.first_observations()
    frames, own = [], None
    for condition in conditions_for(spec.trained_with):
        with using_attention(model, condition):
            policy = Policy(model, episodes.world, execute=settings.execute)
            policy.predict(first)
            chunks = np.asarray(policy.last_normalized, dtype=np.float64)
            runs = [run_lockstep([episodes.world], [e], policy, isolate=True)[0] for e in episodes.episodes]
        own = chunks if own is None else own
        frames.append(pd.DataFrame({
            "episode": range(len(runs)),
            "condition": condition,
            "own_mask": condition == spec.trained_with,
            "success": [r.success for r in runs],
            "steps": [r.steps for r in runs],
            "queries": [r.queries for r in runs],
            "error": [r.error for r in runs],
            "action_change": np.abs(chunks - own).mean(axis=(1, 2)),
        }))
    return pd.concat(frames, ignore_index=True)


def _libero_summary(records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, tests = [], []
    shown = records[records["split"] == settings.report_split]
    for keys, part in model_keys(shown):
        for condition, sub in part.groupby("condition", sort=False):
            label = {**keys, "condition": condition, "own_mask": bool(sub["own_mask"].iloc[0])}
            rows.append(cluster_row(sub["success"].astype(float), sub["task"], settings.seed, "rate", **label,
                                    metric="success"))
            if not label["own_mask"]:
                rows.append(cluster_row(sub["action_change"], sub["task"], settings.seed, **label,
                                        metric="action_change"))
        own = part[part["own_mask"]].set_index(LIBERO_EPISODE)["success"].astype(float)
        other = part[~part["own_mask"]].set_index(LIBERO_EPISODE)["success"].astype(float)
        first, second = paired(own, other)
        if len(first):
            names = [part[part["own_mask"] == o]["condition"].iloc[0] for o in (True, False)]
            conditions = f"{names[0]} vs {names[1]}"
            tasks = first.index.get_level_values("task")
            rows.append(cluster_row(first - second, tasks, settings.seed, **keys, condition=conditions,
                                    metric="success_difference"))
            tests.append(per_task_test(own, other, **keys, comparison=conditions, metric="success (per-task rates)"))
    return frame(rows), frame(tests)
