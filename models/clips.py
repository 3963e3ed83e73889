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
import zlib
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
STYLE_CLIP_SUFFIXES = (".mat", ".npy", ".txt")  # the files load_style_clip reads
# The official split of the 64 expression coefficients into lower face (mouth, jaw) and upper face: the decoder
# has one head per part. Here, not in models.styletalk, so that data code and the CLIs' --help need no torch.
LOWER_FACE3D_INDICES: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 14)
UPPER_FACE3D_INDICES: tuple[int, ...] = (6, 8, *range(15, 64))


class ClipError(ValueError):
    """A style-clip or pose file is missing, unreadable, or has the wrong shape or values."""


# Bounds on what a .mat file may decode to, checked from its element headers *before* scipy decodes it: a
# compressed element is a zlib stream, so an 800 KB upload can otherwise inflate to gigabytes.
MAX_MAT_DECODED_BYTES = 64 << 20  # all variables together; a 257-column float64 clip of 30 000 frames is 62 MB
MAX_CLIP_FRAMES = 30_000  # 16 minutes at 30 fps; the style encoder reads the first 256
MAX_MAT_VARIABLES = 64
_MAT_HEADER_BYTES = 128
_MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 5, 6, 14, 15
_MAT_PEEK_BYTES = 256  # enough decompressed bytes for a matrix's tag, flags and dimensions


def check_mat_size(path: Path) -> None:
    """Refuse a MATLAB v5 file whose variables would decode to more than :data:`MAX_MAT_DECODED_BYTES` or hold
    more than :data:`MAX_CLIP_FRAMES` rows, reading only the element headers (and the first 256 decompressed
    bytes of each compressed element): the cost is independent of what the file would inflate to.

    Files that are not MATLAB v5 (v4, v7.3/HDF5) are left to scipy, which reads v4 uncompressed (bounded by the
    file size) and refuses v7.3.
    """
    data = path.read_bytes()
    if len(data) < _MAT_HEADER_BYTES or data[126:128] not in (b"IM", b"MI"):
        return
    order = "<" if data[126:128] == b"IM" else ">"
    total = 0
    offset = _MAT_HEADER_BYTES
    variables = 0
    while offset + 8 <= len(data):
        kind, nbytes = np.frombuffer(data, f"{order}u4", 2, offset)
        kind, nbytes = int(kind), int(nbytes)
        if kind >> 16:  # small data element: 4 bytes of data in the tag itself
            offset += 8
            continue
        body = data[offset + 8 : offset + 8 + nbytes]
        if kind == _MI_COMPRESSED:
            try:
                head = zlib.decompressobj().decompress(body, _MAT_PEEK_BYTES)
            except zlib.error as exc:
                raise ClipError(f"{path}: corrupt compressed .mat element ({exc})") from None
            decoded, rows = _matrix_extent(head, order, path)
        elif kind == _MI_MATRIX:
            decoded, rows = _matrix_extent(data[offset : offset + _MAT_PEEK_BYTES], order, path)
        else:
            decoded, rows = nbytes, 0
        total += decoded
        variables += 1
        if total > MAX_MAT_DECODED_BYTES:
            raise ClipError(
                f"{path}: .mat variables decompress to more than {MAX_MAT_DECODED_BYTES >> 20} MiB "
                f"({total >> 20} MiB declared so far)"
            )
        if rows > MAX_CLIP_FRAMES:
            raise ClipError(f"{path}: a .mat variable has {rows} frames (rows), limit {MAX_CLIP_FRAMES}")
        if variables > MAX_MAT_VARIABLES:
            raise ClipError(f"{path}: more than {MAX_MAT_VARIABLES} variables in the .mat file")
        offset += 8 + nbytes + (-nbytes % 8 if kind != _MI_COMPRESSED else 0)


def _matrix_extent(head: bytes, order: str, path: Path) -> tuple[int, int]:
    """(decoded bytes, rows) of an miMATRIX element from its first bytes: the larger of the size its tag
    declares and 8 bytes per element of its dimensions (scipy allocates by the dimensions)."""
    if len(head) < 8:
        raise ClipError(f"{path}: truncated .mat element")
    kind, nbytes = (int(v) for v in np.frombuffer(head, f"{order}u4", 2, 0))
    if kind != _MI_MATRIX:
        return nbytes, 0
    if nbytes == 0:  # an empty matrix
        return 0, 0
    # array flags sub-element (8-byte tag + 8 bytes), then the dimensions sub-element
    dims_at = 8 + 16
    if len(head) < dims_at + 8:
        raise ClipError(f"{path}: truncated .mat matrix header")
    dkind, dbytes = (int(v) for v in np.frombuffer(head, f"{order}u4", 2, dims_at))
    if dkind >> 16:  # small element: one or two int32 dims packed in the tag
        count, start = (dkind >> 16) // 4, dims_at + 4
    else:
        count, start = dbytes // 4, dims_at + 8
    if not 1 <= count <= 8 or start + 4 * count > len(head):
        raise ClipError(f"{path}: unreadable .mat matrix dimensions")
    dims = [int(v) for v in np.frombuffer(head, f"{order}i4", count, start)]
    if min(dims) < 0:
        raise ClipError(f"{path}: negative .mat matrix dimensions {dims}")
    elements = 1
    for d in dims:
        elements *= d
    return max(nbytes, 8 * elements), dims[0]


def _read_mat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat  # local import: scipy is only needed for .mat files

    check_mat_size(path)
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
