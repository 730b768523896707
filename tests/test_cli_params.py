"""``vla-lab params``: the released architecture's parameter counts, without weights or a GPU."""

from __future__ import annotations

import json

import pytest

from vla_lab.cli import main

RELEASED = {
    "vision.featurizer": 303_230_976,
    "vision.fused_featurizer": 427_680_704,
    "projector": 27_552_000,
    "llm": 494_032_768,
    "action_queries": 57_344,
    "action_head": 217_864_223,
    "proprio_projector": 811_776,
}


def params(capsys, preset: str) -> dict:
    assert main(["params", "--preset", preset, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_pro_preset_reproduces_released_counts(capsys):
    counts = params(capsys, "vla-adapter-pro-qwen2.5-0.5b")
    assert list(counts) == [*RELEASED, "total"]
    for key, value in RELEASED.items():
        assert counts[key] == value, key
    assert counts["total"] == sum(RELEASED.values())


def test_v1_head_count(capsys):
    counts = params(capsys, "vla-adapter-qwen2.5-0.5b")
    assert counts["action_head"] == 102_129_695
    assert counts["llm"] == RELEASED["llm"]


def test_text_output_and_unknown_preset(capsys):
    assert main(["params", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "action_head" in out and "total" in out
    with pytest.raises(SystemExit):
        main(["params", "--preset", "gigantic"])
