"""Closed-loop evaluation on LIBERO with upstream's protocol, resumable and sharded over processes.

An episode (:func:`run_episode`): reset to the task's init state ``i`` (plus the settle steps), then query
the policy with :func:`~vla_lab.worlds.libero.observation.prepare_observation`'s output every
:data:`NUM_OPEN_LOOP_STEPS` steps and execute the whole post-processed chunk open loop; success as soon as
the simulator reports ``done``, failure after ``max_steps`` steps. An exception inside an episode is a
failure whose message is recorded, and the evaluation goes on (as upstream's).

A run (:func:`evaluate`) owns a directory: ``run.json`` (its settings), ``episodes.jsonl`` (one record per
finished episode, appended and flushed as each ends, so a killed run loses at most the episodes in
progress; ``resume`` skips the episodes recorded there), ``results.json`` (the summary, with Wilson 95 %
intervals) and, with ``video``, ``videos/`` (one MP4 per episode). Under torchrun the episodes are
shared round robin over the ranks (:mod:`vla_lab.parallel`); rank 0 writes the merged records sorted by
(suite, task, init state), the same files as a single process writes. With ``envs_per_process`` > 1 each rank
runs that many episodes in lockstep (:func:`run_together`), appending their records when the group ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_lab import files, interrupts, parallel
from vla_lab.errors import InputError, error_text
from vla_lab.run_dir import RunDir
from vla_lab.stats import cluster_mean_interval, wilson_interval
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
#: (worlds, one episode per world, frames or None per episode) -> the result fields of each episode.
GroupFn = Callable[[Sequence[LiberoWorld], Sequence[Episode], Sequence["list[np.ndarray] | None"]],
                   Sequence[dict[str, Any]]]


def one_at_a_time(episode: EpisodeFn) -> GroupFn:
    """The :data:`GroupFn` of an episode function that runs in one world (the scripted expert's)."""
    def group(worlds: Sequence[LiberoWorld], episodes: Sequence[Episode],
              frames: Sequence[list[np.ndarray] | None]) -> list[dict[str, Any]]:
        return [episode(world, key, kept) for world, key, kept in zip(worlds, episodes, frames)]

    return group


def run_episode(
    env: LiberoWorld, policy: OpenLoop, episode: Episode, frames: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """One episode (:func:`vla_lab.worlds.runner.run_lockstep`); ``{"success", "steps", "queries", "error",
    "policy_ms", "sim_ms", "reset_ms"}``. ``policy``: e.g. :class:`vla_lab.policy.Policy` of a model in ``env``.

    ``frames`` (if given) receives the agentview frame of every step, rotated 180° as the policy sees it.
    ``policy_ms`` is the time in the policy's chunk function, ``reset_ms`` the reset with its settle steps and
    ``sim_ms`` the steps (observations included). An exception ends the episode as a failure with its ``error``.
    """
    return run_together([env], policy, [episode], [frames])[0]


def run_together(
    envs: Sequence[LiberoWorld], policy: OpenLoop, episodes: Sequence[Episode],
    frames: Sequence[list[np.ndarray] | None] | None = None,
) -> list[dict[str, Any]]:
    """``episodes[i]`` in ``envs[i]``, in lockstep with one batched query for the slots that ask together; one
    :func:`run_episode` result per episode, each what it would be alone when the policy's batched query gives
    each sample what it gives it alone (:meth:`vla_lab.model.VLAAdapter.set_batch_invariant`). ``policy_ms`` is
    the episode's share of the batched queries."""
    kept = list(frames) if frames is not None else [None] * len(envs)

    def keep_frame(slot: int) -> None:
        env = envs[slot]
        if kept[slot] is not None and env.raw is not None:
            kept[slot].append(np.ascontiguousarray(env.raw["agentview_image"][::-1, ::-1]))  # type: ignore[union-attr]

    def stepped(slot: int, step: Step) -> None:
        if not step.done:
            keep_frame(slot)

    for env, slot_frames in zip(envs, kept):
        env.every_frame = slot_frames is not None
    try:
        runs = run_lockstep(envs, episodes, policy, on_reset=lambda slot, _: keep_frame(slot), on_step=stepped,
                            isolate=True)
    finally:
        for env in envs:
            env.every_frame = False
    return [{"success": run.success, "steps": run.steps, "queries": run.queries, "error": run.error,
             "policy_ms": round(policy.slot_seconds[slot] * 1e3, 1), "sim_ms": round(run.step_seconds * 1e3, 1),
             "reset_ms": round(run.reset_seconds * 1e3, 1)} for slot, run in enumerate(runs)]


def untimed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without its :data:`TIMING_FIELDS`: what is the same on every run of the same episode."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


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


#: What each interval of :func:`summarize` resamples.
INTERVALS = {"success_ci95": "Wilson over episodes",
             "success_ci95_tasks": "bootstrap over tasks (percentile, cluster; seed 0): a task's init states share one "
                                   "layout, so its episodes are not independent; null with fewer than two tasks"}


def summarize(records: Sequence[dict[str, Any]], suite: str) -> dict[str, Any]:
    """Success rate with its Wilson 95 % interval, overall and per task, and overall the interval that resamples tasks
    (:data:`INTERVALS`); ``episodes`` last."""

    def rate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        wins = sum(bool(r["success"]) for r in rows)
        return {"num_episodes": len(rows), "successes": wins, "success_rate": wins / len(rows) if rows else 0.0,
                "success_ci95": list(wilson_interval(wins, len(rows))),
                "errors": sum(r.get("error") is not None for r in rows)}

    by_task = {}
    for task in sorted({int(r["task"]) for r in records}):
        rows = [r for r in records if int(r["task"]) == task]
        by_task[str(task)] = {"task_name": rows[0]["task_name"], "instruction": rows[0]["instruction"], **rate(rows)}
    clustered = None
    if len(by_task) >= 2:
        clustered = [float(v) for v in cluster_mean_interval([bool(r["success"]) for r in records],
                                                             [int(r["task"]) for r in records], seed=0)]
    return {"suite": suite, **rate(records), "success_ci95_tasks": clustered, "num_tasks": len(by_task),
            "intervals": INTERVALS, "by_task": by_task, "episodes": list(records)}


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
    envs_per_process: int = 1,
) -> dict[str, Any]:
    """Run the policy on the episodes ``keys`` in the run directory ``out``; the summary (:func:`summarize`).

    ``settings`` (model, dtype, ...) are written to ``run.json`` with the suite, max_steps, seed and the
    cameras' ``resolution`` (upstream's 256 by default; the policy's images are 224² whatever it is). Each
    rank of ``ranks`` runs its share of the episodes not yet recorded, ``envs_per_process`` at a time in
    lockstep (:func:`run_together`; the records are those of one at a time when the policy's batched query is
    batch-invariant); every rank returns the summary.
    """

    def together(worlds: Sequence[LiberoWorld], episodes: Sequence[Episode],
                 frames: Sequence[list[np.ndarray] | None]) -> list[dict[str, Any]]:
        return run_together(worlds, policy, episodes, frames)

    failed = {"success": False, "steps": 0, "queries": 0, "error": None, **dict.fromkeys(TIMING_FIELDS, 0.0)}
    return run_episodes(together, keys, out, {**settings, "max_steps": max_steps, "resolution": resolution},
                        failed=failed, seed=seed, resolution=resolution, max_steps=max_steps, video=video,
                        resume=resume, overwrite=overwrite, progress=progress, ranks=ranks,
                        envs_per_process=envs_per_process)


def run_episodes(
    together: GroupFn,
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
    envs_per_process: int = 1,
) -> dict[str, Any]:
    """Run ``together`` on the episodes ``keys`` (one suite), ``envs_per_process`` at a time (world ``i`` takes the
    ``i``-th contiguous part of a rank's share: :func:`vla_lab.parallel.run_shard_groups`; :func:`one_at_a_time`
    turns a one-world episode function into a group function), in the run directory ``out``, sharded over
    ``ranks``; the summary (:func:`summarize`) of every record, on every rank.

    ``failed`` is the result of an episode that raised before it ran (its ``error`` is added); the episodes run
    in ``envs_per_process`` :class:`~vla_lab.worlds.libero.LiberoWorld` per rank (``render=False``: simulators
    without cameras, else rendering at ``resolution``; ``max_steps``: its step limit, default the suite's).
    ``settings`` go to ``run.json`` with the suite and the seed. ``run`` is the directory's kind (default:
    :func:`run_dir`, ``eval libero``'s); a run that fails before its first record leaves nothing behind. Records
    are appended as each group of episodes ends.
    """
    if isinstance(envs_per_process, bool) or not isinstance(envs_per_process, int) or envs_per_process < 1:
        raise InputError(f"envs_per_process: got {envs_per_process!r}, expected a positive integer")
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
    parallel.barrier(ranks)  # every rank shards the same episodes: none records one before all have read these
    outside = sorted(set(done) - set(keys))
    if outside:  # the summary would count episodes this run was not asked for
        _, task, init_state = outside[0]
        raise InputError(f"--resume: got {len(outside)} recorded episode(s) in {out / EPISODES_FILE} outside this "
                         f"run's episodes (first: task {task}, init state {init_state}), expected --tasks and "
                         "--init-states / --trials that include every recorded episode")
    with run.guard():
        if video:
            (out / VIDEO_DIR).mkdir(exist_ok=True)
        worlds = [LiberoWorld(suite, resolution=resolution, seed=seed, max_steps=max_steps, render=render)
                  for _ in range(envs_per_process)]

        def compute(group: Sequence[EpisodeKey]) -> list[dict[str, Any]]:
            frames: list[list[np.ndarray] | None] = [[] if video else None for _ in group]
            results: list[dict[str, Any]] = [{} for _ in group]
            episodes: dict[int, Episode] = {}
            for slot, (_, task, init_state) in enumerate(group):
                try:
                    episodes[slot] = worlds[slot].episode(task, init_state)
                except Exception as exc:  # the episode could not start: a failed episode, as any other
                    results[slot] = {**failed, "error": error_text(exc)}
            started = list(episodes)
            try:
                found = list(together([worlds[s] for s in started], [episodes[s] for s in started],
                                      [frames[s] for s in started])) if started else []
            except Exception as exc:  # an episode function that does not isolate its episodes' errors
                found = [{**failed, "error": error_text(exc)} for _ in started]
            for slot, result in zip(started, found):
                results[slot] = result
            records = []
            for (_, task, init_state), result, kept in zip(group, results, frames):
                info = task_info(suite, task)
                record = {"suite": suite, "task": task, "task_name": info["task_name"],
                          "instruction": info["instruction"], "init_state": init_state, "seed": seed, **result}
                if kept:
                    _write_video(out / VIDEO_DIR / f"{suite}_task{task:02d}_init{init_state:02d}.mp4", kept)
                append_record(out / EPISODES_FILE, record)
                records.append(record)
            return records

        try:
            with interrupts.deferred():  # LIBERO's bare excepts must not swallow a Ctrl-C
                merged = parallel.run_shard_groups(
                    sorted(set(keys)), compute, ranks, envs_per_process, done=done,
                    progress=f"{suite} (rank 0 of {ranks.size})" if progress else None,
                    postfix=lambda rows: {"success": sum(r["success"] for r in rows)})
        finally:
            for world in worlds:
                world.close()
        ordered = list(merged.values())
        summary = summarize(ordered, suite)
        if ranks.is_main:
            files.write_text(out / EPISODES_FILE, "".join(files.dumps(r, indent=None) + "\n" for r in ordered))
            files.write_json(out / RESULTS_FILE, {**summary, "settings": settings})
        parallel.barrier(ranks)
        return summary
