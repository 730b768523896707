"""Exception types. Every message is one line naming the field, what was given and what was expected."""

from __future__ import annotations

import operator


class VLALabError(Exception):
    """Base class of vla_lab's own errors."""


class ConfigError(VLALabError, ValueError):
    """A configuration field has a value vla_lab cannot use."""


class InputError(VLALabError, ValueError):
    """An input to a model, processor or analysis has the wrong type, shape or value."""


class CheckpointError(VLALabError, ValueError):
    """A checkpoint directory or file is missing, malformed or does not match the model."""


class ExportError(VLALabError, FileExistsError):
    """An export would overwrite an existing file, or write a record without its data or with an unusable path."""


class InterruptError(VLALabError):
    """A long command was stopped (Ctrl-C); the message says what was kept and how to continue."""


class MissingDependencyError(VLALabError, ImportError):
    """An optional dependency (e.g. the LIBERO simulator) is not installed; the message says how to install it."""


def error_text(exc: BaseException) -> str:
    """An exception as a record's ``error``: its type and message on one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


#: Seeds are what NumPy's legacy seeding and the simulators take.
SEED_RANGE = 2**32


def check_seed(value: object, field: str = "seed") -> int:
    """A seed as an int in [0, 2**32) (Python or NumPy integers), else a one-line :class:`InputError`."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or isinstance(value, bool):
        raise InputError(f"{field}: got {value!r}, expected an integer in [0, 2**32)")
    if not 0 <= number < SEED_RANGE:
        raise InputError(f"{field}: got {number}, expected an integer in [0, 2**32)")
    return number
