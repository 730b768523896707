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


def _markdown_outputs(notebook: str) -> list[str]:
    cells = json.loads((ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))["cells"]
    return ["".join(output["data"]["text/markdown"]) for cell in cells for output in cell.get("outputs", [])
            if "text/markdown" in output.get("data", {})]


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
