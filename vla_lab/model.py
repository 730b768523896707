"""The VLA-Adapter model, wired stage by stage: pixels -> patches -> sequence -> LLM -> head -> actions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vla_lab.action_head import L1RegressionActionHead
from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.llm import build_language_model, run_decoder, set_attention_kernel
from vla_lab.normalization import normalize_proprio, resolve_unnorm_key, unnormalize_actions
from vla_lab.projector import ProprioProjector, build_projector
from vla_lab.sequence import AttentionSpec, SequenceLayout, allowed_matrix, segment_id_matrix
from vla_lab.vision import VisionBackbone

if TYPE_CHECKING:
    from vla_lab.processing import VLAProcessor


@dataclass
class VLAOutput:
    """Everything one forward pass computed.

    ``hidden_states[i]`` is (B, S, C): index 0 the embeddings, index i the output of LLM layer i, the
    last one after the final norm. ``task_states`` / ``query_states`` are what the head read,
    (B, layers + 1, K, C). ``layouts[b]`` gives sample b's segment spans.
    """

    normalized_actions: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    layouts: list[SequenceLayout]
    attention: AttentionSpec
    task_states: torch.Tensor
    query_states: torch.Tensor
    allowed: torch.Tensor = field(repr=False)


@dataclass
class ActionPrediction:
    """Actions for a batch of observations: normalised (model output) and in robot units."""

    normalized_actions: np.ndarray
    actions: np.ndarray | None
    layouts: list[SequenceLayout]
    unnorm_key: str | None
    attention: str
    input_ids: list[list[int]]
    prompts: list[str] | None = None

    @property
    def layout(self) -> SequenceLayout:
        return self.layouts[0]


class VLAAdapter(nn.Module):
    """VLA-Adapter with switchable LLM attention masks.

    Sub-modules carry the released names: ``vision_backbone.featurizer`` / ``.fused_featurizer``,
    ``projector``, ``language_model`` (transformers ``Qwen2ForCausalLM``), ``action_queries``,
    ``action_head`` (``L1RegressionActionHead``) and ``proprio_projector``.
    """

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_backbone = VisionBackbone(config.vision, config.num_images)
        self.projector = build_projector(config.projector, self.vision_backbone.embed_dim, config.llm_dim)
        self.language_model = build_language_model(config.llm, config.attn_kernel)
        self.action_queries = nn.Embedding(config.num_action_queries, config.llm_dim)
        nn.init.zeros_(self.action_queries.weight)
        self.action_head = L1RegressionActionHead(
            config.llm_dim,
            config.num_llm_layers,
            config.robot.chunk,
            config.robot.action_dim,
            version=config.head_version,
            num_heads=config.head_num_heads,
        )
        self.proprio_projector = (
            ProprioProjector(config.robot.proprio_dim, config.llm_dim) if config.use_proprio else None
        )
        self._processor: VLAProcessor | None = None
        self._recorder: Any = None  # set by vla_lab.capture while a capture is active

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # `.to(dtype)` / `.to_empty()` also reach non-persistent buffers; recompute the rotary tables.
        result = super()._apply(fn, recurse)
        self.reset_rotary_buffers()
        return result

    def reset_rotary_buffers(self) -> None:
        """Recompute the RoPE frequency buffers after a dtype or device change.

        The LLM's stay float32 (transformers builds its cos/sin from float32 frequencies). The Pro
        head's follow the head's dtype: upstream casts the whole head, buffer included, to bf16.
        """
        rotary = self.language_model.model.rotary_emb
        if rotary.rope_type == "default":
            inv_freq, _ = rotary.compute_default_rope_parameters(rotary.config)
            rotary.inv_freq = inv_freq.to(rotary.inv_freq.device)
            rotary.original_inv_freq = inv_freq.clone().to(rotary.inv_freq.device)
        for block in self.action_head.model.mlp_resnet_blocks:
            rope = getattr(block, "rope", None)
            if rope is not None:
                fresh = type(rope)(block.head_dim).inv_freq
                rope.inv_freq = fresh.to(device=rope.inv_freq.device, dtype=block.q_proj.weight.dtype)

    # --- properties ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.action_queries.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.action_queries.weight.dtype

    @property
    def attention(self) -> AttentionSpec:
        """The default LLM mask (``config.attention``)."""
        return AttentionSpec.parse(self.config.attention)

    def set_attention(self, attention: str | dict | AttentionSpec) -> None:
        """Change the default LLM mask on the same weights (e.g. ``"bidirectional"``)."""
        self.config.attention = AttentionSpec.parse(attention).to_config()

    def set_attention_kernel(self, kernel: str) -> None:
        """``sdpa`` or ``eager`` (stock transformers kernels)."""
        if kernel not in ("sdpa", "eager"):
            raise InputError(f"attn_kernel: got {kernel!r}, expected 'sdpa' or 'eager'")
        self.config.attn_kernel = kernel
        set_attention_kernel(self.language_model, kernel)

    # --- stages --------------------------------------------------------------------------------
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N*C, H, W) -> projected patch embeddings (B, NP, llm_dim)."""
        return self.projector(self.vision_backbone(pixel_values.to(self.dtype)))

    def assemble(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, patch_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, list[SequenceLayout]]:
        """Build the LLM input [tok0, patches, prompt, action queries, STOP] per sample, right-padded."""
        batch, max_len = input_ids.shape
        lengths = attention_mask.sum(dim=1)
        num_patches, num_queries = patch_embeds.shape[1], self.config.num_action_queries
        embed = self.language_model.get_input_embeddings()
        text = embed(input_ids)
        queries = self.action_queries.weight[None].expand(batch, -1, -1)
        stop = embed(torch.full((batch, 1), self.config.stop_token_id, device=input_ids.device))
        raw = torch.cat([text[:, :1], patch_embeds.to(text.dtype), text[:, 1:], queries, stop], dim=1)
        # Prompt padding sits between each sample's prompt and its queries in `raw`; move it to the end.
        seq = raw.shape[1]
        pos = torch.arange(seq, device=raw.device)[None]
        first_pad = (num_patches + lengths)[:, None]
        is_pad = (pos >= first_pad) & (pos < num_patches + max_len)
        order = torch.argsort(torch.where(is_pad, pos + seq, pos), dim=1, stable=True)
        embeds = raw.gather(1, order[..., None].expand(-1, -1, raw.shape[2]))
        grid = self.vision_backbone.patch_grid
        per_image = [self.vision_backbone.patches_per_image] * self.config.num_images
        layouts = [
            SequenceLayout.build(int(n), per_image, [grid] * self.config.num_images, num_queries, seq)
            for n in lengths.tolist()
        ]
        return embeds, layouts

    def head_inputs(
        self, hidden_states: Sequence[torch.Tensor], layouts: list[SequenceLayout], offset: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer task states (B, layers+1, NP, C) and action-query states (B, layers+1, Q, C)."""
        offset = offset or self.config.hidden_offset
        spans = [lay.head_input_positions(offset) for lay in layouts]
        stacked = torch.stack(list(hidden_states), dim=1)
        task_span = spans[0][0]
        task = stacked[:, :, task_span.slice]
        starts = torch.tensor([q.start for _, q in spans], device=stacked.device)
        index = starts[:, None] + torch.arange(len(spans[0][1]), device=stacked.device)[None]
        index = index[:, None, :, None].expand(-1, stacked.shape[1], -1, stacked.shape[3])
        return task, stacked.gather(2, index)

    # --- forward -------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
        attention: str | dict | AttentionSpec | None = None,
        **attention_kwargs: Any,
    ) -> VLAOutput:
        """Normalised proprio in, normalised actions out; see :class:`VLAOutput`."""
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        proprio = self._check_proprio(proprio, input_ids.shape[0])
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise InputError(
                f"pixel_values: got batch {pixel_values.shape[0]}, expected {input_ids.shape[0]} (batch of input_ids)"
            )
        spec = AttentionSpec.parse(attention) if attention is not None else self.attention
        patches = self.embed_images(pixel_values)
        embeds, layouts = self.assemble(input_ids, attention_mask, patches)
        allowed = allowed_matrix(spec, segment_id_matrix(layouts).to(embeds.device))
        recorder = self._recorder
        if recorder is not None:
            embeds = recorder.begin(layouts, spec, allowed, embeds)
            attention_kwargs["vla_lab_recorder"] = recorder
        hidden = run_decoder(
            self.language_model,
            embeds,
            allowed,
            kernel=self.config.attn_kernel,
            on_layer=recorder.layer if recorder is not None else None,
            **attention_kwargs,
        )
        task, queries = self.head_inputs(hidden, layouts)
        if self.config.upstream_bf16_casts:
            queries = queries.to(torch.bfloat16).to(queries.dtype)
            proprio = proprio.to(torch.bfloat16).to(proprio.dtype) if proprio is not None else None
        proprio_features = self.proprio_projector(proprio) if proprio is not None else None
        actions = self.action_head(task, queries, proprio_features)
        if recorder is not None:
            recorder.end(hidden[-1], task, queries, actions)
        return VLAOutput(actions, tuple(hidden), layouts, spec, task, queries, allowed)

    # --- inference -----------------------------------------------------------------------------
    @property
    def processor(self) -> VLAProcessor:
        """Images + instruction + raw proprio -> model inputs (built on first use)."""
        if self._processor is None:
            from vla_lab.processing import VLAProcessor

            self._processor = VLAProcessor.for_config(self.config)
        return self._processor

    @processor.setter
    def processor(self, value: VLAProcessor) -> None:
        self._processor = value

    def prepare_inputs(
        self,
        images: Any = None,
        instruction: str | list[str] | None = None,
        proprio: Any = None,
        *,
        unnorm_key: str | None = None,
        pixel_values: torch.Tensor | None = None,
        input_ids: Any = None,
        attention_mask: Any = None,
        proprio_is_normalized: bool = False,
        center_crop: bool = False,
    ) -> dict[str, Any]:
        """Observation(s) -> the keyword arguments of :meth:`forward` (plus ``prompts`` and ``unnorm_key``).

        Give either raw ``images`` (one observation's list of images, or a list of such lists) and
        ``instruction`` (a string or one per observation), or preprocessed ``pixel_values`` and
        ``input_ids`` (+ ``attention_mask`` for right-padded batches). ``proprio`` is the raw robot
        state, normalised with the dataset statistics of ``unnorm_key``; pass
        ``proprio_is_normalized=True`` if it is already in [-1, 1] (it is used as given when the model
        has no statistics).
        """
        prompts = None
        stats_key = resolve_unnorm_key(self.config.norm_stats, unnorm_key) if self.config.norm_stats else None
        if unnorm_key is not None and stats_key is None:
            raise InputError(f"unnorm_key: got {unnorm_key!r}, but the model has no dataset statistics")
        if pixel_values is None or input_ids is None:
            if images is None or instruction is None:
                raise InputError("predict_action: expected images and instruction, or pixel_values and input_ids")
            batch = self.processor(images, instruction, center_crop=center_crop)
            pixel_values, input_ids, attention_mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
            prompts = batch["prompts"]
        input_ids, attention_mask = self._check_ids(input_ids, attention_mask)
        batch_size, dim = input_ids.shape[0], self.config.robot.proprio_dim
        proprio_t = None
        if proprio is not None:
            values = np.asarray(proprio, dtype=np.float64)
            if values.size != batch_size * dim:
                raise InputError(f"proprio: got shape {values.shape}, expected {dim} values per observation")
            values = values.reshape(batch_size, dim)
            if stats_key is not None and not proprio_is_normalized:
                values = normalize_proprio(
                    values, self.config.norm_stats[stats_key]["proprio"], self.config.robot.normalization
                )
            proprio_t = torch.as_tensor(values, dtype=self.dtype, device=self.device)
        device = self.device
        return {
            "pixel_values": pixel_values.to(device),
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "proprio": proprio_t,
            "prompts": prompts,
            "unnorm_key": stats_key,
        }

    def unnormalize(self, normalized: Any, unnorm_key: str | None) -> np.ndarray | None:
        """Normalised actions -> robot units with the statistics of ``unnorm_key`` (None without statistics)."""
        if unnorm_key is None:
            return None
        stats = self.config.norm_stats[unnorm_key]["action"]
        return unnormalize_actions(np.asarray(normalized, dtype=np.float64), stats, self.config.robot.normalization)

    @torch.inference_mode()
    def predict_action(
        self,
        images: Any = None,
        instruction: str | list[str] | None = None,
        proprio: Any = None,
        *,
        unnorm_key: str | None = None,
        attention: str | dict | AttentionSpec | None = None,
        **inputs: Any,
    ) -> ActionPrediction:
        """Predict an action chunk per observation (inputs as in :meth:`prepare_inputs`).

        Actions are un-normalised when the model has dataset statistics.
        """
        batch = self.prepare_inputs(images, instruction, proprio, unnorm_key=unnorm_key, **inputs)
        prompts, stats_key = batch.pop("prompts"), batch.pop("unnorm_key")
        out = self(**batch, attention=attention)
        normalized = out.normalized_actions.float().cpu().numpy()
        ids = [row[: int(n)] for row, n in zip(batch["input_ids"].tolist(), batch["attention_mask"].sum(1).tolist())]
        actions = self.unnormalize(normalized, stats_key)
        return ActionPrediction(normalized, actions, out.layouts, stats_key, out.attention.label, ids, prompts)

    # --- checks --------------------------------------------------------------------------------
    def _check_ids(self, input_ids: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(input_ids, torch.Tensor):
            nested = len(input_ids) > 0 and isinstance(input_ids[0], (list, tuple))
            rows = [list(r) for r in input_ids] if nested else [list(input_ids)]
            width = max((len(r) for r in rows), default=0)
            if attention_mask is None:
                attention_mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
            input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise InputError(f"input_ids: got shape {tuple(input_ids.shape)}, expected (B, L) with L >= 1")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.as_tensor(attention_mask, device=input_ids.device).long().reshape(input_ids.shape)
        lengths = attention_mask.sum(dim=1)
        expected = (torch.arange(input_ids.shape[1], device=input_ids.device)[None] < lengths[:, None]).long()
        if not torch.equal(attention_mask, expected):
            raise InputError("attention_mask: got a mask that is not right-padded, expected ones then zeros per row")
        if int(lengths.min()) < 1:
            raise InputError("input_ids: got an empty prompt, expected at least one token per sample")
        vocab = self.config.llm["vocab_size"]
        if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
            raise InputError(f"input_ids: got ids up to {int(input_ids.max())}, expected 0 <= id < vocab_size {vocab}")
        return input_ids, attention_mask

    def _check_proprio(self, proprio: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        dim = self.config.robot.proprio_dim
        if proprio is None:
            if self.proprio_projector is not None:
                raise InputError(f"proprio: got None, expected ({batch}, {dim}) values (config.use_proprio is True)")
            return None
        if self.proprio_projector is None:
            raise InputError("proprio: got values, expected None (config.use_proprio is False)")
        proprio = torch.as_tensor(proprio, device=self.device)
        if proprio.ndim == 1:
            proprio = proprio[None]
        if tuple(proprio.shape) != (batch, dim):
            raise InputError(f"proprio: got shape {tuple(proprio.shape)}, expected ({batch}, {dim})")
        return proprio.to(self.dtype)

    def save_pretrained(self, directory: Any, **kwargs: Any) -> Any:
        """Write this model in the released checkpoint layout (see :func:`vla_lab.checkpoint.save_pretrained`)."""
        from vla_lab.checkpoint import save_pretrained

        return save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: Any, **kwargs: Any) -> VLAAdapter:
        """Load a checkpoint directory (see :func:`vla_lab.checkpoint.load_pretrained`)."""
        from vla_lab.checkpoint import load_pretrained

        return load_pretrained(directory, **kwargs)

    # --- bookkeeping ---------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (tied LLM embeddings counted once)."""
        def count(module: nn.Module | None) -> int:
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        counts = {
            "vision.featurizer": count(self.vision_backbone.featurizer),
            "vision.fused_featurizer": count(self.vision_backbone.fused_featurizer),
            "projector": count(self.projector),
            "llm": count(self.language_model),
            "action_queries": count(self.action_queries),
            "action_head": count(self.action_head),
            "proprio_projector": count(self.proprio_projector),
        }
        counts["total"] = count(self)
        return counts


def build_random(
    config: VLAConfig,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    std: float = 0.02,
) -> VLAAdapter:
    """A model with seeded random weights, built without materialising a default init first.

    Matrices and embeddings ~ N(0, std), biases 0, norm weights 1; the action queries and the
    head's gates start at 0 as upstream initialises them. Fast for the full-size presets.
    """
    model = build_on_meta(config).to(dtype).to_empty(device=device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name == "action_queries.weight" or leaf == "gating_factor" or leaf == "bias":
                param.zero_()
            elif param.ndim == 1 and ("norm" in name or leaf in ("gamma", "scale_factor")):
                param.fill_(1.0 if "norm" in name else 1e-5)
            else:
                values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
                param.copy_(values)
    if config.llm.get("tie_word_embeddings", True):
        model.language_model.tie_weights()
    return model.eval()


def build_on_meta(config: VLAConfig) -> VLAAdapter:
    """A model on the ``meta`` device: real module shapes, no memory (for parameter counts)."""
    with torch.device("meta"):
        return VLAAdapter(config)
