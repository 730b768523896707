"""Where and in what precision a model runs: device and dtype names checked against this machine."""

from __future__ import annotations

import torch

from vla_lab.errors import InputError

DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: str | torch.device, field: str = "device") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... -> a torch.device this machine has; one-line InputError otherwise."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{field}: got {device!r}, expected cpu, cuda or cuda:N") from None
    if resolved.type not in DEVICE_TYPES:
        raise InputError(f"{field}: got {device!r}, expected cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{field}: got {device!r}, but CUDA is not available on this machine; expected cpu")
        if resolved.index is not None and resolved.index >= count:
            raise InputError(f"{field}: got {device!r}, expected cuda:0 to cuda:{count - 1} ({count} GPU(s) here)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{field}: got {device!r}, but MPS is not available on this machine; expected cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, field: str = "dtype") -> torch.dtype:
    """``"float32"``, ``"bfloat16"``, ``torch.float16`` ... -> a floating torch dtype; one-line InputError otherwise."""
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise InputError(f"{field}: got {dtype!r}, expected a floating torch dtype such as float32 or 'bfloat16'")
    return resolved
