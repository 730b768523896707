"""The small trained models shipped inside the package (the embedded default).

Two VLA-Adapter models of the ``tabletop`` architecture, trained on the synthetic tabletop world
(:mod:`vla_lab.world`) with the causal and with the bidirectional LLM mask. They live in
``vla_lab/models/tabletop-{mask}/`` in the released checkpoint layout and load with
:func:`vla_lab.load_pretrained`. ``models/README.md`` gives the command that reproduces each.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from vla_lab.errors import InputError

MASKS = ("causal", "bidirectional")


def shipped_path(attention: str = "causal") -> Path:
    """Directory of the shipped model trained with ``attention`` (``causal`` or ``bidirectional``)."""
    if attention not in MASKS:
        raise InputError(f"attention: got {attention!r}, expected one of {MASKS}")
    return Path(str(resources.files("vla_lab") / "models" / f"tabletop-{attention}"))


def load_shipped(
    attention: str = "causal", dtype: torch.dtype | str = torch.float32, device: str = "cpu", **kwargs: Any
) -> Any:
    """Load a shipped model; ``kwargs`` go to :func:`vla_lab.load_pretrained` (e.g. ``attention=`` override
    via ``mask=``)."""
    from vla_lab.checkpoint import load_pretrained

    path = shipped_path(attention)
    if not (path / "config.json").exists():
        raise InputError(f"attention: no shipped model at {path}; expected vla_lab/models/tabletop-{attention}/")
    mask = kwargs.pop("mask", None)
    return load_pretrained(path, attention=mask, dtype=dtype, device=device, **kwargs)
