"""Cost of each ablation variant: forward latency and the memory a forward needs beyond the weights."""

from __future__ import annotations

import statistics
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vla_lab.bench.inference import synthetic_batch, time_callable
from vla_lab.config import VLAConfig
from vla_lab.model import VLAAdapter, random_model
from vla_lab.studies.ablation.grid import Variant, deepened_config, parameter_counts, variant_config

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

    def _release(self, key: tuple[str, int]) -> Callable[[Any], None]:
        """The weak-reference callback that frees ``key``."""
        return lambda _ref: self._free(key)

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
            self._refs[key] = weakref.ref(storage, self._release(key))
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
    rows = _measure(random_model(config, seed=seed, dtype=dtype, device=device).eval(), batch_sizes, warmup, repeats)
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
                model = random_model(variant_config(base, v, scale), dtype=dtype, device=device).eval()
            model.set_attention(v.attention)
            rows.extend({**key, "status": "ok", "reason": "", **row} for row in _measure(model, **kwargs))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def equal_parameter_cost(
    base: VLAConfig,
    variants: Iterable[Variant],
    reference: Variant,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`measure_cost` at small scale with every variant deepened to the parameters of ``reference``.

    Every valid variant gets the ViT depth whose total parameter count comes closest to the reference's
    (:func:`deepened_config`; the reference itself keeps its depth). Tidy rows as :func:`cost_table`, plus
    ``depth`` (each ViT's), ``parameters`` and ``reference_parameters``; skipped variants get one row
    with their reason.
    """
    device = torch.device(device)
    target = parameter_counts(variant_config(base, reference, "small"))["total"]
    rows = []
    for v in dict.fromkeys([reference, *variants]):
        key = {"variant": v.name, "backbone": v.backbone, "projector": v.projector, "attention": v.attention,
               "scale": "small", "reference": reference.name, "reference_parameters": float(target)}
        if not v.valid:
            rows.append({**key, "status": "skipped", "reason": v.skip_reason, "metric": "latency_ms",
                         "value": np.nan})
            continue
        config, depth = deepened_config(base, v, target)  # the reference keeps its own depth
        key.update(depth=depth, parameters=float(parameter_counts(config)["total"]))
        model = random_model(config, dtype=dtype, device=device).eval()
        rows.extend({**key, "status": "ok", "reason": "", **row} for row in _measure(model, **kwargs))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return pd.DataFrame(rows)
