"""Tokenizers read from files: a checkpoint directory in the Qwen2 layout, and the built-in tokenizers a model
without tokenizer files uses (Qwen2.5's, and the small vocabularies shipped in ``vla_lab/processing/tokenizers``
for the tabletop world and LIBERO's instructions)."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

from vla_lab import files
from vla_lab.config.registry import TOKENIZERS
from vla_lab.errors import CheckpointError, ConfigError
from vla_lab.processing.bpe import AddedToken, HFEngine, hf_bpe_tokenizer
from vla_lab.processing.tokenizer import (
    ADDED_TOKENS_FILE,
    CONFIG_FILE,
    MERGES_FILE,
    SPECIAL_MAP_FILE,
    TOKENIZER_JSON,
    VOCAB_FILE,
    QwenTokenizer,
    load_qwen25_tokenizer,
)


def _read_json(path: Path) -> dict[str, Any]:
    """A tokenizer file's JSON object (every tokenizer JSON file holds one)."""
    files.check_regular_file(path, path.name, "a JSON file", CheckpointError)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name}: got a JSON {type(data).__name__}, expected a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_added_tokens(directory: Path, config: dict[str, Any]) -> list[AddedToken]:
    """Added tokens from ``tokenizer_config.json["added_tokens_decoder"]`` then ``added_tokens.json``."""
    found: dict[str, AddedToken] = {}
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise CheckpointError(f"{CONFIG_FILE}: added_tokens_decoder is a {type(decoder).__name__}, expected an object")
    for key, entry in decoder.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not str(key).isdigit():
            raise CheckpointError(f"{CONFIG_FILE}: added_tokens_decoder[{key!r}] is {entry!r}, expected id -> token")
        flags = {f: bool(entry.get(f, False)) for f in ("lstrip", "rstrip", "single_word", "normalized")}
        found[entry["content"]] = AddedToken(
            entry["content"], int(key), special=bool(entry.get("special", True)), **flags
        )
    path = directory / ADDED_TOKENS_FILE
    if files.present(path):
        for content, token_id in _read_json(path).items():
            if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
                raise CheckpointError(f"{path.name}: {content!r} has id {token_id!r}, expected a non-negative integer")
            known = found.get(content)
            if known is None:
                found[content] = AddedToken(content, int(token_id))
            elif known.id != int(token_id):
                raise CheckpointError(
                    f"{path} gives {content!r} id {token_id} but {CONFIG_FILE} gives id {known.id}"
                )
    return sorted(found.values(), key=lambda t: t.id)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    files.check_regular_file(path, path.name, "a text file of merges", CheckpointError)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise CheckpointError(f"{path} line {number} is {line!r}; expected two space-separated tokens")
        merges.append((parts[0], parts[1]))
    return merges



def load_tokenizer_from_files(directory: str | Path) -> QwenTokenizer:
    """A tokenizer from a checkpoint directory in the Qwen2 layout, without ``AutoTokenizer``.

    Uses ``tokenizer.json`` when present; otherwise builds byte-level BPE from ``vocab.json`` + ``merges.txt``
    with NFC, Qwen2's split regex and the added tokens of ``added_tokens.json`` / ``tokenizer_config.json``.
    """
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"tokenizer directory {root} does not exist")
    config_path = root / CONFIG_FILE
    config = _read_json(config_path) if files.present(config_path) else {}
    map_path = root / SPECIAL_MAP_FILE
    special_map = _read_json(map_path) if files.present(map_path) else {}

    json_path = root / TOKENIZER_JSON
    if files.present(json_path):
        from tokenizers import Tokenizer

        files.check_regular_file(json_path, TOKENIZER_JSON, "a tokenizers JSON file", CheckpointError)
        try:
            tokenizer = Tokenizer.from_file(str(json_path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"{json_path} cannot be loaded: {exc}") from exc
        added = [
            AddedToken(
                t.content,
                token_id,
                special=t.special,
                lstrip=t.lstrip,
                rstrip=t.rstrip,
                single_word=t.single_word,
                normalized=t.normalized,
            )
            for token_id, t in sorted(tokenizer.get_added_tokens_decoder().items())
        ]
    else:
        for name in (VOCAB_FILE, MERGES_FILE):
            if not files.present(root / name):
                raise CheckpointError(
                    f"tokenizer file {name} is missing from {root} (no {TOKENIZER_JSON} either)"
                )
        added = _read_added_tokens(root, config)
        vocab_path = root / VOCAB_FILE
        vocab = _read_json(vocab_path)
        bad = next(((t, i) for t, i in vocab.items() if not isinstance(i, int) or isinstance(i, bool) or i < 0), None)
        if bad is not None:
            raise CheckpointError(f"{VOCAB_FILE}: token {bad[0]!r} has id {bad[1]!r}, expected a non-negative integer")
        tokenizer = hf_bpe_tokenizer(vocab, _read_merges(root / MERGES_FILE), added, vocab_path)

    def special(key: str) -> str | None:
        value = _token_content(config.get(key))
        return value if value is not None else _token_content(special_map.get(key))

    eos, pad = special("eos_token"), special("pad_token")
    for key, content in (("eos_token", eos), ("pad_token", pad)):
        if content is not None and tokenizer.token_to_id(content) is None:
            raise CheckpointError(f"{key} {content!r} of {root} is not in the vocabulary")
    return QwenTokenizer(
        HFEngine(tokenizer, added),
        added,
        eos_token=eos,
        pad_token=pad,
        model_max_length=config.get("model_max_length"),
        chat_template=config.get("chat_template"),
        name_or_path=str(root),
    )


def builtin_tokenizer(name: str) -> QwenTokenizer:
    """A tokenizer named by ``VLAConfig.tokenizer``: ``qwen2.5`` (offline Qwen2.5), ``tabletop`` (the
    synthetic world's small vocabulary) or ``libero`` (the words of LIBERO's instructions); the small ones
    are read from the files shipped in this package."""
    if name not in TOKENIZERS:
        raise ConfigError(f"tokenizer: got {name!r}, expected one of {TOKENIZERS}")
    if name == "qwen2.5":
        return load_qwen25_tokenizer()
    directory = Path(str(importlib.resources.files("vla_lab.processing") / "tokenizers" / name))
    tokenizer = load_tokenizer_from_files(directory)
    tokenizer.name_or_path = f"vla_lab built-in {name} tokenizer"
    return tokenizer


__all__ = ["builtin_tokenizer", "load_tokenizer_from_files"]
