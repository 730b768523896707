"""The trainer's auxiliary losses (:mod:`vla_lab.training.train`'s module docstring says why): linear probes
on the projector's output (patch description) and on the last LLM layer's action-query states (target
position), trained along and discarded."""

from __future__ import annotations

from typing import Any

import torch

from vla_lab.model import VLAAdapter
from vla_lab.worlds import tabletop as world


class AuxiliaryLosses(torch.nn.Module):
    """The two auxiliary probes of the module docstring and their losses (not part of the saved model)."""

    def __init__(self, model: VLAAdapter, patch_weight: float, target_weight: float) -> None:
        super().__init__()
        dim = model.config.llm_dim
        self.num_colors, self.num_shapes = len(world.COLORS) + 1, len(world.SHAPES) + 1
        self.patch_weight, self.target_weight = float(patch_weight), float(target_weight)
        self.patch_probe = torch.nn.Linear(dim, self.num_colors + self.num_shapes + 2)
        self.target_probe = torch.nn.Linear(dim, 2)
        rows, cols = model.vision_backbone.patch_grid
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        grid = torch.stack([r.flatten() / max(rows - 1, 1), c.flatten() / max(cols - 1, 1)], -1) * 2 - 1
        self.register_buffer("patch_positions", grid.repeat(model.config.num_images, 1), persistent=False)
        self._projected: torch.Tensor | None = None
        self._handle = model.projector.register_forward_hook(self._record) if self.active else None

    @property
    def active(self) -> bool:
        return self.patch_weight > 0 or self.target_weight > 0

    def _record(self, module: Any, inputs: Any, output: torch.Tensor) -> None:
        self._projected = output

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()

    def forward(
        self, query_states: torch.Tensor, labels: torch.Tensor | None, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Losses of the last forward pass: ``patch``, ``target`` and their weighted ``total``."""
        projected, self._projected = self._projected, None
        if projected is None:
            raise RuntimeError("AuxiliaryLosses: no projector output recorded; run the model first")
        patch = torch.zeros((), device=query_states.device)
        if labels is not None:  # data without patch labels (LIBERO) train with aux_patch_weight 0
            out = self.patch_probe(projected.float())
            nc, ns = self.num_colors, self.num_shapes
            ce = torch.nn.functional.cross_entropy
            patch = (
                ce(out[..., :nc].reshape(-1, nc), labels[..., 0].reshape(-1))
                + ce(out[..., nc : nc + ns].reshape(-1, ns), labels[..., 1].reshape(-1))
                + (out[..., nc + ns :] - self.patch_positions).abs().mean()
            )
        predicted = self.target_probe(query_states[:, -1].float().mean(dim=1))
        target = torch.nn.functional.mse_loss(predicted, targets)
        return {"patch": patch, "target": target, "total": self.patch_weight * patch + self.target_weight * target}
