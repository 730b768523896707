"""Glue between the synthetic tabletop world (:mod:`vla_lab.world`) and VLA-Adapter models.

* :func:`build_world_tokenizer`: a tiny deterministic byte-level BPE in Qwen2's file layout whose every
  instruction word (and every word of the released prompt) is a single token.
* :func:`tabletop_config`: the shipped architecture (preset ``"tabletop"``) with the world's statistics.
* :class:`TabletopData`: world examples held in memory, turned into model batches.
* :func:`policy_for`, :func:`evaluate_model`: closed-loop evaluation with ``world.rollout`` semantics.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_lab import world
from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.image_processing import ImageProcessor
from vla_lab.model import VLAAdapter
from vla_lab.normalization import normalize_actions, normalize_proprio
from vla_lab.processing import PROMPT_TEMPLATE, VLAProcessor, build_prompt
from vla_lab.tokenizer import QwenTokenizer, bytes_to_unicode, load_tokenizer_from_files

#: Dataset name of the world's statistics in ``norm_stats``.
DATASET = "tabletop"
EOS_TOKEN = "<|endoftext|>"
#: Number of training examples behind the shipped statistics (seeds 0 .. N-1 of the train split).
STATS_EXAMPLES = 10_000

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def _tokenizer_corpus() -> list[str]:
    words = list(world.VOCABULARY)
    prompt = build_prompt(" ".join(words))
    # Bare words too, so that a word is one token with or without its leading space.
    return [prompt, *words, " ".join(words)]


def _train_bpe() -> tuple[list[str], list[tuple[str, str]]]:
    """Merges learnt by ``tokenizers``' BpeTrainer with Qwen2's normaliser and pre-tokeniser."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    from vla_lab.tokenizer import QWEN2_PRETOKENIZE_PATTERN

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # A vocabulary budget far above what the corpus can use: merging runs until every word is one token.
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return list(bytes_to_unicode().values()), merges  # type: ignore[return-value]


def write_world_tokenizer_files(directory: str | Path) -> Path:
    """Write the world tokenizer's vocab.json, merges.txt and tokenizer_config.json into ``directory``.

    Ids 0-255 are the byte tokens in GPT-2's byte-to-unicode order (as in Qwen's vocabulary, so id 2
    is ``#``), then one id per merge in merge order, then ``<|endoftext|>`` (eos and pad).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet, merges = _train_bpe()
    vocab = {token: i for i, token in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    eos_id = len(vocab)
    config = {
        "add_bos_token": False,
        "added_tokens_decoder": {
            str(eos_id): {
                "content": EOS_TOKEN,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "model_max_length": 4096,
        "tokenizer_class": "Qwen2Tokenizer",
    }
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def build_world_tokenizer() -> QwenTokenizer:
    """The world's tokenizer, read back through :func:`load_tokenizer_from_files` (as checkpoints load it)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer_from_files(write_world_tokenizer_files(tmp))
    tokenizer.name_or_path = "vla_lab.tabletop world tokenizer"
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Model configuration
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _statistics(num_examples: int) -> str:
    return json.dumps(world.dataset_statistics(num_examples, seed=world.SPLITS["train"].start))


def world_statistics(num_examples: int = STATS_EXAMPLES) -> dict[str, Any]:
    """``world.dataset_statistics`` of the first ``num_examples`` train seeds (cached), key ``"tabletop"``."""
    return json.loads(_statistics(num_examples))


def tabletop_config(attention: str | dict = "causal", **overrides: Any) -> VLAConfig:
    """The shipped architecture (preset ``"tabletop"``) with the world's ``norm_stats`` and ``attention``."""
    return VLAConfig.preset("tabletop", attention=attention, norm_stats=world_statistics(), **overrides)


def world_processor(config: VLAConfig, tokenizer: QwenTokenizer | None = None) -> VLAProcessor:
    """The processor of ``config`` with the world tokenizer."""
    return VLAProcessor.for_config(config, tokenizer=tokenizer or build_world_tokenizer())


INITS = ("default", "sincos")


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
def initialize(model: VLAAdapter, init: str = "sincos", gate: float = 0.0) -> VLAAdapter:
    """Training-from-scratch initialisation on top of the modules' own.

    ``sincos`` sets each ViT's patch position embeddings to a 2-D sine-cosine table (MAE), so that
    patch tokens carry their image position from the first step (timm's default is N(0, 0.02) noise,
    far below the patch features). ``gate`` sets every bridge block's ``gating_factor`` (0 upstream).
    """
    if init not in INITS:
        raise InputError(f"init: got {init!r}, expected one of {INITS}")
    if init == "sincos":
        for vit in (model.vision_backbone.featurizer, model.vision_backbone.fused_featurizer):
            if vit is None or getattr(vit, "pos_embed", None) is None:
                continue
            grid = tuple(vit.patch_embed.grid_size)
            table = sincos_position_embedding(grid, vit.pos_embed.shape[-1])
            prefix = vit.pos_embed.shape[1] - table.shape[0]  # class/register positions, if embedded
            vit.pos_embed[0, prefix:] = table.to(vit.pos_embed.dtype)
    for block in model.action_head.model.mlp_resnet_blocks:
        block.gating_factor.fill_(gate)
    return model


def build_model(
    config: VLAConfig,
    seed: int = 0,
    tokenizer: QwenTokenizer | None = None,
    init: str = "default",
    gate: float = 0.0,
) -> VLAAdapter:
    """A randomly initialised model (``torch.manual_seed(seed)``) carrying the world processor.

    ``init`` / ``gate``: see :func:`initialize` (``default`` keeps the modules' own initialisation).
    """
    check_config(config)
    torch.manual_seed(seed)
    model = VLAAdapter(config)
    model.processor = world_processor(config, tokenizer)
    return initialize(model, init, gate)


def check_config(config: VLAConfig) -> None:
    """Raise InputError unless ``config`` can act in the world (7-d actions, 8-d proprio, 1-2 images)."""
    if config.robot.action_dim != 7:
        raise InputError(f"robot.action_dim: got {config.robot.action_dim}, the world takes 7-d actions")
    if config.use_proprio and config.robot.proprio_dim != 8:
        raise InputError(f"robot.proprio_dim: got {config.robot.proprio_dim}, the world gives 8-d proprio")
    if config.num_images not in (1, 2):
        raise InputError(f"num_images: got {config.num_images}, the world renders 2 views (full, wrist)")
    if not config.norm_stats:
        raise InputError("norm_stats: the model needs dataset statistics (see world_statistics())")


def _stats_key(config: VLAConfig) -> str:
    return DATASET if DATASET in (config.norm_stats or {}) else next(iter(config.norm_stats or {}))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _fast_pixels(image_processor: ImageProcessor, image_size: int) -> bool:
    """Whether images of ``image_size`` pass the processor unresized (then pixels are computed in bulk)."""
    cfg = image_processor.config
    return cfg.image_size == image_size and cfg.resize_strategy in ("resize-naive", "resize-crop")


def pixel_values(images: np.ndarray, image_processor: ImageProcessor) -> torch.Tensor:
    """uint8 (B, N, H, W, 3) -> float32 (B, N * 3 * featurizers, H, W), equal to the ``ImageProcessor``'s.

    Square images at the processor's size take a vectorised path (PIL's resize to the same size is the
    identity); anything else goes through the processor image by image.
    """
    batch, n, height, width, _ = images.shape
    if height != width or not _fast_pixels(image_processor, height):
        observations = [[images[b, i] for i in range(n)] for b in range(batch)]
        return image_processor(observations)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 1, 4, 2, 3).float().div(255)
    parts = []
    for mean, std in zip(image_processor.config.means, image_processor.config.stds):
        m = torch.tensor(mean, dtype=torch.float32)[None, None, :, None, None]
        s = torch.tensor(std, dtype=torch.float32)[None, None, :, None, None]
        parts.append((x - m) / s)
    # Per image: the featurizers' 3-channel results, then the next image.
    return torch.cat(parts, dim=2).reshape(batch, -1, height, width)


#: A patch shows an object when at least this many of its pixels do (in :func:`patch_labels`).
MIN_LABEL_PIXELS = 6


def _patch_grid(config: VLAConfig) -> tuple[int, int]:
    from vla_lab.model import build_on_meta

    return tuple(build_on_meta(config).vision_backbone.patch_grid)


def patch_labels(
    scene: world.Scene, state: world.State, grid: tuple[int, int], num_images: int = 2
) -> np.ndarray:
    """What each patch shows: (num_images * rows * cols, 2) int64 colour and shape classes.

    Class 0 is "no object"; otherwise 1 + the index in ``world.COLORS`` / ``world.SHAPES`` of the object
    covering most of the patch's pixels (at least :data:`MIN_LABEL_PIXELS`). Views in model order
    (third-person, wrist), patches row-major, as the projector emits them.
    """
    colors, shapes = list(world.COLORS), list(world.SHAPES)
    color_ids = np.array([colors.index(o.color) + 1 for o in scene.objects])
    shape_ids = np.array([shapes.index(o.shape) + 1 for o in scene.objects])
    rows, cols = grid
    out = []
    for view in ("full", "wrist")[:num_images]:
        pixels = world.object_pixel_masks(scene, view, state)
        size = pixels.shape[1]
        cover = pixels.reshape(len(pixels), rows, size // rows, cols, size // cols).sum(axis=(2, 4))
        best = cover.argmax(axis=0)
        shown = cover.max(axis=0) >= MIN_LABEL_PIXELS
        classes = [np.where(shown, color_ids[best], 0), np.where(shown, shape_ids[best], 0)]
        out.append(np.stack(classes, -1).reshape(-1, 2))
    return np.concatenate(out).astype(np.int64)


def relabeled_scenes(scene: world.Scene, rng: np.random.Generator) -> list[world.Scene]:
    """The scene once per other object, that object the target, named by colour and shape.

    Every scene holds distinct colour/shape pairs, so "the C S" picks one object; in a disambiguation
    scene naming a distractor gives another disambiguation instruction. Objects, texture and images are
    those of ``scene``; only the instruction and the target change.
    """
    out = []
    for index, obj in enumerate(scene.objects):
        if index == scene.target:
            continue
        instruction = f"{world.VERBS[int(rng.integers(len(world.VERBS)))]} the {obj.name}"
        if world.resolve_instruction(scene.objects, instruction) != index:  # pragma: no cover - by construction
            continue
        out.append(dataclasses.replace(scene, target=index, instruction=instruction, anchor=None))
    return out


@dataclass
class TabletopData:
    """World examples in memory (uint8 images, token ids, normalised proprio and actions) -> batches.

    Build with :meth:`generate`. ``batch(indices)`` returns ``pixel_values`` (B, C, H, W) float32,
    right-padded ``input_ids`` / ``attention_mask`` (B, L) int64, ``proprio`` (B, 8) float32 in [-1, 1]
    and ``actions`` (B, chunk, 7) float32 normalised to [-1, 1] (the gripper passes through as +-1).
    ``images`` holds each rendered observation once; ``image_index`` maps examples to them.
    """

    images: np.ndarray
    image_index: np.ndarray
    token_ids: list[list[int]]
    proprio: np.ndarray
    actions: np.ndarray
    kinds: list[str]
    seeds: list[int]
    image_processor: ImageProcessor
    pad_token_id: int
    patch_labels: np.ndarray | None = None
    targets: np.ndarray | None = None

    @classmethod
    def generate(
        cls,
        config: VLAConfig,
        seeds: Sequence[int],
        tokenizer: QwenTokenizer | None = None,
        progress: bool = False,
        relabel: bool = False,
        labels: bool = False,
    ) -> TabletopData:
        """``world.sample_training_example`` of every seed, prepared for ``config``.

        With ``relabel`` every example also appears once per other object of its scene, the same
        observation with that object named as the target and the expert chunk towards it
        (:func:`relabeled_scenes`); such examples have kind ``"<scene kind>/relabel"``. With ``labels``
        the ground truth of the auxiliary losses is kept too: :func:`patch_labels` per observation and
        the target's table position per example.
        """
        check_config(config)
        tokenizer = tokenizer or build_world_tokenizer()
        processor = world_processor(config, tokenizer)
        stats = config.norm_stats[_stats_key(config)]
        normalization = config.robot.normalization
        world_config = world.WorldConfig(chunk=config.robot.chunk)
        seeds = [int(s) for s in seeds]
        iterator: Any = seeds
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(seeds, desc="examples", unit="ex", leave=False)
        images, image_index, proprio, actions, kinds, example_seeds = [], [], [], [], [], []
        grid = _patch_grid(config)
        observation_labels: list[np.ndarray] = []
        targets: list[tuple[float, float]] = []
        token_ids: list[list[int]] = []
        prompts: dict[str, list[int]] = {}

        def add(instruction: str, chunk: np.ndarray, kind: str, seed: int, state: np.ndarray,
                target: world.SceneObject) -> None:
            if instruction not in prompts:
                prompts[instruction] = tokenizer.encode(build_prompt(instruction))
            token_ids.append(prompts[instruction])
            image_index.append(len(images) - 1)
            proprio.append(state)
            actions.append(chunk)
            kinds.append(kind)
            example_seeds.append(seed)
            targets.append((target.x, target.y))

        for seed in iterator:
            ex = world.sample_training_example(seed, world_config)
            images.append(np.stack(ex.images[: config.num_images]))
            if labels:
                observation_labels.append(patch_labels(ex.scene, ex.state, grid, config.num_images))
            add(ex.instruction, ex.actions, ex.scene.kind, seed, ex.proprio, ex.scene.target_object)
            if relabel:
                rng = np.random.default_rng((seed, 2))
                for scene in relabeled_scenes(ex.scene, rng):
                    chunk = world.expert_chunk(scene, ex.state, config.robot.chunk)
                    add(scene.instruction, chunk, f"{ex.scene.kind}/relabel", seed, ex.proprio, scene.target_object)
        return cls(
            images=np.stack(images),
            image_index=np.asarray(image_index, dtype=np.int64),
            token_ids=token_ids,
            proprio=normalize_proprio(np.stack(proprio), stats["proprio"], normalization).astype(np.float32),
            actions=normalize_actions(np.stack(actions), stats["action"], normalization).astype(np.float32),
            kinds=kinds,
            seeds=example_seeds,
            image_processor=processor.image_processor,
            pad_token_id=int(tokenizer.pad_token_id or 0),
            patch_labels=np.stack(observation_labels) if labels else None,
            targets=np.asarray(targets, dtype=np.float32) if labels else None,
        )

    def __len__(self) -> int:
        return len(self.seeds)

    def batch(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor, labels: bool = False
    ) -> dict[str, torch.Tensor]:
        """Model inputs and ``actions`` of the examples at ``indices``; with ``labels`` also
        ``patch_labels`` (B, patches, 2) and ``targets`` (B, 2) (data generated with ``labels=True``)."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        rows = [self.token_ids[i] for i in idx]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        out = {
            "pixel_values": pixel_values(self.images[self.image_index[idx]], self.image_processor),
            "input_ids": ids,
            "attention_mask": mask,
            "proprio": torch.from_numpy(self.proprio[idx]),
            "actions": torch.from_numpy(self.actions[idx]),
        }
        if labels:
            if self.patch_labels is None or self.targets is None:
                raise InputError("labels: this data was generated without labels; expected generate(labels=True)")
            out["patch_labels"] = torch.from_numpy(self.patch_labels[self.image_index[idx]])
            out["targets"] = torch.from_numpy(self.targets[idx])
        return out


# ---------------------------------------------------------------------------------------------
# Policies and evaluation
# ---------------------------------------------------------------------------------------------


def _predict(model: VLAAdapter, observations: Sequence[world.Observation]) -> tuple[np.ndarray, np.ndarray]:
    """Un-normalised and normalised chunks (B, chunk, 7) for a batch of observations."""
    n = model.config.num_images
    proprio = np.stack([o.state for o in observations]) if model.config.use_proprio else None
    pred = model.predict_action(
        [o.images[:n] for o in observations],
        [o.instruction for o in observations],
        proprio,
        unnorm_key=_stats_key(model.config),
    )
    return np.asarray(pred.actions), pred.normalized_actions


def scene_inputs(
    model: VLAAdapter, split: str = "test", n: int = 32, start: int = 0
) -> tuple[dict[str, torch.Tensor], list[world.Scene], list[world.Observation]]:
    """Forward keyword arguments for the start observations of ``n`` scenes of ``split`` (one batch).

    Returns (``pixel_values`` / ``input_ids`` / ``attention_mask`` / ``proprio``, the scenes, their
    observations); the proprio is the raw state, normalised with the model's statistics.
    """
    check_config(model.config)
    config = world.WorldConfig(image_size=model.config.vision.image_size, chunk=model.config.robot.chunk)
    scenes = [world.sample_scene(s, config) for s in world.split_seeds(split, n, start)]
    observations = [world.render(scene) for scene in scenes]
    count = model.config.num_images
    inputs = model.prepare_inputs(
        [o.images[:count] for o in observations],
        [o.instruction for o in observations],
        np.stack([o.state for o in observations]) if model.config.use_proprio else None,
    )
    forward = {k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask", "proprio") if k in inputs}
    return forward, scenes, observations


def policy_for(model: VLAAdapter) -> Callable[[world.Observation], np.ndarray]:
    """A ``world.rollout`` policy: observation -> un-normalised ``(chunk, 7)`` actions (raw proprio in)."""
    check_config(model.config)

    def policy(observation: world.Observation) -> np.ndarray:
        return _predict(model, [observation])[0][0]

    return policy


def evaluate_model(
    model: VLAAdapter,
    split: str = "test",
    n: int = 200,
    progress: bool = True,
    *,
    start: int = 0,
    execute: int = 8,
    batch_size: int = 64,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Closed-loop success of ``model`` on ``n`` scenes of ``split`` (``world.rollout`` semantics).

    Episodes run in lockstep, ``batch_size`` observations per forward pass. Returns ``world.evaluate``'s
    keys (``success_rate``, ``by_kind``, ``outcomes``, ``episodes``, ``num_episodes``) plus ``action_l1``:
    the mean |normalised predicted - normalised expert| over the chunk at each scene's initial state (the
    first query of every episode) and ``action_l1_by_kind``.
    """
    check_config(model.config)
    was_training = model.training
    model.eval()
    config = world.WorldConfig(chunk=model.config.robot.chunk)
    seeds = list(world.split_seeds(split, n, start))
    stats = model.config.norm_stats[_stats_key(model.config)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds), desc=f"evaluate {split}", unit="episode")
    episodes: list[dict[str, Any]] = []
    l1: list[float] = []
    try:
        for lo in range(0, len(seeds), batch_size):
            chunk_seeds = seeds[lo : lo + batch_size]
            scenes = [world.sample_scene(s, config) for s in chunk_seeds]
            results, first_l1 = _run_lockstep(model, scenes, execute, max_steps, stats)
            l1.extend(first_l1)
            for scene, (state, queries) in zip(scenes, results):
                outcome = "success" if state.holding else "wrong_object" if state.failed else "timeout"
                episodes.append(
                    {
                        "seed": scene.seed,
                        "kind": scene.kind,
                        "instruction": scene.instruction,
                        "success": bool(state.holding),
                        "outcome": outcome,
                        "steps": int(state.steps),
                        "queries": int(queries),
                        "misses": int(state.misses),
                    }
                )
            if bar is not None:
                bar.update(len(chunk_seeds))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return summarize(episodes, l1)


def _run_lockstep(
    model: VLAAdapter,
    scenes: list[world.Scene],
    execute: int,
    max_steps: int | None,
    stats: dict[str, Any],
) -> tuple[list[tuple[world.State, int]], list[float]]:
    if execute < 1:
        raise InputError(f"execute: got {execute}, expected a positive integer")
    limit = [s.config.max_steps if max_steps is None else max_steps for s in scenes]
    states = [world.initial_state(s) for s in scenes]
    queries = [0] * len(scenes)
    first_l1: list[float] = []
    normalization = model.config.robot.normalization
    while True:
        active = [i for i, s in enumerate(states) if not s.done and s.steps < limit[i]]
        if not active:
            break
        observations = [world.render(scenes[i], states[i]) for i in active]
        actions, normalized = _predict(model, observations)
        for j, i in enumerate(active):
            if queries[i] == 0:
                expert = world.expert_chunk(scenes[i], states[i], model.config.robot.chunk)
                target = normalize_actions(expert, stats["action"], normalization)
                first_l1.append(float(np.abs(normalized[j] - target).mean()))
            queries[i] += 1
            for action in actions[j][:execute]:
                states[i] = world.step(scenes[i], states[i], action)
                if states[i].done or states[i].steps >= limit[i]:
                    break
    return list(zip(states, queries)), first_l1


def summarize(episodes: list[dict[str, Any]], action_l1: Sequence[float] = ()) -> dict[str, Any]:
    """``world.evaluate``-style summary of episode records (plus ``action_l1`` when given)."""
    by_kind = {}
    l1_by_kind = {}
    for kind in world.KINDS:
        rows = [i for i, e in enumerate(episodes) if e["kind"] == kind]
        if rows:
            by_kind[kind] = {
                "success_rate": sum(episodes[i]["success"] for i in rows) / len(rows),
                "num_episodes": len(rows),
            }
            if action_l1:
                l1_by_kind[kind] = float(np.mean([action_l1[i] for i in rows]))
    outcomes = {name: sum(e["outcome"] == name for e in episodes) for name in world.OUTCOMES}
    result: dict[str, Any] = {
        "success_rate": sum(e["success"] for e in episodes) / len(episodes) if episodes else 0.0,
        "num_episodes": len(episodes),
        "outcomes": outcomes,
        "by_kind": by_kind,
    }
    if action_l1:
        result["action_l1"] = float(np.mean(action_l1))
        result["action_l1_by_kind"] = l1_by_kind
    result["episodes"] = episodes
    return result


@torch.inference_mode()
def action_l1(model: VLAAdapter, data: TabletopData, batch_size: int = 128) -> float:
    """Mean |normalised predicted - normalised expert| over every chunk of ``data`` (eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for lo in range(0, len(data), batch_size):
            batch = data.batch(range(lo, min(lo + batch_size, len(data))))
            target = batch.pop("actions").to(model.device)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(**batch).normalized_actions.float()
            total += float((out - target).abs().sum())
            count += target.numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)


__all__ = [
    "DATASET",
    "PROMPT_TEMPLATE",
    "TabletopData",
    "action_l1",
    "build_model",
    "build_world_tokenizer",
    "initialize",
    "sincos_position_embedding",
    "check_config",
    "evaluate_model",
    "pixel_values",
    "policy_for",
    "scene_inputs",
    "relabeled_scenes",
    "summarize",
    "tabletop_config",
    "world_processor",
    "world_statistics",
    "write_world_tokenizer_files",
]
