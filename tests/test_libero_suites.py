"""LIBERO's perturbation suites (LIBERO-PRO / LIBERO-Plus) as first-class suites: named, checked, documented, and run
by ``eval libero`` and the LIBERO studies like the benchmark's own."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
import testkit

from vla_lab.errors import InputError
from vla_lab.worlds import create_world
from vla_lab.worlds.libero import suites
from vla_lab.worlds.libero.world import LiberoWorld

needs_libero = pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="LIBERO is not installed")


def test_a_perturbation_suite_is_its_base_suite_changed_one_way() -> None:
    assert suites.base_suite("libero_spatial_swap") == "libero_spatial"
    assert suites.base_suite("libero_10") == "libero_10"
    assert suites.perturbation("libero_goal_with_mug") == "with_mug" and suites.perturbation("libero_goal") is None
    assert suites.max_steps("libero_10_lan") == suites.MAX_STEPS["libero_10"] == 520
    assert suites.base_task("libero_spatial_with_milk", 1) == 2 and suites.base_task("libero_spatial_swap", 1) == 1
    assert set(suites.ALL_SUITES) == set(suites.SUITES) | set(suites.PERTURBATION_SUITES)
    assert {suites.perturbation(s) for s in suites.PERTURBATION_SUITES} == set(suites.PERTURBATIONS)
    assert not set(suites.PERTURBATIONS) & set(suites.NOT_RUNNABLE)
    for order in suites.BASE_TASKS.values():
        assert sorted(order) == list(range(10))
    world = LiberoWorld("libero_spatial_swap")  # builds no simulator
    assert world.max_steps == 220 and world.name == "libero_spatial_swap"
    assert world.statistics_for(["libero_spatial_no_noops"]) == "libero_spatial_no_noops"  # the base suite's
    assert world.statistics_for(["libero_spatial_swap", "libero_spatial"]) == "libero_spatial_swap"
    with pytest.raises(InputError, match=r"^unnorm_key: got a model with statistics for \['libero_goal'\], expected"):
        world.statistics_for(["libero_goal"])


@pytest.mark.parametrize("name", ["libero_spatial_env", "libero_spatial_with_red_stick", "libero_100",
                                  "libero_spatial_nowhere", "libero_object_with_trigger"])
def test_suites_the_package_cannot_build_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(InputError, match=rf"^suite: got '{name}', expected one of \[.*\] or a perturbation suite"):
        suites.check_suite(name)
    with pytest.raises(InputError, match=r"^world: got"):
        create_world(name)


@needs_libero
def test_the_table_is_what_the_installed_package_offers() -> None:
    """Every offered suite is registered, has a BDDL file and init states for every task; its instruction is the
    BDDL's where the perturbation is the instruction; a reordered suite's tasks have their base tasks' goals."""
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    from vla_lab.worlds.libero.env import num_tasks, require_libero, task_files, task_info

    benchmarks = require_libero().benchmark.get_benchmark_dict()
    registered = set(benchmarks)
    assert set(suites.PERTURBATION_SUITES) <= registered
    for kind in suites.NOT_RUNNABLE:
        assert any(name.endswith("_" + kind) for name in registered)
    for suite, base in suites.PERTURBATION_SUITES.items():
        assert num_tasks(suite) == num_tasks(base)
        kind = suites.perturbation(suite)
        for task in range(num_tasks(suite)):
            bddl, states = task_files(suite, task)
            base_bddl, _ = task_files(base, suites.base_task(suite, task))
            if suite == "libero_10_with_milk" and task in (3, 4):  # the package ships no init state: refused
                assert states.size == 0
                with pytest.raises(InputError, match=r"^init_state: got 0, expected none: task \d of "):
                    LiberoWorld(suite).episode(task, 0)
                continue
            assert states.ndim == 2 and len(states) >= 10
            problem, original = robosuite_parse_problem(bddl), robosuite_parse_problem(base_bddl)
            instruction = task_info(suite, task)["instruction"]
            if kind in suites.INSTRUCTION_FROM_BDDL:
                assert instruction == " ".join(problem["language_instruction"])
            else:
                assert instruction == benchmarks[suite]().get_task(task).language
            if kind == "task":
                assert problem["goal_state"] != original["goal_state"]
            elif kind.startswith("with_") or kind in ("lan", "swap"):
                assert problem["goal_state"] == original["goal_state"], (suite, task)
            if kind.startswith("with_") or kind == "lan":  # the base task's placements (plus the added object)
                added = {n for names in problem["objects"].values() for n in names} - {
                    n for names in original["objects"].values() for n in names}
                assert len(added) == kind.startswith("with_")
                kept = [p for p in problem["initial_state"] if not added & set(p)]
                assert sorted(kept) == sorted(original["initial_state"]), (suite, task)
    assert task_info("libero_spatial_lan", 0)["instruction"] != task_info("libero_spatial", 0)["instruction"]


@needs_libero
@pytest.mark.parametrize("suite", ["libero_spatial_swap", "libero_spatial_lan", "libero_spatial_with_mug"])
def test_eval_libero_runs_a_perturbation_suite(suite: str, tmp_path) -> None:
    status, stdout, err = testkit.run_cli(["eval", "libero", "--model", "tiny", "--suite", suite, "--tasks", "1",
                                           "--init-states", "3:4", "--max-steps", "8", "--out", tmp_path / "run",
                                           "--no-progress", "--json"])
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["suite"] == suite and len(summary["episodes"]) == 1
    record = json.loads((tmp_path / "run" / "episodes.jsonl").read_text().splitlines()[0])
    assert record == summary["episodes"][0]
    assert record["suite"] == suite and record["task"] == 1 and record["steps"] == 8 and record["error"] is None
    from vla_lab.worlds.libero.env import task_info

    assert record["instruction"] == task_info(suite, 1)["instruction"]
    if suite == "libero_spatial_lan":
        assert record["instruction"] != task_info("libero_spatial", 1)["instruction"]


@needs_libero
def test_a_perturbation_suite_shows_what_it_perturbs() -> None:
    """Task 1 of libero_spatial_task puts the *other* bowl on the plate: the target region moves to it; a
    with_mug scene has one more distractor than the base scene; swap keeps the goal but moves the plate."""
    areas = {}
    for suite in ("libero_spatial", "libero_spatial_task", "libero_spatial_with_mug", "libero_spatial_swap"):
        with create_world(suite) as world:
            episode = world.episode(1, 0)
            observation = world.reset(episode)
            regions = observation.regions[0]
            areas[suite] = {name: np.argwhere(mask).mean(axis=0) for name, mask in regions.items() if mask.any()}
            areas[suite]["objects"] = len(world.env.object_names)  # type: ignore[union-attr]
            assert re.fullmatch(r"[a-z ]+", episode.instruction)
    base, task = areas["libero_spatial"], areas["libero_spatial_task"]
    # the other black bowl is the target now: the two bowls' regions trade places (in the task's own init state)
    assert np.linalg.norm(task["target"] - base["same_category"]) < np.linalg.norm(task["target"] - base["target"])
    assert areas["libero_spatial_with_mug"]["objects"] == base["objects"] + 1
    assert np.linalg.norm(areas["libero_spatial_swap"]["place"] - base["place"]) > 10  # the plate moved (pixels)


@needs_libero
def test_a_swapped_scene_can_be_solved() -> None:
    """The shipped models solve none of libero_spatial_swap's held-out episodes; the scripted expert (privileged
    state) solves one, so the goal is reachable and its check works: what fails is the policies."""
    from vla_lab.worlds.libero.env import LiberoEnv
    from vla_lab.worlds.libero.expert import run_expert_episode

    with LiberoEnv("libero_spatial_swap", 0, render=False) as env:
        result = run_expert_episode(env, 40)
    assert result["success"] and result["steps"] < 150


@needs_libero
def test_a_libero_study_runs_on_a_perturbation_suite(libero_two_step_run, tmp_path) -> None:
    from vla_lab.studies import StudySettings, run_study

    settings = StudySettings("target-knockout", models=[str(libero_two_step_run)], world="libero",
                             suite="libero_spatial_with_milk", tasks=[1], init_states=[2], max_steps=3)
    records = run_study(settings, tmp_path / "run", progress=False).records
    assert set(records["suite"]) == {"libero_spatial_with_milk"} and set(records["base_task"]) == {2}
    assert records["error"].isna().all() and (records["steps"] == 3).all()
    assert (records.loc[records["condition"] == "target", "blocked_patches"] > 0).all()
    status, _, err = testkit.run_cli(["study", "mask-swap", "--world", "libero", "--suite", "libero_spatial_temp",
                                      "--model", str(libero_two_step_run), "--out", tmp_path / "x"])
    assert "--suite: got 'libero_spatial_temp', expected one of" in testkit.assert_one_line_error(status, err, "study")
    assert not (tmp_path / "x").exists()
