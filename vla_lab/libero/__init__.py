"""vla-lab's models on LIBERO (the simulator, model-free, is :mod:`vla_lab.worlds.libero`).

* :mod:`.evaluate` -- upstream's closed-loop protocol, resumable and sharded (``vla-lab eval libero``);
* :mod:`.demos` -- the scripted expert's demonstrations in LIBERO's HDF5 layout (``vla-lab libero demos``);
* :mod:`.data` -- training batches from them (the evaluation's image steps, upstream's random crop);
* :mod:`.models` -- vla-lab's LIBERO models (``libero-spatial-<mask>``);
* :mod:`.target_attention` -- attention on the target object's patches in real frames.

(The run function is ``vla_lab.libero.evaluate.evaluate``; it is not re-exported here, where its name would
hide its module.)
"""

from vla_lab.libero.evaluate import run_episode, summarize

__all__ = ["run_episode", "summarize"]
