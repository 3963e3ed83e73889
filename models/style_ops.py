"""Arithmetic on style codes: blending two styles and scaling a style's intensity.

StyleTalk's decoder is conditioned on the style code only through the query offset and the softmax mixture
of the K expert FFN weights, both smooth in the code, so straight lines between codes give gradual changes
of speaking style (the paper's style-space interpolation). Intensity is a line through the neutral code:
``k = 0`` is neutral, ``k = 1`` the style itself, ``k > 1`` exaggerates it (extrapolation leaves the region
spanned by real codes; keep ``k`` moderate, e.g. <= 1.5).

Works on numpy arrays and torch tensors alike (any matching shapes, e.g. ``(C,)`` or ``(B, C)``).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

Code = TypeVar("Code", np.ndarray, torch.Tensor)


def _check(a: Code, b: Code, what: str) -> None:
    if type(a) is not type(b):
        raise TypeError(f"{what}: both codes must be numpy arrays or both torch tensors")
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what}: code shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def _finite(x: float, name: str) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def blend(a: Code, b: Code, w: float) -> Code:
    """``(1 - w) * a + w * b``: ``w = 0`` gives ``a``, ``w = 1`` gives ``b``."""
    _check(a, b, "blend")
    w = _finite(w, "w")
    return a * (1.0 - w) + b * w  # exact at w = 0 and w = 1


def with_intensity(code: Code, neutral: Code, k: float) -> Code:
    """``neutral + k * (code - neutral)``: the style scaled by ``k`` along the line from neutral."""
    _check(code, neutral, "with_intensity")
    k = _finite(k, "k")
    return neutral * (1.0 - k) + code * k  # exact at k = 0 and k = 1


def interpolate(a: Code, b: Code, n: int) -> Code:
    """``n >= 2`` codes evenly spaced from ``a`` to ``b`` (both included), stacked on a new first axis."""
    _check(a, b, "interpolate")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    steps = [blend(a, b, i / (n - 1)) for i in range(n)]
    return torch.stack(steps) if isinstance(a, torch.Tensor) else np.stack(steps)
