"""Observation -> model inputs, and model outputs -> robot units.

Images (:mod:`.images`, upstream's image processor), the prompts (Qwen's chat template, In/Out) and the tokenizers
(:mod:`.tokenizer`, :mod:`.tokenizer_files`, :mod:`.bpe`), dataset statistics (:mod:`.normalization`), and
:class:`VLAProcessor`, which puts them together (:mod:`.processor`).
"""

from vla_lab.processing.images import ImageProcessor, ImageProcessorConfig
from vla_lab.processing.processor import PROMPT_TEMPLATE, VLAProcessor, build_prompt, check_prompt
from vla_lab.processing.tokenizer import QwenTokenizer, load_qwen25_tokenizer
from vla_lab.processing.tokenizer_files import builtin_tokenizer, load_tokenizer_from_files

__all__ = [
    "PROMPT_TEMPLATE",
    "ImageProcessor",
    "ImageProcessorConfig",
    "QwenTokenizer",
    "VLAProcessor",
    "build_prompt",
    "builtin_tokenizer",
    "check_prompt",
    "load_qwen25_tokenizer",
    "load_tokenizer_from_files",
]
