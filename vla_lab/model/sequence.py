"""The LLM's input sequence: segment spans, the assembly of a batch, and attention masks as tensors.

Released layout (SPEC section 1), for one sample with NP patches and an L-token prompt::

    position  0      1 .. NP         NP+1 .. NP+L-1    NP+L .. NP+L+Q-1    NP+L+Q   ...
    segment   tok0   vision.0, ...   text              action_queries      stop     padding

``tok0`` is the first prompt token (Qwen2.5 adds no BOS): ``<|im_start|>`` with the ``qwen-chat`` prompt of
released checkpoints (L = 56 for a libero_spatial instruction), ``In`` with the ``openvla`` prompt (L = 31);
``text`` is the rest of the prompt, so a layout follows from the ids alone. Batches are right-padded: every sample
keeps the positions it would have alone, and padding follows its STOP token. An :class:`AssemblyPlan`
holds everything that depends only on a batch's prompt lengths: the layouts, where every embedding
goes, and which positions the action head reads; both the model and its fast path use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vla_lab.config.attention import FINE_INDEX, AttentionSpec
from vla_lab.config.registry import HIDDEN_OFFSETS
from vla_lab.errors import InputError


@dataclass(frozen=True)
class Span:
    """Half-open interval ``[start, stop)`` of sequence positions."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    def positions(self) -> range:
        return range(self.start, self.stop)


@dataclass(frozen=True)
class SequenceLayout:
    """Where each segment of one sample sits in the (padded) LLM sequence.

    This is the contract between the model and the capture / analysis layers.
    """

    tok0: Span
    vision: tuple[Span, ...]
    text: Span
    action_queries: Span
    stop: Span
    padding: Span
    patch_grids: tuple[tuple[int, int], ...]

    @classmethod
    def build(
        cls,
        prompt_length: int,
        patches_per_image: Iterable[int],
        patch_grids: Iterable[tuple[int, int]],
        num_action_queries: int,
        padded_length: int | None = None,
    ) -> SequenceLayout:
        """Layout of a sample whose prompt has ``prompt_length`` tokens (``tok0`` included)."""
        patches = list(patches_per_image)
        vision, pos = [], 1
        for n in patches:
            vision.append(Span(pos, pos + n))
            pos += n
        text = Span(pos, pos + prompt_length - 1)
        queries = Span(text.stop, text.stop + num_action_queries)
        stop = Span(queries.stop, queries.stop + 1)
        total = stop.stop if padded_length is None else padded_length
        if total < stop.stop:
            raise ValueError(f"padded_length: got {padded_length}, expected at least {stop.stop}")
        return cls(Span(0, 1), tuple(vision), text, queries, stop, Span(stop.stop, total), tuple(patch_grids))

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Padded sequence length."""
        return self.padding.stop

    @property
    def num_tokens(self) -> int:
        """Non-padding tokens."""
        return self.stop.stop

    @property
    def num_patches(self) -> int:
        return sum(len(s) for s in self.vision)

    @property
    def num_images(self) -> int:
        return len(self.vision)

    @property
    def prompt_length(self) -> int:
        """Prompt tokens including ``tok0`` (upstream's L)."""
        return len(self.text) + 1

    @property
    def vision_span(self) -> Span:
        return Span(self.vision[0].start, self.vision[-1].stop)

    # --- lookups -------------------------------------------------------------------------------
    def segments(self, fine: bool = True) -> dict[str, Span]:
        """Segment name -> span, in sequence order (``vision.{i}`` per image when ``fine``)."""
        out: dict[str, Span] = {"tok0": self.tok0}
        if fine:
            out.update({f"vision.{i}": s for i, s in enumerate(self.vision)})
        else:
            out["vision"] = self.vision_span
        out.update(text=self.text, action_queries=self.action_queries, stop=self.stop, padding=self.padding)
        return out

    def span(self, name: str) -> Span:
        """Span of a coarse or fine segment name."""
        if name == "vision":
            return self.vision_span
        spans = self.segments(fine=True)
        if name not in spans:
            raise KeyError(f"segment: got {name!r}, expected one of {['vision', *spans]}")
        return spans[name]

    def segment_ids(self) -> torch.Tensor:
        """Fine segment id (index into :data:`FINE_SEGMENTS`) of every position, shape (length,)."""
        ids = torch.empty(self.length, dtype=torch.long)
        for name, span in self.segments(fine=True).items():
            ids[span.slice] = FINE_INDEX[name]
        return ids

    def segment_of(self, position: int) -> str:
        for name, span in self.segments(fine=True).items():
            if span.start <= position < span.stop:
                return name
        raise IndexError(f"position: got {position}, expected 0 <= position < {self.length}")

    def head_input_positions(self, offset: str = "released") -> tuple[Span, Span]:
        """Positions the action head reads: (task states, action-query states).

        ``released`` reproduces upstream's inference slices ``h[:, 0:NP]`` and
        ``h[:, NP+L-1 : NP+L+Q-1]`` (one position left of the patches and of the queries);
        ``aligned`` reads the patches and the queries themselves.
        """
        if offset not in HIDDEN_OFFSETS:
            raise InputError(f"hidden_offset: got {offset!r}, expected one of {HIDDEN_OFFSETS}")
        shift = 1 if offset == "released" else 0
        vision = self.vision_span
        return (
            Span(vision.start - shift, vision.stop - shift),
            Span(self.action_queries.start - shift, self.action_queries.stop - shift),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description: segment -> [start, stop], plus patch grids."""
        out: dict[str, Any] = {name: [s.start, s.stop] for name, s in self.segments(fine=True).items()}
        out["patch_grids"] = [list(g) for g in self.patch_grids]
        out["length"] = self.length
        return out


# ---------------------------------------------------------------------------------------------
# Assembly: [tok0, patches, rest of the prompt, action queries, STOP] per sample, right-padded
# ---------------------------------------------------------------------------------------------


def head_read_index(layouts: Sequence[SequenceLayout], offset: str, device: Any = None) -> tuple[Span, torch.Tensor]:
    """Where the head reads: the task span (the same for every sample) and (B, Q) action-query positions."""
    spans = [layout.head_input_positions(offset) for layout in layouts]
    starts = torch.tensor([queries.start for _, queries in spans])
    index = starts[:, None] + torch.arange(len(spans[0][1]))[None]
    return spans[0][0], index.to(device)


def read_head_positions(
    hidden: torch.Tensor, task: Span, query_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions :func:`head_read_index` names, read from one hidden state (B, S, C)."""
    index = query_index.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[2])
    return hidden[:, task.slice], hidden.gather(1, index)


def stack_head_inputs(per_state: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head positions of consecutive hidden states, stacked: (B, hidden_index, K, C) task and queries."""
    tasks, queries = zip(*per_state)
    return torch.stack(tasks, dim=1), torch.stack(queries, dim=1)


@dataclass(frozen=True, eq=False)
class AssemblyPlan:
    """Everything about a batch's sequence that depends only on its prompt lengths.

    ``order[b, s]`` is the index, in the concatenation ``[tok0, patches, prompt[1:], queries, STOP]``
    of sample b (prompt padding included), of the embedding that goes to sequence position s: prompt
    padding moves behind STOP. ``task`` and ``query_index`` are the positions the action head reads
    under ``offset`` (see :meth:`SequenceLayout.head_input_positions`).
    """

    lengths: tuple[int, ...]
    max_len: int
    offset: str
    layouts: tuple[SequenceLayout, ...]
    order: torch.Tensor
    task: Span
    query_index: torch.Tensor

    @classmethod
    def build(
        cls,
        lengths: Sequence[int],
        max_len: int,
        patches_per_image: int,
        num_images: int,
        grid: tuple[int, int],
        num_queries: int,
        offset: str = "released",
        device: Any = None,
    ) -> AssemblyPlan:
        """The plan of a batch whose prompts have ``lengths`` tokens, right-padded to ``max_len``."""
        lengths = tuple(int(n) for n in lengths)
        if not lengths or min(lengths) < 1 or max(lengths) > max_len:
            raise InputError(f"prompt lengths: got {list(lengths)}, expected 1 <= length <= {max_len} per sample")
        num_patches = patches_per_image * num_images
        seq = num_patches + max_len + num_queries + 1
        pos = torch.arange(seq)[None]
        is_pad = (pos >= num_patches + torch.tensor(lengths)[:, None]) & (pos < num_patches + max_len)
        order = torch.argsort(torch.where(is_pad, pos + seq, pos), dim=1, stable=True)
        layouts = tuple(
            SequenceLayout.build(n, [patches_per_image] * num_images, [grid] * num_images, num_queries, seq)
            for n in lengths
        )
        task, query_index = head_read_index(layouts, offset, device)
        return cls(lengths, max_len, offset, layouts, order.to(device), task, query_index)

    @property
    def length(self) -> int:
        """Padded sequence length."""
        return int(self.order.shape[1])

    def assemble(
        self, text: torch.Tensor, patches: torch.Tensor, queries: torch.Tensor, stop: torch.Tensor
    ) -> torch.Tensor:
        """Prompt (B, max_len, C), patch (B, NP, C), query (B, Q, C) and STOP (B, 1, C) embeddings -> (B, S, C)."""
        raw = torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:], queries, stop], dim=1)
        return raw.gather(1, self.order[..., None].expand(-1, -1, raw.shape[2]))

    def allowed(self, spec: AttentionSpec) -> torch.Tensor:
        """The (B, S, S) boolean mask of ``spec`` on this batch's layouts (:func:`allowed_matrix`)."""
        return allowed_matrix(spec, segment_id_matrix(self.layouts).to(self.order.device))

    def head_positions(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One hidden state (B, S, C) -> what the head reads of it: task (B, K_t, C), queries (B, Q, C)."""
        return read_head_positions(hidden, self.task, self.query_index)


# ---------------------------------------------------------------------------------------------
# Attention masks as tensors
# ---------------------------------------------------------------------------------------------


def segment_id_matrix(layouts: Sequence[SequenceLayout]) -> torch.Tensor:
    """(B, S) fine segment ids of a right-padded batch."""
    return torch.stack([lay.segment_ids() for lay in layouts])


def allowed_matrix(spec: AttentionSpec, segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, S, S) matrix: True where query position i may attend to key position j."""
    _, seq = segment_ids.shape
    device = segment_ids.device
    pos = torch.arange(seq, device=device)
    base = pos[None, :, None] >= pos[None, None, :] if spec.base == "causal" else torch.ones(
        1, seq, seq, dtype=torch.bool, device=device
    )
    table = spec.override_table().to(device)
    override = table[segment_ids[:, :, None], segment_ids[:, None, :]]
    allowed = torch.where(override >= 0, override == 1, base)
    pad = FINE_INDEX["padding"]
    is_pad = segment_ids == pad
    return keep_own_position(allowed & ~is_pad[:, None, :])


def keep_own_position(allowed: torch.Tensor) -> torch.Tensor:
    """Queries that would see nothing (padding rows, or everything blocked) keep their own position, so
    that softmax stays finite; such rows are never read as outputs."""
    empty = ~allowed.any(dim=-1)
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)[None]
    return allowed | (empty[:, :, None] & eye)


def block_pairs(allowed: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """``allowed`` (B, S, S) with the (query, key) position pairs where ``block`` is True closed as well."""
    if block.shape != allowed.shape or block.dtype != torch.bool:
        raise InputError(f"block: got a {block.dtype} tensor of shape {tuple(block.shape)}, "
                         f"expected torch.bool of shape {tuple(allowed.shape)} (batch, query position, key position)")
    return keep_own_position(allowed & ~block.to(allowed.device))


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, S, S) additive float mask: 0 where allowed, the dtype's minimum elsewhere."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    low = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, low)[:, None]


def mask_for_kernel(allowed: torch.Tensor, kernel: str, dtype: torch.dtype) -> torch.Tensor:
    """Our (B, S, S) boolean mask in the form a transformers kernel takes: boolean for SDPA, additive for eager."""
    if kernel == "eager":
        return additive_mask(allowed, dtype)
    return allowed[:, None]
