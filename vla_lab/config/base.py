"""JSON round-trip shared by every configuration dataclass."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Self

from vla_lab.errors import ConfigError
from vla_lab.files import write_text


class JSONConfig:
    """JSON round-trip for configuration dataclasses; unknown fields are refused with one line."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: got {type(data).__name__}, expected a JSON object of fields")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}, expected a subset of {sorted(known)}")
        try:
            return cls(**copy.deepcopy(data))
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            # A field of the wrong type that validation compared or converted before naming it.
            raise ConfigError(f"{cls.__name__}: a field has the wrong type or value ({exc})") from None

    def to_json(self, path: str | Path | None = None) -> str:
        """The JSON text (also written, atomically, to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Self:
        """From JSON text or a file holding it."""
        return cls.from_dict(cls.json_fields(text_or_path))

    @classmethod
    def json_fields(cls, text_or_path: str | Path) -> Any:
        """The JSON value of ``text_or_path`` (JSON text or a file holding it), not yet checked."""
        text = str(text_or_path)
        source = "JSON text"
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            source = str(path)
            if not path.is_file():
                raise ConfigError(f"{cls.__name__}: got {text!r}, expected a JSON file or JSON object text")
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{cls.__name__}: {source} cannot be read ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.__name__}: {source} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return data
