"""JSON round-trip shared by every configuration dataclass."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Self

from vla_lab.errors import ConfigError


class JSONConfig:
    """JSON round-trip for configuration dataclasses; unknown fields are refused with one line."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}, expected a subset of {sorted(known)}")
        return cls(**copy.deepcopy(data))

    def to_json(self, path: str | Path | None = None) -> str:
        """The JSON text (also written to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Self:
        """From JSON text or a file holding it."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))
