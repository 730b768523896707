"""vla_lab.run_dir.RunDir: the one rule for claiming, resuming, overwriting and releasing a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit import snapshot

from vla_lab import files
from vla_lab.errors import InputError
from vla_lab.run_dir import KIND_FILE, RunDir, differences, recorded_kind


def eval_like(path: Path, **changes) -> RunDir:
    options = {"markers": ("run.json", "episodes.jsonl", "results.json"), "records": ("episodes.jsonl", "results.json"),
               "settings_file": "run.json", "free": ("device",)}
    options.update(changes)
    return RunDir(path, "eval-test", **options)


def study_like(path: Path) -> RunDir:
    return RunDir(path, "study-test", markers=("study.json", "parts", "summary.json"),
                  records=("parts/*", "summary.json"), settings_file="study.json")


SETTINGS = {"a": 1, "b": "x", "device": "cpu"}


def test_a_new_run_is_claimed_with_its_kind_and_settings(tmp_path) -> None:
    out = tmp_path / "deep" / "run"
    run = eval_like(out)
    assert run.check(SETTINGS) is False
    assert not (tmp_path / "deep").exists()  # checking creates nothing
    assert run.claim(SETTINGS) is False
    assert recorded_kind(out) == "eval-test"
    assert json.loads((out / "run.json").read_text()) == SETTINGS
    assert sorted(files.entries(out)) == sorted(["run.json", KIND_FILE])
    assert run.stored_settings() == SETTINGS


def test_an_existing_run_needs_resume_or_overwrite_and_both_are_refused(tmp_path) -> None:
    out = tmp_path / "run"
    eval_like(out).claim(SETTINGS)
    before = snapshot(out)
    with pytest.raises(InputError, match="holds an earlier run .*--resume or --overwrite"):
        eval_like(out).claim(SETTINGS)
    with pytest.raises(InputError, match="at most one"):
        eval_like(out).claim(SETTINGS, resume=True, overwrite=True)
    with pytest.raises(InputError, match="holds no earlier run"):
        eval_like(tmp_path / "nothing").claim(SETTINGS, resume=True)
    assert not (tmp_path / "nothing").exists()
    assert snapshot(out) == before


def test_resume_names_every_differing_setting_in_one_line(tmp_path) -> None:
    out = tmp_path / "run"
    eval_like(out).claim({**SETTINGS, "c": [1, 2], "d": 0.5, "e": 1, "f": 2})
    (out / "episodes.jsonl").write_text("{}\n")
    before = snapshot(out)
    given = {**SETTINGS, "a": 2, "b": "y", "c": (1, 3), "d": 0.25, "e": 9, "f": 8, "g": True, "device": "cuda"}
    with pytest.raises(InputError) as caught:
        eval_like(out).claim(given, resume=True)
    message = str(caught.value)
    assert "\n" not in message and "(7)" in message
    for part in ("a: got 2, expected 1", "b: got 'y', expected 'x'", "c: got [1, 3], expected [1, 2]",
                 "d: got 0.25, expected 0.5", "e: got 9, expected 1", "f: got 8, expected 2",
                 "g: got True, expected None"):
        assert part in message
    assert "device" not in message  # a free setting may change
    assert snapshot(out) == before
    assert eval_like(out).claim({**SETTINGS, "c": [1, 2], "d": 0.5, "e": 1, "f": 2, "device": "cuda"}, resume=True)
    assert json.loads((out / "run.json").read_text())["device"] == "cuda"


def test_compare_limits_the_checked_settings_and_check_also_adds_differences(tmp_path) -> None:
    out = tmp_path / "run"
    eval_like(out, compare=("a",)).claim(SETTINGS)
    assert eval_like(out, compare=("a",)).check({**SETTINGS, "b": "changed"}, resume=True) is True
    with pytest.raises(InputError, match="a: got 5, expected 1; model.x: got 2, expected 1"):
        eval_like(out, compare=("a",)).check({**SETTINGS, "a": 5}, resume=True,
                                             check_also=lambda: differences({"x": 1}, {"x": 2}, prefix="model."))


def test_overwrite_clears_only_this_kinds_files(tmp_path) -> None:
    out = tmp_path / "run"
    eval_like(out).claim(SETTINGS)
    (out / "episodes.jsonl").write_text("{}\n")
    (out / ".episodes.jsonl.tmp-1-abc").write_text("torn")
    assert eval_like(out).claim({"a": 2}, overwrite=True) is False
    assert sorted(files.entries(out)) == sorted(["run.json", KIND_FILE])
    assert json.loads((out / "run.json").read_text()) == {"a": 2}


def test_overwrite_refuses_unknown_files_and_deletes_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    eval_like(out).claim(SETTINGS)
    (out / "episodes.jsonl").write_text("{}\n")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(InputError, match=r"a directory with other files \(notes.txt\).*nothing was deleted"):
        eval_like(out).claim(SETTINGS, overwrite=True)
    assert snapshot(out) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for resume, overwrite in ((False, False), (False, True), (True, False)):
        with pytest.raises(InputError, match="other files"):
            eval_like(other).claim(SETTINGS, resume=resume, overwrite=overwrite)
    assert files.entries(other) == ["notes.txt"]


def test_a_run_of_another_kind_is_never_resumed_or_overwritten(tmp_path) -> None:
    """A study's --overwrite on a directory of another command that also writes parts/ (libero demos) used to
    delete that run's parts."""
    out = tmp_path / "demos"
    demos = RunDir(out, "demos-test", markers=("run.json", "episodes.jsonl", "parts", "demos.json"),
                   records=("episodes.jsonl", "parts/*"), settings_file="run.json")
    demos.claim(SETTINGS)
    (out / "parts").mkdir()
    (out / "parts" / "000.hdf5").write_bytes(b"a demonstration")
    before = snapshot(out)
    for run in (study_like(out), eval_like(out)):
        for resume, overwrite in ((False, True), (True, False), (False, False)):
            with pytest.raises(InputError, match="holds a vla-lab demos-test run"):
                run.claim(SETTINGS, resume=resume, overwrite=overwrite)
    assert snapshot(out) == before


def test_legacy_directories_without_a_kind_still_resume_and_overwrite(tmp_path) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "run.json").write_text(json.dumps(SETTINGS))
    (legacy / "episodes.jsonl").write_text("{}\n")
    assert recorded_kind(legacy) is None
    assert eval_like(legacy).claim(SETTINGS, resume=True) is True
    assert recorded_kind(legacy) == "eval-test"  # the resumed run now records its kind
    (legacy / KIND_FILE).unlink()
    assert eval_like(legacy).claim({"a": 2}, overwrite=True) is False
    assert not (legacy / "episodes.jsonl").exists()
    # A legacy run of another kind: its own files are not this kind's, so it is refused.
    demos = tmp_path / "demos"
    (demos / "parts").mkdir(parents=True)
    (demos / "parts" / "000.hdf5").write_bytes(b"a demonstration")
    (demos / "run.json").write_text(json.dumps(SETTINGS))
    (demos / "demos.json").write_text("{}")
    before = snapshot(demos)
    for resume, overwrite in ((False, True), (True, False)):
        with pytest.raises(InputError, match=r"other files \(demos.json, parts\)"):
            eval_like(demos).claim(SETTINGS, resume=resume, overwrite=overwrite)
    assert snapshot(demos) == before


def test_a_failed_start_removes_what_the_claim_created(tmp_path) -> None:
    out = tmp_path / "new" / "run"
    run = eval_like(out)
    with pytest.raises(RuntimeError, match="model did not load"), run.claimed(SETTINGS):
        assert (out / "run.json").exists()
        raise RuntimeError("model did not load")
    assert not (tmp_path / "new").exists()
    # An existing empty directory stays, empty.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError), eval_like(empty).claimed(SETTINGS):
        raise RuntimeError("no")
    assert files.entries(empty) == []
    # After its first record a run is kept, to be resumed.
    kept = tmp_path / "kept"
    with pytest.raises(RuntimeError), eval_like(kept).claimed(SETTINGS):
        (kept / "episodes.jsonl").write_text("{}\n")
        raise RuntimeError("later")
    assert (kept / "run.json").exists() and (kept / "episodes.jsonl").exists()
    # An interrupted resumable run stays (--resume continues it); one that cannot resume is released.
    with pytest.raises(KeyboardInterrupt), eval_like(tmp_path / "stopped").claimed(SETTINGS):
        raise KeyboardInterrupt
    assert (tmp_path / "stopped" / "run.json").exists()
    with pytest.raises(KeyboardInterrupt), eval_like(tmp_path / "once", resumable=False).claimed(SETTINGS):
        raise KeyboardInterrupt
    assert not (tmp_path / "once").exists()


def test_a_failed_resume_removes_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    eval_like(out).claim(SETTINGS)
    before = snapshot(out)
    with pytest.raises(RuntimeError), eval_like(out).claimed(SETTINGS, resume=True):
        raise RuntimeError("no")
    assert snapshot(out) == before


def test_unusable_paths_are_one_line_errors(tmp_path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InputError, match="which is a file"):
        eval_like(afile).check(SETTINGS)
    with pytest.raises(InputError, match="is a file, expected a directory that can be created"):
        eval_like(afile / "run").check(SETTINGS)
    out = tmp_path / "run"
    eval_like(out).claim(SETTINGS)
    (out / "run.json").write_text("{not json")
    with pytest.raises(InputError, match="run.json: got .*cannot be read"):
        eval_like(out).claim(SETTINGS, resume=True)
    (out / KIND_FILE).write_text('{"run_kind": 3}')
    with pytest.raises(InputError, match="run_kind 3"):
        eval_like(out).claim(SETTINGS, overwrite=True)
