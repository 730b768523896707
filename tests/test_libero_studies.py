"""The studies of the tabletop on the LIBERO world (``vla-lab study NAME --world libero``): ``mask-swap``'s closed-loop
episodes under both masks, its task-clustered summary, and the records of two ranks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import testkit

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

    # Two ranks (threads of this process, testkit.run_ranks) write the records of one.
    testkit.run_ranks(lambda ranks: run_study(settings, tmp_path / "two", ranks=ranks, progress=False))
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
