"""``target-knockout``: a causal test of the action queries' attention -- do they need their own view of the object?

LIBERO only. At every query of every episode the action queries lose, in every LLM layer, their attention edges to
the agentview patches of one object of the current frame (the world's region masks, drawn at each observation). Only
those direct edges close: the prompt tokens and later patches still attend to the object's patches and the queries
still read them, the bridge head still reads every position's states, and the wrist view is untouched; a null
result says the queries' direct view of the object is not needed, not that the object's pixels are not. The
conditions:

* ``target``: the object to pick (the bowl the instruction names);
* ``same_category``: the control of equal size, the other object of its category (the other black bowl);
* ``none``: the model as it is.

Both knockouts close the same number of patches at a query, ``n`` = the smaller of the two objects' patch counts,
each taking its object's ``n`` most covered patches (a patch showing the target is never taken for the control).
A frame where either object shows no patch closes nothing (``unblocked_queries`` counts such queries). The masks are
read from the simulator's state after the step, the frame from within its last sampling period (a pixel at an
object's edge may differ).

Per model, condition and episode: ``delta_action`` (the first chunk's mean |normalised actions - none's|), closed-loop
success, steps, queries, the mean patches closed per query. A task's init states share one layout: success and
``delta_action`` with a bootstrap over tasks; Wilcoxon signed-rank on per-task values, ``target`` vs
``same_category`` on success the primary comparison, the others secondary. The head's task attention is not knocked
out here (it reads the patches through the LLM's states; a per-patch head mask is not built).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab.errors import InputError
from vla_lab.interp import target_attention as ta
from vla_lab.model import VLAAdapter
from vla_lab.model.sequence import SequenceLayout
from vla_lab.policy import Policy
from vla_lab.registry import ModelSpec
from vla_lab.studies.engine import Study, StudySettings, Unit, UnitEpisodes, register_study
from vla_lab.studies.knockout import block_tensor, sequence_length
from vla_lab.studies.rows import by_condition, cluster_row, frame, model_keys, per_task_test
from vla_lab.worlds import Observation
from vla_lab.worlds.libero.instructions import same_category_objects
from vla_lab.worlds.libero.world import LiberoWorld
from vla_lab.worlds.runner import run_lockstep

#: The conditions: the model as it is, then the object whose patches the queries lose.
CONDITIONS = ("none", "target", "same_category")
#: (first, second) of the paired tests, the primary one first.
COMPARISONS = (("target", "same_category"), ("none", "target"), ("none", "same_category"))


def blocked_patches(observation: Observation, layout: SequenceLayout, center_crop: bool) -> dict[str, list[int]]:
    """Per knockout region: the agentview positions (sequence positions of its patches) the queries lose at this
    observation, as many for each region (module docstring); empty lists where either region shows no patch."""
    if not observation.regions or not observation.regions[0]:
        raise InputError("observation: got no region masks, expected the agentview's (a world that draws them)")
    regions = observation.regions[0]
    grid = layout.patch_grids[0]
    target = ta.patch_coverage(regions["target"], grid, center_crop).ravel()
    if "same_category" not in regions:
        raise InputError("regions: got a scene without a same_category object, expected one (the control of "
                         "target-knockout is the other object of the target's category)")
    alike = ta.patch_coverage(regions["same_category"], grid, center_crop).ravel()
    alike[target > 0] = 0.0
    count = min(int((target > 0).sum()), int((alike > 0).sum()))
    start = layout.vision[0].start
    out = {}
    for name, share in (("target", target), ("same_category", alike)):
        order = np.argsort(-share, kind="stable")[:count]
        out[name] = sorted(start + int(p) for p in order)
    return out


def _block(model: VLAAdapter, layout: SequenceLayout, keys: Sequence[int], batch: dict[str, torch.Tensor]
           ) -> dict[str, Any]:
    if not keys:
        return {}
    queries = list(layout.span("action_queries").positions())
    return {"block": block_tensor([(queries, list(keys))], sequence_length(model, batch))}


@register_study
class TargetKnockout(Study):
    name = "target-knockout"
    description = "the action queries lose the target's patches vs as many of the same-category object's (LIBERO)"
    worlds = ("libero",)

    def check_task(self, suite: str, task: int) -> None:
        if not same_category_objects(suite, task):
            raise InputError(f"regions: got task {task} of {suite} without a same_category object, expected one "
                             "(the control of target-knockout is another object of the target's category, e.g. "
                             "libero_spatial's other black bowl)")

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        env = episodes.world
        if not isinstance(env, LiberoWorld):
            raise InputError(f"world: got {env.name!r}, expected a LIBERO suite for target-knockout")
        first = episodes.first_observations()
        inputs = Policy(model, env, execute=settings.execute).forward_inputs(first)
        baseline = model(**inputs)
        base_actions = baseline.normalized_actions.float().cpu().numpy()
        rows: list[dict[str, Any]] = []
        for condition in CONDITIONS:
            deltas = np.zeros(len(first))
            if condition != "none":
                picks = [blocked_patches(o, layout, env.center_crop)[condition]
                         for o, layout in zip(first, baseline.layouts)]
                block = block_tensor([(list(baseline.layouts[b].span("action_queries").positions()), picks[b])
                                       for b in range(len(first))], sequence_length(model, inputs))
                out = model(**inputs, block=block)
                deltas = np.abs(out.normalized_actions.float().cpu().numpy() - base_actions).mean(axis=(1, 2))
            for b, episode in enumerate(episodes.episodes):
                closed: list[int] = []

                def intervene(observations: Sequence[Observation], slots: Any, batch: dict[str, torch.Tensor],
                              condition: str = condition, closed: list[int] = closed) -> dict[str, Any]:
                    layout = model.plan(batch["attention_mask"].sum(dim=1).tolist(),
                                        batch["input_ids"].shape[1]).layouts[0]
                    keys = blocked_patches(observations[0], layout, env.center_crop)[condition]
                    closed.append(len(keys))
                    return _block(model, layout, keys, batch)

                policy = Policy(model, env, execute=settings.execute,
                                intervene=None if condition == "none" else intervene)
                before, env.step_regions = env.step_regions, condition != "none"
                try:
                    run = run_lockstep([env], [episode], policy, regions=True, isolate=True)[0]
                finally:
                    env.step_regions = before
                rows.append({"episode": b, "condition": condition, "delta_action": float(deltas[b]),
                             "blocked_patches": float(np.mean(closed)) if closed else 0.0,
                             "unblocked_queries": sum(n == 0 for n in closed) if closed else 0,
                             "success": run.success, "steps": run.steps, "queries": run.queries, "error": run.error})
        return pd.DataFrame(rows)

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, tests = [], []
        shown = records[records["split"] == settings.report_split]
        for keys, part in model_keys(shown):
            by = by_condition(part)
            for condition, sub in by.items():
                tasks = sub.index.get_level_values("task")
                label = {**keys, "condition": condition}
                rows.append(cluster_row(sub["success"].astype(float), tasks, settings.seed, "rate", **label,
                                        metric="success"))
                if condition != "none":
                    rows.append(cluster_row(sub["delta_action"], tasks, settings.seed, **label, metric="delta_action"))
                    rows.append(cluster_row(sub["blocked_patches"], tasks, settings.seed, **label,
                                            metric="blocked_patches"))
            for first, second in COMPARISONS:
                if first not in by or second not in by:
                    continue
                metrics = ["success"] + (["delta_action"] if first != "none" else [])
                for metric in metrics:
                    name = "success (per-task rates)" if metric == "success" else "delta_action (per-task means)"
                    tests.append(per_task_test(by[first][metric], by[second][metric], **keys,
                                               comparison=f"{first} vs {second}", metric=name,
                                               primary=(first, second) == COMPARISONS[0] and metric == "success"))
        return frame(rows), frame(tests)
