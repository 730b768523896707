"""``mask-swap``: each trained model under its own mask and under the other one, on the same scenes.

Per model, condition and scene: closed-loop success, outcome and steps (:func:`vla_lab.tabletop.evaluate_scenes`)
and the action L1 of the first chunk against the expert's. Summaries: success (Wilson) and mean action L1
(bootstrap) per model and condition; paired tests own vs other mask per model: exact McNemar on success,
Wilcoxon signed-rank on action L1.
"""

from __future__ import annotations

import pandas as pd

from vla_lab import tabletop
from vla_lab.model import VLAAdapter
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
    frame,
    mean_row,
    model_keys,
    paired,
    rate_row,
    test_row,
    using_attention,
)

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

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
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
