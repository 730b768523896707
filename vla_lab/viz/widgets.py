"""Interactive explorers for notebooks (ipywidgets is imported only when one is built).

    explorer = AttentionExplorer(model, inputs, images)
    explorer.widget          # last line of a cell
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import interp
from vla_lab.config import AttentionLike, AttentionSpec
from vla_lab.errors import InputError
from vla_lab.interp import ActivationCache, capture
from vla_lab.interp.hooks import llm_hook
from vla_lab.model import VLAAdapter, forward_inputs
from vla_lab.viz import overlays, plots
from vla_lab.viz.export import plotted_data


def _display_data(fig: Any, dpi: int) -> dict[str, Any]:
    """A Jupyter ``display_data`` output of a figure as PNG (no kernel needed to build it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": repr(fig)},
        "metadata": {},
    }


class AttentionExplorer:
    """Segment attention and patch attention of one input under several masks, picked with controls.

    One ``segments``-mask capture per mask is made up front. Controls (attributes): ``mask``,
    ``layer``, ``head`` (``"mean"`` or an index), ``query_segment``, ``image``. Each change redraws
    ``output``: the segment heatmap of that layer/head and the patch overlay of that query segment
    on that image. ``last_data`` / ``last_patch_data`` hold the numbers last drawn and
    ``last_figures`` the plots. ``inputs``: :meth:`VLAAdapter.prepare_inputs` output (sample 0 is
    shown); ``images``: that sample's uint8 images; ``outlines``: as in :func:`overlays.patch_overlay`.
    """

    def __init__(
        self,
        model: VLAAdapter,
        inputs: Mapping[str, Any],
        images: Sequence[np.ndarray],
        masks: Sequence[AttentionLike] = ("causal", "bidirectional"),
        outlines: Mapping[str, Any] | None = None,
        dpi: int = 90,
    ) -> None:
        import ipywidgets as w

        if not masks:
            raise InputError("masks: got none, expected at least one attention mask")
        self.model = model
        self.images = [np.asarray(im) for im in images]
        self.outlines = outlines
        self.dpi = dpi
        forward = forward_inputs(inputs)
        self.caches: dict[str, ActivationCache] = {}
        for mask in masks:
            label = AttentionSpec.parse(mask).label
            with capture(model, "segments", hidden_states=False, head=False) as cache, torch.no_grad():
                model(**forward, attention=mask)
            self.caches[label] = cache
        first = next(iter(self.caches.values()))
        layout = first.layouts[0]
        if len(self.images) != layout.num_images:
            raise InputError(f"images: got {len(self.images)}, expected {layout.num_images} (the model's images)")
        self.segment_frames = {label: interp.segment_mass(c) for label, c in self.caches.items()}
        self._patch_frames: dict[tuple[str, str], pd.DataFrame] = {}
        heads = int(first[llm_hook("segment_pattern", 0)].shape[1])
        queries = [n for n, s in layout.segments(fine=True).items() if n != "padding" and len(s)]

        self.mask = w.Dropdown(options=list(self.caches), description="mask")
        self.layer = w.IntSlider(value=first.num_layers - 1, min=0, max=first.num_layers - 1, description="layer")
        self.head = w.Dropdown(options=[("mean", "mean")] + [(str(h), h) for h in range(heads)], description="head")
        default_query = "action_queries" if "action_queries" in queries else queries[0]
        self.query_segment = w.Dropdown(options=queries, value=default_query, description="query")
        self.image = w.Dropdown(options=[(f"image {i}", i) for i in range(len(self.images))], description="image")
        self.output = w.Output()
        self.last_data: pd.DataFrame | None = None
        self.last_patch_data: pd.DataFrame | None = None
        self.last_figures: list[Any] = []
        self.redraws = 0
        self._hold = False
        controls = [self.mask, self.layer, self.head, self.query_segment, self.image]
        for control in controls:
            control.observe(self._changed, names="value")
        self._box = w.VBox([w.HBox(controls[:3]), w.HBox(controls[3:]), self.output])
        self.update()

    @property
    def widget(self) -> Any:
        """The top-level box (end a notebook cell with it)."""
        return self._box

    @property
    def selected_head(self) -> int | None:
        return None if self.head.value == "mean" else int(self.head.value)

    def patch_frame(self, mask: str, query_segment: str) -> pd.DataFrame:
        """:func:`interp.query_patch_attention` of a mask and query segment (computed once)."""
        key = (mask, query_segment)
        if key not in self._patch_frames:
            self._patch_frames[key] = interp.query_patch_attention(self.caches[mask], query_segment)
        return self._patch_frames[key]

    def select(self, **values: Any) -> None:
        """Set several controls (``mask=``, ``layer=``, ``head=``, ``query_segment=``, ``image=``), redraw once."""
        unknown = set(values) - {"mask", "layer", "head", "query_segment", "image"}
        if unknown:
            raise InputError(f"select: got {sorted(unknown)}, expected mask, layer, head, query_segment or image")
        self._hold = True
        try:
            for name, value in values.items():
                getattr(self, name).value = value
        finally:
            self._hold = False
        self.update()

    def _changed(self, _change: Any) -> None:
        if not self._hold:
            self.update()

    def update(self) -> None:
        """Redraw both figures for the current control values."""
        mask, layer, head = self.mask.value, int(self.layer.value), self.selected_head
        query, image = self.query_segment.value, int(self.image.value)
        which = "mean over heads" if head is None else f"head {head}"
        title = f"{mask}: segment attention mass, layer {layer}\n({which})"
        heat = plots.segment_heatmap(self.segment_frames[mask], layer, head=head, title=title)
        patches = self.patch_frame(mask, query)
        patches = patches[(patches["image"] == image) & (patches["layer"] == layer)].assign(image=0)
        outlines = overlays.outlines_for_image(self.outlines, image, len(self.images))
        overlay = overlays.patch_overlay(
            [self.images[image]], patches, layer=layer, head=head, outlines=outlines or None,
            title=f"{mask}: {query} → image {image} patches, layer {layer}", image_names=[f"image {image}"],
        )
        self.last_data = plotted_data(heat)
        patch_data = plotted_data(overlay)
        self.last_patch_data = patch_data.assign(image=image) if patch_data is not None else None
        self.last_figures = [heat, overlay]
        self.output.outputs = tuple(_display_data(fig, self.dpi) for fig in self.last_figures)
        self.redraws += 1
