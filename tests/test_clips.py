"""Style-clip / pose readers on the official sample files and on generated broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from models.clips import (
    ClipError,
    load_padded_style_clip,
    load_pose,
    load_style_clip,
    pad_style_clip,
)


def _coeff(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(frames, 257)).astype(np.float32), rng.normal(size=(frames, 5)).astype(np.float32)


# ---------------------------------------------------------------------------------------- official samples
@pytest.mark.parametrize("name", ["angryice_clip1.mat", "furious_talk1_clip2.mat", "nice_clip1.mat"])
def test_style_clip_from_official_mat(samples_dir: Path, name: str) -> None:
    path = samples_dir / "style" / "3dmm" / name
    raw = loadmat(str(path))["coeff"]
    exp = load_style_clip(path)
    assert exp.dtype == np.float32 and exp.shape == (raw.shape[0], 64)
    np.testing.assert_array_equal(exp, raw[:, 80:144])

    clip, mask = pad_style_clip(exp)
    assert clip.shape == (256, 64) and clip.dtype == np.float32
    assert mask.shape == (256,) and mask.dtype == bool
    n = min(raw.shape[0], 256)
    np.testing.assert_array_equal(clip[:n], raw[:n, 80:144])
    assert not mask[:n].any() and mask[n:].all()
    assert not clip[n:].any()


def test_long_clip_is_cut_to_first_256_frames(samples_dir: Path) -> None:
    path = samples_dir / "style" / "3dmm" / "furious_talk1_clip2.mat"  # 360 frames
    raw = loadmat(str(path))["coeff"][:, 80:144]
    assert raw.shape[0] > 256
    clip, mask = load_padded_style_clip(path)
    np.testing.assert_array_equal(clip, raw[:256])
    assert not mask.any()


def test_short_clip_is_padded_and_masked(samples_dir: Path) -> None:
    clip, mask = load_padded_style_clip(samples_dir / "style" / "3dmm" / "angryice_clip1.mat")  # 120 frames
    assert int((~mask).sum()) == 120 and mask[120:].all()
    assert np.abs(clip[:120]).sum() > 0 and not clip[120:].any()


def test_pose_from_official_mat(samples_dir: Path) -> None:
    path = samples_dir / "source" / "3dmm" / "feifeili_clip3.mat"
    mat = loadmat(str(path))
    pose = load_pose(path)
    assert pose.dtype == np.float32 and pose.shape == (mat["coeff"].shape[0], 9)
    np.testing.assert_array_equal(pose[:, 0:3], mat["coeff"][:, 224:227])
    np.testing.assert_array_equal(pose[:, 3:6], mat["coeff"][:, 254:257])
    np.testing.assert_array_equal(pose[:, 6:9], mat["transform_params"][:, 2:5])


# ------------------------------------------------------------------------------------- other valid formats
def test_npy_and_txt_formats(tmp_path: Path) -> None:
    coeff, params = _coeff(30)
    np.save(tmp_path / "full.npy", coeff)
    np.save(tmp_path / "exp.npy", coeff[:, 80:144])
    np.savetxt(tmp_path / "full.txt", coeff)
    np.savetxt(tmp_path / "exp.txt", coeff[:, 80:144])
    for name in ("full.npy", "exp.npy"):
        np.testing.assert_array_equal(load_style_clip(tmp_path / name), coeff[:, 80:144])
    for name in ("full.txt", "exp.txt"):
        np.testing.assert_allclose(load_style_clip(tmp_path / name), coeff[:, 80:144], rtol=1e-6)
    np.savetxt(tmp_path / "one.txt", coeff[:1, 80:144])  # a single row still reads as (1, 64)
    assert load_style_clip(tmp_path / "one.txt").shape == (1, 64)
    savemat(tmp_path / "own.mat", {"coeff": coeff, "transform_params": params})
    np.testing.assert_array_equal(load_style_clip(str(tmp_path / "own.mat")), coeff[:, 80:144])
    pose = np.concatenate([coeff[:, 224:227], coeff[:, 254:257], params[:, 2:]], axis=1)
    np.testing.assert_array_equal(load_pose(tmp_path / "own.mat"), pose)
    np.save(tmp_path / "pose.npy", pose)
    np.testing.assert_array_equal(load_pose(tmp_path / "pose.npy"), pose)


def test_pad_exactly_256_and_custom_length() -> None:
    exp = np.ones((256, 64), np.float32)
    clip, mask = pad_style_clip(exp)
    assert not mask.any() and clip.sum() == 256 * 64
    clip, mask = pad_style_clip(exp[:3], length=5)
    assert clip.shape == (5, 64) and mask.tolist() == [False] * 3 + [True] * 2


# ---------------------------------------------------------------------------------------------- bad files
def _bad(tmp_path: Path, name: str, writer) -> Path:
    path = tmp_path / name
    writer(path)
    return path


BAD_STYLE_CASES = {
    "wrong columns npy": ("a.npy", lambda p: np.save(p, np.zeros((10, 63), np.float32)), "shape"),
    "1-D npy": ("b.npy", lambda p: np.save(p, np.zeros(64, np.float32)), "shape"),
    "nan npy": ("c.npy", lambda p: np.save(p, np.full((4, 64), np.nan, np.float32)), "NaN"),
    "inf txt": ("d.txt", lambda p: p.write_text(" ".join(["inf"] + ["0"] * 63) + "\n"), "NaN/inf"),
    "empty txt": ("e.txt", lambda p: p.write_text(""), "empty"),
    "comments-only txt": ("f.txt", lambda p: p.write_text("# nothing\n"), "no data"),
    "empty npy": ("g.npy", lambda p: p.write_bytes(b""), "empty"),
    "zero frames npy": ("h.npy", lambda p: np.save(p, np.zeros((0, 64), np.float32)), "no data"),
    "garbage npy": ("i.npy", lambda p: p.write_bytes(b"not numpy at all"), "cannot read"),
    "text txt": ("j.txt", lambda p: p.write_text("a b c\n"), "cannot read"),
    "pickled object npy": ("k.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "cannot read"),
    "garbage mat": ("l.mat", lambda p: p.write_bytes(b"MATLAB garbage" * 20), "cannot read"),
    "empty mat": ("m.mat", lambda p: p.write_bytes(b""), "empty"),
    "missing coeff": ("n.mat", lambda p: savemat(p, {"other": np.zeros((3, 257))}), "'coeff'"),
    "wrong coeff width": ("o.mat", lambda p: savemat(p, {"coeff": np.zeros((3, 144))}), "257"),
    "nan mat": ("q.mat", lambda p: savemat(p, {"coeff": np.full((3, 257), np.nan)}), "NaN"),
    "unknown extension": ("r.csv", lambda p: p.write_text("1,2\n"), "unsupported"),
}


@pytest.mark.parametrize("case", list(BAD_STYLE_CASES))
def test_bad_style_files_raise_clip_error(tmp_path: Path, case: str) -> None:
    name, writer, needle = BAD_STYLE_CASES[case]
    path = _bad(tmp_path, name, writer)
    with pytest.raises(ClipError, match=needle) as err:
        load_style_clip(path)
    assert name in str(err.value)  # the message names the file


def test_missing_and_non_file_paths(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match="not found"):
        load_style_clip(tmp_path / "nope.mat")
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(ClipError, match="not a regular file"):
        load_style_clip(tmp_path / "dir.npy")
    with pytest.raises(ClipError, match="not found"):
        load_pose(tmp_path / "nope.mat")


def test_bad_pose_files(tmp_path: Path) -> None:
    coeff, params = _coeff(6)
    cases = {
        "no_params.mat": ({"coeff": coeff}, "'transform_params'"),
        "short_params.mat": ({"coeff": coeff, "transform_params": params[:4]}, "frames"),
        "narrow_params.mat": ({"coeff": coeff, "transform_params": params[:, :2]}, "transform_params"),
    }
    for name, (content, needle) in cases.items():
        savemat(tmp_path / name, content)
        with pytest.raises(ClipError, match=needle):
            load_pose(tmp_path / name)
    np.save(tmp_path / "pose8.npy", np.zeros((5, 8), np.float32))
    with pytest.raises(ClipError, match="pose shape"):
        load_pose(tmp_path / "pose8.npy")
    bad = coeff.copy()
    bad[2, 255] = np.inf
    savemat(tmp_path / "inf.mat", {"coeff": bad, "transform_params": params})
    with pytest.raises(ClipError, match="frame 2"):
        load_pose(tmp_path / "inf.mat")


def test_pad_rejects_bad_arrays() -> None:
    with pytest.raises(ClipError, match="no frames"):
        pad_style_clip(np.zeros((0, 64), np.float32))
    with pytest.raises(ClipError, match="shape"):
        pad_style_clip(np.zeros((10, 257), np.float32))
    with pytest.raises(ClipError, match="NaN"):
        pad_style_clip(np.full((2, 64), np.nan, np.float32))
    assert issubclass(ClipError, ValueError)
