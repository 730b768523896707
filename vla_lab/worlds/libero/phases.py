"""The phases of a pick-and-place episode and which object it picked, from the simulator (no model involved).

At every policy query a rollout reads the gripper's latest command (:attr:`LiberoWorld.last_action
<vla_lab.worlds.libero.LiberoWorld.last_action>`, LIBERO's units: +1 closes) and how high the objects stand above
where the reset left them (:meth:`LiberoWorld.lifts <vla_lab.worlds.libero.LiberoWorld.lifts>`). The phase of a
query, in :data:`PHASES`:

* ``approach`` -- the target has not been lifted and the gripper is open;
* ``grasp`` -- it has not been lifted and the gripper is closing or closed;
* ``carry`` -- it has been lifted: it is more than :data:`LIFTED` above its start with the gripper closed;
* ``place`` -- after the lift, once it is down again or let go.

The object an episode *picked* is the first one of the target and the same-category objects to rise more than
:data:`PICKED` above its start (``target``, ``same_category``; ``none`` if neither did).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PHASES = ("approach", "grasp", "carry", "place")
#: Height (m) above its start at which the target counts as lifted.
LIFTED = 0.03
#: Height (m) above its start at which an object counts as picked (off the table).
PICKED = 0.05


def episode_phases(lifts: Sequence[float], closed: Sequence[bool], lifted: float = LIFTED) -> list[str]:
    """The phase of each query (module docstring) from the target's height above its start and whether the gripper's
    latest command closes it, at each query in order."""
    phases, seen = [], False
    for lift, shut in zip(lifts, closed, strict=True):
        up = lift > lifted
        seen = seen or (up and shut)
        if not seen:
            phases.append("grasp" if shut else "approach")
        else:
            phases.append("carry" if up and shut else "place")
    return phases


def picked_object(lifts: Sequence[Mapping[str, float]], picked: float = PICKED,
                  roles: Sequence[str] = ("target", "same_category")) -> str:
    """Which of ``roles`` first had an object rise above ``picked`` (``lifts``: per query, the highest lift among
    each role's objects; the higher one when two rose by the same query), or ``none``."""
    for heights in lifts:
        risen = [role for role in roles if heights.get(role, 0.0) > picked]
        if risen:
            return max(risen, key=lambda role: heights[role])
    return "none"
