"""``bench_libero.py --compare-upstream``: upstream's LIBERO evaluation loop and vla-lab's, interleaved on the same
episodes with the same model, timed on the same machine.

Upstream's loop (VLA-Adapter's ``run_libero_eval.py``, restated here from its protocol, not imported): one
``OffScreenRenderEnv`` per task, seeded once; per trial ``reset()`` (a rebuild of the scene), ``set_init_state``,
:data:`NUM_STEPS_WAIT` steps of the dummy action, then the policy queried on an empty action queue and the whole
post-processed chunk executed; both cameras drawn at every step. The policy side is the same object in both loops
(:class:`vla_lab.policy.Policy`: upstream's image processing, prompt and un-normalisation), so any difference in
success or steps comes from the simulator side.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from vla_lab.policy import Policy
from vla_lab.worlds import Observation
from vla_lab.worlds.libero import LiberoWorld
from vla_lab.worlds.libero.env import (
    DUMMY_ACTION,
    MAX_STEPS,
    NUM_STEPS_WAIT,
    require_libero,
    task_files,
    task_info,
)
from vla_lab.worlds.libero.observation import prepare_observation, process_action
from vla_lab.worlds.libero.reuse import make_current


class UpstreamTask:
    """One task as upstream's evaluation builds it (constructed and seeded, rebuilt at every reset)."""

    def __init__(self, suite: str, task: int, resolution: int, seed: int = 0) -> None:
        bddl, self.init_states = task_files(suite, task)
        self.instruction = task_info(suite, task)["instruction"]
        self.max_steps = MAX_STEPS[suite]
        self.env = require_libero().OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=resolution,
                                                       camera_widths=resolution)
        self.env.seed(seed)

    def episode(self, policy: Policy, init_state: int) -> dict[str, Any]:
        """One trial: ``{"success", "steps"}`` (policy steps, the successful one included)."""
        self.env.reset()
        obs = self.env.set_init_state(self.init_states[init_state])
        queue: deque[np.ndarray] = deque()
        for _ in range(NUM_STEPS_WAIT):
            obs, _, _, _ = self.env.step(list(DUMMY_ACTION))  # the reset's rebuild made this simulator current
        for step in range(1, self.max_steps + 1):
            if not queue:
                prepared = prepare_observation(obs)
                observation = Observation([prepared["full_image"], prepared["wrist_image"]], self.instruction,
                                          prepared["state"])
                chunk = policy.predict([observation])[0]
                queue.extend(process_action(chunk)[: policy.execute])
            make_current(self.env.sim)  # upstream has one simulator in its process; here vla-lab's is another
            obs, _, done, _ = self.env.step(queue.popleft().tolist())
            if done:
                return {"success": True, "steps": step}
        return {"success": False, "steps": self.max_steps}

    def close(self) -> None:
        self.env.close()


def compare(model: Any, suite: str, tasks: list[int], init_states: list[int], resolution: int,
            execute: int = 8) -> dict[str, Any]:
    """Both loops on every (task, init state), upstream's first then vla-lab's. Timed: each episode with its reset;
    not timed: building the simulators (upstream builds one per task; vla-lab one per task and process).

    Upstream's loop gets a fresh simulator for every trial. Its own trial ``i`` of a task runs in fixtures drawn
    after ``i`` earlier resets (LIBERO appends its property samplers again at every reset; README, "LIBERO"), so
    reusing one simulator would compare different scenes; a fresh one gives every trial the fixtures of trial 0,
    which are vla-lab's for every trial.
    """
    from vla_lab.libero.evaluate import run_episode

    policy = Policy(model.eval(), LiberoWorld(suite), execute=execute)
    world = LiberoWorld(suite, resolution=resolution)
    seconds = {"upstream": 0.0, "vla_lab": 0.0}
    episodes = []
    try:
        for task in tasks:
            world.simulator(world.episode(task, init_states[0]))
            for init_state in init_states:
                upstream = UpstreamTask(suite, task, resolution)
                try:
                    start = time.perf_counter()
                    theirs = upstream.episode(policy, init_state)
                    seconds["upstream"] += time.perf_counter() - start
                finally:
                    upstream.close()
                start = time.perf_counter()
                ours = run_episode(world, policy, world.episode(task, init_state))
                seconds["vla_lab"] += time.perf_counter() - start
                if ours["error"] is not None:
                    raise RuntimeError(f"vla-lab episode failed: {ours['error']}")
                episodes.append({"task": task, "init_state": init_state, "upstream": theirs,
                                 "vla_lab": {"success": ours["success"], "steps": ours["steps"]}})
    finally:
        world.close()
    n = len(episodes)
    return {
        "suite": suite, "resolution": resolution, "episodes_compared": n,
        "timed": "each episode with its reset (the settle steps included); not the simulators' construction",
        "seconds": {loop: round(s, 1) for loop, s in seconds.items()},
        "episodes_per_hour": {loop: round(n / s * 3600, 1) for loop, s in seconds.items()},
        "speedup": round(seconds["upstream"] / seconds["vla_lab"], 2),
        "identical": all(e["upstream"] == e["vla_lab"] for e in episodes), "episodes": episodes,
    }
