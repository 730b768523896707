"""Instruction swaps: the scene of one task with the instruction of another that names an object of that scene.

Read from the suite's BDDL files (no simulator). Task ``j``'s instruction names its target, the first object of its
goal, by category alone when its scene has one object of that category ("the alphabet soup") and by placement when
it has several ("the black bowl next to the cookie box"). In the scene of task ``i``, that instruction names:

* by category: the one object of the category, if the scene has exactly one;
* by placement: the object of the category placed where task ``j``'s target is placed (the same BDDL region name:
  ``main_table_next_to_box_region``, ``cookies_1``, ``flat_stove_1_cook_region``).

Task ``j`` is a *partner* of task ``i`` when that object exists and is not task ``i``'s own target: with the
instruction swapped, the policy is asked for another object of the same scene (libero_spatial: the other black bowl;
every one of its ten scenes has a partner).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from vla_lab.errors import InputError
from vla_lab.worlds.libero.env import _quiet, goal_roles, num_tasks, task_files, task_info


@dataclass(frozen=True)
class Partner:
    """Task ``task``'s instruction in another task's scene, and the object of that scene it names."""

    task: int
    instruction: str
    instructed: str


@dataclass(frozen=True)
class _Scene:
    """What a task's BDDL file says about its scene: each object's and fixture's category, where each is placed
    (``on`` at init), the goal's targets and places (:func:`~vla_lab.worlds.libero.env.goal_roles`) and which
    names are movable objects (not fixtures)."""

    categories: dict[str, str]
    placed: dict[str, str]
    targets: tuple[str, ...]
    places: tuple[str, ...]
    movable: frozenset[str]


@lru_cache(maxsize=64)
def _scene(suite: str, task: int) -> _Scene:
    with _quiet():
        from libero.libero.envs.bddl_utils import robosuite_parse_problem

        problem = robosuite_parse_problem(task_files(suite, task)[0])
    objects = {name: category for category, names in problem["objects"].items() for name in names}
    fixtures = {name: category for category, names in problem["fixtures"].items() for name in names}
    categories = {**objects, **fixtures}
    placed = {p[1]: p[2] for p in problem["initial_state"] if len(p) == 3 and p[0] == "on"}
    targets, places = goal_roles(problem["goal_state"], list(categories))
    return _Scene(categories, placed, tuple(targets), tuple(places), frozenset(objects))


def goal_object(suite: str, task: int) -> str | None:
    """The first object task ``task``'s goal moves (its target); None when that is no movable object (the goal opens
    a drawer or turns on the stove)."""
    scene = _scene(suite, task)
    return scene.targets[0] if scene.targets and scene.targets[0] in scene.movable else None


def same_category_objects(suite: str, task: int) -> list[str]:
    """The other objects and fixtures of the categories of task ``task``'s targets, none of the goal's targets or
    places (libero_spatial: the other black bowl), as :func:`~vla_lab.worlds.libero.world.episode_objects` finds
    them in the simulator."""
    scene = _scene(suite, task)
    kinds = {scene.categories[t] for t in scene.targets}
    return [n for n, c in scene.categories.items() if c in kinds and n not in scene.targets and n not in scene.places]


def instructed_object(suite: str, scene: int, instruction_of: int) -> str | None:
    """The object of task ``scene``'s scene that task ``instruction_of``'s instruction names (module docstring),
    or None when it names none of them (or its goal moves no movable object)."""
    target_j = goal_object(suite, instruction_of)
    if target_j is None:
        return None
    other, here = _scene(suite, instruction_of), _scene(suite, scene)
    category = other.categories[target_j]
    candidates = [name for name, c in here.categories.items() if c == category]
    if Counter(other.categories.values())[category] == 1:
        return candidates[0] if len(candidates) == 1 else None
    where = other.placed.get(target_j)
    if where is None:  # put in or under something at init: no placement to match
        return None
    found = [name for name in candidates if here.placed.get(name) == where]
    return found[0] if len(found) == 1 else None


def instruction_partners(suite: str, task: int) -> list[Partner]:
    """Every partner of ``task`` (module docstring), by task id; none when its goal moves no movable object."""
    own = goal_object(suite, task)
    if own is None:
        return []
    instruction = task_info(suite, task)["instruction"]
    partners = []
    for j in range(num_tasks(suite)):
        info = task_info(suite, j)
        named = instructed_object(suite, task, j) if j != task and info["instruction"] != instruction else None
        if named is not None and named != own:
            partners.append(Partner(j, info["instruction"], named))
    return partners


def first_partner(suite: str, task: int) -> Partner:
    """The partner of ``task`` with the lowest id; a one-line error when it has none."""
    partners = instruction_partners(suite, task)
    if not partners:
        raise InputError(f"task: got {task} of {suite}, expected a task with an instruction-swap partner (another "
                         "task's instruction that names another object of its scene)")
    return partners[0]
