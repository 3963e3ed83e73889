"""The built-in warp renderer (models/warp/ core, engine/renderer.py adapter) on the built-in avatar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from engine.avatar import builtin_avatar, detect_landmarks
from engine.renderer import AvatarState, Renderer, WarpAvatarState, WarpRenderer
from models.warp import ExpressionMap, WarpConfig, interp_curve, similarity, tps_eval, tps_fit
from models.warp.landmarks import ASSET_PATH, POSE_FEATURES, STANDARD_CROP

SIZE = 256


@pytest.fixture(scope="module")
def renderer() -> WarpRenderer:
    return WarpRenderer(size=SIZE)


@pytest.fixture(scope="module")
def state(renderer: WarpRenderer) -> WarpAvatarState:
    return renderer.prepare(builtin_avatar(SIZE))


@pytest.fixture(scope="module")
def open_mouth_exp(samples_dir: Path) -> np.ndarray:
    """The expression of a real frame with a wide-open mouth (largest predicted inner-lip gap of a sample clip)."""
    mat = samples_dir / "source" / "3dmm" / "Obama_clip1.mat"
    if not mat.is_file():
        pytest.skip(f"{mat} not found")
    exp = scipy.io.loadmat(str(mat))["coeff"][:, 80:144].astype(np.float32)
    w = ExpressionMap.load().weights.numpy()  # (64, 68, 2)
    gap = exp @ (w[:, 66, 1] - w[:, 62, 1])
    return exp[int(np.argmax(gap))]


def lip_gap(image: np.ndarray) -> float:
    """Detected inner-lip gap in pixels (mean of the three upper/lower inner-lip pairs)."""
    lmk = detect_landmarks(image)
    return float((lmk[[67, 66, 65], 1] - lmk[[61, 62, 63], 1]).mean())


def test_protocol_and_attributes(renderer: WarpRenderer, state: WarpAvatarState) -> None:
    assert isinstance(renderer, Renderer)
    assert isinstance(state, AvatarState) and state.size == SIZE and not state.template
    assert renderer.size == SIZE and renderer.lookahead == 0


def test_output_shape_and_dtype(renderer: WarpRenderer, state: WarpAvatarState) -> None:
    rng = np.random.default_rng(0)
    exp = (rng.standard_normal((3, 64)) * 0.3).astype(np.float32)
    out = renderer.render(state, exp, np.zeros((3, 9), np.float32))
    assert out.shape == (3, SIZE, SIZE, 3) and out.dtype == np.uint8
    assert renderer.render(state, exp[:0], np.zeros((0, 9), np.float32)).shape == (0, SIZE, SIZE, 3)


def test_neutral_expression_reproduces_the_photo(renderer: WarpRenderer, state: WarpAvatarState) -> None:
    out = renderer.render(state, np.zeros((1, 64), np.float32), np.zeros((1, 9), np.float32))[0]
    diff = np.abs(out.astype(np.int16) - state.image.astype(np.int16))
    assert diff.mean() < 0.5 and diff.max() <= 3


def test_open_mouth_expression_opens_the_lips(
    renderer: WarpRenderer, state: WarpAvatarState, open_mouth_exp: np.ndarray
) -> None:
    out = renderer.render(state, open_mouth_exp[None], np.zeros((1, 9), np.float32))[0]
    before, after = lip_gap(state.image), lip_gap(out)
    assert after > before + 0.06 * SIZE * 0.35, (before, after)  # at least ~0.06 IOD wider (IOD ≈ 0.35·size)
    # the newly exposed mouth interior is painted, not smeared lip: it is darker than the lips around it
    lmk = detect_landmarks(out)
    cx, cy = lmk[[62, 66]].mean(0).round().astype(int)
    lower_lip = lmk[57].round().astype(int)
    assert out[cy - 1 : cy + 2, cx - 3 : cx + 4].mean() < out[lower_lip[1] - 2, lower_lip[0]].mean()


def test_photo_teeth_are_kept_when_the_mouth_opens(
    renderer: WarpRenderer, state: WarpAvatarState, open_mouth_exp: np.ndarray
) -> None:
    """The built-in avatar smiles with its upper teeth showing: they ride with the upper lip, not wiped."""
    assert state.warp is not None and state.warp.photo_teeth
    lmk = state.landmarks

    def bright_below_upper_lip(image: np.ndarray, marks: np.ndarray) -> int:
        x0, x1 = int(marks[61, 0]), int(marks[63, 0])
        y = int(marks[62, 1])
        patch = image[y + 1 : y + 6, x0:x1].astype(np.float32)
        return int((patch.mean(-1) > 170).sum())

    out = renderer.render(state, 0.6 * open_mouth_exp[None], np.zeros((1, 9), np.float32))[0]
    assert bright_below_upper_lip(out, detect_landmarks(out)) >= 0.6 * bright_below_upper_lip(state.image, lmk)


def test_blink_closes_the_eyes(renderer: WarpRenderer, state: WarpAvatarState) -> None:
    lmk = state.landmarks
    zero = np.zeros((2, 64), np.float32)
    out = renderer.render(state, zero, np.zeros((2, 9), np.float32), blink=np.array([0.0, 1.0]))

    def iris_brightness(image: np.ndarray) -> float:
        """Mean brightness between the photo's lids, under the middle of each upper lid (iris and pupil)."""
        values = []
        for up, lo in (((37, 38), (41, 40)), ((43, 44), (47, 46))):
            x0, x1 = int(lmk[list(up), 0].min()), int(lmk[list(up), 0].max())
            y0, y1 = int(lmk[list(up), 1].mean()) + 1, int(lmk[list(lo), 1].mean())
            values.append(image[y0:y1, x0 : x1 + 1].mean())
        return float(np.mean(values))

    open_, closed = iris_brightness(out[0]), iris_brightness(out[1])
    assert open_ < 110 and closed > open_ + 40, (open_, closed)  # dark iris covered by the (skin-coloured) lid


def lid_line_sharpness(image: np.ndarray, lmk: np.ndarray) -> list[float]:
    """Per eye, the median over the eye's middle columns of the strongest vertical luminance step in the lid
    region (from well above the upper lid to below the lower lid): the lash line of an open or closed eye."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = []
    for eye in (slice(36, 42), slice(42, 48)):
        p = lmk[eye]
        (x0, y0), (x1, y1) = p.min(0), p.max(0)
        w = x1 - x0
        box = luma[int(y0 - 0.6 * w): int(y1 + 0.4 * w) + 1, int(x0 + 0.25 * w): int(x1 - 0.25 * w) + 1]
        out.append(float(np.median(np.abs(np.diff(box, axis=0)).max(0))))
    return out


def test_a_closed_lid_is_the_photo_warped_not_blended(samples_dir: Path) -> None:
    """A blink moves the lid (its lash margin rigid): the closed lid line is as sharp as the open eye's upper lid.
    A cross-fade of open and closed images, or a lid smeared by stretching its margin, halves that contrast
    (before the cubic lids and the rim overlap this photo's closed lids scored 0.87-0.88 of the open ones)."""
    from engine.avatar import load_image

    png = samples_dir / "source" / "image" / "Obama_clip1.png"
    if not png.is_file():
        pytest.skip(f"{png} not found")
    r = WarpRenderer(size=SIZE)
    st = r.prepare(load_image(png))
    frames = r.render(st, np.zeros((2, 64), np.float32), None, blink=np.array([0.0, 1.0]))
    open_, closed = lid_line_sharpness(frames[0], st.landmarks), lid_line_sharpness(frames[1], st.landmarks)
    mix = lid_line_sharpness(((frames[0].astype(np.float32) + frames[1]) / 2).astype(np.uint8), st.landmarks)
    for o, c, m in zip(open_, closed, mix, strict=True):
        assert c >= 0.95 * o, (open_, closed)
        assert m < 0.8 * c, (mix, closed)  # the measure does see a blend


def test_rendering_is_deterministic_and_batch_independent(
    renderer: WarpRenderer, state: WarpAvatarState, open_mouth_exp: np.ndarray
) -> None:
    rng = np.random.default_rng(1)
    exp = np.stack([open_mouth_exp, (rng.standard_normal(64) * 0.3).astype(np.float32), np.zeros(64, np.float32)])
    pose = np.zeros((3, 9), np.float32)
    a = renderer.render(state, exp, pose)
    b = renderer.render(state, exp, pose)
    np.testing.assert_array_equal(a, b)
    single = np.concatenate([renderer.render(state, exp[i : i + 1], pose[i : i + 1]) for i in range(3)])
    assert np.abs(single.astype(np.int16) - a.astype(np.int16)).max() <= 1


def test_head_motion_follows_the_pose_relative_to_the_first(renderer: WarpRenderer) -> None:
    st = renderer.prepare(builtin_avatar(SIZE))
    base = np.zeros(9, np.float32)
    turned = base.copy()
    turned[:3] = [0.0, 0.08, 0.06]  # yaw and roll (radians)
    zero = np.zeros((1, 64), np.float32)
    first = renderer.render(st, zero, base[None])[0]  # the first pose is the reference: a still head
    np.testing.assert_array_equal(first, renderer.render(st, zero, None)[0])
    moved = renderer.render(st, zero, turned[None])[0]
    shift = np.abs(detect_landmarks(moved)[27:36] - detect_landmarks(first)[27:36]).mean()
    assert 1.0 < shift < 0.2 * SIZE
    renderer.reset(st)  # a new stream: the turned pose becomes the reference
    np.testing.assert_array_equal(renderer.render(st, zero, turned[None])[0], first)


def test_invalid_inputs_are_refused(renderer: WarpRenderer, state: WarpAvatarState) -> None:
    with pytest.raises(ValueError, match="exp"):
        renderer.render(state, np.zeros((2, 63), np.float32), np.zeros((2, 9), np.float32))
    with pytest.raises(ValueError, match="pose"):
        renderer.render(state, np.zeros((2, 64), np.float32), np.zeros((3, 9), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        renderer.render(state, np.full((1, 64), np.nan, np.float32), np.zeros((1, 9), np.float32))


def test_faceless_crop_falls_back_to_the_standard_layout() -> None:
    r = WarpRenderer(size=64)
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    st = r.prepare(noise)
    assert st.template
    out = r.render(st, np.zeros((2, 64), np.float32), np.zeros((2, 9), np.float32))
    assert out.shape == (2, 64, 64, 3)
    assert np.abs(out[0].astype(np.int16) - noise).mean() < 0.5


def test_any_photo_is_cropped_to_the_renderer_size() -> None:
    import skimage.data

    r = WarpRenderer(size=128)
    st = r.prepare(skimage.data.astronaut())  # 512² portrait, not framed
    assert st.image.shape == (128, 128, 3) and not st.template
    assert r.render(st, np.zeros((1, 64), np.float32), np.zeros((1, 9), np.float32)).shape == (1, 128, 128, 3)


# ------------------------------------------------------------------------------------------ core pieces


def test_expression_map_asset() -> None:
    m = ExpressionMap.load()
    assert m.weights.shape == (64, 68, 2) and m.pose_weights.shape == (POSE_FEATURES, 4)
    assert torch.isfinite(m.weights).all() and (m.exp_std > 0).all()
    held = ExpressionMap.load(heldout_clip="Obama_clip1")
    assert held.weights.shape == (64, 68, 2) and not torch.equal(held.weights, m.weights)
    assert not torch.equal(held.pose_weights, m.pose_weights)  # the pose map is held out too
    with pytest.raises(KeyError):
        ExpressionMap.load(heldout_clip="no-such-clip")


def test_pose_map_reads_relative_and_absolute_poses_alike(tmp_path: Path) -> None:
    """The engine's idle poses carry no crop (offsets around 0); a clip's poses carry the crop (s ≈ 1, t ≈ 128).
    The same motion must move the head the same way in both, and a map fitted before the pose features (9 raw
    rows) still loads, as the same linear map."""
    core = WarpRenderer(size=64).core
    g = np.random.default_rng(0)
    rel = np.zeros((5, 9), np.float32)
    rel[:, :3] = g.normal(0, 0.05, (5, 3))
    rel[:, 6:9] = g.normal(0, [0.03, 8.0, 6.0], (5, 3))
    rel[0] = 0.0
    absolute = rel + np.array([0, 0, 0, 0, 0, 0, *STANDARD_CROP], np.float32)
    a = core.head_motion(torch.from_numpy(rel), torch.from_numpy(rel[0]))
    b = core.head_motion(torch.from_numpy(absolute), torch.from_numpy(absolute[0]))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-5)
    assert float(a[2].abs().max()) > 0.02  # the crop shift moves the head
    with np.load(ASSET_PATH) as data:
        old = {k: data[k] for k in data.files if not k.startswith("heldout_pose/")}
    old["pose_weights"] = old["pose_weights"][:9]
    np.savez(tmp_path / "old.npz", **old)
    legacy = ExpressionMap.load(tmp_path / "old.npz")
    assert legacy.pose_weights.shape == (POSE_FEATURES, 4) and not legacy.pose_weights[9:].any()


def test_interp_curve_matches_numpy() -> None:
    xk = torch.tensor([[0.0, 1.0, 3.0, 4.0]])
    yk = torch.tensor([[1.0, 3.0, -1.0, 2.0]])
    x = torch.linspace(-1, 5, 61)[None]
    np.testing.assert_allclose(interp_curve(xk, yk, x)[0].numpy(), np.interp(x[0], xk[0], yk[0]), atol=1e-5)


def test_tps_interpolates_its_control_points() -> None:
    g = torch.Generator().manual_seed(0)
    ctrl = torch.rand(2, 12, 2, generator=g) * 2 - 1
    disp = torch.randn(2, 12, 2, generator=g) * 0.05
    coef = tps_fit(ctrl, disp, reg=0.0)
    at = torch.stack([tps_eval(coef[i : i + 1], ctrl[i : i + 1], ctrl[i])[0] for i in range(2)])  # (2, 2, 12)
    np.testing.assert_allclose(at.transpose(1, 2).numpy(), disp.numpy(), atol=1e-4)


def test_similarity_recovers_a_known_transform() -> None:
    src = torch.randn(13, 2)
    ang, scale = 0.3, 2.5
    A = scale * torch.tensor([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]], dtype=torch.float32)
    dst = src @ A.T + torch.tensor([4.0, -2.0])
    A_hat, t_hat = similarity(src, dst)
    np.testing.assert_allclose(A_hat.numpy(), A.numpy(), atol=1e-4)
    np.testing.assert_allclose(t_hat.numpy(), [4.0, -2.0], atol=1e-4)


@pytest.mark.parametrize("level", [0, 255])
def test_a_saturated_photo_stays_saturated_and_frames_are_contiguous(level: int) -> None:
    """The rounding of the sampled photo (no clamp outside the painted mouth: bilinear samples of 0..255 stay
    there, up to a rounding error that truncation absorbs), on a flat photo (the standard face layout), with the
    mouth open and the head moving; frames come out C-contiguous (N, S, S, 3) uint8."""
    size = 64
    r = WarpRenderer(size=size, config=WarpConfig(interior="painted"))
    st = r.prepare(np.full((size, size, 3), level, np.uint8))
    assert st.template
    w = ExpressionMap.load().weights.numpy()
    exp = np.stack([3.0 * (w[:, 66, 1] - w[:, 62, 1]) / np.linalg.norm(w[:, 66, 1] - w[:, 62, 1])] * 2)
    pose = np.zeros((2, 9), np.float32)
    pose[1, 0:3] = 0.1
    frames = r.render(st, exp.astype(np.float32), pose)
    assert frames.dtype == np.uint8 and frames.shape == (2, size, size, 3) and frames.flags["C_CONTIGUOUS"]
    g = st.warp.mouth_box
    outside = np.ones((size, size), bool)
    outside[g.y0[0]:g.y0[0] + g.bh, g.x0[0]:g.x0[0] + g.bw] = False
    assert (frames[0][outside] == level).all()
