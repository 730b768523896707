"""Figures: titles, labelled axes, colourbars, plotted numbers equal the analyses', reproducible export."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from testkit import randomize

import vla_lab
from vla_lab import VLAAdapter, VLAConfig, interp, tabletop, viz
from vla_lab.errors import ExportError, InputError
from vla_lab.interp import run_with_cache
from vla_lab.tabletop import example_inputs, example_outlines
from vla_lab.worlds import tabletop as world


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = randomize(VLAAdapter(VLAConfig.preset("tiny")), seed=1).eval()
    inputs, images, description = example_inputs(model)
    _, cache = run_with_cache(model, **inputs, attention="causal")
    comparison = interp.compare_masks(model, inputs)
    return model, inputs, images, description, cache, comparison


def _has_colorbar(fig: Figure) -> bool:
    mappables = [m for ax in fig.axes for m in (*ax.images, *ax.collections)]
    return any(getattr(m, "colorbar", None) is not None for m in mappables)


def _check_labels(fig: Figure, colorbar: bool) -> None:
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
    assert any(titles), "figure has no title"
    data_axes = [ax for ax in fig.axes if ax.get_visible() and getattr(ax, "_colorbar", None) is None
                 and ax.get_label() != "<colorbar>"]
    for ax in data_axes:
        xlabel = ax.get_xlabel() or (fig._supxlabel.get_text() if fig._supxlabel else "")
        ylabel = ax.get_ylabel() or (fig._supylabel.get_text() if fig._supylabel else "")
        assert xlabel, f"axes {ax.get_title()!r} has no x label"
        assert ylabel or ax is not data_axes[0], f"axes {ax.get_title()!r} has no y label"
    assert _has_colorbar(fig) == colorbar


def test_segment_heatmap_shows_the_dataframe(setup):
    *_, cache, _ = setup
    df = interp.segment_mass(cache)
    fig = viz.segment_heatmap(df, layer=1)
    _check_labels(fig, colorbar=True)
    shown = viz.plotted_data(fig)
    expected = df[(df.layer == 1) & (df["sample"] == 0)].groupby(["query_segment", "key_segment"])["value"].mean()
    got = shown.set_index(["query_segment", "key_segment"])["value"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    matrix = fig.axes[0].images[0].get_array()
    assert matrix.shape == (5, 5)
    assert np.isclose(matrix[0, 0], expected[("tok0", "tok0")])  # rows/cols in sequence order
    one_head = viz.plotted_data(viz.segment_heatmap(cache, layer=0, head=2))
    sel = df[(df.layer == 0) & (df["head"] == 2) & (df["sample"] == 0)]
    assert np.allclose(one_head["value"].to_numpy(), sel["value"].to_numpy())
    with pytest.raises(InputError, match="layer"):
        viz.segment_heatmap(df, layer=7)


def test_grid_and_curves(setup):
    *_, cache, comparison = setup
    df = interp.segment_mass(cache)
    grid = viz.segment_heatmap_grid(df)
    _check_labels(grid, colorbar=True)
    colorbars = {id(m.colorbar) for ax in grid.axes for m in ax.images if m.colorbar is not None}
    assert len(colorbars) == 1  # shared
    assert set(viz.plotted_data(grid)["layer"]) == {0, 1}

    curves = viz.layer_curves(df)
    _check_labels(curves, colorbar=False)
    stats = viz.plotted_data(curves)
    sel = df[(df.query_segment == "action_queries") & (df["sample"] == 0)]
    expected = sel.groupby(["key_segment", "layer"])["value"].agg(["mean", "min", "max"])
    got = stats.set_index(["key_segment", "layer"]).sort_index()
    assert np.allclose(got["value"], expected.sort_index()["mean"])
    assert np.allclose(got["head_min"], expected.sort_index()["min"])

    both = pd.concat([df.assign(mask="causal"), interp.segment_mass(comparison.caches[1]).assign(mask="bidir")])
    two = viz.layer_curves(both)
    assert set(viz.plotted_data(two)["mask"]) == {"causal", "bidir"}
    assert len(two.axes[0].lines) == 2 * 5
    assert set(viz.plotted_data(viz.layer_curves(comparison))["mask"]) == {"causal", "bidirectional"}
    with pytest.raises(InputError, match="mask"):
        viz.segment_heatmap(both, layer=0)
    picked = viz.plotted_data(viz.segment_heatmap(both, layer=0, mask="bidir"))
    assert picked.set_index(["query_segment", "key_segment"])["value"][("vision", "action_queries")] > 0


def test_patch_overlay_with_outlines(setup):
    model, _, images, _, cache, _ = setup
    patches = interp.query_patch_attention(cache)
    outlines = example_outlines(model)
    fig = viz.patch_overlay(images, patches, layer=1, outlines=outlines)
    _check_labels(fig, colorbar=True)
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.images]) == 2
    shown = viz.plotted_data(fig)
    for image in (0, 1):
        grid = interp.patch_grid(patches, layer=1, image=image)
        values = shown[shown.image == image].sort_values(["row", "col"])["value"].to_numpy()
        assert np.allclose(values, grid.ravel())
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["target", "distractors"]
    n_target = int(outlines["target"][0].sum() + outlines["target"][1].sum())
    n_distract = int(outlines["distractors"][0].sum() + outlines["distractors"][1].sum())
    assert sum(len(ax.patches) for ax in fig.axes) == n_target + n_distract
    # A 2-D mask belongs to the first image only.
    scene = world.sample_scene(0, world.WorldConfig(image_size=56))
    target = world.object_patch_masks(scene, (4, 4))["target"]
    fig = viz.patch_overlay(images, patches, outlines={"target": target})
    assert sum(len(ax.patches) for ax in fig.axes) == int(target.sum())
    with pytest.raises(InputError, match="images"):
        viz.patch_overlay(images[:1], patches)
    with pytest.raises(InputError, match="patch grid"):
        viz.patch_overlay(images, patches, outlines={"target": np.ones((3, 3), bool)})


def test_patch_overlay_of_head_blocks(setup):
    """Head task attention is indexed by block: the overlay selects it by block and says so."""
    _, _, images, _, cache, _ = setup
    patches = interp.head_task_patch_attention(cache)
    fig = viz.patch_overlay(images, patches, block=1)
    _check_labels(fig, colorbar=True)
    assert "head block 1" in fig._suptitle.get_text()
    shown = viz.plotted_data(fig)
    assert "block" in shown.columns and "layer" not in shown.columns and set(shown.block) == {1}
    grid = interp.patch_grid(patches, block=1, image=0)
    values = shown[shown.image == 0].sort_values(["row", "col"])["value"].to_numpy()
    np.testing.assert_allclose(values, grid.ravel())
    assert np.isnan(grid).sum() == 0 and np.isnan(interp.patch_grid(patches, block=1, image=1)).sum() == 1
    with pytest.raises(InputError, match="block"):
        viz.patch_overlay(images, patches, layer=1)


def test_patch_overlay_hatches_a_patch_never_read(setup):
    """The patch the head never reads has no value (NaN): hatched and named in the legend, not left untinted."""
    _, _, images, _, cache, _ = setup
    patches = interp.head_task_patch_attention(cache)
    fig = viz.patch_overlay(images, patches, block=1)
    grid = interp.patch_grid(patches, block=1, image=1)
    (row,), (col,) = np.nonzero(np.isnan(grid))
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.images]
    assert [p for p in axes[0].patches if p.get_hatch()] == []
    (hatched,) = [p for p in axes[1].patches if p.get_hatch()]
    height, width = images[1].shape[:2]
    cell_h, cell_w = height / grid.shape[0], width / grid.shape[1]
    assert hatched.get_xy() == (col * cell_w, row * cell_h)
    assert (hatched.get_width(), hatched.get_height()) == (cell_w, cell_h)
    assert hatched.get_facecolor()[3] > 0  # covers the image: the patch does not look like a measured value
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["never read"]
    assert fig.legends[0].legend_handles[0].get_hatch() == hatched.get_hatch()
    shown = viz.plotted_data(fig)
    assert shown[shown.image == 1]["value"].isna().sum() == 1  # the data says NaN, the sidecar null
    llm = viz.patch_overlay(images, interp.query_patch_attention(cache), layer=1)
    assert not any(p.get_hatch() for ax in llm.axes for p in ax.patches) and not llm.legends


def test_head_gates(setup):
    *_, cache, _ = setup
    head_df = interp.head_attention(cache)
    fig = viz.head_gates(head_df)
    _check_labels(fig, colorbar=False)
    shown = viz.plotted_data(fig)
    expected = head_df.groupby(["block", "key_group"])["value"].mean()
    assert np.allclose(shown.set_index(["block", "key_group"])["value"].sort_index(), expected.sort_index())
    gate_bars = [p.get_height() for p in fig.axes[0].patches]
    assert np.allclose(gate_bars, head_df.groupby("block")["gate"].first())


def test_mode_figures(setup):
    *_, comparison = setup
    fig = viz.mask_difference_heatmap(comparison)
    _check_labels(fig, colorbar=True)
    image = fig.axes[0].images[0]
    assert image.norm.vcenter == 0 and image.norm.vmin == -image.norm.vmax
    shown = viz.plotted_data(fig).set_index(["query_segment", "key_segment"])["difference"]
    expected = comparison.attention[comparison.attention["sample"] == 0].groupby(
        ["query_segment", "key_segment"])["difference"].mean()
    assert np.allclose(shown.sort_index(), expected.sort_index())
    assert shown[("vision", "action_queries")] > 0  # the bidirectional mask opens the future
    layer_fig = viz.mask_difference_heatmap(comparison, layer=0)
    assert "layer 0" in layer_fig.axes[0].get_title()

    cos = viz.hidden_cosine_curves(comparison)
    _check_labels(cos, colorbar=False)
    data = viz.plotted_data(cos)
    assert np.allclose(data[data.hidden_index == 0]["cosine"], 1.0)  # same embeddings
    assert len(cos.axes[0].lines) == data["segment"].nunique()


def test_export_writes_files_and_refuses_to_overwrite(setup, tmp_path):
    model, *_, description, cache, _ = setup
    fig = viz.segment_heatmap(cache, layer=0)
    meta = viz.provenance(model, "causal", description)
    paths = viz.export_figure(fig, "heat", tmp_path, provenance=meta)
    assert [p.name for p in paths] == ["heat.png", "heat.svg", "heat.pdf", "heat.json"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[2].read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in paths[1].read_bytes()[:1000]
    sidecar = json.loads(paths[3].read_text())
    prov = sidecar["provenance"]
    assert prov["model"] == "tiny" and prov["attention"] == "causal" and prov["input"] == description
    assert prov["vla_lab_version"] == vla_lab.__version__
    assert prov["function"] == "vla_lab.viz.segment_heatmap"
    assert prov["created_utc"].endswith("+00:00")
    pd.testing.assert_frame_equal(pd.DataFrame(sidecar["data"]), viz.plotted_data(fig), check_dtype=False)

    before = {p: p.read_bytes() for p in paths}
    other = viz.segment_heatmap(cache, layer=1)
    with pytest.raises(ExportError, match="heat.png"):
        viz.export_figure(other, "heat", tmp_path, provenance=meta)
    assert {p: p.read_bytes() for p in paths} == before
    # Only the JSON exists: still refused, and nothing else is written.
    with pytest.raises(ExportError, match="lonely.json"):
        (tmp_path / "lonely.json").write_text("{}")
        viz.export_figure(other, "lonely", tmp_path)
    assert sorted(p.name for p in tmp_path.glob("lonely*")) == ["lonely.json"]

    again = viz.export_figure(fig, "heat", tmp_path, provenance=meta, overwrite=True)
    for path in again[:3]:  # reproducible images: same figure, same bytes
        assert path.read_bytes() == before[path], path.name
    replaced = viz.export_figure(other, "heat", tmp_path, data={"x": np.arange(3)}, overwrite=True)
    assert replaced[0].read_bytes() != before[paths[0]]
    assert json.loads(replaced[3].read_text())["data"] == {"x": [0, 1, 2]}
    assert not list(tmp_path.glob(".*tmp*"))


def test_export_validates(tmp_path):
    fig = Figure()
    with pytest.raises(InputError, match="formats"):
        viz.export_figure(fig, "x", tmp_path, formats=("jpg",))
    with pytest.raises(InputError, match="name"):
        viz.export_figure(fig, "../x", tmp_path)
    paths = viz.export_figure(fig, "blank", tmp_path / "new" / "dir", data={"x": [1]}, formats=("png",))
    assert [p.name for p in paths] == ["blank.png", "blank.json"]
    assert json.loads(paths[1].read_text())["data"] == {"x": [1]}


def test_export_refuses_a_figure_without_data(tmp_path):
    """A sidecar always holds the plotted numbers: a figure not made by vla_lab.viz needs data=."""
    fig = Figure()
    fig.add_subplot().plot([0, 1], [2, 3])
    for data in (None, float("nan")):
        with pytest.raises(ExportError, match="no data"):
            viz.export_figure(fig, "bare", tmp_path, data=data)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
    paths = viz.export_figure(fig, "bare", tmp_path, data=pd.DataFrame({"x": [0, 1], "y": [2, 3]}))
    assert json.loads(paths[-1].read_text())["data"] == [{"x": 0, "y": 2}, {"x": 1, "y": 3}]


def test_sidecar_paths_are_relative_to_the_repository(setup, tmp_path):
    """No sidecar holds an absolute path: inside the repository they become repository-relative, outside it
    relative paths that leave it; another system's absolute path is refused."""
    model, *_, cache, _ = setup
    root = viz.export.REPOSITORY_ROOT
    assert (root / "vla_lab" / "viz" / "export.py").is_file()
    assert viz.sidecar_path(root / "figures" / "x.png") == "figures/x.png"
    assert viz.sidecar_path(str(root / "vla_lab")) == "vla_lab"
    assert viz.sidecar_path("figures/x.png") == "figures/x.png"
    outside = viz.sidecar_path(tmp_path / "run")
    assert not outside.startswith("/") and outside.startswith("..")
    assert (root / outside).resolve() == (tmp_path / "run").resolve()
    with pytest.raises(ExportError, match="sidecar"):
        viz.sidecar_path("C:\\Users\\me\\checkpoint")
    shipped = tabletop.load_shipped("causal")
    assert viz.provenance(shipped, None, "x")["model"] == "vla_lab/tabletop/checkpoints/tabletop-causal"
    fig = viz.segment_heatmap(cache, layer=0)
    meta = viz.provenance(model, "causal", f"images {root / 'tests' / 'data' / 'a.png'}", checkpoint=root / "ckpt",
                          out_dir=str(tmp_path), runs=[str(root / "runs" / "a")], cwd=Path.cwd())
    assert meta["input"] == "images tests/data/a.png" and meta["checkpoint"] == "ckpt"
    data = {"files": [str(root / "figures" / "a.png")], "values": [1.0]}
    sidecar = json.loads(viz.export_figure(fig, "paths", tmp_path, data=data,
                                           provenance={**meta, "raw": str(root / "figures")})[-1].read_text())
    assert sidecar["data"]["files"] == ["figures/a.png"]
    prov = sidecar["provenance"]
    assert prov["raw"] == "figures" and prov["runs"] == ["runs/a"] and prov["out_dir"] == outside[: -len("/run")]
    strings = []

    def walk(obj):
        if isinstance(obj, dict):
            obj = list(obj.values())
        if isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, str):
            strings.append(obj)

    walk(sidecar)
    assert strings and not [s for s in strings if viz.export.is_absolute_path(s) or str(root) in s]


def test_segment_map_grid_shares_one_scale_and_hatches_closed_paths(setup):
    model, inputs, *_ = setup
    frames = []
    for mask in ("causal", "bidirectional"):
        _, cache = run_with_cache(model, **inputs, attention=mask)
        df = interp.segment_mass(cache).groupby(["layer", "query_segment", "key_segment"], as_index=False)["value"]
        frames.append(df.agg(["mean", "std"]).assign(condition=mask))
    summary = pd.concat(frames, ignore_index=True)
    for log in (False, True):
        fig = viz.segment_map_grid(summary, row="condition", value="mean", spread="std", log=log, title="maps")
        _check_labels(fig, colorbar=True)
        colorbars = {id(m.colorbar) for ax in fig.axes for m in ax.images if m.colorbar is not None}
        assert len(colorbars) == 1
        shown = viz.plotted_data(fig)
        assert len(shown) == len(summary) and set(shown["condition"]) == {"causal", "bidirectional"}
    causal_panel = fig.axes[0]
    hatched = [p for p in causal_panel.patches if p.get_hatch()]
    closed = summary[(summary.condition == "causal") & (summary.layer == 0) & (summary["mean"] == 0)]
    assert len(hatched) == len(closed) > 0
    with pytest.raises(InputError, match="lacks"):
        viz.segment_map_grid(summary, row="mask")


def test_token_attention_map_draws_the_full_map_and_its_boundaries(setup):
    model, inputs, *_ = setup
    _, full = run_with_cache(model, **inputs, mode="full", attention="causal")
    fig = viz.token_attention_map(full, layer=1)
    _check_labels(fig, colorbar=True)
    layout = full.layouts[0]
    data = viz.plotted_data(fig)
    assert len(data) == layout.num_tokens ** 2
    expected = full["llm.blocks.1.attn.hook_pattern"][0].double().mean(0)[: layout.num_tokens, : layout.num_tokens]
    np.testing.assert_allclose(data["value"].to_numpy(), expected.numpy().ravel())
    upper = data[data.key_position > data.query_position]
    assert (upper["value"] == 0).all()  # causal: nothing above the diagonal
    spans = [s for n, s in layout.segments(fine=True).items() if n != "padding" and len(s)]
    assert len(fig.axes[0].lines) == 2 * (len(spans) - 1)
    with pytest.raises(InputError, match="mode='full'"):
        viz.token_attention_map(run_with_cache(model, **inputs)[1], layer=0)
