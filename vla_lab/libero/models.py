"""The LIBERO models vla-lab trains on its own demonstrations and ships (``vla_lab/libero/checkpoints``).

``libero-spatial-causal`` and ``libero-spatial-bidirectional``: preset ``libero-small`` trained with the
recipe :meth:`vla_lab.training.train.TrainConfig.libero_recipe` on the expert's libero_spatial
demonstrations of init states 0-39, the LLM mask the only difference (``checkpoints/README.md`` gives the
commands, seeds, steps and wall time). Each checkpoint carries ``libero_demos.json``, the manifest of the
demonstrations it was trained on (suite, camera resolution, demonstrations per task and their init
states); ``vla-lab eval libero`` renders at that resolution unless told otherwise.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from vla_lab.config import AttentionLike
from vla_lab.errors import InputError
from vla_lab.libero.evaluate import RESOLUTION
from vla_lab.model import VLAAdapter, load_pretrained

#: The suite the shipped models were trained on, and the masks they were trained with.
SUITE = "libero_spatial"
MASKS = ("causal", "bidirectional")
#: The file in a checkpoint directory that names the demonstrations it was trained on.
DEMOS_MANIFEST = "libero_demos.json"


def shipped_name(trained_with: str = "causal") -> str:
    """``libero-spatial-<mask>``."""
    if trained_with not in MASKS:
        raise InputError(f"trained_with: got {trained_with!r}, expected one of {MASKS}")
    return f"{SUITE.replace('_', '-')}-{trained_with}"


SHIPPED = tuple(shipped_name(mask) for mask in MASKS)


def shipped_path(trained_with: str = "causal") -> Path:
    """Directory of the shipped LIBERO model trained with the ``causal`` or ``bidirectional`` mask."""
    return Path(str(resources.files("vla_lab.libero") / "checkpoints" / shipped_name(trained_with)))


def load_shipped(
    trained_with: str = "causal",
    *,
    attention: AttentionLike | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> VLAAdapter:
    """Load the shipped LIBERO model trained with ``trained_with``; ``attention`` overrides its LLM mask,
    as in :func:`vla_lab.load_pretrained` (which gets the other ``kwargs``)."""
    path = shipped_path(trained_with)
    if not (path / "config.json").exists():
        raise InputError(f"shipped model: got {path.name}, which is not in this installation (expected "
                         f"{path / 'config.json'})")
    return load_pretrained(path, attention=attention, dtype=dtype, device=device, **kwargs)


def demos_manifest(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``libero_demos.json`` of a checkpoint directory (None when it was not trained on vla-lab demos)."""
    path = Path(checkpoint) / DEMOS_MANIFEST
    if not path.is_file():
        return None
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest


def camera_resolution(checkpoint: str | Path | None) -> int:
    """The cameras ``eval libero`` draws for a model: at the resolution of the demonstrations it was trained on (its
    checkpoint's :func:`demos_manifest`; 128 for the shipped models), else upstream's 256 (a preset, a released
    checkpoint)."""
    manifest = demos_manifest(checkpoint) if checkpoint else None
    return int(manifest["resolution"]) if manifest else RESOLUTION
