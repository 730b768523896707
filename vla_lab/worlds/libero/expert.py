"""A scripted pick-and-place expert for LIBERO that reads the simulator's privileged state.

It drives LIBERO's own 7-d OSC delta actions (position, axis-angle, gripper; -1 opens, +1 closes) through
the phases :data:`PHASES`: over the object, down to its rim, close, lift to a carrying height, over the
place target, down until the object is just above it, open, retreat. Built for libero_spatial ("pick up the
black bowl ... and place it on the plate": the task's objects of interest are the bowl, then the plate):
the gripper takes the bowl's rim with its fingers across the rim wall, at the point around the rim where
the hand has the most room (from the world boxes of every collision geom near the grasp) and, among points
with enough room, the nearest to the robot's base (the arm's reach); when the object has not risen a few
steps into the lift, it opens and tries the next point. Positions are read again on every step, so a bowl
that swings in the gripper is still put down centred over the plate.

The expert is deterministic: its actions are a function of the observation and the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from vla_lab import interrupts
from vla_lab.errors import InputError, error_text

PHASES = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")
OPEN, CLOSE = -1.0, 1.0
ROBOT_PREFIXES = ("robot0", "gripper0", "mount0")


@dataclass(frozen=True)
class ExpertConfig:
    """Geometry (metres, in the world frame) and gains of :class:`PickPlaceExpert`."""

    rim_radius: float = 0.047  # akita_black_bowl: the outer wall's distance from the bowl's origin
    grasp_height: float = 0.035  # gripper site above the bowl's origin when the fingers close
    hover: float = 0.10  # above the grasp point before descending
    carry_height: float = 1.22  # lowest carrying height of the gripper (the cabinet's top is ~1.1)
    place_height: float = 0.03  # object origin above the target's origin when the gripper opens
    gain: float = 15.0  # action per metre of position error (clipped to [-1, 1])
    rotation_gain: float = 3.0  # action per radian of orientation error
    min_clearance: float = 0.015  # room the hand needs around a grasp point
    grasp_candidates: int = 16  # grasp points tried around the rim
    close_steps: int = 10
    check_steps: int = 8  # lift steps after which an object that has not risen means a missed grasp
    max_attempts: int = 3  # grasp points tried before carrying on regardless
    open_steps: int = 8
    base_xy: tuple[float, float] = (-0.66, 0.0)  # the robot's base in LIBERO's tabletop scenes


def finger_yaw(theta: float) -> float:
    """The turn about the vertical (radians, in [-pi/2, pi/2)) that makes the fingers close along the radial
    direction at angle ``theta``: in LIBERO's start pose they close along the world's y axis."""
    return float(theta % np.pi - np.pi / 2)


def _boxes(sim: Any, skip_roots: set[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """World axis-aligned boxes (low, high) of the collision geoms whose root body is not in ``skip_roots``."""
    model, data = sim.model, sim.data
    boxes = []
    for geom in range(model.ngeom):
        if model.geom_contype[geom] == 0 and model.geom_conaffinity[geom] == 0:
            continue
        if int(model.body_rootid[model.geom_bodyid[geom]]) in skip_roots:
            continue
        centre = np.asarray(data.geom_xpos[geom])
        if model.geom_type[geom] == 6:  # mjGEOM_BOX: exact extent of the rotated box
            half = np.abs(np.asarray(data.geom_xmat[geom]).reshape(3, 3)) @ np.asarray(model.geom_size[geom])
        else:
            half = np.full(3, float(model.geom_rbound[geom]))
        boxes.append((centre - half, centre + half))
    return boxes


def _clearance(centre: np.ndarray, radial: np.ndarray, half_radial: float, half_tangential: float,
               z_range: tuple[float, float], boxes: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Smallest horizontal distance from points of a rectangle (centre, radial axis, half sizes) to the boxes
    that overlap ``z_range``; negative inside a box, 1.0 when no box is within a metre."""
    tangential = np.array([-radial[1], radial[0]])
    points = [centre + a * half_radial * radial + b * half_tangential * tangential
              for a in np.linspace(-1, 1, 5) for b in np.linspace(-1, 1, 3)]
    best = 1.0
    for low, high in boxes:
        if high[2] < z_range[0] or low[2] > z_range[1]:
            continue
        for p in points:
            dx, dy = max(low[0] - p[0], 0.0, p[0] - high[0]), max(low[1] - p[1], 0.0, p[1] - high[1])
            if dx == 0.0 and dy == 0.0:
                distance = -min(p[0] - low[0], high[0] - p[0], p[1] - low[1], high[1] - p[1])
            else:
                distance = float(np.hypot(dx, dy))
            best = min(best, distance)
    return float(best)


class PickPlaceExpert:
    """Picks the task's first object of interest and puts it on the second (see the module's docstring).

    ``env`` is a :class:`~vla_lab.worlds.libero.env.LiberoEnv` just reset; ``obs`` its observation. :meth:`act`
    gives the next action; :attr:`phase` says where it is.
    """

    def __init__(self, env: Any, obs: dict[str, Any], config: ExpertConfig | None = None) -> None:
        self.config = config or ExpertConfig()
        targets = env.target_objects
        if len(targets) != 2 or any(f"{name}_pos" not in obs for name in targets):
            raise InputError(f"task: got objects of interest {targets}, expected an object to pick and one to "
                             "place it on (libero_spatial)")
        self.object, self.place = targets
        self.phase, self._ticks = PHASES[0], 0
        sim = env.env.sim
        model = sim.model
        own = int(model.body_name2id(env.env.env.objects_dict[self.object].root_body))
        skip = {0, own}
        for body in range(model.nbody):
            name = model.body_id2name(body) or ""
            if name.startswith(ROBOT_PREFIXES):
                skip.add(int(model.body_rootid[body]))
        for geom in range(model.ngeom):
            if (model.geom_id2name(geom) or "").startswith("table"):
                skip.add(int(model.body_rootid[model.geom_bodyid[geom]]))
        self._grasps = self._rank_grasps(np.asarray(obs[f"{self.object}_pos"]), _boxes(sim, skip))
        self.attempts = 0
        self._initial_orientation = Rotation.from_quat(obs["robot0_eef_quat"])
        self._take_grasp(0)
        self._hold = np.asarray(obs["robot0_eef_pos"], dtype=np.float64).copy()
        self._object_z = float(obs[f"{self.object}_pos"][2])

    def _take_grasp(self, index: int) -> None:
        """Aim at the ``index``-th best grasp point: the gripper's offset from the object and its yaw."""
        self.theta, self.clearance = self._grasps[index]
        radial = np.array([np.cos(self.theta), np.sin(self.theta)])
        self.offset = np.array([*(self.config.rim_radius * radial), self.config.grasp_height])
        self.reference = Rotation.from_rotvec([0.0, 0.0, finger_yaw(self.theta)]) * self._initial_orientation

    def _rank_grasps(self, centre: np.ndarray, boxes: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[float, float]]:
        """(angle around the rim, room) of every candidate grasp point, best first: those with
        ``min_clearance`` nearest the base first, then the others by room."""
        c = self.config
        z = float(centre[2]) + c.grasp_height
        base = np.asarray(c.base_xy)
        ranked = []
        for theta in np.linspace(-np.pi, np.pi, c.grasp_candidates, endpoint=False):
            radial = np.array([np.cos(theta), np.sin(theta)])
            point = centre[:2] + c.rim_radius * radial
            room = min(_clearance(point, radial, 0.10, 0.035, (z + 0.035, z + 0.3), boxes),  # the hand
                       _clearance(point, radial, 0.05, 0.012, (z - 0.02, z + 0.035), boxes))  # open fingers
            enough = room >= c.min_clearance
            ranked.append(((enough, -float(np.linalg.norm(point - base)) if enough else room), float(theta), room))
        ranked.sort(key=lambda r: r[0], reverse=True)
        return [(theta, room) for _, theta, room in ranked]

    def _move(self, obs: dict[str, Any], target: np.ndarray, gripper: float) -> tuple[np.ndarray, float, float]:
        c = self.config
        action = np.zeros(7)
        action[:3] = np.clip((target - obs["robot0_eef_pos"]) * c.gain, -1.0, 1.0)
        error = (self.reference * Rotation.from_quat(obs["robot0_eef_quat"]).inv()).as_rotvec()
        action[3:6] = np.clip(error * c.rotation_gain, -1.0, 1.0)
        action[6] = gripper
        return action, float(np.linalg.norm(target - obs["robot0_eef_pos"])), float(np.linalg.norm(error))

    def _next(self, phase: str) -> None:
        self.phase, self._ticks = phase, 0

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The next 7-d action (LIBERO units) for the observation ``obs`` of the step before."""
        c = self.config
        self._ticks += 1
        obj, place = np.asarray(obs[f"{self.object}_pos"]), np.asarray(obs[f"{self.place}_pos"])
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        carry_z = max(c.carry_height, float(self._hold[2]) + 0.1)
        if self.phase == "approach":
            action, error, turn = self._move(obs, obj + self.offset + [0.0, 0.0, c.hover], OPEN)
            if (error < 0.01 and turn < 0.05) or self._ticks > 60:
                self._next("descend")
        elif self.phase == "descend":
            action, error, _ = self._move(obs, obj + self.offset, OPEN)
            if error < 0.006 or self._ticks > 30:
                self._next("grasp")
        elif self.phase == "grasp":
            if self._ticks == 1:
                self._hold, self._object_z = eef.copy(), float(obj[2])
            action, _, _ = self._move(obs, self._hold, CLOSE)
            if self._ticks > c.close_steps:
                self._next("lift")
        elif self.phase == "lift":
            action, error, _ = self._move(obs, np.array([self._hold[0], self._hold[1], carry_z]), CLOSE)
            if self._ticks == c.check_steps and obj[2] < self._object_z + 0.02 and self.attempts + 1 < c.max_attempts:
                self.attempts += 1  # the object stayed down: open, and try the next grasp point
                self._take_grasp(min(self.attempts, len(self._grasps) - 1))
                self._next("approach")
                action[6] = OPEN
            elif error < 0.02 or self._ticks > 30:
                self._next("carry")
        elif self.phase == "carry":
            grip = eef - obj  # where the object hangs now
            action, error, _ = self._move(obs, np.array([place[0] + grip[0], place[1] + grip[1], carry_z]), CLOSE)
            if error < 0.015 or self._ticks > 60:
                self._next("lower")
        elif self.phase == "lower":
            action, error, _ = self._move(obs, eef + (place + [0.0, 0.0, c.place_height] - obj), CLOSE)
            if error < 0.01 or self._ticks > 40:
                self._next("release")
        elif self.phase == "release":
            if self._ticks == 1:
                self._hold = eef.copy()
            action, _, _ = self._move(obs, self._hold, OPEN)
            if self._ticks > c.open_steps:
                self._next("retreat")
        else:
            action, _, _ = self._move(obs, self._hold + [0.0, 0.0, 0.1], OPEN)
        return action


def run_expert_episode(env: Any, init_state: int, max_steps: int | None = None,
                       config: ExpertConfig | None = None,
                       observations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One expert episode from init state ``init_state``: ``{"success", "steps", "phase", "grasp_angle",
    "grasp_clearance", "actions", "states"}`` (``actions`` (steps, 7); ``states`` (steps + 1, ...) the
    simulator states before each action and after the last). ``observations`` (if given) receives the
    observation each action was chosen on."""
    limit = env.max_steps if max_steps is None else max_steps
    obs = env.reset(init_state)
    expert = PickPlaceExpert(env, obs, config)
    actions: list[np.ndarray] = []
    states = [env.sim_state()]
    success = False
    while len(actions) < limit:
        if observations is not None:
            observations.append(obs)
        action = expert.act(obs)
        interrupts.check()
        obs, _, done, _ = env.step(action)
        actions.append(action)
        states.append(env.sim_state())
        if done:
            success = True
            break
    return {"success": success, "steps": len(actions), "phase": expert.phase, "attempts": expert.attempts + 1,
            "grasp_angle": round(float(np.degrees(expert.theta)), 1),
            "grasp_clearance": round(expert.clearance, 4),
            "actions": np.asarray(actions).reshape(-1, 7), "states": np.asarray(states)}


#: The result of an expert episode that did not run (its ``error`` is set).
FAILED = {"success": False, "steps": 0, "phase": None, "attempts": 0, "grasp_angle": None, "grasp_clearance": None,
          "error": None}


def expert_record(env: Any, init_state: int, frames: list[np.ndarray] | None = None,
                  max_steps: int | None = None) -> dict[str, Any]:
    """:func:`run_expert_episode` as a record of ``vla_lab.libero.evaluate.run_episodes`` (without the
    actions and states; an exception is a failed episode with its message, as in the evaluation)."""
    try:
        result = run_expert_episode(env, init_state, max_steps)
    except Exception as exc:
        return {**FAILED, "error": error_text(exc)}
    return {**{k: v for k, v in result.items() if k not in ("actions", "states")}, "error": None}
