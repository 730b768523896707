"""``patching``: swap the target in a counterfactual, patch its hidden states into the clean run, and see
whether the actions follow the new target.

Two counterfactuals per scene (each pairs a clean run with a counterfactual run of the same layout):

* ``instruction``: the clean instruction names the target by colour and shape ("pick up the red cube"); the
  counterfactual names another object of the same scene the same way (same images, one target word pair
  changed; an object whose instruction has the clean one's token count is preferred, else the text patch
  is not measured);
* ``scene``: the target and another object swap places (same instruction, which must still name the same
  object); the new target position is the other object's old one.

Patched: the states of one segment (``vision``, ``text``, ``action_queries``) at one depth (``hidden_index``
0 = embeddings, ``i`` = output of decoder layer ``i - 1``) are replaced by the counterfactual run's. The
head reads every layer's states, so a patch at depth ``i`` leaves the states below it as they were.

Per model, counterfactual, scene and condition (``clean``, ``counterfactual``, ``patch``): the direction of
the first predicted chunk (the summed xy moves from the start) as its cosine with the direction to the
new target (``cos_new``) and to the old one (``cos_old``), and, closed loop in the clean world, whether the
gripper grasps the new target (``success_new``) and the outcome. Summaries: mean ``cos_new`` and success per
condition; the share of the counterfactual's shift a patch restores (ratio of means over scenes of
patched - clean and counterfactual - clean); tests: Wilcoxon of ``cos_new`` patched vs clean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import interp
from vla_lab.interp.hooks import llm_hook
from vla_lab.model import VLAAdapter
from vla_lab.model.sequence import SequenceLayout
from vla_lab.registry import ModelSpec
from vla_lab.stats import wilcoxon_signed_rank
from vla_lab.studies.engine import (
    Study,
    StudySettings,
    Unit,
    UnitEpisodes,
    register_study,
)
from vla_lab.studies.policies import run_closed_loop, unnormalize
from vla_lab.studies.rows import (
    closed_loop_mask,
    frame,
    mean_row,
    model_keys,
    rate_row,
    ratio_row,
    test_row,
)
from vla_lab.tabletop.evaluate import observation_inputs
from vla_lab.worlds import tabletop as world

COUNTERFACTUALS = ("instruction", "scene")
SEGMENTS = ("vision", "text", "action_queries")


@dataclasses.dataclass
class Pair:
    """A clean scene, its counterfactual, and the clean world in which the new target counts as success."""

    clean: world.Scene
    counterfactual: world.Scene
    judged: world.Scene
    old: tuple[float, float]
    new: tuple[float, float]


def instruction_pair(scene: world.Scene, model: VLAAdapter, rng: np.random.Generator) -> Pair:
    """Name the target, then another object (preferring one whose instruction has as many tokens)."""
    verb = world.verb_of(scene.instruction)
    clean = dataclasses.replace(scene, instruction=f"{verb} the {scene.target_object.name}", anchor=None)
    tokenizer = model.processor.tokenizer
    length = len(tokenizer.encode(clean.instruction))
    others = [int(i) for i in rng.permutation(scene.distractors)]
    same = [i for i in others if len(tokenizer.encode(f"{verb} the {scene.objects[i].name}")) == length]
    other = (same or others)[0]
    obj = scene.objects[other]
    counterfactual = dataclasses.replace(clean, target=other, instruction=f"{verb} the {obj.name}")
    judged = dataclasses.replace(clean, target=other)
    return Pair(clean, counterfactual, judged, (scene.target_object.x, scene.target_object.y), (obj.x, obj.y))


def scene_pair(scene: world.Scene, rng: np.random.Generator) -> Pair | None:
    """Swap the target with another object such that the instruction still names the target (None if none)."""
    target = scene.target_object
    for other in (int(i) for i in rng.permutation(scene.distractors)):
        obj = scene.objects[other]
        objects = list(scene.objects)
        objects[scene.target] = dataclasses.replace(target, x=obj.x, y=obj.y)
        objects[other] = dataclasses.replace(obj, x=target.x, y=target.y)
        try:
            if world.resolve_instruction(objects, scene.instruction) != scene.target:
                continue
        except Exception:  # the instruction no longer picks one object
            continue
        counterfactual = dataclasses.replace(scene, objects=tuple(objects), _cache={})
        judged = dataclasses.replace(scene, target=other)
        return Pair(scene, counterfactual, judged, (target.x, target.y), (obj.x, obj.y))
    return None


def segment_patch(source: torch.Tensor, source_layouts: Sequence[SequenceLayout], segment: str,
                  valid: list[bool]) -> Callable[[torch.Tensor, list[SequenceLayout]], torch.Tensor]:
    """A patch copying ``segment`` of ``source`` into the run, sample by sample; ``valid[b]`` becomes False
    (and sample ``b`` is left unpatched) where the two runs' segments differ in length."""

    def patch(tensor: torch.Tensor, layouts: list[SequenceLayout]) -> torch.Tensor:
        out = tensor.clone()
        for b, layout in enumerate(layouts):
            into, take = layout.span(segment), source_layouts[b].span(segment)
            if len(into) != len(take):
                valid[b] = False
                continue
            out[b, into.slice] = source[b, take.slice].to(out.dtype)
        return out

    return patch


def hook_for(hidden_index: int) -> str:
    return llm_hook("embed") if hidden_index == 0 else llm_hook("resid_post", hidden_index - 1)


def _cosines(model: VLAAdapter, normalized: np.ndarray, pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray]:
    moves = np.clip(unnormalize(model, normalized)[..., :2], -1.0, 1.0).sum(axis=1)  # (B, 2)
    out = np.full((2, len(pairs)), np.nan)
    for b, pair in enumerate(pairs):
        start = np.asarray(pair.clean.gripper_start)
        for row, goal in enumerate((pair.new, pair.old)):
            direction = np.asarray(goal) - start
            norm = np.linalg.norm(moves[b]) * np.linalg.norm(direction)
            out[row, b] = float(moves[b] @ direction / norm) if norm > 0 else np.nan
    return out[0], out[1]


@torch.inference_mode()
def _run(model: VLAAdapter, clean: list[world.Observation], counterfactual: list[world.Observation],
         condition: tuple[str, int | None, str | None]) -> tuple[np.ndarray, list[bool]]:
    """Normalised chunks of one condition on a batch, and which samples were patched as asked."""
    kind, hidden_index, segment = condition
    valid = [True] * len(clean)
    if kind == "clean":
        return model(**observation_inputs(model, clean)).normalized_actions.float().cpu().numpy(), valid
    cf_inputs = observation_inputs(model, counterfactual)
    if kind == "counterfactual":
        return model(**cf_inputs).normalized_actions.float().cpu().numpy(), valid
    assert hidden_index is not None and segment is not None
    hook = hook_for(hidden_index)
    with interp.capture(model, "none", hidden_states=True, head=False, names=[hook]) as cache:
        model(**cf_inputs)
    patch = segment_patch(cache[hook], cache.layouts, segment, valid)
    with interp.capture(model, "none", hidden_states=False, head=False, patches={hook: patch}):
        out = model(**observation_inputs(model, clean))
    return out.normalized_actions.float().cpu().numpy(), valid


def conditions(model: VLAAdapter) -> list[tuple[str, int | None, str | None]]:
    depths = range(model.config.num_llm_layers + 1)
    return [("clean", None, None), ("counterfactual", None, None)] + [
        ("patch", h, s) for s in SEGMENTS for h in depths
    ]


@register_study
class Patching(Study):
    name = "patching"
    description = "counterfactual target swap (instruction or scene), states patched per depth and segment"

    def records(self, model: VLAAdapter, spec: ModelSpec, episodes: UnitEpisodes, settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        scenes = episodes.scenes
        rows: list[dict[str, Any]] = []
        position = {scene.seed: i for i, scene in enumerate(scenes)}
        for counterfactual in COUNTERFACTUALS:
            pairs: list[Pair] = []
            for scene in scenes:
                rng = np.random.default_rng([settings.seed, scene.seed, COUNTERFACTUALS.index(counterfactual)])
                if counterfactual == "instruction":
                    pair: Pair | None = instruction_pair(scene, model, rng)
                else:
                    pair = scene_pair(scene, rng)
                if pair is not None:
                    pairs.append(pair)
            if not pairs:
                continue
            clean = [world.render(p.clean) for p in pairs]
            cf = [world.render(p.counterfactual) for p in pairs]
            looped = [p for p, keep in zip(pairs, closed_loop_mask([p.clean for p in pairs], settings, unit)) if keep]
            for condition in conditions(model):
                normalized, valid = _run(model, clean, cf, condition)
                cos_new, cos_old = _cosines(model, normalized, pairs)
                looped_records = self._episodes(model, looped, condition, settings) if looped else {}
                kind, hidden_index, segment = condition
                for b, pair in enumerate(pairs):
                    row = {"episode": position[pair.clean.seed], "counterfactual": counterfactual, "condition": kind,
                           "hidden_index": hidden_index, "segment": segment, "valid": valid[b],
                           "cos_new": cos_new[b] if valid[b] else np.nan, "cos_old": cos_old[b] if valid[b] else np.nan,
                           "success_new": pd.NA, "outcome": pd.NA}
                    episode = looped_records.get(pair.clean.seed)
                    if episode is not None and valid[b] and episode["valid"]:
                        row.update(success_new=episode["success"], outcome=episode["outcome"])
                    rows.append(row)
        records = pd.DataFrame(rows)
        if not records.empty:
            records["hidden_index"] = records["hidden_index"].astype("Int64")
            records["success_new"] = records["success_new"].astype("boolean")
            records["outcome"] = records["outcome"].astype("string")
        return records

    @staticmethod
    def _episodes(model: VLAAdapter, pairs: list[Pair], condition: tuple[str, int | None, str | None],
                  settings: StudySettings) -> dict[int, dict[str, Any]]:
        valid = [True] * len(pairs)

        def act(observations: Sequence[world.Observation], episodes: Sequence[int],
                states: Sequence[world.State]) -> np.ndarray:
            cf = [world.render(pairs[e].counterfactual, s) for e, s in zip(episodes, states)]
            normalized, ok = _run(model, list(observations), cf, condition)
            for e, good in zip(episodes, ok):
                valid[e] = valid[e] and good
            return normalized

        records = run_closed_loop(model, [p.judged for p in pairs], act, settings.execute, settings.max_steps)
        return {p.clean.seed: {**r, "valid": v} for p, r, v in zip(pairs, records, valid)}

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, tests = [], []
        has_success = bool(records["success_new"].notna().any())
        for keys, part in model_keys(records):
            for counterfactual, sub in part.groupby("counterfactual", sort=False):
                clean = sub[sub["condition"] == "clean"].set_index("scene")["cos_new"]
                full = sub[sub["condition"] == "counterfactual"].set_index("scene")["cos_new"]
                for (kind, hidden_index, segment), cond in sub.groupby(
                        ["condition", "hidden_index", "segment"], sort=False, dropna=False):
                    label = {**keys, "counterfactual": counterfactual, "condition": kind,
                             "hidden_index": None if pd.isna(hidden_index) else int(hidden_index),
                             "segment": None if pd.isna(segment) else segment}
                    rows.append(mean_row(cond["cos_new"], seed=settings.seed, **label, metric="cos_new"))
                    if has_success:
                        rows.append(rate_row(cond["success_new"], **label, metric="success_new"))
                    if kind != "patch":
                        continue
                    patched = cond.set_index("scene")["cos_new"]
                    both = pd.concat([patched.rename("p"), clean.rename("c"), full.rename("f")], axis=1).dropna()
                    rows.append(ratio_row(both["p"] - both["c"], both["f"] - both["c"], seed=settings.seed, **label,
                                          metric="restored_share"))
                    tests.append(test_row(wilcoxon_signed_rank(both["p"], both["c"]), **label,
                                          comparison="patched vs clean", metric="cos_new"))
        return frame(rows), frame(tests)
