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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from vla_lab import files, tabletop
from vla_lab.config import JSONConfig, VLAConfig, resolve_device
from vla_lab.errors import ConfigError
from vla_lab.experiments.auxiliary import AuxiliaryLosses
from vla_lab.experiments.run_dir import (
    MODEL_CONFIG,
    TRAIN_CONFIG,
    TRAINER_STATE,
    load_trainer_state,
    log_metrics,
    logged_train_time,
    prepare_run_dir,
    step_of,
)
from vla_lab.model import VLAAdapter, load_pretrained, save_pretrained
from vla_lab.processing import builtin_tokenizer, check_prompt
from vla_lab.worlds import tabletop as world

MIXED_PRECISION = ("no", "bf16")
#: ``TrainConfig.data`` of the synthetic world; anything else names a LIBERO demonstrations directory.
TABLETOP = "tabletop"


class TrainingData(Protocol):
    """What the trainer needs of a dataset: its size and batches of model inputs plus ``actions``."""

    def __len__(self) -> int: ...

    def batch(self, indices: Any, labels: bool = False,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]: ...


@dataclass
class TrainConfig(JSONConfig):
    """Hyperparameters and run settings; the defaults are the shipped recipe.

    Attributes:
        steps: optimizer steps.
        batch_size: examples per step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay (all parameters).
        betas: AdamW betas.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr``.
        min_lr_ratio: the cosine decay ends at ``lr * min_lr_ratio``.
        grad_clip: max global gradient norm (0 disables clipping).
        train_noise_std: std of the action head's training noise (upstream 0.02).
        init: ``sincos`` (2-D sine-cosine ViT position embeddings) or ``default`` (the modules' own init);
            see :func:`vla_lab.tabletop.initialize`.
        gate_init: initial ``gating_factor`` of the head's bridge blocks (0 upstream).
        num_examples: training examples held in memory (train-split seeds ``data_start ..``).
        data_start: first train-split seed of the pool.
        val_examples: held-out validation-split examples for the validation action L1.
        eval_interval: steps between validations (0: only at the end).
        eval_episodes: closed-loop validation-split episodes per validation.
        eval_execute: actions executed per predicted chunk in closed-loop evaluations.
        test_episodes: test-split episodes evaluated after training (0: none); reported, never selected on.
        checkpoint_interval: steps between checkpoints (0: only the final one).
        log_interval: steps between ``metrics.jsonl`` training lines.
        seed: seed of the weights, the example order and the head's noise.
        attention: LLM mask of the model (``causal``, ``bidirectional``, ...); overrides the model config's.
        mixed_precision: ``no`` or ``bf16`` (autocast; meant for CUDA).
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        num_threads: torch intra-op threads on CPU (0: leave torch's default).
        mse_warmup_steps: the first steps use ``torch.nn.MSELoss()`` instead of upstream's
            ``torch.nn.L1Loss()`` (0: L1 throughout). From random weights, L1 on this world's targets
            (atoms at +-1 and 0) makes the input-independent per-row median a stable point; an MSE start
            lets the features become informative first.
        relabel: also train on every scene relabelled with each other object as the target
            (:func:`vla_lab.worlds.tabletop.relabeled_scenes`): same images, another instruction and chunk.
        aux_patch_weight: weight of the patch-description loss (0: off); see the module docstring.
        aux_target_weight: weight of the target-position loss (0: off).
        data: ``tabletop`` (the world) or the directory of ``vla-lab libero demos`` output to train on.
        augment: upstream's random crop (90 % of the area) of LIBERO frames; evaluation centre-crops.
    """

    steps: int = 16000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    train_noise_std: float = 0.0
    init: str = "sincos"
    gate_init: float = 1.0
    num_examples: int = 15_000
    data_start: int = 0
    val_examples: int = 256
    eval_interval: int = 1000
    eval_episodes: int = 50
    eval_execute: int = 8
    test_episodes: int = 200
    checkpoint_interval: int = 1000
    log_interval: int = 10
    seed: int = 0
    attention: str = "causal"
    mixed_precision: str = "no"
    device: str = "cpu"
    num_threads: int = 0
    mse_warmup_steps: int = 300
    relabel: bool = True
    aux_patch_weight: float = 1.0
    aux_target_weight: float = 1.0
    data: str = TABLETOP
    augment: bool = False

    @property
    def libero(self) -> bool:
        """Whether the data are LIBERO demonstrations (``data`` names their directory)."""
        return self.data != TABLETOP

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        positive = ("steps", "batch_size", "num_examples", "eval_execute", "log_interval")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: got {value!r}, expected a positive integer")
        non_negative = (
            "warmup_steps", "data_start", "val_examples", "eval_interval", "eval_episodes",
            "test_episodes", "checkpoint_interval", "num_threads", "seed", "mse_warmup_steps",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}: got {value!r}, expected a non-negative integer")
        for name in ("aux_patch_weight", "aux_target_weight", "train_noise_std"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, expected a non-negative number")
        if self.lr <= 0:
            raise ConfigError(f"lr: got {self.lr}, expected a positive number")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio: got {self.min_lr_ratio}, expected a number in [0, 1]")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision: got {self.mixed_precision!r}, expected one of {MIXED_PRECISION}")
        if self.init not in tabletop.INITS:
            raise ConfigError(f"init: got {self.init!r}, expected one of {tabletop.INITS}")
        if len(self.betas) != 2:
            raise ConfigError(f"betas: got {self.betas!r}, expected two numbers")
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"data: got {self.data!r}, expected {TABLETOP!r} or a LIBERO demonstrations directory")
        if self.libero:
            # The world's patch labels, relabelled scenes and closed-loop episodes do not exist for LIBERO
            # (its closed-loop evaluation is 'vla-lab eval libero').
            for name, off in (("aux_patch_weight", 0), ("relabel", False), ("val_examples", 0),
                              ("eval_episodes", 0), ("test_episodes", 0)):
                if getattr(self, name) != off:
                    raise ConfigError(f"{name}: got {getattr(self, name)!r} with LIBERO data, expected {off!r}")
        else:
            if self.augment:
                raise ConfigError("augment: got true with the tabletop world, expected false (LIBERO frames only)")
            if self.data_start + self.num_examples > len(world.SPLITS["train"]):
                raise ConfigError("num_examples: data_start + num_examples exceeds the train split")

    @classmethod
    def libero_recipe(cls, data: str, **changes: Any) -> TrainConfig:
        """The recipe of the shipped LIBERO models on the demonstrations in ``data`` (``changes`` on top):
        upstream's random crop, the target-position loss (no patch labels exist), no world episodes, one
        thread (bit-exact reruns; two models train side by side on two cores)."""
        recipe: dict[str, Any] = {
            "data": str(data), "augment": True, "steps": 12000, "relabel": False, "aux_patch_weight": 0.0,
            "aux_target_weight": 1.0, "val_examples": 0, "eval_episodes": 0, "test_episodes": 0,
            "checkpoint_interval": 1000, "num_threads": 1,
        }
        return cls(**{**recipe, **changes})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data


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
        model_config = model_config.replace(norm_stats=libero_statistics(config.data))
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
        model = tabletop.build_model(
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
