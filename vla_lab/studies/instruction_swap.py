"""``instruction-swap`` (LIBERO): does the policy pick the object the instruction names, or the one its scene is for?
And does the instruction's choice travel through the text tokens both instructions share?

Each episode runs in the scene of task ``i`` (its init state): with task ``i``'s own instruction (``own``), with the
instruction of its partner ``j`` (``swapped``: the lowest-numbered task whose instruction names another object of
that scene, :mod:`vla_lab.worlds.libero.instructions`; libero_spatial: the other black bowl), and ``patched``: the
own instruction, with the LLM states of the *aligned* prompt tokens replaced at one depth by the swapped run's on the
same observation, at every query (one episode per ``hidden_index`` 1..L; 0, the embeddings, would copy identical
tokens). The two prompts differ in length ("... between the plate and the ramekin ..." vs "... next to the cookie
box ..."), so only tokens that align are patched: the common prefix, counted from the start, and the common suffix
("and place it on the plate" and the prompt's end), counted from the end; the differing phrase keeps its own states.
In a causal LLM the prefix's states are the same in both runs, so only the suffix carries anything: the patch asks
whether the instruction's choice reaches the queries through the tokens after the phrase that names the object.

Which object the policy picked is read from the simulator (:func:`~vla_lab.studies.rollouts.rollout`: the first of
the two to rise :data:`~vla_lab.worlds.libero.phases.PICKED` above its start): ``picked_instructed`` (the object the
episode's instruction names; ``patched``: the one the patched-in instruction names), ``picked_scene_target`` (task
``i``'s own target), ``picked_partner`` (the partner's object), or neither. ``success`` is the scene's own goal.
``patched`` rows also carry ``first_chunk_share``: how far the patch moves the first chunk from ``own``'s towards
``swapped``'s (the projection of patched - own on swapped - own over its squared norm; 1 = all the way).

Summaries per model and condition: the pick rates and success, each with a bootstrap over tasks (a task's init states
share one layout). Tests, Wilcoxon signed-rank on per-task rates: the primary one, under the swapped instruction,
picking the instructed object vs the scene's own target; then the scene's own target, own vs swapped instruction;
per depth, the partner's object picked patched vs own (Holm over the depths, ``p_holm``). A task without a partner is
refused in one line before anything runs. ``--conditions own,swapped`` leaves the patching out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import interp
from vla_lab.model import VLAAdapter, VLAOutput
from vla_lab.model.sequence import SequenceLayout
from vla_lab.policy import Forward, Policy
from vla_lab.registry import ModelSpec
from vla_lab.studies.engine import Study, StudySettings, Unit, UnitEpisodes, register_study
from vla_lab.studies.patching import hook_for
from vla_lab.studies.rollouts import rollout
from vla_lab.studies.rows import by_condition, condition_rows, frame, holm_by_model, model_keys, per_task_test
from vla_lab.worlds import Observation
from vla_lab.worlds.libero.instructions import first_partner, goal_object
from vla_lab.worlds.libero.world import LiberoWorld

CONDITIONS = ("own", "swapped", "patched")
#: Per-episode outcomes summarised as rates.
RATES = ("picked_instructed", "picked_scene_target", "picked_partner", "picked_neither", "success")


def aligned_tokens(clean: Sequence[int], other: Sequence[int]) -> tuple[list[int], list[int]]:
    """Indices into two prompts' token ids (tok0 first) that align: the common prefix from the start, then the common
    suffix from the end (never overlapping the prefix); equal tokens at the paired indices."""
    n = min(len(clean), len(other))
    prefix = 0
    while prefix < n and clean[prefix] == other[prefix]:
        prefix += 1
    suffix = 0
    while suffix < n - prefix and clean[-1 - suffix] == other[-1 - suffix]:
        suffix += 1
    return ([*range(prefix), *range(len(clean) - suffix, len(clean))],
            [*range(prefix), *range(len(other) - suffix, len(other))])


def prompt_positions(layout: SequenceLayout, indices: Sequence[int]) -> list[int]:
    """Sequence positions of prompt token indices (0: tok0, then the text segment)."""
    return [layout.tok0.start if i == 0 else layout.text.start + i - 1 for i in indices]


def _prompt_ids(inputs: dict[str, Any]) -> list[list[int]]:
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    return [inputs["input_ids"][b, : int(n)].tolist() for b, n in enumerate(lengths)]


def aligned_patch_forward(model: VLAAdapter, policy_inputs: Callable[[Sequence[Observation]], dict[str, Any]],
                          instruction: str, hidden_index: int) -> Forward:
    """A :data:`~vla_lab.policy.Forward` that runs each query's observations with ``instruction`` too and patches
    that run's states of the aligned prompt tokens (:func:`aligned_tokens`) at ``hidden_index`` into the query's."""
    hook = hook_for(hidden_index)

    def forward(inputs: dict[str, Any], observations: Sequence[Observation], slots: Sequence[int]) -> VLAOutput:
        other_inputs = policy_inputs([dataclasses.replace(o, instruction=instruction) for o in observations])
        with interp.capture(model, "none", hidden_states=True, head=False, names=[hook]) as cache:
            model(**other_inputs)
        source, source_layouts = cache[hook], cache.layouts
        pairs = [aligned_tokens(a, b) for a, b in zip(_prompt_ids(inputs), _prompt_ids(other_inputs))]

        def patch(tensor: torch.Tensor, layouts: list[SequenceLayout]) -> torch.Tensor:
            out = tensor.clone()
            for b, (into, take) in enumerate(pairs):
                rows, cols = prompt_positions(layouts[b], into), prompt_positions(source_layouts[b], take)
                out[b, rows] = source[b, cols].to(out.dtype)
            return out

        with interp.capture(model, "none", hidden_states=False, head=False, patches={hook: patch}):
            return model(**inputs)

    return forward


def first_chunk_share(own: np.ndarray, swapped: np.ndarray, patched: np.ndarray) -> float:
    """How far ``patched`` moved from ``own`` towards ``swapped`` (chunks, normalised): projection over squared norm;
    NaN when the two instructions give the same chunk."""
    direction = (swapped - own).ravel()
    norm = float(direction @ direction)
    return float((patched - own).ravel() @ direction / norm) if norm > 0 else math.nan


@register_study
class InstructionSwap(Study):
    name = "instruction-swap"
    description = "the scene of one task with another's instruction naming another object: which one is picked"
    worlds = ("libero",)
    conditions = CONDITIONS

    def check_task(self, suite: str, task: int) -> None:
        first_partner(suite, task)  # a task without a partner is refused

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        env = episodes.world
        assert isinstance(env, LiberoWorld)
        conditions = self.run_conditions(settings)
        depths = range(1, model.config.num_llm_layers + 1) if "patched" in conditions else range(0)
        policy = Policy(model, env, execute=settings.execute)
        first = episodes.first_observations() if depths else []
        rows: list[dict[str, Any]] = []
        for b, episode in enumerate(episodes.episodes):
            task = int(episode.key[1])
            partner, own = first_partner(env.name, task), goal_object(env.name, task)
            watch = {"scene_target": [str(own)], "partner_object": [partner.instructed]}
            other = env.with_instruction_of(episode, partner.task).instruction
            chunks: dict[int, np.ndarray] = {}
            if depths:
                with torch.inference_mode():
                    start = [first[b], dataclasses.replace(first[b], instruction=other)]
                    base = [model(**policy.forward_inputs([o])).normalized_actions.float().cpu().numpy()[0]
                            for o in start]
                    for h in depths:
                        patched = aligned_patch_forward(model, policy.forward_inputs, other, h)(
                            policy.forward_inputs(start[:1]), start[:1], [0])
                        chunks[h] = patched.normalized_actions.float().cpu().numpy()[0]
            runs = [(c, None) for c in ("own", "swapped") if c in conditions] + [("patched", h) for h in depths]
            for condition, depth in runs:
                shown = env.with_instruction_of(episode, partner.task) if condition == "swapped" else episode
                forward = None if depth is None else aligned_patch_forward(model, policy.forward_inputs, other, depth)
                run = rollout(model, env, shown, settings.execute, watch=watch, regions=False, forward=forward)
                instructed = "scene_target" if condition == "own" else "partner_object"
                picked = run.picked
                rows.append({
                    "episode": b, "condition": condition if depth is None else f"patched@{depth}",
                    "hidden_index": depth, "instruction_from": task if condition == "own" else partner.task,
                    "prompt_instruction": shown.instruction,
                    "instructed_object": own if condition == "own" else partner.instructed,
                    "picked": {"scene_target": own, "partner_object": partner.instructed}.get(picked, "none"),
                    "picked_instructed": picked == instructed, "picked_scene_target": picked == "scene_target",
                    "picked_partner": picked == "partner_object", "picked_neither": picked == "none",
                    "first_chunk_share": (math.nan if depth is None
                                          else first_chunk_share(base[0], base[1], chunks[depth])),
                    "success": run.success, "steps": run.steps, "error": run.error,
                })
        return pd.DataFrame(rows).astype({"hidden_index": "Int64"})

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, tests = [], []
        shown = records[records["split"] == settings.report_split]
        for keys, part in model_keys(shown):
            by = by_condition(part)
            rates = [m for m in RATES if m in part.columns]  # records made before the patching lack picked_partner
            rows += condition_rows(by, dict.fromkeys(rates, "rate"), settings.seed, **keys)
            rows += condition_rows({c: sub for c, sub in by.items() if c.startswith("patched@")},
                                   {"first_chunk_share": "mean"}, settings.seed, **keys)
            comparisons = [("swapped", "picked_instructed", "swapped", "picked_scene_target", True),
                           ("own", "picked_scene_target", "swapped", "picked_scene_target", False)]
            comparisons += [(c, "picked_partner", "own", "picked_partner", False) for c in by
                            if c.startswith("patched@")]
            family = []
            for first, a_metric, second, b_metric, primary in comparisons:
                if first not in by or second not in by:
                    continue
                row = per_task_test(by[first][a_metric], by[second][b_metric], **keys,
                                    comparison=f"{first} {a_metric} vs {second} {b_metric}",
                                    metric="per-task rates", primary=primary)
                tests.append(row)
                if first.startswith("patched@"):
                    family.append(row)
            holm_by_model(family)
        return frame(rows), frame(tests)
