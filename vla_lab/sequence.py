"""The LLM's input sequence: segment spans and attention masks.

Released layout (SPEC section 1), for one sample with NP patches and an L-token prompt::

    position  0      1 .. NP         NP+1 .. NP+L-1    NP+L .. NP+L+Q-1    NP+L+Q   ...
    segment   tok0   vision.0, ...   text              action_queries      stop     padding

``tok0`` is the first prompt token (Qwen2.5 adds no BOS). Batches are right-padded: every sample
keeps the positions it would have alone, and padding follows its STOP token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from vla_lab.errors import ConfigError

#: Coarse segment names, in sequence order. ``vision`` stands for every ``vision.{i}``.
SEGMENTS = ("tok0", "vision", "text", "action_queries", "stop", "padding")
#: The non-padding segments, the ones analyses report on.
CONTENT_SEGMENTS = SEGMENTS[:-1]
MAX_IMAGES = 3
#: Fine segment names: one vision segment per image. The index is the segment id used in masks.
FINE_SEGMENTS = ("tok0", *(f"vision.{i}" for i in range(MAX_IMAGES)), "text", "action_queries", "stop", "padding")
_FINE_INDEX = {name: i for i, name in enumerate(FINE_SEGMENTS)}


def expand_segment(name: str) -> list[str]:
    """Fine segment names covered by ``name`` (``vision`` covers every image)."""
    if name == "vision":
        return [f"vision.{i}" for i in range(MAX_IMAGES)]
    if name in _FINE_INDEX:
        return [name]
    raise ConfigError(f"segment: got {name!r}, expected one of {list(SEGMENTS) + list(FINE_SEGMENTS[1:4])}")


def coarse_segment(name: str) -> str:
    """``vision.1`` -> ``vision``; other names unchanged."""
    return "vision" if name.startswith("vision") else name


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
            ids[span.slice] = _FINE_INDEX[name]
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
        shift = {"released": 1, "aligned": 0}[offset]
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
# Attention masks
# ---------------------------------------------------------------------------------------------

_BASES = ("causal", "bidirectional")


@dataclass(frozen=True)
class AttentionSpec:
    """Which query segment may attend to which key segment.

    ``base`` is ``causal`` (released VLA-Adapter: Qwen2 was not patched, SPEC section 2) or
    ``bidirectional`` (OpenVLA-OFT: every token sees every non-pad token). ``allow`` then opens and
    ``block`` then closes (query segment, key segment) pairs on top of the base; ``block`` wins.
    Padding keys are never visible. A query left with no visible key keeps its own position.
    """

    base: str = "causal"
    allow: tuple[tuple[str, str], ...] = ()
    block: tuple[tuple[str, str], ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if self.base not in _BASES:
            raise ConfigError(f"attention.base: got {self.base!r}, expected one of {_BASES}")
        for field_name in ("allow", "block"):
            for pair in getattr(self, field_name):
                if len(pair) != 2:
                    raise ConfigError(
                        f"attention.{field_name}: got {pair!r}, expected a (query segment, key segment) pair"
                    )
                for seg in pair:
                    expand_segment(seg)

    @classmethod
    def parse(cls, value: Any) -> AttentionSpec:
        """From a name (``causal``, ``bidirectional``, ``prefix-lm``), a dict or an AttentionSpec."""
        if isinstance(value, AttentionSpec):
            return value
        if isinstance(value, str):
            if value in NAMED_MASKS:
                return NAMED_MASKS[value]
            raise ConfigError(f"attention: got {value!r}, expected one of {sorted(NAMED_MASKS)} or a custom spec")
        if isinstance(value, dict):
            unknown = set(value) - {"base", "allow", "block", "name"}
            if unknown:
                raise ConfigError(f"attention: unknown key(s) {sorted(unknown)}, expected base/allow/block/name")
            return cls(
                base=value.get("base", "causal"),
                allow=tuple(tuple(p) for p in value.get("allow", ())),
                block=tuple(tuple(p) for p in value.get("block", ())),
                name=value.get("name"),
            )
        raise ConfigError(f"attention: got {type(value).__name__}, expected a name, a dict or an AttentionSpec")

    def to_config(self) -> str | dict[str, Any]:
        """JSON form: the name for named masks, else a dict."""
        if self.name is not None and NAMED_MASKS.get(self.name) == self:
            return self.name
        return {
            "base": self.base,
            "allow": [list(p) for p in self.allow],
            "block": [list(p) for p in self.block],
            "name": self.name,
        }

    @property
    def label(self) -> str:
        """Short human-readable name."""
        if self.name:
            return self.name
        parts = [self.base]
        parts += [f"+{q}->{k}" for q, k in self.allow]
        parts += [f"-{q}->{k}" for q, k in self.block]
        return " ".join(parts)

    def with_blocked(self, *pairs: tuple[str, str]) -> AttentionSpec:
        """A copy that also blocks ``pairs``."""
        return AttentionSpec(self.base, self.allow, self.block + tuple(pairs))

    def override_table(self) -> torch.Tensor:
        """(fine segments x fine segments) int table: -1 keep base, 0 block, 1 allow."""
        n = len(FINE_SEGMENTS)
        table = torch.full((n, n), -1, dtype=torch.int8)
        for value, pairs in ((1, self.allow), (0, self.block)):
            for q, k in pairs:
                for qf in expand_segment(q):
                    for kf in expand_segment(k):
                        table[_FINE_INDEX[qf], _FINE_INDEX[kf]] = value
        return table


_PREFIX = ("tok0", "vision", "text")
NAMED_MASKS: dict[str, AttentionSpec] = {
    "causal": AttentionSpec("causal", name="causal"),
    "bidirectional": AttentionSpec("bidirectional", name="bidirectional"),
    # The prompt and the images see each other fully; queries and STOP stay causal.
    "prefix-lm": AttentionSpec("causal", allow=tuple((q, k) for q in _PREFIX for k in _PREFIX), name="prefix-lm"),
}


def segment_id_matrix(layouts: list[SequenceLayout]) -> torch.Tensor:
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
    pad = _FINE_INDEX["padding"]
    is_pad = segment_ids == pad
    allowed = allowed & ~is_pad[:, None, :]
    # Queries that would see nothing (padding rows, or everything blocked) keep their own position,
    # so that softmax stays finite; such rows are never read as outputs.
    empty = ~allowed.any(dim=-1)
    eye = torch.eye(seq, dtype=torch.bool, device=device)[None]
    return allowed | (empty[:, :, None] & eye)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, S, S) additive float mask: 0 where allowed, the dtype's minimum elsewhere."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    low = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, low)[:, None]
