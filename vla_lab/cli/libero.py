"""``vla-lab eval libero``, ``vla-lab libero expert`` and ``vla-lab libero demos``: parsers and handlers
(target attention on LIBERO is ``vla-lab study target-attention --world libero``).

The model options of ``eval libero`` are those of the other commands (``--model NAME_OR_DIR``). Everything cheap
is checked before the model is loaded or a simulator is built: the options, that LIBERO is installed, the tasks
and init states, and that ``--out`` can hold this run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vla_lab import files, parallel
from vla_lab.cli import options
from vla_lab.errors import InputError
from vla_lab.libero import evaluate as libero_eval
from vla_lab.run_dir import RunDir
from vla_lab.worlds.libero import suites as libero_suites

#: The suite the scripted expert (:mod:`vla_lab.worlds.libero.expert`) is built for.
EXPERT_SUITE = "libero_spatial"


def register(sub: options.Subparsers) -> None:
    """Add ``eval`` (its ``libero`` benchmark) and ``libero`` (``expert``, ``demos``) to the
    subparsers of the ``vla-lab`` parser."""
    _add_eval_parser(sub)
    _add_libero_parser(sub)


def run(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab eval libero`` and of ``vla-lab libero <tool>``."""
    if args.command == "eval":
        return run_eval(args)
    handlers = {"demos": run_demos, "expert": run_expert}
    return handlers[args.tool](args)


def _add_eval_parser(sub: options.Subparsers) -> None:

    p = sub.add_parser("eval", help="closed-loop evaluation on a benchmark (LIBERO), sharded under torchrun")
    p.set_defaults(func=run)
    benchmarks = p.add_subparsers(dest="benchmark", required=True, parser_class=type(p))
    q = benchmarks.add_parser("libero", help="LIBERO with upstream's protocol (pip install -e '.[libero]')")
    options.add_model_arguments(q, attention=None, dtype_default=None)
    options.add_suite(q, f"one of {', '.join(libero_suites.SUITES)}, or a LIBERO-PRO / LIBERO-Plus perturbation "
                         "suite <suite>_<perturbation> with perturbation one of "
                         f"{', '.join(libero_suites.PERTURBATIONS)}")
    _add_episode_arguments(q, "vla_lab_eval")
    _add_resolution(q, None, f"camera resolution (default: {libero_eval.RESOLUTION} as upstream, or the resolution "
                             "of the demonstrations a vla-lab LIBERO model was trained on)")
    q.add_argument("--video", action="store_true", help="an MP4 per episode in <out>/videos")
    q.add_argument("--envs-per-process", dest="envs_per_process", type=int, default=1,
                   help="episodes run in lockstep per process, the policy queried once for all that ask together "
                        "(default 1); the records are those of 1 (the action head runs one sample at a time)")
    options.add_num_threads(q, 1, "torch CPU threads per process (default 1; records depend on it, so it is "
                                  "recorded)")


def _add_libero_parser(sub: options.Subparsers) -> None:
    from vla_lab.libero.demos import DEMO_RESOLUTION

    p = sub.add_parser("libero", help="LIBERO tools: the scripted expert, demonstrations (pip install -e '.[libero]')")
    p.set_defaults(func=run)
    tools = p.add_subparsers(dest="tool", required=True, parser_class=type(p))
    q = tools.add_parser("expert", help="run the scripted expert (physics only) and record its success")
    options.add_suite(q, "the suite (only libero_spatial has an expert)", EXPERT_SUITE)
    _add_episode_arguments(q, "vla_lab_expert")
    q = tools.add_parser("demos", help="expert demonstrations in LIBERO's HDF5 layout (successful episodes only)")
    options.add_suite(q, "the suite (only libero_spatial has an expert)", EXPERT_SUITE)
    q.add_argument("--episodes-per-task", dest="trials", type=int,
                   help="run init states 0..N-1 of each task, keep the successes (default: all 50)")
    _add_resolution(q, DEMO_RESOLUTION,
                    f"camera resolution of the stored images (default {DEMO_RESOLUTION}, LIBERO's own)")
    _add_episode_arguments(q, "vla_lab_demos", trials=False)
    q.set_defaults(trials_flag="--episodes-per-task")


def _add_resolution(q: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """``--resolution``: the camera's size in pixels (checked in :func:`_plan`)."""
    q.add_argument("--resolution", type=int, default=default, help=help)


def _add_episode_arguments(q: argparse.ArgumentParser, out_root: str, trials: bool = True) -> None:
    """The options of a run of LIBERO episodes: which episodes, the simulator, the run directory, output."""
    options.add_tasks(q)
    if trials:
        q.add_argument("--trials", type=int, help="init states 0..N-1 per task (default: all 50, as upstream)")
    options.add_init_states(q, "init states A:B (A included, B not)")
    options.add_max_steps(q, "steps per episode (default: the suite's)")
    q.add_argument("--env-seed", dest="env_seed", type=options.seed, default=0,
                   help="simulator seed (default 0, as upstream)")
    options.add_out(q, f"run directory (default: ./{out_root}/<suite>)")
    options.add_resume(q, "continue the run in --out, skipping recorded episodes")
    options.add_overwrite(q)
    options.add_no_progress(q)
    options.add_json(q)


def model_name(args: argparse.Namespace) -> str:
    """The model as ``run.json`` records it: a shipped model as ``shipped <name>``, a directory resolved."""
    from vla_lab import registry

    name = args.model
    if name in registry.list_models("shipped"):
        return f"shipped {name}"
    path = registry.path_of(name)
    if name.startswith(registry.RANDOM_PREFIX) or path is None:
        return options.model_source(args)
    return str(path.resolve())


def _model_directory(args: argparse.Namespace) -> Path | None:
    """The checkpoint directory of ``--model`` (None for a preset)."""
    from vla_lab import registry

    return registry.path_of(args.model)


def camera_resolution(args: argparse.Namespace) -> int:
    """``--resolution``, else that of the demonstrations the model was trained on, else upstream's 256."""
    from vla_lab.libero.models import camera_resolution as model_resolution

    if args.resolution is not None:
        return int(args.resolution)
    return model_resolution(_model_directory(args))


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the model is given, settled before it is loaded: ``dtype`` (``--dtype``, else the model's own:
    bfloat16 for a released checkpoint as upstream, the saved dtype for vla-lab's) and ``prompt`` (``--prompt``,
    else the model's own: qwen-chat for a released checkpoint as upstream, what vla-lab's were trained with)."""
    from vla_lab.config import VLAConfig
    from vla_lab.model import default_dtype, stored_prompt

    directory = _model_directory(args)
    args.dtype = args.dtype or default_dtype(directory)
    if args.prompt is None:
        args.prompt = stored_prompt(directory) if directory is not None else VLAConfig.preset(args.model).prompt
    return {"dtype": args.dtype, "prompt": args.prompt}


def _plan(args: argparse.Namespace) -> tuple[str, Any]:
    """The suite and the episode keys that the options name, checked (LIBERO must be installed)."""
    suite = libero_suites.check_suite(args.suite, "--suite")
    tasks = options.parse_tasks(args.tasks)
    init_states = options.parse_init_states(args.trials, args.init_states, getattr(args, "trials_flag", "--trials"))
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError(f"--max-steps: got {args.max_steps}, expected a positive integer")
    resolution = getattr(args, "resolution", None)
    if resolution is not None and not 16 <= resolution <= 1024:
        raise InputError(f"--resolution: got {resolution}, expected a camera size in pixels, 16..1024")
    options.check_libero_selection(suite, tasks, {getattr(args, "trials_flag", "--trials") if args.trials is not None
                                                  else "--init-states": init_states})
    from vla_lab.worlds.libero import LiberoWorld

    return suite, [e.key for e in LiberoWorld(suite).episodes(tasks, init_states)]


def _claim(run: RunDir, settings: dict[str, Any], args: argparse.Namespace, work: Callable[[], int]) -> int:
    """Check the run directory on rank 0 before ``work`` (which claims it); the check creates nothing."""
    if parallel.ranks_from_env().is_main:  # the other ranks learn rank 0's verdict when the run starts
        run.check(settings, resume=args.resume, overwrite=args.overwrite)
    return work()


#: The settings of a model's evaluation that its ``--json`` summary and table repeat.
SHOWN_SETTINGS = ("model", "prompt", "dtype", "unnorm_key", "num_threads", "resolution", "device", "cpu", "vla_lab")


def _report(summary: dict[str, Any], suite: str, out: Path, ranks: parallel.Ranks, as_json: bool,
            command: str, settings: dict[str, Any] | None = None) -> None:
    """The summary on stdout (a table, or JSON), with the model's ``settings`` when given; on stderr a warning
    when episodes failed with an error."""
    shown = {k: settings[k] for k in SHOWN_SETTINGS if k in settings} if settings else {}
    if as_json:
        result = {"suite": suite, **shown, "episodes": summary["episodes"], "success_rate": summary["success_rate"],
                  "success_ci95": summary["success_ci95"], "success_ci95_tasks": summary.get("success_ci95_tasks"),
                  "intervals": summary.get("intervals"), "by_task": summary["by_task"],
                  "num_episodes": summary["num_episodes"], "errors": summary["errors"], "out": str(out),
                  "world_size": ranks.size}
        print(files.dumps(result))
    else:
        if shown:
            print(", ".join(f"{k} {v}" for k, v in shown.items()))
        low, high = summary["success_ci95"]
        tasks = summary.get("success_ci95_tasks")
        over_tasks = f"; [{tasks[0]:.1%}, {tasks[1]:.1%}] resampling tasks" if tasks else ""
        print(f"{suite}: success {summary['success_rate']:.1%} [{low:.1%}, {high:.1%}] over "
              f"{summary['num_episodes']} episodes (Wilson{over_tasks}; {ranks.size} process(es))")
        for task, row in summary["by_task"].items():
            lo, hi = row["success_ci95"]
            print(f"  task {task:>2} {row['success_rate']:6.1%} [{lo:.1%}, {hi:.1%}] n={row['num_episodes']:<3} "
                  f"{row['instruction']}")
        print(f"records in {out / libero_eval.EPISODES_FILE}, summary in {out / libero_eval.RESULTS_FILE}")
    if summary["errors"]:
        first = next(e["error"] for e in summary["episodes"] if e.get("error"))
        print(f"vla-lab {command}: warning: {summary['errors']} episode(s) failed with an error, e.g. {first}",
              file=sys.stderr)


def _check_expert_suite(args: argparse.Namespace) -> None:
    if args.suite != EXPERT_SUITE:
        raise InputError(f"--suite: got {args.suite!r}, expected {EXPERT_SUITE!r} (the expert is built for its "
                         "pick-a-bowl-and-place-it-on-the-plate tasks)")


def run_demos(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab libero demos``."""
    _check_expert_suite(args)
    suite, keys = _plan(args)
    from vla_lab.libero.demos import _require_h5py

    _require_h5py()
    out = Path(args.out or Path("vla_lab_demos") / suite)
    settings = {"suite": suite, "model": "scripted expert", "max_steps": args.max_steps, "seed": args.env_seed,
                "resolution": args.resolution}

    def work() -> int:
        from vla_lab.libero.demos import generate

        with parallel.process_group("cpu") as ranks:
            manifest = generate(suite, keys, out, resolution=args.resolution, max_steps=args.max_steps,
                                seed=args.env_seed, resume=args.resume, overwrite=args.overwrite,
                                progress=args.progress, ranks=ranks)
        if ranks.is_main:
            if args.json:
                print(files.dumps({**manifest, "out": str(out), "world_size": ranks.size}))
            else:
                run = manifest["run"]
                low, high = run["success_ci95"]
                print(f"{suite}: {manifest['num_demos']} demonstrations ({manifest['total']} steps) kept of "
                      f"{run['num_episodes']} expert episodes, success {run['success_rate']:.1%} "
                      f"[{low:.1%}, {high:.1%}], {args.resolution} px ({ranks.size} process(es))")
                for task, row in manifest["tasks"].items():
                    print(f"  task {task:>2} {row['num_demos']:>3} demos  {row['file']}")
                print(f"manifest in {out / 'demos.json'}")
        return 0

    from vla_lab.libero.demos import demos_run_dir

    return _claim(demos_run_dir(out), settings, args, work)


def run_expert(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab libero expert``."""
    _check_expert_suite(args)
    suite, keys = _plan(args)
    out = Path(args.out or Path("vla_lab_expert") / suite)
    settings = {"suite": suite, "model": "scripted expert", "max_steps": args.max_steps, "seed": args.env_seed}

    def work() -> int:
        from vla_lab.worlds.libero.expert import FAILED, expert_record

        def episode(suite_world: Any, key: Any, frames: Any) -> dict[str, Any]:
            return expert_record(suite_world.simulator(key), int(key.key[2]), max_steps=args.max_steps)

        with parallel.process_group("cpu") as ranks:
            summary = libero_eval.run_episodes(
                libero_eval.one_at_a_time(episode), keys, out,
                {"model": settings["model"], "max_steps": args.max_steps}, failed=FAILED,
                seed=args.env_seed, render=False, resume=args.resume, overwrite=args.overwrite,
                progress=args.progress, ranks=ranks, run=expert_run)
        if ranks.is_main:
            _report(summary, suite, out, ranks, args.json, "libero")
        return 0

    expert_run = libero_eval.run_dir(out, libero_eval.EXPERT_KIND)
    return _claim(expert_run, settings, args, work)


def run_eval(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab eval libero``."""
    suite, keys = _plan(args)
    if args.num_threads < 1:
        raise InputError(f"--num-threads: got {args.num_threads}, expected a positive integer")
    if args.envs_per_process < 1:
        raise InputError(f"--envs-per-process: got {args.envs_per_process}, expected a positive integer")
    args.resolution = camera_resolution(args)
    out = Path(args.out or Path("vla_lab_eval") / suite)
    settings = {"suite": suite, "model": model_name(args), **model_settings(args), "num_threads": args.num_threads,
                "max_steps": args.max_steps, "seed": args.env_seed, "resolution": args.resolution}
    return _claim(libero_eval.run_dir(out), settings, args, lambda: _evaluate(args, suite, keys, out, settings))


def _evaluate(args: argparse.Namespace, suite: str, keys: Any, out: Path, settings: dict[str, Any]) -> int:
    """``--num-threads`` torch threads for the evaluation, the caller's afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.num_threads)
    try:
        return _evaluate_model(args, suite, keys, out, settings)
    finally:
        torch.set_num_threads(threads)


def _evaluate_model(args: argparse.Namespace, suite: str, keys: Any, out: Path, settings: dict[str, Any]) -> int:
    import torch

    from vla_lab.bench.inference import cpu_model
    from vla_lab.version import __version__

    with parallel.process_group(args.device) as ranks:
        args.device = parallel.device_for(args.device, ranks)
        model = options.load_model(args)
        from vla_lab.policy import Policy
        from vla_lab.worlds.libero import LiberoWorld

        model.eval().set_batch_invariant(args.envs_per_process > 1)
        policy = Policy(model, LiberoWorld(suite), execute=libero_eval.NUM_OPEN_LOOP_STEPS)
        recorded = {**settings, "device": args.device, "unnorm_key": policy.unnorm_key,
                    "envs_per_process": args.envs_per_process,
                    "cpu": cpu_model(), "torch": torch.__version__, "vla_lab": __version__}
        summary = libero_eval.evaluate(
            policy, keys, out, recorded, max_steps=args.max_steps, seed=args.env_seed, resolution=args.resolution,
            video=args.video, resume=args.resume, overwrite=args.overwrite, progress=args.progress, ranks=ranks,
            envs_per_process=args.envs_per_process,
        )
    if not ranks.is_main:
        return 0
    _report(summary, suite, out, ranks, args.json, "eval", recorded)
    return 0
