"""The study engine: statistics from scipy/statsmodels, the four studies, resumable run directories and
torchrun sharding that gives exactly one process's records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from testkit import assert_one_line_error, failed_run, run_cli, run_ranks, run_torchrun, snapshot

from vla_lab import registry, stats, tabletop
from vla_lab.errors import InputError
from vla_lab.run_dir import RunDir
from vla_lab.studies import STUDIES, StudySettings, knockout, load_result, patching, run_study, verify_records
from vla_lab.tabletop.evaluate import observation_inputs
from vla_lab.worlds import tabletop as world

CAUSAL = ["tabletop-causal"]


# --- statistics --------------------------------------------------------------------------------------------


def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs() -> None:
    a = np.array([1] * 10 + [0] * 3 + [1] * 20 + [0] * 7, bool)
    b = np.array([0] * 10 + [1] * 3 + [1] * 20 + [0] * 7, bool)
    result = stats.mcnemar_exact(a, b)
    assert result.p == pytest.approx(scipy.stats.binomtest(3, 13, 0.5).pvalue)
    assert result.n == 40 and "10 (first only) / 3 (second only)" in result.note


def test_wilcoxon_matches_scipy_and_handles_all_zero_differences() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(0.4, size=30)
    assert stats.wilcoxon_signed_rank(x, y).p == pytest.approx(scipy.stats.wilcoxon(x, y).pvalue)
    same = stats.wilcoxon_signed_rank(x, x)
    assert same.p == 1.0 and "zero" in same.note


def test_bootstrap_intervals_cover_the_estimate_and_degenerate_cases() -> None:
    rng = np.random.default_rng(1)
    values = rng.exponential(size=200)
    low, high = stats.bootstrap_interval(values)
    assert low < values.mean() < high
    assert stats.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(np.isnan(stats.bootstrap_interval([1.0])))
    num, den = rng.uniform(1, 3, 100), rng.uniform(0.5, 1.5, 100)
    low, high = stats.ratio_of_means_interval(num, den)
    assert low < num.mean() / den.mean() < high
    with pytest.raises(InputError):
        stats.bootstrap_interval([1.0, float("nan")])
    with pytest.raises(InputError):
        stats.ratio_of_means_interval([1.0, 2.0], [1.0])


# --- run directories ---------------------------------------------------------------------------------------


def test_a_run_directory_refuses_reuse_and_names_changed_settings(tmp_path: Path) -> None:
    def run_dir(path: Path) -> RunDir:
        return RunDir(path, "test", markers=("run.json", "parts"), records=("parts/*",), settings_file="run.json",
                      free=("device",))

    settings = {"a": 1, "device": "cpu"}
    out = tmp_path / "run"
    assert run_dir(out).check(settings) is False
    with pytest.raises(InputError, match="holds no earlier run"):
        run_dir(out).check(settings, resume=True)
    run_dir(out).claim(settings)
    with pytest.raises(InputError, match="earlier run"):
        run_dir(out).check(settings)
    with pytest.raises(InputError, match="a: got 2, expected 1"):
        run_dir(out).check({"a": 2, "device": "cpu"}, resume=True)
    assert run_dir(out).check({"a": 1, "device": "cuda"}, resume=True) is True
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for resume, overwrite in ((False, False), (False, True)):
        with pytest.raises(InputError, match="other files"):
            run_dir(other).check(settings, resume=resume, overwrite=overwrite)


def test_overwrite_and_resume_refuse_a_demonstrations_directory(tmp_path: Path) -> None:
    """``libero demos`` also writes parts/: a study's --overwrite used to delete its demonstrations."""
    out = tmp_path / "demos"
    (out / "parts").mkdir(parents=True)
    (out / "parts" / "task00_init00.hdf5").write_bytes(b"a demonstration")
    for name in ("run.json", "episodes.jsonl", "results.json", "demos.json", "x_demo.hdf5"):
        (out / name).write_text("{}")
    before = snapshot(out)
    for flag in ("--overwrite", "--resume"):
        status, _, stderr = run_cli(["study", "mask-swap", "--scenes", "2", "--batch-size", "2", "--model",
                                     "tabletop-causal", "--out", out, "--no-progress", flag])
        assert "a directory with other files (demos.json" in assert_one_line_error(status, stderr, "study")
    assert snapshot(out) == before


# --- the engine --------------------------------------------------------------------------------------------


def test_every_study_is_registered_and_settings_are_checked() -> None:
    assert set(STUDIES) == {"mask-swap", "knockout", "target-attention", "patching", "target-knockout",
                            "instruction-swap"}
    for bad in ({"scenes": 0}, {"batch_size": -1}, {"start": -1}, {"closed_loop_scenes": 0}, {"split": "train"},
                {"scenes": 1_000_001}):
        with pytest.raises(InputError):
            StudySettings("mask-swap", **bad)
    with pytest.raises(InputError, match="study"):
        StudySettings("no-such-study")
    with pytest.raises(InputError, match="--world: got 'tabletop' for target-knockout, expected one of"):
        StudySettings("target-knockout")


def test_conditions_choose_some_of_a_studys_conditions(tmp_path: Path) -> None:
    chosen = StudySettings("knockout", conditions=["prefix-lm", "vision->queries"], scenes=2, batch_size=2,
                           models=["tabletop-causal"], closed_loop_scenes=1)
    assert chosen.conditions == ["none", "vision->queries", "prefix-lm"]  # the baseline first, the study's order
    records = run_study(chosen, progress=False).records
    assert list(dict.fromkeys(records["condition"])) == chosen.conditions
    everything = run_study(StudySettings("knockout", scenes=2, batch_size=2, models=["tabletop-causal"],
                                         closed_loop_scenes=1), progress=False).records
    pd.testing.assert_frame_equal(records, everything[everything["condition"].isin(chosen.conditions)]
                                  .reset_index(drop=True))
    out = tmp_path / "run"
    for value, expected in (("prefix-lm,nope", "expected a comma-separated list of none, vision->queries"),
                            (",", "--conditions: got '', expected")):
        status, _, stderr = run_cli(["study", "knockout", "--conditions", value, "--scenes", "2", "--out", out])
        assert expected in assert_one_line_error(status, stderr, "study")
    status, _, stderr = run_cli(["study", "mask-swap", "--conditions", "own", "--scenes", "2", "--out", out])
    assert "--conditions: got 'own' for mask-swap, expected none" in assert_one_line_error(status, stderr, "study")
    assert not out.exists()


def test_shipped_models_and_random_init_baseline() -> None:
    specs = {s.name: s for s in registry.shipped_specs()}
    assert {"tabletop-causal", "tabletop-bidirectional"} <= set(specs)
    assert specs["tabletop-causal"].trained_with == "causal" and specs["tabletop-causal"].seed == 0
    for mask in ("causal", "bidirectional"):
        control = specs[f"tabletop-{mask}-no-target-aux"]
        assert (control.recipe, control.seed, control.trained_with) == ("no-target-aux", 0, mask)
    baseline = registry.resolve(["random-init:tabletop-causal"])[0]
    assert baseline.random_init and baseline.trained_with == "causal"
    initial = registry.load(baseline)
    trained = registry.load(specs["tabletop-causal"])
    # The baseline is the run's own step-0 weights: rebuilt from the stored seed and initialisation.
    again = tabletop.initial_model(trained.config, seed=0, init="sincos", gate=1.0)
    for (name, a), b in zip(initial.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(initial.action_queries.weight, trained.action_queries.weight)
    with pytest.raises(InputError, match="--model"):
        registry.resolve(["nope"])


def test_a_model_of_another_architecture_is_not_a_seed_of_the_recipe(tmp_path: Path) -> None:
    shipped = registry.shipped_specs()[0]
    assert shipped.recipe == "shipped" and registry.architecture_of(shipped.path, shipped.trained_with) == ""
    copy = tmp_path / "v1"
    shutil.copytree(shipped.path, copy)
    stored = json.loads((copy / "vla_lab_config.json").read_text())
    stored["head_version"] = "v1"
    (copy / "vla_lab_config.json").write_text(json.dumps(stored))
    assert registry.spec_for_path(copy).recipe == "shipped; head_version=v1"
    stored["vision"]["timm_kwargs"][0]["depth"] = 5
    (copy / "vla_lab_config.json").write_text(json.dumps(stored))
    assert registry.spec_for_path(copy).recipe == "shipped; head_version=v1,vision"
    (copy / "vla_lab_config.json").write_text("{not json")
    with pytest.raises(InputError, match="vla_lab_config.json cannot be read"):
        registry.spec_for_path(copy)
    (copy / "vla_lab_config.json").unlink()
    assert registry.spec_for_path(copy).recipe == "shipped; released"


def test_mask_swap_records_summary_and_resume(tmp_path: Path) -> None:
    settings = StudySettings("mask-swap", models=CAUSAL, scenes=4, batch_size=2)
    out = tmp_path / "run"
    result = run_study(settings, out, progress=False)
    records = result.records
    assert len(records) == 2 * 4 and set(records["condition"]) == {"causal", "bidirectional"}
    assert records[records["own_mask"]]["condition"].eq("causal").all()
    assert list(records["scene"].iloc[:2]) == list(world.split_seeds("test", 2))
    summary = result.summary
    assert {"n", "value", "ci95"} <= set(summary.columns)
    assert all(len(ci) == 2 for ci in summary["ci95"])
    success = summary[summary["metric"] == "success"]
    assert list(success["n"]) == [4, 4]
    assert set(result.tests["name"]) == {"exact McNemar", "Wilcoxon signed-rank"}
    saved = load_result(out)
    pd.testing.assert_frame_equal(saved.records, records)
    stored = json.loads((out / "study.json").read_text())
    assert "world" not in stored and "suite" not in stored  # a tabletop run's file is the one older runs have
    assert run_study(settings, out, resume=True, progress=False).records.equals(records)
    fresh = verify_records(out, atol=0, rtol=0)  # the first unit, recomputed on this machine: bit for bit
    assert len(fresh) == 2 * 2 and fresh.attrs["max_abs_difference"] == 0.0
    # Another CPU rounds float32 differently: float columns may move within the tolerance, nothing else may.
    for column, change, refused in (("action_l1", 1e-9, False), ("action_l1", 1e-3, True), ("success", None, True)):
        tampered = records.copy()
        if change is None:
            tampered.loc[0, column] = not tampered.loc[0, column]
        else:
            tampered.loc[0, column] += change
        tampered.to_parquet(out / "records.parquet", index=False)
        if refused:
            with pytest.raises(InputError, match=f"differs from a recomputation.*{column}"):
                verify_records(out)
        else:
            assert verify_records(out).attrs["max_abs_difference"] == pytest.approx(change, rel=1e-3)
            with pytest.raises(InputError, match="differs from a recomputation"):
                verify_records(out, atol=0, rtol=0)
    records.to_parquet(out / "records.parquet", index=False)
    data = json.loads((out / "summary.json").read_text())
    assert set(data) >= {"study", "records", "summary", "tests", "settings"}

    # A run interrupted after its first unit resumes to the same records, reusing the finished part.
    partial = tmp_path / "partial"

    def stop(unit):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(settings, partial, progress=False, on_unit=stop)
    parts = sorted(p.name for p in (partial / "parts").iterdir())
    assert parts == ["00000-test.parquet"]
    before = snapshot(partial / "parts")
    resumed = run_study(settings, partial, resume=True, progress=False)
    pd.testing.assert_frame_equal(resumed.records, records)
    assert snapshot(partial / "parts")["00000-test.parquet"] == before["00000-test.parquet"]
    with pytest.raises(InputError, match="scenes: got 6, expected 4"):
        run_study(StudySettings("mask-swap", models=CAUSAL, scenes=6, batch_size=2), partial, resume=True,
                  progress=False)


@torch.inference_mode()
def test_block_closes_single_position_pairs() -> None:
    model = registry.load(registry.resolve(CAUSAL)[0])
    scenes = [world.sample_scene(s) for s in world.split_seeds("test", 3)]
    inputs = observation_inputs(model, [world.render(s) for s in scenes])
    base = model(**inputs)
    nothing = torch.zeros_like(base.allowed)
    assert torch.equal(model(**inputs, block=nothing).normalized_actions, base.normalized_actions)
    # Closing every (query, patch) pair one by one is the segment knockout of the mask.
    block = torch.zeros_like(base.allowed)
    for b, layout in enumerate(base.layouts):
        queries, patches = layout.span("action_queries").slice, layout.span("vision").slice
        block[b, queries, patches] = True
    by_pairs = model(**inputs, block=block).normalized_actions
    by_mask = model(**inputs, attention=model.attention.with_blocked(("action_queries", "vision"))).normalized_actions
    torch.testing.assert_close(by_pairs, by_mask, rtol=0, atol=0)
    assert not torch.equal(by_pairs, base.normalized_actions)
    with pytest.raises(InputError, match="block"):
        model(**inputs, block=block[:1])


def test_knockout_conditions_and_equal_size_controls() -> None:
    settings = StudySettings("knockout", models=CAUSAL, scenes=2, batch_size=2, closed_loop_scenes=1)
    result = run_study(settings, progress=False)
    records = result.records.set_index(["condition", "scene"])
    assert list(dict.fromkeys(result.records["condition"])) == list(knockout.CONDITIONS)
    first, second = world.split_seeds("test", 2)
    # Under the causal mask the prompt and the patches never read the queries: nothing to block.
    for condition in ("queries->vision", "queries->text"):
        assert not records.loc[(condition, first), "changes_mask"]
        assert records.loc[(condition, first), "delta_action"] == 0.0
    assert records.loc[("vision->queries", first), "delta_action"] > 0
    for path in knockout.CONTROLS:
        control, real = records.loc[(f"random-keys:{path}", first)], records.loc[(path, first)]
        assert control["blocked_keys"] == real["blocked_keys"]
        closed = ["keys_vision", "keys_text", "keys_other"]
        assert sum(control[closed]) == sum(real[closed]) > 0
    assert records.loc[("vision->queries", first), "keys_text"] == 0
    assert records.loc[("text->queries", first), "keys_vision"] == 0
    assert {"vision->queries vs random-keys:vision->queries"} <= set(
        result.tests[result.tests["metric"] == "success"]["comparison"])
    assert records.loc[("none", first), "delta_action"] == 0.0
    # closed_loop_scenes=1: only the first scene has an episode.
    assert records.loc[("none", first), "success"] in (True, False)
    assert pd.isna(records.loc[("none", second), "success"])
    assert (result.summary[result.summary["metric"] == "success"]["n"] == 1).all()


@torch.inference_mode()
def test_random_keys_are_drawn_from_visible_keys_outside_the_queries() -> None:
    model = registry.load(registry.resolve(CAUSAL)[0])
    scene = world.sample_scene(world.split_seeds("test", 1)[0])
    out = model(**observation_inputs(model, [world.render(scene)]))
    layout, allowed = out.layouts[0], out.allowed[0]
    queries, keys = knockout.random_keys(layout, allowed, "vision->queries", np.random.default_rng(0))
    assert queries == list(layout.span("action_queries").positions())
    assert len(keys) == len(layout.span("vision")) and len(set(keys)) == len(keys)
    assert not set(keys) & set(queries)
    assert all(bool(allowed[queries[0], k]) for k in keys)
    again = knockout.random_keys(layout, allowed, "vision->queries", np.random.default_rng(0))
    assert again == (queries, keys)


def test_target_attention_selects_on_validation_and_adds_random_init() -> None:
    settings = StudySettings("target-attention", models=CAUSAL, scenes=4, validation_scenes=4, batch_size=4)
    result = run_study(settings, progress=False)
    assert set(result.records["model"]) == {"tabletop-causal", "random-init:tabletop-causal"}
    assert set(result.records["split"]) == {"validation", "test"}
    summary = result.summary
    for (model, source), part in summary[summary["head"].isna()].groupby(["model", "source"]):
        validation = part[part["metric"] == "validation_ratio"]
        chosen = validation.loc[validation["value"].idxmax(), "depth"]
        test = part[part["metric"] == "target_attention_ratio"]
        assert list(test[test["selected"]]["depth"]) == [chosen], (model, source)
    random = summary[(summary["model"] == "random-init:tabletop-causal") & (summary["source"] == "llm")
                     & summary["head"].isna() & (summary["metric"] == "target_attention_ratio")]
    assert np.allclose(random["value"], 1.0, atol=0.05)
    assert len(result.tests) == 2


def test_patching_counterfactuals_and_exact_patches() -> None:
    model = registry.load(registry.resolve(CAUSAL)[0])
    rng = np.random.default_rng(0)
    scene = world.sample_scene(world.split_seeds("test", 1)[0])
    pair = patching.instruction_pair(scene, model, rng)
    assert pair.counterfactual.target != pair.clean.target == scene.target
    assert world.resolve_instruction(pair.counterfactual, pair.counterfactual.instruction) == pair.judged.target
    swapped = patching.scene_pair(scene, rng)
    assert swapped is not None
    assert world.resolve_instruction(swapped.counterfactual, scene.instruction) == scene.target
    assert (swapped.counterfactual.target_object.x, swapped.counterfactual.target_object.y) == swapped.new
    clean, cf = [world.render(pair.clean)], [world.render(pair.counterfactual)]
    full, _ = patching._run(model, clean, cf, ("counterfactual", None, None))
    base, _ = patching._run(model, clean, cf, ("clean", None, None))
    # The text embeddings are the only input that differs: patching them is the counterfactual run;
    # the patches precede the text under the causal mask: patching them changes nothing.
    text, valid = patching._run(model, clean, cf, ("patch", 0, "text"))
    vision, _ = patching._run(model, clean, cf, ("patch", 2, "vision"))
    if valid[0]:
        np.testing.assert_allclose(text, full, atol=1e-6)
    np.testing.assert_array_equal(vision, base)


def test_patching_study_records(tmp_path: Path) -> None:
    settings = StudySettings("patching", models=CAUSAL, scenes=2, batch_size=2, closed_loop_scenes=1)
    result = run_study(settings, progress=False)
    records = result.records
    layers = registry.load(registry.resolve(CAUSAL)[0]).config.num_llm_layers
    per_scene = 2 + len(patching.SEGMENTS) * (layers + 1)
    assert len(records[records["counterfactual"] == "instruction"]) == 2 * per_scene
    assert records["success_new"].notna().sum() > 0 and records["success_new"].isna().sum() > 0
    share = result.summary[result.summary["metric"] == "restored_share"]
    assert len(share) > 0 and share["n"].ge(1).all()


# --- the command line and torchrun -------------------------------------------------------------------------


def test_cli_json_and_one_line_errors(tmp_path: Path) -> None:
    out = tmp_path / "run"
    status, stdout, stderr = run_cli(["study", "mask-swap", "--scenes", "2", "--batch-size", "2", "--model",
                                      "tabletop-causal", "--out", out, "--no-progress", "--json"])
    assert status == 0, stderr
    data = json.loads(stdout)
    assert set(data) >= {"study", "records", "summary", "tests"}
    assert all({"n", "value", "ci95"} <= set(row) for row in data["summary"])
    assert all({"name", "statistic", "p"} <= set(row) for row in data["tests"])
    before = snapshot(out)
    status, _, stderr = run_cli(["study", "mask-swap", "--scenes", "2", "--out", out, "--no-progress"])
    assert "--resume or --overwrite" in assert_one_line_error(status, stderr, "study")
    assert snapshot(out) == before
    for argv in (["study", "nope"], ["study", "mask-swap", "--scenes", "0", "--out", tmp_path / "x"],
                 ["study", "knockout", "--model", "nope", "--out", tmp_path / "y"]):
        status, _, stderr = run_cli(argv)
        assert_one_line_error(status, stderr)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_rank_that_starts_late_shards_the_same_units(tmp_path: Path) -> None:
    """The ranks of testkit.run_ranks take turns: rank 0 runs until it meets rank 1. Each rank reads which parts are
    already written; rank 1 used to read after rank 0 had written its first part, so the two cut different shares,
    a unit was run by neither and the gather failed (KeyError; under torchrun a flaky 'rank 1 exit 1')."""
    settings = StudySettings("mask-swap", models=["tabletop-causal"], scenes=4, batch_size=1)
    one = run_study(settings, tmp_path / "one", progress=False)
    results = run_ranks(lambda ranks: run_study(settings, tmp_path / "two", ranks=ranks, progress=False))
    for result in results:
        pd.testing.assert_frame_equal(result.records, one.records)
    pd.testing.assert_frame_equal(load_result(tmp_path / "two").records, one.records)


def test_torchrun_two_processes_give_the_records_of_one(tmp_path: Path) -> None:
    common = ["study", "mask-swap", "--scenes", "4", "--batch-size", "1", "--model", "tabletop-causal",
              "--no-progress", "--json"]
    status, single, stderr = run_cli([*common, "--out", tmp_path / "one"])
    assert status == 0, stderr
    done = run_torchrun([*common, "--out", tmp_path / "two"])  # a free port: standalone rendezvous
    assert done.returncode == 0, failed_run(done)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / "records.parquet"),
                                  pd.read_parquet(tmp_path / "two" / "records.parquet"))
    one, two = json.loads(single), json.loads(done.stdout)
    assert one.pop("records") != two.pop("records")
    assert one == two
