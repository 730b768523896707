"""The last compiled scene of this process, kept: robosuite compiles a LIBERO scene's XML twice per simulator.

Building a simulator compiles its scene (MuJoCo's XML compiler, ~2 s for libero_spatial: 300 000 mesh faces), and
its first reset compiles the same XML again (robosuite's reset rebuilds the scene). Every task of libero_spatial
has the same scene XML; only the init states and the goal differ. Inside :func:`compiling_once`, robosuite's
``MjSim.from_xml_string`` compiles an XML only when it differs from the last one compiled there, and otherwise
gets a copy (``mj_copyModel``, ~0.15 s) of the kept model as it left the compiler: every array of the model is
the compiler's, bit for bit (``tests/test_libero_reuse.py``). The kept model costs its size in memory (~260 MB for
libero_spatial); :func:`keep_compiled` turns the keep off and frees it.

MuJoCo's ``mj_saveLastXML`` (robosuite's ``sim.model.get_xml()``, LIBERO's ``model_file``) writes the XML MuJoCo
last parsed, whichever scene that was, updated with the values of the model it is given; :func:`scene_xml` parses
a simulator's own scene again first when another was compiled since (a copied scene was parsed by no one).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import threading
from collections.abc import Iterator
from typing import Any

from vla_lab.errors import InputError

#: Turned on for the calls of this thread inside :func:`compiling_once`.
_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("vla_lab_compiling_once", default=False)
_LOCK = threading.Lock()
#: ``xml``/``model``: the kept scene; ``last``: the XML of the last model robosuite compiled in the process.
_STATE: dict[str, Any] = {"keep": True, "xml": None, "model": None, "last": None}
#: Attribute of a robosuite ``MjSim`` built through :func:`_from_xml_string`: the XML of its scene.
_SOURCE_XML = "_vla_lab_scene_xml"


def keep_compiled(keep: bool) -> bool:
    """Keep the last compiled scene (default True) or free it and compile every time. Returns the previous setting."""
    if not isinstance(keep, bool):
        raise InputError(f"keep: got {keep!r}, expected True or False")
    with _LOCK:
        previous, _STATE["keep"] = _STATE["keep"], keep
        if not keep:
            _STATE.update(xml=None, model=None)
    return bool(previous)


def _from_xml_string(cls: Any, xml: str) -> Any:
    import mujoco

    with _LOCK:
        if _ACTIVE.get() and _STATE["keep"] and _STATE["xml"] == xml:
            sim = cls(copy.copy(_STATE["model"]))
        else:
            model = mujoco.MjModel.from_xml_string(xml)
            _STATE["last"] = xml
            if _ACTIVE.get() and _STATE["keep"]:
                _STATE.update(xml=xml, model=copy.copy(model))
            sim = cls(model)
    setattr(sim, _SOURCE_XML, xml)
    return sim


def _install() -> None:
    """Route robosuite's ``MjSim.from_xml_string`` through :func:`_from_xml_string` (once; outside
    :func:`compiling_once` it compiles as robosuite's does, and notes which scene MuJoCo parsed last)."""
    from robosuite.utils import binding_utils

    with _LOCK:
        if getattr(binding_utils.MjSim.__dict__["from_xml_string"], "__func__", None) is not _from_xml_string:
            binding_utils.MjSim.from_xml_string = classmethod(_from_xml_string)


@contextlib.contextmanager
def compiling_once() -> Iterator[None]:
    """robosuite's compiles in this block (this thread) reuse the last compiled scene when the XML is the same."""
    _install()
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def scene_xml(sim: Any) -> str:
    """robosuite's ``sim.model.get_xml()`` (MuJoCo's ``mj_saveLastXML``: the XML MuJoCo last parsed, with the
    values of ``sim``'s model), with this simulator's scene parsed again first if another was compiled since."""
    import mujoco

    source = getattr(sim, _SOURCE_XML, None)
    with _LOCK:
        if source is not None and _STATE["last"] != source:
            mujoco.MjModel.from_xml_string(source)
            _STATE["last"] = source
        return str(sim.model.get_xml())
