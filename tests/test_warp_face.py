"""Issue 17 on the warp renderer: real mouth interiors, rest and closure, a still background, a living head."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from engine.avatar import builtin_avatar, detect_landmarks
from engine.config import add_config_arguments, config_from_args
from engine.motion import HEAD_GAIN, HEAD_STD, IdleMotion
from engine.renderer import WarpAvatarState, WarpRenderer
from models.warp import ExpressionMap, MouthBank, WarpConfig
from models.warp.interior import FEATURE_WEIGHTS, MIN_EXEMPLAR_GAP, SIGMA, feature_matrix

SIZE = 256
LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def bank_renderer() -> WarpRenderer:
    return WarpRenderer(size=SIZE)


@pytest.fixture(scope="module")
def painted_renderer() -> WarpRenderer:
    return WarpRenderer(size=SIZE, config=WarpConfig(interior="painted"))


@pytest.fixture(scope="module")
def gap_weights() -> np.ndarray:
    w = ExpressionMap.load().weights.numpy()  # (64, 68, 2)
    return (w[:, [67, 66, 65], 1] - w[:, [61, 62, 63], 1]).mean(1)  # (64,) expression → mean inner-lip gap (IOD)


@pytest.fixture(scope="module")
def open_exp(samples_dir: Path, gap_weights: np.ndarray) -> np.ndarray:
    mat = samples_dir / "source" / "3dmm" / "Obama_clip1.mat"
    if not mat.is_file():
        pytest.skip(f"{mat} not found")
    exp = scipy.io.loadmat(str(mat))["coeff"][:, 80:144].astype(np.float32)
    return exp[int(np.argmax(exp @ gap_weights))]


def mouth_pixels(image: np.ndarray) -> np.ndarray:
    """RGB pixels inside the detected inner-lip outline."""
    from skimage.draw import polygon

    lmk = detect_landmarks(image)
    rr, cc = polygon(lmk[60:68, 1], lmk[60:68, 0], image.shape[:2])
    return image[rr, cc].astype(np.float64)


def test_bank_loads_and_leaves_a_speaker_out() -> None:
    bank = MouthBank.load()
    assert bank.patches.shape[1:] == (4, 20, 40) and len(bank.patches) == len(bank.shape) > 500  # RGB, teeth-likeness
    donor = bank.speakers[bank.donor()]
    held = MouthBank.load(exclude=(donor,))
    assert donor not in {held.speakers[int(i)] for i in held.speaker.unique()}
    assert held.speakers[held.donor()] != donor
    with pytest.raises(KeyError, match="not in the mouth bank"):
        MouthBank.load(exclude=("nobody",))


def test_the_banks_teeth_likeness_tells_the_donors_teeth_from_its_lips() -> None:
    """The bank's fourth channel says which exemplar pixels are teeth (the colour gain and the cavity shade tell them
    apart): on the clearest donor the rows just below the upper lip (its upper incisors) are teeth in most
    exemplars; the last rows (its lower lip, bright pale pink in that clip) are not."""
    bank = MouthBank.load()
    teeth = bank.patches[bank.speaker == bank.donor(), 3]  # (K, T, S)
    assert float(teeth.min()) >= 0.0 and float(teeth.max()) <= 1.0
    upper, lip = float(teeth[:, 3:6, 10:30].mean()), float(teeth[:, -2:, 10:30].mean())
    assert upper > 0.5 and lip < 0.1, (upper, lip)  # (measured 0.60, 0.03)


def _feifeili_most_open(samples_dir: Path):
    """feifeili_clip1 held out: its expressions (T, 64), its photo (video frame 2, row 0's), the expression map and
    mouth bank without her, and her 4 most open expressions by the map's inner-lip gap."""
    from engine.landmark_fit import read_video_rgb

    exp = scipy.io.loadmat(str(samples_dir / "source" / "3dmm" / "feifeili_clip1.mat"))["coeff"][:, 80:144]
    exp = exp.astype(np.float32)
    photo = read_video_rgb(samples_dir / "source" / "video" / "feifeili_clip1.mp4")[2]
    emap, bank = ExpressionMap.load(heldout_clip="feifeili_clip1"), MouthBank.load(exclude=("feifeili",))
    w = emap.weights.numpy()
    frames = exp[np.argsort(-(exp @ (w[:, [67, 66, 65], 1] - w[:, [61, 62, 63], 1]).mean(1)))[:4]]
    return exp, photo, emap, bank, frames


def test_the_open_mouth_darkens_behind_the_lips_and_the_teeth_stay_bright(samples_dir: Path) -> None:
    """feifeili_clip1's photo (a dim, closed mouth) opened by its own most open expressions, the interior from the
    bank without her: against no cavity shade, the tissue a few pixels behind the lips is darker by much more than the
    tissue at the lips, and the teeth keep their brightness (before it, the donor's lit tongue and lower lip filled
    the opening with a flat pale lens: benchmarks/results/renderer_mouth_feifeili_clip1.png)."""
    import scipy.ndimage as ndi
    from skimage.draw import polygon

    exp, photo, emap, bank, frames = _feifeili_most_open(samples_dir)
    out = {}
    for shade in (0.0, WarpConfig().cavity_shade):
        # (grey teeth, teeth_tint 0: the teeth are told from the tissue by their low saturation; the tint is
        # test_a_toothless_photos_teeth_take_the_warmth_of_its_light's)
        config = WarpConfig(cavity_shade=shade, teeth_tint=0.0)
        renderer = WarpRenderer(size=SIZE, emap=emap, bank=bank, config=config)
        out[shade] = renderer.render(renderer.prepare(photo, exp_ref=exp[0]), frames).astype(np.float64)
    flat, shaded = out.values()
    for i in range(len(frames)):
        lmk = detect_landmarks(shaded[i].astype(np.uint8))
        inside = np.zeros((SIZE, SIZE), bool)
        inside[polygon(lmk[60:68, 1], lmk[60:68, 0], inside.shape)] = True
        depth = ndi.distance_transform_edt(inside)  # px behind the inner-lip outline
        luma = flat[i] @ LUMA
        sat = (flat[i].max(-1) - flat[i].min(-1)) / np.maximum(flat[i].max(-1), 1.0)
        teeth = inside & (luma > 150) & (sat < 0.15)
        darker = luma - shaded[i] @ LUMA
        shallow, deep = darker[inside & ~teeth & (depth <= 1.5)].mean(), darker[inside & ~teeth & (depth >= 3)].mean()
        # (measured: teeth 5-12 levels darker, 35-350 teeth pixels; tissue 11-22 at the lips, 35-41 behind them)
        assert teeth.sum() > 20 and darker[teeth].mean() < 15.0, (i, teeth.sum(), darker[teeth].mean())
        assert deep > 30.0 and deep > 1.5 * shallow, (i, shallow, deep)


def test_teeth_contrast_raises_the_exemplars_texture() -> None:
    """``WarpConfig.teeth_contrast`` γ draws the donor's teeth with luminance ∝ (l / its teeth)^γ: its gaps and shaded
    teeth darker relative to the lit ones (about γ × the relative spread); at 1 (shipped) one flat gain keeps the
    exemplars' relative spread exactly."""
    bank = MouthBank.load()
    luma = torch.tensor(LUMA, dtype=torch.float32)
    spread = []
    for gamma in (1.0, 2.0):
        state = WarpRenderer(size=SIZE, config=WarpConfig(teeth_contrast=gamma)).prepare(builtin_avatar(SIZE))
        assert state.warp is not None and state.warp.interior is not None
        inter = state.warp.interior
        d = bank.speakers.index(inter.donor)
        raw = bank.patches[(bank.speaker == d) & (bank.shape[:, :3].mean(1) >= MIN_EXEMPLAR_GAP)]  # (K, 4, T, S)
        out = inter.patches.reshape(len(raw), 3, *raw.shape[2:])
        l_raw, l_out = (torch.einsum("kctq,c->ktq", x, luma) for x in (raw[:, :3], out))
        teeth = (raw[:, 3] > 0.99) & (l_raw < 250.0) & (l_out < 254.0)  # fully teeth-like, not clipped either side
        assert int(teeth.sum()) > 1000
        spread.append(tuple(float(x[teeth].std() / x[teeth].mean()) for x in (l_raw, l_out)))
    (raw1, flat), (raw2, raised) = spread
    assert abs(flat / raw1 - 1.0) < 0.01 and raised > 1.4 * raw2, spread  # (measured: 1.00×, ~1.9×)


def test_a_toothless_photos_teeth_take_the_warmth_of_its_light(samples_dir: Path) -> None:
    """feifeili_clip1's photo shows no teeth (their colour is predicted); opened by its most open expressions with
    the bank without her, the brightest tenth of the interior's unsaturated pixels is warm like real teeth in that
    light, (R − B) / luminance > 0.17 (a grey gain on the donor's white teeth: 0.14-0.15, a cold blue-grey in a warm
    face; her real teeth 0.33), and not pink (less than half the skin's, 0.55)."""
    from skimage.draw import polygon

    exp, photo, emap, bank, frames = _feifeili_most_open(samples_dir)
    renderer = WarpRenderer(size=SIZE, emap=emap, bank=bank)
    state = renderer.prepare(photo, exp_ref=exp[0])
    assert state.warp is not None and not state.warp.photo_teeth
    skin = state.warp.skin_rgb.numpy()
    skin_warm = float((skin[0] - skin[2]) / (skin @ LUMA))
    for i, image in enumerate(renderer.render(state, frames).astype(np.float64)):
        lmk = detect_landmarks(image.astype(np.uint8))
        inside = np.zeros((SIZE, SIZE), bool)
        inside[polygon(lmk[60:68, 1], lmk[60:68, 0], inside.shape)] = True
        px = image[inside]
        luma = px @ LUMA
        unsat = (px.max(1) - px.min(1)) / np.maximum(px.max(1), 1.0) < 0.4
        order = np.argsort(luma[unsat])
        top = px[unsat][order][-max(1, len(order) // 10):]
        warm = float(((top[:, 0] - top[:, 2]) / (top @ LUMA)).mean())
        assert len(order) > 200 and 0.17 < warm < 0.5 * skin_warm, (i, len(order), warm, skin_warm)


def test_the_interior_donor_can_be_chosen(bank_renderer: WarpRenderer) -> None:
    """``WarpConfig.donor`` picks the bank speaker whose interiors are used (benchmarks/renderer.py scores every
    candidate's teeth share that way); by default the clearest one."""
    chosen = WarpRenderer(size=SIZE, config=WarpConfig(donor="Obama")).prepare(builtin_avatar(SIZE))
    default = bank_renderer.prepare(builtin_avatar(SIZE))
    assert chosen.warp is not None and chosen.warp.interior is not None and chosen.warp.interior.donor == "Obama"
    assert default.warp is not None and default.warp.interior is not None
    assert default.warp.interior.donor == MouthBank.load().speakers[MouthBank.load().donor()] != "Obama"


def test_open_mouth_shows_a_real_interior_not_painted_bands(
    bank_renderer: WarpRenderer, painted_renderer: WarpRenderer, open_exp: np.ndarray
) -> None:
    state_b = bank_renderer.prepare(builtin_avatar(SIZE))
    state_p = painted_renderer.prepare(builtin_avatar(SIZE))
    assert state_b.warp is not None and state_b.warp.interior is not None
    assert state_p.warp is not None and state_p.warp.interior is None
    out_b = bank_renderer.render(state_b, open_exp[None])[0]
    out_p = painted_renderer.render(state_p, open_exp[None])[0]
    px_b = mouth_pixels(out_b)
    luma_b = px_b @ LUMA
    # where the two differ (the newly exposed interior), the painted one is a near-uniform dark fill; the real
    # one is graded (tongue, lower teeth, shade)
    changed = np.abs(out_b.astype(np.int16) - out_p.astype(np.int16)).max(-1) > 10
    lb, lp = out_b[changed] @ LUMA, out_p[changed] @ LUMA
    assert changed.sum() > 300 and lb.std() > 1.1 * lp.std(), (changed.sum(), lb.std(), lp.std())
    assert np.percentile(luma_b, 90) > 150  # teeth show (the photo's upper teeth ride along)
    # colours matched teeth-to-teeth: the brightest interior pixels are not tinted (no mauve/pink teeth)
    bright = px_b[luma_b >= np.percentile(luma_b, 90)].mean(0)
    assert bright.max() - bright.min() < 45, bright


def test_interior_is_deterministic_and_does_not_flicker(bank_renderer: WarpRenderer, open_exp: np.ndarray) -> None:
    state = bank_renderer.prepare(builtin_avatar(SIZE))
    a = bank_renderer.render(state, open_exp[None])[0]
    b = bank_renderer.render(state, open_exp[None])[0]
    c = bank_renderer.render(state, (open_exp * 1.002)[None])[0]  # the same shape, a hair wider
    np.testing.assert_array_equal(a, b)
    lmk = detect_landmarks(a)
    x0, y0 = lmk[48:68].min(0).astype(int)
    x1, y1 = lmk[48:68].max(0).astype(int) + 1
    diff = np.abs(a[y0:y1, x0:x1].astype(np.int16) - c[y0:y1, x0:x1].astype(np.int16))
    assert diff.mean() < 1.5, diff.mean()


def _lips(features: torch.Tensor) -> torch.Tensor:
    """Face-frame landmarks (N, 68, 2) whose inner-lip shape features (N, 4: three gaps, the width) are these."""
    face = torch.zeros(len(features), 68, 2)
    face[:, [67, 66, 65], 1] = features[:, :3]
    face[:, 64, 0] = features[:, 3]
    return face


def test_a_mouth_shape_that_holds_keeps_its_interior(bank_renderer: WarpRenderer) -> None:
    """A sub-pixel wobble across the boundary between two exemplars that look different: frames blended each
    alone swap the interiors every frame (what benchmarks/mouth_temporal.py measured as flicker); in order, with
    the stream's memory, the first one holds. A clearly different shape still takes its own interior at once, and
    a new stream (``reset``) starts afresh."""
    bank = MouthBank.load()
    inter = bank.for_avatar(bank.donor(), None, torch.tensor([180.0, 140.0, 120.0]))
    w = torch.tensor(FEATURE_WEIGHTS)
    shapes = torch.linalg.lstsq(feature_matrix(w), inter.lip_dot / -2.0).solution.T  # (K, 4) weighted
    dist = torch.cdist(shapes, shapes)
    look = torch.cdist(inter.patches, inter.patches) / inter.patches.shape[1] ** 0.5  # rms difference, 0..255
    sigma2 = SIGMA * SIGMA
    pairs = torch.nonzero((dist > 2.5 * SIGMA) & (dist < 5.0 * SIGMA))
    pairs = pairs[torch.argsort(look[pairs[:, 0], pairs[:, 1]], descending=True)]
    for a, b in pairs.tolist():
        eps = 3.0 * sigma2 / float(dist[a, b]) ** 2  # f_a, f_b: 6σ² apart in d², either side of the midpoint
        mid, step = (shapes[a] + shapes[b]) / 2, (shapes[a] - shapes[b]) * eps
        f = torch.stack([mid + step, mid - step]) / w
        near = torch.cdist(f * w, shapes).argmin(1).tolist()
        if near == [a, b]:
            break
    else:
        pytest.fail("no pair of neighbouring exemplars with distinct interiors in the bank")
    assert float(look[a, b]) > 10.0, float(look[a, b])  # the two interiors differ visibly
    wobble = _lips(f[[0, 1, 0, 1, 0, 1]])

    alone = inter.blend(wobble)[0].flatten(1)
    swaps = (alone[1:] - alone[:-1]).pow(2).mean(1).sqrt()
    assert bool((swaps > 0.5 * look[a, b]).all()), swaps

    memory = torch.zeros(1, len(inter.gap))
    held = torch.cat([inter.blend(wobble[i : i + 1], memory, WarpConfig().interior_hold)[0] for i in range(6)])
    steps = (held.flatten(1)[1:] - held.flatten(1)[:-1]).pow(2).mean(1).sqrt()
    assert bool((steps < 0.05 * look[a, b]).all()), steps
    batch = inter.blend(wobble, torch.zeros(1, len(inter.gap)), WarpConfig().interior_hold)[0]
    torch.testing.assert_close(batch, held, atol=1e-3, rtol=0)  # a batch is the frames in order

    # ... unless the opening is moving: a gap that changed by interior_hold_motion since the last frame is not held
    cfg = WarpConfig()
    memory = torch.zeros(1, len(inter.gap))
    inter.blend(wobble[:1], memory, cfg.interior_hold)  # shows a
    g_b = float(torch.mm(wobble[1:2].reshape(1, 136), inter.gap_feat))
    moved = inter.blend(wobble[1:2], memory.clone(), cfg.interior_hold, 0.0, cfg.interior_hold_motion,
                        torch.full((1, 1), g_b - cfg.interior_hold_motion))[0]
    torch.testing.assert_close(moved, alone.reshape(6, 3, 20, 40)[1:2], atol=0.1, rtol=0)  # b's, as alone
    stayed = inter.blend(wobble[1:2], memory.clone(), cfg.interior_hold, 0.0, cfg.interior_hold_motion,
                         torch.full((1, 1), g_b))[0]
    torch.testing.assert_close(stayed, held[1:2], atol=1e-3, rtol=0)  # a's, held

    far = int(torch.argmax(dist[a]))  # a clearly different shape: its own interior, memory or not
    assert float(dist[a, far]) ** 2 > 4 * WarpConfig().interior_hold * sigma2
    own = inter.blend(_lips(shapes[far : far + 1] / w))[0]
    torch.testing.assert_close(inter.blend(_lips(shapes[far : far + 1] / w), memory, WarpConfig().interior_hold)[0],
                               own)

    state = bank_renderer.prepare(builtin_avatar(SIZE))
    assert state.warp is not None and state.warp.interior_memory is not None
    bank_renderer.render(state, np.zeros((1, 64), np.float32))
    assert bool(state.warp.interior_memory.any())
    bank_renderer.reset(state)
    assert not bool(state.warp.interior_memory.any())


def test_rest_reproduces_the_photo_and_a_bilabial_closes_the_lips(
    bank_renderer: WarpRenderer, open_exp: np.ndarray, gap_weights: np.ndarray
) -> None:
    state: WarpAvatarState = bank_renderer.prepare(builtin_avatar(SIZE))
    rest = open_exp * 0.5  # any expression can be the rest: it then shows the photo as it is
    bank_renderer.set_rest(state, rest)
    out = bank_renderer.render(state, rest[None])[0]
    assert np.abs(out.astype(np.int16) - state.image.astype(np.int16)).mean() < 0.5
    photo_gap = float((state.landmarks[[67, 66, 65], 1] - state.landmarks[[61, 62, 63], 1]).mean())
    assert photo_gap > 4  # the astronaut smiles with her teeth showing
    close = rest - 0.08 * gap_weights / float(gap_weights @ gap_weights)  # a bilabial-sized drop of the gap
    shut = bank_renderer.render(state, close[None])[0]
    lmk = detect_landmarks(shut)
    # the lips meet: dlib reads 1-2 px on a closed mouth (its fit moves by a pixel with the neck and chest pixels
    # in its box, which the head mask changes), 6 px before the fix
    assert float((lmk[[67, 66, 65], 1] - lmk[[61, 62, 63], 1]).mean()) <= 2.5
    with pytest.raises(ValueError, match="exp_rest"):
        bank_renderer.set_rest(state, np.zeros((2, 64), np.float32))


def test_head_motion_moves_the_head_not_the_background(bank_renderer: WarpRenderer) -> None:
    state = bank_renderer.prepare(builtin_avatar(SIZE))
    pose = np.zeros((2, 9), np.float32)
    pose[1, :3] = [0.06, 0.12, 0.08]  # pitch, yaw, roll (rad)
    pose[1, 7:9] = [12.0, -8.0]  # crop shift (px in the source video)
    out = bank_renderer.render(state, np.zeros((2, 64), np.float32), pose)[1]
    diff = np.abs(out.astype(np.int16) - state.image.astype(np.int16)).mean(-1)
    # background (top corners) unmoved; the boxes stop short of the head band's soft tail, which reaches ~14 px
    # from the right edge at this (large: 7° turn, 4.6° roll) motion
    corners = np.concatenate([diff[:12, :12].ravel(), diff[:12, -12:].ravel()])
    assert corners.mean() < 0.5, corners.mean()
    face = diff[90:190, 80:180]
    assert face.mean() > 8.0, face.mean()  # the face moved


def test_natural_head_motion_matches_the_sample_speakers() -> None:
    frames = np.arange(30 * 240)
    pose = IdleMotion(seed=5).poses(frames)
    ratio = pose.std(0) / (HEAD_STD * HEAD_GAIN)
    assert np.all((ratio > 0.6) & (ratio < 1.4)), ratio
    np.testing.assert_array_equal(pose[100:200], IdleMotion(seed=5).poses(frames[100:200]))  # deterministic
    assert not np.array_equal(pose, IdleMotion(seed=6).poses(frames))
    # rhythm: most of the angle power lies below 0.5 Hz, as in the sample clips
    spec = np.abs(np.fft.rfft(pose[:, :3] - pose[:, :3].mean(0), axis=0)) ** 2
    freq = np.fft.rfftfreq(len(frames), 1 / 30)
    assert spec[freq < 0.5].sum() / spec.sum() > 0.6
    np.testing.assert_array_equal(IdleMotion(head=0.0).poses(frames[:5]), np.zeros((5, 9), np.float32))


def test_the_head_moves_faster_while_speaking(samples_dir: Path) -> None:
    """Head speed follows speech (engine.motion.HEAD_RATE, the head clock): a sentence between pauses moves the
    head faster than the pauses, most around the phrase onset; a session's poses are the same whether its frames
    come in one job or in jobs of a few frames, and a frame asked for again gets the same pose."""
    import json

    from benchmarks.renderer import angle_speed
    from models.phonemes import SIL, phoneme_windows

    seq = samples_dir / "source" / "phoneme" / "andrew_clip_2_seq.json"
    if not seq.is_file():
        pytest.skip(f"{seq} not found")
    speech = np.asarray(json.loads(seq.read_text())[:300], np.int64)
    speech[speech == SIL] = speech[0] if speech[0] != SIL else 0  # one unbroken phrase
    labels = np.concatenate([np.full(150, SIL), speech, np.full(150, SIL)])
    frames, windows = np.arange(len(labels)), phoneme_windows(labels)
    for seed in (0, 1, 2):
        motion = IdleMotion(seed=seed)
        pose = motion.poses(frames, windows)
        v = angle_speed(np.degrees(pose[:, :3].astype(np.float64)))
        talking, quiet = np.median(v[165:435]), np.median(np.r_[v[:135], v[465:]])
        assert talking > 1.3 * quiet, (seed, talking, quiet)  # 1.0 when the speed ignored speech
        assert v[145:155].mean() > talking, (seed, v[145:155].mean(), talking)  # the phrase onset
        jobs = IdleMotion(seed=seed)
        in_jobs = np.concatenate([jobs.poses(frames[i:i + 3], windows[i:i + 3]) for i in range(0, len(frames), 3)])
        np.testing.assert_array_equal(in_jobs, pose)
        np.testing.assert_array_equal(jobs.poses(frames[140:147], windows[140:147]), pose[140:147])  # rewound
        silent = phoneme_windows(np.full(len(labels), SIL))
        np.testing.assert_array_equal(IdleMotion(seed=seed).poses(frames[:50]),
                                      IdleMotion(seed=seed).poses(frames[:50], silent[:50]))


def test_short_pauses_are_calmer_than_speech_and_long_ones_not_frozen(samples_dir: Path) -> None:
    """The speakers' heads move ~1.5x faster in speech than in pauses, short or long (benchmarks/renderer.py
    speech_driven_motion). A speech gain on the motion's amplitude got neither: its own change at each pause's
    edges moved the head, so 12-frame pauses were as lively as speech (ratio 0.8-1.0), and a 30-frame pause
    nearly froze (ratio 2.7-4.1). The head clock keeps the ratio near its rates' whatever the pause length."""
    import json

    from benchmarks.renderer import angle_speed, speaking_mask
    from models.phonemes import SIL, phoneme_windows

    seq = samples_dir / "source" / "phoneme" / "andrew_clip_2_seq.json"
    if not seq.is_file():
        pytest.skip(f"{seq} not found")
    words = np.asarray(json.loads(seq.read_text()), np.int64)
    words = words[words != SIL]
    for pause in (12, 30):
        labels = np.concatenate([np.r_[words[i * 45:(i + 1) * 45], np.full(pause, SIL)] for i in range(12)])
        talking, windows = speaking_mask(labels), phoneme_windows(labels)
        v = np.concatenate([angle_speed(np.degrees(IdleMotion(seed=seed).poses(np.arange(len(labels)), windows)
                                                   [:, :3].astype(np.float64))) for seed in range(4)])
        ratio = np.median(v[np.tile(talking, 4)]) / np.median(v[~np.tile(talking, 4)])
        assert 1.15 < ratio < 2.2, (pause, ratio)


@pytest.mark.parametrize("size", [256, 512])
def test_size_flag_sets_the_renderer_size(size: int) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert config_from_args(parser.parse_args(["--size", str(size)])).renderer.size == size


def test_a_batch_places_each_frames_mouth_where_that_frame_has_it(
    bank_renderer: WarpRenderer, open_exp: np.ndarray
) -> None:
    """An offline batch with fast head motion renders what the frames render one by one (no seam: the mouth box
    follows each frame's head, not the batch's mean position)."""
    state = bank_renderer.prepare(builtin_avatar(SIZE))
    n = 6
    pose = np.zeros((n, 9), np.float32)
    pose[:, 7] = np.linspace(10.0, 60.0, n)  # crop shift (px in the source video): a fast sideways move
    pose[:, 8] = np.linspace(-5.0, -30.0, n)
    pose[:, 1] = np.linspace(0.03, 0.15, n)  # and a turn
    exp = np.repeat(open_exp[None], n, 0)
    rest = np.zeros((1, 64), np.float32), np.zeros((1, 9), np.float32)

    def stream() -> None:  # a new stream whose reference pose is the still head
        bank_renderer.reset(state)
        bank_renderer.render(state, *rest)

    stream()
    batch = bank_renderer.render(state, exp, pose)
    stream()
    single = np.concatenate([bank_renderer.render(state, exp[i : i + 1], pose[i : i + 1]) for i in range(n)])
    diff = np.abs(batch.astype(np.int16) - single.astype(np.int16))
    # rounding only (a seam: ~180; 3 pixels differ by 6 levels where the hold at the edge it moves towards
    # compresses the cheek)
    assert diff.max() <= 8 and diff.mean() < 0.02, (diff.max(), diff.mean())
    moved = np.abs(single[-1].astype(np.int16) - single[0].astype(np.int16)).mean()
    assert moved > 5.0, moved  # the head did move far within the batch


def test_a_frame_renders_the_same_alone_as_in_a_moving_batch(
    bank_renderer: WarpRenderer, open_exp: np.ndarray
) -> None:
    """One path: a frame at the reference pose renders the same through the still-head path (alone) as inside a
    batch whose other frames move (the head mask confines the expression warp in both; when only the moving
    path masked it, the chest under a wide-open jaw differed by ~200 grey levels)."""
    state = bank_renderer.prepare(builtin_avatar(SIZE))
    pose = np.zeros((3, 9), np.float32)
    pose[1, :3], pose[2, 7:9] = [0.05, 0.1, 0.06], [20.0, -10.0]
    exp = np.stack([open_exp, open_exp, 0.5 * open_exp])
    bank_renderer.reset(state)
    batch = bank_renderer.render(state, exp, pose)  # frame 0 is the reference: it does not move
    alone = bank_renderer.render(state, exp[:1], pose[:1])[0]  # pose == reference: the still path
    np.testing.assert_array_equal(alone, bank_renderer.render(state, exp[:1], None)[0])
    diff = np.abs(batch[0].astype(np.int16) - alone.astype(np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.01, (diff.max(), diff.mean())  # float rounding only
    assert np.abs(batch[1].astype(np.int16) - alone.astype(np.int16)).mean() > 3.0  # the batch did move


@pytest.fixture(scope="module")
def round_and_spread(samples_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two open-mouth expressions of a real clip: the roundest and the most spread mouth (inner-lip width /
    height by the map) among its frames opened at least to the median."""
    exp = scipy.io.loadmat(str(samples_dir / "source" / "3dmm" / "Obama_clip1.mat"))["coeff"][:, 80:144]
    exp = exp.astype(np.float32)
    emap = ExpressionMap.load()
    w, mean = emap.weights.numpy(), emap.mean_shape.numpy()
    gap = exp @ (w[:, [67, 66, 65], 1] - w[:, [61, 62, 63], 1]).mean(1)
    width = mean[64, 0] - mean[60, 0] + exp @ (w[:, 64, 0] - w[:, 60, 0])
    open_ = np.flatnonzero(gap >= np.median(gap))
    shape = width[open_] / (gap[open_] - gap.min() + 0.05)
    return exp[open_[np.argmin(shape)]], exp[open_[np.argmax(shape)]]


def test_rounding_and_spreading_change_the_mouths_proportions(
    bank_renderer: WarpRenderer, round_and_spread: tuple[np.ndarray, np.ndarray]
) -> None:
    """"oo" narrows the opening, "ee" widens it: the inner-lip width / height ratio differs clearly, and the
    spread-minus-round width is at least the bare map's (the sideways lip motion is amplified like the opening)."""
    plain = WarpRenderer(size=SIZE, config=WarpConfig(lip_width_gain=1.0))

    def proportions(renderer: WarpRenderer) -> tuple[float, float]:
        state = renderer.prepare(builtin_avatar(SIZE))
        widths, ratios = [], []
        for frame in renderer.render(state, np.stack(round_and_spread)):
            lmk = detect_landmarks(frame)
            width = float(lmk[64, 0] - lmk[60, 0])
            height = float((lmk[[67, 66, 65], 1] - lmk[[61, 62, 63], 1]).mean())
            widths.append(width)
            ratios.append(width / max(height, 1.0))
        return widths[1] - widths[0], ratios[1] / ratios[0]

    spread_px, ratio = proportions(bank_renderer)
    plain_px, plain_ratio = proportions(plain)
    print(f"spread − round width {spread_px:.1f} px (map alone {plain_px:.1f}); width/height ratio spread / round "
          f"{ratio:.2f} (map alone {plain_ratio:.2f})")
    assert ratio > 1.15, ratio  # the spread mouth is relatively wider than the rounded one
    # The gain moves the lip corners by 1-2 px here, dlib's own step: the ratio between the two renderers flips
    # with a pixel of landmark noise, so only the width difference (never narrower than the map's) is asserted;
    # benchmarks/renderer.py scores the width amplitude against real speakers over whole clips. dlib's landmarks
    # are whole pixels, and the interior's look inside the corners moves its corner reading by one (interior_split
    # 0.5 → 0.8: 72/70 px vs the map's 70/69): one step of slack.
    assert spread_px >= plain_px - 1.0, (spread_px, plain_px)


def test_the_mouths_width_varies_as_much_as_a_real_speakers() -> None:
    """Rounding and spreading as large as the real speaker's: over Obama_clip1 driven by its own expression (the map
    held out on it, every 6th frame) the rendered inner-lip width 60-64 varies about as much as the real one (dlib
    on both, aligned on the stable points). The least-squares map under-predicts it (0.69×; lip_width_gain 1.3:
    0.83×); the gain chosen leave-one-clip-out (WarpConfig.lip_width_gain) brings it to about 1."""
    from benchmarks.renderer import SOURCE_OFFSET, aligned, clip_real, detect_all, inner_width

    exp, video, rows, _, l_real = clip_real("Obama_clip1", 6)
    renderer = WarpRenderer(size=SIZE, emap=ExpressionMap.load(heldout_clip="Obama_clip1"),
                            bank=MouthBank.load(exclude=("Obama",)))
    state = renderer.prepare(video[SOURCE_OFFSET], exp_ref=exp[0])
    rendered = np.concatenate([renderer.render(state, exp[rows[i:i + 16]]) for i in range(0, len(rows), 16)])
    l_rend, first = detect_all(rendered), detect_landmarks(state.image)
    ok = ~(np.isnan(l_real).any((1, 2)) | np.isnan(l_rend).any((1, 2)))
    amplitude = inner_width(aligned(l_rend[ok], first)).std() / inner_width(aligned(l_real[ok], first)).std()
    assert ok.sum() > 80 and 0.92 < amplitude < 1.2, (ok.sum(), amplitude)


def test_no_bright_fangs_at_the_mouth_corners_of_a_sample_photo(
    bank_renderer: WarpRenderer, samples_dir: Path, open_exp: np.ndarray,
    round_and_spread: tuple[np.ndarray, np.ndarray],
) -> None:
    """A sample video's first frame (a wide smile showing teeth) speaking: no teeth or interior pixels brighter
    than the photo's skin there appear outside the lips at the corners."""
    from benchmarks.renderer import corner_glare
    from engine.landmark_fit import read_video_rgb

    photo = read_video_rgb(samples_dir / "source" / "video" / "andrew_clip_1.mp4")[0]
    state = bank_renderer.prepare(photo)
    frames = bank_renderer.render(state, np.stack([open_exp, *round_and_spread, 0.5 * open_exp]))
    for frame in frames:
        assert corner_glare(frame, detect_landmarks(frame), state.image, state.landmarks) == 0


def closing_teeth(renderer: WarpRenderer, photo: np.ndarray, gap_weights: np.ndarray) -> tuple[int, np.ndarray]:
    """A photo's lips closed by a bilabial-sized drop of the gap: the teeth-like pixels (bright, unsaturated) inside
    the rendered outer-lip outline, and the rendered frame."""
    from skimage.draw import polygon

    state = renderer.prepare(photo)
    close = -0.08 * gap_weights / float(gap_weights @ gap_weights)
    shut = renderer.render(state, close[None].astype(np.float32))[0]
    lmk = detect_landmarks(shut)
    rr, cc = polygon(lmk[48:60, 1], lmk[48:60, 0], shut.shape[:2])
    px = shut[rr, cc].astype(np.float64)
    luma = px @ LUMA
    sat = (px.max(1) - px.min(1)) / np.maximum(px.max(1), 1.0)
    lip = np.median(luma)
    return int(((luma > lip + 30) & (sat < 0.2)).sum()), shut


def test_closed_lips_on_a_wide_smile_show_no_teeth(
    bank_renderer: WarpRenderer, samples_dir: Path, gap_weights: np.ndarray
) -> None:
    """andrew_clip_1's first frame (a wide smile, 18 px of teeth and cavity) with its lips closed: no teeth left
    between or above the closed lips (the spline dragged the rows above the upper lip into the teeth, and the seam
    between the lips sampled the opening: a jagged line of teeth fragments), and the lips do meet."""
    from engine.landmark_fit import read_video_rgb

    photo = read_video_rgb(samples_dir / "source" / "video" / "andrew_clip_1.mp4")[0]
    teeth, shut = closing_teeth(bank_renderer, photo, gap_weights)
    lmk = detect_landmarks(shut)
    # the lips meet: dlib reads 1-2 px on a closed mouth (its fit moves by a pixel with the neck and chest pixels
    # in its box, which the head mask changes), 6 px before the fix
    assert float((lmk[[67, 66, 65], 1] - lmk[[61, 62, 63], 1]).mean()) <= 2.5
    assert teeth <= 5, teeth


def test_closing_a_laugh_lifts_the_chin_only_so_far(bank_renderer: WarpRenderer, samples_dir: Path,
                                                    gap_weights: np.ndarray) -> None:
    """happyenglish_clip1's first frame (a laugh, inner-lip gap ~0.37 IOD) closed: the lips meet, but the chin and
    the jaw beside it rise at most ``jaw_lift_cap`` (lifted with the lips, the chin's shadow smeared into the neck)."""
    import torch

    from engine.landmark_fit import read_video_rgb

    photo = read_video_rgb(samples_dir / "style" / "video" / "happyenglish_clip1.mp4")[0]
    state = bank_renderer.prepare(photo)
    assert state.warp is not None
    close = torch.from_numpy(-0.08 * gap_weights / float(gap_weights @ gap_weights)).float()[None]
    tgt, _ = bank_renderer.core.target_local(state.warp, close)
    src = state.warp.src_local
    assert float((tgt[0, [67, 66, 65], 1] - tgt[0, [61, 62, 63], 1]).abs().max()) < 1e-4  # the lips meet
    jaw = [6, 7, 8, 9, 10]
    own = -(close @ bank_renderer.core.weights).reshape(68, 2)[jaw, 1]  # the expression's own lift of the jaw
    lift = src[jaw, 1] - tgt[0, jaw, 1]
    assert float((lift - own).max()) <= bank_renderer.core.config.jaw_lift_cap + 1e-4, (lift, own)
    assert float(src[57, 1] - tgt[0, 57, 1]) > 0.3  # while the lower lip rose by most of the gap


def test_a_reframed_photos_real_frames_are_scored_through_the_same_crop(samples_dir: Path) -> None:
    """feifeili_clip2_short's first frame has its face at the right edge: the renderer re-frames it, so the benchmark
    compares its real frames through the same crop (they were compared uncropped, ~9 px and 4 % off)."""
    from benchmarks.renderer import crop_like
    from engine.avatar import crop_face
    from engine.landmark_fit import read_video_rgb

    video = read_video_rgb(samples_dir / "source" / "video" / "feifeili_clip2_short.mp4")
    first = video[2]
    state = WarpRenderer(size=SIZE, config=WarpConfig(interior="painted")).prepare(first)
    assert not np.array_equal(state.image, first)  # re-framed
    crop = crop_face(first, SIZE, landmarks=detect_landmarks(first))
    np.testing.assert_array_equal(crop_like(first, crop), state.image)
    later = crop_like(video[40], crop)
    assert later.shape == state.image.shape and np.abs(later.astype(np.int16) - state.image).mean() > 3


def test_a_laughing_photos_upper_teeth_open_whole(bank_renderer: WarpRenderer, samples_dir: Path,
                                                  gap_weights: np.ndarray) -> None:
    """happyenglish_clip1's first frame (a laugh: incisors ~0.17 IOD long, past the model's default 0.095) opening
    further: its upper teeth ride whole with the upper lip (split at the default length, a dark crack ran through
    them)."""
    from engine.landmark_fit import read_video_rgb

    photo = read_video_rgb(samples_dir / "style" / "video" / "happyenglish_clip1.mp4")[0]
    state = bank_renderer.prepare(photo)
    assert state.warp is not None and state.warp.upper_teeth > 0.13, state.warp.upper_teeth
    wider = (0.05 * gap_weights / float(gap_weights @ gap_weights)).astype(np.float32)  # to the gap's cap
    out = bank_renderer.render(state, wider[None])[0]
    lmk = detect_landmarks(out)
    x0, x1 = int(lmk[61, 0]) + 1, int(lmk[63, 0])
    y0 = int(lmk[61:64, 1].max()) + 2
    y1 = y0 + int(0.7 * state.warp.upper_teeth * state.warp.iod_px)
    rows = np.median(out[y0:y1, x0:x1].astype(np.float64) @ LUMA, axis=1)  # (rows,) across the front teeth
    teeth = float(state.warp.teeth_rgb.numpy() @ LUMA)
    assert rows.min() > 0.7 * teeth, (rows.round(), teeth)


def test_the_chin_follows_its_target_as_the_jaw_opens(samples_dir: Path, open_exp: np.ndarray) -> None:
    """A green marker painted at the chin (landmark 8) lands where the target landmarks put it: the chin sits in
    the photo's bottom edge band, whose head-motion fade used to hold its expression motion at 0.3-0.7 (a jaw that
    barely drops; dlib then read the opening thinner). Still head and moving batch alike."""
    import torch

    from engine.landmark_fit import read_video_rgb

    video = samples_dir / "source" / "video" / "KristiNoem.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    r = WarpRenderer(size=SIZE, config=WarpConfig(interior="painted"))
    photo = read_video_rgb(video)[2]
    lm = detect_landmarks(photo)
    x, y = np.round(lm[8]).astype(int)
    marked = photo.copy()
    marked[y - 1 : y + 2, x - 1 : x + 2] = (0, 255, 0)
    st = r.prepare(marked)
    exp = np.stack([np.zeros(64, np.float32), open_exp]).astype(np.float32)
    with torch.no_grad():
        tgt, _ = r.core.target_local(st.warp, torch.from_numpy(exp))
    want = (tgt[1, 8] - tgt[0, 8]) @ st.warp.frame_a.T  # the chin's target motion (px) between the two frames
    assert float(want[1]) > 2.0  # the opening drops the chin a few pixels

    def chin(frames: np.ndarray) -> np.ndarray:
        f = frames.astype(np.float32)
        w = np.clip(f[..., 1] - np.maximum(f[..., 0], f[..., 2]) - 40.0, 0, None)  # only the marker is this green
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        return np.stack([(w * xx).sum((1, 2)) / w.sum((1, 2)), (w * yy).sum((1, 2)) / w.sum((1, 2))], 1)

    for pose in (None, np.zeros((2, 9), np.float32)):
        got = np.diff(chin(r.render(st, exp, pose)), axis=0)[0]
        assert abs(got[1] - float(want[1])) < 0.2 * float(want[1]) + 0.3, (pose is None, got, want)


@pytest.fixture(scope="module")
def far_travel(samples_dir: Path) -> tuple[WarpRenderer, WarpAvatarState, np.ndarray, np.ndarray]:
    """feifeili_clip2_short: her face sits 14 px from the right edge of its crop and her head travels ~55 px left
    in the clip. Renderer with the expression map held out for that clip; the clip's expression and pose."""
    from benchmarks.renderer import SOURCE_OFFSET
    from engine.landmark_fit import read_video_rgb
    from models.clips import load_pose

    name = "feifeili_clip2_short"
    exp = scipy.io.loadmat(str(samples_dir / "source" / "3dmm" / f"{name}.mat"))["coeff"][:, 80:144]
    pose = load_pose(samples_dir / "source" / "3dmm" / f"{name}.mat")
    rnd = WarpRenderer(size=SIZE, emap=ExpressionMap.load(heldout_clip=name), config=WarpConfig(interior="painted"))
    first = read_video_rgb(samples_dir / "source" / "video" / f"{name}.mp4")[SOURCE_OFFSET]
    state = rnd.prepare(first, exp_ref=exp[0].astype(np.float32))
    return rnd, state, exp.astype(np.float32), pose


def test_a_real_pose_sequence_places_the_mouth_where_the_real_one_is(far_travel: tuple) -> None:
    """Driven by the clip's own pose (held-out expression map), the rendered mouth centre follows the real one
    sideways (before: the sideways travel was capped at the photo's background beside the face / 1.5, 24 px of
    the 55 asked: 23 px mean error; the vertical part is the pose map's)."""
    from benchmarks.renderer import clip_real, detect_all

    rnd, state, exp, pose = far_travel
    _, _, rows, _, l_real = clip_real("feifeili_clip2_short", 12)
    rnd.reset(state)
    out = np.concatenate([rnd.render(state, exp[rows[i : i + 16]], pose[rows[i : i + 16]])
                          for i in range(0, len(rows), 16)])
    l_rend = detect_all(out)
    ok = ~(np.isnan(l_real).any((1, 2)) | np.isnan(l_rend).any((1, 2)))
    err = l_rend[ok, 48:68].mean(1) - l_real[ok, 48:68].mean(1)
    travel = np.abs(l_real[ok, 48:68].mean(1)[:, 0] - l_real[0, 48:68].mean(0)[0])
    assert ok.sum() >= 0.8 * len(rows) and travel.max() > 40.0  # the real head does travel far
    assert np.abs(err[:, 0]).mean() < 4.0, np.abs(err[:, 0]).mean()  # sideways: was ~22 px
    assert np.linalg.norm(err, axis=1).mean() < 12.0, np.linalg.norm(err, axis=1).mean()  # was 23 px


def test_a_head_leaving_an_edge_uncovers_the_photos_own_background(far_travel: tuple) -> None:
    """The head goes where the pose asks even when it moves away from the photo's edge by much more than the
    background there; the band it uncovers is that background stretched (no pixels from beyond the photo: its
    last column, painted green, stays a few pixels wide instead of streaking across the band), and the
    background away from the head (the left corners) stays still."""
    rnd, state, exp, pose = far_travel
    photo = state.image.copy()
    marked = photo.copy()
    marked[:, -1] = (0, 255, 0)
    moved_state = rnd.prepare(marked, exp_ref=exp[0])
    rnd.reset(moved_state)
    out = rnd.render(moved_state, exp[[0, 0]], pose[[0, 92]])[1]  # row 92: ~55 px left of row 0
    lmk0, lmk1 = detect_landmarks(photo), detect_landmarks(out)
    moved = lmk1[48:68].mean(0) - lmk0[48:68].mean(0)
    assert moved[0] < -45.0, moved  # before: 21 px (capped)
    green = (out[40:200, :, 1].astype(np.int16) - out[40:200, :, 0] > 150).sum(1)
    assert green.mean() <= 8.0, green.mean()  # beyond-the-photo sampling (border replication) streaks ~40 px
    diff = np.abs(out.astype(np.int16) - marked.astype(np.int16)).mean(-1)
    assert diff[:24, :24].mean() < 1.5 and diff[-24:, :24].mean() < 1.5, (diff[:24, :24].mean(),
                                                                          diff[-24:, :24].mean())


def test_a_far_travelling_head_takes_its_hair_and_leaves_no_streaks(far_travel: tuple) -> None:
    """Her hair reaches the photo's right edge and her head travels ~55 px left: the hair goes with the head and the
    band it uncovers shows the photo's background (the matte's plate), not her hair stretched into horizontal
    streaks. Streak anisotropy of that band (benchmarks.renderer.band_streaks), rendered / real, on these frames:
    1.44 with the ellipse alone (WarpConfig.head_matte=False), ~0.95 with the matte."""
    from benchmarks.renderer import clip_real, far_band_streaks

    rnd, state, exp, pose = far_travel
    _, _, rows, real, l_real = clip_real("feifeili_clip2_short", 12)
    assert state.warp.matte is not None
    rnd.reset(state)
    out = np.concatenate([rnd.render(state, exp[rows[i : i + 16]], pose[rows[i : i + 16]])
                          for i in range(0, len(rows), 16)])
    band = far_band_streaks(real, out, l_real)
    assert band["band_frames"] >= 10, band
    assert band["band_streak_ratio"] < 1.15, band


def test_an_opening_mouth_is_no_flat_pale_lens(samples_dir: Path) -> None:
    """Issue 17's flat lens, on KristiNoem's first video frame speaking the held-out sentence (as on
    benchmarks/results/renderer_photos.png): the widest opening is reached after a rounded shape, whose small
    interior (mostly lip rim, pale) the stream's hold kept — 0.094 IOD from the target, the nearest exemplar 0.010 —
    and an open mouth showed one light featureless tone, brighter than the skin. The hold now fades when
    the opening outgrows the shown exemplar's (``WarpConfig.interior_hold_stretch``): the open mouth shows teeth
    over a dark cavity — its core (the inner-lip outline less 2 px) varies as much as most real open mouths do."""
    from benchmarks.renderer import LENS_STD, core_stats, heldout_sentence, inner_mask, skin_luma, speech_frames
    from engine.landmark_fit import read_video_rgb

    video = samples_dir / "source" / "video" / "KristiNoem.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    labels, exp, rest = heldout_sentence(150, 30)
    wide = speech_frames(exp, labels)["open"]
    renderer = WarpRenderer(size=SIZE)
    state = renderer.prepare(read_video_rgb(video)[0])
    renderer.set_rest(state, rest)
    frame = renderer.render(state, exp[: wide + 1])[-1]  # the stream up to the widest opening, in order
    stats = core_stats(frame, inner_mask(detect_landmarks(frame), SIZE), skin_luma(state.image, state.landmarks))
    assert stats["core_std"] > LENS_STD, stats  # before: 20.8 (and 1.31 × the skin: a lens); now 26.7
    assert stats["lens"] == 0.0


@pytest.mark.parametrize("ramp", [True, False])
def test_a_travelling_head_shears_its_neck_evenly_not_its_chin(samples_dir: Path, ramp: bool) -> None:
    """Issue 17, "a head that lives": KristiNoem's chin sits ~30 px above the photo's bottom. Her head moved 0.3 IOD
    (26 px, an idle head's far reach) sideways either way: the bottom edge's old level hold (``neck_ramp=False``)
    held the chin at 0.58 of its travel and concentrated the shear under the jaw into a diagonal band (steepest
    0.67 px/px). The neck ramp lets the chin lag only as a real one does (1 - neck_lift / neck_length = 0.78; real
    chins travel ~0.75 of the nose) and spreads the shear over lower face and neck (steepest 0.34). Measured on the
    warp field itself (``benchmarks.renderer.neck_field``); the old behaviour is asserted too, so that the test
    tells the two apart."""
    from benchmarks.renderer import neck_field
    from engine.avatar import load_image

    photo = samples_dir / "source" / "image" / "KristiNoem.png"
    if not photo.is_file():
        pytest.skip(f"{photo} not found")
    rnd = WarpRenderer(size=SIZE, config=WarpConfig(interior="painted", neck_ramp=ramp))
    state = rnd.prepare(load_image(photo))
    shifts = torch.tensor([[0.3, 0.0], [-0.3, 0.0]])  # IOD, image axes: a pure sideways travel either way

    def sideways(pose: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.ones(len(pose)), torch.eye(2).expand(len(pose), 2, 2), shifts[: len(pose)]

    rnd.core.head_motion = sideways  # type: ignore[method-assign]
    exp = np.tile(state.warp.exp_ref.numpy(), (2, 1))
    shear, _, chin = neck_field(rnd.core, state.warp, exp, np.ones((2, 9), np.float32), np.zeros(9, np.float32))
    if ramp:
        assert chin.min() > 0.72 and shear.max() < 0.45, (chin, shear)
    else:
        assert chin.max() < 0.65 and shear.min() > 0.6, (chin, shear)
