"""The studies of the tabletop on the LIBERO world (``vla-lab study NAME --world libero``): ``mask-swap``'s closed-loop
episodes under both masks, its task-clustered summary, and the records of two ranks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import testkit

from vla_lab.errors import InputError
from vla_lab.studies import StudySettings, load_result, run_study

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="LIBERO is not installed")


def test_mask_swap_on_libero_episodes(libero_two_step_run, tmp_path) -> None:
    checkpoint = str(libero_two_step_run)
    settings = StudySettings("mask-swap", models=[checkpoint], world="libero", tasks=[0], init_states=[40, 41],
                             batch_size=1, max_steps=12)
    result = run_study(settings, tmp_path / "one", progress=False)
    records = result.records
    assert list(records["condition"]) == ["causal", "bidirectional"] * 2  # the run's own mask first, per unit
    assert list(records["init_state"]) == [40, 40, 41, 41] and set(records["split"]) == {"report"}
    assert set(records["resolution"]) == {128}  # the cameras eval libero uses for this model
    assert records["error"].isna().all() and records["steps"].between(1, 12).all()
    assert (records["queries"] == np.ceil(records["steps"] / settings.execute)).all()
    own = records[records["own_mask"]]
    assert (own["action_change"] == 0).all() and (records.loc[~records["own_mask"], "action_change"] > 0).all()
    summary = result.summary.set_index(["metric", "condition"])
    success = summary.loc[("success", "causal")]
    assert success["n"] == 2 and success["n_tasks"] == 1 and success["statistic"] == "rate"
    assert success["interval"] == "bootstrap over tasks (percentile, cluster)"
    assert success["value"] == pytest.approx(own["success"].mean())
    assert np.isnan(success["ci95"]).all()  # one task: no interval over tasks
    change = summary.loc[("action_change", "bidirectional")]
    assert change["value"] == pytest.approx(records.loc[~records["own_mask"], "action_change"].mean())
    assert summary.loc[("success_difference", "causal vs bidirectional"), "n"] == 2
    assert result.tests[["metric", "comparison"]].values.tolist() == [["success (per-task rates)",
                                                                        "causal vs bidirectional"]]
    pd.testing.assert_frame_equal(load_result(tmp_path / "one").records, records)

    # Two processes under torchrun (gloo) write the records of one.
    proc = testkit.run_torchrun(["study", "mask-swap", "--world", "libero", "--model", checkpoint, "--tasks", "0",
                                 "--init-states", "40:42", "--batch-size", "1", "--max-steps", "12", "--out",
                                 tmp_path / "two", "--no-progress"])
    assert proc.returncode == 0, testkit.failed_run(proc)
    assert load_result(tmp_path / "two").to_json()["summary"] == result.to_json()["summary"]
    pd.testing.assert_frame_equal(load_result(tmp_path / "two").records, records)


def test_the_study_command_on_libero_refuses_bad_input_in_one_line(tmp_path) -> None:
    for argv, message in ((["--suite", "libero_nowhere"], "--suite: got 'libero_nowhere'"),
                          (["--tasks", "12"], "--tasks: got 12, expected task ids of libero_spatial in 0..9"),
                          (["--init-states", "0:70"], "--init-states: got 0:70, expected init states in 0..49"),
                          (["--max-steps", "0"], "--max-steps: got 0, expected a positive integer"),
                          (["--no-closed-loop"], "--no-closed-loop: got it with --world libero, expected it only")):
        status, stdout, err = testkit.run_cli(["study", "mask-swap", "--world", "libero", "--model",
                                               "libero-spatial-causal", *argv, "--out", tmp_path / "x"])
        assert message in testkit.assert_one_line_error(status, err, "study") and stdout == ""
        assert not (tmp_path / "x").exists()


def test_knockout_on_libero_episodes(libero_two_step_run, tmp_path) -> None:
    from vla_lab.studies.knockout import CONDITIONS

    settings = StudySettings("knockout", models=[str(libero_two_step_run)], world="libero", tasks=[0],
                             init_states=[40, 41], batch_size=2, max_steps=9)
    result = run_study(settings, tmp_path / "run", progress=False)
    records = result.records.set_index(["condition", "init_state"])
    assert list(dict.fromkeys(result.records["condition"])) == list(CONDITIONS)
    assert result.records["error"].isna().all() and result.records["steps"].between(1, 9).all()
    none = records.loc["none"]
    assert (none["delta_action"] == 0).all() and (none["blocked_keys"] == 0).all()
    # The causal run's queries never reach the patches or the prompt: blocking them changes nothing, and the
    # closed-loop records are those of ``none``.
    for condition in ("queries->vision", "queries->text"):
        assert not records.loc[condition, "changes_mask"].any()
        assert (records.loc[condition, "delta_action"] == 0).all()
    for condition in ("vision->queries", "text->queries", "prefix-lm", "random-keys:vision->queries"):
        assert records.loc[condition, "changes_mask"].all() and (records.loc[condition, "delta_action"] > 0).all()
    # A random-key control closes as many keys as its path, drawn from what the queries may read.
    path, control = records.loc["vision->queries"], records.loc["random-keys:vision->queries"]
    assert (control[["keys_vision", "keys_text", "keys_other"]].sum(axis=1) == path["keys_vision"]).all()
    summary = result.summary.set_index(["metric", "condition"])
    assert summary.loc[("success", "text->queries"), "interval"] == "bootstrap over tasks (percentile, cluster)"
    assert summary.loc[("delta_action", "prefix-lm"), "n"] == 2
    assert summary.loc[("delta_action", "prefix-lm"), "value"] == pytest.approx(
        records.loc["prefix-lm", "delta_action"].mean())
    compared = set(map(tuple, result.tests[["comparison", "metric"]].values.tolist()))
    assert ("none vs vision->queries", "success (per-task rates)") in compared
    assert ("vision->queries vs random-keys:vision->queries", "delta_action (per-task means)") in compared
    assert ("none vs queries->text", "success (per-task rates)") not in compared


def test_a_knockout_acts_on_every_query_of_a_libero_episode(libero_two_step_run) -> None:
    """The policy's ``intervene`` reaches every forward pass of an episode: a closed prompt changes the chunks of
    later queries too, and an identity intervention changes nothing."""
    from vla_lab.config import AttentionSpec
    from vla_lab.model import VLAAdapter
    from vla_lab.policy import Policy
    from vla_lab.worlds import create_world
    from vla_lab.worlds.runner import run_lockstep

    model = VLAAdapter.from_pretrained(libero_two_step_run).eval()
    spec = model.attention.with_blocked(("action_queries", "text"))
    chunks: dict[str, list[np.ndarray]] = {}
    with create_world("libero_spatial", resolution=128, max_steps=17) as world:
        episode = world.episode(0, 40)
        for name, intervene in (("plain", None), ("identity", lambda o, s, b: {}),
                                ("blocked", lambda o, s, b: {"attention": spec})):
            policy = Policy(model, world, intervene=intervene)
            seen: list[np.ndarray] = []
            policy.on_query = lambda slot, row, query, p=policy, seen=seen: seen.append(p.last_normalized[row])
            run_lockstep([world], [episode], policy)
            chunks[name] = seen
    assert len(chunks["plain"]) == len(chunks["identity"]) == len(chunks["blocked"]) == 3
    assert all(np.array_equal(a, b) for a, b in zip(chunks["plain"], chunks["identity"]))
    assert all(not np.array_equal(a, b) for a, b in zip(chunks["plain"], chunks["blocked"]))
    assert AttentionSpec.parse("causal") == model.attention


def test_target_knockout_closes_as_many_patches_of_the_target_as_of_the_other_bowl(libero_two_step_run,
                                                                                    tmp_path) -> None:
    settings = StudySettings("target-knockout", models=[str(libero_two_step_run)], world="libero", tasks=[0],
                             init_states=[40, 41], batch_size=2, max_steps=9)
    result = run_study(settings, tmp_path / "run", progress=False)
    records = result.records.set_index(["condition", "init_state"])
    assert list(dict.fromkeys(result.records["condition"])) == [
        "none", "target", "same_category", "target:head", "same_category:head", "target:all", "same_category:all"]
    assert result.records["error"].isna().all()
    assert (records.loc["none", "delta_action"] == 0).all() and (records.loc["none", "blocked_patches"] == 0).all()
    # Equal numbers of patches at every query: the two knockouts' means agree where the episodes ran alike.
    target, alike = records.loc["target"], records.loc["same_category"]
    assert (target["blocked_patches"] > 0).all() and (target["delta_action"] > 0).all()
    assert (alike["blocked_patches"] > 0).all()  # equal counts per query: test_blocked_patches_are_as_many_...
    assert (alike["delta_action"] > 0).all()
    for reach in ("head", "all"):  # each reach changes the first chunk in its own way
        changed = records.loc[f"target:{reach}", "delta_action"]
        assert (changed > 0).all() and not np.allclose(changed, target["delta_action"])
    assert (records.loc["target", "queries"] == np.ceil(records.loc["target", "steps"] / settings.execute)).all()
    tests = result.tests.set_index(["comparison", "metric"])
    primary = tests[tests["primary"].astype(bool)]
    assert sorted(primary.index) == [(f"{t} vs {a}", "success (per-task rates)") for t, a in (
        ("target", "same_category"), ("target:all", "same_category:all"), ("target:head", "same_category:head"))]
    assert primary["p_holm"].notna().all() and (primary["p_holm"] >= primary["p"]).all()
    assert not bool(tests.loc[("none vs target", "success (per-task rates)"), "primary"])
    assert tests.loc[("none vs target", "success (per-task rates)"), "p_holm"] != tests.loc[
        ("none vs target", "success (per-task rates)"), "p_holm"]  # NaN: secondary tests are not adjusted
    chosen = StudySettings("target-knockout", models=[str(libero_two_step_run)], world="libero", tasks=[0],
                           init_states=[40], batch_size=1, max_steps=9, conditions=["same_category:all", "target:all"])
    assert chosen.conditions == ["none", "target:all", "same_category:all"]  # the baseline added, in study order
    assert "conditions" in chosen.to_dict() and "conditions" not in settings.to_dict()
    rerun = run_study(chosen, progress=False).records
    again = result.records[result.records["condition"].isin(chosen.conditions)
                           & (result.records["init_state"] == 40)].reset_index(drop=True)
    # A condition's records do not depend on which others ran (the first chunk's delta rounds with the batch size).
    pd.testing.assert_frame_equal(rerun, again, check_exact=False, rtol=1e-4)
    summary = result.summary.set_index(["metric", "condition"])
    assert summary.loc[("blocked_patches", "target"), "value"] == pytest.approx(target["blocked_patches"].mean())
    assert summary.loc[("success", "none"), "interval"] == "bootstrap over tasks (percentile, cluster)"
    status, _, err = testkit.run_cli(["study", "target-knockout", "--world", "libero", "--suite", "libero_object",
                                      "--tasks", "0", "--model", str(libero_two_step_run), "--out", tmp_path / "x"])
    assert "regions: got task 0 of libero_object without a same_category object" in (
        testkit.assert_one_line_error(status, err, "study"))
    assert not (tmp_path / "x").exists()


def test_blocked_patches_are_as_many_for_the_target_as_for_its_control() -> None:
    from vla_lab.model.sequence import SequenceLayout
    from vla_lab.studies.target_knockout import blocked_patches
    from vla_lab.worlds import Observation

    layout = SequenceLayout.build(5, [16, 16], [(4, 4), (4, 4)], 2)
    target = np.zeros((8, 8), dtype=bool)
    target[0:4, 0:3] = True  # patches (0, 0) and (1, 0) fully, (0, 1) and (1, 1) half
    alike = np.zeros((8, 8), dtype=bool)
    alike[6:8, 6:8] = True  # patch (3, 3) only
    alike[0:2, 2:4] = True  # overlaps the target's patch (0, 1): never the control's
    observation = Observation([], "", np.zeros(8), [{"target": target, "same_category": alike}])
    picks = blocked_patches(observation, layout, center_crop=False)
    assert picks == {"target": [1], "same_category": [1 + 15]}  # one each; the target's most covered patch
    observation.regions = [{"target": target, "same_category": np.zeros_like(alike)}]  # the other bowl hidden
    assert blocked_patches(observation, layout, center_crop=False) == {"target": [], "same_category": []}
    from vla_lab.studies.knockout import block_tensor

    assert not block_tensor([([30, 31], [])], 40).any()  # nothing to close: no block, no error
    observation.regions = [{"target": target}]
    with pytest.raises(InputError, match="^regions: got a scene without a same_category object"):
        blocked_patches(observation, layout, center_crop=False)


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory) -> Path:
    """A small model in the released layout (no vla_lab_config.json: upstream's prompt and statistics keys) with
    the released tokenizer files."""
    import shutil

    import torch

    from vla_lab import VLAAdapter
    from vla_lab.processing.tokenizer import SAVED_FILES

    torch.manual_seed(31)
    model = testkit.randomize(VLAAdapter(testkit.released_test_config("pro")), seed=32, scale=0.1).eval()
    directory = testkit.write_released(tmp_path_factory.mktemp("released") / "ckpt", model, dtype=torch.float32)
    for name in SAVED_FILES:
        shutil.copyfile(testkit.DATA / "released_checkpoint" / name, directory / name)
    return directory


def test_every_libero_study_runs_on_a_released_checkpoint_directory(released_dir, tmp_path) -> None:
    """A directory in the released layout, one episode of 16 steps per study: upstream's prompt (the Qwen chat
    template), its statistics key (libero_spatial_no_noops) and cameras (256 px: no demonstrations manifest)."""
    from vla_lab import registry
    from vla_lab.studies import STUDIES

    spec = registry.resolve([str(released_dir)], "libero_spatial")[0]
    assert registry.load(spec, "cpu").config.prompt == "qwen-chat"
    libero_studies = sorted(name for name, study in STUDIES.items() if "libero" in study.worlds)
    assert libero_studies == ["instruction-swap", "knockout", "mask-swap", "target-attention", "target-knockout"]
    # One condition beside the baseline where a study has many (each reaches the model the same way; the ones chosen
    # use the released layout's head offset: head_block, patched prompt positions).
    chosen = {"knockout": ["random-keys:vision->queries"], "target-knockout": ["target:all"],
              "instruction-swap": ["patched"]}
    for name in libero_studies:
        settings = StudySettings(name, models=[str(released_dir)], world="libero", tasks=[0], init_states=[40],
                                 selection_states=[0], max_steps=16, conditions=chosen.get(name))
        result = run_study(settings, tmp_path / name, progress=False)
        records = result.records
        assert set(records["resolution"]) == {256} and set(records["init_state"]) <= {0, 40}, name
        if "error" in records:
            assert records["error"].isna().all(), (name, set(records["error"]))
        steps = records["episode_steps"] if "episode_steps" in records else records["steps"]
        assert set(steps) == {16}, name
        assert len(result.summary) and result.summary["n"].ge(1).all(), name
        assert set(records["model"]) == {"ckpt"}  # no random-init baseline: a released run's seed is unknown


def test_instruction_partners_name_another_object_of_the_scene() -> None:
    from vla_lab.worlds.libero.env import task_info
    from vla_lab.worlds.libero.instructions import goal_object, instruction_partners

    # libero_spatial: by placement (the other black bowl stands where task j's target does); every scene has one
    firsts = {t: instruction_partners("libero_spatial", t)[0] for t in range(10)}
    assert {t: p.task for t, p in firsts.items()} == {0: 1, 1: 6, 2: 8, 3: 9, 4: 9, 5: 3, 6: 7, 7: 9, 8: 1, 9: 7}
    assert {p.instructed for p in firsts.values()} == {"akita_black_bowl_2"}
    assert goal_object("libero_spatial", 1) == "akita_black_bowl_1"
    assert firsts[1].instruction == task_info("libero_spatial", 6)["instruction"]  # "... next to the cookie box ..."
    # libero_object: by category (one object of each kind per scene)
    assert [(p.task, p.instructed) for p in instruction_partners("libero_object", 0)][:2] == [
        (1, "cream_cheese_1"), (2, "salad_dressing_1")]
    assert instruction_partners("libero_10", 2) == []  # no other task's instruction names an object of its scene
    assert instruction_partners("libero_goal", 0) == []  # "open the middle drawer": the goal moves no object
    assert goal_object("libero_goal", 0) is None and goal_object("libero_goal", 1) == "akita_black_bowl_1"
    from vla_lab.worlds.libero.instructions import same_category_objects

    assert same_category_objects("libero_spatial", 0) == ["akita_black_bowl_2"]
    assert same_category_objects("libero_10", 8) == []  # both moka pots are the goal's targets


def test_instruction_swap_on_libero_episodes(libero_two_step_run, tmp_path) -> None:
    from vla_lab.worlds.libero.env import task_info

    settings = StudySettings("instruction-swap", models=[str(libero_two_step_run)], world="libero", tasks=[1],
                             init_states=[40], max_steps=9)
    result = run_study(settings, tmp_path / "run", progress=False)
    records = result.records.set_index("condition")
    patched = [f"patched@{h}" for h in range(1, 5)]  # libero-small has 4 LLM layers
    assert list(records.index) == ["own", "swapped", *patched] and records["error"].isna().all()
    assert records.loc["own", "prompt_instruction"] == task_info("libero_spatial", 1)["instruction"]
    assert records.loc["swapped", "prompt_instruction"] == task_info("libero_spatial", 6)["instruction"]
    assert (records.loc[patched, "prompt_instruction"] == records.loc["own", "prompt_instruction"]).all()
    assert list(records["instruction_from"]) == [1, 6, 6, 6, 6, 6] and (records["steps"] == 9).all()
    assert records["hidden_index"].tolist()[2:] == [1, 2, 3, 4] and records["hidden_index"].isna().sum() == 2
    assert list(records["instructed_object"]) == ["akita_black_bowl_1"] + ["akita_black_bowl_2"] * 5
    assert (records["picked"] == "none").all() and records["picked_neither"].all()  # two training steps
    shares = records.loc[patched, "first_chunk_share"]
    assert shares.notna().all() and records.loc[["own", "swapped"], "first_chunk_share"].isna().all()
    summary = result.summary.set_index(["condition", "metric"])
    assert summary.loc[("swapped", "picked_instructed"), "value"] == 0.0
    assert summary.loc[("patched@2", "first_chunk_share"), "value"] == pytest.approx(shares["patched@2"])
    assert summary.loc[("own", "success"), "interval"] == "bootstrap over tasks (percentile, cluster)"
    assert result.tests["primary"].tolist() == [True, False, False, False, False, False]
    depths = result.tests[result.tests["comparison"].str.startswith("patched@")]
    assert len(depths) == 4 and "p_holm" in depths
    chosen = StudySettings("instruction-swap", models=[str(libero_two_step_run)], world="libero", tasks=[1],
                           init_states=[40], max_steps=9, conditions=["swapped"])
    assert chosen.conditions == ["own", "swapped"]
    status, _, err = testkit.run_cli(["study", "instruction-swap", "--world", "libero", "--suite", "libero_10",
                                      "--tasks", "2", "--model", str(libero_two_step_run), "--out", tmp_path / "x"])
    assert "task: got 2 of libero_10, expected a task with an instruction-swap partner" in (
        testkit.assert_one_line_error(status, err, "study"))
    assert not (tmp_path / "x").exists()
