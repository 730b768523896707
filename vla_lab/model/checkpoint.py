"""Checkpoint I/O in the released VLA-Adapter directory layout (SPEC section 6).

A directory holds ``config.json`` (model_type "openvla"), ``model.safetensors`` (or shards with
``model.safetensors.index.json``; the tied ``lm_head`` is left out), ``action_head--*checkpoint.pt``,
``proprio_projector--*checkpoint.pt``, ``dataset_statistics.json``, ``preprocessor_config.json``
and tokenizer files. vla_lab adds ``vla_lab_config.json`` with its full configuration.

Nothing is executed: ``.pt`` files are read with ``torch.load(weights_only=True)`` and no code
named by ``auto_map`` is imported. All name differences between our modules and the files live in
:func:`to_released_key` / :func:`from_released_key`.

This module knows the files; it never builds a model. :meth:`vla_lab.VLAAdapter.from_pretrained`
builds one from what :func:`read` returns, and :meth:`vla_lab.VLAAdapter.save_pretrained` hands
:func:`write` its configuration, state dict and processor.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vla_lab import files
from vla_lab.config import ROBOT_PRESETS, VISION_BACKBONES, AttentionLike, RobotConfig, VisionConfig, VLAConfig
from vla_lab.errors import CheckpointError, ConfigError, ExportError, VLALabError
from vla_lab.model.checkpoint_checks import (
    VLA_LAB_CONFIG,
    check_configs_agree,
    check_finite,
    check_floating,
    check_released_layout,
    check_sizes,
    to_released_key,
)
from vla_lab.model.checkpoint_checks import from_released_key as from_released_key  # re-exported
from vla_lab.model.checkpoint_checks import mismatches as mismatches  # re-exported
from vla_lab.processing import VLAProcessor
from vla_lab.processing.tokenizer import SAVED_FILES as TOKENIZER_FILES

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
COMPONENTS = ("action_head", "proprio_projector")

def display_path(path: str | Path) -> str:
    """A checkpoint location for records and figures: relative to the directory that holds the package
    (the repository, for the shipped models) or to the working directory when inside them, else absolute."""
    resolved = Path(path).resolve()
    for root in (Path(__file__).resolve().parents[2], Path.cwd().resolve()):
        if resolved.is_relative_to(root):
            return str(resolved.relative_to(root))
    return str(resolved)


def default_dtype(directory: str | Path | None) -> str:
    """The dtype a checkpoint directory runs in unless told otherwise: ``bfloat16`` for a released checkpoint
    (no ``vla_lab_config.json``), as upstream's evaluation loads it (SPEC section 5); for one of vla-lab's,
    the dtype its weights were saved in (``config.json``'s ``torch_dtype``: float32 or bfloat16); ``float32``
    without a directory (random weights)."""
    if directory is None:
        return "float32"
    directory = Path(directory)
    if not (directory / VLA_LAB_CONFIG).is_file():
        return "bfloat16"
    try:
        saved = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("torch_dtype")
    except (OSError, ValueError, AttributeError):
        saved = None  # loading the directory reports what is wrong with it
    return "bfloat16" if saved == "bfloat16" else "float32"


def stored_prompt(directory: str | Path) -> str:
    """The prompt a checkpoint directory's model takes, read without loading it: its ``vla_lab_config.json``'s
    (:meth:`VLAConfig.read`), else, for a released checkpoint, ``qwen-chat`` (upstream's)."""
    path = Path(directory) / VLA_LAB_CONFIG
    if not path.is_file():
        return VLAConfig().prompt
    with _config_errors(VLA_LAB_CONFIG):
        return VLAConfig.read(path).prompt


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def released_config(config: VLAConfig, dtype: torch.dtype) -> dict[str, Any]:
    """``config.json`` in the released layout."""
    vision = config.vision
    backbone = vision.backbone_id if vision.backbone_id in VISION_BACKBONES else "custom"
    text = dict(config.llm)
    text["torch_dtype"] = _torch_dtype_name(dtype)
    return {
        "arch_specifier": f"no-align+{config.projector}",
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {
            "AutoConfig": "configuration_prismatic.OpenVLAConfig",
            "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
        },
        "hf_llm_id": "",
        "image_resize_strategy": "resize-naive",
        "image_sizes": list(vision.image_sizes),
        "llm_backbone_id": "qwen25-0_5b-extra" if config.llm_dim == 896 else "qwen25-custom",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": 256,
        "norm_stats": config.norm_stats or {},
        "output_projector_states": False,
        "pad_to_multiple_of": 64,
        "pad_token_id": 32000,
        "text_config": text,
        "timm_model_ids": list(vision.timm_model_ids),
        "timm_override_act_layers": list(vision.act_layers),
        "torch_dtype": _torch_dtype_name(dtype),
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": bool(vision.fused),
        "vision_backbone_id": backbone,
    }


def split_state_dict(state: dict[str, torch.Tensor], config: VLAConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Our state dict -> {"model": ..., "action_head": ..., "proprio_projector": ...} with released names."""
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "action_head": {}, "proprio_projector": {}}
    tied = bool(config.llm.get("tie_word_embeddings", True))
    for name, tensor in state.items():
        head, _, rest = name.partition(".")
        if head in COMPONENTS:
            parts[head][rest] = tensor
        elif tied and name == "language_model.lm_head.weight":
            continue
        else:
            parts["model"][to_released_key(name)] = tensor
    return parts


def _check_writable(directory: Path, names: list[str], overwrite: bool) -> None:
    existing = [n for n in names if (directory / n).exists()]
    if existing and not overwrite:
        raise ExportError(f"save_pretrained: {directory / existing[0]} exists; pass overwrite=True to replace it")


def write(
    directory: str | Path,
    config: VLAConfig,
    state: dict[str, torch.Tensor],
    processor: VLAProcessor,
    *,
    dtype: torch.dtype,
    step: int | str | None = None,
    max_shard_bytes: int | None = None,
    ddp_prefix: bool = False,
    overwrite: bool = False,
    save_tokenizer: bool | None = None,
) -> Path:
    """Write a model's ``config``, ``state`` dict and ``processor`` in the released layout; return the directory.

    ``step`` names the component files (``action_head--{step}_checkpoint.pt``; None gives
    ``action_head--checkpoint.pt``, ``"latest"`` gives ``action_head--latest_checkpoint.pt``).
    ``dtype`` converts floating tensors (released files are bf16). ``max_shard_bytes`` splits the
    safetensors file with an index. ``ddp_prefix`` writes ``module.``-prefixed component keys, as
    DDP training does. ``save_tokenizer`` defaults to True unless the tokenizer is the stock Qwen2.5.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"save_pretrained: {directory} is a file, expected a directory")
    suffix = "checkpoint.pt" if step is None else f"{step}_checkpoint.pt"
    parts = {
        key: {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in part.items()}
        for key, part in split_state_dict(state, config).items()
    }
    # after the cast: a float16 file can overflow what float32 held
    check_finite({k if c == "model" else f"{c}.{k}": v for c, part in parts.items() for k, v in part.items()},
                 "save_pretrained")
    shards = _plan_shards(parts["model"], max_shard_bytes)
    component_files = {c: f"{c}--{suffix}" for c in COMPONENTS if parts[c]}
    names = ["config.json", VLA_LAB_CONFIG, "dataset_statistics.json", "preprocessor_config.json"]
    names += list(shards) + list(component_files.values()) + ([WEIGHTS_INDEX] if len(shards) > 1 else [])
    # Everything that can fail is settled before the first file is written.
    preprocessor = processor.image_processor.config.to_preprocessor_config()
    preprocessor["use_fused_vision_backbone"] = bool(config.vision.fused)
    if save_tokenizer is None:
        save_tokenizer = not getattr(processor.tokenizer, "is_stock_qwen25", False)
    names += list(TOKENIZER_FILES) if save_tokenizer else []
    _check_writable(directory, names, overwrite)
    config_json = released_config(config, dtype)

    # Everything is written into a fresh directory next to the target, then moved into place, so that
    # a killed process never leaves a half-written checkpoint and an overwritten one keeps no stale file.
    directory.parent.mkdir(parents=True, exist_ok=True)
    temp = files.temporary_dir_for(directory)
    try:
        (temp / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
        config.to_json(temp / VLA_LAB_CONFIG)
        (temp / "dataset_statistics.json").write_text(files.dumps(config.norm_stats or {}) + "\n")
        (temp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
        metadata = {"format": "pt"}
        for filename, keys in shards.items():
            with _writing(directory, filename):
                save_file({k: parts["model"][k] for k in keys}, str(temp / filename), metadata=metadata)
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in parts["model"].values())
            weight_map = {k: filename for filename, keys in shards.items() for k in keys}
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (temp / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        for component, filename in component_files.items():
            prefix = "module." if ddp_prefix else ""
            with _writing(directory, filename):
                torch.save({prefix + k: v for k, v in parts[component].items()}, temp / filename)
        if save_tokenizer:
            processor.tokenizer.save(temp)
        if not directory.exists():
            os.replace(temp, directory)
            return directory
        for stale in _weight_files(directory):  # weights of another step or sharding would mix with these
            if stale.name not in names:
                stale.unlink()
        for path in temp.iterdir():
            os.replace(path, directory / path.name)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return directory


@contextlib.contextmanager
def _writing(directory: Path, filename: str) -> Iterator[None]:
    """safetensors and torch.save report a failed write (a full disk) as their own errors: one line instead."""
    try:
        yield
    except (SafetensorError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{directory}: got an error writing {filename} ({type(exc).__name__}: {detail}), "
                              "expected a writable file system with room for the checkpoint") from None


def _weight_files(directory: Path) -> list[Path]:
    found = [*directory.glob("*.safetensors"), *directory.glob(WEIGHTS_INDEX)]
    found += [p for c in COMPONENTS for p in directory.glob(f"{c}--*checkpoint.pt")]
    return found


def _plan_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> dict[str, list[str]]:
    if not max_shard_bytes:
        return {WEIGHTS: list(tensors)}
    groups: list[list[str]] = [[]]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    n = len(groups)
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": keys for i, keys in enumerate(groups)}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _check_file(path: Path, expected: str) -> None:
    """A checkpoint file that is missing, or is a FIFO, directory, device or symlink loop: one line."""
    if not files.present(path):
        raise CheckpointError(f"checkpoint: {path.name} is missing from {path.parent}")
    files.check_regular_file(path, "checkpoint", expected, CheckpointError)


def _read_json(path: Path) -> dict[str, Any]:
    _check_file(path, "a JSON file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _check_file(path, "a safetensors file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {path.name} is not a readable safetensors file ({exc})") from None


def read_model_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The VLM weights, from one safetensors file or the shards an index names."""
    if (directory / WEIGHTS_INDEX).exists():
        index = _read_json(directory / WEIGHTS_INDEX)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"checkpoint: {WEIGHTS_INDEX} has no weight_map, expected key -> shard file")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_read_safetensors(directory / shard))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(f"checkpoint: {WEIGHTS_INDEX} names {len(missing)} key(s) absent from the shards")
        return tensors
    return _read_safetensors(directory / WEIGHTS)


def find_component(directory: Path, component: str, step: int | str | None = None) -> Path | None:
    """The ``{component}--*checkpoint.pt`` file (one, or the one for ``step``); None if there is none."""
    candidates = sorted(directory.glob(f"{component}--*checkpoint.pt"))
    if step is not None:
        wanted = directory / f"{component}--{step}_checkpoint.pt"
        if wanted not in candidates:
            names = [c.name for c in candidates]
            raise CheckpointError(f"checkpoint: step {step!r} has no {wanted.name}; found {names}")
        return wanted
    if len(candidates) > 1:
        names = [c.name for c in candidates]
        raise CheckpointError(f"checkpoint: several {component} files {names}; pass step= to choose one")
    return candidates[0] if candidates else None


def read_component(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pt`` state dict, tensors only (``weights_only=True``), without a DDP ``module.`` prefix."""
    files.check_regular_file(path, "checkpoint", "a torch state dict file", CheckpointError)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise CheckpointError(f"checkpoint: {path.name} holds objects other than tensors, refused ({first})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint: {path.name} is not a readable torch file ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint: {path.name} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _infer_projector(weights: dict[str, torch.Tensor]) -> str:
    if "projector.fc3.weight" in weights:
        return "fused-gelu-mlp"
    if "projector.fc2.weight" in weights:
        return "gelu-mlp"
    return "linear"


def _infer_robot(head: dict[str, torch.Tensor], proprio: dict[str, torch.Tensor] | None) -> str:
    # A missing key matches any preset here; the full key check reports it afterwards.
    fc2, fc1 = head.get("model.fc2.weight"), (proprio or {}).get("fc1.weight")
    action_dim = fc2.shape[0] if fc2 is not None and fc2.ndim == 2 else None
    proprio_dim = fc1.shape[1] if fc1 is not None and fc1.ndim == 2 else None
    for name, preset in ROBOT_PRESETS.items():
        if action_dim in (None, preset["action_dim"]) and proprio_dim in (None, preset["proprio_dim"]):
            return name
    raise CheckpointError(
        f"checkpoint: action_dim {action_dim} / proprio_dim {proprio_dim} match no robot preset; pass robot=..."
    )


def config_from_released(
    config_json: dict[str, Any],
    weights: dict[str, torch.Tensor],
    head: dict[str, torch.Tensor],
    proprio: dict[str, torch.Tensor] | None,
    num_images: int,
    robot: str | dict | None,
) -> VLAConfig:
    """Build a VLAConfig from a released ``config.json`` and the shapes of the weights."""
    try:
        ids = list(config_json["timm_model_ids"])
        vision: dict[str, Any] = {
            "backbone_id": config_json["vision_backbone_id"]
            if config_json["vision_backbone_id"] in VISION_BACKBONES
            else "custom",
            "timm_model_ids": ids,
            "image_sizes": list(config_json["image_sizes"]),
            "act_layers": list(config_json.get("timm_override_act_layers") or [None] * len(ids)),
            "fused": config_json.get("use_fused_vision_backbone"),
        }
        text = {k: v for k, v in config_json["text_config"].items() if k not in ("torch_dtype", "transformers_version")}
    except KeyError as exc:
        raise CheckpointError(f"checkpoint: config.json lacks {exc.args[0]!r}, expected the released layout") from None
    version = "pro" if any(".k_self." in k for k in head) else "v1"
    queries = weights.get("action_queries.weight")
    with _config_errors("config.json"):
        return VLAConfig(
            vision=VisionConfig(**vision),
            num_images=num_images,
            projector=_infer_projector(weights),
            llm=text,
            num_action_queries=int(queries.shape[0]) if queries is not None else 64,
            robot=RobotConfig.coerce(robot or _infer_robot(head, proprio)),
            use_proprio=proprio is not None,
            head_version=version,
            norm_stats=config_json.get("norm_stats") or None,
            name="released",
        )


@contextlib.contextmanager
def _config_errors(filename: str) -> Iterator[None]:
    """Turn a configuration the files describe but vla_lab cannot build into one CheckpointError."""
    try:
        yield
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint: {filename} describes an unusable model ({_one_line(exc)})") from None
    except VLALabError:
        raise
    except KeyError as exc:
        raise CheckpointError(f"checkpoint: {filename} lacks {exc.args[0]!r}, expected the released layout") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"checkpoint: {filename} has a malformed field ({_one_line(exc)})") from None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Found:
    """What a checkpoint directory holds: the configuration, the state dict (our names) and the processor."""

    directory: Path
    config: VLAConfig
    state: dict[str, torch.Tensor]
    processor: VLAProcessor


def read(
    path: str | Path,
    *,
    attention: AttentionLike | None = None,
    step: int | str | None = None,
    num_images: int | None = None,
    robot: str | dict[str, Any] | None = None,
    prompt: str | None = None,
) -> Found:
    """Read a checkpoint directory in the released layout (see :meth:`vla_lab.VLAAdapter.from_pretrained`)."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: got {str(path)!r}, expected a checkpoint directory")
    config_json = _read_json(directory / "config.json")
    check_released_layout(config_json)
    weights = read_model_weights(directory)
    head_path = find_component(directory, "action_head", step)
    if head_path is None:
        raise CheckpointError(f"checkpoint: no action_head--*checkpoint.pt in {directory}")
    head = read_component(head_path)
    proprio_path = find_component(directory, "proprio_projector", step)
    proprio = read_component(proprio_path) if proprio_path is not None else None

    ours = directory / VLA_LAB_CONFIG
    if ours.exists():
        with _config_errors(VLA_LAB_CONFIG):
            config = VLAConfig.from_saved(_read_json(ours))
        check_configs_agree(config_json, config)
        if num_images is not None:
            config.num_images = num_images
        if robot is not None:
            config.robot = RobotConfig.coerce(robot)
    else:
        config = config_from_released(config_json, weights, head, proprio, num_images or 2, robot)
    stats_path = directory / "dataset_statistics.json"
    if stats_path.exists():
        stats = _read_json(stats_path)
        if not isinstance(stats, dict) or not all(isinstance(v, dict) for v in stats.values()):
            raise CheckpointError("checkpoint: dataset_statistics.json is not {dataset: {action: ..., proprio: ...}}")
        config.norm_stats = stats or config.norm_stats
    if attention is not None:
        config.attention = attention
    if prompt is not None:
        config.prompt = prompt
    config = VLAConfig.from_dict(config.to_dict())  # validate once more after the overrides

    head_dim = head.get("model.fc1.weight")
    if head_dim is not None and head_dim.shape[0] != config.llm_dim:
        raise CheckpointError(
            f"checkpoint: action head width {head_dim.shape[0]} does not match the LLM width {config.llm_dim}"
        )
    state = {from_released_key(k): v for k, v in weights.items()}
    state.update({f"action_head.{k}": v for k, v in head.items()})
    if proprio is not None:
        state.update({f"proprio_projector.{k}": v for k, v in proprio.items()})
    check_sizes(config, state)
    check_floating(state)
    check_finite(state)

    with _config_errors("preprocessor_config.json or a tokenizer file"):
        processor = VLAProcessor.from_directory(directory, config)
    return Found(directory, config, state, processor)
