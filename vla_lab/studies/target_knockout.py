"""``target-knockout``: a causal test of attention -- do the action queries, the head, or anything need the agentview
patches of the object to pick?

LIBERO only. At every query of every episode one object's agentview patches of the current frame (the world's region
masks, drawn at each observation) are closed to one *reach*:

* ``queries`` (conditions ``target``, ``same_category``): the action queries' attention edges to those patches, in
  every LLM layer. Only those direct edges: the prompt tokens and later patches still attend to the patches and the
  queries read them, the head still reads the patches' states;
* ``head`` (``target:head``, ``same_category:head``): the bridge head's task attention to those patches' states, in
  every block (the LLM unchanged);
* ``all`` (``target:all``, ``same_category:all``): every LLM position's edges to those patches (a closed patch's own
  row included: it still reads tok0 and the rest, and nothing reads it) and the head's: the LLM and the head no longer
  read those patch tokens. The object still reaches them through the other patches (the vision backbone's
  self-attention mixes every patch into every other before the LLM), through any of its patches beyond the ``n``
  closed, and through the wrist view, untouched in every reach.

The object is ``target`` (the one the instruction names) or ``same_category``, the control of equal size: the other
object of its category (the other black bowl); ``none`` is the model as it is. Both close the same number of patches
at a query, ``n`` = the smaller of the two objects' patch counts, each taking its object's ``n`` most covered patches
(a patch showing the target is never taken for the control). A frame where either object shows no patch closes
nothing (``unblocked_queries`` counts such queries). The masks are read from the simulator's state after the step,
the frame from within its last sampling period (a pixel at an object's edge may differ). With the released head
offset the head does not read the last patch of the last view (SPEC section 5); with two views (agentview first) it
reads every agentview patch.

Per model, condition and episode: ``delta_action`` (the first chunk's mean |normalised actions - none's|), closed-loop
success, steps, queries, the mean patches closed per query. A task's init states share one layout: success and
``delta_action`` with a bootstrap over tasks; Wilcoxon signed-rank on per-task values. Per reach, ``target`` vs
``same_category`` on success is a primary comparison (Holm over a model's reaches: ``p_holm``); the others are
secondary. ``--conditions`` runs some of them (``none`` always).
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
from vla_lab.studies.rows import by_condition, condition_rows, frame, holm_by_model, model_keys, per_task_test
from vla_lab.worlds import Observation
from vla_lab.worlds.libero.instructions import same_category_objects
from vla_lab.worlds.libero.world import LiberoWorld
from vla_lab.worlds.runner import run_lockstep

#: The reaches of a knockout (module docstring), and the objects whose patches close.
REACHES = ("queries", "head", "all")
OBJECTS = ("target", "same_category")
#: The conditions: the model as it is, then per reach the object whose patches close (``queries``: no suffix).
CONDITIONS = ("none", *(f"{o}:{r}" if r != "queries" else o for r in REACHES for o in OBJECTS))


def parse_condition(condition: str) -> tuple[str, str]:
    """(object, reach) of a knockout condition (module docstring)."""
    name, _, reach = condition.partition(":")
    return name, reach or "queries"


def blocked_patches(observation: Observation, layout: SequenceLayout, center_crop: bool) -> dict[str, list[int]]:
    """Per knockout region: the agentview positions (sequence positions of its patches) closed at this observation,
    as many for each region (module docstring); empty lists where either region shows no patch."""
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


def knockout_options(reach: str, layouts: Sequence[SequenceLayout], keys: Sequence[Sequence[int]], size: int
                     ) -> dict[str, Any]:
    """The forward options that close ``keys[b]`` (sequence positions) of sample ``b`` to ``reach``, for a batch
    padded to ``size`` positions; {} where nothing closes."""
    if not any(keys):
        return {}
    options: dict[str, Any] = {}
    if reach in ("queries", "all"):
        rows = [list(layout.span("action_queries").positions()) if reach == "queries" else list(range(size))
                for layout in layouts]
        options["block"] = block_tensor([(r, list(k)) for r, k in zip(rows, keys)], size)
    if reach in ("head", "all"):
        head = torch.zeros(len(keys), size, dtype=torch.bool)
        for b, positions in enumerate(keys):
            head[b, list(positions)] = True
        options["head_block"] = head
    return options


@register_study
class TargetKnockout(Study):
    name = "target-knockout"
    description = ("the action queries, the head or every reader lose the target's patches vs as many of the "
                   "same-category object's (LIBERO)")
    worlds = ("libero",)
    conditions = CONDITIONS

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
        size = sequence_length(model, inputs)
        rows: list[dict[str, Any]] = []
        for condition in self.run_conditions(settings):
            name, reach = parse_condition(condition)
            deltas = np.zeros(len(first))
            if condition != "none":
                picks = [blocked_patches(o, layout, env.center_crop)[name]
                         for o, layout in zip(first, baseline.layouts)]
                out = model(**inputs, **knockout_options(reach, baseline.layouts, picks, size))
                deltas = np.abs(out.normalized_actions.float().cpu().numpy() - base_actions).mean(axis=(1, 2))
            for b, episode in enumerate(episodes.episodes):
                closed: list[int] = []

                def intervene(observations: Sequence[Observation], slots: Any, batch: dict[str, torch.Tensor],
                              name: str = name, reach: str = reach, closed: list[int] = closed) -> dict[str, Any]:
                    layout = model.plan(batch["attention_mask"].sum(dim=1).tolist(),
                                        batch["input_ids"].shape[1]).layouts[0]
                    keys = blocked_patches(observations[0], layout, env.center_crop)[name]
                    closed.append(len(keys))
                    return knockout_options(reach, [layout], [keys], sequence_length(model, batch))

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
            rows += condition_rows(by, {"success": "rate", "delta_action": "mean", "blocked_patches": "mean"},
                                   settings.seed, baseline_skips=("delta_action", "blocked_patches"), **keys)
            for reach in REACHES:
                target, alike = (f"{o}:{reach}" if reach != "queries" else o for o in OBJECTS)
                for first, second in ((target, alike), ("none", target), ("none", alike)):
                    if first not in by or second not in by:
                        continue
                    for metric in ["success"] + (["delta_action"] if first != "none" else []):
                        name = "success (per-task rates)" if metric == "success" else "delta_action (per-task means)"
                        tests.append(per_task_test(by[first][metric], by[second][metric], **keys,
                                                   comparison=f"{first} vs {second}", metric=name,
                                                   primary=first == target and metric == "success"))
        holm_by_model([t for t in tests if t["primary"]])
        return frame(rows), frame(tests)
