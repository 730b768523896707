"""Worlds: model-free environments a policy acts in, each an implementation of :class:`World`.

* :mod:`.base` -- the interface: :class:`Episode`, :class:`Observation` (views, instruction, proprio, named
  pixel regions), :class:`Step`, :class:`World`;
* :mod:`.tabletop` -- the synthetic tabletop with known ground truth (:class:`~.tabletop.TabletopWorld`);
* :mod:`.libero` -- the LIBERO benchmark's suites (:class:`~.libero.LiberoWorld`; its simulator is optional).

Worlds sit below :mod:`vla_lab.model` in the import layers: nothing here runs a model.
"""

from typing import Any

from vla_lab.errors import InputError
from vla_lab.worlds.base import COUNTERFACTUALS, ORIGINAL, REGIONS, Episode, Observation, Step, World
from vla_lab.worlds.libero.suites import ALL_SUITES, SUITES

#: Names :func:`create_world` takes: the tabletop, and every LIBERO suite (perturbation suites included).
WORLD_NAMES = ("tabletop", *ALL_SUITES)


def create_world(name: str, **options: Any) -> World:
    """A world by name: ``tabletop`` (options: ``config``) or a LIBERO suite (options: ``resolution``, ``seed``)."""
    if name == "tabletop":
        from vla_lab.worlds.tabletop import TabletopWorld

        return TabletopWorld(**options)
    if name in ALL_SUITES:
        from vla_lab.worlds.libero.world import LiberoWorld

        return LiberoWorld(name, **options)
    raise InputError(f"world: got {name!r}, expected one of {['tabletop', *SUITES]} or a LIBERO perturbation suite "
                     "(vla_lab.worlds.libero.PERTURBATION_SUITES)")


__all__ = [
    "COUNTERFACTUALS",
    "ORIGINAL",
    "REGIONS",
    "WORLD_NAMES",
    "Episode",
    "Observation",
    "Step",
    "World",
    "create_world",
]
