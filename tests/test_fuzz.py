"""Fuzzing the command line and the checkpoint loader with generated invalid input (hypothesis, derandomised).

Every generated case is invalid by construction. The command line must exit non-zero with one line on
stderr and no traceback, and change no file outside ``--out``; the loader must raise one of vla_lab's
own one-line errors. A case that succeeds is a silent success on invalid input: a failure here.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from testkit import run_cli, snapshot, tiny_tabletop_config, tiny_train_config, write_demos

from vla_lab import tabletop
from vla_lab.errors import VLALabError
from vla_lab.model import load_pretrained, save_pretrained

CLI_CASES = 400
LOADER_CASES = 300
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- the command line -------------------------------------------------------------------------------


class World:
    """Files the generated command lines point at, all under one root (the working directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out"
        self.image = root / "view.png"
        PIL.Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(self.image)
        self.text = root / "notes.txt"
        self.text.write_text("not an image, not JSON")
        self.empty_dir = root / "empty"
        self.empty_dir.mkdir()
        self.train_json = root / "train.json"
        tiny_train_config(steps=2, num_examples=16).to_json(self.train_json)
        self.model_json = root / "model.json"
        tiny_tabletop_config().to_json(self.model_json)
        self.bad_json = root / "bad.json"
        self.bad_json.write_text('{"steps": 0}')
        self.list_json = root / "list.json"
        self.list_json.write_text("[1, 2, 3]")
        self.garbage_ckpt = root / "garbage"
        self.garbage_ckpt.mkdir()
        (self.garbage_ckpt / "config.json").write_text("{")
        self.bomb = root / "bomb.png"
        header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
        ihdr = b"IHDR" + header
        self.bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)))
        self.truncated = root / "half.png"
        self.truncated.write_bytes(self.image.read_bytes()[:50])
        self.demos = write_demos(root / "demos", tasks=1, demos=1, steps=5, size=32)


def bases(w: World) -> dict[str, list]:
    """A valid command line of each command (what the mutations break; each was run once to check it succeeds)."""
    return {
        "predict": ["predict", "--model", "tiny", "--image", w.image, "--image", w.image, "--instruction", "pick"],
        "attention": ["attention", "--model", "tiny", "--out", w.out],
        "bench": ["bench", "--model", "tiny", "--repeats", "1", "--warmup", "0", "--out", w.out / "bench.json"],
        "train": ["train", "--out", w.out, "--config", w.train_json, "--model-config", w.model_json, "--no-progress"],
        "params": ["params", "--preset", "tiny"],
        "demo": ["demo", "--out", w.out, "--episodes", "2", "--no-baseline"],
        "eval": ["eval", "libero", "--model", "tiny", "--suite", "libero_spatial", "--tasks", "0", "--trials", "1",
                 "--max-steps", "2", "--out", w.out, "--no-progress"],
        "study": ["study", "mask-swap", "--scenes", "1", "--batch-size", "1", "--model", "tabletop-causal",
                  "--out", w.out, "--no-progress"],
        "expert": ["libero", "expert", "--suite", "libero_spatial", "--tasks", "0", "--trials", "1", "--max-steps", "2",
                   "--out", w.out, "--no-progress"],
        "demos": ["libero", "demos", "--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task", "1",
                  "--max-steps", "2", "--out", w.out, "--no-progress"],
        "study-libero": ["study", "target-attention", "--world", "libero", "--suite", "libero_spatial", "--model",
                         "libero-spatial-causal", "--tasks", "0", "--init-states", "0:1", "--out", w.out,
                         "--no-progress"],
        "train-libero": ["train", "--data", w.demos, "--out", w.out, "--steps", "1", "--no-progress"],
    }


def mutations(w: World) -> dict[str, list[tuple[str, object]]]:
    """Invalid (option, value) pairs per command; None as value appends the option alone."""
    model = [("--device", d) for d in ("cuda", "tpu", "cuda:-1", "", "cpu:0:1", "gpu")]
    model += [("--dtype", "int8"), ("--model", "nope"), ("--seed", "x"), ("--seed", "1.5")]
    model += [("--model", p) for p in (w.root / "missing", w.text, w.empty_dir, w.garbage_ckpt)]
    outputs = [("--out", p) for p in (w.text, w.text / "sub", "/proc/vla-lab/out")]
    proprio = [("--proprio", v) for v in ("nan,0,0,0,0,0,0,0", "inf,0,0,0,0,0,0,0", "1e400,0,0,0,0,0,0,0", "1,2",
                                          "a,b,c,d,e,f,g,h", ",,,", "0;0;0;0;0;0;0;0")]
    images = [("--image", p) for p in (w.root / "missing.png", w.empty_dir, w.text, w.bomb, w.truncated)]
    common = [("--bogus", None), ("--json", "extra-positional")]
    libero = outputs + common + [("--tasks", v) for v in ("x", "-1", "99", "0,,1")] + [("--resume", None)]
    libero += [("--trials", v) for v in ("0", "-1", "x", "51")]
    libero += [("--init-states", v) for v in ("5:2", "a:b", "60:70")]
    libero += [("--env-seed", v) for v in ("-1", "x", str(2**40))] + [("--max-steps", v) for v in ("0", "-1", "x")]
    configs = [("--config", v) for v in (w.root / "missing.json", w.bad_json, w.list_json, "{", '{"steps": "x"}',
                                         '{"lr": -1}', '{"unknown": 1}', '{"init": "magic"}')]
    configs += [("--model-config", v) for v in (w.bad_json, w.list_json, w.text, '{"num_images": 9}',
                                                '{"llm": {"num_hidden_layers": 1000000}}')]
    return {
        "predict": model + proprio + images + common + [("--instruction", ""), ("--unnorm-key", "nope")],
        "attention": model + outputs + proprio + [("--dpi", v) for v in ("0", "-5", "x", "99999")]
        + [("--format", "gif"), ("--image", w.image), ("--instruction", "alone"), ("--attention", "sideways")]
        + common,
        "bench": model + [("--out", w.text), ("--out", "/proc/vla-lab/b.json"), ("--out", w.empty_dir)]
        + [(o, v) for o in ("--batch", "--repeats", "--threads") for v in ("0", "-1", "x")]
        + [("--warmup", "-1"), ("--paths", "slow"), ("--capture", "all")] + common,
        "train": outputs + configs + [(o, v) for o in ("--steps", "--seed", "--num-threads", "--test-episodes")
                                      for v in ("-1", "x", "2.5")]
        + [("--steps", "0"), ("--attention", "sideways"), ("--device", "tpu"), ("--device", "cuda"),
           ("--resume", None)] + common,
        "params": [("--preset", "nope"), ("--preset", ""), ("--json", "x"), ("--bogus", None)],
        "demo": outputs + [("--episodes", v) for v in ("0", "-3", "x")] + [("--bogus", None)],
        "eval": model + outputs + common + [("--suite", v) for v in ("libero_spacial", "", "tabletop")]
        + [("--tasks", v) for v in ("x", "-1", "99", "0,,1", "")] + [("--trials", v) for v in ("0", "-1", "x", "51")]
        + [("--init-states", v) for v in ("5:2", "a:b", "60:70", "3", "-1:2")]
        + [("--max-steps", v) for v in ("0", "-1", "x")] + [("--resume", None)],
        "expert": libero + [("--suite", "libero_goal")],
        "demos": libero + [("--suite", "libero_goal")] + [("--resolution", v) for v in ("8", "0", "x")]
        + [("--episodes-per-task", v) for v in ("0", "-1", "x", "51")],
        "study-libero": outputs + common + [("--suite", v) for v in ("libero_spacial", "")]
        + [("--tasks", v) for v in ("x", "-1", "99")] + [("--init-states", v) for v in ("5:2", "a:b", "60:70")]
        + [("--model", v) for v in ("nope", w.text)] + [("--world", "mars")],
        "train-libero": outputs + common + [("--data", v) for v in (w.root / "missing", w.text, w.empty_dir)]
        + [("--config", v) for v in ('{"augment": "yes"}', '{"relabel": true}', '{"lr": NaN}', '{"betas": [1, 2]}',
                                     '{"val_examples": 5}')] + [("--steps", v) for v in ("0", "-1")],
        "study": outputs + common + [("--scenes", v) for v in ("0", "-1", "x", "1000001")]
        + [(o, v) for o in ("--batch-size", "--closed-loop-scenes") for v in ("0", "-2", "x")]
        + [("--start", v) for v in ("-1", "1000000")] + [("--validation-scenes", "-1"), ("--seed", "-3")]
        + [("--model", v) for v in ("nope", "random-init:nope", w.garbage_ckpt, w.empty_dir, w.text, "")]
        + [("--device", d) for d in ("tpu", "cuda", "cuda:-1")] + [("--resume", None)],
    }


def apply(base: list, changes: list[tuple[str, object]]) -> list:
    argv = list(base)
    for option, value in changes:
        if value is None:
            argv.append(option)
        elif option in argv and option not in ("--image", "--format"):
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("fuzz-cli"))


@st.composite
def invalid_command_lines(draw, w: World) -> list:
    table = mutations(w)
    command = draw(st.sampled_from(sorted(table)))
    changes = draw(st.lists(st.sampled_from(table[command]), min_size=1, max_size=2, unique=True))
    return apply(bases(w)[command], changes)


def test_fuzz_the_command_line(world, monkeypatch) -> None:
    monkeypatch.chdir(world.root)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answers with or without a GPU
    tried: list[list] = []

    @settings(FUZZ, max_examples=CLI_CASES)
    @given(invalid_command_lines(world))
    def case(argv: list) -> None:
        tried.append(argv)
        shutil.rmtree(world.out, ignore_errors=True)
        outside = snapshot(world.root)
        status, _, stderr = run_cli(argv)
        assert status != 0, f"silent success on invalid input: {argv}"
        lines = stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in stderr, (argv, stderr)
        assert lines[0].startswith("vla-lab") and ": error: " in lines[0], (argv, stderr)
        after = {k: v for k, v in snapshot(world.root).items() if not k.startswith("out/") and k != "out"}
        assert after == outside, f"a file outside --out changed: {argv}"

    case()
    assert len(tried) >= CLI_CASES * 0.9


# --- the checkpoint loader ---------------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return (print, ("code from a checkpoint ran",))


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-ckpt") / "model"
    save_pretrained(tabletop.initial_model(tiny_tabletop_config(), seed=0), out, step=1)
    return out


JSON_FILES = ("config.json", "vla_lab_config.json", "preprocessor_config.json", "tokenizer_config.json",
              "vocab.json")
BINARY_FILES = ("model.safetensors", "action_head--1_checkpoint.pt", "proprio_projector--1_checkpoint.pt")
SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
SHARED_LLM = ("hidden_size", "rms_norm_eps", "rope_theta", "num_key_value_heads", "max_position_embeddings")
NOT_OBJECTS = ([1, 2], "text", 7, None, 2.5, True)
WRONG_TYPES = ("32", 32.5, -1, 0, None, [], {}, True)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write(path: Path, data: bytes | str) -> None:
    path.unlink()  # the case directory holds hard links to the base files: never write through them
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, weights_only=True)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.unlink()
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(tensors, path)


@st.composite
def broken_checkpoints(draw):
    """A mutation: (description, function of the case directory)."""
    kind = draw(st.sampled_from(["truncate_binary", "truncate_json", "not_object", "size_both", "wrong_type",
                                 "disagree", "nonfinite", "drop_key", "extra_key", "reshape", "pickle",
                                 "drop_config_key", "bad_merges", "bad_vocab"]))
    file_index = draw(st.integers(0, 10))
    fraction = draw(st.floats(0.0, 0.999))
    pick = draw(st.integers(0, 10_000))

    def mutate(d: Path) -> None:
        if kind == "truncate_binary":
            path = d / BINARY_FILES[file_index % len(BINARY_FILES)]
            data = path.read_bytes()
            _write(path, data[: int(len(data) * fraction)])
        elif kind == "truncate_json":
            path = d / JSON_FILES[file_index % len(JSON_FILES)]
            text = path.read_text().rstrip()
            _write(path, text[: int(len(text) * fraction)])
        elif kind == "not_object":
            path = d / JSON_FILES[file_index % len(JSON_FILES)]
            _write(path, json.dumps(NOT_OBJECTS[pick % len(NOT_OBJECTS)]))
        elif kind == "size_both":  # consistent files, but sizes the weights do not have
            key = SIZES[file_index % len(SIZES)]
            current = _json(d / "vla_lab_config.json")["llm"][key]
            value = current + 1 + pick % 700
            for name, section in (("config.json", "text_config"), ("vla_lab_config.json", "llm")):
                data = _json(d / name)
                data[section][key] = value
                _write(d / name, json.dumps(data))
        elif kind == "wrong_type":
            key = SIZES[file_index % len(SIZES)]
            value = WRONG_TYPES[pick % len(WRONG_TYPES)]
            for name, section in (("config.json", "text_config"), ("vla_lab_config.json", "llm")):
                data = _json(d / name)
                data[section][key] = value
                _write(d / name, json.dumps(data))
        elif kind == "disagree":
            key = SHARED_LLM[file_index % len(SHARED_LLM)]
            name, section = (("config.json", "text_config"), ("vla_lab_config.json", "llm"))[pick % 2]
            data = _json(d / name)
            old = data[section][key]
            data[section][key] = old * 2 if isinstance(old, (int, float)) and old else 3
            _write(d / name, json.dumps(data))
        elif kind in ("nonfinite", "drop_key", "extra_key", "reshape"):
            path = d / BINARY_FILES[file_index % len(BINARY_FILES)]
            tensors = _tensors(path)
            keys = sorted(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
            key = keys[pick % len(keys)]
            if kind == "nonfinite":
                tensors[key] = tensors[key].clone()
                tensors[key].view(-1)[pick % tensors[key].numel()] = (math.nan, math.inf, -math.inf)[pick % 3]
            elif kind == "drop_key":
                del tensors[key]
            elif kind == "extra_key":
                tensors[key + "_extra"] = tensors[key].clone()
            else:
                tensors[key] = tensors[key].reshape(-1)[:-1].clone()
            _save_tensors(path, tensors)
        elif kind == "pickle":
            path = d / BINARY_FILES[1 + file_index % 2]
            path.unlink()
            torch.save({"weight": torch.zeros(1), "payload": Evil()}, path)
        elif kind == "drop_config_key":
            name = ("config.json", "preprocessor_config.json")[pick % 2]
            data = _json(d / name)
            keys = sorted({"config.json": ["text_config", "timm_model_ids", "image_sizes", "vision_backbone_id"],
                           "preprocessor_config.json": [k for k in data if k.startswith("tvf_")]}[name])
            del data[keys[file_index % len(keys)]]
            _write(d / name, json.dumps(data))
        elif kind == "bad_merges":
            _write(d / "merges.txt", (d / "merges.txt").read_text() + "a b c\n")
        else:
            vocab = _json(d / "vocab.json")
            token = sorted(vocab)[pick % len(vocab)]
            vocab[token] = ("x", -1, None, 1.5)[file_index % 4]
            _write(d / "vocab.json", json.dumps(vocab))

    return f"{kind}[file {file_index}, fraction {fraction:.3f}, pick {pick}]", mutate


def test_fuzz_the_checkpoint_loader(base_checkpoint, tmp_path_factory, capsys) -> None:
    root = tmp_path_factory.mktemp("fuzz-cases")
    tried: list[str] = []
    load_pretrained(base_checkpoint)  # the base is valid: every failure below comes from its mutation

    @settings(FUZZ, max_examples=LOADER_CASES)
    @given(broken_checkpoints())
    def case(mutation) -> None:
        name, mutate = mutation
        tried.append(name)
        directory = root / f"case-{len(tried)}"
        directory.mkdir()
        for path in base_checkpoint.iterdir():
            (directory / path.name).hardlink_to(path)
        mutate(directory)
        try:
            with pytest.raises(VLALabError) as info:
                load_pretrained(directory)
            message = str(info.value)
            assert "\n" not in message and message, (name, message)
        finally:
            shutil.rmtree(directory)
        assert "code from a checkpoint ran" not in capsys.readouterr().out

    case()
    assert len(tried) >= LOADER_CASES * 0.9
    # what the loader was shown
    kinds = {name.split("[")[0] for name in tried}
    assert len(kinds) == 14, kinds

