"""Target attention on LIBERO frames (vla_lab.libero.target_attention), without the simulator: real frames
from tests/data with hand-made object masks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_lab import registry
from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.libero import target_attention as ta
from vla_lab.model import VLAAdapter

DATA = Path(__file__).parent / "data"
SCENES = ("libero_spatial_0", "libero_object_3", "libero_goal_5", "libero_10_1")


def stats() -> dict:
    entry = {"mean": [0.0] * 7, "std": [1.0] * 7, "min": [-1.0] * 7, "max": [1.0] * 7, "q01": [-1.0] * 7,
             "q99": [1.0] * 7, "mask": [True] * 6 + [False]}
    proprio = {k: (v + [v[-1]] if k != "mask" else [True] * 8) for k, v in entry.items()}
    return {"libero_spatial": {"action": entry, "proprio": proprio, "num_transitions": 1, "num_trajectories": 1}}


def observations(swap: bool = False) -> list[dict]:
    frames = np.load(DATA / "libero_sim_fixtures.npz")
    out = []
    for i, scene in enumerate(SCENES):
        target = np.zeros((224, 224), dtype=bool)
        target[50:80, 30 + 30 * i : 90 + 30 * i] = True  # patch rows 1-2 of the 6x6 grid
        distractors = np.zeros((224, 224), dtype=bool)
        distractors[150:190, 20 + 20 * i : 120 + 20 * i] = True  # rows 4-5: never the target's patches
        masks = {"target": distractors, "distractors": target} if swap else {"target": target,
                                                                             "distractors": distractors}
        out.append({"suite": "libero_spatial", "task": i, "init_state": 40 + i, "instruction":
                    "pick up the black bowl between the plate and the ramekin and place it on the plate",
                    "full_image": frames[f"{scene}_full_image"], "wrist_image": frames[f"{scene}_wrist_image"],
                    "state": frames[f"{scene}_state"], "masks": masks})
    return out


@pytest.fixture(scope="module")
def model() -> VLAAdapter:
    torch.manual_seed(0)
    return VLAAdapter(VLAConfig.preset("libero-small", norm_stats=stats())).eval()


def test_the_crop_keeps_the_centre_and_drops_the_border() -> None:
    mask = np.zeros((224, 224), dtype=bool)
    mask[112, 112] = mask[2, 2] = True
    cropped = ta.crop_mask(mask)
    assert cropped[111:114, 111:114].any() and not cropped[:6, :6].any()
    full = np.ones((224, 224), dtype=bool)
    patches = ta.patch_masks({"target": full, "distractors": full}, (6, 6))
    assert patches["target"].all() and not patches["distractors"].any()  # a target patch is never a distractor


def test_patch_masks_follow_the_model_grid() -> None:
    target = np.zeros((224, 224), dtype=bool)
    target[100:124, 100:124] = True  # the centre: patches (2..3, 2..3) of a 6x6 grid
    patches = ta.patch_masks({"target": target, "distractors": np.zeros_like(target)}, (6, 6))
    assert set(zip(*np.nonzero(patches["target"]))) <= {(2, 2), (2, 3), (3, 2), (3, 3)}
    assert patches["target"].sum() >= 1


def test_ratio_per_layer_and_its_inverse_when_the_regions_swap(model) -> None:
    values = ta.target_attention(model, observations())
    assert set(values["layer"]) == set(range(model.config.llm["num_hidden_layers"]))
    assert set(values["region"]) == {"target", "distractors"} and len(values) == 4 * 4 * 2
    ratios = ta.ratio_by_depth(values)
    swapped = ta.ratio_by_depth(ta.target_attention(model, observations(swap=True)))
    # The regions cover disjoint patches, so naming them the other way round inverts the ratio exactly.
    for sample in range(4):
        a = ta.observation_masks(observations())(sample, 0, (6, 6))
        b = ta.observation_masks(observations(swap=True))(sample, 0, (6, 6))
        assert (a["target"] == b["distractors"]).all() and (a["distractors"] == b["target"]).all()
        assert a["target"][1:3].any() and not a["target"][3:].any() and a["distractors"][4:].any()
    assert np.isfinite(ratios).all() and (ratios > 0).all()
    assert np.allclose(ratios.values * swapped.values, 1.0)


def test_the_reported_depth_is_chosen_on_the_selection_set(model) -> None:
    result = ta.target_attention_ratio(model, observations()[:2], observations()[2:], n_resamples=200)
    chosen = max(result["selection_ratio_by_depth"], key=result["selection_ratio_by_depth"].get)
    assert result["layer"] == chosen and result["n"] == 2
    assert result["target_attention_ratio"] == pytest.approx(result["ratio_by_depth"][chosen])
    given = ta.target_attention_ratio(model, [], observations(), depth=1, n_resamples=200)
    assert given["rule"] == "given" and given["layer"] == 1 and given["selection_ratio_by_depth"] is None
    low, high = given["ci95"]
    assert low <= given["target_attention_ratio"] <= high


def test_trained_models_are_measured_against_their_initial_weights(libero_two_step_run, tmp_path) -> None:
    """``vla-lab libero attention``'s measurement on real frames: a trained checkpoint and its random init."""
    import testkit

    from vla_lab.experiments import libero_attention as la

    checkpoint = libero_two_step_run  # the LIBERO recipe, 2 steps on testkit.write_demos' demonstrations
    models = la.load_models([str(checkpoint)])
    assert list(models) == ["final", "random-init:final"]
    assert {m.config.prompt for m, _ in models.values()} == {"openvla"}  # the recipe's, baseline included
    with pytest.raises(InputError, match="^prompt: got 'qwen-chat', expected one of \\('openvla',\\)"):
        la.load_models([str(checkpoint)], prompt="qwen-chat")  # the LIBERO tokenizer has no chat tokens
    initial = models["random-init:final"][0]
    again = registry.load(registry.random_init_of(registry.resolve([str(checkpoint)])[0]))
    assert all(torch.equal(a, b) for a, b in zip(initial.state_dict().values(), again.state_dict().values()))
    trained = models["final"][0]
    assert not all(torch.equal(a, b) for a, b in zip(initial.state_dict().values(), trained.state_dict().values()))
    records, summary = la.measure({k: m for k, (m, _) in models.items()}, observations()[:2], observations()[2:],
                                  n_resamples=200)
    assert set(records["split"]) == {"selection", "report"} and set(records["source"]) == {"llm", "head"}
    assert {(r["model"], r["source"]) for r in summary["rows"]} == {
        (m, s) for m in models for s in ("llm", "head")}
    for row in summary["rows"]:
        assert row["n"] == 2 and row["depth"] == max(row["selection_ratio_by_depth"],
                                                     key=row["selection_ratio_by_depth"].get)
    assert [(t["model"], t["source"]) for t in summary["tests"]] == [("final", "llm"), ("final", "head")]
    status, _, err = testkit.run_cli(["libero", "attention", "--model", str(tmp_path / "nothing"), "--out",
                                       tmp_path / "x", "--report-states", "40:60"])
    assert status == 2 and err.startswith("vla-lab libero: error: --")


@pytest.mark.parametrize("flag, value, message", [
    ("--selection-states", "5:1", "--selection-states: got '5:1', expected 0 <= A < B"),
    ("--report-states", "abc", "--report-states: got 'abc', expected A:B such as 0:10"),
])
def test_state_range_errors_name_their_own_option(tmp_path, flag, value, message) -> None:
    import testkit

    status, _, err = testkit.run_cli(["libero", "attention", "--model", "libero-spatial-causal", "--out",
                                       tmp_path / "x", flag, value])
    assert message in testkit.assert_one_line_error(status, err, "libero")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="LIBERO is not installed")
def test_overwrite_removes_the_earlier_runs_records_before_the_new_run(tmp_path, monkeypatch) -> None:
    """An --overwrite run that fails after claiming the directory leaves no record of the earlier run (and, as a
    start that failed before its records, nothing of its own); another command's run is never overwritten."""
    from testkit import snapshot

    from vla_lab.experiments import libero_attention as la
    from vla_lab.run_dir import RunDir
    from vla_lab.worlds.libero import env as libero_env

    out = tmp_path / "run"
    out.mkdir()
    for name, text in ((la.SETTINGS, '{"suite": "earlier"}'), (la.RECORDS, "old"), (la.SUMMARY, "{}")):
        (out / name).write_text(text)

    def broken(*args, **kwargs):
        raise RuntimeError("simulator down")

    monkeypatch.setattr(libero_env, "observations", broken)
    with pytest.raises(RuntimeError, match="simulator down"):
        la.run(["libero-spatial-causal"], out, tasks=[0], selection_states=[0], report_states=[40], overwrite=True)
    assert list(out.iterdir()) == []
    other = tmp_path / "eval"
    RunDir(other, "eval-libero", markers=("run.json",), records=(), settings_file="run.json").claim({"suite": "x"})
    before = snapshot(other)
    with pytest.raises(InputError, match="holds a vla-lab eval-libero run"):
        la.run(["libero-spatial-causal"], other, tasks=[0], selection_states=[0], report_states=[40], overwrite=True)
    assert snapshot(other) == before
