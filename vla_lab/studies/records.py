"""Finished study runs: load one run directory or every model's run of a study, show a summary, and recompute
records to check them (:func:`verify_records`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vla_lab.errors import InputError
from vla_lab.studies.engine import (
    RECORDS_FILE,
    STUDY_FILE,
    SUMMARY_FILE,
    StudyResult,
    StudySettings,
    run_study,
)


def load_result(out: str | Path) -> StudyResult:
    """A finished run directory's records and summary."""
    directory = Path(out)
    records = pd.read_parquet(directory / RECORDS_FILE)
    data = json.loads((directory / SUMMARY_FILE).read_text(encoding="utf-8"))
    return StudyResult(data["study"], records, pd.DataFrame(data["summary"]), pd.DataFrame(data["tests"]), directory)


def summary_table(result: StudyResult, digits: int = 3) -> pd.DataFrame:
    """The summary with ``value [lo, hi]`` as text, for display."""
    df = result.summary.copy()
    if df.empty:
        return df

    def show(row: pd.Series) -> str:
        low, high = row["ci95"]
        return f"{row['value']:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"

    df["estimate"] = df.apply(show, axis=1)
    return df


def load_results(root: str | Path, study: str) -> StudyResult:
    """Every finished run of ``study`` under ``root/<study>/<model>/``, records, summaries and tests
    concatenated (one directory per model, as ``notebooks/records/make_records.sh`` writes them)."""
    directories = sorted(p.parent for p in (Path(root) / study).glob(f"*/{SUMMARY_FILE}"))
    if not directories:
        raise InputError(f"records: got no finished {study} run under {Path(root) / study}, expected "
                         "<model>/summary.json (see notebooks/records/make_records.sh)")
    results = [load_result(d) for d in directories]
    return StudyResult(
        study,
        pd.concat([r.records for r in results], ignore_index=True),
        pd.concat([r.summary for r in results], ignore_index=True),
        pd.concat([r.tests for r in results], ignore_index=True),
        Path(root) / study,
    )


#: How far a recomputed float record may be from the stored one (``|a - b| <= atol + rtol * |b|``): float32
#: rounding, which differs between CPUs (records made on an Intel Xeon, recomputed on an AMD EPYC: up to 6e-7).
VERIFY_ATOL, VERIFY_RTOL = 1e-6, 1e-5


def verify_records(
    out: str | Path, units: int = 1, atol: float = VERIFY_ATOL, rtol: float = VERIFY_RTOL
) -> pd.DataFrame:
    """Recompute the first ``units`` test units of a finished run with its stored settings and compare them
    with its records: every column but the float ones exactly, float columns within ``atol + rtol * |stored|``
    (pass 0, 0 for an exact comparison). Returns the recomputed records, with ``attrs["max_abs_difference"]``
    the largest float difference found (0.0 when identical); raises InputError naming the first difference."""
    directory = Path(out)
    stored = json.loads((directory / STUDY_FILE).read_text(encoding="utf-8"))
    if stored.get("world", "tabletop") != "tabletop":
        raise InputError(f"records: got a {stored['world']} run in {directory}, expected a tabletop run (LIBERO "
                         "records are recomputed by running the study again with --resume off)")
    settings = StudySettings(**{**stored, "scenes": min(stored["scenes"], units * stored["batch_size"]),
                                "validation_scenes": 0})
    fresh = run_study(settings, progress=False).records.reset_index(drop=True)
    saved = pd.read_parquet(directory / RECORDS_FILE)
    saved = saved[(saved["split"] == settings.split) & saved["scene"].isin(set(fresh["scene"]))].reset_index(drop=True)
    exact = atol == 0 and rtol == 0
    try:
        pd.testing.assert_frame_equal(fresh, saved, check_exact=exact, atol=atol, rtol=rtol)
    except AssertionError as exc:
        first = " ".join(str(exc).split())[:300]
        raise InputError(f"records: {directory} differs from a recomputation of its first {units} unit(s): "
                         f"{first}") from None
    floats = [c for c in fresh.columns if pd.api.types.is_float_dtype(fresh[c])]
    differences = [float((fresh[c] - saved[c]).abs().max()) for c in floats if fresh[c].notna().any()]
    fresh.attrs["max_abs_difference"] = max(differences, default=0.0)
    return fresh
