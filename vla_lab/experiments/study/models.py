"""The models a study compares: shipped tabletop models (every seed and recipe), checkpoint directories,
and each trained model's own initial weights as its random-init baseline.

A model is named by a :class:`ModelSpec`. ``tabletop-causal`` / ``tabletop-bidirectional`` (seed 0) and
the other directories in ``vla_lab/tabletop/checkpoints/`` are found by their ``train_config.json``;
``random-init:<name>`` is the model ``<name>`` before its first training step (same architecture,
statistics, seed and initialisation, :func:`vla_lab.tabletop.build_model`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vla_lab.config import VLAConfig
from vla_lab.errors import ConfigError, InputError
from vla_lab.model import VLAAdapter, load_pretrained
from vla_lab.tabletop import build_model, shipped_path, tabletop_config

RANDOM_PREFIX = "random-init:"
#: Recipes of the shipped models, from their ``train_config.json``.
RECIPES = ("shipped", "no-target-aux", "no-aux", "other")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a study: ``name``, the mask it was ``trained_with``, its training ``seed`` (None when
    unknown), its ``recipe`` and where its weights come from (``path``; ``random_init`` builds the
    initial weights of the run stored there instead of loading the trained ones).

    ``recipe`` is :func:`recipe_of` its training configuration; a model whose architecture is not the
    tabletop preset of its mask adds how it differs (``"shipped; head_version=v1"``,
    :func:`architecture_of`), so it never counts as another seed of a tabletop recipe."""

    name: str
    trained_with: str
    seed: int | None
    recipe: str
    path: str
    random_init: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoints_dir() -> Path:
    return shipped_path("causal").parent


def _train_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "train_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recipe_of(train_config: dict[str, Any]) -> str:
    """``shipped`` (both auxiliary losses), ``no-target-aux``, ``no-aux`` or ``other`` (unknown)."""
    if not train_config:
        return "other"
    patch, target = train_config.get("aux_patch_weight", 1.0), train_config.get("aux_target_weight", 1.0)
    if patch and target:
        return "shipped"
    if patch and not target:
        return "no-target-aux"
    return "no-aux"


def architecture_of(path: str | Path, mask: str) -> str:
    """How a checkpoint's architecture differs from the tabletop preset of its mask ("" when it does not).

    The differing top-level fields of its ``vla_lab_config.json``, e.g. ``head_version=v1`` or ``vision``
    (a nested field is named, not spelled out). A checkpoint without that file (a released one) is not a
    tabletop model: ``released``; an unreadable one raises :class:`InputError`.
    """
    config_path = Path(path) / "vla_lab_config.json"
    if not config_path.is_file():
        return "released"
    try:
        stored = VLAConfig.read(config_path).to_dict()
    except (OSError, ValueError, ConfigError) as error:
        raise InputError(f"--model: got {str(path)!r} whose vla_lab_config.json cannot be read ({error}), "
                         "expected a valid vla-lab configuration") from error
    try:
        preset = tabletop_config(mask).to_dict()
    except ConfigError:
        return "custom"
    differences = []
    for key in sorted(set(stored) | set(preset)):
        mine, theirs = stored.get(key), preset.get(key)
        if mine != theirs:
            nested = isinstance(mine, dict | list) or isinstance(theirs, dict | list)
            differences.append(key if nested else f"{key}={mine}")
    return ",".join(differences)


def _mask_of(path: Path, train_config: dict[str, Any]) -> str:
    if "attention" in train_config:
        return str(train_config["attention"])
    try:
        config = json.loads((path / "vla_lab_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "causal"  # a released checkpoint: Qwen2 was not patched (SPEC section 2)
    attention = config.get("attention", "causal") if isinstance(config, dict) else "causal"
    return attention if isinstance(attention, str) else "custom"


def spec_for_path(path: str | Path, name: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of a checkpoint directory (mask and seed from its stored configuration)."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise InputError(f"--model: got {str(path)!r}, expected a shipped model name or a checkpoint directory "
                         "holding config.json")
    train_config = _train_config(directory)
    seed = train_config.get("seed")
    mask = _mask_of(directory, train_config)
    recipe = recipe_of(train_config)
    architecture = architecture_of(directory, mask)
    return ModelSpec(name or directory.name, mask, int(seed) if isinstance(seed, int) else None,
                     f"{recipe}; {architecture}" if architecture else recipe, str(directory))


def shipped_specs() -> list[ModelSpec]:
    """Every shipped tabletop model, sorted by recipe, mask and seed."""
    specs = [spec_for_path(p) for p in checkpoints_dir().iterdir() if (p / "config.json").is_file()]
    order = {r: i for i, r in enumerate(RECIPES)}
    return sorted(specs, key=lambda s: (order.get(s.recipe, len(order)), s.trained_with, s.seed or 0, s.name))


def random_init_of(spec: ModelSpec) -> ModelSpec:
    """The random-init baseline of a trained model: its run's initial weights."""
    if spec.random_init:
        return spec
    return ModelSpec(RANDOM_PREFIX + spec.name, spec.trained_with, spec.seed, spec.recipe, spec.path, True)


def resolve(names: list[str] | None) -> list[ModelSpec]:
    """Specs for ``--model`` values: shipped names, ``random-init:<name>`` or checkpoint directories
    (default: every shipped model)."""
    shipped = {s.name: s for s in shipped_specs()}
    if not names:
        return list(shipped.values())
    specs = []
    for name in names:
        base = name[len(RANDOM_PREFIX):] if name.startswith(RANDOM_PREFIX) else name
        spec = shipped.get(base) or spec_for_path(base)
        specs.append(random_init_of(spec) if name.startswith(RANDOM_PREFIX) else spec)
    if len({s.name for s in specs}) != len(specs):
        raise InputError(f"--model: got {names}, expected distinct models")
    return specs


def load(spec: ModelSpec, device: str = "cpu", prompt: str | None = None) -> VLAAdapter:
    """The model of ``spec`` in eval mode (a random-init spec: the stored run's initial weights); ``prompt``
    overrides its prompt."""
    model = load_pretrained(spec.path, device=device, prompt=prompt)
    if spec.random_init:
        train_config = _train_config(Path(spec.path))
        if spec.seed is None:
            raise InputError(f"model {spec.name}: its train_config.json names no seed, expected one to rebuild "
                             "the initial weights")
        initial = build_model(copy.deepcopy(model.config), seed=spec.seed,
                              init=str(train_config.get("init", "sincos")),
                              gate=float(train_config.get("gate_init", 1.0)))
        initial.processor = model.processor
        model = initial.to(device)
    model.eval()
    return model
