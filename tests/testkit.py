"""Helpers the tests import (``from testkit import ...``): reference data paths, shrunk configurations, random
inputs, running the CLI in-process or under torchrun, and the helpers several test modules share (tiny tabletop
and training configurations, the hand-written released checkpoint layout, the literal bridge-attention block,
LIBERO demonstrations written without the simulator). A test module never imports another test module
(``tests/test_architecture.py`` checks it): what two modules share lives here, fixtures in ``conftest.py``.
Kept out of ``conftest.py`` because pytest loads every ``conftest.py`` under the name ``conftest``, so the
notebooks' one would shadow these."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from safetensors.torch import save_file

from vla_lab import VLAAdapter, VLAConfig
from vla_lab.config import QWEN25_05B_TEXT_CONFIG, VISION_BACKBONES

if TYPE_CHECKING:
    from vla_lab.training.train import TrainConfig

#: Reference data copied into the repository: released checkpoint files (MIT; the tokenizer files are
#: Qwen2.5's, Apache-2.0), the released state-dict keys and one LIBERO-Spatial observation.
DATA = Path(__file__).resolve().parent / "data"

#: A real LIBERO prompt's ids under Qwen2.5 (prefix; from the issue).
LIBERO_IDS_PREFIX = [641, 25, 3555, 1917, 1265, 279, 12305, 1896, 311, 3735, 705, 279]


def data_path(*parts: str) -> Path:
    """A file under tests/data (it is part of the repository: a missing file is an error, not a skip)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the repository's test data")
    return path


def shrink(config: VLAConfig, image_size: int = 56, width: int = 32, layers: int = 2) -> VLAConfig:
    """The same topology (backbone ids, projector, head, robot) with tiny widths and depths."""
    data = config.to_dict()
    vision = data["vision"]
    vision["image_sizes"] = [image_size] * len(vision["timm_model_ids"])
    vision["timm_kwargs"] = [
        {"embed_dim": 24 + 8 * i, "depth": 3, "num_heads": 2} for i in range(len(vision["timm_model_ids"]))
    ]
    llm = copy.deepcopy(data["llm"])
    llm.update(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_window_layers=layers,
    )
    data["llm"] = llm
    return VLAConfig.from_dict(data)


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter (action queries start at zero, gates at zero upstream)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model


def make_inputs(config: VLAConfig, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels, right-padded prompt ids and proprio for a batch."""
    gen = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    channels = config.vision.channels_per_image * config.num_images
    batch, width = len(lengths), max(lengths)
    ids = torch.randint(3, min(1000, config.llm["vocab_size"]), (batch, width), generator=gen)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    return {
        "pixel_values": torch.randn(batch, channels, size, size, generator=gen),
        "input_ids": ids,
        "attention_mask": mask,
        "proprio": torch.rand(batch, config.robot.proprio_dim, generator=gen) * 2 - 1
        if config.use_proprio
        else None,
    }


ALL_BACKBONES = sorted(VISION_BACKBONES)

T = TypeVar("T")


def run_torchrun(argv: list, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``vla-lab argv`` under torchrun with ``nproc`` local processes (standalone rendezvous, without this
    process's own torchrun variables); stdout and stderr captured as text."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "vla_lab", *(str(a) for a in argv)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def failed_run(proc: subprocess.CompletedProcess) -> str:
    """What a failed run wrote to stderr, for an assertion's message: the ranks' own lines come first, torchrun's
    report of the failure last, so both ends."""
    text = proc.stderr or ""
    return text if len(text) <= 6000 else f"{text[:3000]}\n[...]\n{text[-3000:]}"


def run_ranks(fn: Callable[[Any], T], size: int = 2) -> list[T]:
    """``fn(ranks)`` for each rank of ``size`` processes, simulated by threads of this process; the
    results in rank order (the first error, if any rank raised, is raised).

    While it runs, ``vla_lab.parallel``'s ``ranks_from_env`` and ``process_group`` give each thread its own
    rank, and ``gather`` and ``barrier`` meet across the threads: every rank gets every rank's object in rank
    order, each a copy made through pickle, as ``torch.distributed.all_gather_object`` sends it. One rank
    runs at a time, handing over at each meeting, so a simulator or a torch setting is never used by two
    threads at once. What it does not test is torchrun itself (the environment, gloo): one real torchrun run
    per command does.
    """
    import threading

    from vla_lab import parallel

    local = threading.local()
    baton = threading.Lock()  # held by the one rank that runs
    meeting = threading.Condition()
    state = {"arrived": 0, "round": 0, "broken": False}
    slots: list[bytes] = [b""] * size

    def meet() -> None:
        """Wait until every rank has come here (a rank that raised, or returned, breaks the meeting)."""
        baton.release()
        try:
            with meeting:
                if state["broken"]:
                    raise threading.BrokenBarrierError
                this_round = state["round"]
                state["arrived"] += 1
                if state["arrived"] == size:
                    state.update(arrived=0, round=this_round + 1)
                    meeting.notify_all()
                    return
                meeting.wait_for(lambda: state["round"] != this_round or state["broken"], timeout=300)
                if state["round"] == this_round:
                    state["broken"] = True
                    meeting.notify_all()
                    raise threading.BrokenBarrierError
        finally:
            baton.acquire()

    def ranks_from_env() -> Any:
        return local.ranks

    @contextlib.contextmanager
    def process_group(device: str = "cpu") -> Iterator[Any]:
        yield local.ranks

    def gather(obj: Any, ranks: Any) -> list[Any]:
        if not ranks.distributed:
            return [obj]
        meet()  # every rank has read the previous gather's slots
        slots[ranks.rank] = pickle.dumps(obj)
        meet()
        return [pickle.loads(s) for s in slots]

    def barrier(ranks: Any) -> None:
        if ranks.distributed:
            meet()

    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def rank_main(rank: int) -> None:
        local.ranks = parallel.Ranks(rank, size, rank)
        with baton:
            try:
                results[rank] = fn(local.ranks)
            except BaseException as exc:
                errors[rank] = exc
            finally:
                with meeting:  # a rank that is done meets no one again: a rank still waiting fails, not hangs
                    state["broken"] = True
                    meeting.notify_all()

    import pytest

    with pytest.MonkeyPatch.context() as patch:
        for name, replacement in (("ranks_from_env", ranks_from_env), ("process_group", process_group),
                                  ("gather", gather), ("barrier", barrier)):
            patch.setattr(parallel, name, replacement)
        threads = [threading.Thread(target=rank_main, args=(rank,), name=f"rank-{rank}") for rank in range(size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    raised = [e for e in errors if e is not None]
    first = next((e for e in raised if not isinstance(e, threading.BrokenBarrierError)), raised[0] if raised else None)
    if first is not None:
        raise first
    return results


def run_cli_ranks(argv: list, size: int = 2) -> tuple[list[int], str, str]:
    """``vla-lab argv`` as ``size`` ranks in threads of this process (:func:`run_ranks`): each rank's exit
    status, and what all of them wrote to stdout and to stderr."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from vla_lab.cli import main

    def one_rank(ranks: Any) -> int:
        try:
            return main([str(a) for a in argv])
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        statuses = run_ranks(one_rank, size)
    return statuses, out.getvalue(), err.getvalue()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``vla-lab argv`` in this process: (exit status, stdout, stderr); argparse's exits become statuses."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from vla_lab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def assert_one_line_error(status: int, stderr: str, command: str | None = None) -> str:
    """A failed command: non-zero status, exactly one line on stderr, ``vla-lab <command>: error: ...``."""
    assert status != 0, f"exit status 0 on invalid input; stderr: {stderr!r}"
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr!r}"
    assert "Traceback" not in stderr
    prefix = f"vla-lab {command}: error: " if command else "vla-lab"
    assert lines[0].startswith(prefix) and ": error: " in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root`` (relative path -> size and SHA-256): a byte-level picture of a directory."""
    import hashlib

    root = Path(root)
    return {
        str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- the tabletop world and the trainer at test sizes ----------------------------------------


def tiny_tabletop_config(attention: str = "causal") -> VLAConfig:
    """The tabletop topology (fused DINOv2 + SigLIP, 64 px, Pro head, proprio) at test sizes."""
    from vla_lab import tabletop

    data = VLAConfig.preset("tabletop").to_dict()
    data["vision"]["timm_kwargs"] = [
        {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 16},
        {"embed_dim": 24, "depth": 2, "num_heads": 2, "patch_size": 16},
    ]
    llm = copy.deepcopy(data["llm"])
    llm.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_window_layers=2)
    data.update(
        llm=llm,
        num_action_queries=8,
        head_num_heads=4,
        attention=attention,
        norm_stats=tabletop.world_statistics(500),
    )
    return VLAConfig.from_dict(data)


def tiny_train_config(**changes) -> TrainConfig:
    """A tabletop training run of 12 steps on 96 examples (one thread, seed 3)."""
    from vla_lab.training.train import TrainConfig

    base = {
        "steps": 12,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 2,
        "num_examples": 96,
        "val_examples": 16,
        "eval_interval": 0,
        "eval_episodes": 2,
        "eval_execute": 4,
        "test_episodes": 0,
        "checkpoint_interval": 0,
        "log_interval": 1,
        "num_threads": 1,
        "seed": 3,
    }
    base.update(changes)
    return TrainConfig(**base)


def read_metrics(directory) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


# --- the hand-written released layout ------------------------------------------------------------

TEST_TIMM_IDS = ["test_vit2", "test_vit"]
TEST_IMAGE_SIZE = 64

#: LIBERO-like dataset statistics (7-D actions with the gripper un-masked, 8-D proprio).
NORM_STATS = {
    "libero_spatial_no_noops": {
        "action": {
            "mask": [True] * 6 + [False],
            "q01": [-0.75, -0.8, -0.9, -0.1, -0.15, -0.2, -1.0],
            "q99": [0.9, 0.85, 0.95, 0.12, 0.2, 0.18, 1.0],
            "min": [-0.94, -0.94, -0.94, -0.2, -0.3, -0.37, -1.0],
            "max": [0.94, 0.94, 0.94, 0.2, 0.3, 0.37, 1.0],
            "mean": [0.15, 0.13, -0.14, -0.01, 0.0, 0.0, -0.04],
            "std": [0.41, 0.35, 0.5, 0.04, 0.06, 0.08, 0.99],
        },
        "proprio": {
            "q01": [-0.3, -0.3, 0.0, 2.8, -0.5, -0.3, 0.0, -0.04],
            "q99": [0.1, 0.3, 1.2, 3.3, 0.5, 0.3, 0.04, 0.0],
            "min": [-0.4, -0.4, -0.1, 2.7, -0.6, -0.4, 0.0, -0.05],
            "max": [0.2, 0.4, 1.3, 3.4, 0.6, 0.4, 0.05, 0.0],
            "mean": [-0.05, 0.0, 0.8, 3.0, 0.0, 0.0, 0.02, -0.02],
            "std": [0.1, 0.15, 0.3, 0.1, 0.2, 0.1, 0.01, 0.01],
        },
        "num_transitions": 52970,
        "num_trajectories": 432,
    }
}
RAW_PROPRIO = [-0.2, 0.25, 0.6, 3.1, 0.4, -0.28, 0.03, -0.01]

#: The fields of a released ``config.json`` other than the ones filled in per checkpoint.
RELEASED_CONFIG_FIELDS = {
    "arch_specifier": "no-align+fused-gelu-mlp",
    "architectures": ["OpenVLAForActionPrediction"],
    "auto_map": {
        "AutoConfig": "configuration_prismatic.OpenVLAConfig",
        "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
    },
    "hf_llm_id": "",
    "image_resize_strategy": "resize-naive",
    "llm_backbone_id": "qwen25-0_5b-extra",
    "llm_max_length": 2048,
    "model_type": "openvla",
    "n_action_bins": 256,
    "output_projector_states": False,
    "pad_to_multiple_of": 64,
    "pad_token_id": 32000,
    "timm_override_act_layers": [None, None],
    "transformers_version": "4.40.1",
    "use_fused_vision_backbone": True,
    "vision_backbone_id": "dinosiglip-vit-test-64px",
}


def tiny_text_config() -> dict:
    """A released-style ``text_config`` (Qwen2, full vocabulary) with tiny widths."""
    text = copy.deepcopy(QWEN25_05B_TEXT_CONFIG)
    text.update(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_window_layers=2,
        use_cache=True,
        use_mrope=False,
    )
    return text


def released_test_config(head_version: str) -> VLAConfig:
    """The VLAConfig equivalent to the hand-written ``config.json`` + files."""
    return VLAConfig(
        vision={
            "backbone_id": "custom",
            "timm_model_ids": list(TEST_TIMM_IDS),
            "image_sizes": [TEST_IMAGE_SIZE] * 2,
            "act_layers": [None, None],
            "fused": True,
        },
        num_images=2,
        projector="fused-gelu-mlp",
        llm=tiny_text_config(),
        robot="libero",
        use_proprio=True,
        head_version=head_version,
        norm_stats=copy.deepcopy(NORM_STATS),
    )


def preprocessor_config(size: int) -> dict:
    """``preprocessor_config.json`` with the released file's structure (DINOv2-style then SigLIP-style)."""
    means, stds = [[0.484375, 0.455078125, 0.40625], [0.5] * 3], [[0.228515625, 0.2236328125, 0.224609375], [0.5] * 3]
    return {
        "auto_map": {
            "AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
            "AutoProcessor": "processing_prismatic.PrismaticProcessor",
        },
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, size, size], [3, size, size]],
        "interpolations": ["bicubic", "bicubic"],
        "means": [[0.485, 0.456, 0.406], [0.5] * 3],
        "processor_class": "PrismaticProcessor",
        "stds": [[0.229, 0.224, 0.225], [0.5] * 3],
        "tvf_crop_params": [{"output_size": [size, size]}] * 2,
        "tvf_do_letterbox": False,
        "tvf_letterbox_fill": None,
        "tvf_normalize_params": [{"inplace": False, "mean": m, "std": s} for m, s in zip(means, stds)],
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None, "size": [size, size]}] * 2,
        "use_fused_vision_backbone": True,
    }


def released_name(name: str) -> str:
    """Our module name -> the released file's key (written independently of vla_lab.model.checkpoint)."""
    return re.sub(r"\.(ls[12])\.gamma$", r".\1.scale_factor", name)


def file_tensors(model: VLAAdapter, dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    """The model's weights split like the released files, cast to ``dtype``, lm_head left out."""
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "action_head": {}, "proprio_projector": {}}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to(dtype).clone().contiguous()
        if name == "language_model.lm_head.weight":
            continue
        head, _, rest = name.partition(".")
        if head in ("action_head", "proprio_projector"):
            parts[head][rest] = tensor
        else:
            parts["model"][released_name(name)] = tensor
    return parts


def write_released(
    directory: Path,
    model: VLAAdapter,
    *,
    dtype: torch.dtype = torch.bfloat16,
    prefix: str = "",
    steps: tuple = ("latest",),
    shards: int = 1,
    config: dict | None = None,
) -> Path:
    """Write ``model`` in the released directory layout by hand (no vla_lab save code)."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = file_tensors(model, dtype)
    cfg = model.config
    config_json = dict(RELEASED_CONFIG_FIELDS)
    config_json.update(
        arch_specifier=f"no-align+{cfg.projector}",
        timm_model_ids=list(cfg.vision.timm_model_ids),
        image_sizes=list(cfg.vision.image_sizes),
        text_config=dict(cfg.llm, torch_dtype=str(dtype).removeprefix("torch.")),
        torch_dtype=str(dtype).removeprefix("torch."),
        # Released config.json files hold the pre-training mixture's statistics, not the fine-tuning set's.
        norm_stats={"bridge_orig": copy.deepcopy(NORM_STATS["libero_spatial_no_noops"])},
    )
    config_json.update(config or {})
    (directory / "config.json").write_text(json.dumps(config_json, indent=2))
    (directory / "dataset_statistics.json").write_text(json.dumps(NORM_STATS, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(cfg.vision.image_size)))
    (directory / "generation_config.json").write_text(json.dumps({"_from_model_config": True}))

    keys = list(parts["model"])
    if shards == 1:
        save_file(parts["model"], str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        groups = [keys[i::shards] for i in range(shards)]
        weight_map = {}
        for i, group in enumerate(groups):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: parts["model"][k] for k in group}, str(directory / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(group, name))
        total = sum(t.numel() * t.element_size() for t in parts["model"].values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    for step in steps:
        for component in ("action_head", "proprio_projector"):
            state = {prefix + k: v for k, v in parts[component].items()}
            torch.save(state, directory / f"{component}--{step}_checkpoint.pt")
    return directory


def random_images(seed: int, n: int = 2, size: int = 80) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


# --- the bridge-attention head written out ----------------------------------------


def literal_rope(x: torch.Tensor, positions: int) -> torch.Tensor:
    """Upstream's Pro-head RoPE written out element by element (slow, for testing)."""
    dim = x.shape[-1]
    inv = [1.0 / (10000 ** (2 * i / dim)) for i in range(dim // 2)]
    out = torch.empty_like(x)
    for t in range(positions):
        for j in range(dim):
            angle = t * inv[j % (dim // 2)]  # cos/sin tables are [freqs, freqs]
            partner = -x[..., t, j + 1] if j % 2 == 0 else x[..., t, j - 1]  # interleaved rotate-half
            out[..., t, j] = x[..., t, j] * math.cos(angle) + partner * math.sin(angle)
    return out


def literal_block(block, x, adapter, task, version):
    """One bridge block as upstream computes it, with explicit loops over heads."""
    heads, hd = block.num_heads, block.head_dim
    gate = torch.tanh(block.gating_factor)
    if version == "v1":
        kq = [block.k_proj(g) for g in (x, adapter, task)]
        vq = [block.v_proj(g) for g in (x, adapter, task)]
    else:
        kq = [block.k_self(x), block.k_adapter(adapter), block.k_task(task)]
        vq = [block.v_self(x), block.v_adapter(adapter), block.v_task(task)]
    q = block.q_proj(x)
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        qh = q[..., sl]
        ks = [k[..., sl] for k in kq]
        if version == "pro":
            qh = literal_rope(qh[:, None], qh.shape[1])[:, 0]
            ks = [literal_rope(k[:, None], k.shape[1])[:, 0] for k in ks]
        scores = [qh @ k.transpose(-1, -2) for k in ks]
        logits = torch.cat([scores[0], scores[1], scores[2] * gate], -1)
        w = torch.softmax(logits / math.sqrt(hd), -1)
        outs.append(w @ torch.cat([v[..., sl] for v in vq], 1))
    out = block.o_proj(torch.cat(outs, -1))
    return block.ffn(out + x)


# --- LIBERO demonstrations without the simulator ----------------------------------------

DEMO_SCENES = ("libero_spatial_0", "libero_object_3", "libero_goal_5", "libero_10_1")
DEMO_INSTRUCTIONS = ("pick up the black bowl next to the ramekin and place it on the plate",
                "pick up the black bowl on the stove and place it on the plate")



def write_demos(directory: Path, tasks: int = 2, demos: int = 2, steps: int = 11, size: int = 128) -> Path:
    """A demonstrations directory in the layout of ``vla-lab libero demos`` (h5py, no simulator): task t, demo k
    shows scene (t + k) % 4 of tests/data's real LIBERO frames, its actions are deterministic functions of
    (t, k, step)."""
    import h5py

    frames = np.load(DATA / "libero_sim_observations.npz")
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"suite": "libero_spatial", "resolution": size, "seed": 0, "tasks": {}, "num_demos": 0, "total": 0}
    for t in range(tasks):
        name = f"task_{t}_demo.hdf5"
        with h5py.File(directory / name, "w") as f:
            group = f.create_group("data")
            for k in range(demos):
                scene = DEMO_SCENES[(t + k) % len(DEMO_SCENES)]
                demo = group.create_group(f"demo_{k}")
                n = steps + k
                step = np.arange(n)[:, None]
                actions = np.concatenate([np.sin(step * 0.3 + t + k * np.arange(1, 7)) * 0.8,
                                          np.where(step < n // 2, -1.0, 1.0)], axis=1)
                demo["actions"] = actions
                demo["obs/ee_states"] = np.cos(step * 0.1 + np.arange(6)) * 0.5
                demo["obs/gripper_states"] = np.concatenate([0.04 - step * 0.001, step * 0.001 - 0.04], axis=1)
                demo["target_pos"] = np.concatenate([step * 0.01 + t, -step * 0.01 + k, np.ones_like(step)], axis=1)
                for camera, key in (("agentview_rgb", "agentview"), ("eye_in_hand_rgb", "wrist")):
                    image = frames[f"{scene}_{key}"][:: 256 // size, :: 256 // size]
                    demo[f"obs/{camera}"] = np.stack([np.roll(image, s, axis=1) for s in range(n)])
                demo.attrs["init_state_index"] = k
                demo.attrs["num_samples"] = n
            group.attrs["num_demos"] = demos
        total = sum(steps + k for k in range(demos))
        manifest["tasks"][str(t)] = {"task_name": f"task_{t}", "instruction": DEMO_INSTRUCTIONS[t % 2], "file": name,
                                     "num_demos": demos, "total": total, "init_states": list(range(demos))}
        manifest["num_demos"] += demos
        manifest["total"] += total
    (directory / "demos.json").write_text(json.dumps(manifest))
    return directory


def tiny_libero_recipe(demos_dir: Path, **changes) -> TrainConfig:
    """The LIBERO recipe on ``demos_dir`` for 6 steps (one thread, seed 5)."""
    from vla_lab.training.train import TrainConfig

    base = {"steps": 6, "batch_size": 4, "warmup_steps": 2, "mse_warmup_steps": 2, "log_interval": 1,
            "checkpoint_interval": 0, "num_threads": 1, "seed": 5}
    return TrainConfig.libero_recipe(str(demos_dir), **{**base, **changes})




def tiny_checkpoint(directory: Path) -> Path:
    """A tiny tabletop checkpoint (its own tokenizer files and dataset statistics) written to ``directory``."""
    from vla_lab import tabletop
    from vla_lab.model import save_pretrained

    save_pretrained(tabletop.initial_model(tiny_tabletop_config(), seed=0), directory, step=1)
    return directory


def gray_png(path: Path) -> Path:
    """A 64 x 64 RGB PNG of one gray at ``path``."""
    import PIL.Image

    PIL.Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(path)
    return path
