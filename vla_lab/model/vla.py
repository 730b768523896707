"""The VLA-Adapter model, wired stage by stage: pixels -> patches -> sequence -> LLM -> head -> actions."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from vla_lab.config import AttentionLike, AttentionSpec, VLAConfig, resolve_device, resolve_dtype
from vla_lab.errors import CheckpointError, InputError
from vla_lab.model import checkpoint
from vla_lab.model.action_head import L1RegressionActionHead, UpstreamRoPE
from vla_lab.model.inputs import check_actions, check_ids, check_proprio, forward_inputs
from vla_lab.model.llm import build_language_model, check_kernel, count_parameters, run_decoder, set_attention_kernel
from vla_lab.model.projector import ProprioProjector, build_projector
from vla_lab.model.sequence import (
    AssemblyPlan,
    SequenceLayout,
    block_pairs,
    head_read_index,
    mask_for_kernel,
    read_head_positions,
    stack_head_inputs,
)
from vla_lab.model.vision import VisionBackbone
from vla_lab.processing import VLAProcessor
from vla_lab.processing.normalization import (
    finite_numbers,
    normalize_proprio,
    resolve_unnorm_key,
    unnormalize_actions,
)


class ForwardRecorder(Protocol):
    """What a forward pass reports to an active capture (:mod:`vla_lab.interp.capture`)."""

    def begin(
        self, layouts: Sequence[SequenceLayout], spec: AttentionSpec, allowed: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor: ...

    def layer(self, layer: int, hidden: torch.Tensor) -> torch.Tensor: ...

    def end(self, final: torch.Tensor, task: torch.Tensor, queries: torch.Tensor, actions: torch.Tensor) -> None: ...


@dataclass
class VLAOutput:
    """Everything one forward pass computed.

    ``hidden_states[i]`` is (B, S, C) at hidden_index i: 0 the embeddings, i the output of LLM layer
    i - 1, the last one after the final norm. ``task_states`` / ``query_states`` (B, hidden_index, K, C)
    and ``proprio_features`` (B, C) are what the head read (after the optional upstream bf16 casts).
    ``layouts[b]`` gives sample b's segment spans.
    """

    normalized_actions: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    layouts: list[SequenceLayout]
    attention: AttentionSpec
    task_states: torch.Tensor
    query_states: torch.Tensor
    allowed: torch.Tensor = field(repr=False)
    proprio_features: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class ActionPrediction:
    """Actions for a batch of observations: normalised (model output) and in robot units; ``prompt`` names the
    prompt the instructions were put in and ``prompts`` holds their texts (None when ids were given)."""

    normalized_actions: np.ndarray
    actions: np.ndarray | None
    layouts: list[SequenceLayout]
    unnorm_key: str | None
    attention: str
    input_ids: list[list[int]]
    prompts: list[str] | None = None
    prompt: str | None = None

    @property
    def layout(self) -> SequenceLayout:
        return self.layouts[0]


class VLAAdapter(nn.Module):
    """VLA-Adapter with switchable LLM attention masks.

    Sub-modules carry the released names: ``vision_backbone.featurizer`` / ``.fused_featurizer``,
    ``projector``, ``language_model`` (transformers ``Qwen2ForCausalLM``), ``action_queries``,
    ``action_head`` (``L1RegressionActionHead``) and ``proprio_projector``. The model keeps its own copy
    of ``config``: changing one model's mask never changes another's. Instructions are put in the prompt
    ``config.prompt`` (``qwen-chat`` for released checkpoints, as upstream; ``prompt=`` overrides it per call).
    """

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        config = self.config
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
        self._recorder: ForwardRecorder | None = None  # set by vla_lab.interp.capture while a capture is active
        self.checkpoint_path: Path | None = None
        self.batch_invariant = False

    def _apply(self, fn: Any, recurse: bool = True) -> VLAAdapter:
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
        for block in self.action_head.model.blocks:
            if block.rope is not None:
                fresh = UpstreamRoPE(block.head_dim).inv_freq
                block.rope.inv_freq = fresh.to(device=block.rope.inv_freq.device, dtype=block.q_proj.weight.dtype)

    # --- properties ----------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """Where the weights came from: the checkpoint directory (:func:`checkpoint.display_path`) or,
        for a model built in memory, its configuration's name."""
        return checkpoint.display_path(self.checkpoint_path) if self.checkpoint_path else self.config.name

    @property
    def device(self) -> torch.device:
        return self.action_queries.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.action_queries.weight.dtype

    @property
    def attention(self) -> AttentionSpec:
        """The default LLM mask (``config.attention``)."""
        return self.config.attention_spec()

    def set_attention(self, attention: AttentionLike) -> None:
        """Change the default LLM mask on the same weights (e.g. ``"bidirectional"``)."""
        self.config.attention = self.config.attention_spec(attention).to_config()

    def set_attention_kernel(self, kernel: str) -> None:
        """``sdpa`` or ``eager`` (stock transformers kernels)."""
        self.config.attn_kernel = check_kernel(kernel)
        set_attention_kernel(self.language_model, kernel)

    def set_batch_invariant(self, on: bool = True) -> None:
        """Run the proprio projector and the action head one sample at a time, so that a sample's actions are the
        same bits whatever else is in its batch (off by default: training and the committed records use one call).

        Their matmuls have a few rows per sample, and BLAS picks other kernels (other summation orders) as the
        batch grows; the vision backbone and the LLM, hundreds of rows per sample, give the same bits in any batch
        on CPU (``tests/test_batch_invariance.py``). Not checked on GPU."""
        self.batch_invariant = bool(on)

    def _per_sample(self, module: nn.Module, *inputs: torch.Tensor | None) -> torch.Tensor:
        """``module(*inputs)``, one sample at a time under :meth:`set_batch_invariant` (in eval mode, outside a
        capture: training noise and recorders see whole batches)."""
        batch = next(t for t in inputs if t is not None).shape[0]
        whole = self.training or self._recorder is not None or self.action_head.recorder is not None
        if not self.batch_invariant or batch == 1 or whole:
            return module(*inputs)
        return torch.cat([module(*(t[i : i + 1] if t is not None else None for t in inputs)) for i in range(batch)])

    # --- stages --------------------------------------------------------------------------------
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N*C, H, W) -> projected patch embeddings (B, NP, llm_dim)."""
        projected: torch.Tensor = self.projector(self.vision_backbone(pixel_values.to(self.dtype)))
        return projected

    def plan(self, lengths: Sequence[int], max_len: int, offset: str | None = None) -> AssemblyPlan:
        """The :class:`AssemblyPlan` of a batch whose prompts have ``lengths`` tokens, padded to ``max_len``."""
        backbone = self.vision_backbone
        return AssemblyPlan.build(
            lengths, max_len, backbone.patches_per_image, self.config.num_images, backbone.patch_grid,
            self.config.num_action_queries, offset or self.config.hidden_offset, device=self.device,
        )

    def embed_sequence(self, plan: AssemblyPlan, input_ids: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        """The LLM input [tok0, patches, prompt, action queries, STOP] of every sample, right-padded."""
        embed = self.language_model.model.embed_tokens
        batch = input_ids.shape[0]
        queries = self.action_queries.weight[None].expand(batch, -1, -1)
        stop = embed.weight[self.config.stop_token_id][None, None].expand(batch, 1, -1)
        return plan.assemble(embed(input_ids), patch_embeds, queries, stop)

    def head_inputs(
        self, hidden_states: Sequence[torch.Tensor], layouts: Sequence[SequenceLayout], offset: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-hidden_index task states (B, L+1, NP, C) and action-query states (B, L+1, Q, C) under ``offset``."""
        task, query_index = head_read_index(layouts, offset or self.config.hidden_offset)
        return stack_head_inputs([read_head_positions(h, task, query_index) for h in hidden_states])

    def head_conditioning(
        self, query_states: torch.Tensor, proprio: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the head reads besides the task states: the query states and the projected proprio.

        With ``config.upstream_bf16_casts`` both are rounded to bf16 first, as upstream's
        ``predict_action`` does whatever the model's dtype.
        """
        if self.config.upstream_bf16_casts:
            query_states = query_states.to(torch.bfloat16).to(query_states.dtype)
            proprio = proprio.to(torch.bfloat16).to(proprio.dtype) if proprio is not None else None
        if proprio is None or self.proprio_projector is None:
            return query_states, None
        return query_states, self._per_sample(self.proprio_projector, proprio)

    # --- forward -------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
        attention: AttentionLike | None = None,
        block: torch.Tensor | None = None,
        head_block: torch.Tensor | None = None,
    ) -> VLAOutput:
        """Normalised proprio in, normalised actions out; see :class:`VLAOutput`.

        ``block`` (boolean, batch x positions x positions) closes single (query, key) position pairs on top
        of the mask ``attention`` describes, e.g. a random set of keys as the control of a segment knockout.
        ``head_block`` (boolean, batch x positions) closes the head's task attention to the states of single
        sequence positions, in every head block; positions the head does not read as task states are left as they
        are (the plan's ``task`` span: with the released offset, tok0 and the first NP - 1 patches).
        Non-finite predicted actions are refused in one line (:func:`~vla_lab.model.inputs.check_actions`).
        """
        input_ids, attention_mask = self.check_ids(input_ids, attention_mask)
        proprio = self.check_proprio(proprio, input_ids.shape[0])
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise InputError(
                f"pixel_values: got batch {pixel_values.shape[0]}, expected {input_ids.shape[0]} (batch of input_ids)"
            )
        spec = self.config.attention_spec(attention)
        plan = self.plan(attention_mask.sum(dim=1).tolist(), input_ids.shape[1])
        self._warn_if_long(max(layout.num_tokens for layout in plan.layouts))
        embeds = self.embed_sequence(plan, input_ids, self.embed_images(pixel_values))
        layouts = list(plan.layouts)
        allowed = plan.allowed(spec)
        if block is not None:
            allowed = block_pairs(allowed, block)
        recorder = self._recorder
        attention_kwargs: dict[str, Any] = {}
        if recorder is not None:
            embeds = recorder.begin(layouts, spec, allowed, embeds)
            attention_kwargs["vla_lab_recorder"] = recorder
        hidden = run_decoder(
            self.language_model,
            embeds,
            mask_for_kernel(allowed, self.config.attn_kernel, embeds.dtype),
            on_layer=recorder.layer if recorder is not None else None,
            **attention_kwargs,
        )
        task, queries = stack_head_inputs([plan.head_positions(h) for h in hidden])
        queries, proprio_features = self.head_conditioning(queries, proprio)
        closed_task = None
        if head_block is not None:
            if head_block.dtype != torch.bool or tuple(head_block.shape) != (input_ids.shape[0], plan.length):
                raise InputError(f"head_block: got a {head_block.dtype} tensor of shape {tuple(head_block.shape)}, "
                                 f"expected torch.bool of shape {(input_ids.shape[0], plan.length)} (batch, position)")
            closed_task = head_block[:, plan.task.slice].to(task.device)
        actions = self._per_sample(self.action_head, task, queries, proprio_features, closed_task)
        if recorder is not None:
            recorder.end(hidden[-1], task, queries, actions)
        check_actions(actions)
        return VLAOutput(actions, tuple(hidden), layouts, spec, task, queries, allowed, proprio_features)

    def _warn_if_long(self, num_tokens: int) -> None:
        limit = self.config.llm.get("max_position_embeddings")
        if limit and num_tokens > limit:
            warnings.warn(
                f"sequence: got {num_tokens} tokens, more than the LLM's max_position_embeddings {limit}; "
                "positions beyond it were never seen in training",
                stacklevel=3,
            )

    # --- inference -----------------------------------------------------------------------------
    @property
    def processor(self) -> VLAProcessor:
        """Images + instruction + raw proprio -> model inputs (built on first use)."""
        if self._processor is None:
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
        prompt: str | None = None,
    ) -> dict[str, Any]:
        """Observation(s) -> the keyword arguments of :meth:`forward` (plus ``prompt``, ``prompts`` and
        ``unnorm_key``).

        Give either raw ``images`` (one observation's list of images, or a list of such lists) and
        ``instruction`` (a string or one per observation), or preprocessed ``pixel_values`` and
        ``input_ids`` (+ ``attention_mask`` for right-padded batches). The instruction is put in the
        prompt ``prompt`` (default ``config.prompt``: ``qwen-chat`` for released checkpoints, as upstream).
        ``proprio`` is the raw robot state, normalised with the dataset statistics of ``unnorm_key``; pass
        ``proprio_is_normalized=True`` if it is already in [-1, 1] (it is used as given when the model
        has no statistics).
        """
        prompts = None
        prompt = self.config.prompt if prompt is None else prompt
        norm_stats = self.config.norm_stats
        stats_key = resolve_unnorm_key(norm_stats, unnorm_key) if norm_stats else None
        if unnorm_key is not None and stats_key is None:
            raise InputError(f"unnorm_key: got {unnorm_key!r}, but the model has no dataset statistics")
        if pixel_values is None or input_ids is None:
            if images is None or instruction is None:
                raise InputError("predict_action: expected images and instruction, or pixel_values and input_ids")
            batch = self.processor(images, instruction, center_crop=center_crop, prompt=prompt)
            pixel_values, input_ids, attention_mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
            prompts = batch["prompts"]
        else:
            prompt = None  # ids given: no prompt was built here
        input_ids, attention_mask = self.check_ids(input_ids, attention_mask)
        batch_size, dim = input_ids.shape[0], self.config.robot.proprio_dim
        proprio_t = None
        if pixel_values is not None and not bool(torch.isfinite(torch.as_tensor(pixel_values)).all()):
            raise InputError("pixel_values: got NaN or infinite values, expected finite numbers")
        if proprio is not None:
            values = finite_numbers(proprio, "proprio")
            if values.size != batch_size * dim:
                raise InputError(f"proprio: got shape {values.shape}, expected {dim} values per observation")
            values = values.reshape(batch_size, dim)
            if norm_stats and stats_key is not None and not proprio_is_normalized:
                values = normalize_proprio(values, norm_stats[stats_key]["proprio"], self.config.robot.normalization)
            proprio_t = torch.as_tensor(values, dtype=self.dtype, device=self.device)
        device = self.device
        return {
            "pixel_values": pixel_values.to(device),
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "proprio": proprio_t,
            "prompt": prompt,
            "prompts": prompts,
            "unnorm_key": stats_key,
        }

    def unnormalize(self, normalized: Any, unnorm_key: str | None) -> np.ndarray | None:
        """Normalised actions -> robot units with the statistics of ``unnorm_key`` (None without statistics)."""
        if unnorm_key is None or not self.config.norm_stats:
            return None
        stats = self.config.norm_stats[unnorm_key]["action"]
        return unnormalize_actions(np.asarray(normalized, dtype=np.float64), stats, self.config.robot.normalization)

    def prediction(
        self, normalized: torch.Tensor, batch: Mapping[str, Any], layouts: Sequence[SequenceLayout], attention: str
    ) -> ActionPrediction:
        """An :class:`ActionPrediction` of normalised actions for a :meth:`prepare_inputs` batch (finite ones
        only: :func:`~vla_lab.model.inputs.check_actions`)."""
        values = check_actions(normalized).float().cpu().numpy()
        lengths = batch["attention_mask"].sum(1).tolist()
        ids = [row[: int(n)] for row, n in zip(batch["input_ids"].tolist(), lengths)]
        key = batch["unnorm_key"]
        actions = self.unnormalize(values, key)
        if actions is not None:
            check_actions(torch.as_tensor(actions))
        return ActionPrediction(values, actions, list(layouts), key, attention, ids, batch["prompts"],
                                batch.get("prompt"))

    @torch.inference_mode()
    def predict_action(
        self,
        images: Any = None,
        instruction: str | list[str] | None = None,
        proprio: Any = None,
        *,
        unnorm_key: str | None = None,
        attention: AttentionLike | None = None,
        **inputs: Any,
    ) -> ActionPrediction:
        """Predict an action chunk per observation (inputs as in :meth:`prepare_inputs`).

        Actions are un-normalised when the model has dataset statistics.
        """
        batch = self.prepare_inputs(images, instruction, proprio, unnorm_key=unnorm_key, **inputs)
        out = self(**forward_inputs(batch), attention=attention)
        return self.prediction(out.normalized_actions, batch, out.layouts, out.attention.label)

    # --- checks --------------------------------------------------------------------------------
    def check_ids(self, input_ids: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (lists or tensors) and mask -> (B, L) long tensors; one-line errors when malformed."""
        return check_ids(input_ids, attention_mask, self.config.llm["vocab_size"])

    def check_proprio(self, proprio: Any, batch: int) -> torch.Tensor | None:
        """Normalised proprio -> (B, proprio_dim) in the model's dtype; one-line errors when it does not fit."""
        return check_proprio(proprio, batch, self.config.robot.proprio_dim, self.proprio_projector is not None,
                             self.device, self.dtype)

    # --- checkpoints ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, **options: Any) -> Path:
        """Write this model in the released checkpoint layout (options: :func:`vla_lab.model.checkpoint.write`)."""
        return checkpoint.write(directory, self.config, self.state_dict(), self.processor,
                                dtype=options.pop("dtype", None) or self.dtype, **options)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        attention: AttentionLike | None = None,
        dtype: torch.dtype | str = torch.float32,
        device: str | torch.device = "cpu",
        *,
        step: int | str | None = None,
        num_images: int | None = None,
        robot: str | dict[str, Any] | None = None,
        prompt: str | None = None,
    ) -> VLAAdapter:
        """Load a checkpoint directory in the released layout (released checkpoints or ours).

        ``attention`` overrides the mask (``causal`` for released checkpoints), ``prompt`` the prompt
        (``qwen-chat`` for released checkpoints, as upstream; vla-lab's own keep theirs). The caller's ``dtype``
        wins over the files' (released ones are bf16). ``num_images`` defaults to the vla_lab config if
        present, else 2 (the released LIBERO/CALVIN inputs: third-person + wrist). ``robot`` overrides the
        robot preset inferred from the head and proprio shapes. Every missing, unexpected and mis-shaped
        key is reported together in one error, and no model is returned unless everything fits.
        """
        torch_dtype = resolve_dtype(dtype)
        device = resolve_device(device)
        found = checkpoint.read(path, attention=attention, step=step, num_images=num_images, robot=robot,
                                prompt=prompt)
        model = meta_model(found.config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if found.config.llm.get("tie_word_embeddings", True):
            expected.pop("language_model.lm_head.weight", None)
        problems = checkpoint.mismatches(expected, found.state)
        if problems:
            raise CheckpointError(f"checkpoint: {found.directory.name} does not fit the model: " + "; ".join(problems))
        model = model.to(torch_dtype).to_empty(device=device)
        if found.config.llm.get("tie_word_embeddings", True):
            model.language_model.tie_weights()
        model.load_state_dict(found.state, strict=False)
        model.eval()
        model.processor = found.processor
        model.checkpoint_path = found.directory
        return model

    # --- bookkeeping ---------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (tied LLM embeddings counted once)."""
        counts = {
            "vision.featurizer": count_parameters(self.vision_backbone.featurizer),
            "vision.fused_featurizer": count_parameters(self.vision_backbone.fused_featurizer),
            "projector": count_parameters(self.projector),
            "llm": count_parameters(self.language_model),
            "action_queries": count_parameters(self.action_queries),
            "action_head": count_parameters(self.action_head),
            "proprio_projector": count_parameters(self.proprio_projector),
        }
        counts["total"] = count_parameters(self)
        return counts


#: :meth:`VLAAdapter.from_pretrained` as a function (the same signature).
load_pretrained = VLAAdapter.from_pretrained


def check_model(model: Any) -> VLAAdapter:
    """``model`` if it is a :class:`VLAAdapter`, else a one-line :class:`InputError`."""
    if not isinstance(model, VLAAdapter):
        raise InputError(f"model: got {type(model).__name__}, expected a vla_lab VLAAdapter (vla_lab.registry.create, "
                         "vla_lab.load_pretrained, vla_lab.random_model)")
    return model


def save_pretrained(model: VLAAdapter, directory: str | Path, **options: Any) -> Path:
    """:meth:`VLAAdapter.save_pretrained` as a function."""
    return check_model(model).save_pretrained(directory, **options)


def meta_model(config: VLAConfig) -> VLAAdapter:
    """A model on the ``meta`` device: real module shapes, no memory (for parameter counts)."""
    with torch.device("meta"):
        return VLAAdapter(config)
