"""Architecture ablations of VLA-Adapter: projector x vision backbone x LLM attention mask.

A :class:`Variant` names one cell of the grid. :func:`variant_config` derives its :class:`VLAConfig`
from a base configuration, either with small stand-in ViTs (the base's image size and ViT widths, the
real backbone's timm ids, activations and normalisation) or with the real backbone of SPEC section 3.
Combinations the released design does not define are kept in every table with a reason
(:func:`skip_reason`) instead of being silently dropped.

Measurements:

* :func:`parameter_table`: parameters per component on the ``meta`` device (no memory, deterministic),
  including the ViT modules the model never runs (:func:`unused_vision_parameters`).
* :func:`measure_cost`: forward latency and peak memory of tensors allocated during a forward
  (:class:`PeakMemory`; on CUDA also the allocator's peak).
* :func:`train_variant` / :func:`run_variant`: a short run of the repository's trainer
  (:func:`vla_lab.train.train`, its recipe shortened by :func:`short_recipe`) from scratch on the
  tabletop world, then closed-loop success, action L1 and where the action queries attend
  (:func:`action_query_attention`).

Every table is tidy (long format): one row per (variant, metric).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vla_lab import tabletop
from vla_lab.analysis import segment_mass
from vla_lab.bench import synthetic_batch, time_callable
from vla_lab.capture import capture
from vla_lab.checkpoint import load_pretrained
from vla_lab.config import PROJECTORS, VISION_BACKBONES, VLAConfig
from vla_lab.errors import ConfigError, InputError
from vla_lab.model import VLAAdapter, build_on_meta, build_random
from vla_lab.sequence import CONTENT_SEGMENTS, coarse_segment
from vla_lab.tokenizer import QwenTokenizer
from vla_lab.train import METRICS, TrainConfig, train

#: Short backbone names -> the SPEC section 3 backbone id whose timm models they use.
BACKBONES: dict[str, str] = {
    "dinov2": "dinov2-vit-l",
    "siglip": "siglip-vit-so400m",
    "clip": "clip-vit-l",
    "dinov2+siglip": "dinosiglip-vit-so-224px",
    "dinov2+clip": "dinoclip-vit-l-336px",
}
MASKS = ("causal", "bidirectional")
SCALES = ("small", "real")
DESIGNS = ("full", "reduced")
#: The released architecture's backbone; the reduced design sweeps projectors on it.
PIVOT_BACKBONE = "dinov2+siglip"
#: The projector every backbone accepts; the reduced design sweeps backbones with it.
PIVOT_PROJECTOR = "gelu-mlp"


def is_fused(backbone: str) -> bool:
    """Whether ``backbone`` (a key of :data:`BACKBONES`) runs two ViTs fused on the feature axis."""
    return len(VISION_BACKBONES[_backbone_id(backbone)]["timm_model_ids"]) == 2


def _backbone_id(backbone: str) -> str:
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone: got {backbone!r}, expected one of {list(BACKBONES)}")
    return BACKBONES[backbone]


def skip_reason(backbone: str, projector: str) -> str | None:
    """Why a (backbone, projector) pair is not run, or None when it is a defined architecture.

    ``fused-gelu-mlp`` is the projector of fused (two-ViT) backbones (SPEC section 4, released
    default with DINOv2 + SigLIP). ``VLAConfig`` does not enforce this (it builds the projector on any
    feature width), so the ablation refuses the pairing here, explicitly.
    """
    _backbone_id(backbone)
    if projector not in PROJECTORS:
        raise ConfigError(f"projector: got {projector!r}, expected one of {PROJECTORS}")
    if projector == "fused-gelu-mlp" and not is_fused(backbone):
        return f"fused-gelu-mlp needs a fused (two-ViT) backbone; {backbone} is a single ViT"
    return None


@dataclass(frozen=True)
class Variant:
    """One cell of the ablation grid."""

    backbone: str
    projector: str
    attention: str = "causal"

    def __post_init__(self) -> None:
        _backbone_id(self.backbone)
        if self.projector not in PROJECTORS:
            raise ConfigError(f"projector: got {self.projector!r}, expected one of {PROJECTORS}")
        if self.attention not in MASKS:
            raise ConfigError(f"attention: got {self.attention!r}, expected one of {MASKS}")

    @property
    def name(self) -> str:
        return f"{self.backbone} | {self.projector} | {self.attention}"

    @property
    def architecture(self) -> str:
        return f"{self.backbone} | {self.projector}"

    @property
    def skip_reason(self) -> str | None:
        return skip_reason(self.backbone, self.projector)

    @property
    def valid(self) -> bool:
        return self.skip_reason is None


def variant_grid(
    backbones: Sequence[str] = tuple(BACKBONES),
    projectors: Sequence[str] = PROJECTORS,
    masks: Sequence[str] = MASKS,
    design: str = "full",
) -> list[Variant]:
    """The variants of a design, invalid ones included (see :attr:`Variant.skip_reason`).

    ``full``: every backbone x projector x mask. ``reduced``: the projector sweep on
    :data:`PIVOT_BACKBONE` plus the backbone sweep with :data:`PIVOT_PROJECTOR`, for every mask
    (the pivots are used only if they are among ``backbones`` / ``projectors``).
    """
    if design not in DESIGNS:
        raise ConfigError(f"design: got {design!r}, expected one of {DESIGNS}")
    pairs = [(b, p) for b in backbones for p in projectors]
    if design == "reduced":
        pairs = [(b, p) for b, p in pairs if b == PIVOT_BACKBONE or p == PIVOT_PROJECTOR]
    return [Variant(b, p, m) for b, p in pairs for m in masks]


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------


def stand_in_vision(base: VLAConfig, backbone: str) -> dict[str, Any]:
    """A small stand-in of ``backbone``: its timm ids, activations and normalisation, the base's sizes.

    Every ViT gets the base's first ``timm_kwargs`` (width, depth, heads, patch) and image size, so
    stand-ins differ from each other in architecture family and in the number of ViTs only.
    """
    known = VISION_BACKBONES[_backbone_id(backbone)]
    ids = list(known["timm_model_ids"])
    kwargs = dict(base.vision.timm_kwargs[0])
    return {
        "backbone_id": "custom",
        "timm_model_ids": ids,
        "image_sizes": [base.vision.image_size] * len(ids),
        "act_layers": list(known["act_layers"]),
        "timm_kwargs": [dict(kwargs) for _ in ids],
        "fused": len(ids) == 2,
    }


def variant_config(base: VLAConfig, variant: Variant, scale: str = "small") -> VLAConfig:
    """``base`` with the variant's backbone (stand-in or real), projector and attention mask.

    Raises :class:`ConfigError` for variants with a :func:`skip_reason`.
    """
    if scale not in SCALES:
        raise ConfigError(f"scale: got {scale!r}, expected one of {SCALES}")
    if variant.skip_reason:
        raise ConfigError(f"variant {variant.name}: {variant.skip_reason}")
    if scale == "small":
        vision = stand_in_vision(base, variant.backbone)
    else:
        vision = {"backbone_id": BACKBONES[variant.backbone]}
    name = f"{base.name}[{variant.backbone}|{variant.projector}|{scale}]"
    return base.replace(vision=vision, projector=variant.projector, attention=variant.attention, name=name)


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def unused_vision_parameters(model: VLAAdapter) -> int:
    """Parameters of the ViT modules the forward never reaches.

    Features come from the second-to-last block (SPEC section 3), so the last block, the final norm
    and any pooling or classifier modules (e.g. SigLIP's attention pool) are built but not run.
    """
    total = 0
    for vit in (model.vision_backbone.featurizer, model.vision_backbone.fused_featurizer):
        if vit is None:
            continue
        unused: list[torch.nn.Module] = [vit.blocks[-1]]
        for name in ("norm", "attn_pool", "fc_norm", "head"):
            if getattr(vit, name, None) is not None:
                unused.append(getattr(vit, name))
        total += sum(p.numel() for m in unused for p in m.parameters())
    return total


def parameter_counts(config: VLAConfig) -> dict[str, int]:
    """``VLAAdapter.parameter_counts`` of ``config`` built on the meta device, plus unused ViT parameters."""
    model = build_on_meta(config)
    counts = model.parameter_counts()
    counts["vision.unused"] = unused_vision_parameters(model)
    return counts


def parameter_table(base: VLAConfig, variants: Iterable[Variant], scale: str = "small") -> pd.DataFrame:
    """Tidy parameter counts per architecture (masks do not change parameters).

    Columns: backbone, projector, scale, status, reason, component, value (NaN for skipped variants).
    """
    rows = []
    seen = set()
    for v in variants:
        if v.architecture in seen:
            continue
        seen.add(v.architecture)
        key = {"backbone": v.backbone, "projector": v.projector, "scale": scale}
        if not v.valid:
            rows.append({**key, "status": "skipped", "reason": v.skip_reason, "component": "total", "value": np.nan})
            continue
        for component, value in parameter_counts(variant_config(base, v, scale)).items():
            rows.append({**key, "status": "ok", "reason": "", "component": component, "value": value})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Latency and memory
# ---------------------------------------------------------------------------------------------


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created while the mode is active and still alive.

    Every storage an operator returns is counted once until it is freed (a weak reference on the
    storage). Tensors that existed before (parameters, inputs) are not counted, so the peak is the
    memory a forward pass needs on top of the weights. Works on every device.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[tuple[str, int], int] = {}
        self._refs: dict[tuple[str, int], Any] = {}

    def _free(self, key: tuple[str, int]) -> None:
        self.current -= self._live.pop(key, 0)
        self._refs.pop(key, None)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            size = storage.nbytes()
            if size == 0 or key in self._live:
                continue
            self._live[key] = size
            self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._free(key))
            self.current += size
            self.peak = max(self.peak, self.current)
        return out


def forward_peak_bytes(model: VLAAdapter, inputs: dict[str, Any]) -> int:
    """:class:`PeakMemory` peak of one inference forward of ``model`` on ``inputs``."""
    with torch.inference_mode(), PeakMemory() as tracker:
        out = model(**inputs)
    del out
    return tracker.peak


def measure_cost(
    config: VLAConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_sizes: Sequence[int] = (1,),
    warmup: int = 2,
    repeats: int = 10,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Forward latency (ms: median, min, max) and memory (bytes) of ``config`` with random weights.

    Rows: one per batch size and metric, ``latency_ms`` (with ``min``/``max``), ``peak_activation_bytes``
    (:class:`PeakMemory`), ``weight_bytes`` and, on CUDA, ``cuda_peak_bytes`` (allocator peak minus the
    memory held before the forward). Measurements, not assertions.
    """
    device = torch.device(device)
    rows = _measure(build_random(config, seed=seed, dtype=dtype, device=device).eval(), batch_sizes, warmup, repeats)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _measure(
    model: VLAAdapter, batch_sizes: Sequence[int] = (1,), warmup: int = 2, repeats: int = 10
) -> list[dict[str, Any]]:
    device = model.device
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        inputs = synthetic_batch(model, batch)

        def forward(inputs: dict[str, Any] = inputs) -> None:
            with torch.inference_mode():
                model(**inputs)

        times = time_callable(forward, device, warmup, repeats)
        common = {"batch": batch, "device": str(device), "dtype": str(model.dtype).removeprefix("torch.")}
        rows.append({**common, "metric": "latency_ms", "value": statistics.median(times),
                     "min": min(times), "max": max(times)})
        rows.append({**common, "metric": "peak_activation_bytes", "value": float(forward_peak_bytes(model, inputs))})
        rows.append({**common, "metric": "weight_bytes", "value": float(weight_bytes)})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            forward()
            torch.cuda.synchronize(device)
            rows.append({**common, "metric": "cuda_peak_bytes",
                         "value": float(torch.cuda.max_memory_allocated(device) - before)})
    return rows


def cost_table(
    base: VLAConfig,
    variants: Iterable[Variant],
    scale: str = "small",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`measure_cost` of every variant, tidy; skipped variants get one row with their reason.

    Each architecture is built once; its masks are measured on the same weights (``set_attention``).
    """
    device = torch.device(device)
    rows = []
    variants = list(variants)
    for arch in dict.fromkeys(v.architecture for v in variants):
        group = [v for v in variants if v.architecture == arch]
        model = None
        for v in group:
            key = {"variant": v.name, "backbone": v.backbone, "projector": v.projector, "attention": v.attention,
                   "scale": scale}
            if not v.valid:
                rows.append({**key, "status": "skipped", "reason": v.skip_reason, "metric": "latency_ms",
                             "value": np.nan})
                continue
            if model is None:
                model = build_random(variant_config(base, v, scale), dtype=dtype, device=device).eval()
            model.set_attention(v.attention)
            rows.extend({**key, "status": "ok", "reason": "", **row} for row in _measure(model, **kwargs))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def data_for(
    data: tabletop.TabletopData, config: VLAConfig, tokenizer: QwenTokenizer | None = None
) -> tabletop.TabletopData:
    """The same world examples prepared for ``config``'s featurizers (pixel normalisation and channels).

    Images, prompts, proprio and actions do not depend on the backbone, so a pool generated once
    serves every variant with the same ``num_images`` and normalisation statistics.
    """
    if data.images.shape[1] != config.num_images:
        raise InputError(f"data: holds {data.images.shape[1]} image(s) per example, config wants {config.num_images}")
    processor = tabletop.world_processor(config, tokenizer)
    return dataclasses.replace(data, image_processor=processor.image_processor)


def short_recipe(steps: int, batch_size: int, num_examples: int, **overrides: Any) -> TrainConfig:
    """The trainer's recipe (:class:`TrainConfig` defaults) shortened to ``steps`` optimizer steps.

    Phases counted in steps (learning-rate warm-up, MSE warm-up) are scaled by ``steps`` / the default
    number of steps (at least one step where the default has any); every other field keeps its default
    unless given in ``overrides``.
    """
    default = TrainConfig()
    scale = steps / default.steps
    values: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "num_examples": num_examples}
    for name in ("warmup_steps", "mse_warmup_steps"):
        if hasattr(default, name):
            base = getattr(default, name)
            values[name] = max(1, round(base * scale)) if base > 0 else 0
    values.update(overrides)
    return dataclasses.replace(default, **values)


@dataclass
class TrainResult:
    """A trained model, its per-step training losses (``loss`` and any auxiliary ones) and wall time."""

    model: VLAAdapter
    losses: pd.DataFrame
    train_time_s: float


def trainer_config(train_config: TrainConfig, attention: Any) -> TrainConfig:
    """What :func:`train_variant` hands the trainer: ``train_config`` with ``attention`` (a named mask),
    without the trainer's own validation, test episodes and intermediate checkpoints, logging every step."""
    if not isinstance(attention, str):
        raise InputError(f"attention: got {attention!r}, expected a named mask for the trainer")
    return dataclasses.replace(train_config, attention=attention, val_examples=0, eval_interval=0, eval_episodes=0,
                               test_episodes=0, checkpoint_interval=0, log_interval=1)


def train_variant(
    config: VLAConfig, train_config: TrainConfig, out_dir: str | Path | None = None
) -> TrainResult:
    """Train ``config`` from scratch with :func:`vla_lab.train.train` (the repository's trainer) and load it.

    The trainer's own validation, test evaluation and intermediate checkpoints are switched off (the
    ablation evaluates every variant itself) and it logs every step; ``train_config.attention`` is set
    to ``config.attention``. The run goes to ``out_dir`` (kept) or to a temporary directory (removed).
    """
    tc = trainer_config(train_config, config.attention)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(out_dir) if out_dir is not None else Path(tmp)
        final = train(tc, config, directory, progress=False)
        model = load_pretrained(final, device=tc.device)
        records = [json.loads(line) for line in (directory / METRICS).read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    losses = pd.DataFrame(steps).drop(columns=["lr", "grad_norm", "train_time_s"], errors="ignore")
    train_time = max((float(r["train_time_s"]) for r in steps if "train_time_s" in r), default=float("nan"))
    return TrainResult(model.eval(), losses, train_time)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate_variant(
    model: VLAAdapter, episodes: int, val_data: tabletop.TabletopData | None = None, split: str = "test"
) -> dict[str, float]:
    """Closed-loop success on ``episodes`` scenes of ``split`` and action L1 (normalised units).

    ``initial_action_l1``: L1 to the expert chunk at each episode's first state (closed-loop scenes);
    ``val_action_l1``: L1 over every chunk of ``val_data`` (open loop, held-out examples).
    """
    result = tabletop.evaluate_model(model, split, episodes, progress=False)
    successes = sum(e["success"] for e in result["episodes"])
    low, high = wilson_interval(successes, result["num_episodes"])
    out = {
        "success_rate": result["success_rate"],
        "success_ci_low": low,
        "success_ci_high": high,
        "episodes": float(result["num_episodes"]),
        "initial_action_l1": result.get("action_l1", float("nan")),
        "wrong_object_rate": result["outcomes"]["wrong_object"] / max(result["num_episodes"], 1),
    }
    if val_data is not None and len(val_data):
        out["val_action_l1"] = tabletop.action_l1(model, val_data)
    return out


@torch.no_grad()
def action_query_attention(model: VLAAdapter, data: tabletop.TabletopData, n: int = 8) -> pd.DataFrame:
    """Where the action queries attend in the LLM, per layer and key segment.

    Mean over the first ``n`` examples of ``data`` and over heads of ``analysis.segment_mass``
    (mode ``"segments"``), next to ``uniform``: the mass a query spreading evenly over the keys its
    mask allows would put on the segment (the token-count baseline), and ``ratio`` = value / uniform.
    Columns: layer, key_segment, value, uniform, ratio.
    """
    was_training = model.training
    model.eval()
    batch = data.batch(range(min(n, len(data))))
    batch.pop("actions")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    try:
        with capture(model, mode="segments") as cache:
            out = model(**batch)
    finally:
        model.train(was_training)
    df = segment_mass(cache)
    df = df[df["query_segment"] == "action_queries"]
    mean = df.groupby(["layer", "key_segment"], as_index=False)["value"].mean()
    uniform = uniform_mass(out.allowed.cpu(), out.layouts, "action_queries")
    mean["uniform"] = mean["key_segment"].map(uniform).astype(float)
    mean["ratio"] = mean["value"] / mean["uniform"].where(mean["uniform"] > 0)
    order = {s: i for i, s in enumerate(CONTENT_SEGMENTS)}
    mean = mean.sort_values(["layer", "key_segment"], key=lambda c: c.map(order) if c.name == "key_segment" else c)
    return mean.reset_index(drop=True)


def uniform_mass(allowed: torch.Tensor, layouts: Sequence[Any], query_segment: str) -> dict[str, float]:
    """Mass per key segment of a uniform distribution over the allowed keys, averaged over the queries
    of ``query_segment`` and over samples (``allowed``: the model's boolean (B, S, S) mask)."""
    totals: dict[str, list[float]] = {}
    for b, layout in enumerate(layouts):
        segments = layout.segments(fine=True)
        rows = allowed[b, layout.span(query_segment).slice].double()
        rows = rows / rows.sum(dim=1, keepdim=True)
        per_key: dict[str, float] = {}
        for name, span in segments.items():
            if name == "padding" or not len(span):
                continue
            key = coarse_segment(name)
            per_key[key] = per_key.get(key, 0.0) + float(rows[:, span.slice].sum(dim=1).mean())
        for key, value in per_key.items():
            totals.setdefault(key, []).append(value)
    return {k: float(np.mean(v)) for k, v in totals.items()}


@dataclass
class VariantRun:
    """Everything one trained variant produced (tidy frames carry the variant's key columns)."""

    metrics: pd.DataFrame
    losses: pd.DataFrame
    attention: pd.DataFrame


def _key(variant: Variant, seed: int) -> dict[str, Any]:
    return {"variant": variant.name, "backbone": variant.backbone, "projector": variant.projector,
            "attention": variant.attention, "seed": seed}


def run_variant(
    base: VLAConfig,
    variant: Variant,
    train_config: TrainConfig,
    val_data: tabletop.TabletopData,
    episodes: int,
    scale: str = "small",
    attention_examples: int = 8,
    tokenizer: QwenTokenizer | None = None,
    evaluate_init: bool = True,
) -> VariantRun:
    """Train one variant (:func:`train_variant`, seed ``train_config.seed``), evaluate it on
    ``episodes`` test scenes and ``val_data`` (re-prepared for the variant), and read where its action
    queries attend.

    Skipped variants give one metrics row (``status`` "skipped", ``reason``) and empty frames.
    Attention and the held-out action L1 (with ``evaluate_init`` also the closed-loop evaluation) are
    read at initialisation (``stage`` "init") and after training (``"trained"``), so every variant is
    compared with its own start.
    """
    key = _key(variant, train_config.seed)
    if not variant.valid:
        metrics = pd.DataFrame([{**key, "status": "skipped", "reason": variant.skip_reason, "stage": "trained",
                                 "metric": "success_rate", "value": np.nan}])
        return VariantRun(metrics, pd.DataFrame(), pd.DataFrame())
    config = variant_config(base, variant, scale)
    val_pool = data_for(val_data, config, tokenizer)
    init_model = tabletop.build_model(config, seed=train_config.seed, tokenizer=tokenizer, init=train_config.init,
                                      gate=train_config.gate_init).to(train_config.device)
    attention = [action_query_attention(init_model, val_pool, attention_examples).assign(stage="init")]
    if evaluate_init:
        stages = {"init": evaluate_variant(init_model, episodes, val_pool)}
    else:
        stages = {"init": {"val_action_l1": tabletop.action_l1(init_model, val_pool)}}
    del init_model
    result = train_variant(config, train_config)
    attention.append(action_query_attention(result.model, val_pool, attention_examples).assign(stage="trained"))
    trained = evaluate_variant(result.model, episodes, val_pool)
    loss = result.losses["loss"].to_numpy()
    trained["train_loss_final"] = float(np.mean(loss[-max(1, len(loss) // 10):]))
    trained["train_time_s"] = result.train_time_s
    trained["train_steps"] = float(train_config.steps)
    trained["train_examples_seen"] = float(train_config.steps * train_config.batch_size)
    trained["parameters"] = float(sum(p.numel() for p in result.model.parameters()))
    stages["trained"] = trained
    metrics = pd.DataFrame([{**key, "status": "ok", "reason": "", "stage": stage, "metric": m, "value": float(v)}
                            for stage, values in stages.items() for m, v in values.items()])
    losses = result.losses.copy()
    for name, value in reversed(key.items()):
        losses.insert(0, name, value)
    frame = pd.concat(attention, ignore_index=True)
    for name, value in reversed(key.items()):
        frame.insert(0, name, value)
    return VariantRun(metrics, losses, frame)


def constant_l1(data: tabletop.TabletopData, val_data: tabletop.TabletopData) -> float:
    """Action L1 on ``val_data`` of the best input-independent predictor fitted on ``data``.

    The per-element median of the training chunks (the minimiser of L1 over ``data``): a model must
    beat this to have used its inputs at all.
    """
    median = np.median(data.actions, axis=0)
    return float(np.abs(val_data.actions - median[None]).mean())


def run_grid(
    base: VLAConfig,
    variants: Sequence[Variant],
    train_config: TrainConfig,
    val_data: tabletop.TabletopData,
    episodes: int,
    seeds: Sequence[int] = (0,),
    scale: str = "small",
    attention_examples: int = 8,
    tokenizer: QwenTokenizer | None = None,
    on_variant: Callable[[Variant, int], None] | None = None,
    evaluate_init: bool = True,
) -> VariantRun:
    """:func:`run_variant` for every variant and seed, concatenated."""
    runs = []
    for variant in variants:
        for seed in seeds:
            if on_variant is not None:
                on_variant(variant, seed)
            tc = dataclasses.replace(train_config, seed=int(seed))
            runs.append(run_variant(base, variant, tc, val_data, episodes, scale, attention_examples, tokenizer,
                                    evaluate_init))

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return VariantRun(cat([r.metrics for r in runs]), cat([r.losses for r in runs]), cat([r.attention for r in runs]))


def summarize_runs(metrics: pd.DataFrame, stage: str = "trained") -> pd.DataFrame:
    """Wide view of :func:`run_grid` metrics at ``stage``: one row per variant, mean over seeds.

    Skipped variants keep a row with their ``skip_reason``; ``seeds`` counts the seeds averaged.
    """
    index = ["backbone", "projector", "attention"]
    ok = metrics[(metrics["status"] == "ok") & (metrics["stage"] == stage)]
    wide = ok.pivot_table(index=index, columns="metric", values="value", aggfunc="mean")
    wide.columns.name = None
    wide["seeds"] = ok.groupby(index)["seed"].nunique()
    skipped = metrics[metrics["status"] == "skipped"].drop_duplicates(index).set_index(index)["reason"]
    wide = wide.reindex(wide.index.union(skipped.index))
    wide["skip_reason"] = skipped.reindex(wide.index).fillna("")
    wide = wide.reset_index()
    keys = _order_key(wide) * 10 + wide["attention"].map({m: i for i, m in enumerate(MASKS)})
    return wide.iloc[np.argsort(keys.to_numpy(), kind="stable")].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib Figures without pyplot; export with vla_lab.figures.export_figure(data=...))
# ---------------------------------------------------------------------------------------------

_MASK_COLORS = {"causal": "#1b9e77", "bidirectional": "#d95f02"}


def _order_key(frame: pd.DataFrame) -> pd.Series:
    backbone = frame["backbone"].map({b: i for i, b in enumerate(BACKBONES)})
    projector = frame["projector"].map({p: i for i, p in enumerate(PROJECTORS)})
    return backbone * 10 + projector


def _architectures(frame: pd.DataFrame) -> list[str]:
    rows = frame.drop_duplicates(["backbone", "projector"]).copy()
    rows = rows.iloc[np.argsort(_order_key(rows).to_numpy(), kind="stable")]
    return [f"{b} | {p}" for b, p in zip(rows["backbone"], rows["projector"])]


def _masks(frame: pd.DataFrame) -> list[str]:
    present = set(frame["attention"])
    return [m for m in MASKS if m in present]


def _barh(ax: Any, frame: pd.DataFrame, value: str, low: str | None = None, high: str | None = None) -> list[str]:
    """Horizontal bars per architecture, one per mask; returns the architecture labels (top to bottom)."""
    labels = _architectures(frame)
    masks = _masks(frame)
    height = 0.8 / max(len(masks), 1)
    for j, mask in enumerate(masks):
        sel = frame[frame["attention"] == mask]
        lookup = {f"{b} | {p}": i for i, (b, p) in enumerate(zip(sel["backbone"], sel["projector"]))}
        ys, xs, err = [], [], [[], []]
        for i, label in enumerate(labels):
            if label not in lookup:
                continue
            row = sel.iloc[lookup[label]]
            ys.append(i + (j - (len(masks) - 1) / 2) * height)
            xs.append(row[value])
            err[0].append(row[value] - row[low] if low else 0.0)
            err[1].append(row[high] - row[value] if high else 0.0)
        ax.barh(ys, xs, height=height, color=_MASK_COLORS.get(mask, "grey"), label=mask,
                xerr=err if low or high else None, capsize=2)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    return labels


def plot_parameters(params: pd.DataFrame) -> Figure:
    """Total parameters (millions) per backbone x projector, one heatmap per scale; skipped cells hatched."""
    scales = [s for s in SCALES if s in set(params["scale"])]
    fig = Figure(figsize=(5.2 * len(scales), 3.6), layout="constrained")
    axes = fig.subplots(1, len(scales), squeeze=False)[0]
    for ax, scale in zip(axes, scales):
        sel = params[(params["scale"] == scale) & (params["component"] == "total")]
        backbones = [b for b in BACKBONES if b in set(sel["backbone"])]
        matrix = np.full((len(backbones), len(PROJECTORS)), np.nan)
        for _, row in sel.iterrows():
            matrix[backbones.index(row["backbone"]), PROJECTORS.index(row["projector"])] = row["value"] / 1e6
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", aspect="auto")
        low, high = np.nanmin(matrix), np.nanmax(matrix)
        for (i, j), value in np.ndenumerate(matrix):
            if np.isnan(value):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="grey"))
                ax.text(j, i, "skipped", ha="center", va="center", fontsize=8, color="dimgrey")
            else:
                bright = high > low and (value - low) / (high - low) > 0.6
                text = f"{value:,.1f}M" if value >= 10 else f"{value:.3f}M"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
        ax.set_xticks(range(len(PROJECTORS)), PROJECTORS)
        ax.set_yticks(range(len(backbones)), backbones)
        ax.set_xlabel("projector")
        ax.set_ylabel("vision backbone")
        ax.set_title(f"total parameters, {scale} scale")
        fig.colorbar(image, ax=ax, label="parameters (millions)")
    return fig


def plot_cost(cost: pd.DataFrame, batch: int) -> Figure:
    """Forward latency (median, min-max bars) and peak activation memory per variant at ``batch``."""
    ok = cost[(cost["status"] == "ok") & (cost["batch"] == batch)]
    latency = ok[ok["metric"] == "latency_ms"]
    memory = ok[ok["metric"] == "peak_activation_bytes"].assign(value=lambda d: d["value"] / 2**20)
    fig = Figure(figsize=(10, 0.45 * latency["projector"].count() / max(len(_masks(latency)), 1) + 1.8),
                 layout="constrained")
    ax_lat, ax_mem = fig.subplots(1, 2, sharey=True)
    _barh(ax_lat, latency, "value", "min", "max")
    _barh(ax_mem, memory, "value")
    device = ", ".join(sorted(set(latency["device"]))) if len(latency) else "?"
    ax_lat.set_xlabel("forward latency (ms, median; bars min-max)")
    ax_mem.set_xlabel("peak memory allocated in the forward (MiB)")
    ax_lat.set_ylabel("backbone | projector")
    ax_lat.set_title(f"forward latency, batch {batch}, {device}")
    ax_mem.set_title(f"forward memory beyond the weights, batch {batch}")
    ax_lat.legend(title="LLM mask", loc="lower right", fontsize=8)
    return fig


def pooled_success(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per variant and stage: success pooled over seeds (Wilson interval), held-out L1 averaged.

    Columns: backbone, projector, attention, stage, successes, episodes, val_action_l1, seeds,
    success_rate, ci_low, ci_high (NaN where a stage was not evaluated closed-loop).
    """
    ok = metrics[metrics["status"] == "ok"]
    wide = ok.pivot_table(index=["backbone", "projector", "attention", "stage", "seed"], columns="metric",
                          values="value").reset_index()
    for column in ("success_rate", "episodes", "val_action_l1"):
        if column not in wide:
            wide[column] = np.nan
    wide["successes"] = (wide["success_rate"] * wide["episodes"]).round()
    group = wide.groupby(["backbone", "projector", "attention", "stage"], as_index=False)
    out = group.agg(successes=("successes", "sum"), episodes=("episodes", "sum"),
                    val_action_l1=("val_action_l1", "mean"), seeds=("seed", "nunique"))
    out["episodes"] = out["episodes"].where(out["episodes"] > 0)
    out["success_rate"] = out["successes"] / out["episodes"]
    bounds = [wilson_interval(int(k), int(n)) if n == n else (np.nan, np.nan)
              for k, n in zip(out["successes"], out["episodes"])]
    out["ci_low"], out["ci_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return out


def plot_training(metrics: pd.DataFrame, constant: float | None = None) -> Figure:
    """Closed-loop success (Wilson 95% interval) and held-out action L1 per variant, after training
    (bars) and at initialisation (black ticks); ``constant``: the input-independent predictor's L1."""
    pooled = pooled_success(metrics)
    trained, init = pooled[pooled["stage"] == "trained"], pooled[pooled["stage"] == "init"]
    count = len(_architectures(trained)) if len(trained) else 1
    fig = Figure(figsize=(10, 0.45 * count + 1.9), layout="constrained")
    ax_s, ax_l = fig.subplots(1, 2, sharey=True)
    labels = _barh(ax_s, trained, "success_rate", "ci_low", "ci_high")
    _barh(ax_l, trained, "val_action_l1")
    masks = _masks(trained)
    height = 0.8 / max(len(masks), 1)
    for j, mask in enumerate(masks):
        sel = trained[trained["attention"] == mask]
        for b, p, k, n in zip(sel["backbone"], sel["projector"], sel["successes"], sel["episodes"]):
            y = labels.index(f"{b} | {p}") + (j - (len(masks) - 1) / 2) * height
            ax_s.text(0.99, y, f"{int(k)}/{int(n)}", ha="right", va="center", fontsize=7)
    for ax, value in ((ax_s, "success_rate"), (ax_l, "val_action_l1")):
        for j, mask in enumerate(masks):
            sel = init[init["attention"] == mask]
            ys = [labels.index(f"{b} | {p}") + (j - (len(masks) - 1) / 2) * height
                  for b, p in zip(sel["backbone"], sel["projector"])]
            if sel[value].notna().any():
                ax.scatter(sel[value], ys, marker="|", s=120, color="black",
                           label="at initialisation" if j == 0 else None, zorder=3)
    if constant is not None:
        ax_l.axvline(constant, color="grey", linestyle="--", label="constant predictor")
    seeds = int(pooled["seeds"].max()) if len(pooled) else 0
    episodes = int(trained["episodes"].max()) if len(trained) else 0
    ax_s.set_xlabel(f"success rate ({episodes} test episodes x {seeds} seed(s); 95% Wilson)")
    ax_l.set_xlabel("action L1, held-out chunks (normalised units)")
    ax_s.set_ylabel("backbone | projector")
    ax_s.set_xlim(0, 1)
    ax_s.set_title("closed-loop success")
    ax_l.set_title("open-loop action L1")
    ax_s.legend(loc="lower center", fontsize=8)
    ax_l.legend(loc="best", fontsize=8)
    return fig


def plot_losses(losses: pd.DataFrame, mse_warmup_steps: int = 0) -> Figure:
    """The trainer's logged action loss per step and variant, one panel per LLM mask (a dashed line
    where the loss switches from MSE to L1, when ``mse_warmup_steps`` > 0)."""
    masks = _masks(losses)
    fig = Figure(figsize=(5 * len(masks), 3.4), layout="constrained")
    axes = fig.subplots(1, len(masks), sharey=True, squeeze=False)[0]
    for ax, mask in zip(axes, masks):
        sel = losses[losses["attention"] == mask]
        for label in _architectures(sel):
            backbone, projector = label.split(" | ")
            curve = sel[(sel["backbone"] == backbone) & (sel["projector"] == projector)]
            curve = curve.groupby("step")["loss"].mean()
            ax.plot(curve.index, curve.to_numpy(), label=label, linewidth=1.2)
        if mse_warmup_steps > 0:
            ax.axvline(mse_warmup_steps + 0.5, color="grey", linestyle="--", linewidth=1, label="MSE -> L1")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"training loss, {mask} mask")
    axes[0].set_ylabel("action loss (normalised actions)")
    axes[-1].legend(fontsize=7, loc="upper right")
    return fig


def attention_matrix(attention: pd.DataFrame, key_segment: str, stage: str, value: str) -> pd.DataFrame:
    """Variants (rows, grid order) x layers of ``value`` for the action queries' mass on ``key_segment``."""
    sel = attention[(attention["key_segment"] == key_segment) & (attention["stage"] == stage)]
    table = sel.pivot_table(index=["backbone", "projector", "attention"], columns="layer", values=value)
    order = table.reset_index()
    keys = _order_key(order) * 10 + order["attention"].map({m: i for i, m in enumerate(MASKS)})
    table = table.iloc[np.argsort(keys.to_numpy(), kind="stable")]
    table.index = [" | ".join(i) for i in table.index]
    return table


def plot_attention(attention: pd.DataFrame, key_segment: str = "vision") -> Figure:
    """Action queries -> ``key_segment`` in every LLM layer: trained mass relative to the uniform
    baseline (1 = spread evenly over the allowed keys), and the change from initialisation."""
    ratio = attention_matrix(attention, key_segment, "trained", "ratio")
    delta = (attention_matrix(attention, key_segment, "trained", "value")
             - attention_matrix(attention, key_segment, "init", "value")) * 100
    fig = Figure(figsize=(11, 0.32 * len(ratio) + 1.8), layout="constrained")
    ax_r, ax_d = fig.subplots(1, 2, sharey=True)
    spread = float(np.nanmax(np.abs(ratio.to_numpy() - 1))) if ratio.size else 0.0
    spread = max(spread, 1e-3)
    image = ax_r.imshow(ratio.to_numpy(), cmap="RdBu_r", aspect="auto",
                        norm=TwoSlopeNorm(1.0, max(0.0, 1 - spread), 1 + spread))
    fig.colorbar(image, ax=ax_r, label="mass / uniform-baseline mass")
    limit = max(float(np.nanmax(np.abs(delta.to_numpy()))) if delta.size else 0.0, 1e-3)
    image = ax_d.imshow(delta.to_numpy(), cmap="PuOr_r", aspect="auto", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax_d, label="trained - init (percentage points)")
    for ax in (ax_r, ax_d):
        ax.set_xticks(range(ratio.shape[1]), [str(c) for c in ratio.columns])
        ax.set_xlabel("LLM layer")
    ax_r.set_yticks(range(len(ratio)), list(ratio.index))
    ax_r.set_ylabel("backbone | projector | mask")
    ax_r.set_title("after training, relative to uniform")
    ax_d.set_title("change from initialisation")
    fig.suptitle(f"LLM attention mass of the action queries on {key_segment} (mean over heads and examples)")
    return fig


def plot_attention_segments(attention: pd.DataFrame, stage: str = "trained") -> Figure:
    """Action-query mass on every key segment relative to the uniform baseline, mean over layers, per
    variant; segments a mask hides from the queries (uniform share 0) are marked "masked"."""
    sel = attention[attention["stage"] == stage]
    segments = [s for s in CONTENT_SEGMENTS if s in set(sel["key_segment"])]
    ratios = {s: attention_matrix(attention, s, stage, "ratio").mean(axis=1) for s in segments}
    order = attention_matrix(attention, segments[0], stage, "value").index
    table = pd.DataFrame(ratios).reindex(order)[segments]
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(7.5, 0.32 * len(table) + 1.8), layout="constrained")
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    spread = max(float(np.max(np.abs(finite - 1))) if finite.size else 0.0, 1e-3)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", aspect="auto",
                      norm=TwoSlopeNorm(1.0, max(0.0, 1 - spread), 1 + spread))
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, "masked" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="dimgrey" if not np.isfinite(value) else "black")
    fig.colorbar(image, ax=ax, label="mass / uniform-baseline mass (mean over layers)")
    ax.set_xticks(range(len(segments)), segments, rotation=30, ha="right")
    ax.set_yticks(range(len(table)), list(table.index))
    ax.set_xlabel("key segment")
    ax.set_ylabel("backbone | projector | mask")
    ax.set_title(f"where the action queries attend ({stage})")
    return fig


__all__ = [
    "BACKBONES",
    "DESIGNS",
    "MASKS",
    "PIVOT_BACKBONE",
    "PIVOT_PROJECTOR",
    "SCALES",
    "PeakMemory",
    "TrainResult",
    "Variant",
    "VariantRun",
    "action_query_attention",
    "attention_matrix",
    "constant_l1",
    "cost_table",
    "data_for",
    "evaluate_variant",
    "forward_peak_bytes",
    "is_fused",
    "measure_cost",
    "parameter_counts",
    "parameter_table",
    "pooled_success",
    "plot_attention",
    "plot_attention_segments",
    "plot_cost",
    "plot_losses",
    "plot_parameters",
    "plot_training",
    "run_grid",
    "run_variant",
    "short_recipe",
    "skip_reason",
    "stand_in_vision",
    "summarize_runs",
    "train_variant",
    "trainer_config",
    "uniform_mass",
    "unused_vision_parameters",
    "variant_config",
    "variant_grid",
    "wilson_interval",
]
