"""The vocabulary of the LLM sequence and of the head's keys, and which segment may attend to which.

Segments, in sequence order (SPEC section 1): ``tok0`` (the first prompt token: ``<|im_start|>`` with the chat
prompt of released checkpoints, ``In`` with the In/Out prompt), ``vision.{i}`` (the
patches of image i; ``vision`` stands for all of them), ``text`` (the rest of the prompt),
``action_queries``, ``stop`` and ``padding``. The action head's keys fall into :data:`KEY_GROUPS`.
An :class:`AttentionSpec` is the configuration of an LLM mask; :mod:`vla_lab.model.sequence` turns it
into tensors for a concrete layout.
"""

from __future__ import annotations

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
FINE_INDEX = {name: i for i, name in enumerate(FINE_SEGMENTS)}
#: The key groups of every bridge-attention block of the action head, in key order: the chunk tokens
#: themselves, the LLM's action-query states, the projected proprio token (when the model has one) and
#: the task states (LLM states at the patch positions, their logits multiplied by the gate).
KEY_GROUPS = ("self", "action_queries", "proprio", "task")


def expand_segment(name: str) -> list[str]:
    """Fine segment names covered by ``name`` (``vision`` covers every image)."""
    if name == "vision":
        return [f"vision.{i}" for i in range(MAX_IMAGES)]
    if name in FINE_INDEX:
        return [name]
    raise ConfigError(f"segment: got {name!r}, expected one of {list(SEGMENTS) + list(FINE_SEGMENTS[1:4])}")


def coarse_segment(name: str) -> str:
    """``vision.1`` -> ``vision``; other names unchanged."""
    return "vision" if name.startswith("vision") else name


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
                allow=tuple((str(q), str(k)) for q, k in _pairs(value.get("allow", ()), "allow")),
                block=tuple((str(q), str(k)) for q, k in _pairs(value.get("block", ()), "block")),
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
                        table[FINE_INDEX[qf], FINE_INDEX[kf]] = value
        return table


def _pairs(value: Any, field_name: str) -> list[tuple[Any, Any]]:
    pairs = []
    for pair in value:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"attention.{field_name}: got {pair!r}, expected a (query segment, key segment) pair")
        pairs.append((pair[0], pair[1]))
    return pairs


_PREFIX = ("tok0", "vision", "text")
NAMED_MASKS: dict[str, AttentionSpec] = {
    "causal": AttentionSpec("causal", name="causal"),
    "bidirectional": AttentionSpec("bidirectional", name="bidirectional"),
    # The prompt and the images see each other fully; queries and STOP stay causal.
    "prefix-lm": AttentionSpec("causal", allow=tuple((q, k) for q in _PREFIX for k in _PREFIX), name="prefix-lm"),
}

#: What ``VLAConfig.attention`` and every ``attention=`` argument accept.
AttentionLike = str | dict[str, Any] | AttentionSpec
