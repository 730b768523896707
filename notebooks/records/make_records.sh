#!/usr/bin/env bash
# The study records the notebooks load: one run directory per study and model, so that a model added later
# (another seed, another recipe) is one more directory. Run from the repository root:
#   bash notebooks/records/make_records.sh [MODEL ...]      (default: every shipped tabletop model)
# Each run is resumable (--resume) and can be sharded: VLA_LAB_LAUNCH="torchrun --nproc-per-node 2 -m vla_lab".
set -euo pipefail
launch=${VLA_LAB_LAUNCH:-vla-lab}
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  mapfile -t models < <(python -c "from vla_lab.studies import shipped_specs; print('\n'.join(s.name for s in shipped_specs()))")
fi
root=notebooks/records
for model in "${models[@]}"; do
  for study in mask-swap knockout target-attention; do
    out=$root/$study/$model
    [ -f "$out/summary.json" ] && continue
    resume=(); [ -f "$out/study.json" ] && resume=(--resume)
    $launch study "$study" --model "$model" --scenes 200 --validation-scenes 50 --out "$out" --no-progress "${resume[@]}"
  done
  out=$root/patching/$model
  if [ ! -f "$out/summary.json" ]; then
    resume=(); [ -f "$out/study.json" ] && resume=(--resume)
    $launch study patching --model "$model" --scenes 200 --closed-loop-scenes 40 --out "$out" --no-progress "${resume[@]}"
  fi
done
