"""Architectures trained with the full tabletop recipe, compared from their ``mask-swap`` study records.

A model trained with the shipped recipe on another architecture carries the difference in its recipe
(``"shipped; projector=linear"``, :func:`vla_lab.registry.architecture_of`); the shipped
models themselves have the tabletop preset (recipe ``"shipped"``). Every model ran on the same test scenes,
so an architecture is compared with the preset seed by seed, paired over scenes: exact McNemar on
closed-loop success, Wilcoxon on the first chunk's action L1. Only the models' own mask is used.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vla_lab.errors import InputError
from vla_lab.stats import bootstrap_interval, mcnemar_exact, wilcoxon_signed_rank, wilson_interval

PRESET = "preset"
RECORD_COLUMNS = ("model", "model_seed", "recipe", "random_init", "split", "scene", "own_mask", "success",
                  "action_l1", "trained_with")


def architecture_of_recipe(recipe: str) -> str | None:
    """The architecture label of a study recipe: :data:`PRESET` for ``"shipped"``, the difference for
    ``"shipped; <difference>"``, None for models of another training recipe."""
    base, _, difference = recipe.partition("; ")
    if base != "shipped":
        return None
    return difference or PRESET


def _own_mask(records: pd.DataFrame, mask: str) -> pd.DataFrame:
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise InputError(f"records: got no columns {missing}, expected mask-swap study records")
    sel = records[records["own_mask"] & ~records["random_init"] & (records["split"] == "test")
                  & (records["trained_with"] == mask)].copy()
    sel["architecture"] = [architecture_of_recipe(str(r)) for r in sel["recipe"]]
    return sel[sel["architecture"].notna()]


def trained_summary(records: pd.DataFrame, mask: str = "causal") -> pd.DataFrame:
    """Own-mask success (Wilson 95 % interval) and action L1 (bootstrap over scenes) per architecture and seed,
    plus one ``model_seed`` = "pooled" row per architecture (success over every seed's scenes)."""
    own = _own_mask(records, mask)
    rows = []
    for (architecture, seed), part in own.groupby(["architecture", "model_seed"], sort=True):
        k, n = int(part["success"].sum()), len(part)
        l1 = part["action_l1"].to_numpy(dtype=float)
        rows.append({"architecture": architecture, "model_seed": str(seed), "model": part["model"].iloc[0], "n": n,
                     "successes": k, "success": k / n, "success_ci95": wilson_interval(k, n),
                     "action_l1": float(l1.mean()), "action_l1_ci95": bootstrap_interval(l1)})
    for architecture, part in own.groupby("architecture", sort=True):
        k, n = int(part["success"].sum()), len(part)
        rows.append({"architecture": architecture, "model_seed": "pooled", "model": "",
                     "n": n, "successes": k, "success": k / n, "success_ci95": wilson_interval(k, n),
                     "action_l1": float(part["action_l1"].mean()), "action_l1_ci95": (np.nan, np.nan)})
    return pd.DataFrame(rows)


def compare_to_preset(records: pd.DataFrame, mask: str = "causal", alpha: float = 0.05) -> pd.DataFrame:
    """Each architecture against the preset, per training seed present for both, paired over scenes.

    Columns: architecture, model_seed, n, success (architecture) / preset_success, mcnemar_p, discordant,
    action_l1 / preset_action_l1, wilcoxon_p, and ``verdict`` per architecture: ``better`` or ``worse`` when
    every paired seed (at least two) differs significantly on success in that direction, ``one seed`` when only
    one seed is paired, ``not separated`` otherwise.
    """
    own = _own_mask(records, mask)
    preset = own[own["architecture"] == PRESET]
    rows = []
    for (architecture, seed), part in own[own["architecture"] != PRESET].groupby(["architecture", "model_seed"]):
        ref = preset[preset["model_seed"] == seed].set_index("scene")
        if ref.empty:
            continue
        mine = part.set_index("scene")
        scenes = mine.index.intersection(ref.index)
        if len(scenes) == 0:
            continue
        a, b = mine.loc[scenes], ref.loc[scenes]
        success = mcnemar_exact(a["success"], b["success"])
        l1 = wilcoxon_signed_rank(a["action_l1"], b["action_l1"])
        rows.append({"architecture": architecture, "model_seed": int(seed), "n": len(scenes),
                     "success": float(a["success"].mean()), "preset_success": float(b["success"].mean()),
                     "mcnemar_p": success.p, "discordant": success.note,
                     "action_l1": float(a["action_l1"].mean()), "preset_action_l1": float(b["action_l1"].mean()),
                     "wilcoxon_p": l1.p})
    table = pd.DataFrame(rows, columns=["architecture", "model_seed", "n", "success", "preset_success", "mcnemar_p",
                                        "discordant", "action_l1", "preset_action_l1", "wilcoxon_p"])
    verdicts = {}
    for architecture, part in table.groupby("architecture"):
        significant = part["mcnemar_p"] < alpha
        if len(part) < 2:
            verdicts[architecture] = "one seed"
        elif significant.all() and (part["success"] > part["preset_success"]).all():
            verdicts[architecture] = "better"
        elif significant.all() and (part["success"] < part["preset_success"]).all():
            verdicts[architecture] = "worse"
        else:
            verdicts[architecture] = "not separated"
    table["verdict"] = table["architecture"].map(verdicts)
    return table
