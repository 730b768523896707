"""``vla-lab libero attention``: target attention of LIBERO models on real frames, against random init.

Observations come from the simulator (:func:`vla_lab.worlds.libero.observations`: the scene after the settle
steps of an init state, with the object masks), two sets of them: ``selection`` (training init states) picks
each model's depth, ``report`` (held-out init states) is where the ratio is reported. Every model is paired
with its random-init baseline (the run's initial weights, :func:`vla_lab.registry.random_init_of`), measured
on the same observations.

Writes ``records.parquet`` (tidy: model, source, split, task, init_state, depth, region, value) and
``summary.json``: per model and source the depth chosen on ``selection``, the ratio of means on ``report``
with its 95 % bootstrap interval over scenes and ``n``, every depth's ratio, and per trained model and source
a Wilcoxon signed-rank test of its per-scene ratios against its random-init baseline's (each at its own
chosen depth). The simulator work is sharded over torchrun ranks by task; rank 0 measures and writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vla_lab import files, interp, parallel, registry
from vla_lab.libero import target_attention as ta
from vla_lab.model import VLAAdapter
from vla_lab.registry import RANDOM_PREFIX
from vla_lab.run_dir import RunDir
from vla_lab.stats import ratio_of_means_interval, wilcoxon_signed_rank

RECORDS, SUMMARY, SETTINGS = "records.parquet", "summary.json", "settings.json"
ATTENTION_KIND = "libero-attention"


def attention_run_dir(out: str | Path) -> RunDir:
    """The run directory of ``libero attention`` (not resumable): ``settings.json``, the records, the summary."""
    return RunDir(out, ATTENTION_KIND, markers=(SETTINGS, RECORDS, SUMMARY), records=(RECORDS, SUMMARY),
                  settings_file=SETTINGS, resumable=False)


def scene_ratios(values: pd.DataFrame, depth: int, column: str) -> pd.DataFrame:
    """Per observation at ``depth``: target and distractor means and their ratio (scenes with both)."""
    at = values[values[column] == depth].pivot_table(index=["task", "init_state"], columns="region", values="value")
    at = at.dropna(subset=["target", "distractors"])
    at["ratio"] = at["target"] / at["distractors"]
    return at.reset_index()


def measure(
    models: Mapping[str, VLAAdapter], selection: Sequence[Mapping[str, Any]], report: Sequence[Mapping[str, Any]],
    sources: Sequence[str] = interp.SOURCES, n_resamples: int = 9999,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Records and summary (see the module docstring) of ``models`` (name -> model; a name
    ``random-init:<name>`` is compared with ``<name>``)."""
    frames, rows, chosen = [], [], {}
    for name, model in models.items():
        for source in sources:
            column = interp.SOURCE_DEPTH[source]
            parts = {split: ta.target_attention(model, obs, source) for split, obs in
                     (("selection", selection), ("report", report))}
            for split, values in parts.items():
                frames.append(values.rename(columns={column: "depth"}).assign(model=name, source=source, split=split))
            depth = int(ta.ratio_by_depth(parts["selection"]).idxmax())
            ratios = ta.ratio_by_depth(parts["report"])
            per_scene = scene_ratios(parts["report"], depth, column)
            low, high = ratio_of_means_interval(per_scene["target"], per_scene["distractors"], n_resamples=n_resamples)
            chosen[(name, source)] = per_scene
            rows.append({"model": name, "source": source, "depth_name": column, "depth": depth,
                         "rule": f"argmax of the ratio on {len(selection)} selection observations",
                         "value": float(ratios.loc[depth]), "ci95": [low, high], "n": int(len(per_scene)),
                         "report_ratio_by_depth": {int(k): float(v) for k, v in ratios.items()},
                         "selection_ratio_by_depth": {int(k): float(v) for k, v in
                                                      ta.ratio_by_depth(parts["selection"]).items()}})
    tests = []
    for (name, source), trained in chosen.items():
        baseline = chosen.get((RANDOM_PREFIX + name, source))
        if name.startswith(RANDOM_PREFIX) or baseline is None:
            continue
        merged = trained.merge(baseline, on=["task", "init_state"], suffixes=("", "_random"))
        result = wilcoxon_signed_rank(merged["ratio"], merged["ratio_random"])
        tests.append({"model": name, "source": source, "test": result.name, "statistic": result.statistic,
                      "p": result.p, "n": result.n, "note": result.note})
    columns = ["model", "source", "split", "task", "init_state", "depth", "region", "value"]
    records = pd.concat(frames, ignore_index=True)[columns]
    return records, {"rows": rows, "tests": tests, "n_selection": len(selection), "n_report": len(report)}


def load_models(names: Sequence[str], prompt: str | None = None) -> dict[str, tuple[VLAAdapter, Path]]:
    """Model names of :mod:`vla_lab.registry` (shipped LIBERO models, checkpoint directories) -> (model,
    directory), each followed by its random-init baseline; ``prompt`` overrides each model's prompt."""
    out: dict[str, tuple[VLAAdapter, Path]] = {}
    for spec in registry.resolve(list(names), world="libero_spatial"):
        directory = Path(spec.path)
        out[spec.name] = (registry.load(spec, prompt=prompt), directory)
        baseline = registry.random_init_of(spec)
        out[baseline.name] = (registry.load(baseline, prompt=prompt), directory)
    return out


def run(
    names: Sequence[str], out: str | Path, *, suite: str = "libero_spatial", tasks: Sequence[int] | None = None,
    selection_states: Sequence[int] = range(5), report_states: Sequence[int] = range(40, 50),
    overwrite: bool = False, ranks: parallel.Ranks | None = None, prompt: str | None = None,
) -> dict[str, Any] | None:
    """Observations (sharded by task), then on rank 0 :func:`measure` of the models (``prompt`` overrides each
    model's); the summary (rank 0)."""
    from vla_lab.worlds.libero.env import num_tasks, observations

    ranks = parallel.Ranks() if ranks is None else ranks
    out = Path(out)
    models = load_models(names, prompt)
    tasks = list(range(num_tasks(suite))) if tasks is None else [int(t) for t in tasks]
    settings = {"suite": suite, "models": list(names), "tasks": tasks, "selection_states": list(selection_states),
                "report_states": list(report_states),
                "prompt_by_model": {label: model.config.prompt for label, (model, _) in models.items()}}

    run = attention_run_dir(out)
    run.claim(settings, overwrite=overwrite, ranks=ranks)
    with run.guard():  # a run that fails before its records leaves nothing behind
        states = sorted({*selection_states, *report_states})
        mine = []
        for task in parallel.shard(tasks, ranks):
            mine += observations(suite, [task], states)
        gathered = [o for part in parallel.gather(mine, ranks) for o in part]
        if not ranks.is_main:
            parallel.barrier(ranks)
            return None
        gathered.sort(key=lambda o: (o["task"], o["init_state"]))
        selection = [o for o in gathered if o["init_state"] in set(selection_states)]
        report = [o for o in gathered if o["init_state"] in set(report_states)]
        records, summary = measure({k: m for k, (m, _) in models.items()}, selection, report)
        files.write_atomic(out / RECORDS, lambda temporary: records.to_parquet(temporary, index=False))
        summary = {"settings": settings, **summary}
        files.write_json(out / SUMMARY, summary)
        parallel.barrier(ranks)
        return summary


__all__ = ["load_models", "measure", "run", "scene_ratios"]
