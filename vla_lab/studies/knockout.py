"""``knockout``: block one path of information in the LLM and measure what the actions lose.

Conditions, each on top of the model's own mask (the baseline ``none``):

* ``vision->queries`` / ``text->queries``: the action queries may not read the image patches / the prompt;
* ``queries->vision`` / ``queries->text``: the patches / the prompt may not read the queries (already
  closed by the causal mask: such a condition changes nothing and is marked ``changes_mask`` False);
* ``prefix-lm``: the prefix-LM mask instead of the model's own (prompt and images see each other fully,
  queries and STOP causal);
* ``random-keys:vision->queries`` / ``random-keys:text->queries``: the control of equal size -- the queries
  lose as many keys as the segment has, drawn at random (per scene, seeded) from every key they may read
  except their own positions. The draw is not restricted to other segments (the patches outnumber all
  other keys), so ``keys_vision`` / ``keys_text`` / ``keys_other`` record where each condition's closed
  keys lie.

Per model, condition and scene: ``delta_action`` (mean |normalised actions - baseline's| of the chunk at the
start observation) and, closed loop, success, outcome, steps. Summaries: mean delta (bootstrap) and success
(Wilson); tests: exact McNemar of success against ``none`` and of each path against its random-key control,
Wilcoxon of each path's delta against its control.

LIBERO, per model, condition and episode (task, init state): ``delta_action`` of the first chunk and, for every
condition that changes the mask (``none`` included), closed-loop success, steps and queries under upstream's
protocol (:class:`~vla_lab.policy.Policy` with the knockout on every query; the random keys drawn once per episode,
seeded by task and init state). A task's init states share one layout, so the episodes cluster by task: success
and ``delta_action`` with a bootstrap over tasks; the paired tests are Wilcoxon signed-rank on per-task values
(success rates; mean deltas).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab.config import AttentionSpec
from vla_lab.model import VLAAdapter
from vla_lab.model.sequence import SequenceLayout
from vla_lab.policy import Policy
from vla_lab.registry import ModelSpec
from vla_lab.stats import mcnemar_exact, wilcoxon_signed_rank
from vla_lab.studies.engine import (
    STUDIES,
    Study,
    StudySettings,
    Unit,
    UnitEpisodes,
    register_study,
)
from vla_lab.studies.policies import run_closed_loop
from vla_lab.studies.rows import (
    by_condition,
    closed_loop_mask,
    cluster_row,
    frame,
    mean_row,
    model_keys,
    paired,
    per_task_test,
    rate_row,
    test_row,
)
from vla_lab.tabletop.evaluate import observation_inputs
from vla_lab.worlds import tabletop as world
from vla_lab.worlds.runner import run_lockstep

#: Path knockouts: condition -> (query segment, key segment) blocked.
PATHS: dict[str, tuple[str, str]] = {
    "vision->queries": ("action_queries", "vision"),
    "text->queries": ("action_queries", "text"),
    "queries->vision": ("vision", "action_queries"),
    "queries->text": ("text", "action_queries"),
}
CONTROLS = ("vision->queries", "text->queries")
CONDITIONS = ("none", *PATHS, "prefix-lm", *(f"random-keys:{p}" for p in CONTROLS))


def random_keys(layout: SequenceLayout, allowed: torch.Tensor, path: str, rng: np.random.Generator) -> tuple[
        list[int], list[int]]:
    """(query positions, key positions to block) of the random-key control of ``path`` for one sample."""
    query_segment, key_segment = PATHS[path]
    queries = list(layout.span(query_segment).positions())
    visible = allowed[queries].any(dim=0).nonzero().flatten().tolist()
    candidates = [k for k in visible if k not in set(queries)]
    count = min(len(layout.span(key_segment)), len(candidates))
    chosen = sorted(int(k) for k in rng.choice(candidates, size=count, replace=False))
    return queries, chosen


#: The segments :func:`_blocked_segments` counts keys in (``other``: tok0, the queries' own segment, STOP).
KEY_SEGMENTS = ("vision", "text")


def _blocked_segments(condition: str, layouts: Sequence[SequenceLayout],
                      chosen: dict[str, list[tuple[list[int], list[int]]]]) -> list[dict[str, int]]:
    """Per scene: how many key positions of each segment the condition closes for its query segment
    (``keys_vision``, ``keys_text``, ``keys_other``); zeros for ``none`` and ``prefix-lm``."""
    out = []
    for b, layout in enumerate(layouts):
        if condition in PATHS:
            keys = list(layout.span(PATHS[condition][1]).positions())
        elif condition.startswith("random-keys:"):
            keys = chosen[condition.split(":", 1)[1]][b][1]
        else:
            keys = []
        segments = [layout.segment_of(k).split(".")[0] for k in keys]
        counts = {f"keys_{name}": sum(s == name for s in segments) for name in KEY_SEGMENTS}
        out.append({**counts, "keys_other": len(keys) - sum(counts.values())})
    return out


def sequence_length(model: VLAAdapter, inputs: dict[str, torch.Tensor]) -> int:
    """Sequence length of a batch (patches, padded prompt, queries, STOP)."""
    return model.plan(inputs["attention_mask"].sum(dim=1).tolist(), inputs["input_ids"].shape[1]).length


def block_tensor(chosen: Sequence[tuple[list[int], list[int]]], size: int) -> torch.Tensor:
    block = torch.zeros(len(chosen), size, size, dtype=torch.bool)
    for b, (queries, keys) in enumerate(chosen):
        if queries and keys:
            rows, columns = torch.tensor(queries, dtype=torch.long), torch.tensor(keys, dtype=torch.long)
            block[b, rows[:, None], columns[None, :]] = True
    return block


@register_study
class Knockout(Study):
    name = "knockout"
    description = "block vision/text -> queries, queries -> vision/text, prefix-lm, random-key controls"
    worlds = ("tabletop", "libero")
    conditions = CONDITIONS

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        if settings.world == "libero":
            return _libero_records(model, episodes, settings)
        scenes = episodes.scenes
        base = model.attention
        start = [world.render(s) for s in scenes]
        inputs = observation_inputs(model, start)
        baseline = model(**inputs)
        base_actions = baseline.normalized_actions.float().cpu().numpy()
        allowed = baseline.allowed.cpu()
        chosen: dict[str, list[tuple[list[int], list[int]]]] = {}
        for path in CONTROLS:
            chosen[path] = [
                random_keys(layout, allowed[b], path,
                            np.random.default_rng([settings.seed, scenes[b].seed, CONTROLS.index(path)]))
                for b, layout in enumerate(baseline.layouts)
            ]
        rows: list[dict[str, Any]] = []
        closed: dict[str, dict[int, dict[str, Any]]] = {}
        looped = [b for b, keep in enumerate(closed_loop_mask(scenes, settings, unit)) if keep]
        for condition in self.run_conditions(settings):
            options, per_scene, changes = self._options(condition, base, allowed, baseline.layouts, chosen)
            where = _blocked_segments(condition, baseline.layouts, chosen)
            out = model(**inputs, **options(list(range(len(scenes))), sequence_length(model, inputs)))
            delta = np.abs(out.normalized_actions.float().cpu().numpy() - base_actions).mean(axis=(1, 2))
            if looped and (changes or condition == "none"):
                closed[condition] = self._episodes(model, scenes, looped, options, settings)
            looped_records = closed.get(condition) or closed.get("none") or {}
            for b in range(len(scenes)):
                episode = looped_records.get(b)
                rows.append({"episode": b, "condition": condition, "changes_mask": changes,
                             "blocked_keys": per_scene[b], **where[b], "delta_action": float(delta[b]),
                             "success": pd.NA if episode is None else episode["success"],
                             "outcome": pd.NA if episode is None else episode["outcome"],
                             "steps": pd.NA if episode is None else episode["steps"]})
        records = pd.DataFrame(rows)
        return records.astype({"success": "boolean", "outcome": "string", "steps": "Int64"})

    @staticmethod
    def _options(condition: str, base: AttentionSpec, allowed: torch.Tensor, layouts: Sequence[SequenceLayout],
                 chosen: dict[str, list[tuple[list[int], list[int]]]]) -> tuple[Any, list[int], bool]:
        """(episodes, padded length -> forward options, keys blocked per scene, whether the mask changes)."""
        if condition == "none":
            return (lambda rows, size: {}), [0] * len(layouts), False
        if condition == "prefix-lm":
            spec = AttentionSpec.parse("prefix-lm")
            changes = spec != base
            return (lambda rows, size: {"attention": spec}), [0] * len(layouts), changes
        if condition in PATHS:
            q, k = PATHS[condition]
            spec = base.with_blocked((q, k))
            counts = []
            for b, layout in enumerate(layouts):
                queries = list(layout.span(q).positions())
                keys = list(layout.span(k).positions())
                counts.append(int(allowed[b][queries][:, keys].sum()))
            return (lambda rows, size: {"attention": spec}), counts, any(counts)
        path = condition.split(":", 1)[1]
        picks = chosen[path]
        counts = [len(queries) * len(keys) for queries, keys in picks]

        def options(rows: list[int], size: int) -> dict[str, Any]:
            return {"block": block_tensor([picks[r] for r in rows], size)}

        return options, counts, any(counts)

    @staticmethod
    def _episodes(model: VLAAdapter, scenes: list[world.Scene], looped: list[int], options: Any,
                  settings: StudySettings) -> dict[int, dict[str, Any]]:
        """Closed-loop records of the scenes ``looped`` (indices into ``scenes``), by index."""
        def act(observations: Sequence[world.Observation], episodes: Sequence[int],
                states: Sequence[world.State]) -> np.ndarray:
            inputs = observation_inputs(model, observations)
            out = model(**inputs, **options([looped[e] for e in episodes], sequence_length(model, inputs)))
            return out.normalized_actions.float().cpu().numpy()

        records = run_closed_loop(model, [scenes[b] for b in looped], act, settings.execute, settings.max_steps)
        return dict(zip(looped, records))

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        if settings.world == "libero":
            return _libero_summary(records, settings)
        rows, tests = [], []
        has_success = bool(records["success"].notna().any())
        for keys, part in model_keys(records):
            by = {c: sub.set_index("scene").sort_index() for c, sub in part.groupby("condition", sort=False)}
            for condition, sub in by.items():
                label = {**keys, "condition": condition, "changes_mask": bool(sub["changes_mask"].iloc[0])}
                rows.append(mean_row(sub["delta_action"], seed=settings.seed, **label, metric="delta_action"))
                if has_success:
                    rows.append(rate_row(sub["success"], **label, metric="success"))
                    if condition != "none":
                        tests.append(test_row(mcnemar_exact(*paired(by["none"]["success"], sub["success"])), **keys,
                                              comparison=f"none vs {condition}", metric="success"))
            for path in CONTROLS:
                control = f"random-keys:{path}"
                if has_success and path in by and control in by:
                    tests.append(test_row(mcnemar_exact(*paired(by[path]["success"], by[control]["success"])),
                                          **keys, comparison=f"{path} vs {control}", metric="success"))
                if path in by and control in by:
                    deltas = paired(by[path]["delta_action"], by[control]["delta_action"])
                    tests.append(test_row(wilcoxon_signed_rank(*deltas),
                                          **keys, comparison=f"{path} vs {control}", metric="delta_action"))
        return frame(rows), frame(tests)


def _libero_records(model: VLAAdapter, episodes: UnitEpisodes, settings: StudySettings) -> pd.DataFrame:
    """One LIBERO unit: every condition's first chunks (one batch), then the closed-loop episodes (one at a time)
    of the conditions that change the mask."""
    first = episodes.first_observations()
    inputs = Policy(model, episodes.world, execute=settings.execute).forward_inputs(first)
    baseline = model(**inputs)
    base_actions = baseline.normalized_actions.float().cpu().numpy()
    allowed = baseline.allowed.cpu()
    keys = [e.key for e in episodes.episodes]
    chosen = {path: [random_keys(layout, allowed[b], path,
                                 np.random.default_rng([settings.seed, int(keys[b][1]), int(keys[b][2]),
                                                        CONTROLS.index(path)]))
                     for b, layout in enumerate(baseline.layouts)]
              for path in CONTROLS}
    rows: list[dict[str, Any]] = []
    closed: dict[str, list[Any]] = {}
    for condition in STUDIES["knockout"].run_conditions(settings):
        options, per_episode, changes = Knockout._options(condition, model.attention, allowed, baseline.layouts,
                                                          chosen)
        where = _blocked_segments(condition, baseline.layouts, chosen)
        out = model(**inputs, **options(list(range(len(first))), sequence_length(model, inputs)))
        delta = np.abs(out.normalized_actions.float().cpu().numpy() - base_actions).mean(axis=(1, 2))
        if changes or condition == "none":
            closed[condition] = []
            for b, episode in enumerate(episodes.episodes):
                def intervene(observations: Any, slots: Any, batch: dict[str, torch.Tensor], b: int = b,
                              options: Any = options) -> dict[str, Any]:
                    return options([b], sequence_length(model, batch))

                policy = Policy(model, episodes.world, execute=settings.execute, intervene=intervene)
                closed[condition].append(run_lockstep([episodes.world], [episode], policy, isolate=True)[0])
        runs = closed.get(condition) or closed["none"]
        for b, run in enumerate(runs):
            rows.append({"episode": b, "condition": condition, "changes_mask": changes,
                         "blocked_keys": per_episode[b], **where[b], "delta_action": float(delta[b]),
                         "success": run.success, "steps": run.steps, "queries": run.queries, "error": run.error})
    return pd.DataFrame(rows)


def _libero_summary(records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, tests = [], []
    shown = records[records["split"] == settings.report_split]
    for keys, part in model_keys(shown):
        by = by_condition(part)
        for condition, sub in by.items():
            label = {**keys, "condition": condition, "changes_mask": bool(sub["changes_mask"].iloc[0])}
            tasks = sub.index.get_level_values("task")
            rows.append(cluster_row(sub["delta_action"], tasks, settings.seed, **label, metric="delta_action"))
            rows.append(cluster_row(sub["success"].astype(float), tasks, settings.seed, "rate", **label,
                                    metric="success"))
        comparisons = [("none", c, "success") for c in by if c != "none" and bool(by[c]["changes_mask"].iloc[0])]
        comparisons += [(p, f"random-keys:{p}", m) for p in CONTROLS for m in ("success", "delta_action")
                        if p in by and f"random-keys:{p}" in by]
        for first, second, metric in comparisons:
            name = "success (per-task rates)" if metric == "success" else "delta_action (per-task means)"
            tests.append(per_task_test(by[first][metric], by[second][metric], **keys,
                                       comparison=f"{first} vs {second}", metric=name))
    return frame(rows), frame(tests)
