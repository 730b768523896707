"""Numbers the committed notebooks quote equal the records they come from, looked up by key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vla_lab.studies import load_result

ROOT = Path(__file__).resolve().parent.parent
CONTROL_LINE = re.compile(r"^\* control for `(?P<path>[^`]+)`: .* Wilcoxon p = (?P<wilcoxon>\S+) on Δ action, "
                          r"McNemar p = (?P<mcnemar>\S+) on success")


def _markdown_outputs(notebook: str, cell_id: str | None = None) -> list[str]:
    """The Markdown a committed notebook displayed (of one cell, by its id), in order."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))["cells"]
    return ["".join(output["data"]["text/markdown"]) for cell in cells if cell_id in (None, cell.get("id"))
            for output in cell.get("outputs", []) if "text/markdown" in output.get("data", {})]


def test_notebook_02_quotes_each_control_comparison_from_its_own_test():
    """Each knockout path against its random-key control: the Wilcoxon p on Δ action is the record's delta_action
    test and the McNemar p on success its success test (the Δ action p used to be the success row's)."""
    quoted = []
    for text in _markdown_outputs("02_attention_masks.ipynb"):
        model = None
        for line in text.splitlines():
            header = re.match(r"^\*\*(?P<model>[\w-]+)\*\* \(trained", line)
            model = header["model"] if header else model
            found = CONTROL_LINE.match(line)
            if found:
                quoted.append((model, found["path"], found["wilcoxon"], found["mcnemar"]))
    assert len(quoted) >= 8, "notebook 02 lists the random-key controls of every model and path"
    for model, path, wilcoxon, mcnemar in quoted:
        tests = load_result(ROOT / "notebooks" / "records" / "knockout" / model).tests
        pair = tests[tests["comparison"] == f"{path} vs random-keys:{path}"].set_index("metric")["p"]
        assert float(wilcoxon) == pytest.approx(float(f"{pair['delta_action']:.2g}")), (model, path)
        assert float(mcnemar) == pytest.approx(float(f"{pair['success']:.2g}")), (model, path)


RATE = re.compile(r"(\d+)% \[(\d+)%, (\d+)%\]")
# Notebook 05's 'Measured.' blocks of LIBERO runs, in the order a cell shows them: (cell id, records, the conditions
# whose success each model line quotes after none's, in order, the primary comparisons whose p each line quotes)
LIBERO_MEASURED = {
    "libero-knockout-code": [
        ("libero-knockout", ["vision->queries", "random-keys:vision->queries"],
         ["vision->queries vs random-keys:vision->queries"]),
        ("libero-knockout-text", ["text->queries", "random-keys:text->queries"],
         ["text->queries vs random-keys:text->queries"]),
        ("libero-knockout-prefix-lm", ["prefix-lm"], ["none vs prefix-lm"]),
        ("libero-knockout-reverse", ["queries->vision", "queries->text"],
         ["none vs queries->vision", "none vs queries->text"])],
    "e28a9896": [("libero-target-knockout", ["target", "same_category"], ["target vs same_category"])],
    "fcfc91fa": [(f"libero-target-knockout-{reach}", [f"target:{reach}", f"same_category:{reach}"],
                  [f"target:{reach} vs same_category:{reach}"]) for reach in ("all", "head")],
}


@pytest.mark.parametrize("cell_id", sorted(LIBERO_MEASURED))
def test_notebook_05_quotes_each_rate_and_primary_test_from_its_records(cell_id):
    """Each model's success rates (with their intervals, in the order none, then the conditions) and each primary
    p-value in a 'Measured.' block of notebook 05 equal its run's summary and tests, looked up by key."""
    measured = [text for text in _markdown_outputs("05_libero.ipynb", cell_id) if text.startswith("**Measured.**")]
    assert len(measured) == len(LIBERO_MEASURED[cell_id])
    for text, (directory, conditions, comparisons) in zip(measured, LIBERO_MEASURED[cell_id], strict=True):
        run = load_result(ROOT / "notebooks" / "records" / directory / "libero_spatial")
        success = run.summary[run.summary["metric"] == "success"].set_index(["model", "condition"])
        primary = run.tests[run.tests["metric"] == "success (per-task rates)"].set_index(["model", "comparison"])["p"]
        lines = [line for line in text.splitlines() if line.startswith("- **")]
        assert sorted(re.match(r"- \*\*([\w-]+)\*\*", line)[1] for line in lines) == sorted(set(run.records["model"]))
        for line in lines:
            model = re.match(r"- \*\*([\w-]+)\*\*", line)[1]
            expected = [tuple(f"{v * 100:.0f}" for v in (row["value"], *row["ci95"]))
                        for row in (success.loc[(model, c)] for c in ["none", *conditions])]
            assert [tuple(r) for r in RATE.findall(line)[:len(expected)]] == expected, (directory, model)
            quoted = [float(p) for p in re.findall(r"p = (\S+) \(Holm", line)]
            expected_p = [pytest.approx(float(f"{primary[(model, c)]:.2g}")) for c in comparisons]
            assert quoted == expected_p, (directory, model)
