"""The tokenizer of vla-lab's LIBERO models: every word of every LIBERO instruction is one token.

:data:`VOCABULARY` is the 79 words of the 130 tasks of the five suites (a test checks it against the
installed benchmark); the files ship in ``vla_lab/processing/tokenizers/libero`` and
:func:`write_libero_tokenizer_files` is how they were made (a test checks that it reproduces them).
"""

from __future__ import annotations

from pathlib import Path

from vla_lab.processing import QwenTokenizer, builtin_tokenizer
from vla_lab.processing.word_tokenizer import write_word_tokenizer_files

VOCABULARY = (
    "alphabet", "and", "at", "back", "basket", "bbq", "between", "black", "book", "both", "bottle", "bottom",
    "bowl", "box", "butter", "cabinet", "caddy", "center", "cheese", "chocolate", "close", "compartment",
    "cookie", "cream", "drawer", "dressing", "from", "front", "frying", "in", "inside", "it", "juice",
    "ketchup", "left", "microwave", "middle", "milk", "moka", "mug", "next", "of", "off", "on", "open",
    "orange", "pan", "pick", "place", "plate", "pot", "pots", "pudding", "push", "put", "rack", "ramekin",
    "red", "right", "salad", "sauce", "shelf", "soup", "stack", "stove", "table", "the", "them", "to",
    "tomato", "top", "tray", "turn", "under", "up", "white", "wine", "wooden", "yellow",
)


def write_libero_tokenizer_files(directory: str | Path) -> Path:
    """Write the LIBERO tokenizer's vocab.json, merges.txt and tokenizer_config.json into ``directory``."""
    return write_word_tokenizer_files(directory, list(VOCABULARY))


def build_libero_tokenizer() -> QwenTokenizer:
    """The LIBERO tokenizer (the shipped files)."""
    return builtin_tokenizer("libero")
