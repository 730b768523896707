"""``vla-lab bench``: the JSON layout (numbers are measured, never asserted on)."""

from __future__ import annotations

import json

import pytest

from vla_lab.cli import main

KEYS = {"name", "device_name", "dtype", "batch", "median_ms", "min_ms", "max_ms", "actions_per_second",
        "peak_memory_bytes", "repeats", "sequence_length"}


def test_bench_json(capsys, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--preset", "tiny", "--batch", "1", "2", "--repeats", "2", "--warmup", "1",
            "--capture", "segments", "--threads", "1", "--out", str(out), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    names = [(r["name"], r["batch"]) for r in result["results"]]
    for batch in (1, 2):
        for name in ("forward", "forward+capture[segments]", "fast", "fast+capture[segments]"):
            assert (name, batch) in names
    for row in result["results"]:
        assert set(row) >= KEYS and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    fast = [r for r in result["results"] if r["name"] == "fast"]
    assert all(r["extra"]["max_abs_difference"] <= 1e-5 for r in fast)
    assert {"torch", "vla_lab", "threads"} <= set(result["environment"])
    assert main(args) == 2  # --out exists: refused
    assert "exists" in capsys.readouterr().err


def test_bench_rejects_unknown_preset():
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "nope"])
