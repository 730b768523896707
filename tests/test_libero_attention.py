"""Target attention on LIBERO (vla_lab.interp.target_attention, the measurement of every world): on real frames
from tests/data with hand-made region masks (no simulator), then ``vla-lab study target-attention --world libero``
on the simulator's episodes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.interp import target_attention as ta
from vla_lab.model import VLAAdapter
from vla_lab.worlds import Observation
from vla_lab.worlds.libero.world import LiberoWorld

DATA = Path(__file__).parent / "data"
SCENES = ("libero_spatial_0", "libero_object_3", "libero_goal_5", "libero_10_1")
needs_libero = pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="LIBERO is not installed")


def stats() -> dict:
    entry = {"mean": [0.0] * 7, "std": [1.0] * 7, "min": [-1.0] * 7, "max": [1.0] * 7, "q01": [-1.0] * 7,
             "q99": [1.0] * 7, "mask": [True] * 6 + [False]}
    proprio = {k: (v + [v[-1]] if k != "mask" else [True] * 8) for k, v in entry.items()}
    return {"libero_spatial": {"action": entry, "proprio": proprio, "num_transitions": 1, "num_trajectories": 1}}


def observations(swap: bool = False) -> list[Observation]:
    frames = np.load(DATA / "libero_sim_fixtures.npz")
    out = []
    for i, scene in enumerate(SCENES):
        target = np.zeros((224, 224), dtype=bool)
        target[50:80, 30 + 30 * i : 90 + 30 * i] = True  # patch rows 1-2 of the 6x6 grid
        distractors = np.zeros((224, 224), dtype=bool)
        distractors[150:190, 20 + 20 * i : 120 + 20 * i] = True  # rows 4-5: never the target's patches
        regions = {"target": distractors, "distractors": target} if swap else {"target": target,
                                                                               "distractors": distractors}
        out.append(Observation([frames[f"{scene}_full_image"], frames[f"{scene}_wrist_image"]],
                               "pick up the black bowl between the plate and the ramekin and place it on the plate",
                               frames[f"{scene}_state"], [regions]))
    return out


@pytest.fixture(scope="module")
def model() -> VLAAdapter:
    torch.manual_seed(0)
    return VLAAdapter(VLAConfig.preset("libero-small", norm_stats=stats())).eval()


def table(values: pd.DataFrame, tasks: list[int]) -> pd.DataFrame:
    """Per-unit table with a task per sample (two init states per task when ``tasks`` repeats)."""
    named = values.assign(task=[tasks[s] for s in values["sample"]], init_state=values["sample"])
    return ta.per_unit(named[named["source"] == "llm"], ["task", "init_state"])


def test_the_crop_keeps_the_centre_and_a_patch_goes_to_the_first_region_it_shows() -> None:
    mask = np.zeros((224, 224), dtype=bool)
    mask[112, 112] = mask[2, 2] = True
    cropped = ta.crop_mask(mask)
    assert cropped[111:114, 111:114].any() and not cropped[:6, :6].any()
    full = np.ones((224, 224), dtype=bool)
    patches = ta.patch_regions({"target": full, "place": full, "distractors": full}, (6, 6), center_crop=True)
    assert patches["target"].all() and not patches["place"].any() and not patches["distractors"].any()
    place = np.zeros_like(full)
    place[:, 112:] = True
    split = ta.patch_regions({"target": np.zeros_like(full), "place": place, "distractors": full}, (6, 6))
    assert split["place"][:, 3:].all() and split["distractors"][:, :3].all() and not split["distractors"][:, 3:].any()
    with pytest.raises(InputError, match="regions: got \\['bowl'\\]"):
        ta.patch_regions({"bowl": full}, (6, 6))


def test_patch_regions_follow_the_model_grid() -> None:
    target = np.zeros((224, 224), dtype=bool)
    target[100:124, 100:124] = True  # the centre: patches (2..3, 2..3) of a 6x6 grid
    patches = ta.patch_regions({"target": target, "distractors": np.zeros_like(target)}, (6, 6), center_crop=True)
    assert set(zip(*np.nonzero(patches["target"]))) <= {(2, 2), (2, 3), (3, 2), (3, 3)}
    assert patches["target"].sum() >= 1


def test_ratio_per_layer_and_its_inverse_when_the_regions_swap(model) -> None:
    world = LiberoWorld("libero_spatial")
    values = ta.measure(model, world, observations(), ["llm"])
    assert set(values["depth"]) == set(range(model.config.llm["num_hidden_layers"]))
    assert set(values["region"]) == {"target", "distractors"} and len(values) == 4 * 4 * 2
    assert values["head"].isna().all()  # head means only unless heads=True
    ratios = ta.ratio_by_depth(table(values, [0, 1, 2, 3]))
    swapped = ta.ratio_by_depth(table(ta.measure(model, world, observations(swap=True), ["llm"]), [0, 1, 2, 3]))
    masks = ta.region_masks([o.regions for o in observations()], center_crop=True)
    for sample in range(4):
        a = masks(sample, 0, (6, 6))
        assert a["target"][1:3].any() and not a["target"][3:].any() and a["distractors"][4:].any()
        assert masks(sample, 1, (6, 6)) == {}  # the wrist image has no regions
    # The regions cover disjoint patches, so naming them the other way round inverts the ratio exactly.
    assert np.isfinite(ratios).all() and (ratios > 0).all()
    assert np.allclose(ratios.values * swapped.values, 1.0)
    bare = [Observation(o.images, o.instruction, o.proprio) for o in observations()]
    with pytest.raises(InputError, match="^observations: got none with region masks"):
        ta.measure(model, world, bare, ["llm"])
    per_head = ta.measure(model, world, observations()[:1], ["head"], heads=True)
    heads = model.action_head.config.num_heads if hasattr(model.action_head, "config") else None
    assert per_head["head"].isna().any() and per_head["head"].notna().any()
    assert heads is None or set(per_head["head"].dropna()) == set(range(heads))


def test_the_reported_depth_is_chosen_on_the_selection_set_and_tasks_are_resampled(model) -> None:
    values = ta.measure(model, LiberoWorld("libero_spatial"), observations() * 4, ["llm"])
    units = table(values, [s % 4 for s in range(16)])  # four tasks, each shown twice in both sets
    selection, shown = units[units["init_state"] < 8], units[units["init_state"] >= 8]
    result = ta.report(shown, selection, cluster="task", n_resamples=200)
    chosen = max(result.selection_ratio_by_depth, key=result.selection_ratio_by_depth.get)
    assert result.depth == chosen and result.n == 8 and result.n_clusters == 4
    assert result.value == pytest.approx(result.ratio_by_depth[chosen])
    assert result.interval == "bootstrap over tasks (percentile, paired)"
    given = ta.report(shown, at=1, n_resamples=200)
    assert given.rule == "given" and given.depth == 1 and given.selection_ratio_by_depth is None
    low, high = given.ci95
    assert low <= given.value <= high
    with pytest.raises(InputError, match="at: got 9"):
        ta.report(shown, at=9)
    same = ta.compare(result, result, ["task", "init_state"], cluster="task")
    assert same.p == 1.0 and same.n == 4  # one pair per task
    by_episode = ta.compare(result, given, ["task", "init_state"])
    assert by_episode.n == 8


def test_a_ratio_against_the_same_category_object(model) -> None:
    """The other black bowl as its own region: a patch showing it is not a distractor patch, and the ratio against
    it is the target's mean over its mean; ratios against different regions are not compared."""
    full = np.ones((224, 224), dtype=bool)
    patches = ta.patch_regions({"target": np.zeros_like(full), "same_category": full, "distractors": full}, (6, 6))
    assert patches["same_category"].all() and not patches["distractors"].any()
    base = observations()
    for o in base:  # the other bowl: rows 3 (between the target and the distractors)
        alike = np.zeros((224, 224), dtype=bool)
        alike[112:130, 60:160] = True
        o.regions = [{**o.regions[0], "same_category": alike}]
    values = ta.measure(model, LiberoWorld("libero_spatial"), base * 2, ["llm"])
    assert set(values["region"]) == {"target", "same_category", "distractors"}
    named = values.assign(task=values["sample"] % 4, init_state=values["sample"])
    alike_table = ta.per_unit(named, ["task", "init_state"], "same_category")
    assert list(alike_table.columns) == ["task", "init_state", "depth", "target", "same_category", "ratio"]
    wide = named[named["depth"] == 0].pivot_table(index="sample", columns="region", values="value")
    at0 = alike_table[alike_table["depth"] == 0].set_index("init_state")
    np.testing.assert_allclose(at0["ratio"], wide["target"] / wide["same_category"])
    assert ta.ratio_by_depth(alike_table).name == "target_vs_same_category_ratio"
    selection, shown = alike_table[alike_table["init_state"] < 4], alike_table[alike_table["init_state"] >= 4]
    result = ta.report(shown, selection, cluster="task", n_resamples=200)
    assert result.against == "same_category" and result.to_dict()["against"] == "same_category"
    against_distractors = ta.report(ta.per_unit(named[named["init_state"] >= 4], ["task", "init_state"]), at=0,
                                    cluster="task", n_resamples=200)
    assert against_distractors.against == "distractors"
    with pytest.raises(InputError, match="^second: got a ratio against 'distractors', expected one against"):
        ta.compare(result, against_distractors, ["task", "init_state"], cluster="task")
    with pytest.raises(InputError, match="^against: got 'plate'"):
        ta.per_unit(named, ["task", "init_state"], "plate")


@needs_libero
def test_the_study_on_libero_episodes(libero_two_step_run, tmp_path) -> None:
    """``study target-attention --world libero``: a trained checkpoint and its random init on simulator frames;
    depth chosen on the selection init state, reported on the held-out one, tasks as the interval's unit."""
    from dataclasses import replace

    from vla_lab import registry
    from vla_lab.libero.models import camera_resolution
    from vla_lab.studies import StudySettings, load_result, run_study, verify_records

    checkpoint = str(libero_two_step_run)
    settings = StudySettings("target-attention", models=[checkpoint], world="libero", tasks=[0],
                             init_states=[40], selection_states=[0], batch_size=1, max_steps=17)
    result = run_study(settings, tmp_path / "run", progress=False)
    records = result.records
    assert set(records["model"]) == {"final", "random-init:final"}
    assert set(records["split"]) == {"selection", "report"} and set(records["source"]) == {"llm", "head"}
    # the bowl, the plate, the other black bowl, every other object, the rest (robot, table, walls)
    assert set(records["region"]) == {"target", "place", "same_category", "distractors", "background"}
    # every query of the closed-loop episode (17 steps: queries at steps 0, 8, 16), per head at the first only;
    # the random init measured on the trained model's frames
    assert set(records["query"]) == {0, 1, 2} and set(records["step"]) == {0, 8, 16}
    assert set(records.loc[records["head"].notna(), "query"]) == {0}
    assert set(records["frames_of"]) == {"final"} and set(records["episode_steps"]) == {17}
    assert set(records["phase"]) <= {"approach", "grasp"} and not records["success"].any()
    assert set(records["picked"]) == {"none"} and records["lift"].abs().max() < 0.03
    mine = records[records["model"] == "final"].drop(columns=["model", "random_init", "value"])
    theirs = records[records["model"] == "random-init:final"].drop(columns=["model", "random_init", "value"])
    pd.testing.assert_frame_equal(mine.reset_index(drop=True), theirs.reset_index(drop=True))
    assert {"suite", "task", "task_name", "init_state"} <= set(records.columns) and "scene" not in records
    # the cameras of eval libero for this model: its demonstrations' (testkit.write_demos: 128 px), else 256
    assert set(records["resolution"]) == {128}
    spec = registry.resolve([checkpoint], "libero_spatial")[0]
    assert camera_resolution(spec.path) == 128 and camera_resolution(replace(spec, path=str(tmp_path)).path) == 256
    assert set(zip(records["split"], records["init_state"])) == {("selection", 0), ("report", 40)}
    everything = result.summary["frames"].isna() | (result.summary["frames"] == "all queries")
    assert set(result.summary.loc[~everything, "frames"]) <= {"first query", "approach", "grasp"}
    rows = result.summary[(result.summary["metric"] == "target_attention_ratio") & result.summary["head"].isna()
                          & everything]
    assert set(rows["model"]) == {"final", "random-init:final"} and (rows["n"] == 1).all()
    assert (rows["n_tasks"] == 1).all() and set(rows["interval"]) == {"bootstrap over tasks (percentile, paired)"}
    assert rows.groupby(["model", "source"])["selected"].sum().eq(1).all()
    alike = result.summary[(result.summary["metric"] == "target_vs_same_category_ratio")
                           & result.summary["head"].isna() & everything]  # the bowl asked for, or the other one?
    assert set(alike["model"]) == {"final", "random-init:final"} and (alike["n"] == 1).all()
    assert set(alike["against"]) == {"same_category"} and set(rows["against"]) == {"distractors"}
    assert alike.groupby(["model", "source"])["selected"].sum().eq(1).all()
    report = records[(records["split"] == "report") & records["head"].isna() & (records["model"] == "final")]
    for _, row in alike[alike["model"] == "final"].iterrows():
        at = report[(report["source"] == row["source"]) & (report[row["depth_kind"]] == row["depth"])]
        value = at.pivot(index="query", columns="region", values="value").dropna(subset=["target", "same_category"])
        assert row["value"] == pytest.approx(value["target"].mean() / value["same_category"].mean())
    wilcoxon = result.tests[result.tests["name"] == "Wilcoxon signed-rank"]
    assert [(t["model"], t["source"], t["metric"]) for t in wilcoxon.to_dict("records")] == [
        ("final", "llm", "target_attention_ratio"), ("final", "llm", "target_vs_same_category_ratio"),
        ("final", "head", "target_attention_ratio"), ("final", "head", "target_vs_same_category_ratio")]
    # attention and outcome: no episode succeeded, so nothing is estimated, and the record says why
    logit = result.tests[result.tests["name"] == "logistic regression"]
    assert set(logit["model"]) == {"final"} and len(logit) == 2 * 2 * 2 * 2  # sources x ratios x frames x outcomes
    assert logit["p"].isna().all() and logit["note"].str.contains("outcome constant").all()
    stored = load_result(tmp_path / "run")
    pd.testing.assert_frame_equal(stored.records, records)
    with pytest.raises(InputError, match="^records: got a libero run"):
        verify_records(tmp_path / "run")
    with pytest.raises(InputError, match="^prompt: got 'qwen-chat', expected one of \\('openvla',\\)"):
        run_study(StudySettings("target-attention", models=[checkpoint], world="libero", tasks=[0], init_states=[40],
                                selection_states=[0], prompt="qwen-chat"), progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--world", "libero", "--selection-states", "5:1"], "--selection-states: got '5:1', expected 0 <= A < B"),
    (["--world", "libero", "--init-states", "abc"], "--init-states: got 'abc', expected A:B such as 0:10"),
    (["--suite", "libero_spatial"], "--suite: got 'libero_spatial', expected it only with --world libero"),
    (["--world", "libero", "--scenes", "20"], "--scenes: got 20, expected it only with --world tabletop"),
])
def test_world_options_are_checked_before_anything_runs(tmp_path, argv, message) -> None:
    import testkit

    status, _, err = testkit.run_cli(["study", "target-attention", "--model", "libero-spatial-causal", "--out",
                                       str(tmp_path / "x"), *argv])
    assert message in testkit.assert_one_line_error(status, err, "study")
    assert not (tmp_path / "x").exists()


def test_a_study_not_written_for_libero_is_refused(tmp_path) -> None:
    import testkit

    status, _, err = testkit.run_cli(["study", "patching", "--world", "libero", "--out", str(tmp_path / "x")])
    assert "--world: got 'libero' for patching, expected one of ['tabletop']" in testkit.assert_one_line_error(
        status, err, "study")
