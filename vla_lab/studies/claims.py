"""The original design note's claims (SPEC §7), each measured on vla_lab's implementation of the released code.

:func:`check_seed_note_claims` builds the released architecture on the ``meta`` device (shapes only, no
weights) and runs the ``tiny`` preset (same topology, random weights) once, then returns one row per
claim: what the note says, what was measured, and a verdict (``holds`` | ``wrong``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from vla_lab import interp
from vla_lab.config import ROBOT_PRESETS, RobotConfig, VLAConfig
from vla_lab.model import VLAAdapter, VLAOutput, meta_model, random_model
from vla_lab.model.projector import FusedGeluMLPProjector
from vla_lab.tabletop import example_inputs

RELEASED_PRESET = "vla-adapter-pro-qwen2.5-0.5b"
COLUMNS = ["claim", "note_says", "measured", "verdict"]


def _family(model_id: str) -> str:
    for key, name in (("dinov2", "DINOv2"), ("siglip", "SigLIP"), ("clip", "CLIP")):
        if key in model_id:
            return name
    return model_id


def _tiny_forward(robot: str = "libero", seed: int = 0) -> tuple[VLAAdapter, VLAOutput, interp.ActivationCache]:
    config = VLAConfig.preset("tiny").replace(robot=RobotConfig.preset(robot))
    model = random_model(config, seed=seed).eval()
    forward, _, _ = example_inputs(model)
    with interp.capture(model, "segments") as cache, torch.no_grad():
        out = model(**forward)
    return model, out, cache


def check_seed_note_claims(seed: int = 0) -> pd.DataFrame:
    """One row per claim of SPEC §7: ``claim``, ``note_says``, ``measured``, ``verdict``."""
    released = VLAConfig.preset(RELEASED_PRESET)
    meta = meta_model(released)
    vision = meta.vision_backbone
    model, out, cache = _tiny_forward(seed=seed)
    rows: list[dict[str, str]] = []

    def add(claim: str, note: str, measured: str, holds: bool) -> None:
        rows.append({"claim": claim, "note_says": note, "measured": measured, "verdict": "holds" if holds else "wrong"})

    # 1. The LLM mask. Measured on the default mask of the released preset, run on the tiny model.
    segments = interp.segment_mass(cache)
    see_queries = segments[segments["key_segment"].eq("action_queries")
                           & segments["query_segment"].isin(["vision", "text"])]["value"].max()
    verdict = interp.mask_audit(cache).verdict
    add("LLM attention",
        "bidirectional; vision and text tokens see the action queries",
        f"default mask {released.attention!r}; mask audit of a forward pass: {verdict}; largest attention mass "
        f"of vision/text tokens on the action queries: {see_queries:.3g}",
        released.attention == "bidirectional" and see_queries > 0)

    # 2. Which ViT is which.
    first, second = (_family(i) for i in vision.config.timm_model_ids)
    add("backbone order", "featurizer = SigLIP, fused_featurizer = DINOv2",
        f"featurizer = {first} ({vision.config.timm_model_ids[0]}), fused_featurizer = {second} "
        f"({vision.config.timm_model_ids[1]}); features concatenated {first} first",
        first == "SigLIP" and second == "DINOv2")

    # 3. Token count and widths.
    fused = vision.fused_featurizer
    if fused is None:
        raise RuntimeError(f"{RELEASED_PRESET}: expected a fused vision backbone")
    prefix = int(vision.featurizer.num_prefix_tokens)
    dims = (int(vision.featurizer.embed_dim), int(fused.embed_dim))
    add("patch tokens and widths", "257 tokens per image incl. CLS; dims 1024 + 768; llm_dim 4096",
        f"{vision.patches_per_image} tokens per image ({prefix} prefix tokens dropped); dims {dims[0]} + {dims[1]} "
        f"= {vision.embed_dim}; llm_dim {released.llm_dim}",
        vision.patches_per_image == 257 and dims == (1024, 768) and released.llm_dim == 4096)

    # 4. The projector's inner width (a claim the note gets right).
    projector = meta.projector
    if not isinstance(projector, FusedGeluMLPProjector):
        raise RuntimeError(f"{RELEASED_PRESET}: expected the fused-gelu-mlp projector, got {type(projector).__name__}")
    fc1 = projector.fc1
    add("fused projector width", "fc1 widens to 4 × the fused vision dim, then GELU MLP to llm_dim",
        f"fc1 {fc1.in_features} → {fc1.out_features} (= {fc1.out_features / fc1.in_features:g} ×), "
        f"fc2 → {projector.fc2.out_features}, fc3 → {projector.fc3.out_features}",
        fc1.out_features == 4 * fc1.in_features)

    # 5. Action shape, measured by forward passes of the tiny model under each robot preset.
    shapes = {"libero": tuple(out.normalized_actions.shape[1:])}
    for robot in ROBOT_PRESETS:
        if robot not in shapes:
            shapes[robot] = tuple(_tiny_forward(robot, seed)[1].normalized_actions.shape[1:])
    add("action output", "(30, 16)",
        "; ".join(f"{k}: {v}" for k, v in shapes.items()), all(v == (30, 16) for v in shapes.values()))

    # 6. What the head reads: compare its inputs with the LLM's hidden states.
    layout = out.layouts[0]
    vision_positions = np.arange(layout.vision[0].start, layout.vision[-1].stop)
    queries = np.arange(layout.action_queries.start, layout.action_queries.stop)
    task_pos = _matching_positions(out.hidden_states, out.task_states)
    query_pos = _matching_positions(out.hidden_states, out.query_states)
    aligned = task_pos == vision_positions.tolist() and query_pos == queries.tolist()
    add("head inputs", f"the {len(vision_positions)} vision patches and the {len(queries)} action queries",
        f"task states = positions {_span(task_pos)} (patches are {_span(vision_positions.tolist())}); query states = "
        f"positions {_span(query_pos)} (queries are {_span(queries.tolist())}); config.hidden_offset = "
        f"{model.config.hidden_offset!r}",
        aligned)
    return pd.DataFrame(rows, columns=COLUMNS)


def _span(positions: list[int]) -> str:
    return f"{positions[0]}..{positions[-1]}" if positions else "none"


def _matching_positions(hidden_states: tuple[torch.Tensor, ...], read: torch.Tensor) -> list[int]:
    """Sequence position of each token the head read, found by comparing with the final layer's states."""
    final = hidden_states[-1][0]  # (S, C)
    states = read[0, -1]  # (K, C)
    distance = torch.cdist(states.float(), final.float())
    return distance.argmin(dim=1).tolist()
