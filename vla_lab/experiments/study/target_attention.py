"""``target-attention``: does a source look at the object it was asked for, more than at the others?

Per model (each trained model and its random-init baseline, :func:`~vla_lab.registry.random_init_of`),
scene, source and depth -- the LLM's action queries per ``layer``, the bridge head's task attention per
``block`` -- and head: the mean attention per target patch and per distractor patch (both images pooled;
:func:`vla_lab.tabletop.target_attention.scene_masks`). Rows with ``head`` missing are the head mean.

The depth each model is reported at is chosen on the validation scenes (the highest ratio of means) and
reported on the test scenes: the ratio of the means over scenes, with a paired bootstrap interval. Each
trained model is compared with its random-init baseline scene by scene (Wilcoxon on the per-scene ratios,
each at its own selected depth).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from vla_lab import interp
from vla_lab.experiments.study.engine import (
    Study,
    StudySettings,
    Unit,
    frame,
    model_keys,
    ratio_row,
    register_study,
    test_row,
)
from vla_lab.model import VLAAdapter
from vla_lab.registry import RANDOM_PREFIX, ModelSpec, random_init_of
from vla_lab.stats import wilcoxon_signed_rank
from vla_lab.tabletop.evaluate import observation_inputs
from vla_lab.tabletop.target_attention import scene_masks
from vla_lab.worlds import tabletop as world


def _region_rows(patch_df: pd.DataFrame, scenes: list[world.Scene], depth: str, head: int | None) -> pd.DataFrame:
    regions = interp.region_attention(patch_df, scene_masks(scenes), by=depth)
    values = interp.region_values(regions)
    values["scene"] = [scenes[int(s)].seed for s in values["sample"]]
    values["head"] = head
    return values.drop(columns="sample")


@register_study
class TargetAttention(Study):
    name = "target-attention"
    description = "attention per target patch / per distractor patch, per layer, block and head, vs random init"
    uses_validation = True

    def model_specs(self, specs: list[ModelSpec]) -> list[ModelSpec]:
        out = []
        for spec in specs:
            out.append(spec)
            baseline = random_init_of(spec)
            if baseline.name not in {s.name for s in specs}:
                out.append(baseline)
        return out

    def records(self, model: VLAAdapter, spec: ModelSpec, scenes: list[world.Scene], settings: StudySettings,
                unit: Unit) -> pd.DataFrame:
        inputs = observation_inputs(model, [world.render(s) for s in scenes])
        with interp.capture(model, "segments", hidden_states=False, head=True) as cache:
            model(**inputs)
        frames = []
        for source in interp.SOURCES:
            depth = interp.SOURCE_DEPTH[source]
            patch_df = interp.source_patch_attention(cache, source, model.config.hidden_offset)
            per_source = [_region_rows(patch_df, scenes, depth, None)]
            for head, part in patch_df.groupby("head", sort=True):
                per_source.append(_region_rows(part, scenes, depth, int(head)))
            values = pd.concat(per_source, ignore_index=True).rename(columns={depth: "depth"})
            values.insert(0, "source", source)
            frames.append(values)
        records = pd.concat(frames, ignore_index=True)
        records["layer"] = records["depth"].where(records["source"] == "llm").astype("Int64")
        records["block"] = records["depth"].where(records["source"] == "head").astype("Int64")
        records["head"] = records["head"].astype("Int64")
        records = records.sort_values(["scene", "source", "depth", "head", "region"], na_position="first",
                                      kind="stable")
        return records[["scene", "source", "layer", "block", "head", "region", "value"]].reset_index(drop=True)

    def summarize(self, records: pd.DataFrame, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows: list[dict[str, Any]] = []
        tests: list[dict[str, Any]] = []
        selected: dict[tuple[str, str], pd.Series] = {}
        for keys, part in model_keys(records):
            for source in interp.SOURCES:
                depth = interp.SOURCE_DEPTH[source]
                sub = part[(part["source"] == source)]
                wide = per_scene_wide(sub, depth)
                if wide.empty:
                    continue
                choice, validation = select_depth(wide)
                test = wide[wide["split"] == settings.split]
                label = {**keys, "source": source, "depth_kind": depth}
                for d, at in test[test["head"].isna()].groupby("depth", sort=True):
                    rows.append(ratio_row(at["target"], at["distractors"], seed=settings.seed, **label, depth=int(d),
                                          head=None, selected=d == choice, metric="target_attention_ratio"))
                for (d, h), at in test[test["head"].notna()].groupby(["depth", "head"], sort=True):
                    rows.append(ratio_row(at["target"], at["distractors"], seed=settings.seed, **label, depth=int(d),
                                          head=int(h), selected=False, metric="target_attention_ratio"))
                for d, value in validation.items():
                    rows.append({**label, "depth": int(d), "head": None, "selected": d == choice,
                                 "metric": "validation_ratio", "statistic": "ratio of means",
                                 "n": int(wide[(wide["split"] == "validation") & (wide["depth"] == d)
                                               & wide["head"].isna()].shape[0]),
                                 "value": float(value), "ci95": [math.nan, math.nan],
                                 "interval": "none (selection only)"})
                at_choice = test[test["head"].isna() & (test["depth"] == choice)].set_index("scene")
                selected[(keys["model"], source)] = at_choice["target"] / at_choice["distractors"]
        for keys, _ in model_keys(records):
            if keys["random_init"]:
                continue
            baseline = RANDOM_PREFIX + keys["model"]
            for source in interp.SOURCES:
                a, b = selected.get((keys["model"], source)), selected.get((baseline, source))
                if a is None or b is None:
                    continue
                both = pd.concat([a.rename("trained"), b.rename("random")], axis=1).dropna()
                tests.append(test_row(wilcoxon_signed_rank(both["trained"], both["random"]), **keys, source=source,
                                      comparison=f"{keys['model']} vs {baseline} (per-scene ratio, selected depths)",
                                      metric="target_attention_ratio"))
        return frame(rows), frame(tests)


def per_scene_wide(records: pd.DataFrame, depth: str) -> pd.DataFrame:
    """One row per split, scene, depth and head (missing: head mean) with ``target`` and ``distractors``."""
    df = records.assign(depth=records[depth], head_key=records["head"].fillna(-1))
    wide = df.set_index(["split", "scene", "depth", "head_key", "region"])["value"].unstack("region").reset_index()
    wide.columns.name = None
    wide["head"] = wide.pop("head_key").astype("Int64").replace(-1, pd.NA)
    for region in ("target", "distractors"):
        if region not in wide.columns:
            wide[region] = np.nan
    return wide


def select_depth(wide: pd.DataFrame) -> tuple[int, pd.Series]:
    """The depth with the highest ratio of means (head mean) on the validation scenes (test when there are none)."""
    mean = wide[wide["head"].isna()]
    basis = mean[mean["split"] == "validation"]
    if basis.empty:
        basis = mean
    pairs = basis.dropna(subset=["target", "distractors"])
    sums = pairs.groupby("depth")[["target", "distractors"]].mean()
    ratios = sums["target"] / sums["distractors"]
    return int(ratios.idxmax()), ratios
