"""Writing files safely: atomic replacement, writable outputs checked before long work, JSON that parses.

Every file vla_lab writes goes through :func:`write_atomic` (a temporary file next to the target, then
``os.replace``), so a killed process leaves the old file or the new one, never half of one. Directories
are replaced the same way with :func:`replace_dir`. :func:`check_output_dir` and
:func:`check_output_file` are called before any long computation, so an unusable ``--out`` fails at once.
Run directories are claimed through :class:`vla_lab.run_dir.RunDir`, which builds on these.
Reading is guarded by :func:`check_regular_file`: a FIFO, socket, device, directory or symlink loop where a file
is expected is one line, never a read that blocks.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vla_lab.errors import ExportError, InputError


def present(path: str | Path) -> bool:
    """Whether anything is at ``path``: a file, a directory, a FIFO, or a symlink even to nothing or to itself
    (``Path.exists`` says no to the last two; :func:`not_a_file` then names what is there)."""
    return os.path.lexists(path)


def not_a_file(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file (symlinks followed), as the words after "which" in an error ("is a
    FIFO (named pipe)", "does not exist"); None when it is one. Opening a FIFO blocks until a writer comes, so
    nothing is read before this says None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a symlink to nothing" if os.path.islink(path) else "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return "is " + next((words for test, words in kinds if test(mode)), "not a regular file")


def check_regular_file(path: str | Path, field: str, expected: str,
                       error: type[Exception] = InputError) -> Path:
    """``path`` when it is a regular file; else ``error`` in one line: ``field: got 'path', which is a FIFO
    (named pipe), expected …``."""
    what = not_a_file(path)
    if what is not None:
        raise error(f"{field}: got {str(path)!r}, which {what}, expected {expected}")
    return Path(path)


def _temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(temporary path)`` next to ``path``, then move the result into place in one step."""
    path = Path(path)
    temp = _temporary_sibling(path)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text (no bare NaN or Infinity: they become null)."""
    return json.dumps(finite_json(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str | Path, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as strict JSON, atomically."""
    write_text(path, dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


_PROBE = ".vla-lab-probe-"


def _probe(directory: Path, field: str, given: str) -> None:
    """Create and remove a file in ``directory``; one-line InputError when that is impossible."""
    try:
        fd, name = tempfile.mkstemp(prefix=_PROBE, dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{field}: got {given!r}, expected a writable directory ({reason})") from None


def check_output_dir(path: str | Path, field: str = "out", given: str | None = None) -> Path:
    """Make sure ``path`` is (or can become) a writable directory; create it. Returns the path.

    ``given`` is what the user typed, for the message (default: ``path``)."""
    directory = Path(path)
    given = str(path) if given is None else given
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{field}: got {given!r}, where {str(directory)!r} is a file, expected a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{field}: got {given!r}, expected a directory that can be created ({reason})") from None
    _probe(directory, field, given)
    return directory


def check_output_file(path: str | Path, field: str = "out", overwrite: bool = False) -> Path:
    """Make sure a file can be written at ``path`` (its folder is created) and, unless ``overwrite``,
    that none exists there yet. Returns the path."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{field}: got {str(path)!r}, which is a directory, expected a file path")
    if present(target) and not overwrite:
        raise ExportError(f"{field}: {path} exists; choose another file")
    check_output_dir(target.parent, field, given=str(path))
    return target


def entries(path: Path) -> list[str]:
    """The sorted names in the directory ``path`` (none when it is not one), without another process's
    writability probe, which lives for an instant."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(_PROBE))


def is_empty_dir(path: Path) -> bool:
    """True when ``path`` does not exist or is a directory without :func:`entries`."""
    return not path.exists() or (path.is_dir() and not entries(path))


def replace_dir(source: Path, target: Path) -> None:
    """Move the finished directory ``source`` to ``target``, replacing an existing one.

    A rename is atomic only onto an absent target, so an existing ``target`` is first renamed aside and
    deleted after the new one is in place: at every moment ``target`` is the old or the new directory.
    """
    old = None
    if target.exists():
        old = _temporary_sibling(target, "old")
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def temporary_dir_for(target: Path) -> Path:
    """A fresh, empty directory next to ``target`` (same file system, so :func:`replace_dir` renames)."""
    temp = _temporary_sibling(target)
    temp.mkdir(parents=True)
    return temp


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete what an interrupted :func:`write_atomic` / :func:`temporary_dir_for` left in ``directory``."""
    removed = []
    for path in directory.glob(".*.tmp-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    for path in directory.glob(".*.old-*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed
