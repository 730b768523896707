"""Capture hidden states and attention of every layer, keyed by one hook-name grammar.

Hook names (built by :mod:`vla_lab.interp.hooks`; ``{l}`` an LLM layer, ``{b}`` a head block, ``{v}``
``featurizer`` or ``fused_featurizer``)::

    llm.hook_embed                           (B, S, C)  LLM input embeddings
    llm.blocks.{l}.hook_resid_post           (B, S, C)  output of decoder layer l
    llm.hook_norm_final                      (B, S, C)  after the final RMSNorm (what the head reads last)
    llm.blocks.{l}.attn.hook_pattern         (B, H, S, S)  attention probabilities          [mode "full"]
    llm.blocks.{l}.attn.hook_q / hook_k      (B, H, S, d) post-RoPE queries / keys           [store_qk]
    llm.blocks.{l}.attn.hook_segment_pattern (B, H, G, G)  mean over a segment's queries of the mass
                                                           on each key segment (G = FINE_SEGMENTS)
    llm.blocks.{l}.attn.hook_query_profile   (B, H, G, S)  mean attention of each query segment per key
    llm.blocks.{l}.attn.hook_entropy         (B, H, S)     entropy of each query's distribution (nats)
    llm.blocks.{l}.attn.hook_future_mass     (B, H, S)     mass each query puts on later positions
    llm.blocks.{l}.attn.hook_head_mean       (B, S, S)     head-averaged map (for rollout)   [keep_head_mean]
    vision.{v}.blocks.{l}.attn.hook_pattern  (B*N, H, T, T) ViT attention, prefix tokens first [vision_attention]
    head.hook_task_states / hook_query_states (B, L+1, K, C) what the action head read
    head.blocks.{b}.hook_pattern             (B, H, T, T + K_adapter + K_task)  bridge attention
    head.blocks.{b}.hook_gate                ()  tanh(gating_factor)
    head.hook_actions                        (B, chunk, dim) normalised actions

LLM attention is never forced onto transformers' slow eager kernel: the layers keep their SDPA (or
eager) kernel for the output, and the probabilities are recomputed in float32 from the post-RoPE
queries and keys under the same mask. In mode ``"segments"`` every map is folded on the fly into
the small per-segment summaries above, so long sequences and batches fit.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward

from vla_lab.config import FINE_SEGMENTS, AttentionSpec
from vla_lab.errors import InputError
from vla_lab.interp.hooks import FEATURIZERS, PATCHABLE, head_hook, hook_names, llm_hook, vision_hook
from vla_lab.model.llm import set_attention_kernel
from vla_lab.model.sequence import SequenceLayout, segment_id_matrix
from vla_lab.model.vla import VLAAdapter, check_model

CAPTURE_KERNEL = "vla_lab_capture"
MODES = ("full", "segments", "none")
DEFAULT_MEMORY_BUDGET = 2 * 1024**3


def _capture_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers attention function: the base kernel's output, plus a call to the recorder."""
    recorder: _Recorder = kwargs.pop("vla_lab_recorder")
    kernel = recorder.base_kernel
    base = eager_attention_forward if kernel == "eager" else ALL_ATTENTION_FUNCTIONS[kernel]
    out, weights = base(module, query, key, value, attention_mask, **kwargs)
    layer = int(getattr(module, "layer_idx"))  # noqa: B009 - typed as Tensor | Module by nn.Module.__getattr__
    recorder.attention(layer, query, key, float(kwargs.get("scaling", getattr(module, "scaling"))))  # noqa: B009
    return out, weights


AttentionInterface.register(CAPTURE_KERNEL, _capture_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE_KERNEL, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def estimate_full_bytes(num_layers: int, batch: int, heads: int, seq: int) -> int:
    """Bytes that full float32 attention maps of every LLM layer take."""
    return num_layers * batch * heads * seq * seq * 4


@dataclass
class ActivationCache(Mapping[str, torch.Tensor]):
    """Captured tensors keyed by hook name, tagged with each sample's segment spans."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    layouts: list[SequenceLayout] = field(default_factory=list)
    attention: str = ""
    mode: str = "segments"
    num_layers: int = 0
    num_head_blocks: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            close = [k for k in self.tensors if k.split(".")[-1] == name.split(".")[-1]][:3]
            raise KeyError(f"hook: got {name!r}, not captured; e.g. {close or sorted(self.tensors)[:3]}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def segment_names(self) -> tuple[str, ...]:
        return FINE_SEGMENTS

    def names(self, pattern: str = "*") -> list[str]:
        """Hook names matching a glob (``llm.blocks.*.attn.hook_pattern``), in layer order."""
        found = [k for k in self.tensors if fnmatch.fnmatchcase(k, pattern)]
        return sorted(found, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])

    def stack(self, pattern: str) -> torch.Tensor:
        """Stack the tensors a glob names along a new first axis (e.g. layers)."""
        names = self.names(pattern)
        if not names:
            raise KeyError(f"hook: no captured name matches {pattern!r}")
        return torch.stack([self.tensors[n] for n in names])

    def hidden_states(self) -> tuple[torch.Tensor, ...]:
        """transformers' convention: embeddings, layers 1..L-1, and the final-normed last layer."""
        inner = [self.tensors[llm_hook("resid_post", i)] for i in range(self.num_layers - 1)]
        return (self.tensors[llm_hook("embed")], *inner, self.tensors[llm_hook("norm_final")])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy with every tensor moved (e.g. ``cache.to("cpu")`` after a GPU run)."""
        moved = {k: v.to(device) for k, v in self.tensors.items()}
        return ActivationCache(moved, self.layouts, self.attention, self.mode, self.num_layers,
                               self.num_head_blocks, dict(self.meta))


class _Recorder:
    """Receives tensors from the model during one capture; builds the cache."""

    def __init__(
        self,
        model: VLAAdapter,
        mode: str,
        hidden_states: bool,
        head: bool,
        store_qk: bool,
        keep_head_mean: bool,
        memory_budget: int,
        patches: Mapping[str, Any],
        names: list[str] | None,
    ) -> None:
        self.model = model
        self.mode = mode
        self.want_hidden = hidden_states
        self.want_head = head
        self.store_qk = store_qk
        self.keep_head_mean = keep_head_mean
        self.memory_budget = memory_budget
        self.patches = dict(patches)
        self.names = names
        self.base_kernel = model.config.attn_kernel
        self.cache = ActivationCache(
            mode=mode,
            num_layers=model.config.num_llm_layers,
            num_head_blocks=model.action_head.num_blocks,
        )
        self.allowed: torch.Tensor | None = None
        self.onehot: torch.Tensor | None = None
        self.calls = 0

    # --- bookkeeping ---------------------------------------------------------------------------
    def _keep(self, name: str, tensor: torch.Tensor) -> None:
        if self.names is None or any(fnmatch.fnmatchcase(name, p) for p in self.names):
            self.cache.tensors[name] = tensor.detach()

    def _patch(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        patch = self.patches.get(name)
        if patch is None:
            return tensor
        new = patch(tensor, self.cache.layouts) if callable(patch) else patch.to(tensor.device, tensor.dtype)
        if new.shape != tensor.shape:
            raise InputError(f"patch {name}: got shape {tuple(new.shape)}, expected {tuple(tensor.shape)}")
        return new

    # --- called by the model -------------------------------------------------------------------
    def begin(
        self, layouts: Sequence[SequenceLayout], spec: AttentionSpec, allowed: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise InputError("capture: one forward pass per capture; open a new capture for the next one")
        self.cache.layouts = list(layouts)
        self.cache.attention = spec.label
        self.cache.meta["attention_spec"] = spec.to_config()
        self.allowed = allowed
        batch, seq = allowed.shape[0], allowed.shape[1]
        if self.mode == "full":
            cfg = self.model.config.llm
            need = estimate_full_bytes(self.cache.num_layers, batch, cfg["num_attention_heads"], seq)
            if need > self.memory_budget:
                raise InputError(
                    f"capture: full attention maps need {need:,} bytes ({need / 2**30:.2f} GiB) for batch {batch} x "
                    f"{seq} tokens, over memory_budget={self.memory_budget:,}; use mode='segments' or a larger budget"
                )
        ids = segment_id_matrix(layouts).to(allowed.device)
        self.onehot = F.one_hot(ids, len(FINE_SEGMENTS)).float()  # (B, S, G)
        embeds = self._patch(llm_hook("embed"), embeds)
        if self.want_hidden:
            self._keep(llm_hook("embed"), embeds)
        return embeds

    def layer(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        name = llm_hook("resid_post", layer)
        hidden = self._patch(name, hidden)
        if self.want_hidden:
            self._keep(name, hidden)
        return hidden

    def attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        if self.mode == "none":
            return
        if self.allowed is None or self.onehot is None:
            raise RuntimeError("capture: attention reported before the forward pass began")
        if self.store_qk:
            self._keep(llm_hook("q", layer), query)
            self._keep(llm_hook("k", layer), key)
        probs = attention_probabilities(query, key, self.allowed, scaling)
        summary = summarize_attention(probs, self.onehot)
        for name, tensor in summary.items():
            self._keep(llm_hook(name, layer), tensor)
        if self.keep_head_mean:
            self._keep(llm_hook("head_mean", layer), probs.mean(dim=1))
        if self.mode == "full":
            self._keep(llm_hook("pattern", layer), probs)

    def head_block(self, index: int, weights: torch.Tensor, gate: torch.Tensor) -> None:
        if self.want_head:
            self._keep(head_hook("pattern", index), weights.float())
            self._keep(head_hook("gate", index), gate.float().reshape(()))

    def end(self, final: torch.Tensor, task: torch.Tensor, queries: torch.Tensor, actions: torch.Tensor) -> None:
        if self.want_hidden:
            self._keep(llm_hook("norm_final"), final)
        if self.want_head:
            self._keep(head_hook("task_states"), task)
            self._keep(head_hook("query_states"), queries)
        self._keep(head_hook("actions"), actions)


def attention_probabilities(
    query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor, scaling: float
) -> torch.Tensor:
    """softmax(q k^T * scaling) under the boolean mask, in float32; keys repeated for grouped heads."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1)


def summarize_attention(probs: torch.Tensor, onehot: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-layer summaries of (B, H, S, S) probabilities; ``onehot`` is (B, S, G) segment membership."""
    counts = onehot.sum(dim=1)  # (B, G)
    inv = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    mass_to_segments = torch.matmul(probs, onehot[:, None])  # (B, H, S, G): per query, mass per key segment
    segment = torch.matmul(onehot.transpose(1, 2)[:, None], mass_to_segments) * inv[:, None, :, None]
    profile = torch.matmul(onehot.transpose(1, 2)[:, None], probs) * inv[:, None, :, None]
    entropy = -(probs * torch.log(probs.clamp(min=1e-30))).sum(dim=-1)
    seq = probs.shape[-1]
    later = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=probs.device), diagonal=1)
    future = (probs * later).sum(dim=-1)
    return {"segment_pattern": segment, "query_profile": profile, "entropy": entropy, "future_mass": future}


def _vision_hooks(model: VLAAdapter, recorder: _Recorder) -> list[Any]:
    """Forward hooks recomputing each executed ViT block's attention from its qkv projection."""
    handles = []
    backbone = model.vision_backbone
    for name in FEATURIZERS:
        vit = getattr(backbone, name)
        if vit is None:
            continue
        for index, block in enumerate(vit.blocks):
            attn = block.attn

            key = vision_hook(name, index)

            def hook(module: Any, _inputs: Any, output: torch.Tensor, attn: Any = attn, key: str = key) -> None:
                b, t, _ = output.shape
                qkv = output.reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
                q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
                logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
                recorder._keep(key, torch.softmax(logits, dim=-1))

            handles.append(attn.qkv.register_forward_hook(hook))
    return handles


def _check_names(model: VLAAdapter, names: Any) -> None:
    """Every ``names`` glob must match a hook this model has (a filter that keeps nothing is a typo)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InputError(f"names: got {names!r}, expected a list of hook-name globs")
    vision = {
        f: len(getattr(model.vision_backbone, f).blocks)
        for f in FEATURIZERS
        if getattr(model.vision_backbone, f, None) is not None
    }
    available = hook_names(model.config.num_llm_layers, model.action_head.num_blocks, vision)
    unmatched = [n for n in names if not any(fnmatch.fnmatchcase(a, n) for a in available)]
    if unmatched:
        raise InputError(
            f"names: got {unmatched}, which match no hook of this model, expected globs such as "
            f"'llm.blocks.*.attn.hook_pattern' or 'head.hook_actions' (see vla_lab.interp.hooks)"
        )


def _check_recorded(cache: ActivationCache, names: list[str], mode: str) -> None:
    """After the forward: a glob that kept nothing names a hook this capture's options do not record."""
    empty = [n for n in names if not any(fnmatch.fnmatchcase(k, n) for k in cache.tensors)]
    if empty:
        raise InputError(
            f"names: got {empty}, hooks that capture(mode={mode!r}) with these options does not record; expected "
            "mode='full' for hook_pattern, store_qk=True for hook_q/hook_k, vision_attention=True for vision"
        )


@contextmanager
def capture(
    model: VLAAdapter,
    mode: str = "segments",
    *,
    hidden_states: bool = True,
    head: bool = True,
    vision_attention: bool = False,
    store_qk: bool = False,
    keep_head_mean: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    patches: Mapping[str, Any] | None = None,
    names: list[str] | None = None,
) -> Iterator[ActivationCache]:
    """Record one forward pass of ``model`` into an :class:`ActivationCache`.

    ``mode``: ``"segments"`` (per-segment summaries of every layer's attention), ``"full"`` (also
    the full maps; refused with the estimated bytes above ``memory_budget``) or ``"none"`` (no
    attention). ``patches`` replace hooked tensors (``llm.hook_embed``,
    ``llm.blocks.{l}.hook_resid_post``) for interventions; ``names`` keeps only matching hooks.

        with vla_lab.capture(model, mode="full") as cache:
            model.predict_action(images, instruction, proprio)
        cache["llm.blocks.3.attn.hook_pattern"]
    """
    check_model(model)
    if mode not in MODES:
        raise InputError(f"mode: got {mode!r}, expected one of {MODES}")
    if getattr(model, "_recorder", None) is not None:
        raise InputError("capture: this model is already being captured")
    unknown = [n for n in (patches or {}) if not PATCHABLE.fullmatch(n)]
    if unknown:
        raise InputError(f"patches: got {unknown}, expected llm.hook_embed or llm.blocks.{{l}}.hook_resid_post")
    if names is not None:
        _check_names(model, names)
    recorder = _Recorder(
        model, mode, hidden_states, head, store_qk, keep_head_mean, memory_budget, patches or {}, names
    )
    previous_kernel = model.language_model.config._attn_implementation
    handles = _vision_hooks(model, recorder) if vision_attention else []
    model._recorder = recorder
    model.action_head.recorder = recorder.head_block
    if mode != "none":
        set_attention_kernel(model.language_model, CAPTURE_KERNEL)
    recorder.cache.meta.update(model=model.source)
    try:
        yield recorder.cache
        if names is not None and recorder.calls:
            _check_recorded(recorder.cache, names, mode)
    finally:
        model._recorder = None
        model.action_head.recorder = None
        set_attention_kernel(model.language_model, previous_kernel)
        for h in handles:
            h.remove()


def run_with_cache(
    model: VLAAdapter, *args: Any, mode: str = "segments", **kwargs: Any
) -> tuple[Any, ActivationCache]:
    """``model(*args, **kwargs)`` under :func:`capture`; returns (output, cache).

    Capture options (``hidden_states``, ``head``, ``vision_attention``, ``store_qk``,
    ``keep_head_mean``, ``memory_budget``, ``patches``, ``names``) are taken from ``kwargs``; any other
    keyword must be one of :meth:`VLAAdapter.forward`'s.
    """
    accepted = [p for p in inspect.signature(check_model(model).forward).parameters if p != "self"]
    unknown = [k for k in kwargs if k not in _CAPTURE_OPTIONS and k not in accepted]
    if unknown:
        raise InputError(f"{unknown[0]}: got an unknown keyword argument, expected a capture option "
                         f"{sorted(_CAPTURE_OPTIONS)} or an argument of the model's forward {accepted}")
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _CAPTURE_OPTIONS}
    with capture(model, mode, **options) as cache, torch.no_grad():
        out = model(*args, **kwargs)
    return out, cache


_CAPTURE_OPTIONS = {
    "hidden_states", "head", "vision_attention", "store_qk", "keep_head_mean", "memory_budget", "patches", "names"
}
