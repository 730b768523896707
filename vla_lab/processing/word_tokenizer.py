"""Tiny deterministic byte-level BPE tokenizers in Qwen2's file layout, for closed vocabularies.

:func:`write_word_tokenizer_files` trains ``tokenizers``' BPE with Qwen2's normaliser and pre-tokeniser on
a list of words (and the In/Out prompt around them) until every word is a single token, with or
without its leading space, and writes vocab.json, merges.txt and tokenizer_config.json. The built-in
``tabletop`` and ``libero`` tokenizers were made this way; they ship as files
(:func:`vla_lab.processing.builtin_tokenizer`), so no install trains anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vla_lab import files
from vla_lab.processing.bpe import QWEN2_PRETOKENIZE_PATTERN, bytes_to_unicode
from vla_lab.processing.processor import build_prompt

EOS_TOKEN = "<|endoftext|>"


def _corpus(words: Sequence[str]) -> list[str]:
    prompt = build_prompt(" ".join(words), "openvla")
    # Bare words too, so that a word is one token with or without its leading space.
    return [prompt, *words, " ".join(words)]


def train_word_bpe(words: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The byte alphabet and the merges learnt by ``tokenizers``' BpeTrainer on ``words``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # A vocabulary budget far above what the corpus can use: merging runs until every word is one token.
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(words), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return list(bytes_to_unicode().values()), merges  # type: ignore[return-value]


def write_word_tokenizer_files(directory: str | Path, words: Sequence[str]) -> Path:
    """Write the tokenizer of ``words`` (vocab.json, merges.txt, tokenizer_config.json) into ``directory``.

    Ids 0-255 are the byte tokens in GPT-2's byte-to-unicode order (as in Qwen's vocabulary, so id 2
    is ``#``), then one id per merge in merge order, then ``<|endoftext|>`` (eos and pad).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet, merges = train_word_bpe(words)
    vocab = {token: i for i, token in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    eos_id = len(vocab)
    config = {
        "add_bos_token": False,
        "added_tokens_decoder": {
            str(eos_id): {
                "content": EOS_TOKEN,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "model_max_length": 4096,
        "tokenizer_class": "Qwen2Tokenizer",
    }
    files.write_text(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    files.write_text(directory / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    files.write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    return directory
