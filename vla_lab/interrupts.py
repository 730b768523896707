"""Ctrl-C that third-party code cannot swallow.

LIBERO and robosuite run Python with bare ``except:`` clauses (LIBERO's scene loading on every reset,
robosuite's observable checks), so a ``KeyboardInterrupt`` raised inside them can vanish and a run goes on.
Inside :func:`deferred` the first SIGINT only records the request; :func:`check`, called between simulator
steps and between episodes, raises the ``KeyboardInterrupt`` there, in vla-lab's own code. A second SIGINT
raises at once, wherever the process is. :func:`exit_until_loaded` is the command lines' handler for their first
seconds, while torch loads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

_requested = False


def _record(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGINT is recorded for :func:`check` during the block (in the main thread; elsewhere a no-op)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: Any = signal.signal(signal.SIGINT, _record)
    try:
        yield
        check()
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False


def check() -> None:
    """Raise ``KeyboardInterrupt`` when a SIGINT arrived during :func:`deferred`."""
    global _requested
    if _requested:
        _requested = False
        raise KeyboardInterrupt


def exit_until_loaded(prog: str) -> Callable[[], None]:
    """For a command line's first moments (its imports take seconds): until the returned function is called, a
    SIGINT exits at once with status 130 and ``<prog>: error: interrupted`` (said by rank 0 only under torchrun);
    afterwards it raises ``KeyboardInterrupt``, for the command's own clean-ups."""
    loaded = False

    def interrupted(signum: int, frame: FrameType | None) -> None:
        if loaded:
            raise KeyboardInterrupt
        if int(os.environ.get("RANK", "0") or 0) == 0:
            sys.stderr.write(f"{prog}: error: interrupted\n")
            sys.stderr.flush()
        os._exit(130)

    def done() -> None:
        nonlocal loaded
        loaded = True

    signal.signal(signal.SIGINT, interrupted)
    return done
