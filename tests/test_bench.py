"""``vla-lab bench``: the JSON layout (numbers are measured, never asserted on)."""

from __future__ import annotations

import json

from vla_lab.cli import main

KEYS = {"name", "device_name", "dtype", "batch", "median_ms", "min_ms", "max_ms", "actions_per_second",
        "peak_memory_bytes", "repeats", "sequence_length"}


def test_bench_json(capsys, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "tiny", "--batch", "1", "2", "--repeats", "2", "--warmup", "1",
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


def test_bench_rejects_unknown_model(capsys):
    assert main(["bench", "--model", "nope"]) == 2
    assert capsys.readouterr().err.startswith("vla-lab bench: error: --model: got 'nope'")


def test_bench_capture_rows_record_the_cache_and_vision_option(capsys):
    base = ["bench", "--model", "tiny", "--paths", "straightforward", "--repeats", "1", "--warmup", "0",
            "--capture", "full", "--threads", "1", "--json"]
    rows = {}
    for extra in ([], ["--capture-vision"]):
        assert main(base + extra) == 0
        result = json.loads(capsys.readouterr().out)
        (row,) = [r for r in result["results"] if r["name"] == "forward+capture[full]"]
        rows[bool(extra)] = row["extra"]
    assert rows[False]["vision_attention"] is False and rows[True]["vision_attention"] is True
    assert rows[True]["cache_tensors"] > rows[False]["cache_tensors"] > 0
    assert rows[True]["cache_bytes"] > rows[False]["cache_bytes"] > 0


def test_bench_fast_rows_say_whether_cuda_graphs_ran(capsys):
    args = ["bench", "--model", "tiny", "--paths", "fast", "--repeats", "2", "--warmup", "1", "--threads", "1",
            "--json"]
    assert main(args) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["extra"]["cuda_graphs"] is False  # on CPU the fast path runs eagerly
    assert row["extra"]["fast_stats"]["eager_runs"] == 1 + 1 + 2  # the difference check, warm-up, repeats
