"""benchmarks/gpu_check.sh and vla_lab.bench.gpu_check on the CPU (behaviour, never timings)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from vla_lab.bench import gpu_check
from vla_lab.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_fidelity_on_the_tiny_preset():
    result = gpu_check.fidelity("tiny", "cpu", batch_sizes=(1, 2))
    assert result["passed"] is True and result["device"] == "cpu"
    rows = {(r["dtype"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(d, b) for d in ("float32", "bfloat16") for b in (1, 2)}
    for (dtype, _), row in rows.items():
        assert [c["inputs_seed"] for c in row["calls"]] == [0, 0, 0, 1]  # the last call: new inputs
        assert all(c["path"] == "eager" for c in row["calls"]) and row["cuda_graphs"] is False
        assert row["max_abs_difference"] == max(c["max_abs"] for c in row["calls"])
        if dtype == "float32":
            assert row["passed"] and row["max_abs_difference"] <= gpu_check.FLOAT32_TOLERANCE
        else:
            assert "passed" not in row
            assert all(c["straightforward_vs_float32_max_abs"] >= 0 for c in row["calls"])


def _notebook(*sources: str, tagged: bool = True) -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_markdown_cell("# a notebook")]
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    if tagged:
        cells[1].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_inject_parameters_follows_the_parameters_cell():
    nb = _notebook("A = 1", "print(A)")
    injected = gpu_check.inject_parameters(nb, {"A": 2, "B": None, "C": [0, "x"]})
    assert len(nb.cells) == 3 and len(injected.cells) == 4  # the original is left as it was
    cell = injected.cells[2]
    assert cell.metadata["tags"] == ["injected-parameters"]
    assert "A = 2\nB = None\nC = [0, 'x']" in cell.source
    with pytest.raises(InputError, match="parameters"):
        gpu_check.inject_parameters(_notebook("A = 1", tagged=False), {"A": 2})


def test_every_injected_name_is_a_notebook_parameter():
    for dry_run in (False, True):
        for number, parameters in gpu_check.notebook_parameters("cuda", dry_run).items():
            (path,) = (REPO / "notebooks").glob(f"{number}_*.ipynb")
            nb = nbformat.read(path, as_version=4)
            (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
            source = TransformerManager().transform_cell(cell.source)  # the cell starts with %matplotlib inline
            names = {t.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name)}
            assert set(parameters) <= names, (path.name, set(parameters) - names)


def test_environment_report_prefers_the_commit_the_caller_names(monkeypatch):
    # On the H200 the copy's .git named an older commit than the tree it came with.
    monkeypatch.setenv("GPU_CHECK_COMMIT", "f" * 40)
    report = gpu_check.environment_report()
    assert report["git_commit"] == "f" * 40 and report["git_commit_from"] == "GPU_CHECK_COMMIT"
    assert report["git_head_in_copy"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                                        text=True).stdout.strip()
    monkeypatch.delenv("GPU_CHECK_COMMIT")
    report = gpu_check.environment_report()
    assert report["git_commit"] == report["git_head_in_copy"] and report["git_commit_from"] == "git"


def test_workdir_resolves_every_relative_path_a_notebook_reads(tmp_path):
    # The GPU check of 2026-11-30 ran notebooks 02-04 from a scratch root without notebooks/records: each
    # failed on its first load_results. Every RECORDS path the notebooks name must resolve from that root.
    gpu_check.prepare_workdir(tmp_path)
    assert (tmp_path / "vla_lab" / "__init__.py").is_file() and (tmp_path / "tests" / "data").is_dir()
    found = set()
    for path in (REPO / "notebooks").glob("0*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            found |= set(re.findall(r'^RECORDS = "([^"]+)"', cell.source, flags=re.M))
    assert found == {"notebooks/records"}
    for relative in found:
        assert sorted(p.name for p in (tmp_path / relative).iterdir()) == sorted(
            p.name for p in (REPO / relative).iterdir())


@pytest.mark.slow
def test_run_notebook_records_ok_error_and_timeout(tmp_path):
    before = dict(os.environ)
    sources = {
        "ok": "from IPython.display import Markdown, display\ndisplay(Markdown(f'A is {A}'))",
        "error": "raise ValueError(f'boom {A}')",
        "timeout": "import time\ntime.sleep(60)",
    }
    records = {}
    for name, source in sources.items():
        path = tmp_path / f"{name}.ipynb"
        nbformat.write(_notebook("A = 1", source), path)
        executed = tmp_path / "executed" / path.name
        records[name] = gpu_check.run_notebook(path, {"A": 5}, executed, tmp_path / "work",
                                               timeout_s=4 if name == "timeout" else 120)
        assert executed.is_file()
    assert records["ok"]["status"] == "ok" and records["ok"]["error"] is None
    assert records["ok"]["outputs"]["markdown"] == ["A is 5"]
    assert records["ok"]["executed_code_cells"] == records["ok"]["code_cells"] == 3
    assert records["error"]["status"] == "error" and "boom 5" in records["error"]["error"]
    assert records["timeout"]["status"] == "timeout"
    assert dict(os.environ) == before  # the kernels' environment is not left behind
    assert (tmp_path / "work" / "tests").resolve() == REPO / "tests"


def test_summary_marks_failures_and_writes_stub_files(tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    (logs / "bench.log").write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
    gpu_check.write_json(out / "gpu-fidelity.json", {"check": "fidelity", "status": "ok", "passed": False})
    gpu_check.write_json(out / "gpu-env.json", {"check": "environment", "status": "ok"})
    steps = tmp_path / "steps.tsv"
    steps.write_text("env\t0\t1.5\t/x/gpu-env.json\nfidelity\t0\t2.0\t/x/gpu-fidelity.json\n"
                     "bench\t1\t3.0\t/x/gpu-bench.json\ncapture\t124\t9.0\t/x/gpu-capture.json\n"
                     "notebooks\tskipped\t0\t\n")
    result = gpu_check.summarize(out, steps, logs, started=0.0, dry_run=True)
    status = {s["step"]: s["status"] for s in result["steps"]}
    assert status == {"env": "ok", "fidelity": "check_failed", "bench": "failed", "capture": "timeout",
                      "notebooks": "skipped"}
    assert result["status"] == "incomplete" and "dry run" in result["note"]
    stub = json.loads((out / "gpu-bench.json").read_text())
    assert stub["status"] == "failed" and "out of memory" in stub["log_tail"]


@pytest.mark.slow
def test_gpu_check_script_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_NOTEBOOKS": "",
           "GPU_CHECK_WORK": str(tmp_path / "work"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = {p.name for p in out.iterdir()}
    assert files == {"gpu-env.json", "gpu-fidelity.json", "gpu-bench.json", "gpu-capture.json",
                     "gpu-check-summary.json", "gpu-check.log"}
    summary = json.loads((out / "gpu-check-summary.json").read_text())
    assert summary["dry_run"] is True
    assert {s["step"]: s["status"] for s in summary["steps"]} == {
        "env": "ok", "fidelity": "ok", "bench": "ok", "capture": "ok", "notebooks": "skipped"}
    environment = json.loads((out / "gpu-env.json").read_text())
    assert environment["source_sha256"] == gpu_check.source_fingerprint(REPO)
    assert json.loads((out / "gpu-fidelity.json").read_text())["passed"] is True
    bench = json.loads((out / "gpu-bench.json").read_text())["results"]
    assert {(r["name"], r["batch"], r["dtype"]) for r in bench} == {
        (n, b, "bfloat16") for n in ("forward", "fast") for b in (1, 2)}
    capture = json.loads((out / "gpu-capture.json").read_text())["results"]
    assert [r["name"] for r in capture] == ["forward", "forward+capture[segments]", "forward+capture[full]"]
    assert all(r["extra"]["vision_attention"] for r in capture[1:])


def _wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    import zipfile

    lines = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", *(f"Requires-Dist: {r}\n" for r in requires)]
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", "".join(lines))


def test_wheel_closure_reports_unmet_requirements(tmp_path, capsys):
    from vla_lab.bench import gpu_wheels

    _wheel(tmp_path, "nbclient", "0.11.0", "jupyter-client>=6.1.12", "traitlets>=5.4",
           "pytest; extra == 'test'", "pywin32; sys_platform == 'win32'")
    _wheel(tmp_path, "jupyter_client", "8.10.0", "traitlets>=5.3", "python-dateutil>=2.8.2", "pyzmq>=23")
    _wheel(tmp_path, "traitlets", "5.3.0")
    _wheel(tmp_path, "tiktoken", "0.14.0", "regex", "requests")
    wheels = gpu_wheels.read_wheels(tmp_path)
    assert wheels["jupyter-client"]["version"] == "8.10.0"
    problems = gpu_wheels.unresolved(wheels)  # extras and other platforms' markers are not requirements here
    assert sorted(problems, key=lambda p: p["wheel"]) == [
        {"wheel": "jupyter-client", "requirement": "pyzmq>=23", "problem": "missing"},
        {"wheel": "nbclient", "requirement": "traitlets>=5.4", "problem": "version"},
    ]
    assert gpu_wheels.main([str(tmp_path)]) == 1
    assert "closure: 2 unmet" in capsys.readouterr().out
    _wheel(tmp_path, "pyzmq", "27.3.0")
    _wheel(tmp_path, "traitlets", "5.16.1")
    (tmp_path / "traitlets-5.3.0-py3-none-any.whl").unlink()
    assert gpu_wheels.main([str(tmp_path)]) == 0
