"""The prompt is part of what a model is (SPEC section 1): released checkpoints get Qwen's chat template, exactly as
upstream's LIBERO evaluation builds it (``use_minivlm=True``); vla-lab's small trained models keep the In/Out prompt
they were trained with; the choice is saved, overridable and recorded.

The oracle is transformers' own ``Qwen2Tokenizer`` built from the released tokenizer files in ``tests/data``, applied
to the template strings written out below from reading upstream's ``get_vla_action`` (not from vla_lab's constant).
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from testkit import (
    DATA,
    RAW_PROPRIO,
    assert_one_line_error,
    make_inputs,
    random_images,
    randomize,
    released_test_config,
    run_cli,
    write_released,
)

import vla_lab
from vla_lab import VLAAdapter, VLAConfig, load_pretrained, save_pretrained
from vla_lab.config import PRESETS
from vla_lab.errors import InputError
from vla_lab.model import FastVLA, forward_inputs
from vla_lab.processing.tokenizer import SAVED_FILES as TOKENIZER_FILES

SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def chat_text(instruction: str) -> str:
    """Upstream's minivlm prompt (``experiments/robot/openvla_utils.py``, ``get_vla_action``)."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat action should the robot take to "
            f"{instruction.lower()}?<|im_end|>\n<|im_start|>assistant\n")


def in_out_text(instruction: str) -> str:
    """Upstream's other branch (``use_minivlm=False``)."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


#: Five instructions of each of LIBERO's four suites as the benchmark spells them, then variants a user may type:
#: upper case, punctuation, digits, and a special token's text inside an instruction.
INSTRUCTIONS = [
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the black bowl in the top drawer of the wooden cabinet and place it on the plate",
    "pick up the black bowl on the cookie box and place it on the plate",
    "pick up the black bowl next to the ramekin and place it on the plate",
    "pick up the black bowl on the stove and place it on the plate",
    "pick up the alphabet soup and place it in the basket",
    "pick up the bbq sauce and place it in the basket",
    "pick up the cream cheese and place it in the basket",
    "pick up the chocolate pudding and place it in the basket",
    "pick up the orange juice and place it in the basket",
    "open the middle drawer of the cabinet",
    "put the wine bottle on top of the cabinet",
    "push the plate to the front of the stove",
    "turn on the stove",
    "put the cream cheese in the bowl",
    "put both the alphabet soup and the tomato sauce in the basket",
    "turn on the stove and put the moka pot on it",
    "put the white mug on the left plate and put the yellow and white mug on the right plate",
    "put the yellow and white mug in the microwave and close it",
    "pick up the book and place it in the back compartment of the caddy",
    "PICK UP THE BLACK BOWL ON THE RAMEKIN AND PLACE IT ON THE PLATE",
    "Put the Wine Bottle on the Rack",
    "open the top drawer, then put the bowl inside!",
    "put 2 bowls on plate #3 (the 1st one), 10.5 cm apart; don't stop.",
    "put the bowl on the plate<|im_end|> and <|im_start|>user then stop",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.Qwen2Tokenizer.from_pretrained(str(DATA / "released_checkpoint"))


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
    """A tiny model in the released layout (no vla_lab_config.json) with the released tokenizer files."""
    torch.manual_seed(31)
    model = randomize(VLAAdapter(released_test_config("pro")), seed=32, scale=0.1).eval()
    directory = write_released(tmp_path_factory.mktemp("released") / "ckpt", model, dtype=torch.float32)
    for name in TOKENIZER_FILES:
        shutil.copyfile(DATA / "released_checkpoint" / name, directory / name)
    return directory


def test_released_checkpoint_ids_equal_transformers_on_upstream_template(released_dir, hf_tokenizer):
    assert len(INSTRUCTIONS) >= 20
    model = load_pretrained(released_dir)
    assert model.config.prompt == "qwen-chat" and not (released_dir / "vla_lab_config.json").exists()
    images = random_images(0)
    for instruction in INSTRUCTIONS:
        for prompt, text in (("qwen-chat", chat_text(instruction)), ("openvla", in_out_text(instruction))):
            batch = model.prepare_inputs(images, instruction, prompt=None if prompt == "qwen-chat" else prompt)
            assert batch["prompt"] == prompt and batch["prompts"] == [text]
            assert batch["input_ids"][0].tolist() == hf_tokenizer(text)["input_ids"], (prompt, instruction)
    # A batch of all of them: each row right-padded, the same ids.
    batch = model.prepare_inputs([images] * len(INSTRUCTIONS), INSTRUCTIONS)
    for row, mask, instruction in zip(batch["input_ids"], batch["attention_mask"], INSTRUCTIONS):
        want = hf_tokenizer(chat_text(instruction))["input_ids"]
        assert row[: int(mask.sum())].tolist() == want


def test_special_tokens_are_single_ids_as_transformers_encodes_them(released_dir, hf_tokenizer):
    from vla_lab.processing import load_qwen25_tokenizer

    for tokenizer in (load_pretrained(released_dir).processor.tokenizer, load_qwen25_tokenizer()):
        for content, token_id in (("<|im_start|>", 151644), ("<|im_end|>", 151645), ("<|endoftext|>", 151643)):
            assert tokenizer.encode(content) == [token_id] == hf_tokenizer(content)["input_ids"]
        text = chat_text(INSTRUCTIONS[-1])
        ids = tokenizer.encode(text)
        assert ids == hf_tokenizer(text)["input_ids"]
        assert ids.count(151644) == 4 and ids.count(151645) == 3  # two in the template, two in the instruction


def test_upstream_training_conversation_gives_the_same_ids(hf_tokenizer):
    """Upstream's training (``QwenPromptBuilder``, an empty assistant turn, the last three ids deleted) ends where
    the evaluation's prompt ends: in ``<|im_start|>assistant\\n``."""
    for instruction in INSTRUCTIONS[:20]:
        human = (f"<|im_start|>user\nWhat action should the robot take to {instruction}?<|im_end|>\n"
                 "<|im_start|>assistant\n")
        conversation = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + human + " <|im_end|>\n"
        ids = hf_tokenizer(conversation[:-1] + "<|endoftext|>")["input_ids"]
        assert ids[-3:] == [220, 151645, 151643]
        assert ids[:-3] == hf_tokenizer(chat_text(instruction))["input_ids"]


def test_layout_follows_the_chat_prompt(released_dir, hf_tokenizer):
    model = load_pretrained(released_dir)
    instruction = INSTRUCTIONS[0]
    pred = model.predict_action(random_images(1), instruction, RAW_PROPRIO)
    ids = hf_tokenizer(chat_text(instruction))["input_ids"]
    assert len(ids) == 56 and pred.input_ids == [ids] and pred.prompt == "qwen-chat"
    layout = pred.layout
    spans = layout.to_dict()
    assert spans["tok0"] == [0, 1]  # <|im_start|>, then the patches
    num_patches = layout.num_patches
    assert spans["text"] == [1 + num_patches, num_patches + 56]  # the other 55 prompt ids
    assert layout.prompt_length == 56
    task, queries = layout.head_input_positions("released")
    assert (task.start, queries.start) == (0, num_patches + 55)  # tok0, and the prompt's last id ("\n"), as upstream
    in_out = model.predict_action(random_images(1), instruction, RAW_PROPRIO, prompt="openvla")
    assert in_out.layout.prompt_length == 31 and in_out.prompt == "openvla"
    assert not np.array_equal(in_out.actions, pred.actions)


def test_configurations_say_their_prompt(tmp_path):
    assert VLAConfig().prompt == "qwen-chat"
    for name in PRESETS:
        want = "openvla" if name in ("tabletop", "libero-small") else "qwen-chat"
        assert VLAConfig.preset(name).prompt == want, name
    with pytest.raises(Exception, match="^prompt: got 'chat', expected one of"):
        VLAConfig(prompt="chat")
    # A configuration saved before the field existed (vla-lab 0.1) took the In/Out prompt.
    saved = VLAConfig.preset("tiny").to_dict()
    del saved["prompt"]
    assert VLAConfig.from_saved(saved).prompt == "openvla"
    path = tmp_path / "vla_lab_config.json"
    path.write_text(json.dumps(saved))
    assert VLAConfig.read(path).prompt == "openvla"
    assert VLAConfig.from_dict(saved).prompt == "qwen-chat"  # a configuration given now gets today's default


def test_prompt_is_saved_and_an_old_checkpoint_keeps_in_out(tmp_path, hf_tokenizer):
    model = randomize(VLAAdapter(VLAConfig.preset("tiny")), seed=5).eval()
    out = save_pretrained(model, tmp_path / "ckpt")
    assert json.loads((out / "vla_lab_config.json").read_text())["prompt"] == "qwen-chat"
    assert load_pretrained(out).config.prompt == "qwen-chat"
    assert load_pretrained(out, prompt="openvla").config.prompt == "openvla"
    with pytest.raises(Exception, match="prompt: got 'nope'"):
        load_pretrained(out, prompt="nope")
    stored = json.loads((out / "vla_lab_config.json").read_text())
    del stored["prompt"]
    (out / "vla_lab_config.json").write_text(json.dumps(stored))
    old = load_pretrained(out)
    assert old.config.prompt == "openvla"
    ids = old.prepare_inputs(random_images(2, size=56), "Open The Drawer")["input_ids"][0].tolist()
    assert ids == hf_tokenizer(in_out_text("Open The Drawer"))["input_ids"]


def test_shipped_models_keep_the_prompt_they_were_trained_with():
    from vla_lab.libero import models as libero_models
    from vla_lab.tabletop import load_shipped as load_tabletop
    from vla_lab.tabletop import shipped_path
    from vla_lab.worlds.tabletop import build_world_tokenizer

    directories = [libero_models.shipped_path(m) for m in libero_models.MASKS]
    directories += sorted(p.parent for p in shipped_path("causal").parent.glob("*/vla_lab_config.json"))
    assert len(directories) == 13
    for directory in directories:
        assert json.loads((directory / "vla_lab_config.json").read_text())["prompt"] == "openvla", directory
    model = load_tabletop("causal")
    assert model.config.prompt == "openvla"
    ids = model.prepare_inputs(random_images(3, size=64), "pick up the red cube")["input_ids"][0].tolist()
    assert ids == build_world_tokenizer().encode(in_out_text("pick up the red cube"))
    with pytest.raises(InputError, match=r"^prompt: got 'qwen-chat', expected one of \('openvla',\)"):
        load_tabletop("causal", prompt="qwen-chat")


@pytest.mark.parametrize("version", ["pro", "v1"])
def test_fast_path_refuses_missing_or_unexpected_proprio_like_forward(version):
    model = randomize(VLAAdapter(VLAConfig.preset("tiny", head_version=version)), seed=7).eval()
    inputs = make_inputs(model.config, [6, 9], seed=2)
    fast = FastVLA(model)
    with pytest.raises(InputError) as plain:
        model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], None)
    with pytest.raises(InputError) as quick:
        fast(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], None)
    assert str(quick.value) == str(plain.value) and str(plain.value).startswith("proprio: got None")
    fast.cuda_graphs = True  # the check comes before the graph path (it replayed the last call's proprio)
    with pytest.raises(InputError, match="^proprio: got None"):
        fast(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], None)
    fast.cuda_graphs = False
    with pytest.raises(InputError, match=r"^proprio: got shape \(2, 3\), expected \(2, 8\)"):
        fast(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["proprio"][:, :3])
    out = fast(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["proprio"])
    torch.testing.assert_close(out, model(**inputs).normalized_actions, atol=1e-5, rtol=0)
    assert all(plan.key[-1] is True for plan in fast.plans.values())  # the plan key holds whether proprio is there

    bare = randomize(VLAAdapter(VLAConfig.preset("tiny", head_version=version, use_proprio=False)), seed=8).eval()
    with pytest.raises(InputError, match="^proprio: got values, expected None"):
        FastVLA(bare)(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["proprio"])
    fast_bare = FastVLA(bare)
    out = fast_bare(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], None)
    torch.testing.assert_close(out, bare(**{**inputs, "proprio": None}).normalized_actions, atol=1e-5, rtol=0)
    assert all(plan.key[-1] is False for plan in fast_bare.plans.values())


def test_fast_predict_action_takes_the_prompt(released_dir):
    model = load_pretrained(released_dir)
    fast = FastVLA(model)
    for prompt in ("qwen-chat", "openvla"):
        want = model.predict_action(random_images(4), INSTRUCTIONS[2], RAW_PROPRIO, prompt=prompt)
        got = fast.predict_action(random_images(4), INSTRUCTIONS[2], RAW_PROPRIO, prompt=prompt)
        assert got.input_ids == want.input_ids and got.prompt == prompt
        np.testing.assert_allclose(got.actions, want.actions, atol=1e-5, rtol=0)
    batch = model.prepare_inputs(random_images(4), INSTRUCTIONS[2], RAW_PROPRIO)
    assert set(forward_inputs(batch)) == {"pixel_values", "input_ids", "attention_mask", "proprio"}


# --- vla-lab eval libero: upstream's inputs by default, every setting recorded -------------------------------------

needs_libero = pytest.mark.skipif(importlib.util.find_spec("libero") is None,
                                  reason="LIBERO is not installed (pip install -e '.[libero]')")
RECORDS = DATA.parent.parent / "notebooks" / "records" / "libero-eval"


@needs_libero
def test_eval_of_a_released_checkpoint_records_its_inputs(released_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["eval", "libero", "--model", released_dir, "--suite", "libero_spatial", "--tasks", "0", "--trials",
            "1", "--max-steps", "16", "--no-progress", "--out", out]
    status, stdout, err = run_cli([*argv, "--json"])
    assert status == 0, err
    result = json.loads(stdout)
    want = {"prompt": "qwen-chat", "dtype": "bfloat16", "unnorm_key": "libero_spatial_no_noops", "num_threads": 1}
    assert {k: result[k] for k in want} == want
    assert result["vla_lab"] == vla_lab.__version__ and result["episodes"][0]["steps"] == 16
    for name in ("run.json", "results.json"):
        stored = json.loads((out / name).read_text())
        stored = stored.get("settings", stored)
        assert {k: stored[k] for k in want} == want, name
        assert stored["vla_lab"] == vla_lab.__version__ and stored["torch"] == torch.__version__
        assert stored["cpu"] == result["cpu"] != ""  # records depend on the machine too
    # Another prompt, dtype or thread count changes the records: --resume names the difference.
    for extra, named in ((["--prompt", "openvla"], "prompt"), (["--dtype", "float32"], "dtype"),
                         (["--num-threads", "2"], "num_threads")):
        status, _, err = run_cli([*argv, *extra, "--resume"])
        line = assert_one_line_error(status, err, "eval")
        assert f": {named}: got " in line
    status, _, err = run_cli([*argv, "--num-threads", "0", "--overwrite"])
    assert "--num-threads: got 0, expected a positive integer" in assert_one_line_error(status, err, "eval")


@needs_libero
@pytest.mark.slow
def test_shipped_libero_record_reproduces_with_one_thread(tmp_path):
    """The command's defaults for a shipped model (its float32 weights, its In/Out prompt, one thread) give the
    committed record of its shortest held-out success, step for step."""
    records = [json.loads(line) for line in (RECORDS / "libero-spatial-causal" / "episodes.jsonl").open()]
    record = min((r for r in records if r["success"]), key=lambda r: r["steps"])
    state = record["init_state"]
    status, stdout, err = run_cli(["eval", "libero", "--model", "libero-spatial-causal", "--suite", "libero_spatial",
                                   "--tasks", str(record["task"]), "--init-states", f"{state}:{state + 1}",
                                   "--no-progress", "--json", "--out", tmp_path / "run"])
    assert status == 0, err
    result = json.loads(stdout)
    assert (result["prompt"], result["dtype"], result["num_threads"]) == ("openvla", "float32", 1)
    timing = ("policy_ms", "sim_ms", "reset_ms")
    got = {k: v for k, v in result["episodes"][0].items() if k not in timing}
    assert got == {k: v for k, v in record.items() if k not in timing}


def test_train_refuses_a_prompt_its_tokenizer_cannot_encode_before_any_work(tmp_path):
    out = tmp_path / "run"
    status, _, err = run_cli(["train", "--out", out, "--steps", "2", "--prompt", "qwen-chat"])
    line = assert_one_line_error(status, err, "train")
    assert "prompt: got 'qwen-chat', expected one of ('openvla',)" in line and "tabletop" in line
    assert not out.exists()
    status, _, err = run_cli(["train", "--out", out, "--prompt", "chatml"])
    assert "--prompt: invalid choice" in assert_one_line_error(status, err, "train")
