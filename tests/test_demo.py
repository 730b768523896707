"""`vla-lab demo` on the shipped models, with few episodes."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from vla_lab import cli
from vla_lab.errors import InputError
from vla_lab.tabletop import MASKS, load_shipped, shipped_path


def test_shipped_models_load_and_differ() -> None:
    import torch

    models = {m: load_shipped(m) for m in MASKS}
    for mask, model in models.items():
        assert model.config.attention == mask and model.config.name == "tabletop"
        assert (shipped_path(mask) / "model.safetensors").exists()
    a, b = (dict(models[m].named_parameters()) for m in MASKS)
    assert any(not torch.equal(a[k], b[k]) for k in a), "the two shipped models must be trained separately"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One ``vla-lab demo --json`` run (4 episodes, with the random baseline) that the tests below read."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["demo", "--out", str(out), "--episodes", "4", "--json"]) == 0
    return out, json.loads(printed.getvalue())


def test_demo_json_and_files(demo_run, capsys) -> None:
    out, summary = demo_run
    assert set(summary["models"]) == set(MASKS) == set(summary["random_baseline"])
    for mask in MASKS:
        model = summary["models"][mask]
        assert 0.0 <= model["success_rate"] <= 1.0 and model["num_episodes"] == 4
        low, high = model["success_ci95"]  # Wilson 95 % interval of the rate, with its n
        assert low <= model["success_rate"] <= high
        assert sum(kind["num_episodes"] for kind in model["by_kind"].values()) == 4
        assert model["action_l1"] >= 0 and model["target_attention_ratio"] > 0
        rule = model["target_attention"]["llm_action_queries"]
        validation = rule["selection_ratio_by_depth"]  # JSON keys are strings
        assert rule["depth_kind"] == "layer" and str(rule["depth"]) == max(validation, key=validation.get)
        low, high = model["target_attention_ratio_ci95"]  # bootstrap over the test scenes
        assert low <= model["target_attention_ratio"] <= high
        assert summary["random_baseline"][mask]["target_attention_ratio"] > 0
        head = model["target_attention"]["head_task_attention"]
        assert head["depth_kind"] == "block" and "layer" not in head
        names = {p.split("/")[-1] for p in model["figures"]}
        assert {"action_query_target_overlay.png", "segment_mass_layers.png", "mask_difference.png"} <= names
        assert all(out.joinpath(*p.split(str(out) + "/")[-1].split("/")).exists() for p in model["figures"])
    assert json.loads((out / "demo.json").read_text())["episodes"] == 4
    # A second run into the same directory is refused unless asked to overwrite.
    assert cli.main(["demo", "--out", str(out), "--episodes", "2", "--no-baseline"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(InputError, match="holds an earlier run"):
        from vla_lab.studies.demo import run_demo

        run_demo(out, episodes=1, baseline=False)


def test_demo_prints_rates_with_their_intervals(demo_run, monkeypatch, capsys) -> None:
    """Without ``--json`` the same summary is printed as text: each model's rate, interval, L1 and ratio, and the
    random baseline's ratio (the run itself is the one above)."""
    import vla_lab.studies.demo

    out, summary = demo_run
    seen = {}

    def run_demo(out_dir, **kwargs):
        seen.update(kwargs, out=out_dir)
        return summary

    monkeypatch.setattr(vla_lab.studies.demo, "run_demo", run_demo)
    assert cli.main(["demo", "--out", str(out), "--episodes", "4"]) == 0
    assert seen == {"out": str(out), "episodes": 4, "overwrite": False, "baseline": True}
    lines = capsys.readouterr().out.splitlines()
    for mask in MASKS:
        m = summary["models"][mask]
        low, high = m["success_ci95"]
        line = next(row for row in lines if row.strip().startswith(mask))
        assert f"success {m['success_rate']:6.1%} [{low:.1%}, {high:.1%}]" in line
        assert f"target-attention ratio {m['target_attention_ratio']:5.2f}x" in line
        baseline = next(row for row in lines if row.strip().startswith(f"random init, {mask}"))
        assert f"ratio {summary['random_baseline'][mask]['target_attention_ratio']:5.2f}x" in baseline
    assert lines[-1].startswith(f"figures and demo.json in {summary['out_dir']}/")


def test_overwrite_replaces_only_a_demo(tmp_path, capsys) -> None:
    """--overwrite used to write into any directory; now a user's files and another command's run are refused
    before any model is loaded, and nothing is changed."""
    from testkit import snapshot

    from vla_lab.run_dir import RunDir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    study = tmp_path / "study"
    RunDir(study, "study", markers=("study.json",), records=(), settings_file="study.json").claim({"scenes": 2})
    for out, message in ((mine, "a directory with other files (thesis.tex)"), (study, "holds a vla-lab study run")):
        before = snapshot(out)
        assert cli.main(["demo", "--out", str(out), "--episodes", "1", "--overwrite"]) == 2
        assert message in capsys.readouterr().err
        assert snapshot(out) == before
