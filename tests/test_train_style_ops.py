"""Style-space blending and intensity (models/style_ops.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.style_ops import blend, interpolate, with_intensity


def test_blend_endpoints_and_midpoint() -> None:
    a = np.array([1.0, -2.0, 3.0], np.float32)
    b = np.array([3.0, 2.0, -1.0], np.float32)
    np.testing.assert_array_equal(blend(a, b, 0.0), a)
    np.testing.assert_array_equal(blend(a, b, 1.0), b)
    np.testing.assert_allclose(blend(a, b, 0.25), [1.5, -1.0, 2.0])
    assert blend(a, b, 0.5).dtype == np.float32


def test_intensity_is_a_line_through_neutral() -> None:
    neutral = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    code = torch.tensor([[1.5, -0.5], [2.0, 2.0]])
    assert torch.equal(with_intensity(code, neutral, 0.0), neutral)
    assert torch.equal(with_intensity(code, neutral, 1.0), code)
    doubled = with_intensity(code, neutral, 2.0)
    torch.testing.assert_close(doubled - neutral, 2 * (code - neutral))
    half = with_intensity(code, neutral, 0.5)
    torch.testing.assert_close(half, blend(neutral, code, 0.5))


def test_interpolate() -> None:
    a, b = np.zeros(4, np.float32), np.ones(4, np.float32)
    path = interpolate(a, b, 5)
    assert path.shape == (5, 4)
    np.testing.assert_allclose(path[:, 0], [0.0, 0.25, 0.5, 0.75, 1.0])
    steps = np.diff(path, axis=0)
    np.testing.assert_allclose(steps, np.full((4, 4), 0.25))  # evenly spaced
    assert isinstance(interpolate(torch.zeros(2), torch.ones(2), 3), torch.Tensor)


@pytest.mark.parametrize(
    "call",
    [
        lambda: blend(np.zeros(3), np.zeros(4), 0.5),
        lambda: blend(np.zeros(3), torch.zeros(3), 0.5),
        lambda: blend(np.zeros(3), np.zeros(3), float("nan")),
        lambda: with_intensity(np.zeros(3), np.zeros(3), float("inf")),
        lambda: interpolate(np.zeros(3), np.zeros(3), 1),
    ],
)
def test_invalid_inputs_raise(call) -> None:
    with pytest.raises((ValueError, TypeError)):
        call()
