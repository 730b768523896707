"""Work split over processes with torch.distributed: one process per device, launched by ``torchrun``.

The rank and the number of processes come from torchrun's environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); without them, or with one process, no process group is ever created. The backend is
gloo on CPU and NCCL on CUDA (each process on ``cuda:LOCAL_RANK``). Work is split deterministically
(:func:`shard`, round robin over a sorted list), and results come back to every rank with
:func:`gather`, so rank 0 can write what a single process would have written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from vla_lab import interrupts
from vla_lab.errors import InputError

T = TypeVar("T")
K = TypeVar("K")
R = TypeVar("R")


@dataclass(frozen=True)
class Ranks:
    """The processes of a run, seen from this one: it is ``rank`` of ``size`` (``local_rank`` on its node).

    (Named to keep "world" for the environments of :mod:`vla_lab.worlds`; torch calls this the world.)
    """

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


def ranks_from_env() -> Ranks:
    """The :class:`Ranks` torchrun describes in the environment (rank 0 of 1 without torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise InputError(f"RANK/WORLD_SIZE: got rank {rank} of {size} (local {local_rank}), expected 0 <= rank < size")
    return Ranks(rank, size, local_rank)


def device_for(device: str, ranks: Ranks) -> str:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a distributed run."""
    if ranks.distributed and device == "cuda":
        return f"cuda:{ranks.local_rank}"
    return device


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[Ranks]:
    """The :class:`Ranks` of this process, with a process group for its lifetime when there are several.

    NCCL when ``device`` is CUDA (the process's current device is set to ``cuda:LOCAL_RANK``), else gloo.
    """
    ranks = ranks_from_env()
    if not ranks.distributed:
        yield ranks
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.size)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    """This rank's items: every ``ranks.size``-th item of ``sorted(items)``, starting at ``ranks.rank``."""
    return sorted(items)[ranks.rank :: ranks.size]  # type: ignore[type-var]


def gather(obj: T, ranks: Ranks) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not ranks.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.size
    dist.all_gather_object(out, obj)
    return out


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def run_shards(
    keys: Sequence[K], compute: Callable[[K], R], ranks: Ranks, *, done: Mapping[K, R] | None = None,
    progress: str | None = None, postfix: Callable[[list[R]], dict[str, Any]] | None = None,
) -> dict[K, R]:
    """The sharded, resumable loop of every run over many items (a study's units, LIBERO episodes).

    The keys not in ``done`` (the results a resumed run already holds) are dealt round robin over the ranks
    (:func:`shard`); each rank calls ``compute`` on its own, one at a time (``compute`` saves its result as soon as
    it has it, so a killed run loses at most the items in progress). Every rank returns every key's result, in
    the order of ``keys``. ``progress``: a tqdm description (rank 0 shows its bar); ``postfix`` turns rank 0's
    results so far into the bar's postfix.
    """
    return run_shard_groups(keys, lambda group: [compute(group[0])], ranks, 1, done=done, progress=progress,
                            postfix=postfix)


def run_shard_groups(
    keys: Sequence[K], compute: Callable[[Sequence[K]], Sequence[R]], ranks: Ranks, size: int, *,
    done: Mapping[K, R] | None = None, progress: str | None = None,
    postfix: Callable[[list[R]], dict[str, Any]] | None = None,
) -> dict[K, R]:
    """:func:`run_shards` with ``compute`` called on up to ``size`` keys at a time (one result per key, in their
    order), e.g. episodes run together in lockstep. A rank's share is cut into ``size`` contiguous parts (the longer
    first) and the ``i``-th key of each group comes from part ``i``: position ``i`` of the groups walks through its
    part in order (a world that keeps its task between episodes meets few tasks)."""
    finished = dict(done or {})
    mine = shard([k for k in keys if k not in finished], ranks)
    parts = [list(part) for part in _contiguous_parts(mine, size)]
    groups = [[part[j] for part in parts if j < len(part)] for j in range(len(parts[0]) if parts else 0)]
    bar = None
    if progress is not None and ranks.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=progress, unit="item")
    results: dict[K, R] = {}
    try:
        for group in groups:
            interrupts.check()
            found = list(compute(group))
            if len(found) != len(group):
                raise RuntimeError(f"compute gave {len(found)} results for {len(group)} keys")
            results.update(zip(group, found))
            if bar is not None:
                bar.update(len(group))
                if postfix is not None:
                    bar.set_postfix(postfix(list(results.values())))
    finally:
        if bar is not None:
            bar.close()
    for part in gather(results, ranks):
        finished.update(part)
    return {k: finished[k] for k in keys}


def _contiguous_parts(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``items`` cut into ``parts`` contiguous runs whose lengths differ by at most one, the longer first."""
    size, extra = divmod(len(items), parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (i < extra))
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts) if bounds[i + 1] > bounds[i]]


def run_on_main(fn: Callable[[], T], ranks: Ranks) -> T:
    """``fn()`` on rank 0 only (e.g. checking or creating a run directory, which ranks must not race on);
    every rank returns its result, or raises the exception it raised."""
    result: Any = None
    error: BaseException | None = None
    if ranks.is_main:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    if ranks.distributed:
        result, error = gather((result, error), ranks)[0]
    if error is not None:
        raise error
    return result
