"""Latency and memory measurements (used by ``benchmarks/`` and ``vla-lab bench``).

Timings exclude warm-up, repeat many times and report the median with min and max. On CUDA the
clock is read after ``torch.cuda.synchronize()``; peak memory is ``max_memory_allocated``. On CPU
the peak is the process's maximum resident set size (a high-water mark over the whole process).
"""

from __future__ import annotations

import functools
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vla_lab.config import VLAConfig
from vla_lab.interp import capture
from vla_lab.model import FastVLA, VLAAdapter
from vla_lab.version import __version__


@dataclass
class Measurement:
    """One benchmark row."""

    name: str
    preset: str
    device: str
    device_name: str
    dtype: str
    batch: int
    sequence_length: int
    repeats: int
    median_ms: float
    min_ms: float
    max_ms: float
    actions_per_second: float
    peak_memory_bytes: int
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (``/proc/cpuinfo`` on Linux) with torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def pixel_shape(config: VLAConfig) -> tuple[int, int, int]:
    """(channels, size, size) of one sample's ``pixel_values`` (every view's channels stacked)."""
    size = config.vision.image_size
    return config.vision.channels_per_image * config.num_images, size, size


def synthetic_batch(model: VLAAdapter, batch: int, prompt_length: int = 34, seed: int = 0) -> dict[str, Any]:
    """Random float32 pixels, a prompt of ``prompt_length`` tokens and proprio, on the model's device."""
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    vocab = min(config.llm["vocab_size"], 150000)
    inputs = {
        "pixel_values": torch.randn(batch, *pixel_shape(config), generator=gen),
        "input_ids": torch.randint(3, vocab, (batch, prompt_length), generator=gen),
        "proprio": torch.rand(batch, config.robot.proprio_dim, generator=gen) * 2 - 1 if config.use_proprio else None,
    }
    return {k: (v.to(model.device, model.dtype if v.is_floating_point() else v.dtype) if v is not None else None)
            for k, v in inputs.items()}


def time_callable(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls after ``warmup`` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def measure(
    name: str,
    fn: Callable[[], Any],
    model: VLAAdapter,
    batch: int,
    sequence_length: int,
    warmup: int = 3,
    repeats: int = 20,
    preset: str = "",
    extra: dict[str, Any] | None = None,
) -> Measurement:
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_callable(fn, device, warmup, repeats)
    median = statistics.median(times)
    return Measurement(
        name=name,
        preset=preset,
        device=str(device),
        device_name=device_name(device),
        dtype=str(model.dtype).removeprefix("torch."),
        batch=batch,
        sequence_length=sequence_length,
        repeats=repeats,
        median_ms=median,
        min_ms=min(times),
        max_ms=max(times),
        actions_per_second=batch * model.config.robot.chunk * 1000.0 / median,
        peak_memory_bytes=_peak_memory(device),
        extra=dict(extra or {}),
    )


def run_benchmarks(
    model: VLAAdapter,
    batch_sizes: list[int],
    paths: tuple[str, ...] = ("straightforward", "fast"),
    capture_modes: tuple[str, ...] = (),
    warmup: int = 3,
    repeats: int = 20,
    preset: str = "",
    capture_vision: bool = False,
) -> dict[str, Any]:
    """Time each path (``straightforward``: ``model(...)``; ``fast``: :class:`vla_lab.model.FastVLA`), also
    under capture, per batch size. Fast rows record their largest difference from the straightforward actions
    and whether CUDA graphs ran; capture rows record the cache's size (``capture_vision``: ViT attention too).
    """
    fast = FastVLA(model) if "fast" in paths else None
    rows: list[Measurement] = []
    for batch in batch_sizes:
        inputs = synthetic_batch(model, batch)
        args = (inputs["pixel_values"], inputs["input_ids"], None, inputs["proprio"])
        with torch.inference_mode():
            reference = model(**inputs)
        seq = reference.layouts[0].num_tokens

        def plain(inputs: dict[str, Any] = inputs) -> Any:
            with torch.inference_mode():
                return model(**inputs)

        def plain_captured(mode: str, inputs: dict[str, Any] = inputs) -> Any:
            with capture(model, mode, vision_attention=capture_vision) as cache, torch.inference_mode():
                model(**inputs)
            return cache

        runners: dict[str, tuple[Callable[[], Any], Callable[[str], Any], dict[str, Any]]] = {}
        if "straightforward" in paths:
            runners["forward"] = (plain, plain_captured, {})
        if fast is not None:
            difference = float((fast(*args) - reference.normalized_actions).abs().max())

            def fast_captured(mode: str, args: tuple[Any, ...] = args, fast: FastVLA = fast) -> Any:
                with capture(model, mode, vision_attention=capture_vision) as cache:
                    fast(*args)
                return cache

            runners["fast"] = (functools.partial(fast, *args), fast_captured, {"max_abs_difference": difference})
        for name, (run, run_captured, extra) in runners.items():
            rows.append(measure(name, run, model, batch, seq, warmup, repeats, preset, extra=extra))
            if name == "fast" and fast is not None:
                rows[-1].extra.update(cuda_graphs=fast.cuda_graphs, fast_stats=dict(fast.stats))
            for mode in capture_modes:
                cache = run_captured(mode)
                sizes = {"cache_bytes": cache.nbytes, "cache_tensors": len(cache), "vision_attention": capture_vision}
                del cache
                rows.append(measure(f"{name}+capture[{mode}]", functools.partial(run_captured, mode), model,
                                    batch, seq, warmup, repeats, preset, extra=sizes))
    return {"benchmark": "inference", "environment": environment(), "results": [r.to_dict() for r in rows]}


def environment() -> dict[str, Any]:
    return {
        "vla_lab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
