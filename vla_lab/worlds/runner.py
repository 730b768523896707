"""One way to run episodes in any world: chunks run open loop from an action queue, several worlds in lockstep.

:class:`OpenLoop` is the policy side, model-free: a *chunk function* ``(observations, slots) -> chunks``
(a model, the expert, an intervention) queried only when a slot's queue is empty; the first ``execute``
actions of each chunk (after the world's ``process_chunk``) are queued and popped one per step, as upstream's
evaluation runs a VLA (LeRobot's ``select_action`` idiom). All slots whose queues are empty at the same
step are queried in one call (one batched forward pass).

:func:`run_lockstep` is the episode side: one :class:`~vla_lab.worlds.World` per slot, each reset to its
episode; at every step each running slot gets an action, and an observation is made only where the next
action needs one (the others step with ``observe=False``). An episode ends when its world says ``done``
(with ``isolate``, also when it raises: the others go on).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from vla_lab import interrupts
from vla_lab.errors import InputError, error_text
from vla_lab.worlds.base import Episode, Observation, Step, World

#: (observations of the slots that need a chunk, those slots) -> one (chunk, 7) chunk per observation.
ChunkFn = Callable[[Sequence[Observation], Sequence[int]], Any]
#: Called once per chunk, before its first action runs, with (slot, row of the query's batch, query number).
QueryHook = Callable[[int, int, int], None]
#: Called after every step with (slot, the step's result).
StepHook = Callable[[int, Step], None]


def check_chunk(value: Any) -> np.ndarray:
    """A (chunk, 7) float64 array, else a one-line error."""
    chunk = np.asarray(value, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != 7 or chunk.shape[0] < 1:
        raise InputError(f"policy output: got shape {chunk.shape}, expected (chunk, 7)")
    return chunk


class OpenLoop:
    """Action queues over ``chunks``: each slot executes ``execute`` actions of a chunk before it asks again.

    ``process`` maps a chunk to the world's action units (LIBERO's gripper convention; identity by default);
    ``on_query`` sees every query. ``queries[slot]`` counts them since :meth:`reset`, ``query_seconds`` is
    the time spent in ``chunks`` since then, and ``slot_seconds[slot]`` each slot's share of it (a call's time
    divided equally among the slots it answered).
    """

    def __init__(self, chunks: ChunkFn, execute: int = 8, process: Callable[[np.ndarray], np.ndarray] | None = None,
                 on_query: QueryHook | None = None) -> None:
        if isinstance(execute, bool) or not isinstance(execute, (int, np.integer)) or execute < 1:
            raise InputError(f"execute: got {execute!r}, expected a positive integer")
        self.chunks, self.execute, self.process, self.on_query = chunks, int(execute), process, on_query
        self.reset()

    def reset(self, slots: int = 1) -> None:
        """Empty queues for ``slots`` episodes."""
        self.queues: list[deque[np.ndarray]] = [deque() for _ in range(slots)]
        self.queries = [0] * slots
        self.slot_seconds = [0.0] * slots

    @property
    def query_seconds(self) -> float:
        """Seconds spent in ``chunks`` since :meth:`reset` (the sum of the slots' shares)."""
        return sum(self.slot_seconds)

    def needs_observation(self, slot: int) -> bool:
        """Whether the next action of ``slot`` needs a new chunk (so an observation)."""
        return not self.queues[slot]

    def select_actions(self, slots: Sequence[int], observations: Mapping[int, Observation]) -> list[np.ndarray]:
        """The next action of each of ``slots``; those with empty queues are queried together (their
        observations must be given), in the order of ``slots``."""
        asking = [s for s in slots if not self.queues[s]]
        missing = [s for s in asking if s not in observations]
        if missing:
            raise InputError(f"observations: got none for slots {missing}, expected one for every slot that queries")
        if asking:
            start = time.perf_counter()
            try:
                chunks = self.chunks([observations[s] for s in asking], asking)
            finally:
                spent = time.perf_counter() - start
                for slot in asking:
                    self.slot_seconds[slot] += spent / len(asking)
            if len(chunks) != len(asking):
                raise InputError(f"policy output: got {len(chunks)} chunks, expected one per observation "
                                 f"({len(asking)})")
            for row, slot in enumerate(asking):
                chunk = check_chunk(chunks[row])
                if self.process is not None:
                    chunk = check_chunk(self.process(chunk))
                if self.on_query is not None:
                    self.on_query(slot, row, self.queries[slot])
                self.queries[slot] += 1
                self.queues[slot].extend(chunk[: self.execute])
        return [self.queues[s].popleft() for s in slots]

    def select_action(self, observation: Observation | None) -> np.ndarray:
        """One episode (slot 0): the next action; ``observation`` may be None while the queue is not empty."""
        return self.select_actions([0], {} if observation is None else {0: observation})[0]


@dataclass
class EpisodeRun:
    """How an episode of :func:`run_lockstep` went."""

    episode: Episode
    success: bool
    steps: int
    queries: int
    #: With ``isolate``: the one-line text of the exception that ended the episode (then a failure), else None.
    error: str | None = None
    #: Seconds in the world's reset and in its steps (observations included).
    reset_seconds: float = 0.0
    step_seconds: float = 0.0


def run_lockstep(
    worlds: Sequence[World], episodes: Sequence[Episode], policy: OpenLoop, *, regions: bool = False,
    on_reset: Callable[[int, Observation], None] | None = None, on_step: StepHook | None = None,
    isolate: bool = False,
) -> list[EpisodeRun]:
    """Run ``episodes[i]`` in ``worlds[i]`` (one episode per world), in lockstep, to their ends.

    ``regions`` asks the resets for the region masks; ``on_reset`` / ``on_step`` see each slot's first
    observation and every step. ``isolate``: an exception in a slot's reset, step or hook, or in a query (the
    slots that asked are then queried one at a time, so that only the one that raises fails), ends that slot's
    episode as a failure with its ``error``, and the others go on, as each would alone.
    """
    if len(worlds) != len(episodes):
        raise InputError(f"worlds: got {len(worlds)}, expected one per episode ({len(episodes)})")
    policy.reset(len(episodes))
    runs = [EpisodeRun(e, False, 0, 0) for e in episodes]
    observations: dict[int, Observation] = {}

    def attempt(slot: int, work: Callable[[], Any]) -> Any:
        """``work()``; under ``isolate`` an exception ends ``slot``'s episode (and None is returned)."""
        try:
            return work()
        except Exception as exc:
            if not isolate:
                raise
            runs[slot].error = error_text(exc)
            return None

    def reset(slot: int) -> bool:
        start = time.perf_counter()
        observations[slot] = worlds[slot].reset(episodes[slot], regions=regions)
        runs[slot].reset_seconds = time.perf_counter() - start
        if on_reset is not None:
            on_reset(slot, observations[slot])
        return worlds[slot].max_steps > 0

    def step(slot: int, action: np.ndarray) -> bool:
        """One step of ``slot``; whether its episode goes on."""
        start = time.perf_counter()
        result = worlds[slot].step(action, observe=policy.needs_observation(slot))
        runs[slot].step_seconds += time.perf_counter() - start
        runs[slot].steps += 1
        if on_step is not None:
            on_step(slot, result)
        if result.done:
            runs[slot].success = result.success
            return False
        if result.observation is not None:
            observations[slot] = result.observation
        return True

    active = [slot for slot in range(len(episodes)) if attempt(slot, partial(reset, slot))]
    while active:
        try:
            actions = dict(zip(active, policy.select_actions(active, observations)))
        except Exception as exc:
            if not isolate:
                raise
            actions = {}
            if len(active) == 1:
                runs[active[0]].error = error_text(exc)
            else:  # the batched query raised: each slot alone, so that only the one that raises fails
                for slot in active:
                    one = attempt(slot, partial(policy.select_actions, [slot], observations))
                    if one is not None:
                        actions[slot] = one[0]
        still = []
        for slot in active:
            if slot in actions:
                observations.pop(slot, None)
                interrupts.check()
                if attempt(slot, partial(step, slot, actions[slot])):
                    still.append(slot)
        active = still
    for slot, run in enumerate(runs):
        run.queries = policy.queries[slot]
    return runs
