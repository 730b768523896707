"""What a training run is: :class:`TrainConfig` (hyperparameters, run settings and the shipped recipes) and the
:class:`TrainingData` protocol the trainer reads batches through (:mod:`vla_lab.training.train` runs them)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from vla_lab import tabletop
from vla_lab.config import JSONConfig
from vla_lab.errors import ConfigError
from vla_lab.worlds import tabletop as world

MIXED_PRECISION = ("no", "bf16")
#: ``TrainConfig.data`` of the synthetic world; anything else names a LIBERO demonstrations directory.
TABLETOP = "tabletop"


class TrainingData(Protocol):
    """What the trainer needs of a dataset: its size and batches of model inputs plus ``actions``."""

    def __len__(self) -> int: ...

    def batch(self, indices: Any, labels: bool = False,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]: ...


def _finite_number(value: object) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
            see :func:`vla_lab.tabletop.init_for_training`.
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
        numbers = ("lr", "weight_decay", "min_lr_ratio", "grad_clip", "train_noise_std", "gate_init",
                   "aux_patch_weight", "aux_target_weight")
        for name in numbers:
            if not _finite_number(getattr(self, name)):
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, expected a finite number")
        betas = self.betas
        if not isinstance(betas, (list, tuple)) or len(betas) != 2 or \
                not all(_finite_number(b) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"betas: got {betas!r}, expected two numbers in [0, 1)")
        self.betas = (float(betas[0]), float(betas[1]))
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, expected a non-negative number")
        for name in ("relabel", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, expected true or false")
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
