"""Patch features -> LLM embeddings (SPEC section 4), and proprio -> head conditioning.

Parameter names follow the released checkpoints: ``projector.fc1/fc2/fc3`` and
``proprio_projector.fc1/fc2``.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearProjector(nn.Module):
    """fc1: vision_dim -> llm_dim."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, llm_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc1(patches)


class GeluMLPProjector(nn.Module):
    """fc1: vision_dim -> llm_dim, GELU, fc2: llm_dim -> llm_dim."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(patches)))


class FusedGeluMLPProjector(nn.Module):
    """fc1: vision_dim -> 4 vision_dim, GELU, fc2: -> llm_dim, GELU, fc3: llm_dim -> llm_dim (released)."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(patches)))))


PROJECTOR_CLASSES: dict[str, type[nn.Module]] = {
    "linear": LinearProjector,
    "gelu-mlp": GeluMLPProjector,
    "fused-gelu-mlp": FusedGeluMLPProjector,
}


def build_projector(kind: str, vision_dim: int, llm_dim: int) -> nn.Module:
    return PROJECTOR_CLASSES[kind](vision_dim, llm_dim)


class ProprioProjector(nn.Module):
    """Normalised robot state -> one LLM-width token for the action head: fc1, GELU, fc2."""

    def __init__(self, proprio_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(proprio)))
