"""Every case issue 26 ("Hostile inputs, round 2") lists under "What broke", re-run -- as JSON.

Each case builds its fixture in a fresh temporary directory (tiny checkpoints, training runs, demonstration
directories written by ``tests/testkit.py``, a real ``libero demos`` and ``eval libero`` run), hashes every file
there (SHA-256), runs one command (``python -m vla_lab ...`` in a subprocess, 60 s timeout, so a hang shows as
a timeout) or one Python API call (in a subprocess; the exception's type and message), hashes again, and records
the exit status, the stderr lines (count, first), and ``unchanged``: the same files, same hashes, afterwards.
Ctrl-C cases send SIGINT during imports, seconds into ``eval libero`` or after its first episode record; their own
``--out`` (``may_write``) is left out of ``unchanged``, listed in ``created``. The issue's must-show case, runs
of different kinds on one directory with ``--overwrite``, is category ``cross-kind``.

    python benchmarks/hostile_cases.py --out benchmarks/results/cpu-hostile-cases.json

Needs the ``libero`` extra (the simulator) and root (a tmpfs for the full disk, a read-only bind mount).
OMP_NUM_THREADS=1 MUJOCO_GL=egl; about 6-8 minutes on 2 cores. A record, not a test: nothing is fixed here.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from _report import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # reuse the tests' fixture builders (testkit, the hostile-demo edits)
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
TIMEOUT = 60
INSTRUCTION = "pick up the red cube"
TINY_CONFIGS = ["--config", "train.json", "--model-config", "model.json", "--no-progress"]
EVAL = ["eval", "libero", "--model", "tiny", "--suite", "libero_spatial", "--tasks", "0"]
EVAL_RUN = [*EVAL, "--trials", "1", "--max-steps", "8", "--resolution", "64", "--no-progress"]
DEMOS_RUN = ["libero", "demos", "--tasks", "0", "--episodes-per-task", "1", "--resolution", "32", "--no-progress"]


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every entry under ``root`` (relative path -> SHA-256 of a regular file, or its kind), never opening a FIFO;
    paths under ``skip`` (shell patterns) left out."""
    out: dict[str, str] = {}
    for directory, dirs, names in os.walk(root):
        for name in sorted(dirs + names):
            path = Path(directory) / name
            rel = str(path.relative_to(root))
            if any(fnmatch.fnmatchcase(rel, s) or rel.startswith(s + "/") for s in skip):
                continue
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else f"special {mode:o}"
    return out


# --- fixtures, built once and copied into each case's own directory ----------------------------------------


def build_base(base: Path) -> dict[str, float]:
    """The fixtures the cases copy: tiny training configs, a tiny training run (its ``final/`` is the
    checkpoint), a gray image, small written demonstrations, a real ``libero demos`` and ``eval libero`` run."""
    from testkit import gray_png, tiny_tabletop_config, tiny_train_config, write_demos

    from vla_lab.training.train import train

    seconds = {}
    start = time.perf_counter()
    small = tiny_train_config(steps=2, num_examples=16, val_examples=0, eval_episodes=0, checkpoint_interval=0)
    small.to_json(base / "train.json")
    tiny_tabletop_config().to_json(base / "model.json")
    train(small, tiny_tabletop_config(), base / "train_run", progress=False)
    gray_png(base / "view.png")
    write_demos(base / "small_demos", tasks=1, demos=2, steps=5, size=32)
    seconds["tiny_train_run"] = time.perf_counter() - start
    for name, argv in (("libero_demos", DEMOS_RUN), ("eval_run", EVAL_RUN)):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "vla_lab", *argv, "--out", name], cwd=base, env=ENV,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"fixture {name} failed: {done.stderr[-2000:]}")
        seconds[name] = time.perf_counter() - start
    return {k: round(v, 1) for k, v in seconds.items()}


def copy(base: Path, root: Path, name: str, as_name: str | None = None) -> Path:
    source, target = base / name, root / (as_name or name)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    return target


def with_configs(*names: str) -> Callable[[Path, Path], None]:
    """A setup copying ``train.json``, ``model.json``, ``view.png`` and the named fixtures (``src:dst``)."""
    def setup(base: Path, root: Path) -> None:
        for name in ("train.json", "model.json", "view.png", *names):
            src, _, dst = name.partition(":")
            copy(base, root, src, dst or None)
    return setup


def broken_demos(edit_name: str) -> Callable[[Path, Path], None]:
    """Small demonstrations with one of ``tests/test_hostile_demos.py``'s corruptions."""
    def setup(base: Path, root: Path) -> None:
        from test_hostile_demos import CASES

        CASES[edit_name][0](copy(base, root, "small_demos", "demos"))
    return setup


def truncated_hdf5(base: Path, root: Path) -> None:
    (path := copy(base, root, "small_demos", "demos") / "task_0_demo.hdf5").write_bytes(path.read_bytes()[:4000])


def int64_weight(base: Path, root: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    with_configs("train_run/final:ckpt")(base, root)
    weights = load_file(str(root / "ckpt" / "model.safetensors"))
    key = next(k for k in weights if "layers.0.mlp.up_proj" in k)
    weights[key] = weights[key].round().to(torch.int64)
    save_file(weights, str(root / "ckpt" / "model.safetensors"), metadata={"format": "pt"})


def fifo_weights(base: Path, root: Path) -> None:
    with_configs("train_run/final:ckpt")(base, root)
    (root / "ckpt" / "model.safetensors").unlink()
    os.mkfifo(root / "ckpt" / "model.safetensors")


def deep_image(kind: str) -> Callable[[Path, Path], None]:
    def setup(base: Path, root: Path) -> None:
        import numpy as np
        import PIL.Image

        values = np.full((64, 64), 40000, np.uint16) if kind == "png" else np.full((64, 64), np.nan, np.float32)
        PIL.Image.fromarray(values).save(root / f"deep.{kind}")
    return setup


def odd_image(kind: str) -> Callable[[Path, Path], None]:
    def setup(base: Path, root: Path) -> None:
        from test_hostile_files import make

        make(kind, root / "view.png")
    return setup


def notes_with_train_config(base: Path, root: Path) -> None:
    with_configs()(base, root)
    (root / "notes").mkdir()
    shutil.copy2(base / "train.json", root / "notes" / "train_config.json")
    (root / "notes" / "notes.txt").write_text("months of work\n")


def foreign_record(base: Path, root: Path) -> None:
    run = copy(base, root, "eval_run", "run")
    record = {**json.loads((run / "episodes.jsonl").read_text().splitlines()[0]), "task": 5, "init_state": 0}
    with (run / "episodes.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def mount(kind: str) -> tuple[Callable[[Path, Path], None], Callable[[Path], None]]:
    """A setup and teardown: ``disk`` a 256 KiB tmpfs (a full disk), or ``demos`` bound read-only."""
    def setup(base: Path, root: Path) -> None:
        if kind == "disk":
            (root / "disk").mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root / "disk")], check=True)
        else:
            demos = copy(base, root, "small_demos", "demos")
            subprocess.run(["mount", "--bind", str(demos), str(demos)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(demos)], check=True)

    return setup, lambda root: subprocess.run(["umount", str(root / kind)], check=False)


# --- the Python API cases: run in a subprocess, the exception reported as JSON on stdout ---------------------

API_PRELUDE = """\
import json, math, numpy as np, torch
from vla_lab import VLAConfig, capture, run_with_cache
from vla_lab.model import FastVLA, random_model, save_pretrained
from vla_lab.model.inputs import forward_inputs
torch.set_num_threads(1)
IMG = np.full((64, 64, 3), 120, np.uint8)
m = random_model(VLAConfig.preset("tiny"), seed=0).eval()
b = forward_inputs(m.prepare_inputs([IMG] * 2, "pick up the red cube", [0.0] * 8, proprio_is_normalized=True))
def poison(m, value):
    with torch.no_grad():
        m.action_head.model.fc2.weight[0, 0] = value
    return m
"""
API_CALLS = {  # id: (what, the call)
    "sw-api-forward-typo": ("forward(atention=...)", "with torch.no_grad():\n    m(**b, atention='bidirectional')"),
    "sw-api-cache-typo": ("run_with_cache(hiden_states=...)", "run_with_cache(m, **b, hiden_states=False)"),
    "sw-api-forward-nan": ("forward returning NaN actions", "poison(m, math.nan)\nwith torch.no_grad():\n    m(**b)"),
    "sw-api-predict-nan": ("predict_action returning NaN actions", "poison(m, math.nan).predict_action("
                           "[IMG] * 2, 'pick up the red cube', [0.0] * 8, proprio_is_normalized=True)"),
    "sw-api-fast-inf": ("FastVLA.predict_action returning inf actions", "FastVLA(poison(m, math.inf))"
                        ".predict_action([IMG] * 2, 'pick up the red cube', [0.0] * 8, proprio_is_normalized=True)"),
    "sw-api-save-nan": ("save_pretrained with NaN weights", "save_pretrained(poison(m, math.nan), 'ckpt')"),
    "tb-api-seed-abc": ("random_model(seed='abc')", "random_model(VLAConfig.preset('tiny'), seed='abc')"),
    "tb-api-float-ids": ("float input_ids", "b['input_ids'] = b['input_ids'].float()\nm(**b)"),
    "tb-api-capture-linear": ("capture on a non-vla-lab module", "with capture(torch.nn.Linear(2, 2)):\n    pass"),
    "tb-api-save-linear": ("save_pretrained on a non-vla-lab module", "save_pretrained(torch.nn.Linear(2, 2), 'ckpt')"),
    "tb-api-full-disk": ("save_pretrained on a full disk (256 KiB tmpfs)", "save_pretrained(m, 'disk/ckpt')"),
}


def api_code(call: str) -> str:
    return (API_PRELUDE + "try:\n" + textwrap.indent(call, "    ") + "\n    print(json.dumps({'raised': None}))\n"
            "except Exception as exc:\n    print(json.dumps({'raised': type(exc).__name__, 'message': str(exc)}))\n")


# --- the cases ------------------------------------------------------------------------------------------------


def case(cid: str, category: str, what: str, argv: list[str] | None = None, setup=None, *, api: str | None = None,
         expect: str = "refused", may_write: tuple[str, ...] = (), sigint: tuple | None = None,
         inherit=signal.SIG_DFL, teardown=None) -> dict:
    return {"id": cid, "category": category, "case": what, "argv": argv, "setup": setup or with_configs(),
            "api": api, "expect": expect, "may_write": may_write, "sigint": sigint, "inherit": inherit,
            "teardown": teardown}


def cases() -> list[dict]:
    ow = "deleted-by-overwrite"
    study = ["study", "mask-swap", "--model", "tabletop-causal", "--scenes", "2", "--no-progress"]
    train = ["train", *TINY_CONFIGS]
    disk, ro = mount("disk"), mount("demos")
    out = [
        case("ow-train-ckpt", ow, "train --overwrite on a checkpoint directory (train_config.json, weights, "
             "tokenizer, heads)", [*train, "--out", "ckpt", "--overwrite"], with_configs("train_run/final:ckpt")),
        case("ow-train-notes", ow, "train --overwrite on a user's directory with train_config.json and notes.txt",
             [*train, "--out", "notes", "--overwrite"], notes_with_train_config),
        case("ow-study-demos", ow, "study --overwrite on a libero demos directory (parts/*.hdf5)",
             [*study, "--out", "demos", "--overwrite"], with_configs("libero_demos:demos")),
        case("ow-eval-demos", ow, "eval libero --overwrite on a libero demos directory",
             [*EVAL_RUN, "--out", "demos", "--overwrite"], with_configs("libero_demos:demos")),
    ]
    expert = ["libero", "expert", "--tasks", "0", "--trials", "1", "--max-steps", "8", "--no-progress"]
    others = {"train": train, "expert": expert, "demos": DEMOS_RUN, "study": study, "eval": EVAL_RUN}
    for target, fixture, names in (("demos", "libero_demos", ("train", "expert")),
                                   ("eval", "eval_run", ("demos", "train", "study")),
                                   ("train", "train_run", ("eval", "demos", "study"))):
        for name in names:
            out.append(case(f"xk-{name}-on-{target}", "cross-kind", f"{name} --overwrite on a {target} run directory",
                            [*others[name], "--out", "run", "--overwrite"], with_configs(f"{fixture}:run")))
    sw = "silently-wrong"
    data = ["train", "--data", "demos", "--out", "run", "--steps", "1", "--no-progress"]
    predict_ckpt = ["predict", "--model", "ckpt", "--image", "view.png", "--image", "view.png",
                    "--instruction", INSTRUCTION]
    out += [
        case("sw-nan-actions", sw, "train --data on demonstrations with a NaN action", data,
             broken_demos("NaN action")),
        case("sw-inf-proprio", sw, "train --data on demonstrations with inf in the proprio (ee_states)", data,
             broken_demos("inf proprio")),
        case("sw-int64-weight", sw, "predict on a checkpoint with an int64 weight tensor", predict_ckpt,
             int64_weight),
        case("sw-png16", sw, "predict with a 16-bit PNG", ["predict", "--model", "tiny", "--image", "deep.png",
             "--image", "deep.png", "--instruction", INSTRUCTION], deep_image("png")),
        case("sw-tiff-nan", sw, "predict with a float TIFF of NaN", ["predict", "--model", "tiny", "--image",
             "deep.tiff", "--image", "deep.tiff", "--instruction", INSTRUCTION], deep_image("tiff")),
        case("sw-out-empty-train", sw, "train --out '' (was the current directory)", [*train, "--out", ""]),
        case("sw-out-empty-eval", sw, "eval libero --out ''", [*EVAL_RUN, "--out", ""]),
        case("sw-resume-foreign-task", sw, "eval libero --resume with an episodes.jsonl record of a task outside "
             "--tasks", [*EVAL_RUN, "--out", "run", "--resume"], foreign_record),
    ]
    out += [case(cid, sw, f"API: {API_CALLS[cid][0]}", api=cid) for cid in API_CALLS if cid.startswith("sw-")]
    ci = "ctrl-c"
    predict_tiny = ["predict", "--model", "tiny", "--image", "view.png", "--image", "view.png",
                    "--instruction", INSTRUCTION]
    brief = [*EVAL, "--trials", "2", "--max-steps", "8", "--out", "run", "--no-progress"]
    longer = [*EVAL, "--trials", "4", "--max-steps", "40", "--out", "run", "--no-progress"]
    out += [
        case("int-import-0.3s", ci, "SIGINT 0.3 s into predict (imports)", predict_tiny, sigint=("at", 0.3),
             expect="interrupted"),
        case("int-import-1s", ci, "SIGINT 1 s into predict (imports)", predict_tiny, sigint=("at", 1.0),
             expect="interrupted"),
        case("int-import-ignored-0.5s", ci, "SIGINT 0.5 s into predict started with SIGINT ignored (background job)",
             predict_tiny, sigint=("at", 0.5), inherit=signal.SIG_IGN, expect="interrupted"),
        case("int-eval-0.3s", ci, "SIGINT 0.3 s into eval libero (imports)", brief, sigint=("at", 0.3),
             expect="interrupted", may_write=("run",)),
    ]
    for seconds in (3, 6, 10):
        out.append(case(f"int-eval-{seconds}s", ci, f"SIGINT {seconds} s into eval libero (--trials 2 --max-steps 8)",
                        brief, sigint=("at", seconds), expect="interrupted", may_write=("run",)))
    for delay in (0.0, 0.2):
        out.append(case(f"int-eval-libero-import-{delay}s", ci, f"SIGINT {delay} s after mujoco's library is mapped "
                        "into eval libero (LIBERO's import)", brief, sigint=("maps", delay, "mujoco"),
                        expect="interrupted", may_write=("run",)))
    out.append(case("int-eval-after-record", ci, "SIGINT 2 s after eval libero's first episode record (--trials 4 "
                    "--max-steps 40)", longer, sigint=("record", 2.0), expect="interrupted", may_write=("run",)))
    tb = "traceback-or-hang"
    out += [
        case("tb-env-seed-neg", tb, "eval libero --env-seed -1", [*EVAL_RUN, "--env-seed", "-1", "--out", "run"]),
        case("tb-env-seed-20-digits", tb, "eval libero --env-seed 12345678901234567890",
             [*EVAL_RUN, "--env-seed", "12345678901234567890", "--out", "run"]),
        case("tb-fifo-safetensors", tb, "predict on a checkpoint whose model.safetensors is a FIFO", predict_ckpt,
             fifo_weights),
    ]
    for cid in (c for c in API_CALLS if c.startswith("tb-")):
        full = cid.endswith("full-disk")
        out.append(case(cid, tb, f"API: {API_CALLS[cid][0]}", api=cid, setup=disk[0] if full else None,
                        teardown=disk[1] if full else None))
    cv = "claimed-before-validated"
    out += [
        case("cv-lr-nan", cv, "train --config '{\"lr\": NaN}'", ["train", "--out", "run", "--steps", "2",
             "--model-config", "model.json", "--config", '{"lr": NaN}']),
        case("cv-betas", cv, "train --config '{\"betas\": [0.9, 2]}'", ["train", "--out", "run", "--steps", "2",
             "--model-config", "model.json", "--config", '{"betas": [0.9, 2]}']),
        case("cv-missing-images", cv, "train --data with a demonstration missing its agentview images", data,
             broken_demos("missing camera")),
        case("cv-empty-demo", cv, "train --data with a zero-length demonstration", data, broken_demos("empty demo")),
        case("cv-grayscale", cv, "train --data with grayscale frames", data, broken_demos("grayscale frames")),
        case("cv-float-frames", cv, "train --data with float frames", data, broken_demos("float frames")),
        case("cv-wrong-total", cv, "train --data with a wrong manifest total", data, broken_demos("wrong total")),
        case("cv-readonly-demos", cv, "train --data on a read-only demos directory (the frame cache goes beside "
             "the demos: refused before --out is claimed)", data, ro[0], teardown=ro[1]),
        case("cv-augment-with-data", cv, "train --data D --config '{\"augment\": true}' (exit 0 expected)",
             [*data, "--config", '{"augment": true}'], with_configs("small_demos:demos"), expect="ok",
             may_write=("run", "demos/policy_frames_*.npy")),
    ]
    wm = "weak-message"
    predict_view = ["predict", "--model", "tiny", "--image", "view.png", "--image", "view.png", "--instruction", "a"]
    out += [
        case("wm-not-hdf5", wm, "train --data with a task file that is not HDF5", data, broken_demos("not HDF5")),
        case("wm-truncated-hdf5", wm, "train --data with a task file cut in half", data, truncated_hdf5),
        case("wm-seed-overflow", wm, "train --seed 99999999999999999999",
             [*train, "--out", "run", "--seed", "99999999999999999999"]),
        case("wm-bench-batch-1e9", wm, "bench --batch 1e9", ["bench", "--model", "tiny", "--batch", "1e9"]),
        case("wm-bench-batch-10-9", wm, "bench --batch 1 1000000000",
             ["bench", "--model", "tiny", "--batch", "1", "1000000000"]),
        case("wm-init-states-1e20", wm, "eval libero --init-states 0:1e20",
             [*EVAL, "--init-states", "0:1e20", "--out", "run", "--no-progress"]),
        case("wm-image-fifo", wm, "predict with an image that is a FIFO", predict_view, odd_image("fifo")),
        case("wm-image-directory", wm, "predict with an image that is a directory", predict_view,
             odd_image("directory")),
        case("wm-image-symlink-loop", wm, "predict with an image that is a symlink loop", predict_view,
             odd_image("symlink loop")),
        case("wm-demos-passwd", wm, "demos.json naming a task file at ../../../../etc/passwd", data,
             broken_demos("file outside")),
    ]
    return out


# --- running one case -------------------------------------------------------------------------------------------


def run_process(command: list[str], root: Path, sigint: tuple | None, inherit) -> dict:
    """``command`` in ``root`` under a 60 s timeout, SIGINT sent as ``sigint`` says."""
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, inherit))
    sent = None
    if sigint is not None:
        wait = sigint[1]
        if sigint[0] in ("record", "maps"):  # after the first episode record / once a library is mapped
            path = root / "run" / "episodes.jsonl" if sigint[0] == "record" else Path(f"/proc/{process.pid}/maps")
            while process.poll() is None and time.monotonic() - start < TIMEOUT:
                with contextlib.suppress(OSError):
                    if path.is_file() and (sigint[2] if len(sigint) > 2 else "\n") in path.read_text():
                        break
                time.sleep(0.01)
            wait += time.monotonic() - start
        time.sleep(max(0.0, start + wait - time.monotonic()))
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            sent = round(time.monotonic() - start, 2)
    try:
        stdout, stderr = process.communicate(timeout=max(1.0, TIMEOUT - (time.monotonic() - start)))
        status: int | str = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        status = "timeout"
    result = {"exit": status, "seconds": round(time.monotonic() - start, 2), "stdout_chars": len(stdout),
              "stderr": stderr}
    if sigint is not None:
        result["sigint_sent_at_s"] = sent  # None: the command had already ended
    return result


def run_api(code: str, root: Path) -> dict:
    """The API call ``code`` in a subprocess in ``root``: what it raised (type, message), read from its stdout."""
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", api_code(code)], cwd=root, env=ENV, capture_output=True,
                              text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"exit": "timeout", "stderr": "", "exception": None, "message": ""}
    try:
        raised = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raised = {"raised": None}
    message = raised.get("message") or ""
    return {"exit": raised["raised"] or f"no exception (exit {done.returncode})",
            "seconds": round(time.monotonic() - start, 2), "stderr": done.stderr, "exception": raised["raised"],
            "message": message, "message_lines": len(message.splitlines())}


def run_case(spec: dict, base: Path, work: Path) -> dict:
    """Build the fixture in a fresh directory, hash it, run the case, hash again."""
    root = Path(tempfile.mkdtemp(prefix=spec["id"] + "-", dir=work))
    try:
        spec["setup"](base, root)
        before = snapshot(root, spec["may_write"])
        if spec["api"]:
            command = API_CALLS[spec["api"]][1]
            result = run_api(command, root)
        else:
            command = shlex.join(["python", "-m", "vla_lab", *spec["argv"]])
            result = run_process([sys.executable, "-m", "vla_lab", *spec["argv"]], root, spec["sigint"],
                                 spec["inherit"])
        after = snapshot(root, spec["may_write"])
        created = sorted(set(snapshot(root)) - set(before))
    finally:
        if spec["teardown"]:
            spec["teardown"](root)
    stderr = result.pop("stderr")
    lines = stderr.splitlines()
    return {"id": spec["id"], "category": spec["category"], "case": spec["case"], "command": command,
            "expect": spec["expect"], **result, "stderr_lines": len(lines), "stderr_first": lines[0] if lines else None,
            "traceback": "Traceback" in stderr, "unchanged": before == after,
            "changed": sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)),
            "created": created[:20], "may_write": list(spec["may_write"])}


def judge(record: dict) -> bool:
    """One line, a non-zero exit (130 after Ctrl-C, 0 where the run should work) and unchanged files."""
    if "exception" in record:
        return bool(record["exception"]) and record["message_lines"] == 1 and record["unchanged"] \
            and record["exception"] in ("InputError", "CheckpointError", "ConfigError", "TypeError")
    if record["expect"] == "ok":
        return record["exit"] == 0 and record["unchanged"] and not record["traceback"]
    status = 130 if record["expect"] == "interrupted" else None
    return (record["exit"] == status if status else isinstance(record["exit"], int) and record["exit"] != 0) \
        and record["stderr_lines"] == 1 and record["unchanged"] and (record["stderr_first"] or "").startswith("vla-lab")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated case ids (default: all)")
    parser.add_argument("--out", help="also write the JSON here (replaced)")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", MUJOCO_GL="egl")
    chosen = cases()
    if args.only:
        chosen = [c for c in chosen if c["id"] in args.only.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vla-lab-hostile-") as tmp:
        base, work = Path(tmp) / "base", Path(tmp) / "cases"
        base.mkdir()
        work.mkdir()
        fixtures = build_base(base)
        records = []
        for spec in chosen:
            try:
                record = run_case(spec, base, work)
                record["as_expected"] = judge(record)
            except Exception as exc:  # a fixture that could not be built: recorded, the other cases still run
                record = {"id": spec["id"], "category": spec["category"], "case": spec["case"], "exit": None,
                          "stderr_lines": None, "unchanged": None, "error": repr(exc), "as_expected": False}
            records.append(record)
            print(f"{record['id']}: exit {record['exit']}, {record['stderr_lines']} line(s), unchanged "
                  f"{record['unchanged']}, as expected {record['as_expected']}", file=sys.stderr, flush=True)
    from vla_lab.bench.inference import cpu_model

    failed = [r["id"] for r in records if not r["as_expected"]]
    emit({
        "command": "python benchmarks/hostile_cases.py" + (f" --only {args.only}" if args.only else ""),
        "issue": 26,
        "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "omp_num_threads": "1"},
        "fixture_seconds": fixtures, "seconds": round(time.perf_counter() - started, 1),
        "cases": len(records), "as_expected": len(records) - len(failed), "not_as_expected": failed,
        "by_category": {c: sum(r["category"] == c for r in records) for c in {r["category"]: 0 for r in records}},
        "rule": "as_expected: one stderr line starting 'vla-lab', a non-zero exit (130 after Ctrl-C; 0 for the "
                "run that must work) and every pre-existing file unchanged (SHA-256, same set of files; what a "
                "run may write is excluded, see may_write / created); API cases: a one-line InputError / "
                "CheckpointError / ConfigError / TypeError",
        "records": records,
    }, args.out)


if __name__ == "__main__":
    main()
