"""LIBERO observations and actions exactly as upstream's evaluation prepares them, without TensorFlow.

Upstream (VLA-Adapter's ``run_libero_eval.py``) turns a robosuite observation into policy inputs like this:

* each camera image is rotated by 180 degrees, then goes through ``resize_image_for_policy``: a JPEG round
  trip with TensorFlow's defaults (``encode_jpeg``: quality 95, 4:2:0 chroma, baseline Huffman tables;
  ``decode_image``: the fast integer IDCT and "fancy" chroma upsampling), then ``tf.image.resize`` with the
  antialiased ``lanczos3`` kernel, rounded half to even, clipped to [0, 255] and cast to uint8;
* the 8-d state is the end-effector position, its orientation as an axis-angle vector and the two gripper
  finger positions;
* every action of the predicted chunk has its gripper value mapped from [0, 1] to [-1, 1], binarised to
  its sign and negated (LIBERO's -1 means open).

Here the JPEG encoder is Pillow's libjpeg-turbo (its entropy-coded data is byte-identical to TensorFlow's)
and the decoder is ``simplejpeg`` (libjpeg-turbo with the IFAST IDCT that TensorFlow's decoder uses, which
Pillow cannot select). The resize restates TensorFlow's ``ScaleAndTranslate`` CPU kernel in float32 numpy,
operation for operation, including glibc's ``sinf`` in its kernel weights. Checked against tensorflow-cpu 2.21
on x86-64 Linux (tests/data/libero_resize_fixtures.npz): every pixel equal, and the float32 resize bit-equal.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL.Image

from vla_lab.errors import InputError

IMAGE_KEYS = {"full_image": "agentview_image", "wrist_image": "robot0_eye_in_hand_image"}
STATE_KEYS = (("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2))
ACTION_DIM = 7

# TensorFlow's encode_jpeg defaults that decide the pixels; the chroma factors of "4:2:0" are Pillow's
# subsampling code 2.
JPEG_QUALITY = 95
_PIL_SUBSAMPLING_420 = 2

_LANCZOS_RADIUS = np.float32(3.0)
_PI = np.float32(3.14159265359)  # the float constant in TF's Lanczos kernel


def _check_image(image: Any, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"{name}: got shape {shape} and dtype {dtype}, expected a uint8 (H, W, 3) array")
    if 0 in image.shape:
        raise InputError(f"{name}: got shape {image.shape}, expected a non-empty image")
    return image


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size: got {size!r}, expected a positive integer")
    return int(size)


# ------------------------------------------------------------------------------------------------
# JPEG round trip
# ------------------------------------------------------------------------------------------------


def _decode_ifast(data: bytes) -> np.ndarray:
    try:
        import simplejpeg
    except ImportError:
        raise ImportError(
            "jpeg_round_trip needs the 'simplejpeg' package (pip install 'vla-lab[libero]')"
        ) from None
    return np.asarray(simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False))


def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    """Encode and decode a uint8 (H, W, 3) image the way TF's ``encode_jpeg`` + ``decode_image`` defaults do."""
    pixels = np.ascontiguousarray(_check_image(image, "image"))
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels, mode="RGB").save(
        buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=_PIL_SUBSAMPLING_420, optimize=False,
        progressive=False,
    )
    decoded = _decode_ifast(buffer.getvalue())
    if decoded.shape != pixels.shape:
        raise InputError(f"image: JPEG round trip gave shape {decoded.shape}, expected {pixels.shape}")
    return decoded


# ------------------------------------------------------------------------------------------------
# tf.image.resize(method="lanczos3", antialias=True) in float32 numpy
# ------------------------------------------------------------------------------------------------


# glibc's sinf (2.28 and later, built from Arm's optimized-routines), as x86-64 runs it on a CPU with FMA
# (libm picks its FMA build at load time; aarch64 always fuses). TF's Lanczos kernel calls std::sin on a
# float, i.e. this sinf, and it is not correctly rounded: sin in float64 rounded once to float32 differs
# from it in about 1 % of arguments, which moves resize weights by an ulp. Only |y| < 120 is needed here.
_SIN_HALF_PI_INV = float.fromhex("0x1.45F306DC9C883p+23")  # 2 / pi, scaled by 2^24
_SIN_HALF_PI = float.fromhex("0x1.921FB54442D18p0")
_SIN_POLY = tuple(float.fromhex(h) for h in ("-0x1.555545995a603p-3", "0x1.1107605230bc4p-7", "-0x1.994eb3774cf24p-13"))
_COS_POLY = tuple(
    float.fromhex(h)
    for h in ("0x1p0", "-0x1.ffffffd0c621cp-2", "0x1.55553e1068f19p-5", "-0x1.6c087e89a359dp-10",
              "0x1.99343027bf8c3p-16")
)
_QUADRANT_SIGN = np.array([1.0, -1.0, -1.0, 1.0])
_SPLIT = 134217729.0  # 2^27 + 1, Veltkamp's splitter for float64


def _top12(bits: Any) -> Any:
    return (bits >> 20) & 0x7FF


def _fma(a: np.ndarray, b: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """Fused multiply-add in float64 (one rounding), emulated without FMA; exact for moderate magnitudes.

    a * b is split exactly into head + tail (Dekker), c + head into sum + error (Knuth), the two small parts
    are added with rounding to odd and the result is rounded once to nearest (Boldo and Melquiond, 2008).
    """
    a, b, c = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(c, np.float64)
    head = a * b
    t = _SPLIT * a
    a_hi = t - (t - a)
    a_lo = a - a_hi
    t = _SPLIT * b
    b_hi = t - (t - b)
    b_lo = b - b_hi
    tail = ((a_hi * b_hi - head) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    total = c + head
    back = total - c
    total_err = (c - (total - back)) + (head - back)
    rest = total_err + tail
    back = rest - total_err
    rest_err = (total_err - (rest - back)) + (tail - back)
    even = (rest.view(np.int64) & 1) == 0
    toward = np.where(rest_err > 0, np.inf, -np.inf)
    rest = np.where((rest_err != 0) & even, np.nextafter(rest, toward), rest)
    return total + rest


def _sin_poly(x: np.ndarray, x2: np.ndarray, odd: np.ndarray, cos_sign: np.ndarray) -> np.ndarray:
    """The sine (even quadrant) or signed cosine (odd quadrant) polynomial, with glibc's fused steps."""
    s1, s2, s3 = _SIN_POLY
    x3 = x * x2
    sine = _fma(x3 * x2, _fma(x2, s3, s2), _fma(x3, s1, x))
    c0, c1, c2, c3, c4 = (cos_sign * k for k in _COS_POLY)
    x4 = x2 * x2
    cosine = _fma(x4 * x2, _fma(x2, c4, c3), _fma(x4, c2, _fma(x2, c1, c0)))
    return np.where(odd, cosine, sine)


def _glibc_sinf(y: np.ndarray) -> np.ndarray:
    """sinf of float32 values with |y| < 120, bit for bit as glibc computes it (see above)."""
    y = np.asarray(y, dtype=np.float32)
    if np.any(~(np.abs(y) < 120)):
        raise InputError("sinf: got an argument outside (-120, 120), expected the Lanczos kernel's range")
    x = y.astype(np.float64)
    top = _top12(y.view(np.uint32))
    direct = top < _top12(np.float32(float.fromhex("0x1.921FB6p-1")).view(np.uint32))  # |y| below ~pi/4
    tiny = top < _top12(np.float32(2.0**-12).view(np.uint32))
    # Reduction by a multiple of pi/2: quadrant from a truncating int conversion, remainder by one fused step.
    quadrant = (np.trunc(x * _SIN_HALF_PI_INV).astype(np.int32) + 0x800000) >> 24
    reduced = _fma(-quadrant.astype(np.float64), _SIN_HALF_PI, x)
    signed = reduced * _QUADRANT_SIGN[quadrant & 3]
    cos_sign = np.where(quadrant & 2, -1.0, 1.0)
    far = _sin_poly(signed, reduced * reduced, (quadrant & 1) == 1, cos_sign)
    near = _sin_poly(x, x * x, np.zeros(x.shape, dtype=bool), np.ones(x.shape))
    out = np.where(direct, near, far).astype(np.float32)
    return np.where(tiny, y, out)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    """TF's Lanczos kernel (radius 3) on float32 arguments, each step rounded to float32 like the C++."""
    x = np.abs(x)
    small = x.astype(np.float64) <= 1e-3  # the C++ compares the float with the double constant 1e-3
    safe = np.where(small | (x > _LANCZOS_RADIUS), np.float32(1), x)
    arg = _PI * safe
    sin_a = _glibc_sinf(arg)
    sin_b = _glibc_sinf(arg / _LANCZOS_RADIUS)
    value = _LANCZOS_RADIUS * sin_a * sin_b / (_PI * _PI * safe * safe)
    value = np.where(small, np.float32(1), value)
    return np.where(x > _LANCZOS_RADIUS, np.float32(0), value).astype(np.float32)


def _spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Start index per output and the (out_size, span) normalised weights of TF's ``ComputeSpansCore``."""
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0 / float(scale))  # double division, stored as float
    kernel_scale = max(inv_scale, np.float32(1))  # antialias: widen the kernel when downsampling
    reach = _LANCZOS_RADIUS * kernel_scale
    span_size = min(2 * math.ceil(float(reach)) + 1, in_size)
    one_over_kernel_scale = np.float32(1) / kernel_scale

    # The translation is 0, so the sample position is (x + 0.5) / scale, computed in float32.
    sample = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * inv_scale
    start = np.ceil(sample - reach - np.float32(0.5)).astype(np.int64)
    end = np.floor(sample + reach - np.float32(0.5)).astype(np.int64)
    start = np.clip(start, 0, in_size - 1)
    end = np.clip(end, 0, in_size - 1) + 1

    offsets = np.arange(span_size)
    source = start[:, None] + offsets[None, :]
    inside = offsets[None, :] < (end - start)[:, None]
    position = (source.astype(np.float32) + np.float32(0.5)) - sample[:, None]
    raw = np.where(inside, _lanczos3(position * one_over_kernel_scale), np.float32(0))
    total = np.zeros(out_size, dtype=np.float32)
    for k in range(span_size):  # the C++ sums the span left to right in float
        total = total + raw[:, k]
    usable = np.abs(total) >= np.float32(1000) * np.finfo(np.float32).tiny
    inverse = np.float32(1) / np.where(usable, total, np.float32(1))
    weights = np.where(usable[:, None], raw * inverse[:, None], np.float32(0)).astype(np.float32)
    return start, weights


def _gather(image: np.ndarray, start: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Weighted sums along ``axis`` in float32, one span term at a time, in TF's order."""
    in_size = image.shape[axis]
    moved = np.moveaxis(image, axis, 0)
    out = np.zeros((len(start), *moved.shape[1:]), dtype=np.float32)
    extra = (None,) * (moved.ndim - 1)
    for k in range(weights.shape[1]):
        index = start + k
        valid = index < in_size  # TF stops at the image border; the weights there are 0 anyway
        terms = weights[:, k][(slice(None), *extra)] * moved[np.where(valid, index, 0)].astype(np.float32)
        out = out + np.where(valid[(slice(None), *extra)], terms, np.float32(0))
    return np.moveaxis(out, 0, axis)


def _resize_lanczos3(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.image.resize(image, (height, width), "lanczos3", antialias=True)`` as float32 (H, W, C)."""
    row_start, row_weights = _spans(image.shape[0], height)
    col_start, col_weights = _spans(image.shape[1], width)
    rows = _gather(image, row_start, row_weights, axis=0)  # TF resizes the height first
    return _gather(rows, col_start, col_weights, axis=1)


def resize_image_for_policy(image: np.ndarray, size: int = 224) -> np.ndarray:
    """Upstream's ``resize_image_for_policy``: JPEG round trip, antialiased Lanczos-3 resize, round, uint8."""
    size = _check_size(size)
    decoded = jpeg_round_trip(image)
    resized = _resize_lanczos3(decoded, size, size)
    # tf.round rounds half to even, like np.rint.
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# State and actions
# ------------------------------------------------------------------------------------------------


def quat2axisangle(quat: Any) -> np.ndarray:
    """Axis-angle (3,) float64 of an (x, y, z, w) quaternion, with robosuite's edge cases.

    w is clipped to [-1, 1]; the result is the zero vector only when sqrt(1 - w^2) is exactly 0 (robosuite's
    ``math.isclose(den, 0.0)`` has no absolute tolerance). Unlike upstream, the input is never modified.
    """
    q = np.array(quat, dtype=np.float64)
    if q.shape != (4,):
        raise InputError(f"quat: got shape {q.shape}, expected (4,) as (x, y, z, w)")
    w = q[3]
    if w > 1.0:
        w = np.float64(1.0)
    elif w < -1.0:
        w = np.float64(-1.0)
    den = np.sqrt(1.0 - w * w)
    if den == 0.0:
        return np.zeros(3)
    return (q[:3] * 2.0 * math.acos(w)) / den


def prepare_observation(obs: Mapping[str, np.ndarray], size: int = 224) -> dict[str, np.ndarray]:
    """Policy inputs from a LIBERO observation: rotated and resized images, the 8-d state (float64)."""
    if not isinstance(obs, Mapping):
        raise InputError(f"obs: got {type(obs).__name__}, expected a mapping of LIBERO observation arrays")
    size = _check_size(size)
    missing = [k for k in (*IMAGE_KEYS.values(), *(k for k, _ in STATE_KEYS)) if k not in obs]
    if missing:
        raise InputError(f"obs: missing keys {missing}, expected a LIBERO (robosuite) observation")
    images = {name: _check_image(obs[key], f"obs[{key!r}]") for name, key in IMAGE_KEYS.items()}
    parts = []
    for key, length in STATE_KEYS:
        try:
            value = np.asarray(obs[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"obs[{key!r}]: got {type(obs[key]).__name__}, expected {length} numbers") from None
        if value.shape != (length,):
            raise InputError(f"obs[{key!r}]: got shape {value.shape}, expected ({length},)")
        parts.append(quat2axisangle(value) if key == "robot0_eef_quat" else value)
    out = {name: resize_image_for_policy(image[::-1, ::-1], size) for name, image in images.items()}
    out["state"] = np.concatenate(parts)
    return out


def process_action(actions: np.ndarray) -> np.ndarray:
    """Gripper of one action (7,) or a chunk (N, 7): [0, 1] -> [-1, 1], sign, negated; a new float array.

    As upstream, a gripper value of exactly 0.5 becomes -0.0 (``np.sign(0) * -1``) and NaN stays NaN.
    """
    arr = np.asarray(actions)
    if arr.ndim not in (1, 2) or arr.shape[-1] != ACTION_DIM:
        raise InputError(f"actions: got shape {arr.shape}, expected ({ACTION_DIM},) or (N, {ACTION_DIM})")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"actions: got dtype {arr.dtype}, expected real numbers")
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    out = np.array(arr, dtype=dtype, copy=True)
    low, high = 0.0, 1.0
    out[..., -1] = 2 * (out[..., -1] - low) / (high - low) - 1
    out[..., -1] = np.sign(out[..., -1])
    out[..., -1] *= -1.0
    return out


__all__ = [
    "jpeg_round_trip",
    "prepare_observation",
    "process_action",
    "quat2axisangle",
    "resize_image_for_policy",
]
