"""vla-lab's models on LIBERO (the simulator, model-free, is :mod:`vla_lab.worlds.libero`).

* :mod:`.evaluate` -- upstream's closed-loop protocol, resumable and sharded (``vla-lab eval libero``);
* :mod:`.demos` -- the scripted expert's demonstrations in LIBERO's HDF5 layout (``vla-lab libero demos``);
* :mod:`.data` -- training batches from them (the evaluation's image steps, upstream's random crop);
* :mod:`.models` -- vla-lab's LIBERO models (``libero-spatial-<mask>``).

Target attention on LIBERO frames is the ``target-attention`` study on the LIBERO world
(:mod:`vla_lab.studies`, measured by :mod:`vla_lab.interp.target_attention`).

(The run function is ``vla_lab.libero.evaluate.evaluate``; it is not re-exported here, where its name would
hide its module.)
"""

from vla_lab.libero.evaluate import run_episode, summarize

__all__ = ["run_episode", "summarize"]
