"""Dataset statistics: proprio normalisation and action un-normalisation (upstream's bounds schemes).

``bounds_q99`` maps [q01, q99] to [-1, 1], ``bounds`` maps [min, max]; dimensions whose ``mask`` is
false pass through unchanged. Proprio is clipped to [-1, 1] after normalisation; actions are not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_lab.errors import InputError

_BOUNDS_KEYS = {"bounds": ("min", "max"), "bounds_q99": ("q01", "q99")}


def resolve_unnorm_key(norm_stats: dict[str, Any] | None, unnorm_key: str | None) -> str:
    """The dataset whose statistics to use; one-line errors when it is missing or ambiguous."""
    if not norm_stats:
        raise InputError("unnorm_key: the model has no dataset statistics (norm_stats is empty)")
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise InputError(
                f"unnorm_key: got None but the model has statistics for {len(norm_stats)} datasets; "
                f"expected one of {sorted(norm_stats)}"
            )
        return next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise InputError(f"unnorm_key: got {unnorm_key!r}, expected one of {sorted(norm_stats)}")
    return unnorm_key


def _bounds(stats: dict[str, Any], normalization: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low_key, high_key = _BOUNDS_KEYS[normalization]
    missing = [k for k in (low_key, high_key) if not isinstance(stats, dict) or k not in stats]
    if missing:
        raise InputError(
            f"norm_stats: got statistics without {missing}, expected {low_key!r} and {high_key!r} "
            f"for {normalization!r} normalisation"
        )
    low, high = np.asarray(stats[low_key], dtype=np.float64), np.asarray(stats[high_key], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    return low, high, mask


def normalize_proprio(proprio: Any, stats: dict[str, Any], normalization: str = "bounds_q99") -> np.ndarray:
    """Raw robot state -> [-1, 1] with the dataset's ``proprio`` statistics."""
    low, high, mask = _bounds(stats, normalization)
    x = np.asarray(proprio, dtype=np.float64)
    if x.shape[-1] != low.shape[-1]:
        raise InputError(f"proprio: got {x.shape[-1]} values, expected {low.shape[-1]} (dataset statistics)")
    scaled = 2.0 * (x - low) / (high - low + 1e-8) - 1.0
    return np.clip(np.where(mask, scaled, x), -1.0, 1.0)


def unnormalize_actions(actions: Any, stats: dict[str, Any], normalization: str = "bounds_q99") -> np.ndarray:
    """Normalised actions in [-1, 1] -> robot actions with the dataset's ``action`` statistics."""
    low, high, mask = _bounds(stats, normalization)
    a = np.asarray(actions, dtype=np.float64)
    if a.shape[-1] != low.shape[-1]:
        raise InputError(f"actions: got dimension {a.shape[-1]}, expected {low.shape[-1]} (dataset statistics)")
    return np.where(mask, 0.5 * (a + 1.0) * (high - low + 1e-8) + low, a)


def normalize_actions(actions: Any, stats: dict[str, Any], normalization: str = "bounds_q99") -> np.ndarray:
    """Inverse of :func:`unnormalize_actions` (used to build training targets), clipped to [-1, 1]."""
    low, high, mask = _bounds(stats, normalization)
    a = np.asarray(actions, dtype=np.float64)
    scaled = 2.0 * (a - low) / (high - low + 1e-8) - 1.0
    return np.clip(np.where(mask, scaled, a), -1.0, 1.0)


def array_statistics(values: np.ndarray, mask: list[bool]) -> dict[str, list[Any]]:
    """One entry of a ``dataset_statistics.json`` (``action`` or ``proprio``) for rows ``values`` (N, D):
    mean, std, max, min, q01, q99 per dimension, and ``mask`` (False: the dimension is not normalised)."""
    return {
        "mean": [float(v) for v in values.mean(axis=0)],
        "std": [float(v) for v in values.std(axis=0)],
        "max": [float(v) for v in values.max(axis=0)],
        "min": [float(v) for v in values.min(axis=0)],
        "q01": [float(v) for v in np.quantile(values, 0.01, axis=0)],
        "q99": [float(v) for v in np.quantile(values, 0.99, axis=0)],
        "mask": list(mask),
    }


def show_values(values: Any) -> str:
    """The first values of an array or tensor, for an error message."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    flat = np.asarray(values).ravel()
    text = ", ".join(str(v) for v in flat[:8]) + (", ..." if flat.size > 8 else "")
    return f"[{text}]"


def finite_numbers(values: Any, field: str) -> np.ndarray:
    """``values`` as a float64 array of finite numbers; one-line InputError naming ``field`` otherwise."""
    if isinstance(values, (str, bytes)):
        raise InputError(f"{field}: got {values!r}, expected numbers")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{field}: got {values!r}, expected numbers") from None
    if not np.isfinite(array).all():
        raise InputError(f"{field}: got {show_values(array)}, expected finite numbers (NaN and infinity are refused)")
    return array
