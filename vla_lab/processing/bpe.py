"""Byte-level BPE engines behind :class:`vla_lab.processing.tokenizer.QwenTokenizer`.

Two engines give identical ids on Qwen2.5's vocabulary: :class:`TiktokenEngine` (rank-based BPE run by
``tiktoken``, with HF's added-token splitting and NFC in front) and :class:`HFEngine` (a
``tokenizers.Tokenizer`` assembled as transformers' Qwen2 converter does, :func:`hf_bpe_tokenizer`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vla_lab.errors import CheckpointError

#: Qwen2's pre-tokenisation regex (digits are split one by one).
QWEN2_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)



@dataclass(frozen=True)
class AddedToken:
    """A token matched verbatim in raw text before normalisation and BPE (HF's ``AddedToken``)."""

    content: str
    id: int
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False

    def to_config(self) -> dict[str, Any]:
        """The entry of ``tokenizer_config.json["added_tokens_decoder"]`` for this token."""
        return {
            "content": self.content,
            "lstrip": self.lstrip,
            "normalized": self.normalized,
            "rstrip": self.rstrip,
            "single_word": self.single_word,
            "special": self.special,
        }


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character, used by byte-level BPE files."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@functools.lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _bytes_to_token_string(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _token_string_to_bytes(token: str) -> bytes | None:
    table = _unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return None


@functools.lru_cache(maxsize=1)
def _hf_nfc() -> Any:
    """HF ``tokenizers``' NFC normaliser: the one Qwen2.5's ``tokenizer.json`` runs.

    It differs from ``unicodedata.normalize("NFC", ...)`` only in that its Unicode tables predate some
    combining marks (98 of them, e.g. U+089F, U+09FE, U+1AC3), which it leaves unreordered. Using it here
    keeps both engines id-for-id identical.
    """
    from tokenizers import normalizers

    return normalizers.NFC()


def _bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run rank-ordered BPE on ``token``'s bytes using only merges ranked below ``max_rank``."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


# ---------------------------------------------------------------------------------------------
# Engines: each turns texts into ids and back; QwenTokenizer adds the transformers-like surface.
# ---------------------------------------------------------------------------------------------


class Engine:
    """What :class:`QwenTokenizer` needs from a BPE engine."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str | None:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def vocab_and_merges(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """The byte-level BPE vocabulary (added tokens excluded) and merges, in HF string form."""
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError


class TiktokenEngine(Engine):
    """Rank-based BPE (tiktoken) with HF's added-token splitting and NFC normalisation in front."""

    def __init__(self, encoding: Any, ranks: dict[bytes, int], added: Sequence[AddedToken]) -> None:
        self._enc = encoding
        self._ranks = ranks
        self._added = {t.content: t for t in added}
        self._added_by_id = {t.id: t for t in added}
        # Leftmost-longest matching of added tokens, as HF's added vocabulary does.
        contents = sorted(self._added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(c) for c in contents) + ")") if contents else None
        self._merges: list[tuple[str, str]] | None = None
        self._nfc = _hf_nfc()

    def _encode_one(self, text: str) -> list[int]:
        pieces = self._split.split(text) if self._split is not None else [text]
        ids: list[int] = []
        # re.split with one capturing group alternates plain text (even) and added tokens (odd).
        for i, piece in enumerate(pieces):
            if i % 2:
                ids.append(self._added[piece].id)
            elif piece:
                ids.extend(self._enc.encode_ordinary(self._nfc.normalize_str(piece)))
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._encode_one(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if not (i in self._added_by_id and self._added_by_id[i].special)]
        return self._enc.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    def id_to_token(self, token_id: int) -> str | None:
        if token_id in self._added_by_id:
            return self._added_by_id[token_id].content
        if 0 <= token_id < self._enc.n_vocab:
            try:
                return _bytes_to_token_string(self._enc.decode_single_token_bytes(token_id))
            except KeyError:
                return None
        return None

    def token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token].id
        raw = _token_string_to_bytes(token)
        return None if raw is None else self._ranks.get(raw)

    def vocab_and_merges(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        ordered = sorted(self._ranks.items(), key=lambda item: item[1])
        vocab = {_bytes_to_token_string(token): rank for token, rank in ordered}
        if self._merges is None:
            merges = []
            for token, rank in ordered:
                if len(token) < 2:
                    continue
                parts = _bpe_split(self._ranks, token, rank)
                if len(parts) != 2:
                    raise CheckpointError(
                        f"BPE rank {rank} ({token!r}) cannot be built from two lower-ranked tokens; "
                        "the ranks do not form a valid BPE vocabulary"
                    )
                merges.append((_bytes_to_token_string(parts[0]), _bytes_to_token_string(parts[1])))
            self._merges = merges
        return vocab, list(self._merges)

    def size(self) -> int:
        return max(len(self._ranks), max(self._added_by_id, default=-1) + 1)


class HFEngine(Engine):
    """A ``tokenizers.Tokenizer`` with a byte-level BPE model."""

    def __init__(self, tokenizer: Any, added: Sequence[AddedToken]) -> None:
        self._tok = tokenizer
        self._added_contents = {t.content for t in added}

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def vocab_and_merges(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        model = json.loads(self._tok.to_str())["model"]
        if model.get("type") != "BPE":
            raise CheckpointError(f"tokenizer model type is {model.get('type')!r}; only 'BPE' can be saved")
        vocab = {k: v for k, v in model["vocab"].items() if k not in self._added_contents}
        vocab = dict(sorted(vocab.items(), key=lambda item: item[1]))
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return vocab, merges  # type: ignore[return-value]

    def size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


def hf_bpe_tokenizer(
    vocab: dict[str, int], merges: Sequence[tuple[str, str]], added: Sequence[AddedToken], vocab_path: Any = "vocab"
) -> Any:
    """A ``tokenizers.Tokenizer`` assembled like transformers' Qwen2 converter does (``vocab_path`` names
    the vocabulary's source in errors)."""
    from tokenizers import AddedToken as HFAddedToken
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    used_ids = {int(i): t for t, i in vocab.items()}
    model_vocab = dict(vocab)
    for token in added:
        known = vocab.get(token.content)
        if known is not None:
            if known != token.id:
                raise CheckpointError(
                    f"added token {token.content!r} has id {token.id}, {vocab_path} gives {known}"
                )
        elif token.id in used_ids:
            raise CheckpointError(
                f"added token {token.content!r} id {token.id} is {used_ids[token.id]!r} in {vocab_path}"
            )
        else:
            # Placing added tokens in the model vocab pins their ids, even where ids are not contiguous.
            model_vocab[token.content] = token.id

    tokenizer = Tokenizer(
        models.BPE(
            vocab=model_vocab,
            merges=list(merges),
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    hf_tokens = [
        HFAddedToken(
            t.content,
            single_word=t.single_word,
            lstrip=t.lstrip,
            rstrip=t.rstrip,
            normalized=t.normalized,
            special=t.special,
        )
        for t in added
    ]
    tokenizer.add_special_tokens([t for t, spec in zip(hf_tokens, added) if spec.special])
    tokenizer.add_tokens([t for t, spec in zip(hf_tokens, added) if not spec.special])
    for token in added:
        got = tokenizer.token_to_id(token.content)
        if got != token.id:
            raise CheckpointError(f"added token {token.content!r} got id {got}, expected {token.id}")
    return tokenizer


