"""A run directory: claimed by one kind of run, resumed with the same settings, cleared only of its own files.

Every command that writes a run (``train``, ``eval libero``, ``libero expert``, ``libero demos``, ``study``,
``demo``) claims its directory through a :class:`RunDir` before any long work:

* the run records its *kind* in :data:`KIND_FILE` (``{"run_kind": ..., "settings_file": ...}``), so
  ``--resume`` and ``--overwrite`` refuse a directory that holds another command's run;
* a kind names the files it writes (``markers``, shell patterns of top-level names); ``--overwrite``
  deletes those and nothing else, and refuses a directory that holds anything else, naming it;
* ``--resume`` compares the stored settings with the given ones and names every difference in one line
  (``field: got …, expected …``: got what is given now, expected what the run was started with);
* a directory written before kinds were recorded (no :data:`KIND_FILE`) is accepted as this kind's run when
  it holds only this kind's files;
* everything is validated first (:meth:`RunDir.check` changes nothing, not even creating the directory);
  :meth:`RunDir.claim` then clears, creates and writes (atomically), on rank 0 only;
* a run that fails before its first record leaves nothing behind (:meth:`RunDir.release_failed_start`,
  :meth:`RunDir.guard`): what the claim created is removed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from vla_lab import files, parallel
from vla_lab.errors import InputError

#: The file in which a run records its kind.
KIND_FILE = "vla_lab_run.json"
_TEMPORARIES = (".*.tmp-*", ".*.old-*")


def normalized(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from JSON (tuples become lists, NaN becomes None)."""
    return json.loads(files.dumps(dict(settings), indent=None))


def differences(stored: Mapping[str, Any], given: Mapping[str, Any], *, keys: Sequence[str] | None = None,
                free: Sequence[str] = (), prefix: str = "") -> list[str]:
    """Every key (``keys``, else all of both) whose values differ, as ``key: got <given>, expected <stored>``;
    keys in ``free`` may differ."""
    stored, given = normalized(stored), normalized(given)
    names = sorted(set(stored) | set(given)) if keys is None else list(keys)
    return [f"{prefix}{key}: got {given.get(key)!r}, expected {stored.get(key)!r}"
            for key in names if key not in free and stored.get(key) != given.get(key)]


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; one-line InputError when it cannot be read or is not an object."""
    files.check_regular_file(path, path.name, "a JSON object")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path.name}: got {str(path)!r}, which cannot be read ({type(exc).__name__}), "
                         "expected a JSON object") from None
    if not isinstance(data, dict):
        raise InputError(f"{path.name}: got {type(data).__name__} in {str(path)!r}, expected a JSON object")
    return data


def recorded_kind(path: str | Path) -> str | None:
    """The kind of run that ``path`` records (None for a directory without :data:`KIND_FILE`)."""
    marker = Path(path) / KIND_FILE
    if not marker.exists():
        return None
    kind = read_json_object(marker).get("run_kind")
    if not isinstance(kind, str):
        raise InputError(f"{KIND_FILE}: got run_kind {kind!r} in {str(marker)!r}, expected the name of a kind of run")
    return kind


def _shown(names: Sequence[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _a(word: str) -> str:
    """``word`` with its indefinite article ("a train", "an eval-libero")."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


class RunDir:
    """The directory ``path`` of a run of ``kind``.

    ``markers``: shell patterns of the top-level names this kind writes (``settings_file`` and
    :data:`KIND_FILE` are added); ``records``: patterns (relative paths) of what holds the run's results,
    whose presence means the run has started (a failed start is released only without any); ``compare``:
    the settings keys ``--resume`` requires unchanged (default: every key but ``free``); ``read_settings``
    reads the stored settings file (default: a JSON object), e.g. to fill in fields added since; ``field``
    names the directory in errors; ``resumable`` False for a kind that cannot resume (its interrupted run is
    released too).
    """

    def __init__(
        self, path: str | Path, kind: str, *, markers: Sequence[str], records: Sequence[str],
        settings_file: str | None = None, compare: Sequence[str] | None = None, free: Sequence[str] = (),
        read_settings: Callable[[Path], Mapping[str, Any]] | None = None, field: str = "--out",
        resumable: bool = True,
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.settings_file = settings_file
        extra = [name for name in (settings_file, KIND_FILE) if name is not None and name not in markers]
        self.markers = (*markers, *extra)
        self.records = tuple(records)
        self.compare = None if compare is None else tuple(compare)
        self.free = tuple(free)
        self.read_settings = read_settings
        self.field = field
        self.resumable = resumable
        self._fresh = False  # set by a claim that started a new run (not a resumed one)
        self._created: Path | None = None  # the topmost directory the claim created
        self._main = True

    # --- reading -----------------------------------------------------------------------------------

    def _entries(self) -> list[str]:
        return files.entries(self.path)

    def _is_marker(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.markers)

    def stored_settings(self) -> dict[str, Any]:
        """The settings of the run in the directory (its settings file); one-line InputError without them."""
        if self.settings_file is None:
            raise InputError(f"--resume: got {_a(self.kind)} run, which stores no settings, expected a run to resume")
        path = self.path / self.settings_file
        if not path.is_file():
            raise InputError(f"--resume: got {self.field} {str(self.path)!r}, which holds no {self.settings_file}, "
                             f"expected the settings of the {self.kind} run to resume (or pass --overwrite)")
        if self.read_settings is None:
            return read_json_object(path)
        try:
            return dict(self.read_settings(path))
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"--resume: got {str(path)!r}, which cannot be read ({first}), expected the settings "
                             f"of the {self.kind} run to resume (or pass --overwrite)") from None

    def has_records(self) -> bool:
        """True when the run has written any of its ``records``."""
        return any(next(self.path.glob(pattern), None) is not None for pattern in self.records)

    # --- claiming ----------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        """The directory exists and is writable, or can be created: without creating anything."""
        given = str(self.path)
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing == self.path:
            if not self.path.is_dir():
                raise InputError(f"{self.field}: got {given!r}, which is a file, expected a directory")
        elif not existing.is_dir():
            raise InputError(f"{self.field}: got {given!r}, where {str(existing)!r} is a file, expected a directory "
                             "that can be created")
        files.check_output_dir(existing, self.field, given=given)

    def check(self, settings: Mapping[str, Any] | None, *, resume: bool = False, overwrite: bool = False,
              check_also: Callable[[], list[str]] | None = None) -> bool:
        """Validate that the directory may hold this run; change nothing. True when an earlier run is resumed.

        New or empty: accepted (``resume`` refused). Holding a run of this kind: refused unless ``resume``
        (the stored settings must equal ``settings``, ``check_also`` may name more differences, e.g. of a
        second settings file) or ``overwrite``. Holding another kind's run, or files that are not this kind's
        (``overwrite``, or a run that recorded no kind), refused with the names of what is there.
        """
        if resume and overwrite:
            raise InputError("--resume/--overwrite: got both, expected at most one")
        if resume and not self.resumable:
            raise InputError(f"--resume: got {_a(self.kind)} run, expected a new directory or --overwrite "
                             f"({_a(self.kind)} run cannot be resumed)")
        self._check_writable()
        given = str(self.path)
        kind = recorded_kind(self.path)
        if kind is not None and kind != self.kind:
            raise InputError(f"{self.field}: got {given!r}, which holds a vla-lab {kind} run ({KIND_FILE}), expected "
                             f"a new or empty directory or {_a(self.kind)} run (--resume and --overwrite act on "
                             "their own command's runs only)")
        entries = self._entries()
        ours = [name for name in entries if self._is_marker(name)]
        temporary = [n for n in entries if any(fnmatch.fnmatchcase(n, p) for p in _TEMPORARIES)] if ours else []
        foreign = [name for name in entries if name not in ours and name not in temporary]
        if foreign and (not ours or overwrite or kind is None):
            also = "; nothing was deleted" if overwrite else ""
            raise InputError(f"{self.field}: got {given!r}, a directory with other files ({_shown(foreign)}), which "
                             f"is not a vla-lab run of {self.kind}; expected a new or empty directory or one "
                             f"holding only {_a(self.kind)} run{also}")
        if not ours:
            if resume:
                raise InputError(f"--resume: got {self.field} {given!r}, which holds no earlier run, expected a run "
                                 "to resume")
            return False
        if not (resume or overwrite):
            options = "--resume or --overwrite" if self.resumable else "--overwrite"
            raise InputError(f"{self.field}: got {given!r}, which holds an earlier run ({self.kind}: "
                             f"{_shown(ours, 3)}), expected a new or empty directory, {options}")
        if overwrite:
            return False
        stored = self.stored_settings()
        found = differences(stored, settings or {}, keys=self.compare, free=self.free)
        found += check_also() if check_also is not None else []
        if found:
            raise InputError(f"--resume: got settings that differ from the {self.kind} run in {given!r} "
                             f"({len(found)}): {'; '.join(found)}")
        return True

    def _clear(self) -> None:
        """Delete this kind's files (after :meth:`check` accepted the directory)."""
        for name in self._entries():
            if not self._is_marker(name):
                continue
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _claim_here(self, settings: Mapping[str, Any] | None, resume: bool, overwrite: bool,
                    check_also: Callable[[], list[str]] | None, write: bool) -> bool:
        resuming = self.check(settings, resume=resume, overwrite=overwrite, check_also=check_also)
        top = None
        for directory in (self.path, *self.path.parents):
            if directory.exists():
                break
            top = directory
        if overwrite:
            self._clear()
        if self.path.is_dir():
            files.remove_temporaries(self.path)
        files.check_output_dir(self.path, self.field)
        self._created, self._fresh = top, not resuming
        files.write_json(self.path / KIND_FILE, {"run_kind": self.kind, "settings_file": self.settings_file})
        if write and settings is not None and self.settings_file is not None:
            files.write_json(self.path / self.settings_file, settings)
        return resuming

    def claim(self, settings: Mapping[str, Any] | None, *, resume: bool = False, overwrite: bool = False,
              ranks: parallel.Ranks | None = None, check_also: Callable[[], list[str]] | None = None,
              write: bool = True) -> bool:
        """:meth:`check`, then on rank 0: with ``overwrite`` delete the earlier run's files, remove interrupted
        writes, create the directory, record the kind and (``write``) the settings. True on every rank when
        an earlier run is resumed; rank 0's error is raised on every rank."""
        ranks = parallel.Ranks() if ranks is None else ranks
        self._main = ranks.is_main
        return parallel.run_on_main(lambda: self._claim_here(settings, resume, overwrite, check_also, write), ranks)

    def release_failed_start(self) -> bool:
        """Remove what the claim of a new run created when the run has written no record yet: its files, then
        the directory when the claim created it. False (nothing removed) otherwise, or on ranks other than 0."""
        if not (self._fresh and self._main) or not self.path.is_dir() or self.has_records():
            return False
        self._clear()
        files.remove_temporaries(self.path)
        if self._created is not None:
            for directory in (self.path, *self.path.parents):
                if not files.is_empty_dir(directory):
                    break
                directory.rmdir()
                if directory == self._created:
                    break
        self._fresh = False
        return True

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Release a failed start (:meth:`release_failed_start`) when the block raises: an error, or an
        interrupt of a kind that cannot resume (an interrupted resumable run stays, for ``--resume``)."""
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, Exception) or not self.resumable:
                with contextlib.suppress(OSError):
                    self.release_failed_start()
            raise

    @contextlib.contextmanager
    def claimed(self, settings: Mapping[str, Any] | None, *, resume: bool = False, overwrite: bool = False,
                ranks: parallel.Ranks | None = None) -> Iterator[bool]:
        """:meth:`claim` the directory for the block (which gets True when resuming), under :meth:`guard`."""
        resuming = self.claim(settings, resume=resume, overwrite=overwrite, ranks=ranks)
        with self.guard():
            yield resuming
