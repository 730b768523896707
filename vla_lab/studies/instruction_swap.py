"""``instruction-swap`` (LIBERO): does the policy pick the object the instruction names, or the one its scene is for?

Each episode runs twice in the scene of task ``i`` (its init state): with task ``i``'s own instruction (``own``) and
with the instruction of its partner ``j`` (``swapped``: the lowest-numbered task whose instruction names another
object of that scene, :mod:`vla_lab.worlds.libero.instructions`; libero_spatial: the other black bowl). Which object
the policy picked is read from the simulator (:func:`~vla_lab.studies.rollouts.rollout`: the first of the two to
rise :data:`~vla_lab.worlds.libero.phases.PICKED` above its start): ``picked_instructed`` (the object the episode's
instruction names), ``picked_scene_target`` (task ``i``'s own target), or neither. ``success`` is the scene's own goal.

Summaries per model and condition: the three pick rates and success, each with a bootstrap over tasks (a task's init
states share one layout). Tests, Wilcoxon signed-rank on per-task rates: the primary one, under the swapped
instruction, picking the instructed object vs the scene's own target; then the scene's own target, own vs swapped
instruction. A task without a partner is refused in one line before anything runs. (Patching the text segment's
states between the two instructions is not offered: their token counts differ, so the segments do not align.)
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from vla_lab.model import VLAAdapter
from vla_lab.registry import ModelSpec
from vla_lab.studies.engine import Study, StudySettings, Unit, UnitEpisodes, register_study
from vla_lab.studies.rollouts import rollout
from vla_lab.studies.rows import by_condition, condition_rows, frame, model_keys, per_task_test
from vla_lab.worlds.libero.instructions import first_partner, goal_object
from vla_lab.worlds.libero.world import LiberoWorld

CONDITIONS = ("own", "swapped")
#: Per-episode outcomes summarised as rates.
RATES = ("picked_instructed", "picked_scene_target", "picked_neither", "success")


@register_study
class InstructionSwap(Study):
    name = "instruction-swap"
    description = "the scene of one task with another's instruction naming another object: which one is picked"
    worlds = ("libero",)

    def check_task(self, suite: str, task: int) -> None:
        first_partner(suite, task)  # a task without a partner is refused

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        env = episodes.world
        assert isinstance(env, LiberoWorld)
        rows: list[dict[str, Any]] = []
        for b, episode in enumerate(episodes.episodes):
            task = int(episode.key[1])
            partner, own = first_partner(env.name, task), goal_object(env.name, task)
            watch = {"scene_target": [str(own)], "partner_object": [partner.instructed]}
            for condition in CONDITIONS:
                shown = episode if condition == "own" else env.with_instruction_of(episode, partner.task)
                run = rollout(model, env, shown, settings.execute, watch=watch, regions=False)
                instructed = "scene_target" if condition == "own" else "partner_object"
                picked = run.picked
                rows.append({
                    "episode": b, "condition": condition,
                    "instruction_from": task if condition == "own" else partner.task,
                    "prompt_instruction": shown.instruction,
                    "instructed_object": own if condition == "own" else partner.instructed,
                    "picked": {"scene_target": own, "partner_object": partner.instructed}.get(picked, "none"),
                    "picked_instructed": picked == instructed, "picked_scene_target": picked == "scene_target",
                    "picked_neither": picked == "none", "success": run.success, "steps": run.steps,
                    "error": run.error,
                })
        return pd.DataFrame(rows)

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, tests = [], []
        shown = records[records["split"] == settings.report_split]
        for keys, part in model_keys(shown):
            by = by_condition(part)
            rows += condition_rows(by, dict.fromkeys(RATES, "rate"), settings.seed, **keys)
            comparisons = [("swapped", "picked_instructed", "swapped", "picked_scene_target", True),
                           ("own", "picked_scene_target", "swapped", "picked_scene_target", False)]
            for first, a_metric, second, b_metric, primary in comparisons:
                if first not in by or second not in by:
                    continue
                tests.append(per_task_test(by[first][a_metric], by[second][b_metric], **keys,
                                           comparison=f"{first} {a_metric} vs {second} {b_metric}",
                                           metric="per-task rates", primary=primary))
        return frame(rows), frame(tests)
