"""Readers for 3DMM style clips and head-pose sequences, and the style encoder's fixed-length padding.

Files come from users (uploaded style clips), so every reader validates shape and values and raises
:class:`ClipError` with the file name and the reason instead of letting a NaN or a wrong column range
reach the network.

Coefficient layout of the 257-dim per-frame ``coeff`` matrix (Deep3DFaceRecon): identity 0:80 |
expression 80:144 | texture 144:224 | angles 224:227 | lighting 227:254 | translation 254:257.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

EXP_DIM = 64
COEFF_DIM = 257
EXP_SLICE = slice(80, 144)
ANGLE_SLICE = slice(224, 227)
TRANSLATION_SLICE = slice(254, 257)
POSE_DIM = 9  # 3 angles + 3 translation + 3 crop params (scale, tx, ty)
STYLE_CLIP_LENGTH = 256  # official style_max_len


class ClipError(ValueError):
    """A style-clip or pose file is missing, unreadable, or has the wrong shape or values."""


def _read_mat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat  # local import: scipy is only needed for .mat files

    try:
        return loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise ClipError(f"{path}: unsupported .mat version ({exc}); save as MATLAB v5/v7") from exc
    except Exception as exc:
        raise ClipError(f"{path}: cannot read .mat file ({type(exc).__name__}: {exc})") from exc


def _read_array(path: Path) -> np.ndarray:
    """Read a 2-D numeric array from .npy or whitespace-separated .txt."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with warnings.catch_warnings():  # a file of only comments/blank lines: reported below as no data
                warnings.simplefilter("ignore", UserWarning)
                arr = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except Exception as exc:
        raise ClipError(f"{path}: cannot read {suffix} file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ClipError(f"{path}: expected a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
    if arr.size == 0:
        raise ClipError(f"{path}: file holds no data")
    return arr


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise ClipError(f"{p}: file not found")
    if not p.is_file():
        raise ClipError(f"{p}: not a regular file")
    if not os.access(p, os.R_OK):
        raise ClipError(f"{p}: file is not readable")
    if p.stat().st_size == 0:
        raise ClipError(f"{p}: file is empty")
    return p


def _mat_entry(mat: dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ClipError(f"{path}: no {key!r} entry in .mat file (found: {keys})")
    arr = np.asarray(mat[key])
    if arr.dtype.kind not in "fiu":
        raise ClipError(f"{path}: {key!r} is not numeric (dtype {arr.dtype})")
    return arr


def _check_values(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.shape[0] == 0:
        raise ClipError(f"{path}: {what} has no frames")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))
        raise ClipError(
            f"{path}: {what} contains NaN/inf ({len(bad)} values, first at frame {int(bad[0, 0])})"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _coeff_matrix(path: Path, arr: np.ndarray, key: str) -> np.ndarray:
    if arr.ndim != 2 or arr.shape[1] != COEFF_DIM:
        raise ClipError(f"{path}: {key!r} must have shape (frames, {COEFF_DIM}), got {arr.shape}")
    return arr


def load_style_clip(path: str | os.PathLike[str]) -> np.ndarray:
    """Expression coefficients ``(T, 64)`` float32 of a style clip.

    Accepts ``.mat`` (``coeff[:, 80:144]``, as the official inference), and ``.npy`` / ``.txt`` holding
    either the expression ``(T, 64)`` directly or the full coefficients ``(T, 257)``.
    """
    p = _check_path(path)
    suffix = p.suffix.lower()
    if suffix == ".mat":
        coeff = _coeff_matrix(p, _mat_entry(_read_mat(p), "coeff", p), "coeff")
        exp = coeff[:, EXP_SLICE]
    elif suffix in (".npy", ".txt"):
        arr = _read_array(p)
        if arr.ndim != 2 or arr.shape[1] not in (EXP_DIM, COEFF_DIM):
            raise ClipError(
                f"{p}: expected shape (frames, {EXP_DIM}) expression or (frames, {COEFF_DIM}) coefficients,"
                f" got {arr.shape}"
            )
        exp = arr[:, EXP_SLICE] if arr.shape[1] == COEFF_DIM else arr
    else:
        raise ClipError(f"{p}: unsupported style clip type {suffix!r} (use .mat, .npy or .txt)")
    return _check_values(exp, p, "style clip")


def load_pose(path: str | os.PathLike[str]) -> np.ndarray:
    """Head pose ``(T, 9)`` float32: angles (3), translation (3), crop scale/tx/ty (3).

    ``.mat``: ``coeff[:, 224:227]``, ``coeff[:, 254:257]`` and ``transform_params[:, -3:]`` as in the
    official renderer; ``.npy`` / ``.txt``: a ready ``(T, 9)`` array.
    """
    p = _check_path(path)
    suffix = p.suffix.lower()
    if suffix == ".mat":
        mat = _read_mat(p)
        coeff = _coeff_matrix(p, _mat_entry(mat, "coeff", p), "coeff")
        params = _mat_entry(mat, "transform_params", p)
        if params.ndim != 2 or params.shape[1] < 3:
            raise ClipError(f"{p}: 'transform_params' must have shape (frames, 5), got {params.shape}")
        if params.shape[0] != coeff.shape[0]:
            raise ClipError(
                f"{p}: 'coeff' has {coeff.shape[0]} frames but 'transform_params' has {params.shape[0]}"
            )
        pose = np.concatenate([coeff[:, ANGLE_SLICE], coeff[:, TRANSLATION_SLICE], params[:, -3:]], axis=1)
    elif suffix in (".npy", ".txt"):
        pose = _read_array(p)
        if pose.ndim != 2 or pose.shape[1] != POSE_DIM:
            raise ClipError(f"{p}: expected pose shape (frames, {POSE_DIM}), got {pose.shape}")
    else:
        raise ClipError(f"{p}: unsupported pose file type {suffix!r} (use .mat, .npy or .txt)")
    return _check_values(pose, p, "pose")


def pad_style_clip(exp: np.ndarray, length: int = STYLE_CLIP_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Fit an expression clip ``(T, 64)`` to the style encoder's fixed input ``(length, 64)``.

    Returns ``(clip, pad_mask)`` with ``pad_mask`` True on padded frames. Clips of at least ``length``
    frames are cut to their first ``length`` frames (official inference starts at frame 0) with nothing
    masked; shorter clips are zero-padded at the end and the padded tail masked.
    """
    arr = np.asarray(exp)
    if arr.ndim != 2 or arr.shape[1] != EXP_DIM:
        raise ClipError(f"style clip must have shape (frames, {EXP_DIM}), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ClipError("style clip has no frames")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if not np.isfinite(arr).all():
        raise ClipError("style clip contains NaN/inf")
    n = min(arr.shape[0], length)
    clip = np.zeros((length, EXP_DIM), np.float32)
    clip[:n] = arr[:n]
    mask = np.zeros(length, bool)
    mask[n:] = True
    return clip, mask


def load_padded_style_clip(
    path: str | os.PathLike[str], length: int = STYLE_CLIP_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """``pad_style_clip(load_style_clip(path), length)``: the style encoder's input for one file."""
    return pad_style_clip(load_style_clip(path), length)
