"""A model acting in a world: one policy for every model and every world.

:class:`Policy` turns a :class:`~vla_lab.model.VLAAdapter` into the chunk function of
:class:`~vla_lab.worlds.runner.OpenLoop` with the world's conventions: its views (as many as the model
takes), the proprio when the model uses it, the statistics the world picks (``statistics_for``), its centre
crop and its action post-processing (``process_chunk``). One call predicts the chunks of every observation
given (one batched forward pass). As an :class:`OpenLoop` it keeps the action queue: ``select_action``
(one episode) or ``select_actions`` (several, batched); ``last_normalized`` holds the head's output of the
latest query (rows in the order of its observations).

``intervene`` changes every forward pass of the policy: called with the query's observations, their slots and
the forward inputs, it returns extra keyword arguments of :meth:`VLAAdapter.forward
<vla_lab.model.VLAAdapter.forward>` (``attention``, ``block``, ``head_block``): a knockout in closed loop.
``forward`` replaces the forward pass itself (e.g. one run inside a capture that patches states): called with the
forward keyword arguments (``intervene``'s included), the observations and their slots, it returns the
:class:`~vla_lab.model.VLAOutput`; any other forward pass it runs (a counterfactual to patch from) is its own, without
``intervene``'s arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.model import VLAAdapter, VLAOutput, forward_inputs
from vla_lab.worlds import Observation, World
from vla_lab.worlds.runner import OpenLoop, QueryHook

#: (observations of a query, their slots, the forward inputs) -> extra forward keyword arguments.
Intervene = Callable[[Sequence[Observation], Sequence[int], dict[str, torch.Tensor]], dict[str, Any]]
#: (forward keyword arguments, observations of a query, their slots) -> the forward pass's output.
Forward = Callable[[dict[str, Any], Sequence[Observation], Sequence[int]], VLAOutput]


def check_world_config(config: VLAConfig, world: str) -> None:
    """A one-line error unless a model of ``config`` can act in the world named ``world`` (every world has
    7-d actions, an 8-d proprio and two views)."""
    if config.robot.action_dim != 7:
        raise InputError(f"robot.action_dim: got {config.robot.action_dim}, expected 7 ({world}'s actions)")
    if config.use_proprio and config.robot.proprio_dim != 8:
        raise InputError(f"robot.proprio_dim: got {config.robot.proprio_dim}, expected 8 ({world}'s proprio)")
    if config.num_images not in (1, 2):
        raise InputError(f"num_images: got {config.num_images}, expected 1 or 2 ({world} has two views)")


class Policy(OpenLoop):
    """``model`` acting in ``world`` (see the module docstring); ``prompt`` overrides the model's prompt;
    ``intervene`` adds arguments to its forward passes, ``forward`` replaces them (module docstring).

    The model's train / eval mode is the caller's (put it in eval mode to act).
    """

    def __init__(self, model: VLAAdapter, world: World, *, execute: int = 8, prompt: str | None = None,
                 on_query: QueryHook | None = None, intervene: Intervene | None = None,
                 forward: Forward | None = None) -> None:
        check_world_config(model.config, world.name)
        self.model, self.world, self.prompt, self.intervene = model, world, prompt, intervene
        self.forward = forward
        self.unnorm_key = world.statistics_for(model.config.norm_stats or {})
        self.last_normalized: np.ndarray | None = None
        super().__init__(self.predict, execute, world.process_chunk, on_query)

    def inputs(self, observations: Sequence[Observation]) -> tuple[list[list[np.ndarray]], list[str], Any]:
        """(images, instructions, raw proprio or None) of ``observations``, as the model takes them."""
        n = self.model.config.num_images
        proprio = np.stack([o.proprio for o in observations]) if self.model.config.use_proprio else None
        return [list(o.images[:n]) for o in observations], [o.instruction for o in observations], proprio

    def forward_inputs(self, observations: Sequence[Observation]) -> dict[str, torch.Tensor]:
        """The model's forward keyword arguments for ``observations`` (one batch), prepared as :meth:`predict`
        prepares them (views, the world's statistics for the proprio, its centre crop, the prompt)."""
        inputs = self.model.prepare_inputs(*self.inputs(observations), unnorm_key=self.unnorm_key,
                                           center_crop=self.world.center_crop, prompt=self.prompt)
        return forward_inputs(inputs)

    def predict(self, observations: Sequence[Observation], slots: Sequence[int] = ()) -> np.ndarray:
        """(B, chunk, 7) chunks for ``observations`` (un-normalised when the model has statistics), before the
        world's post-processing; ``slots`` (the chunk-function signature) go to ``intervene``."""
        images, instructions, proprio = self.inputs(observations)
        with torch.inference_mode():
            if self.intervene is None and self.forward is None:
                pred = self.model.predict_action(images, instructions, proprio, unnorm_key=self.unnorm_key,
                                                 center_crop=self.world.center_crop, prompt=self.prompt)
            else:
                batch = self.model.prepare_inputs(images, instructions, proprio, unnorm_key=self.unnorm_key,
                                                  center_crop=self.world.center_crop, prompt=self.prompt)
                inputs = forward_inputs(batch)
                if self.intervene is not None:
                    inputs = {**inputs, **self.intervene(observations, slots, inputs)}
                out = self.model(**inputs) if self.forward is None else self.forward(inputs, observations, slots)
                pred = self.model.prediction(out.normalized_actions, batch, out.layouts, out.attention.label)
        self.last_normalized = np.asarray(pred.normalized_actions)
        actions = pred.actions if pred.actions is not None else pred.normalized_actions
        return np.asarray(actions, dtype=np.float64)
