"""Closed-loop evaluation on LIBERO with upstream's protocol, resumable and sharded over processes.

An episode (:func:`run_episode`): reset to the task's init state ``i`` (plus the settle steps), then query
the policy with :func:`~vla_lab.worlds.libero.observation.prepare_observation`'s output every
:data:`NUM_OPEN_LOOP_STEPS` steps and execute the whole post-processed chunk open loop; success as soon as
the simulator reports ``done``, failure after ``max_steps`` steps. An exception inside an episode is a
failure whose message is recorded, and the evaluation goes on (as upstream's).

A run (:func:`evaluate`) owns a directory: ``run.json`` (its settings), ``episodes.jsonl`` (one record per
finished episode, appended and flushed as each ends, so a killed run loses at most the episode in
progress; ``resume`` skips the episodes recorded there), ``results.json`` (the summary, with Wilson 95 %
intervals) and, with ``video``, ``videos/`` (one MP4 per episode). Under torchrun the episodes are
shared round robin over the ranks (:mod:`vla_lab.parallel`); rank 0 writes the merged records sorted by
(suite, task, init state), the same files as a single process writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_lab import files, interrupts, parallel
from vla_lab.errors import InputError, error_text
from vla_lab.run_dir import RunDir
from vla_lab.stats import wilson_interval
from vla_lab.worlds.base import Episode, Step
from vla_lab.worlds.libero.env import task_info
from vla_lab.worlds.libero.world import LiberoWorld
from vla_lab.worlds.runner import OpenLoop, run_lockstep

#: Actions of each predicted chunk executed before the policy is queried again (upstream's value).
NUM_OPEN_LOOP_STEPS = 8
RUN_FILE, EPISODES_FILE, RESULTS_FILE, VIDEO_DIR = "run.json", "episodes.jsonl", "results.json", "videos"
#: Record fields that measure time; everything else is the same on every run of the same episodes.
TIMING_FIELDS = ("policy_ms", "sim_ms", "reset_ms")
#: Settings of ``run.json`` that ``resume`` requires to be unchanged (all change the records).
RESUME_SETTINGS = ("suite", "model", "prompt", "dtype", "num_threads", "max_steps", "seed", "resolution")
VIDEO_FPS = 30
#: Camera resolution of upstream's evaluation.
RESOLUTION = 256

EpisodeKey = tuple[str, int, int]
#: (the suite's world, the episode, frames or None) -> the result fields of one episode (success, steps, error, ...).
EpisodeFn = Callable[[LiberoWorld, Episode, "list[np.ndarray] | None"], dict[str, Any]]


def run_episode(
    env: LiberoWorld, policy: OpenLoop, episode: Episode, frames: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """One episode (:func:`vla_lab.worlds.runner.run_lockstep`); ``{"success", "steps", "queries", "error",
    "policy_ms", "sim_ms", "reset_ms"}``. ``policy``: e.g. :class:`vla_lab.policy.Policy` of a model in ``env``.

    ``frames`` (if given) receives the agentview frame of every step, rotated 180° as the policy sees it.
    ``policy_ms`` is the time in the policy's chunk function, ``reset_ms`` the reset with its settle steps and
    ``sim_ms`` the rest (steps and observations).
    """
    result: dict[str, Any] = {"success": False, "steps": 0, "queries": 0, "error": None,
                              "policy_ms": 0.0, "sim_ms": 0.0, "reset_ms": 0.0}
    def keep_frame() -> None:
        if frames is not None and env.raw is not None:
            frames.append(np.ascontiguousarray(env.raw["agentview_image"][::-1, ::-1]))

    def reset(slot: int, _: Any) -> None:
        result["reset_ms"] = (time.perf_counter() - start) * 1e3
        keep_frame()

    def stepped(slot: int, step: Step) -> None:
        result["steps"] += 1
        if not step.done:
            keep_frame()

    start = time.perf_counter()
    env.every_frame = frames is not None
    try:
        run = run_lockstep([env], [episode], policy, on_reset=reset, on_step=stepped)[0]
        result["success"] = run.success
    except Exception as exc:  # upstream counts a crashed episode as a failure and goes on
        result["success"] = False
        result["error"] = error_text(exc)
    finally:
        env.every_frame = False
        result["queries"] = policy.queries[0] if policy.queries else 0
        result["policy_ms"] = policy.query_seconds * 1e3
    elapsed = (time.perf_counter() - start) * 1e3
    result["sim_ms"] = max(elapsed - result["reset_ms"] - result["policy_ms"], 0.0)
    for name in TIMING_FIELDS:
        result[name] = round(result[name], 1)
    return result


def record_key(record: dict[str, Any]) -> EpisodeKey:
    return (str(record["suite"]), int(record["task"]), int(record["init_state"]))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of ``episodes.jsonl``, one per key (the last); a line cut short by a kill is ignored."""
    if not path.exists():
        return []
    found: dict[EpisodeKey, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            found[record_key(record)] = record
        except (ValueError, KeyError, TypeError):
            continue
    return [found[k] for k in sorted(found)]


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line in a single write (ranks may append to the same file)."""
    data = (files.dumps(record, indent=None) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def summarize(records: Sequence[dict[str, Any]], suite: str) -> dict[str, Any]:
    """Success rate with its Wilson 95 % interval, overall and per task; ``episodes`` last."""

    def rate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        wins = sum(bool(r["success"]) for r in rows)
        return {"num_episodes": len(rows), "successes": wins, "success_rate": wins / len(rows) if rows else 0.0,
                "success_ci95": list(wilson_interval(wins, len(rows))),
                "errors": sum(r.get("error") is not None for r in rows)}

    by_task = {}
    for task in sorted({int(r["task"]) for r in records}):
        rows = [r for r in records if int(r["task"]) == task]
        by_task[str(task)] = {"task_name": rows[0]["task_name"], "instruction": rows[0]["instruction"], **rate(rows)}
    return {"suite": suite, **rate(records), "by_task": by_task, "episodes": list(records)}


EVAL_KIND, EXPERT_KIND = "eval-libero", "libero-expert"
#: The files of an evaluation run, and those that hold its results.
MARKERS, RECORDS = (RUN_FILE, EPISODES_FILE, RESULTS_FILE, VIDEO_DIR), (EPISODES_FILE, RESULTS_FILE, f"{VIDEO_DIR}/*")


def run_dir(out: str | Path, kind: str = EVAL_KIND, *, markers: Sequence[str] = (),
            records: Sequence[str] = ()) -> RunDir:
    """The run directory of an evaluation of ``kind`` (``eval libero``'s, the expert's): ``run.json`` holds the
    settings, ``resume`` requires the same :data:`RESUME_SETTINGS`; a run that writes more files (the
    demonstrations) adds its ``markers`` and ``records``."""
    return RunDir(out, kind, markers=(*MARKERS, *markers), records=(*RECORDS, *records), settings_file=RUN_FILE,
                  compare=RESUME_SETTINGS)


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    """An MP4 (imageio's ffmpeg, :data:`VIDEO_FPS`), written next to ``path`` and moved into place."""
    import imageio.v2 as imageio

    temp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # ffmpeg needs the suffix
    try:
        writer: Any = imageio.get_writer(temp, format="FFMPEG", mode="I", fps=VIDEO_FPS)
        with writer:
            for frame in frames:
                writer.append_data(frame)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def evaluate(
    policy: OpenLoop,
    keys: Sequence[EpisodeKey],
    out: str | Path,
    settings: dict[str, Any],
    *,
    max_steps: int | None = None,
    seed: int = 0,
    resolution: int = RESOLUTION,
    video: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    ranks: parallel.Ranks | None = None,
) -> dict[str, Any]:
    """Run the policy on the episodes ``keys`` in the run directory ``out``; the summary (:func:`summarize`).

    ``settings`` (model, dtype, ...) are written to ``run.json`` with the suite, max_steps, seed and the
    cameras' ``resolution`` (upstream's 256 by default; the policy's images are 224² whatever it is). Each
    rank of ``ranks`` runs its share of the episodes not yet recorded, with its own simulator; every rank
    returns the summary.
    """

    def episode(env: LiberoWorld, key: Episode, frames: list[np.ndarray] | None) -> dict[str, Any]:
        return run_episode(env, policy, key, frames)

    failed = {"success": False, "steps": 0, "queries": 0, "error": None, **dict.fromkeys(TIMING_FIELDS, 0.0)}
    return run_episodes(episode, keys, out, {**settings, "max_steps": max_steps, "resolution": resolution},
                        failed=failed, seed=seed, resolution=resolution, max_steps=max_steps, video=video,
                        resume=resume, overwrite=overwrite, progress=progress, ranks=ranks)


def run_episodes(
    episode: EpisodeFn,
    keys: Sequence[EpisodeKey],
    out: str | Path,
    settings: dict[str, Any],
    *,
    failed: dict[str, Any],
    seed: int = 0,
    render: bool = True,
    resolution: int = RESOLUTION,
    max_steps: int | None = None,
    video: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    ranks: parallel.Ranks | None = None,
    run: RunDir | None = None,
) -> dict[str, Any]:
    """Run ``episode`` on each of ``keys`` (one suite) in the run directory ``out``, sharded over ``ranks``;
    the summary (:func:`summarize`) of every record, on every rank.

    ``failed`` is the result of an episode that raised before it ran (its ``error`` is added); the episodes run
    in one :class:`~vla_lab.worlds.libero.LiberoWorld` per rank (``render=False``: simulators without cameras,
    else rendering at ``resolution``; ``max_steps``: its step limit, default the suite's). ``settings``
    go to ``run.json`` with the suite and the seed. ``run`` is the directory's kind (default: :func:`run_dir`,
    ``eval libero``'s); a run that fails before its first record leaves nothing behind.
    """
    ranks = parallel.Ranks() if ranks is None else ranks
    out = Path(out)
    suites = {k[0] for k in keys}
    if len(suites) != 1:
        raise InputError(f"keys: got suites {sorted(suites)}, expected episodes of one suite")
    suite = suites.pop()
    settings = {**settings, "suite": suite, "seed": seed}
    run = run_dir(out) if run is None else run
    run.claim(settings, resume=resume, overwrite=overwrite, ranks=ranks)
    done = {record_key(r): r for r in read_records(out / EPISODES_FILE)} if resume else {}
    outside = sorted(set(done) - set(keys))
    if outside:  # the summary would count episodes this run was not asked for
        _, task, init_state = outside[0]
        raise InputError(f"--resume: got {len(outside)} recorded episode(s) in {out / EPISODES_FILE} outside this "
                         f"run's episodes (first: task {task}, init state {init_state}), expected --tasks and "
                         "--init-states / --trials that include every recorded episode")
    with run.guard():
        if video:
            (out / VIDEO_DIR).mkdir(exist_ok=True)
        env = LiberoWorld(suite, resolution=resolution, seed=seed, max_steps=max_steps, render=render)

        def compute(key: EpisodeKey) -> dict[str, Any]:
            _, task, init_state = key
            info = task_info(suite, task)
            frames: list[np.ndarray] | None = [] if video else None
            try:
                result = episode(env, env.episode(task, init_state), frames)
            except Exception as exc:  # the episode could not start: a failed episode, as any other
                result = {**failed, "error": error_text(exc)}
            record = {"suite": suite, "task": task, "task_name": info["task_name"],
                      "instruction": info["instruction"], "init_state": init_state, "seed": seed, **result}
            if frames:
                _write_video(out / VIDEO_DIR / f"{suite}_task{task:02d}_init{init_state:02d}.mp4", frames)
            append_record(out / EPISODES_FILE, record)
            return record

        try:
            with interrupts.deferred():  # LIBERO's bare excepts must not swallow a Ctrl-C
                merged = parallel.run_shards(
                    sorted(set(keys)), compute, ranks, done=done,
                    progress=f"{suite} (rank 0 of {ranks.size})" if progress else None,
                    postfix=lambda rows: {"success": sum(r["success"] for r in rows)})
        finally:
            env.close()
        ordered = list(merged.values())
        summary = summarize(ordered, suite)
        if ranks.is_main:
            files.write_text(out / EPISODES_FILE, "".join(files.dumps(r, indent=None) + "\n" for r in ordered))
            files.write_json(out / RESULTS_FILE, {**summary, "settings": settings})
        parallel.barrier(ranks)
        return summary
