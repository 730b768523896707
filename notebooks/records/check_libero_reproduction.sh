#!/bin/bash
# Re-run recorded held-out episodes of the shipped LIBERO models with 'vla-lab eval libero' as it is today (its
# defaults: the model's float32 weights, its In/Out prompt, one torch thread per process) and write
# libero-eval/reproduction.json: each re-run record against the committed one in libero-eval/ (every field but the
# timings), and the re-runs against each other (same machine: one process, two ranks under torchrun, two
# threads). Fails if the re-runs disagree with each other. Run from the repository root with the libero extra
# installed (about 15 min on the project's 2-core CPU machine).
set -euo pipefail
RUN=runs/libero-reproduction
REC=notebooks/records/libero-eval
export MUJOCO_GL=egl
rm -rf $RUN
EVAL="-m vla_lab eval libero --suite libero_spatial --tasks 0 --no-progress"
for MASK in causal bidirectional; do
  python $EVAL --model libero-spatial-$MASK --init-states 44:48 --num-threads 1 --out $RUN/$MASK-1-process > /dev/null
done
torchrun --standalone --nproc-per-node 2 $EVAL --model libero-spatial-causal --init-states 40:50 --num-threads 1 \
    --out $RUN/causal-2-ranks > /dev/null
python $EVAL --model libero-spatial-causal --init-states 47:48 --num-threads 2 --out $RUN/causal-2-threads > /dev/null
python - "$RUN" "$REC" <<'PY'
import datetime, json, pathlib, sys
run, rec = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
timing = {"policy_ms", "sim_ms", "reset_ms"}
key = lambda r: (r["task"], r["init_state"])
strip = lambda r: {k: v for k, v in r.items() if k not in timing}
records = lambda path: {key(r): r for r in map(json.loads, path.open())}
rows, runs = [], {}
for directory in sorted(run.iterdir()):
    mask, how = directory.name.split("-", 1)
    settings = json.loads((directory / "run.json").read_text())
    runs[directory.name] = {k: settings[k] for k in ("model", "prompt", "dtype", "num_threads", "cpu", "torch",
                                                     "vla_lab")}
    committed = records(rec / f"libero-spatial-{mask}" / "episodes.jsonl")
    first = records(run / f"{mask}-1-process" / "episodes.jsonl")
    for k, r in sorted(records(directory / "episodes.jsonl").items()):
        rows.append({"run": directory.name, "task": k[0], "init_state": k[1], "success": r["success"],
                     "steps": r["steps"], "committed_success": committed[k]["success"],
                     "committed_steps": committed[k]["steps"], "identical_to_committed": strip(r) == strip(committed[k]),
                     "identical_to_1_process": strip(r) == strip(first[k]) if k in first else None})
again = [r["identical_to_1_process"] for r in rows
         if not r["run"].endswith("1-process") and r["identical_to_1_process"] is not None]
distinct = {(r["run"].split("-")[0], r["task"], r["init_state"]): r for r in rows}.values()
record = {"command": "bash notebooks/records/check_libero_reproduction.sh",
          "committed": f"{rec}/libero-spatial-<mask>/episodes.jsonl (made 2026-12-01 on another machine; its CPU was not "
                       "recorded)",
          "date": datetime.date.today().isoformat(), "runs": runs, "episodes": rows,
          "distinct_episodes": len(distinct),
          "distinct_identical_to_committed": sum(r["identical_to_committed"] for r in distinct),
          "distinct_same_outcome_as_committed": sum(r["success"] == r["committed_success"] for r in distinct),
          "max_step_difference": max(abs(r["steps"] - r["committed_steps"]) for r in rows),
          "reruns_compared": len(again), "reruns_identical": sum(again)}
(rec / "reproduction.json").write_text(json.dumps(record, indent=2) + "\n")
sys.exit(0 if all(again) else 1)
PY
