"""``vla-lab demo``: the shipped models, evaluated closed loop, and their attention figures for both masks.

For each shipped model (trained with the causal and with the bidirectional LLM mask):

1. closed-loop success and action L1 on held-out ``test`` scenes of the tabletop world;
2. the target-attention ratio (:mod:`vla_lab.tabletop.target_attention`): action queries -> target patches vs
   distractor patches in the LLM, at the layer chosen on the ``validation`` split, and the same for the
   bridge head's task attention; the same rule applied to the model's own initial weights (its training run's
   seed and initialisation, ``random-init:tabletop-<mask>`` of :mod:`vla_lab.registry`) is the baseline;
3. the standard attention figures (:func:`vla_lab.viz.attention_report`) of one scene under both
   masks (an inference-time swap on the model's own weights), plus an action-query -> target overlay at
   the selected layer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from vla_lab import files, interp, registry, tabletop, viz
from vla_lab.model import VLAAdapter
from vla_lab.run_dir import RunDir
from vla_lab.tabletop import MASKS, example_inputs, example_outlines, load_shipped, target_attention

DEFAULT_OUT = "vla_lab_demo"
DEMO_KIND, DEMO_FILE = "demo", "demo.json"


def _model_metrics(model: VLAAdapter, episodes: int, ratio_episodes: int, closed_loop: bool = True) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if closed_loop:
        result = tabletop.evaluate_model(model, "test", episodes, progress=False)
        metrics.update(
            success_rate=result["success_rate"],
            success_ci95=result["success_ci95"],
            action_l1=result["action_l1"],
            num_episodes=result["num_episodes"],
            outcomes=result["outcomes"],
            success_by_kind={k: v["success_rate"] for k, v in result["by_kind"].items()},
            by_kind=result["by_kind"],
        )
    llm = target_attention.target_attention_ratio(model, "test", ratio_episodes, source="llm")
    head = target_attention.target_attention_ratio(model, "test", ratio_episodes, source="head")
    metrics["target_attention_ratio"] = llm["value"]
    metrics["target_attention_ratio_ci95"] = llm["ci95"]
    metrics["target_attention"] = {"llm_action_queries": llm, "head_task_attention": head}
    return metrics


def _overlay(model: VLAAdapter, layer: int, directory: Path, formats: tuple[str, ...]) -> list[Path]:
    forward, images, description = example_inputs(model)
    with interp.capture(model, "segments", hidden_states=False, head=False) as cache, torch.no_grad():
        model(**forward)
    patches = interp.query_patch_attention(cache, "action_queries", layers=[layer])
    fig = viz.patch_overlay(
        images, patches, layer=layer, outlines=example_outlines(model), image_names=["third-person", "wrist"],
        title=f"{model.config.attention}: action queries → target, LLM layer {layer} (selected on validation; "
              "head mean)",
    )
    meta = viz.provenance(model, model.config.attention, description, layer_rule="validation argmax")
    return viz.export_figure(fig, "action_query_target_overlay", directory, provenance=meta, formats=formats,
                                 overwrite=True)


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    episodes: int = 200,
    ratio_episodes: int | None = None,
    overwrite: bool = False,
    formats: tuple[str, ...] = ("png", "svg", "pdf"),
    baseline: bool = True,
) -> dict[str, Any]:
    """Evaluate both shipped models, write the figures under ``out_dir``, return the JSON-able summary.

    ``out_dir`` must be empty or absent unless ``overwrite`` (which replaces an earlier demo, and nothing else:
    :func:`demo_run_dir`).
    """
    start = time.perf_counter()
    root = Path(out_dir)
    run = demo_run_dir(root)
    run.claim(None, overwrite=overwrite)
    with run.guard():  # a demo that fails before its first figure leaves nothing behind
        return _run_demo(root, start, episodes, ratio_episodes, formats, baseline)


def demo_run_dir(out_dir: str | Path) -> RunDir:
    """The directory of ``demo`` (not resumable): ``demo.json`` and one ``tabletop-<mask>/`` per model."""
    written = (DEMO_FILE, *(f"tabletop-{mask}" for mask in MASKS))
    return RunDir(out_dir, DEMO_KIND, markers=written, records=written, resumable=False)


def _run_demo(root: Path, start: float, episodes: int, ratio_episodes: int | None, formats: tuple[str, ...],
              baseline: bool) -> dict[str, Any]:
    ratio_episodes = episodes if ratio_episodes is None else ratio_episodes
    summary: dict[str, Any] = {
        "models": {}, "random_baseline": {}, "split": "test", "episodes": episodes, "out_dir": str(root),
        "target_attention_ratio_definition": (
            "mean attention per target patch / mean attention per distractor-object patch (both images, "
            "means over scenes), from the action queries in the LLM averaged over queries and heads, at the "
            "layer with the highest ratio on 50 validation scenes (vla_lab.interp.target_attention); ci95: "
            "percentile bootstrap over the test scenes"
        ),
    }
    for mask in MASKS:
        model = load_shipped(mask)
        metrics = _model_metrics(model, episodes, ratio_episodes)
        directory = root / f"tabletop-{mask}"
        forward, images, description = example_inputs(model)
        report = viz.attention_report(
            model, forward, images, masks=("causal", "bidirectional"), out_dir=directory, description=description,
            overwrite=True, outlines=example_outlines(model), formats=formats,
        )
        written = [f for m in report["masks"].values() for f in m["files"]] + report["comparison"]["files"]
        written += [str(p) for p in _overlay(model, metrics["target_attention"]["llm_action_queries"]["depth"],
                                            directory, formats)]
        metrics["figures"] = sorted(written)
        metrics["inference_swap_action_l1"] = report["comparison"]["action_l1"]
        summary["models"][mask] = metrics
        if baseline:
            random_model = registry.create(f"{registry.RANDOM_PREFIX}tabletop-{mask}")
            summary["random_baseline"][mask] = _model_metrics(random_model, episodes, ratio_episodes, closed_loop=False)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary = viz.to_jsonable(summary)
    files.write_json(root / DEMO_FILE, summary)
    return summary
