"""What :meth:`vla_lab.VLAAdapter.forward` accepts: its data arguments, and the checks that turn malformed
token ids, masks and proprio, and non-finite predicted actions, into one-line :class:`~vla_lab.errors.InputError`
messages."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch

from vla_lab.errors import InputError
from vla_lab.processing.normalization import finite_numbers, show_values

#: The keyword arguments of :meth:`VLAAdapter.forward` that carry data (as :meth:`prepare_inputs` returns them).
FORWARD_KEYS = ("pixel_values", "input_ids", "attention_mask", "proprio")


def forward_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The :meth:`VLAAdapter.forward` keyword arguments of a :meth:`VLAAdapter.prepare_inputs` result."""
    missing = [k for k in ("pixel_values", "input_ids") if k not in inputs]
    if missing:
        raise InputError(f"inputs: missing {missing}, expected the output of model.prepare_inputs(...)")
    return {k: inputs[k] for k in FORWARD_KEYS if k in inputs}


def _is_index(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_ids(input_ids: Any, attention_mask: Any, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (lists or tensors) and mask -> (B, L) long tensors, right-padded, ids below ``vocab_size``."""
    if not isinstance(input_ids, torch.Tensor):
        nested = len(input_ids) > 0 and isinstance(input_ids[0], (list, tuple))
        rows = [list(r) for r in input_ids] if nested else [list(input_ids)]
        width = max((len(r) for r in rows), default=0)
        odd = next((v for r in rows for v in r if isinstance(v, bool) or not _is_index(v)), None)
        if odd is not None:
            raise InputError(f"input_ids: got {odd!r} ({type(odd).__name__}), expected integer token ids")
        if attention_mask is None:
            attention_mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
        raise InputError(f"input_ids: got dtype {input_ids.dtype}, expected integer token ids")
    input_ids = input_ids.long()
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise InputError(f"input_ids: got shape {tuple(input_ids.shape)}, expected (B, L) with L >= 1")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = torch.as_tensor(attention_mask, device=input_ids.device).long().reshape(input_ids.shape)
    lengths = attention_mask.sum(dim=1)
    expected = (torch.arange(input_ids.shape[1], device=input_ids.device)[None] < lengths[:, None]).long()
    if not torch.equal(attention_mask, expected):
        raise InputError("attention_mask: got a mask that is not right-padded, expected ones then zeros per row")
    if int(lengths.min()) < 1:
        raise InputError("input_ids: got an empty prompt, expected at least one token per sample")
    if int(input_ids.max()) >= vocab_size or int(input_ids.min()) < 0:
        raise InputError(f"input_ids: got ids up to {int(input_ids.max())}, expected 0 <= id < vocab_size {vocab_size}")
    return input_ids, attention_mask


def check_proprio(proprio: Any, batch: int, dim: int, expected: bool, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor | None:
    """Normalised proprio -> (B, ``dim``) in ``dtype`` on ``device`` (None when the model takes none,
    ``expected`` False); finite numbers only."""
    if proprio is None:
        if expected:
            raise InputError(f"proprio: got None, expected ({batch}, {dim}) values (config.use_proprio is True)")
        return None
    if not expected:
        raise InputError("proprio: got values, expected None (config.use_proprio is False)")
    if not isinstance(proprio, torch.Tensor):
        proprio = finite_numbers(proprio, "proprio")
    proprio = torch.as_tensor(proprio, device=device)
    if not proprio.is_floating_point() or not bool(torch.isfinite(proprio).all()):
        raise InputError(f"proprio: got {show_values(proprio)}, expected finite numbers")
    if proprio.ndim == 1:
        proprio = proprio[None]
    if tuple(proprio.shape) != (batch, dim):
        raise InputError(f"proprio: got shape {tuple(proprio.shape)}, expected ({batch}, {dim})")
    return proprio.to(dtype)


def check_actions(actions: torch.Tensor) -> torch.Tensor:
    """``actions`` when every value is finite; else the one-line error the API and the CLI share (reading the
    values synchronises a GPU stream)."""
    if not bool(torch.isfinite(actions).all()):
        raise InputError("actions: the model predicted NaN or infinite values, expected finite actions "
                         "(check the checkpoint's weights and the inputs)")
    return actions
