"""Configuration of a VLA-Adapter model: dataclasses with JSON round-trip.

Everything that upstream picks from ``sys.argv`` or hard-codes (robot constants, number of action
queries, head version, attention mask) is a field here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_lab.config.attention import AttentionLike, AttentionSpec
from vla_lab.config.base import JSONConfig
from vla_lab.config.presets import PRESETS
from vla_lab.config.registry import (
    ATTENTION_KERNELS,
    CUSTOM_BACKBONE,
    HEAD_VERSIONS,
    HIDDEN_OFFSETS,
    LEGACY_PROMPT,
    NORMALIZATION_TYPES,
    PROMPTS,
    QWEN25_05B_TEXT_CONFIG,
    ROBOT_PRESETS,
    TOKENIZERS,
    VISION_BACKBONES,
    canonical_projector,
)
from vla_lab.errors import ConfigError

#: The largest model (LLM and action head, by :meth:`VLAConfig.estimated_parameters`) a configuration may
#: describe: a bound checked before any allocation, so a corrupted size cannot exhaust memory.
MAX_PARAMETERS = 20_000_000_000
#: Bounds on counts that set how many modules are built (each layer is a module of its own).
MAX_LLM_LAYERS = 512
MAX_IMAGE_SIZE = 4096
MAX_ROBOT_SIZE = 4096


@dataclass
class RobotConfig(JSONConfig):
    """Action chunk, action and proprio sizes and the normalisation of one robot platform."""

    name: str = "libero"
    chunk: int = 8
    action_dim: int = 7
    proprio_dim: int = 8
    normalization: str = "bounds_q99"

    def __post_init__(self) -> None:
        for name in ("chunk", "action_dim", "proprio_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ROBOT_SIZE:
                raise ConfigError(f"robot.{name}: got {value!r}, expected an integer from 1 to {MAX_ROBOT_SIZE}")
        if self.normalization not in NORMALIZATION_TYPES:
            raise ConfigError(
                f"robot.normalization: got {self.normalization!r}, expected one of {NORMALIZATION_TYPES}"
            )

    @classmethod
    def coerce(cls, value: str | dict[str, Any] | RobotConfig) -> RobotConfig:
        """A preset name, a field dict or a RobotConfig -> a RobotConfig."""
        if isinstance(value, RobotConfig):
            return value
        if isinstance(value, str):
            return cls.preset(value)
        if isinstance(value, dict):
            return cls(**value)
        raise ConfigError(f"robot: got {type(value).__name__}, expected a preset name, a dict or a RobotConfig")

    @classmethod
    def preset(cls, name: str) -> RobotConfig:
        """A named platform: ``libero``, ``calvin``, ``aloha`` or ``bridge``."""
        key = name.lower()
        if key not in ROBOT_PRESETS:
            raise ConfigError(f"robot: got {name!r}, expected one of {sorted(ROBOT_PRESETS)}")
        return cls(name=key, **ROBOT_PRESETS[key])




@dataclass
class VisionConfig(JSONConfig):
    """Which timm ViTs featurize each image, at what size.

    ``backbone_id`` is one of :data:`VISION_BACKBONES` (the timm ids and sizes are then filled in) or
    ``"custom"`` with explicit ``timm_model_ids`` and ``image_sizes``. ``timm_kwargs`` holds per-model
    overrides passed to ``timm.create_model`` (used by the small presets to shrink widths and depths).
    """

    backbone_id: str = "dinosiglip-vit-so-224px"
    timm_model_ids: list[str] = field(default_factory=list)
    image_sizes: list[int] = field(default_factory=list)
    act_layers: list[str | None] = field(default_factory=list)
    timm_kwargs: list[dict[str, Any]] = field(default_factory=list)
    fused: bool | None = None

    def __post_init__(self) -> None:
        if self.backbone_id in VISION_BACKBONES:
            known = VISION_BACKBONES[self.backbone_id]
            if not self.timm_model_ids:
                self.timm_model_ids = list(known["timm_model_ids"])
            if not self.image_sizes:
                self.image_sizes = list(known["image_sizes"])
            if not self.act_layers:
                self.act_layers = list(known["act_layers"])
        elif self.backbone_id != CUSTOM_BACKBONE:
            raise ConfigError(
                f"vision.backbone_id: got {self.backbone_id!r}, expected one of "
                f"{sorted(VISION_BACKBONES) + [CUSTOM_BACKBONE]}"
            )
        n = len(self.timm_model_ids)
        if n not in (1, 2):
            raise ConfigError(f"vision.timm_model_ids: got {n} ids, expected 1 or 2")
        if len(self.image_sizes) != n:
            raise ConfigError(
                f"vision.image_sizes: got {self.image_sizes!r}, expected {n} sizes (one per timm id)"
            )
        if not self.act_layers:
            self.act_layers = [None] * n
        if not self.timm_kwargs:
            self.timm_kwargs = [{} for _ in range(n)]
        if len(self.act_layers) != n or len(self.timm_kwargs) != n:
            raise ConfigError(f"vision.act_layers/timm_kwargs: expected {n} entries each")
        if self.fused is None:
            self.fused = self.backbone_id.startswith(("dinosiglip", "dinoclip")) or n == 2
        if self.fused and n != 2:
            raise ConfigError(f"vision.fused: a fused backbone needs 2 timm ids, got {n}")
        if not self.fused and n != 1:
            raise ConfigError("vision.fused: two timm ids given but fused is False")
        for size in self.image_sizes:
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE:
                raise ConfigError(f"vision.image_sizes: got {size!r}, expected an integer from 1 to {MAX_IMAGE_SIZE}")
        if len(set(self.image_sizes)) != 1:
            raise ConfigError(
                f"vision.image_sizes: got {self.image_sizes!r}, expected the same size for both featurizers"
            )

    @property
    def image_size(self) -> int:
        return self.image_sizes[0]

    @property
    def channels_per_image(self) -> int:
        return 6 if self.fused else 3




@dataclass
class VLAConfig(JSONConfig):
    """Complete description of a VLA-Adapter model.

    Attributes:
        vision: the timm featurizer(s).
        num_images: images per observation (third-person first, then wrist views), 1 to 3.
        projector: ``linear`` | ``gelu-mlp`` | ``fused-gelu-mlp`` (upstream spellings accepted).
        llm: a transformers Qwen2-family text config as a dict.
        num_action_queries: learnable query embeddings appended after the prompt (64 upstream).
        robot: chunk, action and proprio sizes and the normalisation type.
        use_proprio: whether a proprio projector feeds the action head.
        head_version: ``v1`` (shared k/v, no RoPE) or ``pro`` (separate k/v per key group, RoPE).
        head_num_heads: attention heads of each bridge block (8 upstream).
        attention: LLM attention mask: ``causal`` (released), ``bidirectional``, ``prefix-lm`` or a
            custom spec ``{"base": ..., "allow": [[q, k], ...], "block": [[q, k], ...]}``.
        attn_kernel: ``sdpa`` or ``eager`` (stock transformers kernels).
        hidden_offset: ``released`` reads the head's inputs one position left of the patches and the
            queries, as upstream's inference code does; ``aligned`` reads the queries' own positions.
        stop_token_id: id appended after the queries (2, Llama's ``</s>`` carried over upstream).
        upstream_bf16_casts: upstream's ``predict_action`` rounds the action-query states and the
            proprio input to bf16 whatever the model's dtype; True reproduces that rounding in float32
            too (in bf16 it changes nothing). False keeps float32 inference exact.
        norm_stats: dataset statistics ``{dataset: {"action": {...}, "proprio": {...}}}``.
        tokenizer: the built-in tokenizer a model without tokenizer files uses: ``qwen2.5`` (offline
            Qwen2.5), ``tabletop`` (the synthetic world's small vocabulary) or ``libero`` (LIBERO's words).
        prompt: the text the instruction is put in (:data:`~vla_lab.config.registry.PROMPT_TEMPLATES`):
            ``qwen-chat``, Qwen's chat template as upstream builds it with ``use_minivlm=True`` (released
            checkpoints were trained and are evaluated with it), or ``openvla``, the In/Out prompt of
            upstream's other branch (vla-lab's small trained models use it).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    num_images: int = 2
    projector: str = "fused-gelu-mlp"
    llm: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(QWEN25_05B_TEXT_CONFIG))
    num_action_queries: int = 64
    robot: RobotConfig = field(default_factory=RobotConfig)
    use_proprio: bool = True
    head_version: str = "pro"
    head_num_heads: int = 8
    attention: AttentionLike = "causal"
    attn_kernel: str = "sdpa"
    hidden_offset: str = "released"
    stop_token_id: int = 2
    upstream_bf16_casts: bool = False
    norm_stats: dict[str, Any] | None = None
    tokenizer: str = "qwen2.5"
    prompt: str = "qwen-chat"
    name: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        self.robot = RobotConfig.coerce(self.robot)
        self.projector = canonical_projector(self.projector)
        if not isinstance(self.num_images, int) or not 1 <= self.num_images <= 3:
            raise ConfigError(f"num_images: got {self.num_images!r}, expected an integer from 1 to 3")
        if self.head_version not in HEAD_VERSIONS:
            raise ConfigError(f"head_version: got {self.head_version!r}, expected one of {HEAD_VERSIONS}")
        if self.attn_kernel not in ATTENTION_KERNELS:
            raise ConfigError(f"attn_kernel: got {self.attn_kernel!r}, expected one of {ATTENTION_KERNELS}")
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"tokenizer: got {self.tokenizer!r}, expected one of {TOKENIZERS}")
        if self.prompt not in PROMPTS:
            raise ConfigError(f"prompt: got {self.prompt!r}, expected one of {PROMPTS}")
        if self.hidden_offset not in HIDDEN_OFFSETS:
            raise ConfigError(f"hidden_offset: got {self.hidden_offset!r}, expected one of {HIDDEN_OFFSETS}")
        if not isinstance(self.num_action_queries, int) or self.num_action_queries < 1:
            raise ConfigError(
                f"num_action_queries: got {self.num_action_queries!r}, expected a positive integer"
            )
        model_type = self.llm.get("model_type", "qwen2")
        if model_type != "qwen2":
            raise ConfigError(f"llm.model_type: got {model_type!r}, expected 'qwen2' (Qwen2 family)")
        hidden = self.llm_dim
        if hidden % self.head_num_heads:
            raise ConfigError(
                f"head_num_heads: got {self.head_num_heads}, expected a divisor of the LLM width {hidden}"
            )
        if self.head_version == "pro" and (hidden // self.head_num_heads) % 2:
            raise ConfigError(
                f"head_num_heads: the Pro head's RoPE needs an even head width, got {hidden // self.head_num_heads}"
            )
        self._check_llm()
        # Validated here so that a bad mask fails at configuration time, not at the first forward.
        self.attention = self.attention_spec().to_config()

    def _check_llm(self) -> None:
        """Sizes are positive integers and the model is small enough to build (checked before any allocation)."""
        if not isinstance(self.llm, dict):
            raise ConfigError(f"llm: got {type(self.llm).__name__}, expected a Qwen2 text config as an object")
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        optional = ("num_key_value_heads", "max_position_embeddings", "head_dim")
        for key in required + optional:
            value = self.llm.get(key)
            if value is None and key in optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"llm.{key}: got {value!r}, expected a positive integer")
        if self.llm["num_hidden_layers"] > MAX_LLM_LAYERS:
            raise ConfigError(
                f"llm.num_hidden_layers: got {self.llm['num_hidden_layers']}, expected at most {MAX_LLM_LAYERS}"
            )
        heads = self.llm["num_attention_heads"]
        kv = self.llm.get("num_key_value_heads") or heads
        if heads % kv:
            raise ConfigError(f"llm.num_key_value_heads: got {kv}, expected a divisor of num_attention_heads {heads}")
        if "head_dim" not in self.llm and self.llm["hidden_size"] % heads:
            raise ConfigError(
                f"llm.num_attention_heads: got {heads}, expected a divisor of hidden_size {self.llm['hidden_size']}"
            )
        estimate = self.estimated_parameters()
        if estimate > MAX_PARAMETERS:
            raise ConfigError(
                f"llm: got a configuration of about {estimate:.3g} parameters (LLM and action head), expected at most "
                f"{MAX_PARAMETERS:.0e} (num_hidden_layers {self.llm['num_hidden_layers']}, "
                f"hidden_size {self.llm['hidden_size']}, intermediate_size {self.llm['intermediate_size']})"
            )

    def estimated_parameters(self) -> int:
        """Parameters of the LLM and the action head from the sizes alone (vision towers not counted)."""
        h, i, n = self.llm["hidden_size"], self.llm["intermediate_size"], self.llm["num_hidden_layers"]
        if self.llm["num_hidden_layers"] > MAX_LLM_LAYERS:
            raise ConfigError(
                f"llm.num_hidden_layers: got {self.llm['num_hidden_layers']}, expected at most {MAX_LLM_LAYERS}"
            )
        heads = self.llm["num_attention_heads"]
        kv = self.llm.get("num_key_value_heads") or heads
        head_dim = self.llm.get("head_dim") or h // heads
        attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
        layer = attention + 3 * h * i + 2 * h
        embeddings = self.llm["vocab_size"] * h * (1 if self.llm.get("tie_word_embeddings", True) else 2)
        head_block = (9 if self.head_version == "pro" else 5) * h * h
        return int(n * (layer + head_block) + embeddings + self.num_action_queries * h)

    def attention_spec(self, value: AttentionLike | None = None) -> AttentionSpec:
        """``value`` (or this config's mask) as an AttentionSpec that names only segments this model has."""
        spec = AttentionSpec.parse(self.attention if value is None else value)
        for pair in spec.allow + spec.block:
            for segment in pair:
                if segment.startswith("vision.") and int(segment.split(".")[1]) >= self.num_images:
                    raise ConfigError(
                        f"attention: got segment {segment!r}, expected vision.0 to vision.{self.num_images - 1} "
                        f"(the model has {self.num_images} image(s))"
                    )
        return spec

    # --- derived sizes -----------------------------------------------------------------------
    @property
    def llm_dim(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def num_llm_layers(self) -> int:
        return int(self.llm["num_hidden_layers"])

    # --- presets and JSON --------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> VLAConfig:
        """Build a named preset (see :data:`PRESETS`), with keyword overrides of top-level fields."""
        if name not in PRESETS:
            raise ConfigError(f"preset: got {name!r}, expected one of {sorted(PRESETS)}")
        data = copy.deepcopy(PRESETS[name])
        data["name"] = name
        data.update(overrides)
        return cls.from_dict(data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> VLAConfig:
        """A configuration vla-lab saved (``vla_lab_config.json``, a training run's model configuration).

        A field added since the file was written gets the value its version used: files without ``prompt``
        come from vla-lab 0.1, which gave every model the In/Out prompt (:data:`LEGACY_PROMPT`).
        """
        if isinstance(data, dict) and "prompt" not in data:
            data = {**data, "prompt": LEGACY_PROMPT}
        return cls.from_dict(data)

    @classmethod
    def read(cls, text_or_path: str | Path) -> VLAConfig:
        """:meth:`from_saved` of a JSON file (or JSON text)."""
        return cls.from_saved(cls.json_fields(text_or_path))

    def replace(self, **changes: Any) -> VLAConfig:
        """A copy with some top-level fields changed (validated again)."""
        data = self.to_dict()
        data.update(changes)
        return VLAConfig.from_dict(data)


