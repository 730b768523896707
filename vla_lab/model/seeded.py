"""Models with seeded random weights, for timings, shapes and tests (a training run's starting point is
:func:`vla_lab.tabletop.initial_model`)."""

from __future__ import annotations

import torch

from vla_lab.config import VLAConfig, resolve_device, resolve_dtype
from vla_lab.errors import check_seed
from vla_lab.model.vla import VLAAdapter, meta_model


def random_model(
    config: VLAConfig,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    std: float = 0.02,
) -> VLAAdapter:
    """A model with seeded N(0, ``std``) weights, built without materialising a default init first (fast for the
    full-size presets; for timings and shapes). Not a training run's starting point: that is
    :func:`vla_lab.tabletop.initial_model`, and ``random-init:NAME`` of :mod:`vla_lab.registry` reloads it.

    Matrices and embeddings ~ N(0, std), biases 0, norm weights 1; the action queries and the
    head's gates start at 0 as upstream initialises them.
    """
    gen = torch.Generator(device="cpu").manual_seed(check_seed(seed))
    model = meta_model(config).to(resolve_dtype(dtype)).to_empty(device=resolve_device(device))
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name == "action_queries.weight" or leaf == "gating_factor" or leaf == "bias":
                param.zero_()
            elif param.ndim == 1 and ("norm" in name or leaf in ("gamma", "scale_factor")):
                param.fill_(1.0 if "norm" in name else 1e-5)
            else:
                values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
                param.copy_(values)
    if config.llm.get("tie_word_embeddings", True):
        model.language_model.tie_weights()
    return model.eval()
