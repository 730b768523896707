"""The tabletop world's tokenizer: a tiny deterministic byte-level BPE in Qwen2's file layout.

Every instruction word (and every word of the released prompt) is a single token. The files are shipped
in ``vla_lab/processing/tokenizers/tabletop`` and read with the other built-in tokenizers
(:func:`vla_lab.processing.builtin_tokenizer`), so every install gets the same 381 ids whatever its
``tokenizers`` version; :func:`write_world_tokenizer_files` is how they were made (re-run it after
changing the world's vocabulary; a test checks that it still reproduces the shipped files).
"""

from __future__ import annotations

from pathlib import Path

from vla_lab.processing import QwenTokenizer, builtin_tokenizer
from vla_lab.processing.word_tokenizer import write_word_tokenizer_files
from vla_lab.worlds.tabletop.scenes import VOCABULARY


def write_world_tokenizer_files(directory: str | Path) -> Path:
    """Write the world tokenizer's vocab.json, merges.txt and tokenizer_config.json into ``directory``
    (:func:`vla_lab.processing.word_tokenizer.write_word_tokenizer_files` of the world's vocabulary)."""
    return write_word_tokenizer_files(directory, list(VOCABULARY))


def build_world_tokenizer() -> QwenTokenizer:
    """The world's tokenizer (the shipped files, as checkpoints load them)."""
    return builtin_tokenizer("tabletop")
