"""One model registry: every model a command, a study or a notebook can name, and one way to build it.

:func:`list_models` names them (timm's idiom) and :func:`create` builds one:

* a **preset** (:data:`vla_lab.config.PRESETS`): that architecture with random weights (``seed``);
* a **shipped model**, by its directory name, one scheme for both worlds: ``tabletop-causal``,
  ``tabletop-bidirectional-seed1``, ``tabletop-causal-v1-head``, ... (``vla_lab/tabletop/checkpoints``) and
  ``libero-spatial-causal`` / ``libero-spatial-bidirectional`` (``vla_lab/libero/checkpoints``);
* ``random-init:<name>``: the model ``<name>`` before its first training step -- the same architecture,
  statistics, seed and initialisation, from its ``train_config.json`` (:func:`vla_lab.tabletop.initial_model`);
  the one definition of a random-init baseline;
* a **checkpoint directory** (released or vla-lab's).

:class:`ModelSpec` says what a name is (mask it was trained with, training seed, recipe, world, path);
:func:`resolve` turns ``--model`` values into specs and :func:`load` builds a spec.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vla_lab import files
from vla_lab.config import PRESETS, AttentionLike, VLAConfig
from vla_lab.errors import ConfigError, InputError
from vla_lab.libero import models as libero_models
from vla_lab.model import VLAAdapter, default_dtype, load_pretrained, random_model
from vla_lab.tabletop import initial_model, shipped_path, tabletop_config
from vla_lab.worlds.libero.suites import base_suite

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
    world: str = "tabletop"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoints_dir(world: str = "tabletop") -> Path:
    """Where the shipped models of ``world`` (``tabletop`` or ``libero_spatial``) live."""
    if world == "tabletop":
        return shipped_path("causal").parent
    if world == libero_models.SUITE:
        return libero_models.shipped_path("causal").parent
    raise InputError(f"world: got {world!r}, expected one with shipped models: {list(WORLDS_SHIPPED)}")


#: The worlds vla-lab ships models for.
WORLDS_SHIPPED = ("tabletop", libero_models.SUITE)


def _json_if_present(path: Path) -> Any:
    """The JSON value in ``path``; None when nothing is there or it does not parse. A FIFO, directory or other
    non-file there is refused in one line (opening a FIFO would block)."""
    if not files.present(path):
        return None
    files.check_regular_file(path, "--model", "a JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _train_config(path: Path) -> dict[str, Any]:
    data = _json_if_present(path / "train_config.json")
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
    if not files.present(config_path):
        return "released"
    files.check_regular_file(config_path, "--model", "a JSON file")
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
    config = _json_if_present(path / "vla_lab_config.json")
    if config is None:
        return "causal"  # a released checkpoint: Qwen2 was not patched (SPEC section 2)
    attention = config.get("attention", "causal") if isinstance(config, dict) else "causal"
    return attention if isinstance(attention, str) else "custom"


def _checkpoint_dir(path: str | Path) -> Path:
    """``path`` if it holds a checkpoint (``config.json``), else the one-line error of an unknown model."""
    directory = Path(path)
    if (directory / "config.json").exists():
        files.check_regular_file(directory / "config.json", "--model", "a checkpoint's config.json")
    if not (directory / "config.json").is_file():
        raise InputError(f"--model: got {str(path)!r}, expected a shipped model name or a checkpoint directory "
                         "holding config.json")
    return directory


def spec_for_path(path: str | Path, name: str | None = None, world: str = "tabletop") -> ModelSpec:
    """The :class:`ModelSpec` of a checkpoint directory (mask and seed from its stored configuration)."""
    directory = _checkpoint_dir(path)
    train_config = _train_config(directory)
    seed = train_config.get("seed")
    mask = _mask_of(directory, train_config)
    recipe = recipe_of(train_config)
    architecture = architecture_of(directory, mask)
    return ModelSpec(name or directory.name, mask, int(seed) if isinstance(seed, int) else None,
                     f"{recipe}; {architecture}" if architecture else recipe, str(directory), world=world)


def _shipped(world: str | None = None) -> dict[str, tuple[str, Path]]:
    """Shipped model name -> (world, directory), from the checkpoint directories alone (no file is read)."""
    worlds = WORLDS_SHIPPED if world is None else (world,)
    return {p.name: (w, p) for w in worlds for p in sorted(checkpoints_dir(w).iterdir())
            if (p / "config.json").is_file()}


def shipped_specs(world: str = "tabletop") -> list[ModelSpec]:
    """Every shipped model of ``world``, sorted by recipe, mask and seed."""
    specs = [spec_for_path(path, world=world) for _, path in _shipped(world).values()]
    order = {r: i for i, r in enumerate(RECIPES)}
    return sorted(specs, key=lambda s: (order.get(s.recipe, len(order)), s.trained_with, s.seed or 0, s.name))


def random_init_of(spec: ModelSpec) -> ModelSpec:
    """The random-init baseline of a trained model: its run's initial weights."""
    if spec.random_init:
        return spec
    return ModelSpec(RANDOM_PREFIX + spec.name, spec.trained_with, spec.seed, spec.recipe, spec.path, True,
                     spec.world)


def list_models(kind: str | None = None) -> list[str]:
    """Every name :func:`create` takes: ``preset`` names, ``shipped`` models of both worlds and their
    ``random-init`` baselines (``kind``: only those); checkpoint directories are not listed."""
    kinds = ("preset", "shipped", "random-init")
    if kind is not None and kind not in kinds:
        raise InputError(f"kind: got {kind!r}, expected one of {list(kinds)}")
    shipped = list(_shipped())
    names = {"preset": sorted(PRESETS), "shipped": shipped, "random-init": [RANDOM_PREFIX + n for n in shipped]}
    return [name for k in kinds if kind in (None, k) for name in names[k]]


def resolve(names: list[str] | None, world: str = "tabletop") -> list[ModelSpec]:
    """Specs for ``--model`` values: shipped names (of either world), ``random-init:<name>`` or checkpoint
    directories (default: every shipped model of ``world``; of its base suite for a LIBERO perturbation suite)."""
    if not names:
        return shipped_specs(world if world == "tabletop" else base_suite(world))
    shipped = _shipped()
    specs = []
    for name in names:
        base = name.removeprefix(RANDOM_PREFIX)
        spec = spec_for_path(shipped[base][1], world=shipped[base][0]) if base in shipped else spec_for_path(base)
        specs.append(random_init_of(spec) if name.startswith(RANDOM_PREFIX) else spec)
    if len({s.name for s in specs}) != len(specs):
        raise InputError(f"--model: got {names}, expected distinct models")
    return specs


def path_of(name: str) -> Path | None:
    """The checkpoint directory behind ``name`` (None for a preset: random weights); reads no checkpoint file."""
    if name in PRESETS:
        return None
    base = name.removeprefix(RANDOM_PREFIX)
    shipped = _shipped()
    return shipped[base][1] if base in shipped else _checkpoint_dir(base)


def create(
    name: str,
    *,
    attention: AttentionLike | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    prompt: str | None = None,
    seed: int = 0,
) -> VLAAdapter:
    """The model ``name`` names (module docstring) in eval mode.

    ``attention`` / ``prompt`` override the LLM mask and the prompt; ``dtype`` defaults to the model's own
    (:func:`vla_lab.model.default_dtype`; float32 for a preset); ``seed`` seeds a preset's random weights.
    """
    if name in PRESETS:
        overrides = {k: v for k, v in (("attention", attention), ("prompt", prompt)) if v is not None}
        weights = getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.float32
        model = random_model(VLAConfig.preset(name, **overrides), seed=seed, dtype=weights, device=device)
        return model.eval()
    path = path_of(name)
    assert path is not None
    return _load(path, name, name.startswith(RANDOM_PREFIX), device, prompt, attention, dtype or default_dtype(path))


def load(spec: ModelSpec, device: str | torch.device = "cpu", prompt: str | None = None, *,
         attention: AttentionLike | None = None, dtype: torch.dtype | str = torch.float32) -> VLAAdapter:
    """The model of ``spec`` in eval mode (a random-init spec: the stored run's initial weights); ``prompt``
    and ``attention`` override its prompt and mask."""
    return _load(Path(spec.path), spec.name, spec.random_init, device, prompt, attention, dtype)


def _load(path: Path, name: str, random_init: bool, device: str | torch.device, prompt: str | None,
          attention: AttentionLike | None, dtype: torch.dtype | str) -> VLAAdapter:
    model = load_pretrained(path, device=device, prompt=prompt, attention=attention, dtype=dtype)
    if random_init:
        train_config = _train_config(path)
        seed = train_config.get("seed")
        if not isinstance(seed, int):
            raise InputError(f"model {name}: its train_config.json names no seed, expected one to rebuild "
                             "the initial weights")
        initial = initial_model(copy.deepcopy(model.config), seed=seed,
                              init=str(train_config.get("init", "sincos")),
                              gate=float(train_config.get("gate_init", 1.0)))
        initial.processor = model.processor
        model = initial.to(device=device, dtype=model.dtype)
    model.eval()
    return model
