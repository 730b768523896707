"""AttentionExplorer: controls redraw the output with the numbers of the selection."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from testkit import randomize

from vla_lab import VLAAdapter, VLAConfig, interp
from vla_lab.interp import run_with_cache
from vla_lab.tabletop import example_inputs, example_outlines

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def setup():
    from vla_lab.viz.widgets import AttentionExplorer

    torch.manual_seed(0)
    model = randomize(VLAAdapter(VLAConfig.preset("tiny")), seed=1).eval()
    inputs, images, _ = example_inputs(model)
    explorer = AttentionExplorer(model, inputs, images, outlines=example_outlines(model))
    return model, inputs, images, explorer


def _expected(model, inputs, mask, layer, head):
    _, cache = run_with_cache(model, **inputs, attention=mask)
    df = interp.segment_mass(cache)
    sel = df[(df["sample"] == 0) & (df.layer == layer)]
    if head is not None:
        sel = sel[sel["head"] == head]
    return sel.groupby(["query_segment", "key_segment"])["value"].mean().sort_index(), cache


def _shown(explorer):
    return explorer.last_data.set_index(["query_segment", "key_segment"])["value"].sort_index()


def test_ipywidgets_is_imported_lazily():
    import vla_lab.viz.masks
    import vla_lab.viz.plots
    import vla_lab.viz.report
    import vla_lab.viz.widgets

    for module in (vla_lab.viz.widgets, vla_lab.viz.report, vla_lab.viz.plots, vla_lab.viz.masks, vla_lab.viz,
                   vla_lab):
        tree = ast.parse(Path(module.__file__).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not any(name.startswith("ipywidgets") for name in names), module.__name__


def test_explorer_builds_controls_and_a_first_view(setup):
    import ipywidgets as w

    model, _, _, explorer = setup
    assert isinstance(explorer.widget, w.VBox)
    assert list(explorer.mask.options) == ["causal", "bidirectional"]
    assert explorer.layer.max == model.config.num_llm_layers - 1
    assert [v for _, v in explorer.head.options] == ["mean", 0, 1, 2, 3]
    assert "action_queries" in explorer.query_segment.options and "vision.1" in explorer.query_segment.options
    outputs = explorer.output.outputs
    assert len(outputs) == 2
    for out in outputs:
        png = base64.b64decode(out["data"]["image/png"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "selection",
    [
        {"mask": "causal", "layer": 0, "head": "mean"},
        {"mask": "bidirectional", "layer": 1, "head": 2, "query_segment": "text", "image": 1},
    ],
)
def test_controls_redraw_with_the_selection(setup, selection):
    model, inputs, images, explorer = setup
    figures_before, redraws = list(explorer.last_figures), explorer.redraws
    explorer.select(**selection)
    assert explorer.redraws == redraws + 1
    assert all(new is not old for new, old in zip(explorer.last_figures, figures_before))
    assert len(explorer.output.outputs) == 2

    head = None if selection["head"] == "mean" else selection["head"]
    expected, cache = _expected(model, inputs, selection["mask"], selection["layer"], head)
    pd.testing.assert_series_equal(_shown(explorer), expected, check_names=False)
    if selection["mask"] == "causal":
        assert expected[("vision", "action_queries")] == 0.0
    else:
        assert expected[("vision", "action_queries")] > 0.0

    query = selection.get("query_segment", explorer.query_segment.value)
    image = selection.get("image", explorer.image.value)
    patches = interp.query_patch_attention(cache, query, layers=[selection["layer"]])
    if head is not None:
        patches = patches[patches["head"] == head]
    grid = interp.patch_grid(patches, image=image)
    shown = explorer.last_patch_data.sort_values(["row", "col"])
    assert set(shown["image"]) == {image}
    assert np.allclose(shown["value"].to_numpy(), grid.ravel())


def test_setting_one_control_redraws(setup):
    *_, explorer = setup
    redraws = explorer.redraws
    explorer.layer.value = 1 - explorer.layer.value
    assert explorer.redraws == redraws + 1
    assert set(explorer.last_data["layer"]) == {explorer.layer.value}
    explorer.head.value = 1
    assert explorer.redraws == redraws + 2
    assert set(explorer.last_data["head"]) == {1}
    explorer.update()
    assert explorer.redraws == redraws + 3
