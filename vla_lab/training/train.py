"""Train a VLA-Adapter model on the synthetic tabletop world or on vla-lab's LIBERO demonstrations.

The data is a dataset object with ``len(data)`` and ``data.batch(indices, labels=..., generator=...)``
(:class:`TrainingData`): :class:`vla_lab.tabletop.TabletopData` (``TrainConfig.data = "tabletop"``, the
default) or :class:`vla_lab.libero.data.LiberoDemoData` (``data`` = a ``vla-lab libero demos`` directory;
the model's action and proprio statistics are then computed from those demonstrations, and ``augment``
turns on upstream's random crop).

The action objective is upstream's: ``torch.nn.L1Loss()`` between the predicted and the expert action
chunk, both normalised to [-1, 1] (optionally MSE for the first ``mse_warmup_steps``). AdamW, linear
warm-up then cosine decay to a floor, gradient clipping.

Two auxiliary losses stand in for what a released model inherits from pretraining (its ViTs and its
LLM were trained before the action head existed); both use small linear probes that are trained along
and discarded, so the saved model is a plain VLA-Adapter:

* *patch description* (``aux_patch_weight``): from the projector's output, a linear probe classifies
  each patch's object colour and shape (0 = none, :func:`vla_lab.tabletop.patch_labels`) and regresses
  the patch's own grid position (L1) -- pretrained vision features know what and where;
* *target position* (``aux_target_weight``): from the final LLM layer's action-query states (mean over
  the queries), a linear probe regresses the target object's table position (MSE).

Neither touches any attention map. Without them, from-scratch training on this world stays at the
L1 median (no movement) for thousands of steps; see ``vla_lab/tabletop/checkpoints/README.md``.

Checkpoints are written in the released layout (:meth:`vla_lab.VLAAdapter.save_pretrained`) into
``out_dir/step-XXXXX`` and ``out_dir/final``; each step directory also holds ``trainer_state.pt``
(optimizer and probe state, step, RNG state; tensors and primitive containers only) so that
``resume=True`` continues bit-exactly. ``metrics.jsonl`` logs training and auxiliary losses, learning
rate, validation success and action L1.

Every random draw comes from ``TrainConfig.seed``: the initial weights (``torch.manual_seed``), the
order of the examples (one ``torch.Generator`` permutation per epoch), the random crops of LIBERO frames
(one generator per step, :func:`augmentation_seed`) and the head's noise (the torch RNG, saved in
``trainer_state.pt``). World examples come from fixed seeds of the world's ``train`` split.

Reproduce a shipped tabletop model: ``vla-lab train --attention causal --out DIR`` (or ``bidirectional``)
with the defaults of :class:`TrainConfig` and :func:`vla_lab.tabletop.tabletop_config`; the LIBERO models'
commands are in the README's LIBERO section.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from vla_lab import files, tabletop
from vla_lab.config import VLAConfig, resolve_device
from vla_lab.model import VLAAdapter, load_pretrained, save_pretrained
from vla_lab.processing import builtin_tokenizer, check_prompt
from vla_lab.training.auxiliary import AuxiliaryLosses
from vla_lab.training.config import TrainConfig, TrainingData
from vla_lab.training.run_dir import (
    MODEL_CONFIG,
    TRAIN_CONFIG,
    TRAINER_STATE,
    load_trainer_state,
    log_metrics,
    logged_train_time,
    prepare_run_dir,
    step_of,
)
from vla_lab.worlds import tabletop as world


def libero_statistics(directory: str) -> dict[str, Any]:
    """Action and proprio statistics of the LIBERO demonstrations in ``directory``, under the suite's name."""
    from vla_lab.libero.data import demo_statistics, read_demonstrations, read_manifest

    return demo_statistics(read_demonstrations(directory), read_manifest(directory)["suite"])


def training_data(
    config: TrainConfig, model_config: VLAConfig, tokenizer: Any, *, labels: bool, progress: bool
) -> tuple[TrainingData, Any]:
    """The training data of ``config`` (and the tabletop validation examples, or None)."""
    if config.libero:
        from vla_lab.libero.data import LiberoDemoData

        data = LiberoDemoData.load(config.data, model_config, tokenizer, augment=config.augment, progress=progress)
        return data, None
    train_seeds = world.split_seeds("train", config.num_examples, config.data_start)
    tabletop_data = tabletop.TabletopData.generate(
        model_config, train_seeds, tokenizer, progress=progress, relabel=config.relabel, labels=labels
    )
    val_data = (
        tabletop.TabletopData.generate(model_config, world.split_seeds("validation", config.val_examples), tokenizer)
        if config.val_examples
        else None
    )
    return tabletop_data, val_data


def augmentation_seed(seed: int, step: int) -> int:
    """Seed of the augmentation draws of optimizer step ``step`` (a function of the step: resumable)."""
    return (seed + 1) * 2_147_483_647 + step


def learning_rate(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to the floor."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_ratio
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> torch.Tensor:
    """Pool indices of step ``step``: consecutive slices of one seeded permutation per epoch."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_examples)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(num_examples, generator=generator)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def _write_provenance(directory: Path, config: TrainConfig) -> None:
    """A LIBERO checkpoint carries the manifest of its demonstrations (suite, resolution, init states)."""
    if config.libero:
        from vla_lab.libero.data import read_manifest
        from vla_lab.libero.models import DEMOS_MANIFEST

        files.write_json(directory / DEMOS_MANIFEST, read_manifest(config.data))


def _save(
    model: VLAAdapter, optimizer: torch.optim.Optimizer, step: int, directory: Path, config: TrainConfig,
    auxiliary: AuxiliaryLosses,
) -> None:
    """Write the step's checkpoint and trainer state into a fresh directory, then move it into place."""
    temp = files.temporary_dir_for(directory)
    try:
        save_pretrained(model, temp, step=step, overwrite=True)
        _write_provenance(temp, config)
        state = {
            "step": int(step),
            "optimizer": optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "train_config": config.to_dict(),
            "auxiliary": auxiliary.state_dict(),
        }
        torch.save(state, temp / TRAINER_STATE)
        config.to_json(temp / TRAIN_CONFIG)
        files.replace_dir(temp, directory)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def _strip_episodes(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "episodes"}


def validate(model: VLAAdapter, config: TrainConfig, val_data: tabletop.TabletopData | None) -> dict[str, Any]:
    """Validation action L1 on held-out examples and closed-loop success on validation scenes."""
    record: dict[str, Any] = {}
    if val_data is not None and len(val_data):
        record["val_action_l1"] = tabletop.action_l1(model, val_data)
    if config.eval_episodes:
        result = tabletop.evaluate_model(
            model, "validation", config.eval_episodes, progress=False, execute=config.eval_execute
        )
        record["val_success_rate"] = result["success_rate"]
        record["val_by_kind"] = {k: v["success_rate"] for k, v in result["by_kind"].items()}
        record["val_initial_action_l1"] = result["action_l1"]
    return record


def train(
    config: TrainConfig,
    model_config: VLAConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    out_field: str = "out_dir",
) -> Path:
    """Train ``model_config`` (with ``config.attention``) on the world; return ``out_dir/final``.

    ``out_dir`` belongs to one run (:func:`prepare_run_dir`): a non-empty one is refused unless
    ``resume`` continues it from its latest ``step-XXXXX`` (same settings) or ``overwrite`` replaces it
    (a training run's files only). A run that fails before its first record leaves nothing behind.
    ``stop_at`` ends the run after that many steps (a checkpoint is written there) without changing the
    schedule, and then returns that step's directory. Checkpoints and ``final/`` appear whole or not at
    all; after an interrupt, ``resume`` continues from the last checkpoint. ``out_field`` names ``out_dir``
    in errors (the CLI passes ``--out``).
    """
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    model_config = model_config.replace(attention=config.attention)
    if config.libero:
        from vla_lab.libero.data import cache_size, frame_cache_path

        model_config = model_config.replace(norm_stats=libero_statistics(config.data))  # checks every demo
        if not frame_cache_path(config.data, cache_size(model_config.vision.image_size)).exists():
            files.check_output_dir(config.data, "data")  # the frame cache will be written beside them
    tabletop.check_config(model_config)
    tokenizer = builtin_tokenizer(model_config.tokenizer) if config.libero else world.build_world_tokenizer()
    check_prompt(tokenizer, model_config.prompt)  # before the run directory is claimed
    run, latest = prepare_run_dir(out_dir, config, model_config, resume=resume, overwrite=overwrite,
                                  field=out_field)
    with run.guard():  # a run that fails before its first metrics line leaves nothing behind
        return _run(config, model_config, out_dir, device, tokenizer, latest, resume, stop_at, progress)


def _run(config: TrainConfig, model_config: VLAConfig, out_dir: Path, device: torch.device, tokenizer: Any,
         latest: Path | None, resume: bool, stop_at: int | None, progress: bool) -> Path:
    """The body of :func:`train`, in its claimed run directory."""
    if resume and latest is None:
        warnings.warn(f"resume: {out_dir} holds no checkpoint yet; training starts again from step 0", stacklevel=2)
    if latest is not None and step_of(latest) == config.steps and (out_dir / "final").is_dir():
        return out_dir / "final"  # the run is complete: nothing to do, nothing rewritten
    if config.num_threads:
        torch.set_num_threads(config.num_threads)

    start_step = 0
    trainer_state = None
    if latest is not None:
        trainer_state = load_trainer_state(latest)
        start_step = int(trainer_state["step"])
        model = load_pretrained(latest, dtype=torch.float32, device=device)
        model_config = model.config
    else:
        model = tabletop.initial_model(
            model_config, seed=config.seed, tokenizer=tokenizer, init=config.init, gate=config.gate_init
        ).to(device)
    model.action_head.train_noise_std = config.train_noise_std
    config.to_json(out_dir / TRAIN_CONFIG)
    model_config.to_json(out_dir / MODEL_CONFIG)

    auxiliary = AuxiliaryLosses(model, config.aux_patch_weight, config.aux_target_weight).to(device)
    # Every parameter decays, as in upstream's single AdamW group.
    optimizer = torch.optim.AdamW(
        list(model.parameters()) + list(auxiliary.parameters()), lr=config.lr, betas=config.betas,
        weight_decay=config.weight_decay,
    )
    if trainer_state is not None:
        auxiliary.load_state_dict(trainer_state["auxiliary"])
        optimizer.load_state_dict(trainer_state["optimizer"])
        torch.set_rng_state(trainer_state["rng"]["torch"])
        if trainer_state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer_state["rng"]["cuda"])

    data, val_data = training_data(config, model_config, tokenizer, labels=auxiliary.active, progress=progress)
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    amp = config.mixed_precision == "bf16"
    l1_loss, mse_loss = torch.nn.L1Loss(), torch.nn.MSELoss()
    model.train()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="step")
    train_time = logged_train_time(out_dir) if trainer_state is not None else 0.0
    running: list[float] = []
    running_aux: list[tuple[float, float]] = []
    step = start_step
    try:
        while step < end:
            tick = time.perf_counter()
            lr = learning_rate(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = data.batch(batch_indices(step, config.batch_size, len(data), config.seed), labels=auxiliary.active,
                               generator=torch.Generator().manual_seed(augmentation_seed(config.seed, step)))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            target = batch.pop("actions")
            patch_labels, targets = batch.pop("patch_labels", None), batch.pop("targets", None)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(**batch)
            loss_fn = mse_loss if step < config.mse_warmup_steps else l1_loss
            loss = loss_fn(out.normalized_actions.float(), target)
            total = loss
            if auxiliary.active:
                aux = auxiliary(out.query_states, patch_labels, targets)
                total = loss + aux["total"]
                running_aux.append((aux["patch"].item(), aux["target"].item()))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                if config.grad_clip > 0
                else float("nan")
            )
            optimizer.step()
            step += 1
            train_time += time.perf_counter() - tick
            running.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{running[-1]:.4f}", lr=f"{lr:.2e}")
            if step % config.log_interval == 0 or step == end:
                record = {"step": step, "loss": sum(running) / len(running), "lr": lr, "grad_norm": grad_norm,
                          "train_time_s": round(train_time, 2)}
                if running_aux:
                    if not config.libero:  # LIBERO frames have no patch labels
                        record["aux_patch_loss"] = sum(a for a, _ in running_aux) / len(running_aux)
                    record["aux_target_loss"] = sum(b for _, b in running_aux) / len(running_aux)
                log_metrics(out_dir, record)
                running.clear()
                running_aux.clear()
            evaluate_now = (config.eval_interval and step % config.eval_interval == 0) or step == config.steps
            if evaluate_now and (val_data is not None or config.eval_episodes):
                record = {"step": step, **validate(model, config, val_data)}
                log_metrics(out_dir, record)
                if bar is not None:
                    bar.write(json.dumps(record))
            if (config.checkpoint_interval and step % config.checkpoint_interval == 0) or step == end:
                _save(model, optimizer, step, out_dir / f"step-{step:05d}", config, auxiliary)
    finally:
        auxiliary.remove()
        if bar is not None:
            bar.close()

    if step < config.steps:
        return out_dir / f"step-{step:05d}"
    final = out_dir / "final"
    temp = files.temporary_dir_for(final)
    try:
        save_pretrained(model, temp, step=step, overwrite=True)
        _write_provenance(temp, config)
        config.to_json(temp / TRAIN_CONFIG)
        result = None
        if config.test_episodes:
            result = tabletop.evaluate_model(
                model, "test", config.test_episodes, progress=progress, execute=config.eval_execute
            )
            files.write_json(temp / "eval_test.json", result)
        files.replace_dir(temp, final)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    if result is not None:
        log_metrics(out_dir, {"step": step, "test": _strip_episodes(result)})
    return final
