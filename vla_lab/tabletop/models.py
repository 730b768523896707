"""VLA-Adapter models for the tabletop world: the shipped architecture, its initialisation, the two shipped
models, and a built-in example observation for any model.

* :func:`tabletop_config`: the shipped architecture (preset ``"tabletop"``) with the world's statistics;
* :func:`initial_model` / :func:`init_for_training`: a model to train from scratch;
* :func:`load_shipped`: the models in ``vla_lab/tabletop/checkpoints/`` (trained with the causal and with
  the bidirectional mask; ``checkpoints/README.md`` gives the commands that reproduce them);
* :func:`example_inputs` / :func:`example_outlines`: scene 0 of the world as input of any model, with
  the target's and distractors' patches.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_lab.config import AttentionLike, VLAConfig
from vla_lab.errors import InputError
from vla_lab.model import VLAAdapter, forward_inputs, load_pretrained
from vla_lab.policy import check_world_config
from vla_lab.processing import QwenTokenizer, VLAProcessor
from vla_lab.worlds import tabletop as world

#: Dataset name of the world's statistics in ``norm_stats``.
DATASET = world.STATS_KEY
#: Number of training examples behind the shipped statistics (seeds 0 .. N-1 of the train split).
STATS_EXAMPLES = 10_000
#: The masks the shipped models were trained with.
MASKS = ("causal", "bidirectional")
INITS = ("default", "sincos")
#: Seed of the scene :func:`example_inputs` shows.
EXAMPLE_SEED = 0


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


#: ``computed_statistics(STATS_EXAMPLES)``, committed: 6 s of every process that builds a tabletop configuration
#: (``tests/test_world.py`` recomputes it; ``write_statistics()`` rewrites it).
STATISTICS_FILE = "statistics.json"


def computed_statistics(num_examples: int = STATS_EXAMPLES) -> dict[str, Any]:
    """``world.dataset_statistics`` of the first ``num_examples`` train seeds, computed now."""
    return world.dataset_statistics(num_examples, seed=world.SPLITS["train"].start)


def write_statistics() -> Path:
    """Rewrite the committed :data:`STATISTICS_FILE` from :func:`computed_statistics` (a source checkout)."""
    path = Path(__file__).with_name(STATISTICS_FILE)
    path.write_text(json.dumps(computed_statistics(), indent=1) + "\n")
    return path


@functools.lru_cache(maxsize=4)
def _statistics(num_examples: int) -> str:
    if num_examples == STATS_EXAMPLES:
        return resources.files("vla_lab.tabletop").joinpath(STATISTICS_FILE).read_text()
    return json.dumps(computed_statistics(num_examples))


def world_statistics(num_examples: int = STATS_EXAMPLES) -> dict[str, Any]:
    """``world.dataset_statistics`` of the first ``num_examples`` train seeds, key ``"tabletop"`` (cached; the
    default count read from the committed :data:`STATISTICS_FILE`)."""
    statistics: dict[str, Any] = json.loads(_statistics(num_examples))
    return statistics


def tabletop_config(attention: AttentionLike = "causal", **overrides: Any) -> VLAConfig:
    """The shipped architecture (preset ``"tabletop"``) with the world's ``norm_stats`` and ``attention``."""
    return VLAConfig.preset("tabletop", attention=attention, norm_stats=world_statistics(), **overrides)


def world_config(config: VLAConfig) -> world.WorldConfig:
    """The world as a model of ``config`` sees it: rendered at the model's image size, its chunk length."""
    return world.WorldConfig(image_size=config.vision.image_size, chunk=config.robot.chunk)


def world_processor(config: VLAConfig, tokenizer: QwenTokenizer | None = None) -> VLAProcessor:
    """The processor of ``config`` with the world tokenizer."""
    return VLAProcessor.for_config(config, tokenizer=tokenizer or world.build_world_tokenizer())


def check_config(config: VLAConfig) -> None:
    """Raise InputError unless ``config`` can act in the world (:func:`vla_lab.policy.check_world_config`)
    with the world's statistics."""
    check_world_config(config, world.TabletopWorld.name)
    if not config.norm_stats:
        raise InputError("norm_stats: the model needs dataset statistics (see world_statistics())")


def stats_key(config: VLAConfig) -> str:
    """The dataset whose statistics a world model uses (:func:`vla_lab.worlds.tabletop.statistics_key`)."""
    key = world.statistics_key(config.norm_stats or {})
    if key is None:
        raise InputError("norm_stats: the model needs dataset statistics (see world_statistics())")
    return key


# ---------------------------------------------------------------------------------------------
# Building and initialising
# ---------------------------------------------------------------------------------------------


def sincos_position_embedding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """MAE-style fixed 2-D sine-cosine embedding, (rows * cols, dim): half the channels per axis."""
    if dim % 4:
        raise InputError(f"sincos position embedding: got width {dim}, expected a multiple of 4")
    rows, cols = grid
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )
    parts = []
    for coord in (x.reshape(-1), y.reshape(-1)):
        angle = coord[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


@torch.no_grad()
def init_for_training(model: VLAAdapter, init: str = "sincos", gate: float = 0.0) -> VLAAdapter:
    """Training-from-scratch initialisation on top of the modules' own.

    ``sincos`` sets each ViT's patch position embeddings to a 2-D sine-cosine table (MAE), so that
    patch tokens carry their image position from the first step (timm's default is N(0, 0.02) noise,
    far below the patch features). ``gate`` sets every bridge block's ``gating_factor`` (0 upstream).
    """
    if init not in INITS:
        raise InputError(f"init: got {init!r}, expected one of {INITS}")
    if init == "sincos":
        for vit in (model.vision_backbone.featurizer, model.vision_backbone.fused_featurizer):
            pos_embed = getattr(vit, "pos_embed", None) if vit is not None else None
            if vit is None or pos_embed is None:
                continue
            table = sincos_position_embedding(tuple(vit.patch_embed.grid_size), pos_embed.shape[-1])
            prefix = pos_embed.shape[1] - table.shape[0]  # class/register positions, if embedded
            pos_embed[0, prefix:] = table.to(pos_embed.dtype)
    for block in model.action_head.model.blocks:
        block.gating_factor.fill_(gate)
    return model


def initial_model(
    config: VLAConfig,
    seed: int = 0,
    tokenizer: QwenTokenizer | None = None,
    init: str = "default",
    gate: float = 0.0,
) -> VLAAdapter:
    """A training run's initial model: the modules' own initialisation under ``torch.manual_seed(seed)``, then
    :func:`init_for_training`, carrying the world processor (what ``random-init:NAME`` reloads).

    ``init`` / ``gate``: see :func:`init_for_training` (``default`` keeps the modules' own initialisation).
    """
    check_config(config)
    torch.manual_seed(seed)
    model = VLAAdapter(config)
    model.processor = world_processor(config, tokenizer)
    return init_for_training(model, init, gate)


# ---------------------------------------------------------------------------------------------
# The shipped models
# ---------------------------------------------------------------------------------------------


#: Recipes of shipped models besides the documented one: the directory suffix says what differs (a
#: training setting, or the architecture: the v1 head, the linear projector).
RECIPES = ("shipped", "no-target-aux", "v1-head", "linear-projector")


def shipped_name(trained_with: str = "causal", seed: int = 0, recipe: str = "shipped") -> str:
    """``tabletop-<mask>`` (seed 0 of the documented recipe), ``tabletop-<mask>-seed<N>`` (another seed),
    ``tabletop-<mask>-no-target-aux`` (the recipe without the target-position loss) or
    ``tabletop-<mask>-v1-head`` / ``tabletop-<mask>-linear-projector`` (the recipe on that architecture),
    with ``-seed<N>`` after the recipe for seeds other than 0."""
    if trained_with not in MASKS:
        raise InputError(f"trained_with: got {trained_with!r}, expected one of {MASKS}")
    if recipe not in RECIPES:
        raise InputError(f"recipe: got {recipe!r}, expected one of {RECIPES}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed: got {seed!r}, expected a non-negative integer")
    name = f"tabletop-{trained_with}"
    if recipe != "shipped":
        name += f"-{recipe}"
    return name + (f"-seed{seed}" if seed else "")


def shipped_path(trained_with: str = "causal", seed: int = 0, recipe: str = "shipped") -> Path:
    """Directory of the shipped model trained with the ``causal`` or the ``bidirectional`` mask (training
    ``seed``, ``recipe``; see :func:`shipped_name`)."""
    name = shipped_name(trained_with, seed, recipe)
    return Path(str(resources.files("vla_lab.tabletop") / "checkpoints" / name))


def load_shipped(
    trained_with: str = "causal",
    *,
    seed: int = 0,
    recipe: str = "shipped",
    attention: AttentionLike | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> VLAAdapter:
    """Load the shipped model trained with ``trained_with`` (training ``seed``, ``recipe``: see
    :func:`shipped_name`); ``attention`` overrides its LLM mask, as in :func:`vla_lab.load_pretrained`
    (which gets the other ``kwargs``)."""
    path = shipped_path(trained_with, seed, recipe)
    if not (path / "config.json").exists():
        available = sorted(p.name for p in path.parent.iterdir() if (p / "config.json").exists())
        raise InputError(f"shipped model: got {path.name}, expected one of {available}")
    return load_pretrained(path, attention=attention, dtype=dtype, device=device, **kwargs)


# ---------------------------------------------------------------------------------------------
# A built-in example for any model
# ---------------------------------------------------------------------------------------------


def _example_scene(model: VLAAdapter) -> world.Scene:
    return world.sample_scene(EXAMPLE_SEED, world_config(model.config))


def _match_views(views: list[Any], count: int) -> list[Any]:
    """Drop views past ``count``, or repeat the last one up to it."""
    views = list(views)[:count]
    return views + [views[-1]] * (count - len(views))


def example_inputs(model: VLAAdapter) -> tuple[dict[str, Any], list[np.ndarray], str]:
    """A built-in observation for any model: scene 0 of the tabletop world at the model's image size.

    Returns (forward keyword arguments, the uint8 images, a one-line description). The third-person
    and wrist views are dropped or repeated to ``config.num_images``; the raw 8-d proprio is padded or
    cut to the robot's ``proprio_dim`` (normalised with the model's statistics when it has them).
    """
    scene = _example_scene(model)
    obs = world.render(scene)
    count = model.config.num_images
    images = _match_views(obs.images, count)
    proprio = None
    if model.config.use_proprio:
        dim = model.config.robot.proprio_dim
        proprio = np.zeros(dim, dtype=np.float64)
        proprio[: min(dim, obs.proprio.size)] = obs.proprio[:dim]
    inputs = model.prepare_inputs(images, obs.instruction, proprio, proprio_is_normalized=not model.config.norm_stats)
    size = images[0].shape[0]
    views = ", ".join(_match_views(["third-person", "wrist"], count))
    description = (
        f"tabletop world scene {EXAMPLE_SEED} ({scene.kind}): {obs.instruction!r}, {count} image(s) {size}x{size} "
        f"({views}), gripper start proprio"
    )
    return forward_inputs(inputs), images, description


def example_outlines(model: VLAAdapter) -> dict[str, list[np.ndarray]]:
    """Target / distractor patch masks of :func:`example_inputs`' images, one per image (for overlays)."""
    scene = _example_scene(model)
    grid = model.vision_backbone.patch_grid
    views = _match_views(list(world.VIEWS), model.config.num_images)
    per_view = [world.object_patch_masks(scene, grid, view=v) for v in views]
    return {name: [m[name] for m in per_view] for name in ("target", "distractors")}
