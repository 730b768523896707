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
from vla_lab.worlds.libero.env import _quiet, num_tasks, task_files, task_info


@dataclass(frozen=True)
class Partner:
    """Task ``task``'s instruction in another task's scene, and the object of that scene it names."""

    task: int
    instruction: str
    instructed: str


@lru_cache(maxsize=64)
def _scene(suite: str, task: int) -> tuple[dict[str, str], dict[str, str], str | None]:
    """(object -> category, object -> where it is placed, the goal's first object) of a task's BDDL file."""
    with _quiet():
        from libero.libero.envs.bddl_utils import robosuite_parse_problem

        problem = robosuite_parse_problem(task_files(suite, task)[0])
    categories = {name: category for category, names in problem["objects"].items() for name in names}
    placed = {p[1]: p[2] for p in problem["initial_state"] if len(p) == 3 and p[0] == "on"}
    goal = next((a for p in problem["goal_state"] for a in p[1:2] if a in categories), None)
    return categories, placed, goal


def instructed_object(suite: str, scene: int, instruction_of: int) -> str | None:
    """The object of task ``scene``'s scene that task ``instruction_of``'s instruction names (module docstring),
    or None when it names none of them."""
    categories_j, placed_j, target_j = _scene(suite, instruction_of)
    if target_j is None:
        return None
    category = categories_j[target_j]
    categories_i, placed_i, _ = _scene(suite, scene)
    candidates = [name for name, c in categories_i.items() if c == category]
    if Counter(categories_j.values())[category] == 1:
        return candidates[0] if len(candidates) == 1 else None
    where = placed_j.get(target_j)
    found = [name for name in candidates if placed_i.get(name) == where]
    return found[0] if len(found) == 1 else None


def same_category_objects(suite: str, task: int) -> list[str]:
    """The objects of task ``task``'s scene of its target's category, the target left out (libero_spatial: the other
    black bowl); empty for a goal on no object."""
    categories, _, target = _scene(suite, task)
    if target is None:
        return []
    return [name for name, c in categories.items() if c == categories[target] and name != target]


def goal_object(suite: str, task: int) -> str | None:
    """The first object of task ``task``'s goal (its target), None for a goal on no object (open a drawer)."""
    return _scene(suite, task)[2]


def instruction_partners(suite: str, task: int) -> list[Partner]:
    """Every partner of ``task`` (module docstring), by task id."""
    own = _scene(suite, task)[2]
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
