"""Images as the API and the command line take them: a uint8 (H, W, 3) array, a PIL image or a path to an image
file, each turned into an RGB PIL image or refused in one line (a path that is not a regular file, an image PIL
cannot decode or one beyond its decompression-bomb limit, an image of more than 8 bits per channel)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from vla_lab import files
from vla_lab.errors import InputError

ImageLike = Any  # np.ndarray | PIL.Image.Image | str | Path
EXPECTED_IMAGES = "expected a uint8 (H, W, 3) numpy array, a PIL image or an image file path"


def is_image_like(x: Any) -> bool:
    return isinstance(x, (np.ndarray, PIL.Image.Image, str, Path))


#: PIL modes with 8 bits per channel: their RGB conversion is what a camera frame is.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
                             "HSV"})


def _rgb(img: PIL.Image.Image, name: str, source: str) -> PIL.Image.Image:
    """``img`` as RGB; an image of more than 8 bits per channel (16-bit PNG, float TIFF) is refused: PIL's
    conversion clips it to 0..255 (a 16-bit frame comes out nearly white, a float one black) instead of scaling."""
    if img.mode not in EIGHT_BIT_MODES:
        depth = {"F": "32-bit float", "I": "32-bit integer"}.get(img.mode, "16-bit integer")
        raise InputError(f"{name}: got {source}, an image of mode {img.mode!r} ({depth} values), expected 8 bits per "
                         "channel (scale it to uint8 first)")
    return img.convert("RGB")


def load_image(x: ImageLike, name: str = "image") -> PIL.Image.Image:
    """An RGB PIL image from a uint8 (H, W, 3) array, a PIL image or a path; ``name`` labels errors."""
    if isinstance(x, np.ndarray):
        if x.ndim != 3 or x.shape[-1] != 3 or x.dtype != np.uint8 or 0 in x.shape:
            raise InputError(
                f"{name}: got array of shape {tuple(x.shape)} and dtype {x.dtype}, expected (H, W, 3) uint8"
            )
        return PIL.Image.fromarray(np.ascontiguousarray(x)).convert("RGB")
    if isinstance(x, PIL.Image.Image):
        return _rgb(x, name, "a PIL image")
    if isinstance(x, (str, Path)):
        path = files.check_regular_file(x, name, "an image file")
        try:
            with warnings.catch_warnings():
                # PIL only warns below twice its pixel limit; an image that large is refused here too.
                warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
                with PIL.Image.open(path) as img:
                    opened = img.copy()  # decoded, and still usable once the file is closed
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
            raise InputError(
                f"{name}: got path {str(x)!r}, an image of more than {PIL.Image.MAX_IMAGE_PIXELS:,} pixels "
                "(PIL's decompression-bomb limit), expected a camera-sized image"
            ) from None
        except Exception as err:  # PIL's decoders raise many types (OSError, SyntaxError, struct.error, ...)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(
                f"{name}: got path {str(x)!r}, which PIL cannot read ({reason}), expected an image file"
            ) from None
        return _rgb(opened, name, f"path {str(x)!r}")
    raise InputError(f"{name}: got {type(x).__name__}, {EXPECTED_IMAGES}")


__all__ = ["EIGHT_BIT_MODES", "EXPECTED_IMAGES", "ImageLike", "is_image_like", "load_image"]
