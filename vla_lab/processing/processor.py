"""Observation -> model inputs: the released prompt, the tokenizer and the image processor together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.processing.images import ImageProcessor, ImageProcessorConfig
from vla_lab.processing.tokenizer import QwenTokenizer
from vla_lab.processing.tokenizer_files import builtin_tokenizer, load_tokenizer_from_files

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


def build_prompt(instruction: str) -> str:
    """The released VLA-Adapter prompt; the instruction is lower-cased as upstream does."""
    if not isinstance(instruction, str):
        raise InputError(f"instruction: got {type(instruction).__name__}, expected a non-empty string")
    if not instruction.strip():
        raise InputError(f"instruction: got {instruction!r}, expected a non-empty string")
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


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
    """Images, instruction(s) -> ``pixel_values``, right-padded ``input_ids`` and ``attention_mask``."""

    image_processor: ImageProcessor
    tokenizer: QwenTokenizer
    num_images: int

    @classmethod
    def for_config(cls, config: VLAConfig, tokenizer: QwenTokenizer | None = None) -> VLAProcessor:
        """The default processor of a configuration: timm normalisation (bf16-rounded) and its built-in tokenizer."""
        image_config = ImageProcessorConfig.for_timm_models(config.vision.timm_model_ids, config.vision.image_size)
        return cls(ImageProcessor(image_config), tokenizer or builtin_tokenizer(config.tokenizer), config.num_images)

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
        return cls(ImageProcessor(image_config), tokenizer, config.num_images)

    def tokenize(self, instructions: Sequence[str]) -> dict[str, Any]:
        prompts = [build_prompt(text) for text in instructions]
        rows = [self.tokenizer(p)["input_ids"] for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask, "prompts": prompts}

    def __call__(self, images: Any, instruction: str | Sequence[str], center_crop: bool = False) -> dict[str, Any]:
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
        batch = self.tokenize(instructions)
        batch["pixel_values"] = pixels
        return batch
