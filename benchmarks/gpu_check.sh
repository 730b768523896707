#!/usr/bin/env bash
# The GPU check of issue 14 in one call, from the repository root (see benchmarks/README.md):
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine: results in $OUT (default /tmp/gpu_check_out)
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps on the CPU, tiny preset, few repeats
#                                            # (or GPU_CHECK_DRY_RUN=1)
#
# Steps, each within its own time cap and the whole run's budget; a failing step is recorded, the next runs:
#   install    wheels in .whl/ (benchmarks/fetch_gpu_wheels.sh) -> /tmp/site, on PYTHONPATH before the repo
#   env        versions, device, driver, commit                       -> gpu-env.json
#   fidelity   fast path vs VLAAdapter.forward, float32 and bfloat16  -> gpu-fidelity.json
#   bench      vla-lab bench, bfloat16, batch 1/8/32, both paths      -> gpu-bench.json
#   capture    vla-lab bench --capture segments full --capture-vision -> gpu-capture.json
#   notebooks  notebooks/0*.ipynb via nbclient, parameters injected   -> gpu-notebooks.json
#   summary    one status per step                                    -> gpu-check-summary.json
# plus gpu-check.log (everything the steps printed). Executed notebooks and figures stay in $GPU_CHECK_WORK.
#
# Environment: PYTHON (python3), OUT, GPU_CHECK_BUDGET_S (480 on the GPU, 900 dry), GPU_CHECK_NOTEBOOKS
# (numbers in order, "01 04 02 03"; empty: none), GPU_CHECK_INSTALL (1 on the GPU, 0 dry), GPU_CHECK_SITE
# (/tmp/site), GPU_CHECK_WORK (a new /tmp/gpu_check_work.XXXXXX), GPU_CHECK_COMMIT (recorded when the copy
# of the tree has no .git).
set -euo pipefail

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
START_S=$(date +%s)
OUT=${OUT:-/tmp/gpu_check_out}
SITE=${GPU_CHECK_SITE:-/tmp/site}
NOTEBOOKS=${GPU_CHECK_NOTEBOOKS-01 04 02 03}
if [[ $DRY_RUN == 1 ]]; then
    DEVICE=cpu PRESET=tiny BATCHES="1 2" FIDELITY_BATCHES="1 2" WARMUP=1 REPEATS=3 CAPTURE_REPEATS=2
    BUDGET=${GPU_CHECK_BUDGET_S:-900} INSTALL=${GPU_CHECK_INSTALL:-0} DRY_FLAG=--dry-run
else
    DEVICE=cuda PRESET=vla-adapter-pro-qwen2.5-0.5b BATCHES="1 8 32" FIDELITY_BATCHES="1 8" WARMUP=5 REPEATS=50
    CAPTURE_REPEATS=20 BUDGET=${GPU_CHECK_BUDGET_S:-480} INSTALL=${GPU_CHECK_INSTALL:-1} DRY_FLAG=
fi

mkdir -p "$OUT"
for name in gpu-env.json gpu-fidelity.json gpu-bench.json gpu-capture.json gpu-notebooks.json \
    gpu-check-summary.json gpu-check.log; do
    rm -f "${OUT:?}/$name"  # only this script's own files (a dry run may reuse its folder)
done
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check_work.XXXXXX)}
mkdir -p "$WORK/logs"
LOG=$OUT/gpu-check.log
STEPS=$WORK/steps.tsv
: >"$STEPS"

left_s() { echo $((BUDGET - ($(date +%s) - START_S))); }

# run_step NAME CAP_S OUTFILE COMMAND...: COMMAND within min(CAP_S, the budget left), its output in the log
run_step() {
    local name=$1 cap=$2 file=$3
    shift 3
    local left limit rc=0 t0 t1
    left=$(left_s)
    limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        echo "=== $name: skipped, ${left} s of the ${BUDGET} s budget left" | tee -a "$LOG"
        printf '%s\tskipped\t0\t%s\n' "$name" "$file" >>"$STEPS"
        return 0
    fi
    echo "=== $name (up to ${limit} s)" | tee -a "$LOG"
    t0=$(date +%s.%N)
    timeout --kill-after=20 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log" | tee -a "$LOG" || rc=$?
    t1=$(date +%s.%N)
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" \
        "$file" >>"$STEPS"
    echo "=== $name: exit status $rc" | tee -a "$LOG"
}

echo "gpu_check: dry run $DRY_RUN, device $DEVICE, preset $PRESET, budget ${BUDGET} s, out $OUT, work $WORK" \
    | tee -a "$LOG"

if [[ $INSTALL == 1 ]]; then
    shopt -s nullglob
    wheels=(.whl/*.whl)
    shopt -u nullglob
    if ((${#wheels[@]} == 0)); then
        echo "no wheels in .whl/: run benchmarks/fetch_gpu_wheels.sh here, carry .whl" >"$WORK/logs/install.log"
        cat "$WORK/logs/install.log" | tee -a "$LOG"
        printf 'install\t3\t0\t\n' >>"$STEPS"
    else
        run_step install 120 "" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "${wheels[@]}"
    fi
    export PYTHONPATH=$SITE:$REPO
else
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi

CHECK=("$PYTHON" -m vla_lab.bench.gpu_check)
# shellcheck disable=SC2086  # BATCHES and FIDELITY_BATCHES are lists of numbers
{
    run_step env 60 "$OUT/gpu-env.json" "${CHECK[@]}" env --out "$OUT/gpu-env.json"
    run_step fidelity 150 "$OUT/gpu-fidelity.json" "${CHECK[@]}" fidelity --preset "$PRESET" --device "$DEVICE" \
        --batch $FIDELITY_BATCHES --out "$OUT/gpu-fidelity.json"
    run_step bench 180 "$OUT/gpu-bench.json" "$PYTHON" -m vla_lab bench --model "$PRESET" --device "$DEVICE" \
        --dtype bfloat16 --batch $BATCHES --warmup "$WARMUP" --repeats "$REPEATS" --out "$OUT/gpu-bench.json"
    run_step capture 120 "$OUT/gpu-capture.json" "$PYTHON" -m vla_lab bench --model "$PRESET" \
        --device "$DEVICE" --dtype bfloat16 --batch 1 --paths straightforward --capture segments full \
        --capture-vision --warmup "$WARMUP" --repeats "$CAPTURE_REPEATS" --out "$OUT/gpu-capture.json"
}

if [[ -n ${NOTEBOOKS// /} ]]; then
    budget=$(($(left_s) - 30))  # kept back: the summary, and the runner's own margin below
    # shellcheck disable=SC2086  # NOTEBOOKS is a list of numbers
    run_step notebooks $((budget + 20)) "$OUT/gpu-notebooks.json" "${CHECK[@]}" notebooks --device "$DEVICE" \
        --workdir "$WORK" --budget-s "$budget" --only $NOTEBOOKS --out "$OUT/gpu-notebooks.json" $DRY_FLAG
else
    printf 'notebooks\tskipped\t0\t\n' >>"$STEPS"
fi

# without Python (vla_lab does not import): the steps as recorded, the rest in gpu-check.log
fallback_summary() {
    local name rc seconds file sep=""
    printf '{"check": "summary", "status": "failed", "dry_run": %s, "note": "the summary step failed (see' \
        "$([[ $DRY_RUN == 1 ]] && echo true || echo false)"
    printf ' gpu-check.log); the steps as the script recorded them", "steps": ['
    while IFS=$'\t' read -r name rc seconds file; do
        printf '%s{"step": "%s", "rc": "%s", "seconds": %s, "file": "%s"}' "$sep" "$name" "$rc" "${seconds:-0}" \
            "${file##*/}"
        sep=", "
    done <"$STEPS"
    printf ']}\n'
}

echo "=== summary ($(($(date +%s) - START_S)) s so far)" | tee -a "$LOG"
# shellcheck disable=SC2086  # DRY_FLAG is empty or one flag
if ! "${CHECK[@]}" summary --out "$OUT/gpu-check-summary.json" --steps "$STEPS" --logs "$WORK/logs" \
    --started "$START_S" $DRY_FLAG 2>&1 | tee -a "$LOG"; then
    fallback_summary >"$OUT/gpu-check-summary.json"
fi
echo "gpu_check: done in $(($(date +%s) - START_S)) s; results in $OUT, executed notebooks in $WORK/executed" \
    | tee -a "$LOG"
