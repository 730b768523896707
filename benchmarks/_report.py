"""What every benchmark script does with its result: print it as JSON and, with ``--out``, write it there."""

from __future__ import annotations

from typing import Any

from vla_lab import files


def emit(result: dict[str, Any], out: str | None) -> None:
    """Print ``result`` as JSON; also write it (replaced atomically) to ``out`` when given."""
    text = files.dumps(result)
    print(text)
    if out:
        files.write_text(out, text + "\n")
