"""Hostile inputs: non-finite numbers, oversized or contradictory checkpoints, unusable outputs and
devices, broken files, and filters or specs that would silently do nothing. Each gets one line."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from testkit import (
    assert_one_line_error,
    run_cli,
    snapshot,
    tiny_tabletop_config,
    tiny_train_config,
)

from vla_lab import VLAConfig, capture, files
from vla_lab.errors import CheckpointError, ConfigError, InputError
from vla_lab.model import load_pretrained, random_model
from vla_lab.training.train import train

INSTRUCTION = "pick up the red cube"
PROPRIO = ["--proprio", "0,0,0,0,0,0,0,0"]


@pytest.fixture(scope="module")
def model():
    return random_model(VLAConfig.preset("tiny"), seed=0)


@pytest.fixture
def copy_of(checkpoint, tmp_path):
    def make() -> Path:
        target = tmp_path / "copy"
        target.mkdir()
        for path in checkpoint.iterdir():
            (target / path.name).write_bytes(path.read_bytes())
        return target

    return make


def predict_args(image: Path, *extra) -> list:
    return ["predict", "--model", "tiny", "--image", image, "--image", image, "--instruction", INSTRUCTION, *extra]


def bomb_png(path: Path, side: int = 40_000) -> Path:
    """A valid PNG header announcing side x side pixels (a few hundred bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 3 * 16
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row))
                     + chunk(b"IEND", b""))
    return path


# --- non-finite numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "NaN"])
def test_non_finite_proprio_is_refused_by_the_cli(image, value) -> None:
    status, stdout, stderr = run_cli(predict_args(image, "--proprio", f"0,0,{value},0,0,0,0,0", "--json"))
    line = assert_one_line_error(status, stderr, "predict")
    assert line.startswith("vla-lab predict: error: --proprio:") and "finite" in line
    assert stdout == ""


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_proprio_is_refused_by_the_python_api(model, value) -> None:
    images = [np.zeros((32, 32, 3), np.uint8)] * 2
    proprio = [0.0] * 7 + [value]
    with pytest.raises(InputError, match="proprio: got .*expected finite numbers"):
        model.predict_action(images, INSTRUCTION, proprio)
    inputs = model.prepare_inputs(images, INSTRUCTION, [0.0] * 8)
    with pytest.raises(InputError, match="proprio"):
        model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], torch.tensor([proprio]))
    bad_pixels = inputs["pixel_values"].clone()
    bad_pixels[0, 0, 0, 0] = value
    with pytest.raises(InputError, match="pixel_values: got NaN or infinite"):
        model.prepare_inputs(pixel_values=bad_pixels, input_ids=inputs["input_ids"], proprio=[0.0] * 8)


def test_a_model_that_predicts_nan_is_an_error_not_json(image, monkeypatch) -> None:
    from vla_lab.model import VLAAdapter

    real = VLAAdapter.prediction

    def poisoned(self, normalized, *args, **kwargs):
        return real(self, torch.full_like(normalized, math.nan), *args, **kwargs)

    monkeypatch.setattr(VLAAdapter, "prediction", poisoned)
    status, stdout, stderr = run_cli(predict_args(image, "--json"))
    assert "actions: the model predicted NaN" in assert_one_line_error(status, stderr, "predict")
    assert stdout == ""


def test_json_output_is_always_strict_json(tmp_path) -> None:
    assert files.dumps({"a": math.nan, "b": [math.inf, 1.5]}, indent=None) == '{"a": null, "b": [null, 1.5]}'
    out = tmp_path / "run"  # grad_clip 0 logs grad_norm NaN: it must still be valid JSON
    train(tiny_train_config(steps=2, num_examples=16, val_examples=0, eval_episodes=0, grad_clip=0.0),
          tiny_tabletop_config(), out, progress=False)

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in metrics.jsonl")

    records = [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r.get("grad_norm", None) is None for r in records if "loss" in r)


def test_non_finite_weights_are_refused(copy_of) -> None:
    directory = copy_of()
    weights = load_file(str(directory / "model.safetensors"))
    key = next(k for k in weights if "layers.1.mlp.down_proj" in k)
    weights[key][0, 0] = math.nan
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in language_model\.model\.layers\.1\.mlp"):
        load_pretrained(directory)
    status, _, stderr = run_cli(["predict", "--model", directory, "--image", "x.png", "--instruction", "a"])
    assert_one_line_error(status, stderr, "predict")


# --- checkpoints that would exhaust memory or contradict themselves --------------------------------


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_million_layers_is_refused_before_any_allocation(copy_of) -> None:
    directory = copy_of()
    for name, key in (("config.json", "text_config"), ("vla_lab_config.json", "llm")):
        edit_json(directory / name, lambda d, key=key: d[key].update(num_hidden_layers=10**6))
    with pytest.raises(CheckpointError, match="num_hidden_layers: got 1000000, expected at most 512"):
        load_pretrained(directory)


def test_more_layers_than_the_weights_hold_is_refused(copy_of) -> None:
    directory = copy_of()
    for name, key in (("config.json", "text_config"), ("vla_lab_config.json", "llm")):
        edit_json(directory / name, lambda d, key=key: d[key].update(num_hidden_layers=40))
    with pytest.raises(CheckpointError, match="num_hidden_layers is 40 but the weights hold 2 LLM layers"):
        load_pretrained(directory)


def test_a_huge_model_is_refused_by_its_parameter_estimate() -> None:
    data = VLAConfig.preset("tiny").to_dict()
    data["llm"].update(hidden_size=65536, intermediate_size=262144, num_hidden_layers=64, num_attention_heads=64)
    with pytest.raises(ConfigError, match="parameters .* expected at most"):
        VLAConfig.from_dict(data)


@pytest.mark.parametrize(
    ("file", "change", "named"),
    [
        ("config.json", lambda d: d["text_config"].update(hidden_size=64), "text_config.hidden_size is 64"),
        ("config.json", lambda d: d.update(image_sizes=[96, 96]), "image_sizes is [96, 96]"),
        ("vla_lab_config.json", lambda d: d["llm"].update(rope_theta=10.0), "llm.rope_theta is 10.0"),
    ],
)
def test_config_json_and_vla_lab_config_json_must_agree(copy_of, file, change, named) -> None:
    directory = copy_of()
    edit_json(directory / file, change)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(directory)
    message = str(info.value)
    assert "config.json" in message and "vla_lab_config.json" in message and named in message


# --- one line instead of a traceback -------------------------------------------------------------------


def test_devices_this_machine_lacks(image, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("cuda", "CUDA is not available"), ("tpu", "expected cpu, cuda or cuda:N"),
                            ("cuda:x", "expected cpu, cuda or cuda:N"), ("", "expected cpu")):
        status, _, stderr = run_cli(predict_args(image, "--device", device))
        assert message in assert_one_line_error(status, stderr, "predict")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    status, _, stderr = run_cli(predict_args(image, "--device", "cuda:3"))
    assert "expected cuda:0 to cuda:0" in assert_one_line_error(status, stderr, "predict")


def test_unusable_outputs_fail_before_any_work(tmp_path, monkeypatch) -> None:
    import vla_lab.bench.inference as bench

    calls = []
    monkeypatch.setattr(bench, "run_benchmarks", lambda *a, **k: calls.append(a))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out in (a_file / "sub", "/proc/vla-lab-cannot-write/out", a_file):
        for command in (["attention", "--model", "tiny"], ["bench", "--model", "tiny"], ["train"]):
            target = f"{out}/result.json" if command[0] == "bench" else out
            status, _, stderr = run_cli([*command, "--out", target])
            line = assert_one_line_error(status, stderr, command[0])
            assert "--out" in line, line
    assert calls == []
    assert a_file.read_text() == "x"


def test_bench_never_overwrites_its_output(tmp_path, monkeypatch) -> None:
    import vla_lab.bench.inference as bench

    monkeypatch.setattr(bench, "run_benchmarks", lambda *a, **k: pytest.fail("ran before checking --out"))
    out = tmp_path / "bench.json"
    out.write_text("{}")
    status, _, stderr = run_cli(["bench", "--model", "tiny", "--out", out])
    assert "exists" in assert_one_line_error(status, stderr, "bench")


def test_decompression_bomb_and_broken_images(tmp_path, image) -> None:
    bomb = bomb_png(tmp_path / "bomb.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "half.png"
    truncated.write_bytes(image.read_bytes()[:60])
    for bad, message in ((bomb, "decompression-bomb"), (text, "cannot read"), (truncated, "cannot read"),
                         (tmp_path, "which is a directory")):
        status, _, stderr = run_cli(predict_args(image, "--image", bad)[:5] + ["--image", bad, "--instruction", "a"])
        line = assert_one_line_error(status, stderr, "predict")
        assert line.startswith("vla-lab predict: error: --image:") and message in line, line


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "7", "{not json", '{"added_tokens_decoder": [1]}'])
def test_a_tokenizer_config_that_is_not_an_object(copy_of, image, content) -> None:
    directory = copy_of()
    (directory / "tokenizer_config.json").write_text(content)
    with pytest.raises(CheckpointError, match="tokenizer_config.json"):
        load_pretrained(directory)
    status, _, stderr = run_cli(["predict", "--model", directory, "--image", image, "--image", image,
                                 "--instruction", "a"])
    assert "tokenizer_config.json" in assert_one_line_error(status, stderr, "predict")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("missing.json", "expected a JSON file"),
        ("{broken", "is not valid JSON"),
        ("[1]", "expected a JSON file"),
        ('{"steps": "many"}', "steps: got 'many'"),
        ('{"lr": "fast"}', "lr: got 'fast', expected a finite number"),
        ('{"bogus": 1}', "unknown field"),
        ('{"betas": 3}', "betas: got 3, expected two numbers in [0, 1)"),
    ],
)
def test_bad_train_config(tmp_path, value, message) -> None:
    status, _, stderr = run_cli(["train", "--out", tmp_path / "run", "--config", value])
    line = assert_one_line_error(status, stderr, "train")
    assert line.startswith("vla-lab train: error: --config:") and message in line, line
    assert not (tmp_path / "run").exists()


def test_bad_model_config(tmp_path) -> None:
    path = tmp_path / "model.json"
    path.write_text('{"llm": {"hidden_size": -3}}')
    status, _, stderr = run_cli(["train", "--out", tmp_path / "run", "--model-config", path])
    assert "--model-config:" in assert_one_line_error(status, stderr, "train")


@pytest.mark.parametrize("instruction", [123, None, ["pick", 3], b"bytes"])
def test_non_string_instruction_in_the_python_api(model, instruction) -> None:
    images = [np.zeros((32, 32, 3), np.uint8)] * 2
    with pytest.raises(InputError, match="instruction|text"):
        model.predict_action(images, instruction, [0.0] * 8)


@pytest.mark.parametrize("proprio", ["abc", ["a"] * 8, [object()] * 8, [[0.0, 1.0], [2.0]]])
def test_non_numeric_proprio_in_the_python_api(model, proprio) -> None:
    images = [np.zeros((32, 32, 3), np.uint8)] * 2
    with pytest.raises(InputError, match="proprio: got .*expected numbers"):
        model.predict_action(images, INSTRUCTION, proprio)


def test_parser_errors_are_one_line() -> None:
    for argv in (["predikt"], [], ["predict"], ["bench", "--model", "tiny", "--batch", "x"],
                 ["predict", "--model", "nope", "--image", "a", "--instruction", "b"], ["train", "--bogus"]):
        status, _, stderr = run_cli(argv)
        assert status == 2
        assert_one_line_error(status, stderr)


def test_debug_shows_the_traceback(image) -> None:
    with pytest.raises(InputError, match="--device"):
        run_cli(["--debug", *predict_args(image, "--device", "tpu")])


# --- filters, specs and prompts that would silently do nothing -------------------------------------------


def test_an_attention_spec_naming_a_missing_image(model) -> None:
    spec = {"base": "causal", "block": [["action_queries", "vision.2"]]}
    with pytest.raises(ConfigError, match=r"'vision.2', expected vision.0 to vision.1 \(the model has 2 image"):
        VLAConfig.preset("tiny", attention=spec)
    with pytest.raises(ConfigError, match="vision.2"):
        model.set_attention(spec)
    inputs = model.prepare_inputs([np.zeros((32, 32, 3), np.uint8)] * 2, INSTRUCTION, [0.0] * 8)
    with pytest.raises(ConfigError, match="vision.2"):
        model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["proprio"], spec)
    assert model.config.attention == "causal"


def test_a_capture_filter_that_matches_nothing(model) -> None:
    inputs = model.prepare_inputs([np.zeros((32, 32, 3), np.uint8)] * 2, INSTRUCTION, [0.0] * 8)
    forward = {k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask", "proprio")}
    for names in (["llm.blocks.*.attn.hook_patern"], ["llm.blocks.7.hook_resid_post"], "llm.*"):
        with pytest.raises(InputError, match="names: got"), capture(model, names=names):
            pytest.fail("the capture started")
    # segments mode keeps per-segment summaries, not the full maps
    with (pytest.raises(InputError, match=r"does not record; expected mode='full' for hook_pattern"),
          capture(model, names=["llm.blocks.*.attn.hook_pattern"]), torch.no_grad()):
        model(**forward)
    with capture(model, "full", names=["llm.blocks.*.attn.hook_pattern"]) as cache, torch.no_grad():
        model(**forward)
    assert cache.names() == ["llm.blocks.0.attn.hook_pattern", "llm.blocks.1.attn.hook_pattern"]


def test_a_prompt_beyond_max_position_embeddings_warns_with_the_numbers(image) -> None:
    data = VLAConfig.preset("tiny").to_dict()
    data["llm"]["max_position_embeddings"] = 128
    short = random_model(VLAConfig.from_dict(data))
    images = [np.zeros((32, 32, 3), np.uint8)] * 2
    with pytest.warns(UserWarning, match=r"sequence: got \d+ tokens, more than the LLM's max_position_embeddings 128"):
        short.predict_action(images, "pick up the red cube " * 40, [0.0] * 8)
    long_instruction = "pick up the red cube and place it on the plate " * 500
    status, stdout, stderr = run_cli(predict_args(image, "--instruction", long_instruction, "--json"))
    assert status == 0
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vla-lab predict: warning: sequence: got ")
    assert "max_position_embeddings 4096" in lines[0]
    assert json.loads(stdout)["sequence_length"] > 4096


def test_nothing_outside_out_is_written(tmp_path, monkeypatch, image) -> None:
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    status, _, _ = run_cli(predict_args(image, "--proprio", "nan,0,0,0,0,0,0,0"))
    assert status == 2 and snapshot(tmp_path) == before


@pytest.mark.parametrize(("argv", "command", "message"), [
    (["train", "--out", ""], "train", "argument --out: got '', expected a path"),
    (["demo", "--out", " "], "demo", "argument --out: got ' ', expected a path"),
    (["train", "--out", "x", "--seed", "-1"], "train", "argument --seed: got -1, expected an integer in [0, 2**32)"),
    (["eval", "libero", "--model", "tiny", "--env-seed", "-1"], "eval libero",
     "argument --env-seed: got -1, expected an integer in [0, 2**32)"),
    (["libero", "expert", "--env-seed", "12345678901234567890"], "libero expert",
     "argument --env-seed: got 12345678901234567890, expected an integer in [0, 2**32)"),
    (["libero", "demos", "--env-seed", "one"], "libero demos", "argument --env-seed: got 'one', expected an integer"),
])
def test_empty_outputs_and_seeds_out_of_range_are_refused_while_parsing(tmp_path, monkeypatch, argv, command,
                                                                         message) -> None:
    monkeypatch.chdir(tmp_path)  # an empty --out would have been this directory
    status, stdout, stderr = run_cli(argv)
    assert message in assert_one_line_error(status, stderr, command) and stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_bench_batch_beyond_memory_is_refused_before_allocating() -> None:
    status, stdout, stderr = run_cli(["bench", "--model", "tiny", "--batch", "1", "1000000000"])
    message = assert_one_line_error(status, stderr, "bench")
    assert message.startswith("vla-lab bench: error: --batch: got 1000000000 (its images alone ")
    assert "expected a batch whose inputs fit in this machine's" in message and stdout == ""
