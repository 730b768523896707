"""Figures of the analyses, their reproducible export, the standard attention report and an explorer.

* :mod:`.plots` -- matplotlib Figures (segment maps, token maps, layer curves, head gates);
* :mod:`.masks` -- one input under two masks (segment-mass difference, hidden-state cosine);
* :mod:`.overlays` -- attention on image patches drawn over the images, with object outlines;
* :mod:`.export` -- PNG + SVG + PDF with a JSON sidecar of the plotted numbers and their provenance;
* :mod:`.report` -- the standard attention report of one input under one or two masks;
* :mod:`.widgets` -- an ipywidgets explorer (``vla_lab.viz.widgets.AttentionExplorer``).
"""

from vla_lab.viz.export import (
    EXPORT_FORMATS,
    check_free,
    export_figure,
    export_paths,
    plotted_data,
    provenance,
    relative_paths,
    sidecar_path,
    to_jsonable,
    write_atomic,
)
from vla_lab.viz.masks import hidden_cosine_curves, mask_difference_heatmap
from vla_lab.viz.overlays import outlines_for_image, patch_overlay
from vla_lab.viz.plots import (
    head_gates,
    layer_curves,
    segment_heatmap,
    segment_heatmap_grid,
    segment_map_grid,
    token_attention_map,
)
from vla_lab.viz.report import attention_report, report_paths

__all__ = [
    "EXPORT_FORMATS",
    "attention_report",
    "check_free",
    "export_figure",
    "export_paths",
    "head_gates",
    "hidden_cosine_curves",
    "layer_curves",
    "mask_difference_heatmap",
    "outlines_for_image",
    "patch_overlay",
    "plotted_data",
    "provenance",
    "relative_paths",
    "report_paths",
    "segment_heatmap",
    "segment_heatmap_grid",
    "segment_map_grid",
    "sidecar_path",
    "to_jsonable",
    "token_attention_map",
    "write_atomic",
]
