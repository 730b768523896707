#!/bin/bash
# The LIBERO records of notebook 05 and the shipped LIBERO models, from a clean checkout with the libero extra
# (pip install -e '.[libero]'). Run from the repository root. What each step cost on the project's 2-core CPU
# machine is in vla_lab/libero/checkpoints/README.md (about 9 h in all).
set -euo pipefail
RUN=runs  # large intermediate files (demonstrations ~4.6 GB, training runs); not committed
REC=notebooks/records
DEMOS=$RUN/libero-demos/libero_spatial
TORCHRUN="torchrun --standalone --nproc-per-node 2"
export OMP_NUM_THREADS=1 MUJOCO_GL=egl

# 1. The expert on all 500 init states (physics only), then its demonstrations of init states 0-39 (128 px)
$TORCHRUN -m vla_lab libero expert --suite libero_spatial --out $REC/libero-expert/libero_spatial --no-progress
$TORCHRUN -m vla_lab libero demos --suite libero_spatial --episodes-per-task 40 --out $DEMOS --no-progress
mkdir -p $REC/libero-demos/libero_spatial
cp $DEMOS/run.json $DEMOS/episodes.jsonl $DEMOS/results.json $DEMOS/demos.json $REC/libero-demos/libero_spatial/

# 2. The two models (same recipe and seed, the mask differs), side by side, one thread each; the frame cache
#    is built first by both cores (training would otherwise build it on one)
python -c "from vla_lab.libero.data import frame_cache; frame_cache('$DEMOS', 102, workers=2)"
for MASK in causal bidirectional; do
  python -m vla_lab train --data $DEMOS --attention $MASK --out $RUN/train/libero-spatial-$MASK --no-progress &
done
wait
for MASK in causal bidirectional; do
  mkdir -p $REC/libero-train/libero-spatial-$MASK
  cp $RUN/train/libero-spatial-$MASK/metrics.jsonl $REC/libero-train/libero-spatial-$MASK/
  rm -rf vla_lab/libero/checkpoints/libero-spatial-$MASK
  cp -r $RUN/train/libero-spatial-$MASK/final vla_lab/libero/checkpoints/libero-spatial-$MASK
done

# 3. The training command reproduces the step-1000 checkpoint bit for bit: libero-train/repro-step-1000.json
#    (sha256 of each file in both runs); fails if any file differs
python -m vla_lab train --data $DEMOS --attention causal --out $RUN/train/repro-causal --stop-at 1000 --no-progress
python - "$RUN" "$DEMOS" "$REC/libero-train/repro-step-1000.json" <<'PY'
import datetime, hashlib, json, pathlib, sys
run, demos, out = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
names = ["model.safetensors", "action_head--1000_checkpoint.pt", "proprio_projector--1000_checkpoint.pt",
         "trainer_state.pt"]
digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()
files = {}
for name in names:
    original = digest(run / "train/libero-spatial-causal/step-01000" / name)
    rerun = digest(run / "train/repro-causal/step-01000" / name)
    files[name] = {"sha256_original": original, "sha256_rerun": rerun, "identical_bytes": original == rerun}
record = {
    "command": f"vla-lab train --data {demos} --attention causal --out {run}/train/repro-causal --stop-at 1000",
    "compared_with": f"step-01000 of: vla-lab train --data {demos} --attention causal "
                     f"--out {run}/train/libero-spatial-causal",
    "date": datetime.date.today().isoformat(),
    "files": files,
}
out.write_text(json.dumps(record, indent=2) + "\n")
sys.exit(0 if all(f["identical_bytes"] for f in files.values()) else 1)
PY

# 4. Closed loop on the held-out init states 40-49 of every task (100 episodes per model)
for MASK in causal bidirectional; do
  $TORCHRUN -m vla_lab eval libero --model libero-spatial-$MASK --suite libero_spatial --init-states 40:50 \
      --out $REC/libero-eval/libero-spatial-$MASK --no-progress
done

# 5. Target attention through whole rollouts (the target-attention study on the LIBERO world; cameras at the models'
#    128 px): at every query, the bowl against the distractors and against the other black bowl, with the episode's
#    phase; each depth chosen on init states 0-4, reported on 40-49, interval over tasks, vs random init on the same
#    frames; logistic regressions of success / a wrong-bowl pick on the ratio
$TORCHRUN -m vla_lab study target-attention --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --batch-size 10 \
    --out $REC/libero-target-attention/libero_spatial --no-progress

# 6. Mask swap on the held-out init states 40-49 of every task: each model under its own and the other LLM mask,
#    closed loop (success, steps, the first chunk's change), intervals over tasks (~40 min with 2 processes)
$TORCHRUN -m vla_lab study mask-swap --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --batch-size 10 \
    --out $REC/libero-mask-swap/libero_spatial --no-progress
# 7. The causal test of target attention: at every query the action queries lose the target bowl's patches, or as
#    many patches of the other black bowl (closed loop, 600 episodes; the queries' direct edges only)
$TORCHRUN -m vla_lab study target-knockout --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --batch-size 10 \
    --conditions target,same_category --out $REC/libero-target-knockout/libero_spatial --no-progress
# 8. Instruction swap: each scene with its own instruction and with the one naming the other black bowl; which bowl
#    left the table (init states 40-44 only, half the held-out set: 200 episodes, ~20 min with 2 processes)
$TORCHRUN -m vla_lab study instruction-swap --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --init-states 40:45 --batch-size 5 \
    --conditions own,swapped --out $REC/libero-instruction-swap/libero_spatial --no-progress
# 9. Three perturbed copies of libero_spatial (LIBERO-PRO / LIBERO-Plus: the instruction paraphrased, the objects
#    replaced by look-alikes, the plate's place swapped), init states 40-49, both models (600 episodes)
for SUITE in libero_spatial_lan libero_spatial_object libero_spatial_swap; do
  for MASK in causal bidirectional; do
    $TORCHRUN -m vla_lab eval libero --model libero-spatial-$MASK --suite $SUITE --init-states 40:50 \
        --out $REC/libero-eval-perturbed/$SUITE/libero-spatial-$MASK --no-progress
  done
done
# 10. The causal test with every reader: every LLM position and the head lose the target bowl's patches, or as many
#     of the other bowl's (init states 40-44 only, for time: 300 episodes)
$TORCHRUN -m vla_lab study target-knockout --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --init-states 40:45 --batch-size 5 \
    --conditions target:all,same_category:all --out $REC/libero-target-knockout-all/libero_spatial --no-progress
# 11. The causal test through the head only: its task attention loses the patches (the LLM unchanged), init states
#     40-44 only (300 episodes)
$TORCHRUN -m vla_lab study target-knockout --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --init-states 40:45 --batch-size 5 \
    --conditions target:head,same_category:head --out $REC/libero-target-knockout-head/libero_spatial --no-progress
# 12. Knockout of the action queries' view of the image patches, against the random-key control of equal size
#     (closed loop at every query; init states 40-44 only, for time: 300 episodes, ~30 min with 2 processes)
$TORCHRUN -m vla_lab study knockout --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --init-states 40:45 --batch-size 5 \
    --conditions "vision->queries,random-keys:vision->queries" --out $REC/libero-knockout/libero_spatial --no-progress
# 13. The same for the prompt: the queries lose their edges to the prompt, against as many random keys (300 episodes)
$TORCHRUN -m vla_lab study knockout --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --init-states 40:45 --batch-size 5 \
    --conditions "text->queries,random-keys:text->queries" --out $REC/libero-knockout-text/libero_spatial --no-progress
# 14. The same weights under the prefix-LM mask (images and prompt see each other fully; 200 episodes, ~20 min)
$TORCHRUN -m vla_lab study knockout --world libero --suite libero_spatial \
    --model libero-spatial-causal --model libero-spatial-bidirectional --init-states 40:45 --batch-size 5 \
    --conditions prefix-lm --out $REC/libero-knockout-prefix-lm/libero_spatial --no-progress
# 15. The reverse paths (the patches / the prompt lose their edges to the queries): only the bidirectional mask has
#     them, so the bidirectional-trained model alone (150 episodes, ~12 min)
$TORCHRUN -m vla_lab study knockout --world libero --suite libero_spatial \
    --model libero-spatial-bidirectional --init-states 40:45 --batch-size 5 \
    --conditions "queries->vision,queries->text" --out $REC/libero-knockout-reverse/libero_spatial --no-progress
