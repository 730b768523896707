"""Helpers the tests import (``from testkit import ...``): reference data paths, shrunk configurations, random
inputs, and running the CLI in-process or under torchrun. Kept out of ``conftest.py`` because pytest loads every
``conftest.py`` under the name ``conftest``, so the notebooks' one would shadow these."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import torch

from vla_lab import VLAConfig
from vla_lab.config import VISION_BACKBONES

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


def run_torchrun(argv: list, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``vla-lab argv`` under torchrun with ``nproc`` local processes (standalone rendezvous, without this
    process's own torchrun variables); stdout and stderr captured as text."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "vla_lab", *(str(a) for a in argv)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


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
