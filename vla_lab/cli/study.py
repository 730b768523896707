"""``vla-lab study NAME [--world tabletop|libero]``: the parser and the handler.

Everything cheap is checked before any model is loaded: the options, the models named, and that ``--out``
can hold this run (a run directory is never reused without ``--resume`` or ``--overwrite``). Under
``torchrun --nproc-per-node N -m vla_lab study ...`` the scenes are sharded over the processes and rank 0
writes and prints what one process would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vla_lab import files, parallel
from vla_lab.cli import options
from vla_lab.errors import InputError


def register(sub: options.Subparsers) -> None:
    """Add ``study`` to the subparsers of the ``vla-lab`` parser."""
    from vla_lab.studies import STUDIES

    p = sub.add_parser("study", help="a study over many scenes: per-scene records, intervals, paired tests "
                                     "(sharded under torchrun)")
    p.add_argument("name", choices=sorted(STUDIES), help="; ".join(f"{k}: {v.description}"
                                                                  for k, v in sorted(STUDIES.items())))
    options.add_models(p, "models", "a shipped model name (e.g. tabletop-causal), random-init:<name> or a checkpoint "
                                    "directory (repeat; default: every shipped tabletop model)")
    p.add_argument("--world", choices=("tabletop", "libero"), default="tabletop",
                   help="the world the episodes are in (default tabletop; libero: where the study is written for it)")
    options.add_suite(p, "libero: the suite (default libero_spatial)", optional=True)
    options.add_tasks(p)
    options.add_init_states(p, "libero: init states A:B reported on (default 40:50, held out from training)")
    p.add_argument("--selection-states", dest="selection_states",
                   help="libero: init states A:B that selections are made on (default 0:5, training init states)")
    p.add_argument("--scenes", type=int, default=200, help="test scenes (default 200)")
    p.add_argument("--start", type=int, default=0, help="first test scene (default 0)")
    p.add_argument("--validation-scenes", dest="validation_scenes", type=int, default=50,
                   help="validation scenes for selections (default 50)")
    p.add_argument("--closed-loop-scenes", dest="closed_loop_scenes", type=int,
                   help="closed-loop episodes only on the first N scenes (default: every scene)")
    p.add_argument("--no-closed-loop", dest="closed_loop", action="store_false",
                   help="open-loop measures only (where the study has both)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=20, help="scenes per unit (default 20)")
    p.add_argument("--conditions", help="comma-separated: only these of the study's conditions (its baseline, e.g. "
                                        "none, always runs; default: every one). " + "; ".join(
                                            f"{k}: {','.join(v.conditions)}" for k, v in sorted(STUDIES.items())
                                            if v.conditions))
    options.add_max_steps(p, "steps per closed-loop episode (default: the world's; LIBERO: the suite's, as upstream)")
    options.add_seed(p, 0, "seed of random controls and bootstraps (default 0)")
    options.add_device(p, help="cpu or cuda (cuda:LOCAL_RANK under torchrun)")
    options.add_num_threads(p, 1, "torch CPU threads per process (default 1, as under torchrun; 0: torch's default)")
    options.add_prompt(p, options.EACH_MODEL_PROMPT_HELP)
    options.add_out(p, "run directory (default: ./vla_lab_study/<name>)")
    options.add_resume(p, "continue the run in --out, skipping finished units")
    options.add_overwrite(p)
    options.add_no_progress(p)
    options.add_json(p, 'print {"study", "records", "num_records", "summary", "tests"} as JSON')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab study``."""
    from vla_lab import registry
    from vla_lab.studies import StudySettings, run_study

    states = {flag: options.parse_init_states(None, getattr(args, flag.strip("-").replace("-", "_")), states_flag=flag)
              for flag in ("--init-states", "--selection-states")}
    tasks = options.parse_tasks(args.tasks)
    settings = StudySettings(
        study=args.name, models=list(args.models or []), world=args.world, suite=args.suite, tasks=tasks,
        init_states=None if states["--init-states"] is None else list(states["--init-states"]),
        selection_states=None if states["--selection-states"] is None else list(states["--selection-states"]),
        scenes=args.scenes, start=args.start,
        validation_scenes=args.validation_scenes, closed_loop_scenes=args.closed_loop_scenes,
        closed_loop=args.closed_loop, batch_size=args.batch_size, max_steps=args.max_steps, seed=args.seed,
        device=args.device,
        num_threads=args.num_threads, prompt=args.prompt,
        conditions=None if args.conditions is None else [c.strip() for c in args.conditions.split(",") if c.strip()],
    )
    if settings.world == "libero":
        options.check_libero_selection(str(settings.suite), settings.tasks, {
            "--init-states": settings.init_states, "--selection-states": settings.selection_states})
    registry.resolve(settings.models, world=settings.world_name)
    out = Path(args.out or Path("vla_lab_study") / args.name)
    with parallel.process_group(args.device) as place:
        existed = out.exists()
        try:
            result = run_study(settings, out, resume=args.resume, overwrite=args.overwrite, progress=args.progress,
                               ranks=place)
        except BaseException:
            if place.is_main and not existed and out.is_dir() and files.is_empty_dir(out):
                out.rmdir()  # a start that failed leaves no empty run directory behind
            raise
    if not place.is_main:
        return 0
    if args.json:
        print(files.dumps(result.to_json()))
        return 0
    _print_summary(result)
    return 0


def _print_summary(result: Any) -> None:
    summary = result.summary
    print(f"study {result.study}: {len(result.records)} records in {result.out / 'records.parquet'}")
    if summary.empty:
        raise InputError("study: got no summary rows, expected at least one (no scene was measured)")
    keys = [c for c in summary.columns if c not in ("n", "value", "ci95", "interval", "statistic", "trained_with",
                                                    "model_seed", "recipe", "random_init", "rule")
            and not c.startswith("n_")]

    def shown(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    for row in summary.to_dict(orient="records"):
        label = " ".join(shown(row[k]) for k in keys if row.get(k) is not None and str(row[k]) not in ("nan", "<NA>"))
        low, high = row["ci95"]
        print(f"  {label}: {row['value']:.4g} [{low:.4g}, {high:.4g}] n={row['n']}")
    for row in result.tests.to_dict(orient="records"):
        print(f"  test {row['model']} {row.get('source') or ''} {row.get('comparison', '')} ({row['metric']}): "
              f"{row['name']} "
              f"statistic {row['statistic']:.4g}, p = {row['p']:.3g}, n={row['n']}")
    print(f"summary in {result.out / 'summary.json'}", file=sys.stdout)
