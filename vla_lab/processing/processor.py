"""Observation -> model inputs: the released prompt, the tokenizer and the image processor together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vla_lab.config import PROMPT_SPECIAL_TOKENS, PROMPT_TEMPLATES, PROMPTS, VLAConfig
from vla_lab.errors import InputError
from vla_lab.processing.images import ImageProcessor, ImageProcessorConfig
from vla_lab.processing.tokenizer import QwenTokenizer
from vla_lab.processing.tokenizer_files import builtin_tokenizer, load_tokenizer_from_files

#: The In/Out prompt (``PROMPT_TEMPLATES["openvla"]``).
PROMPT_TEMPLATE = PROMPT_TEMPLATES["openvla"]


def build_prompt(instruction: str, prompt: str) -> str:
    """The text a model of prompt ``prompt`` (``qwen-chat`` or ``openvla``) is given for ``instruction``,
    lower-cased as upstream does."""
    if prompt not in PROMPT_TEMPLATES:
        raise InputError(f"prompt: got {prompt!r}, expected one of {PROMPTS}")
    if not isinstance(instruction, str):
        raise InputError(f"instruction: got {type(instruction).__name__}, expected a non-empty string")
    if not instruction.strip():
        raise InputError(f"instruction: got {instruction!r}, expected a non-empty string")
    return PROMPT_TEMPLATES[prompt].format(instruction=instruction.lower())


def check_prompt(tokenizer: QwenTokenizer, prompt: str) -> None:
    """Refuse a prompt whose special tokens ``tokenizer`` cannot encode as single ids (such a tokenizer would
    spell ``<|im_start|>`` out byte by byte: a sequence no released model has seen)."""
    if prompt not in PROMPT_TEMPLATES:
        raise InputError(f"prompt: got {prompt!r}, expected one of {PROMPTS}")
    added = {t.content for t in tokenizer.added_tokens}
    missing = [t for t in PROMPT_SPECIAL_TOKENS[prompt] if t not in added]
    if missing:
        usable = [p for p in PROMPTS if all(t in added for t in PROMPT_SPECIAL_TOKENS[p])]
        raise InputError(f"prompt: got {prompt!r}, expected one of {tuple(usable)} for the tokenizer "
                         f"{tokenizer.name_or_path!r}, which has no {' / '.join(missing)} token")


def right_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows -> right-padded ``input_ids`` and ``attention_mask`` (B, longest row) int64."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


@dataclass
class VLAProcessor:
    """Images, instruction(s) -> ``pixel_values``, right-padded ``input_ids`` and ``attention_mask``.

    ``prompt`` names the text the instruction is put in (:func:`build_prompt`); a call's ``prompt=`` overrides it.
    """

    image_processor: ImageProcessor
    tokenizer: QwenTokenizer
    num_images: int
    prompt: str = "qwen-chat"

    def __post_init__(self) -> None:
        check_prompt(self.tokenizer, self.prompt)

    @classmethod
    def for_config(cls, config: VLAConfig, tokenizer: QwenTokenizer | None = None) -> VLAProcessor:
        """The default processor of a configuration: timm normalisation (bf16-rounded) and its built-in tokenizer."""
        image_config = ImageProcessorConfig.for_timm_models(config.vision.timm_model_ids, config.vision.image_size)
        return cls(ImageProcessor(image_config), tokenizer or builtin_tokenizer(config.tokenizer), config.num_images,
                   config.prompt)

    @classmethod
    def from_directory(cls, directory: str | Path, config: VLAConfig) -> VLAProcessor:
        """A checkpoint directory's processor: its preprocessor config and tokenizer files (if present)."""
        directory = Path(directory)
        pre = directory / "preprocessor_config.json"
        image_config = (
            ImageProcessorConfig.from_preprocessor_config(pre)
            if pre.exists()
            else ImageProcessorConfig.for_timm_models(config.vision.timm_model_ids, config.vision.image_size)
        )
        has_tokenizer = (directory / "vocab.json").exists() or (directory / "tokenizer.json").exists()
        tokenizer = load_tokenizer_from_files(directory) if has_tokenizer else builtin_tokenizer(config.tokenizer)
        return cls(ImageProcessor(image_config), tokenizer, config.num_images, config.prompt)

    def encode(self, instruction: str, prompt: str | None = None) -> list[int]:
        """The token ids of one instruction's prompt."""
        return self.tokenizer.encode(build_prompt(instruction, self._prompt(prompt)))

    def _prompt(self, prompt: str | None) -> str:
        """The prompt of a call: this processor's (checked when it was built), or ``prompt`` checked now."""
        if prompt is None or prompt == self.prompt:
            return self.prompt
        check_prompt(self.tokenizer, prompt)
        return prompt

    def tokenize(self, instructions: Sequence[str], prompt: str | None = None) -> dict[str, Any]:
        """Right-padded ``input_ids`` / ``attention_mask`` of the instructions' prompts (``prompts``: the texts)."""
        name = self._prompt(prompt)
        texts = [build_prompt(text, name) for text in instructions]
        rows = [self.tokenizer(t)["input_ids"] for t in texts]
        ids, mask = right_pad(rows, 0)
        return {"input_ids": ids, "attention_mask": mask, "prompts": texts}

    def __call__(self, images: Any, instruction: str | Sequence[str], center_crop: bool = False,
                 prompt: str | None = None) -> dict[str, Any]:
        """One observation (a list of images + a string) or a batch (lists of lists + list of strings)."""
        instructions: list[str]
        if isinstance(instruction, str):
            observations = [list(images) if isinstance(images, (list, tuple)) else [images]]
            instructions = [instruction]
        elif isinstance(instruction, (list, tuple)):
            observations = list(images)
            instructions = list(instruction)
        else:
            raise InputError(f"instruction: got {type(instruction).__name__}, expected a string or a list of strings")
        if len(observations) != len(instructions):
            raise InputError(
                f"instruction: got {len(instructions)} instructions for {len(observations)} observations, "
                "expected one per observation"
            )
        pixels = self.image_processor(observations, center_crop=center_crop, num_images=self.num_images)
        batch = self.tokenize(instructions, prompt)
        batch["pixel_values"] = pixels
        return batch
