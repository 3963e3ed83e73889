"""Streaming PIRenderer adapter on the small config (64×64, random weights): shapes, the lookahead/delay
contract, chunking independence, reset/flush, and equality with the offline FaceGenerator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.renderer_pir import PIRendererRenderer, fit_image
from models.pirenderer import FaceGenerator, RendererConfig, driving_windows, image_to_tensor, tensor_to_image

SMALL = {
    "common": {"descriptor_nc": 20, "image_nc": 3, "max_nc": 24, "use_spect": False},
    "editing_net": {"base_nc": 8, "layer": 3, "num_res_blocks": 2},
    "mapping_net": {"coeff_nc": 73, "descriptor_nc": 20, "layer": 3},
    "warpping_net": {"base_nc": 4, "decoder_layer": 3, "encoder_layer": 5},
}
SIZE = 64
T = 24


pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def generator() -> FaceGenerator:
    torch.manual_seed(0)
    return FaceGenerator(RendererConfig.from_dict(SMALL)).eval()


@pytest.fixture(scope="module")
def avatar() -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=2) % 256  # structured, so warping shows
    return (base + rng.integers(0, 40, base.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def drive() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    return rng.normal(size=(T, 64)).astype(np.float32), rng.normal(size=(T, 9)).astype(np.float32)


def _windows(seq: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """Windows [B, 73, 27] of seq [T, 73] at frame indices idx (B, 27)."""
    return torch.from_numpy(np.ascontiguousarray(seq[idx].transpose(0, 2, 1)))


def _offline(gen: FaceGenerator, image: np.ndarray, windows: torch.Tensor) -> np.ndarray:
    """Reference: the offline FaceGenerator.forward (no source cache), as uint8 frames."""
    with torch.inference_mode():
        src = image_to_tensor(image)
        return tensor_to_image(gen(src.expand(len(windows), -1, -1, -1), windows)["fake_image"])


def _assert_close_uint8(a: np.ndarray, b: np.ndarray) -> None:
    """Cached vs uncached first conv differ by float rounding; truncation to uint8 can flip a value by 1."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3


def test_render_shapes_and_dtype(generator: FaceGenerator, avatar: np.ndarray, drive: tuple) -> None:
    r = PIRendererRenderer(generator, size=SIZE, lookahead=2, max_batch=3)
    state = r.prepare(avatar)
    exp, pose = drive
    out = r.render(state, exp[:5], pose[:5])
    assert out.shape == (5, SIZE, SIZE, 3) and out.dtype == np.uint8
    assert r.render(state, exp[:0], pose[:0]).shape == (0, SIZE, SIZE, 3)
    assert r.delay_frames == 2
    with pytest.raises(ValueError, match="exp must be"):
        r.render(state, exp[:3, :60], pose[:3])
    with pytest.raises(ValueError, match="pose must be"):
        r.render(state, exp[:3], pose[:2])
    with pytest.raises(ValueError, match="lookahead"):
        PIRendererRenderer(generator, size=SIZE, lookahead=14)
    with pytest.raises(ValueError, match="multiple of 32"):
        PIRendererRenderer(generator, size=80)


def test_full_lookahead_equals_offline_forward(generator: FaceGenerator, avatar: np.ndarray, drive: tuple) -> None:
    exp, pose = drive
    seq = np.concatenate([exp, pose], axis=1)
    r = PIRendererRenderer(generator, size=SIZE, lookahead=13, max_batch=5)
    state = r.prepare(avatar)
    out = np.concatenate([r.render(state, exp, pose), r.flush(state)])
    assert out.shape == (T + 13, SIZE, SIZE, 3)
    ref = _offline(generator, avatar, driving_windows(seq, np.arange(T)))
    _assert_close_uint8(out[13:], ref)
    # hold frames at the stream start: frame 0, future clamped to the frames received so far
    hold_idx = np.clip(0 + np.arange(-13, 14)[None], 0, np.arange(13)[:, None])
    _assert_close_uint8(out[:13], _offline(generator, avatar, _windows(seq, hold_idx)))
    # the comparison is discriminative: neighbouring frames render visibly differently
    assert np.abs(ref[1:].astype(int) - ref[:-1].astype(int)).mean() > 2.0


def test_driving_windows_helper_matches_clamped_indices(drive: tuple) -> None:
    exp, pose = drive
    seq = np.concatenate([exp, pose], axis=1)
    idx = np.clip(np.arange(T)[:, None] + np.arange(-13, 14)[None], 0, T - 1)
    assert np.array_equal(driving_windows(seq, np.arange(T)).numpy(), seq[idx].transpose(0, 2, 1))


@pytest.mark.parametrize("k", [0, 3])
def test_partial_lookahead_contract(generator: FaceGenerator, avatar: np.ndarray, drive: tuple, k: int) -> None:
    """Output j shows frame max(j-k, 0) with the window clamped to [0, j]; flush owes the last k frames."""
    exp, pose = drive
    seq = np.concatenate([exp, pose], axis=1)
    n = 18
    r = PIRendererRenderer(generator, size=SIZE, lookahead=k)
    state = r.prepare(avatar)
    out = r.render(state, exp[:n], pose[:n])
    j = np.arange(n)
    t = np.maximum(j - k, 0)
    idx = np.clip(t[:, None] + np.arange(-13, 14)[None], 0, j[:, None])
    _assert_close_uint8(out, _offline(generator, avatar, _windows(seq, idx)))
    tail = r.flush(state)
    assert tail.shape == (k, SIZE, SIZE, 3)
    if k:
        t_tail = np.arange(n - k, n)
        idx_tail = np.clip(t_tail[:, None] + np.arange(-13, 14)[None], 0, n - 1)
        _assert_close_uint8(tail, _offline(generator, avatar, _windows(seq, idx_tail)))


def test_output_does_not_depend_on_chunking(generator: FaceGenerator, avatar: np.ndarray, drive: tuple) -> None:
    exp, pose = drive
    r = PIRendererRenderer(generator, size=SIZE, lookahead=4, max_batch=1)  # batch 1: bitwise comparable
    a = r.prepare(avatar)
    whole = r.render(a, exp, pose)
    b = r.prepare(avatar)
    parts, start = [], 0
    for size in (1, 1, 5, 2, 9, 6):
        parts.append(r.render(b, exp[start : start + size], pose[start : start + size]))
        start += size
    assert start == T
    assert np.array_equal(np.concatenate(parts), whole)
    assert len(b.history) <= 13 + 4 + 1  # the rolling history stays bounded


def test_reset_starts_a_new_stream(generator: FaceGenerator, avatar: np.ndarray, drive: tuple) -> None:
    exp, pose = drive
    r = PIRendererRenderer(generator, size=SIZE, lookahead=2, max_batch=1)
    state = r.prepare(avatar)
    first = r.render(state, exp[:6], pose[:6])
    r.render(state, exp[6:12], pose[6:12])
    r.reset(state)
    assert state.received == 0 and len(state.history) == 0
    assert np.array_equal(r.render(state, exp[:6], pose[:6]), first)
    assert r.flush(state).shape == (2, SIZE, SIZE, 3)
    assert state.received == 0  # flush ends the stream


def test_flush_pads_streams_shorter_than_the_delay(generator: FaceGenerator, avatar: np.ndarray, drive: tuple) -> None:
    exp, pose = drive
    r = PIRendererRenderer(generator, size=SIZE, lookahead=5)
    state = r.prepare(avatar)
    assert r.render(state, exp[:2], pose[:2]).shape[0] == 2
    tail = r.flush(state)
    assert tail.shape[0] == 5  # inputs + delay frames in total, keeping the A/V timeline
    assert np.array_equal(tail[2], tail[1]) and np.array_equal(tail[4], tail[1])
    assert r.flush(state).shape[0] == 0


def test_prepare_fits_the_image(generator: FaceGenerator, avatar: np.ndarray) -> None:
    assert fit_image(avatar, SIZE) is not avatar and np.array_equal(fit_image(avatar, SIZE), avatar)
    wide = np.zeros((90, 150, 3), np.uint8)
    wide[:, 30:120] = 200  # the centre square is uniform grey
    fitted = fit_image(wide, SIZE)
    assert fitted.shape == (SIZE, SIZE, 3) and fitted.dtype == np.uint8 and (fitted == 200).all()
    r = PIRendererRenderer(generator, size=SIZE)
    assert r.prepare(wide).cache.image.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="uint8 RGB"):
        r.prepare(np.zeros((SIZE, SIZE), np.uint8))


def test_cuda_graphs_requested_without_cuda_falls_back(generator: FaceGenerator) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the CUDA-graph test")
    with pytest.warns(UserWarning, match="running eagerly"):
        r = PIRendererRenderer(generator, size=SIZE, cuda_graphs=True)
    assert not r.uses_cuda_graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_path_matches_eager(avatar: np.ndarray, drive: tuple) -> None:
    torch.manual_seed(0)
    gen = FaceGenerator(RendererConfig.from_dict(SMALL)).eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    exp, pose = drive
    eager = PIRendererRenderer(gen, size=SIZE, lookahead=3, max_batch=4, device="cuda")
    graph = PIRendererRenderer(gen, size=SIZE, lookahead=3, max_batch=4, device="cuda", cuda_graphs=True)
    assert graph.uses_cuda_graphs
    a, b = eager.prepare(avatar), graph.prepare(avatar)
    _assert_close_uint8(graph.render(b, exp, pose), eager.render(a, exp, pose))
