"""Tests of vla_lab.processing.tokenizer: the offline Qwen2.5 tokenizer, the files-based loader and their agreement."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_lab.errors import CheckpointError, ExportError, InputError
from vla_lab.processing.tokenizer import (
    QWEN2_PRETOKENIZE_PATTERN,
    QWEN25_ADDED_TOKENS,
    QwenTokenizer,
    load_qwen25_tokenizer,
)
from vla_lab.processing.tokenizer_files import load_tokenizer_from_files

REFERENCE = Path(__file__).resolve().parent / "data" / "released_checkpoint"

LIBERO_PROMPT = (
    "In: What action should the robot take to pick up the black bowl between the plate and the ramekin "
    "and place it on the plate?\nOut:"
)
LIBERO_PREFIX = [641, 25, 3555, 1917, 1265, 279, 12305, 1896, 311, 3735, 705, 279]
LIBERO_IDS = LIBERO_PREFIX + [3691, 19212, 1948, 279, 11968, 323, 279, 435, 373, 7989, 323, 1992, 432, 389]
LIBERO_IDS += [279, 11968, 5267, 2662, 25]

FIXED_TEXTS = [
    LIBERO_PROMPT,
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a robot.<|im_end|>\n<|im_start|>assistant\n<tool_call>{}</tool_call>",
    "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>describe<|endoftext|>",
    "a  b\t\tc\n\n\nd   \n ",
    "   leading and trailing   ",
    "\r\n\r\nwindows\r\nlines\r\n",
    "12345 3.14159 1e-6",
    "2024-06-01 12:30:45 +0800, x=-0.25, y=1,000,000",
    "café naïve e\u0301",
    "A\u030a and a\u0302\u0323 (reordered marks)",
    "机器人抓取红色的杯子。",
    "日本語のテキストと한국어 텍스트",
    "emoji 😀👍🏽🇯🇵👩\u200d💻❤️ end",
    "mixed...punctuation!!! ?? -- (a) [b] {c} <d> @e #f $g %h ^i &j *k",
    "it's THEY'LL we're you've I'm she'd don't 'quoted' ’curly’",
    "",
    " ",
    "\n",
    "<|im_end",
    "<|endoftext|><|endoftext|>",
]

_POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCXYZ")
    + ["the", " the", "THE", " robot", " pick", "Out", ":"]
    + list("0123456789")
    + ["²", "Ⅷ", "٣", "\U0001d400"]
    + [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c"]
    + ["\u00a0", "\u3000", "\u2009", "\u0085", "\u2028"]
    + list(".,;:!?-_()[]{}\"'`~@#$%^&*/\\|<>=+")
    + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "’"]
    + ["é", "ï", "ñ", "ü", "Å", "ß", "ø", "Ω", "ж", "e\u0301", "\u0301", "\u0308", "\u0327", "a\u0302\u0323"]
    + list("机器人抓取红色的杯子。日本語한국어")
    + ["😀", "👍🏽", "🇯🇵", "👩\u200d💻", "❤️", "\u200d", "\ufe0f", "\u200b"]
    + ["مرحبا", "नमस्ते", "สวัสดี", "Привет"]
    + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "<|fim_pad|>", "<|im_end", "|>"]
)


def _random_texts(count: int = 300, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_POOL) for _ in range(rng.randint(0, 40))) for _ in range(count)]


CORPUS = FIXED_TEXTS + _random_texts()


def _nfc_outside_added_tokens(text: str, tokenizer: QwenTokenizer) -> str:
    """NFC applied piecewise between added tokens (added tokens are matched before normalisation)."""
    contents = sorted((t.content for t in tokenizer.added_tokens), key=len, reverse=True)
    out, i = [], 0
    plain_start = 0
    while i < len(text):
        match = next((c for c in contents if text.startswith(c, i)), None)
        if match is None:
            i += 1
            continue
        out.append(unicodedata.normalize("NFC", text[plain_start:i]) + match)
        i += len(match)
        plain_start = i
    out.append(unicodedata.normalize("NFC", text[plain_start:]))
    return "".join(out)


@pytest.fixture(scope="module")
def offline() -> QwenTokenizer:
    return load_qwen25_tokenizer()


@pytest.fixture(scope="module")
def reference() -> QwenTokenizer:
    return load_tokenizer_from_files(REFERENCE)


@pytest.fixture(scope="module")
def saved_offline_dir(offline: QwenTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("qwen25_saved")
    offline.save(directory)
    return directory


# ---------------------------------------------------------------------------------------------
# The offline tokenizer on its own.
# ---------------------------------------------------------------------------------------------


def test_offline_libero_prompt(offline: QwenTokenizer) -> None:
    ids = offline.encode(LIBERO_PROMPT)
    assert ids[: len(LIBERO_PREFIX)] == LIBERO_PREFIX
    assert ids == LIBERO_IDS
    assert offline.convert_ids_to_tokens(ids[:4]) == ["In", ":", "ĠWhat", "Ġaction"]


def test_offline_added_tokens_and_sizes(offline: QwenTokenizer) -> None:
    assert len(offline) == offline.vocab_size == 151665
    assert offline.eos_token_id == offline.pad_token_id == 151643
    assert offline.bos_token_id is None
    for content, token_id, _ in QWEN25_ADDED_TOKENS:
        assert offline.encode(content) == [token_id]
        assert offline.convert_ids_to_tokens(token_id) == content
        assert offline.convert_tokens_to_ids(content) == token_id
    assert offline.encode("<|im_start|>user\nhi<|im_end|>") == [151644, 872, 198, 6023, 151645]
    # Specials are dropped by skip_special_tokens; Qwen2.5's non-special added tokens are kept.
    ids = offline.encode("<|im_start|>x<tool_call>y<|im_end|>")
    assert offline.decode(ids, skip_special_tokens=True) == "x<tool_call>y"


def test_offline_splits_digits_and_applies_nfc(offline: QwenTokenizer) -> None:
    assert offline.encode("12345") == [16, 17, 18, 19, 20]
    assert offline.encode("e\u0301") == offline.encode("é")
    assert offline.decode(offline.encode("café naïve e\u0301")) == "café naïve é"


def test_call_matches_transformers_conventions(offline: QwenTokenizer) -> None:
    single = offline("hi there")
    assert single == {"input_ids": [6023, 1052], "attention_mask": [1, 1]}
    batch = offline(["hi there", "a"])
    assert batch == {"input_ids": [[6023, 1052], [64]], "attention_mask": [[1, 1], [1]]}

    padded = offline(["hi there", "a"], padding=True, return_tensors="pt")
    assert padded["input_ids"].dtype == torch.long
    assert padded["input_ids"].tolist() == [[6023, 1052], [64, 151643]]
    assert padded["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert offline("hi there", return_tensors="pt")["input_ids"].shape == (1, 2)
    as_numpy = offline(["a", "hi there"], padding="longest", return_tensors="np")
    assert isinstance(as_numpy["input_ids"], np.ndarray)
    assert as_numpy["input_ids"].tolist() == [[64, 151643], [6023, 1052]]

    assert offline.decode(padded["input_ids"][0]) == "hi there"
    assert offline.batch_decode(padded["input_ids"], skip_special_tokens=True) == ["hi there", "a"]
    assert offline.encode("hi", add_special_tokens=True) == [6023]  # never a BOS

    offline_copy = load_qwen25_tokenizer()
    offline_copy.pad_token_id = 0
    assert offline_copy(["ab", "a ab"], padding=True)["input_ids"][0][-1] == 0


def test_input_errors(offline: QwenTokenizer) -> None:
    with pytest.raises(InputError, match="str"):
        offline(3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="str"):
        offline.encode(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="str"):
        offline(["a", b"b"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="padding=True"):
        offline(["a", "a b c"], return_tensors="pt")
    with pytest.raises(InputError, match="padding"):
        offline(["a"], padding="max_length")
    with pytest.raises(InputError, match="999999"):
        offline.decode([1, 999999])
    with pytest.raises(InputError, match="int"):
        offline.decode(["a"])


# ---------------------------------------------------------------------------------------------
# Agreement with the released checkpoint's tokenizer files.
# ---------------------------------------------------------------------------------------------


def test_reference_libero_prompt(reference: QwenTokenizer) -> None:
    ids = reference.encode(LIBERO_PROMPT)
    assert ids[: len(LIBERO_PREFIX)] == LIBERO_PREFIX
    assert ids == LIBERO_IDS
    assert len(reference) == 151665
    assert reference.eos_token_id == reference.pad_token_id == 151643


def test_engines_agree_on_corpus(offline: QwenTokenizer, reference: QwenTokenizer) -> None:
    expected = [reference.encode(text) for text in CORPUS]
    assert [offline.encode(text) for text in CORPUS] == expected
    assert offline(CORPUS)["input_ids"] == reference(CORPUS)["input_ids"] == expected
    tokens = [offline.convert_ids_to_tokens(ids) for ids in expected[:50]]
    assert tokens == [reference.convert_ids_to_tokens(ids) for ids in expected[:50]]


@pytest.mark.parametrize("which", ["offline", "reference"])
def test_decode_encode_roundtrip_is_nfc(which: str, request: pytest.FixtureRequest) -> None:
    tokenizer: QwenTokenizer = request.getfixturevalue(which)
    for text in CORPUS:
        assert tokenizer.decode(tokenizer.encode(text)) == _nfc_outside_added_tokens(text, tokenizer), text


def test_engines_agree_on_decoding_arbitrary_ids(offline: QwenTokenizer, reference: QwenTokenizer) -> None:
    rng = random.Random(7)
    for _ in range(300):
        ids = [rng.randrange(len(offline)) for _ in range(rng.randint(1, 6))]
        assert offline.decode(ids) == reference.decode(ids)  # includes partial UTF-8 sequences
        skipped = offline.decode(ids, skip_special_tokens=True)
        assert skipped == reference.decode(ids, skip_special_tokens=True)


def test_newer_combining_marks_follow_hf_nfc(offline: QwenTokenizer, reference: QwenTokenizer) -> None:
    """HF ``tokenizers``' NFC tables predate marks such as U+089F; both engines use that NFC."""
    from tokenizers import normalizers

    text = "x\u089f\u059a y\u1ac3\u0f7c"  # marks of canonical classes (230, 222) and (220, 130)
    assert offline.encode(text) == reference.encode(text)
    assert offline.decode(offline.encode(text)) == normalizers.NFC().normalize_str(text)


def test_matches_transformers_qwen2_tokenizer(offline: QwenTokenizer) -> None:
    """An independent oracle: transformers' own Qwen2Tokenizer on the released files."""
    import transformers
    hf = transformers.Qwen2Tokenizer.from_pretrained(str(REFERENCE))
    assert hf(CORPUS)["input_ids"] == offline(CORPUS)["input_ids"]
    for text in CORPUS[:50]:
        assert hf.decode(offline.encode(text)) == offline.decode(offline.encode(text))


# ---------------------------------------------------------------------------------------------
# Export in the Qwen2 layout.
# ---------------------------------------------------------------------------------------------


def test_saved_offline_tokenizer_reloads_identically(offline: QwenTokenizer, saved_offline_dir: Path) -> None:
    reloaded = load_tokenizer_from_files(saved_offline_dir)
    assert reloaded.encode(LIBERO_PROMPT) == LIBERO_IDS
    assert reloaded(CORPUS)["input_ids"] == offline(CORPUS)["input_ids"]
    assert len(reloaded) == len(offline)
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (151643, 151643)


def test_saved_offline_files_equal_released_files(saved_offline_dir: Path) -> None:

    def load(directory: Path, name: str) -> object:
        return json.loads((directory / name).read_text(encoding="utf-8"))

    for name in ("vocab.json", "added_tokens.json", "special_tokens_map.json"):
        assert load(saved_offline_dir, name) == load(REFERENCE, name), name
    ours = (saved_offline_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    theirs = (REFERENCE / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert ours == theirs  # tiktoken -> HF merge derivation reproduces Qwen's merges.txt line for line
    config = load(saved_offline_dir, "tokenizer_config.json")
    released = load(REFERENCE, "tokenizer_config.json")
    for key in ("auto_map", "processor_class", "chat_template"):  # the processor's fields, not ours
        released.pop(key)  # type: ignore[union-attr]
    assert config == released


def test_save_never_overwrites_silently(offline: QwenTokenizer, tmp_path: Path) -> None:
    existing = tmp_path / "vocab.json"
    existing.write_text("{}")
    with pytest.raises(ExportError, match=str(existing)):
        offline.save(tmp_path)
    assert existing.read_text() == "{}"


# ---------------------------------------------------------------------------------------------
# A tiny byte-level vocabulary in the Qwen2 layout.
# ---------------------------------------------------------------------------------------------

_TINY_SENTENCES = [
    "pick up the black bowl and place it on the plate",
    "open the top drawer and put the bowl inside",
    "push the plate to the front of the stove",
    "put the cream cheese in the bowl",
    "turn on the stove; it's 12 degrees",
]
_TINY_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    trained.train_from_iterator(_TINY_SENTENCES, trainer=trainer)
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    trained.model.save(str(directory))  # vocab.json + merges.txt
    size = trained.get_vocab_size()
    added = {content: size + i for i, content in enumerate(_TINY_ADDED)}
    (directory / "added_tokens.json").write_text(json.dumps(added))
    config = {
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "special": True}
            for c, i in added.items()
        },
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "Qwen2Tokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def test_tiny_vocab_loads_and_roundtrips(tiny_dir: Path) -> None:
    tiny = load_tokenizer_from_files(tiny_dir)
    base = len(json.loads((tiny_dir / "vocab.json").read_text(encoding="utf-8")))
    assert 256 < base <= 320
    assert len(tiny) == base + 3
    assert (tiny.eos_token_id, tiny.pad_token_id) == (base + 2, base)
    assert tiny.encode("<|im_start|>pick up the bowl<|im_end|>")[0] == base + 1
    assert len(tiny.encode("pick up the black bowl")) < len("pick up the black bowl")  # merges are used
    for text in CORPUS:  # byte-level: any text round-trips, even far outside the training data
        assert tiny.decode(tiny.encode(text)) == _nfc_outside_added_tokens(text, tiny), text
    padded = tiny(["the bowl", "the"], padding=True, return_tensors="pt")
    assert padded["input_ids"][1, -1].item() == base
    assert padded["attention_mask"][1].tolist()[-1] == 0


def test_tiny_vocab_save_reload_and_tokenizer_json(tiny_dir: Path, tmp_path: Path) -> None:
    tiny = load_tokenizer_from_files(tiny_dir)
    saved = tmp_path / "saved"
    tiny.save(saved)
    with pytest.raises(ExportError, match="vocab.json"):
        tiny.save(saved)
    tiny.save(saved, overwrite=True)
    reloaded = load_tokenizer_from_files(saved)
    assert reloaded(CORPUS)["input_ids"] == tiny(CORPUS)["input_ids"]
    assert json.loads((saved / "vocab.json").read_text()) == json.loads((tiny_dir / "vocab.json").read_text())
    assert (saved / "merges.txt").read_text().splitlines()[1:] == [
        line for line in (tiny_dir / "merges.txt").read_text().splitlines()[1:] if line
    ]

    # A directory holding only tokenizer.json is read through tokenizers.Tokenizer.from_file.
    only_json = tmp_path / "only_json"
    only_json.mkdir()
    tiny._engine._tok.save(str(only_json / "tokenizer.json"))  # noqa: SLF001 - test reaches the engine
    (only_json / "tokenizer_config.json").write_text((tiny_dir / "tokenizer_config.json").read_text())
    from_json = load_tokenizer_from_files(only_json)
    assert from_json(CORPUS)["input_ids"] == tiny(CORPUS)["input_ids"]
    assert from_json.pad_token_id == tiny.pad_token_id


def test_tiny_vocab_matches_transformers(tiny_dir: Path) -> None:
    import transformers
    hf = transformers.Qwen2Tokenizer.from_pretrained(str(tiny_dir))
    tiny = load_tokenizer_from_files(tiny_dir)
    assert hf(CORPUS)["input_ids"] == tiny(CORPUS)["input_ids"]


# ---------------------------------------------------------------------------------------------
# Errors for incomplete checkpoint directories.
# ---------------------------------------------------------------------------------------------


def test_missing_files_raise_checkpoint_error(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="vocab.json"):
        load_tokenizer_from_files(tmp_path)
    (tmp_path / "vocab.json").write_text((tiny_dir / "vocab.json").read_text())
    with pytest.raises(CheckpointError, match="merges.txt"):
        load_tokenizer_from_files(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer_from_files(tmp_path / "nowhere")


def test_inconsistent_added_tokens_raise_checkpoint_error(tiny_dir: Path, tmp_path: Path) -> None:
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_text((tiny_dir / name).read_text())
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<|endoftext|>": 5}))  # id 5 is a byte token
    with pytest.raises(CheckpointError, match="<\\|endoftext\\|>"):
        load_tokenizer_from_files(tmp_path)
