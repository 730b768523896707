"""How far upstream's sequential seeding moves LIBERO's fixtures from one trial to the next (README, LIBERO).

Upstream's evaluation seeds each task's simulator once and resets it for trial after trial, so the fixtures its
random samplers place (libero_spatial: the wooden cabinet and the flat stove) land somewhere else in every trial;
vla-lab re-seeds before every reset, which gives every trial upstream's trial-0 fixtures. This replays upstream's
order (seed 0 once, then reset and set init state i for i = 0..49) on every libero_spatial task and records each
fixture's distance (3-D, metres) from its trial-0 position: shift.parquet (task, trial, fixture, shift_m) and
shift.json (the largest shifts). Physics only; about 40 min on one CPU core.

    MUJOCO_GL=egl python notebooks/records/libero-fixture-shift/measure.py notebooks/records/libero-fixture-shift
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from vla_lab import files
from vla_lab.worlds.libero.env import LiberoEnv, _quiet

SUITE = "libero_spatial"


def fixture_positions(raw) -> dict[str, np.ndarray]:
    sim = raw.sim
    return {name: np.array(sim.data.body_xpos[sim.model.body_name2id(fixture.root_body)])
            for name, fixture in raw.env.fixtures_dict.items()}


def main(out: Path) -> None:
    rows = []
    for task in range(10):
        with LiberoEnv(SUITE, task, render=False) as env:
            raw = env.env
            with _quiet():
                raw.seed(0)
            first = None
            for trial in range(env.num_init_states):
                with _quiet():
                    raw.reset()
                    raw.set_init_state(env.init_states[trial])
                positions = fixture_positions(raw)
                first = first or positions
                rows += [{"task": task, "trial": trial, "fixture": name,
                          "shift_m": float(np.linalg.norm(positions[name] - first[name]))} for name in positions]
    worst = max(rows, key=lambda r: r["shift_m"])
    worst_trial1 = max((r for r in rows if r["trial"] == 1), key=lambda r: r["shift_m"])
    task4_trial1 = {r["fixture"]: r["shift_m"] for r in rows if r["task"] == 4 and r["trial"] == 1}
    files.write_atomic(out / "shift.parquet", lambda temporary: pd.DataFrame(rows).to_parquet(temporary, index=False))
    files.write_json(out / "shift.json", {
        "command": "MUJOCO_GL=egl python notebooks/records/libero-fixture-shift/measure.py "
                   "notebooks/records/libero-fixture-shift",
        "suite": SUITE, "seed": 0, "unit": "m", "trials_per_task": 50, "worst": worst,
        "worst_trial_1": worst_trial1, "task_4_trial_1": task4_trial1})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
