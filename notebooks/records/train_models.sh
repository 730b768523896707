#!/usr/bin/env bash
# The tabletop models the studies compare, trained by `vla-lab train` (the recipe documented in
# vla_lab/tabletop/checkpoints/README.md). Every run is resumable: an interrupted one continues from its
# latest checkpoint, a finished one is skipped. From the repository root:
#   bash notebooks/records/train_models.sh [NAME ...]      (default: every model below)
# Environment: RUNS (runs: one directory per model, NAME.log beside it), DEVICE (cpu; cuda trains with bf16
# autocast, so its weights differ from a CPU run's), JOBS (2: runs at once), THREADS (1: torch threads per run),
# SHIP (0; 1 copies each finished model into CHECKPOINTS/NAME, default vla_lab/tabletop/checkpoints, without
# its test evaluation),
# VLA_LAB (vla-lab), PYTHON (python: writes a changed architecture's VLAConfig JSON), TRAIN_ARGS (more `vla-lab train` arguments, e.g. "--steps 2 --test-episodes 0" for a smoke run).
set -euo pipefail
RUNS=${RUNS:-runs}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
SHIP=${SHIP:-0}
VLA_LAB=${VLA_LAB:-vla-lab}
PYTHON=${PYTHON:-python}
CHECKPOINTS=${CHECKPOINTS:-vla_lab/tabletop/checkpoints}
MODELS=(tabletop-causal tabletop-bidirectional tabletop-causal-seed1 tabletop-bidirectional-seed1
        tabletop-causal-no-target-aux tabletop-bidirectional-no-target-aux
        tabletop-causal-seed2 tabletop-bidirectional-seed2
        tabletop-causal-v1-head
        tabletop-causal-linear-projector tabletop-causal-linear-projector-seed1
        tabletop-causal-gelu-mlp-projector tabletop-causal-gelu-mlp-projector-seed1)

# NAME -> "MASK SEED TRAIN_CONFIG MODEL_CHANGES": two JSON objects without spaces, the first overriding
# TrainConfig's defaults, the second VLAConfig fields of the tabletop preset (vla_lab.tabletop.tabletop_config).
spec() {
    case $1 in
        tabletop-causal) echo "causal 0 {} {}" ;;
        tabletop-bidirectional) echo "bidirectional 0 {} {}" ;;
        tabletop-causal-seed1) echo "causal 1 {} {}" ;;
        tabletop-bidirectional-seed1) echo "bidirectional 1 {} {}" ;;
        tabletop-causal-seed2) echo "causal 2 {} {}" ;;
        tabletop-bidirectional-seed2) echo "bidirectional 2 {} {}" ;;
        tabletop-causal-no-target-aux) echo 'causal 0 {"aux_target_weight":0.0} {}' ;;
        tabletop-bidirectional-no-target-aux) echo 'bidirectional 0 {"aux_target_weight":0.0} {}' ;;
        tabletop-causal-v1-head) echo 'causal 0 {} {"head_version":"v1"}' ;;
        tabletop-causal-linear-projector) echo 'causal 0 {} {"projector":"linear"}' ;;
        tabletop-causal-linear-projector-seed1) echo 'causal 1 {} {"projector":"linear"}' ;;
        tabletop-causal-gelu-mlp-projector) echo 'causal 0 {} {"projector":"gelu-mlp"}' ;;
        tabletop-causal-gelu-mlp-projector-seed1) echo 'causal 1 {} {"projector":"gelu-mlp"}' ;;
        *) echo "train_models.sh: error: NAME: got '$1', expected one of ${MODELS[*]}" >&2; return 2 ;;
    esac
}

train_one() {
    local name=$1 mask seed config changes
    read -r mask seed config changes <<<"$(spec "$name")"
    local out=$RUNS/$name
    if [[ ! -f $out/final/config.json ]]; then
        local resume=() model=()
        [[ -f $out/train_config.json ]] && resume=(--resume)
        if [[ $changes != "{}" ]]; then
            "$PYTHON" -c 'import json, sys; from vla_lab.tabletop import tabletop_config
tabletop_config(sys.argv[1]).replace(**json.loads(sys.argv[2])).to_json(sys.argv[3])' \
                "$mask" "$changes" "$RUNS/$name.model.json"
            model=(--model-config "$RUNS/$name.model.json")
        fi
        $VLA_LAB train --attention "$mask" --seed "$seed" --config "$config" "${model[@]}" --device "$DEVICE" \
            --num-threads "$THREADS" --no-progress --out "$out" "${resume[@]}" ${TRAIN_ARGS:-} >"$out.log" 2>&1
    fi
    if [[ $SHIP == 1 && ! -e $CHECKPOINTS/$name ]]; then
        cp -r "$out/final" "$CHECKPOINTS/$name.partial"
        rm -f "$CHECKPOINTS/$name.partial/eval_test.json"
        mv "$CHECKPOINTS/$name.partial" "$CHECKPOINTS/$name"
    fi
    echo "$name: $(tail -n 1 "$out/metrics.jsonl" | cut -c1-160)"
}

names=("$@")
[[ ${#names[@]} -eq 0 ]] && names=("${MODELS[@]}")
for name in "${names[@]}"; do spec "$name" >/dev/null; done
mkdir -p "$RUNS"
[[ $SHIP == 1 ]] && mkdir -p "$CHECKPOINTS"
running=0 failed=0
for name in "${names[@]}"; do
    if ((running >= JOBS)); then
        wait -n || failed=$((failed + 1))
        running=$((running - 1))
    fi
    train_one "$name" &
    running=$((running + 1))
done
while ((running > 0)); do
    wait -n || failed=$((failed + 1))
    running=$((running - 1))
done
if ((failed > 0)); then
    echo "train_models.sh: error: $failed run(s) failed; their logs are $RUNS/NAME.log" >&2
    exit 1
fi
