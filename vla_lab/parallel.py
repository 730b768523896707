"""Work split over processes with torch.distributed: one process per device, launched by ``torchrun``.

The rank and world size come from torchrun's environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); without them, or with a world of one, no process group is ever created. The backend is
gloo on CPU and NCCL on CUDA (each process on ``cuda:LOCAL_RANK``). Work is split deterministically
(:func:`shard`, round robin over a sorted list), and results come back to every rank with
:func:`gather`, so rank 0 can write what a single process would have written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from vla_lab.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name}: got {text!r}, expected an integer (set by torchrun)") from None


def world_from_env() -> World:
    """The :class:`World` torchrun describes in the environment (rank 0 of 1 without torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise InputError(f"RANK/WORLD_SIZE: got rank {rank} of {size} (local {local_rank}), expected 0 <= rank < size")
    return World(rank, size, local_rank)


def device_for(device: str, world: World) -> str:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a distributed run."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[World]:
    """The :class:`World` of this process, with a process group for its lifetime when there are several.

    NCCL when ``device`` is CUDA (the process's current device is set to ``cuda:LOCAL_RANK``), else gloo.
    """
    world = world_from_env()
    if not world.distributed:
        yield world
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def shard(items: Sequence[T], world: World) -> list[T]:
    """This rank's items: every ``world.size``-th item of ``sorted(items)``, starting at ``world.rank``."""
    return sorted(items)[world.rank :: world.size]  # type: ignore[type-var]


def gather(obj: T, world: World) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def run_on_main(fn: Callable[[], T], world: World) -> T:
    """``fn()`` on rank 0 only (e.g. checking or creating a run directory, which ranks must not race on);
    every rank returns its result, or raises the exception it raised."""
    result: Any = None
    error: BaseException | None = None
    if world.is_main:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    if world.distributed:
        result, error = gather((result, error), world)[0]
    if error is not None:
        raise error
    return result
