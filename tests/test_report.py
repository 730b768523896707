"""The standard attention report and ``vla-lab attention``."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from testkit import randomize

from vla_lab import VLAAdapter, VLAConfig
from vla_lab.cli import main
from vla_lab.errors import ExportError, InputError
from vla_lab.tabletop import example_inputs, example_outlines
from vla_lab.viz import attention_report, report_paths

COARSE = ("tok0", "vision", "text", "action_queries", "stop")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(VLAAdapter(VLAConfig.preset("tiny")), seed=1).eval()


@pytest.fixture(scope="module")
def report(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    inputs, images, description = example_inputs(model)
    summary = attention_report(model, inputs, images, ("causal", "bidirectional"), out_dir=out,
                               description=description, outlines=example_outlines(model), formats=("png",), dpi=60)
    return out, summary, description


def test_example_inputs_match_the_model(model):
    inputs, images, description = example_inputs(model)
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask", "proprio"}
    assert len(images) == model.config.num_images and images[0].dtype == np.uint8
    assert images[0].shape == (56, 56, 3)
    assert inputs["proprio"].shape == (1, 8)
    assert "grasp the green circle" in description
    one = VLAAdapter(VLAConfig.preset("tiny", num_images=1)).eval()
    inputs1, images1, _ = example_inputs(one)
    assert len(images1) == 1 and inputs1["pixel_values"].shape[1] == one.config.vision.channels_per_image
    outlines = example_outlines(model)
    assert [m.shape for m in outlines["target"]] == [(4, 4), (4, 4)]
    assert outlines["target"][0].any()


def test_report_writes_the_files_and_the_verdicts(model, report):
    out, summary, description = report
    expected = report_paths(out, ["causal", "bidirectional"], model.config.num_llm_layers, ("png",))
    assert all(p.is_file() for p in expected), [str(p) for p in expected if not p.is_file()]
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert written == sorted(expected)
    assert (out / "causal" / "action_query_patches_layer0.png").is_file()
    assert (out / "causal" / "action_query_patches_layer1.png").is_file()

    assert summary["input"] == description
    assert summary["masks"]["causal"]["mask_audit"] == "causal"
    assert summary["masks"]["bidirectional"]["mask_audit"] == "bidirectional"
    causal = summary["masks"]["causal"]["segment_mass"]
    bidir = summary["masks"]["bidirectional"]["segment_mass"]
    assert set(causal) == {f"{q}->{k}" for q in COARSE for k in COARSE}
    assert causal["vision->action_queries"] == 0.0 and causal["text->action_queries"] == 0.0
    assert bidir["vision->action_queries"] > 0.0 and bidir["text->action_queries"] > 0.0
    for mode in ("causal", "bidirectional"):
        files = summary["masks"][mode]["files"]
        assert all(str(out / mode) in f for f in files)
        assert np.asarray(summary["masks"][mode]["normalized_actions"]).shape == (8, 7)
    assert summary["comparison"]["action_l1"] > 0

    assert json.loads((out / "report.json").read_text()) == summary
    audit = json.loads((out / "causal" / "mask_audit.json").read_text())
    assert audit["verdict"] == "causal" and audit["evidence"]["future_mass_max"] == 0.0
    table = pd.read_csv(out / "causal" / "segment_mass.csv")
    mean = table.groupby(["query_segment", "key_segment"])["value"].mean()
    assert np.isclose(mean[("action_queries", "vision")], causal["action_queries->vision"])
    sidecar = json.loads((out / "bidirectional" / "segment_mass_layers.json").read_text())
    assert sidecar["provenance"]["attention"] == "bidirectional" and sidecar["provenance"]["model"] == "tiny"
    for name in ("entropy.csv", "head_attention.csv", "rollout.csv", "query_patch_attention.csv"):
        assert len(pd.read_csv(out / "causal" / name)) > 0


def test_report_refuses_to_overwrite(model, report):
    out, *_ = report
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    inputs, images, _ = example_inputs(model)
    with pytest.raises(ExportError, match="already exists"):
        attention_report(model, inputs, images, ("causal", "bidirectional"), out_dir=out, formats=("png",))
    with pytest.raises(ExportError):
        attention_report(model, inputs, images, ("causal",), out_dir=out, formats=("png",))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(InputError, match="distinct"):
        attention_report(model, inputs, images, ("causal", "causal"), out_dir=out / "x")


def test_cli_prints_json_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "attention"
    argv = ["attention", "--model", "tiny", "--attention", "both", "--out", str(out), "--json", "--format", "png",
            "--dpi", "60"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"].startswith("preset tiny")
    assert "tabletop world scene 0" in printed["input"]
    assert set(printed["masks"]) == {"causal", "bidirectional"}
    assert printed["masks"]["causal"]["mask_audit"] == "causal"
    assert printed["masks"]["bidirectional"]["mask_audit"] == "bidirectional"
    assert printed["masks"]["causal"]["segment_mass"]["vision->action_queries"] == 0.0
    assert printed["masks"]["bidirectional"]["segment_mass"]["vision->action_queries"] > 0.0
    assert "action_l1" in printed["comparison"]
    assert (out / "causal" / "head_gates.png").is_file() and not (out / "causal" / "head_gates.svg").exists()

    report_json = (out / "report.json").read_bytes()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("vla-lab attention: error: export: ") and "report.json" in error
    assert len(error.strip().splitlines()) == 1
    assert (out / "report.json").read_bytes() == report_json
    argv_causal = ["attention", "--model", "tiny", "--attention", "causal", "--out", str(out), "--format", "png",
                   "--dpi", "60", "--overwrite"]
    assert main(argv_causal) == 0
    text = capsys.readouterr().out
    assert "causal: mask audit causal" in text
    assert list(json.loads((out / "report.json").read_text())["masks"]) == ["causal"]


def test_cli_checks_its_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["attention", "--model", "tiny"])  # --out is required
    assert main(["attention", "--model", "tiny", "--out", str(tmp_path), "--instruction", "pick up the cup"]) == 2
    assert "vla-lab attention: error: --image/--instruction:" in capsys.readouterr().err
