"""Ctrl-C that third-party code cannot swallow (``vla_lab.interrupts``): inside ``deferred`` the first SIGINT is
recorded and raised at the next ``check``, even when a library's bare ``except:`` ran in between; a second one
raises at once. (The real-process check on LIBERO is in test_libero.)"""

from __future__ import annotations

import os
import signal
import sys
import types

import pytest

from vla_lab import interrupts


def swallowing_library() -> str:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        return "not interrupted"
    except:  # noqa: E722 -- as LIBERO's scene loading does
        return "swallowed"


def test_without_deferral_a_bare_except_swallows_the_interrupt() -> None:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever pytest set
    try:
        assert swallowing_library() == "swallowed"
    finally:
        signal.signal(signal.SIGINT, previous)
    interrupts.check()  # nothing was recorded


def test_a_deferred_interrupt_survives_a_bare_except_and_raises_at_check() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        assert swallowing_library() == "not interrupted"  # recorded, not raised inside the library
        interrupts.check()
        pytest.fail("check() did not raise")
    assert signal.getsignal(signal.SIGINT) is before
    interrupts.check()  # the request was consumed


def test_a_second_interrupt_raises_at_once_and_a_recorded_one_raises_when_the_block_ends() -> None:
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("the second SIGINT did not raise")
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)  # never checked inside: raised on the way out
    interrupts.check()


class InterruptedImport(types.ModuleType):
    """A stand-in for LIBERO whose import is interrupted: its bare ``except:`` turns the interrupt into a failed
    import (what made a Ctrl-C while ``eval libero`` loaded LIBERO say "got no LIBERO simulator", exit 2)."""

    interrupted = False

    def __getattr__(self, name: str) -> object:
        if not InterruptedImport.interrupted:  # one Ctrl-C, in the first name imported
            InterruptedImport.interrupted = True
            if swallowing_library() == "swallowed":
                raise ImportError("initialization failed")
        return object()


def test_a_ctrl_c_while_libero_loads_is_an_interrupt_not_a_missing_simulator(monkeypatch) -> None:
    from vla_lab.worlds.libero import env as libero_env

    for name in ("libero", "libero.libero", "libero.libero.envs"):
        monkeypatch.setitem(sys.modules, name, InterruptedImport(name))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            libero_env.require_libero()
    finally:
        signal.signal(signal.SIGINT, previous)
