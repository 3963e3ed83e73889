"""Reader for the CMU Sphinx acoustic model that ships inside the ``pocketsphinx`` wheel (``en-us`` PTM model).

Why read the files ourselves instead of asking the pocketsphinx decoder: its Python API gives only the 1-best
phone path, while the streaming recognizer here needs per-frame *acoustic scores* to compute phone posteriors
with a bounded lookahead (see :mod:`engine.recognizer.phone_loop`). The model is a phonetically-tied mixture
(PTM) model: one 128-Gaussian codebook per context-independent (CI) phone and feature stream, and per-senone
mixture weights. Only the 126 CI senones (42 phones x 3 states) are needed for phone-loop decoding.

File formats (all little-endian as shipped; a big-endian file is rejected with a clear error):
- ``mdef``: binary model definition ("BMDF"): CI phone names, phone -> senone-sequence and transition matrix.
- ``means`` / ``variances``: Sphinx-3 "s3" binary arrays ``[n_codebook][n_stream][n_density][veclen]``.
- ``sendump``: 8-bit quantised mixture weights ``[n_stream][n_density][n_senone]``, ``-log`` in units of
  ``1024 * ln(1.0001)`` nats.
- ``transition_matrices``: s3 array ``[n_tmat][n_state][n_state + 1]`` (normalised per row here).
- ``feat.params``: front-end settings (filter bank, lifter, feature type...).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.timing import SAMPLE_RATE

# One unit of Sphinx's scaled integer log (log base 1.0001, shifted right by 10 bits) in nats.
SENSCR_UNIT = 1024.0 * float(np.log(1.0001))
LOGMATH_UNIT = float(np.log(1.0001))  # unshifted logmath unit (language model scores)
VAR_FLOOR = 1e-4  # Sphinx's default -varfloor


class ModelFormatError(ValueError):
    """An acoustic model file is missing, truncated or in an unsupported layout."""


def default_model_dir() -> Path:
    """The ``en-us`` model directory inside the installed pocketsphinx wheel."""
    try:
        import pocketsphinx
    except ImportError as exc:  # pragma: no cover - pocketsphinx is a hard dependency
        raise ModelFormatError("pocketsphinx is not installed; it ships the default acoustic model") from exc
    return Path(pocketsphinx.__file__).resolve().parent / "model" / "en-us"


@dataclass(frozen=True)
class FrontEndParams:
    """The subset of ``feat.params`` the front end implements (others must have their default value)."""

    sample_rate: int = SAMPLE_RATE
    frame_rate: int = 100
    window_length: float = 0.025625
    nfft: int = 512
    nfilt: int = 25
    lowerf: float = 130.0
    upperf: float = 6800.0
    ncep: int = 13
    lifter: int = 22
    alpha: float = 0.97
    remove_noise: bool = True
    feat: str = "1s_c_d_dd"
    streams: tuple[tuple[int, int], ...] = ((0, 13), (13, 26), (26, 39))  # svspec 0-12/13-25/26-38

    @classmethod
    def from_file(cls, path: Path) -> FrontEndParams:
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("-"):
                values[parts[0][1:]] = parts[1]
        unsupported = {
            "transform": "dct",
            "feat": "1s_c_d_dd",
            "agc": "none",
            "varnorm": "no",
            "model": "ptm",
        }
        for key, want in unsupported.items():
            if key in values and values[key] != want:
                raise ModelFormatError(f"{path}: -{key} {values[key]} is not supported (need {want})")
        streams = cls.streams
        if "svspec" in values:
            streams = tuple(
                (int(a), int(b) + 1) for a, b in (part.split("-") for part in values["svspec"].split("/"))
            )
        return cls(
            nfilt=int(values.get("nfilt", cls.nfilt)),
            lowerf=float(values.get("lowerf", cls.lowerf)),
            upperf=float(values.get("upperf", cls.upperf)),
            lifter=int(values.get("lifter", cls.lifter)),
            remove_noise=values.get("remove_noise", "yes") == "yes",
            streams=streams,
        )


@dataclass(frozen=True)
class SphinxModel:
    """The parts of the acoustic model the phone-loop recognizer needs (float64 numpy arrays)."""

    phones: tuple[str, ...]  # CI phone names, model order (fillers +NSN+ +SPN+, SIL included)
    silence: int  # index of SIL in ``phones``
    fillers: tuple[bool, ...]
    ci_senones: np.ndarray  # (n_phone, 3) int: senone id of each emitting state
    transitions: np.ndarray  # (n_phone, 3, 2) float: log P(stay), log P(next) per emitting state
    means: np.ndarray  # (n_stream, n_phone, n_density, veclen)
    inv_var: np.ndarray  # (n_stream, n_phone, n_density, veclen): 1 / variance (floored)
    log_norm: np.ndarray  # (n_stream, n_phone, n_density): -0.5 * sum(log(2 pi var))
    log_mixw: np.ndarray  # (n_stream, n_phone * 3, n_density): log mixture weight of each CI senone
    frontend: FrontEndParams = field(default_factory=FrontEndParams)
    directory: str = ""

    @property
    def n_phones(self) -> int:
        return len(self.phones)


def _s3_body(path: Path) -> tuple[bytes, int]:
    """Skip an s3 text header; return the file bytes and the offset after the byte-order magic."""
    data = path.read_bytes()
    end = data.find(b"endhdr\n")
    if not data.startswith(b"s3") or end < 0:
        raise ModelFormatError(f"{path}: not a Sphinx s3 binary file")
    off = end + len(b"endhdr\n")
    (magic,) = struct.unpack_from("<I", data, off)
    if magic != 0x11223344:
        raise ModelFormatError(f"{path}: big-endian or corrupt file (byte-order magic {magic:#x})")
    return data, off + 4


def _read_gaussians(path: Path) -> np.ndarray:
    """``means``/``variances`` -> (n_codebook, n_stream, n_density, veclen); streams must share veclen."""
    data, off = _s3_body(path)
    n_mgau, n_feat, n_density = struct.unpack_from("<3i", data, off)
    off += 12
    veclen = struct.unpack_from(f"<{n_feat}i", data, off)
    off += 4 * n_feat
    (n,) = struct.unpack_from("<i", data, off)
    off += 4
    if len(set(veclen)) != 1 or n != n_mgau * n_density * sum(veclen):
        raise ModelFormatError(f"{path}: unsupported stream layout {veclen} / {n} values")
    if len(data) < off + 4 * n:
        raise ModelFormatError(f"{path}: truncated")
    arr = np.frombuffer(data, "<f4", count=n, offset=off).astype(np.float64)
    # file order: codebook, stream, density, dim
    return arr.reshape(n_mgau, n_feat, n_density, veclen[0])


def _read_mdef(path: Path) -> tuple[list[str], int, list[bool], np.ndarray, np.ndarray, int]:
    data = path.read_bytes()
    magic, _version, fmt_len = struct.unpack_from("<3i", data, 0)
    if magic != 0x46444D42:  # "BMDF" little-endian
        raise ModelFormatError(f"{path}: not a little-endian binary mdef")
    off = 12 + fmt_len
    n_ci, n_phone, n_emit, _n_ci_sen, n_sen, _n_tmat, _n_sseq, _n_ctx, n_cd_tree, sil = struct.unpack_from(
        "<10i", data, off
    )
    if n_emit != 3:
        raise ModelFormatError(f"{path}: {n_emit} emitting states per phone; only 3 is supported")
    off += 40
    names, pos = [], off
    for _ in range(n_ci):
        end = data.index(b"\0", pos)
        names.append(data[pos:end].decode("ascii"))
        pos = end + 1
    off += ((pos - off) + 3) & ~3  # names are padded to 4 bytes
    off += 8 * n_cd_tree  # cd_tree entries (not needed for CI decoding)
    phone_t = np.dtype([("ssid", "<i4"), ("tmat", "<i4"), ("attr", "i1", 4)])
    phones = np.frombuffer(data, phone_t, count=n_phone, offset=off)
    off += phone_t.itemsize * n_phone
    (sseq_size,) = struct.unpack_from("<i", data, off)
    off += 4
    sseq = np.frombuffer(data, "<u2", count=sseq_size, offset=off).reshape(-1, n_emit)
    ci_sen = np.array([sseq[phones[i]["ssid"]] for i in range(n_ci)], dtype=np.int64)
    ci_tmat = np.array([phones[i]["tmat"] for i in range(n_ci)], dtype=np.int64)
    fillers = [bool(phones[i]["attr"][0]) for i in range(n_ci)]
    silence = names.index("SIL") if "SIL" in names else int(sil)
    return names, silence, fillers, ci_sen, ci_tmat, n_sen


def _read_sendump(path: Path, n_feat: int, n_density: int, n_sen: int) -> np.ndarray:
    """8-bit mixture weights -> (n_stream, n_density, n_senone) uint8 (``-log w`` in SENSCR units)."""
    data = path.read_bytes()
    off, header = 0, []
    while True:
        (n,) = struct.unpack_from("<i", data, off)
        off += 4
        if n == 0:
            break
        if not 0 < n < 1000:
            raise ModelFormatError(f"{path}: bad header string length {n} (big-endian file?)")
        header.append(data[off : off + n].rstrip(b"\0").decode("ascii", "replace"))
        off += n
    if any(h.startswith("cluster_count") and h.split()[1] != "0" for h in header):
        raise ModelFormatError(f"{path}: clustered (4-bit) mixture weights are not supported")
    rows, cols = struct.unpack_from("<2i", data, off)
    off += 8
    if rows != n_density or cols != n_sen:
        raise ModelFormatError(f"{path}: {rows}x{cols} weights, expected {n_density}x{n_sen}")
    count = n_feat * rows * cols
    if len(data) < off + count:
        raise ModelFormatError(f"{path}: truncated")
    return np.frombuffer(data, np.uint8, count=count, offset=off).reshape(n_feat, rows, cols)


def _read_tmat(path: Path) -> np.ndarray:
    data, off = _s3_body(path)
    d1, d2, d3, n = struct.unpack_from("<4i", data, off)
    off += 16
    if n != d1 * d2 * d3 or d3 != d2 + 1:
        raise ModelFormatError(f"{path}: unexpected transition matrix shape {d1}x{d2}x{d3}")
    return np.frombuffer(data, "<f4", count=n, offset=off).astype(np.float64).reshape(d1, d2, d3)


@functools.lru_cache(maxsize=4)
def load_sphinx_model(model_dir: str | None = None) -> SphinxModel:
    """Load (once per directory; cached) the acoustic model from ``model_dir`` (default: the wheel's en-us).

    ``model_dir`` may be the ``en-us`` directory of the wheel (holding ``en-us/``) or the model itself.
    """
    root = Path(model_dir) if model_dir else default_model_dir()
    hmm = root / "en-us" if (root / "en-us" / "mdef").exists() else root
    for name in ("mdef", "means", "variances", "sendump", "transition_matrices"):
        if not (hmm / name).is_file():
            raise ModelFormatError(f"acoustic model file {hmm / name} not found")
    names, silence, fillers, ci_sen, ci_tmat, n_sen = _read_mdef(hmm / "mdef")
    means = _read_gaussians(hmm / "means")
    var = np.maximum(_read_gaussians(hmm / "variances"), VAR_FLOOR)
    n_cb, n_feat, n_density, _veclen = means.shape
    if n_cb != len(names):
        raise ModelFormatError(f"{hmm}: {n_cb} codebooks for {len(names)} CI phones; not a PTM model")
    mixw = _read_sendump(hmm / "sendump", n_feat, n_density, n_sen)
    # CI senone s of phone p uses codebook p; gather its weights: (n_stream, n_phone*3, n_density)
    sen = ci_sen.reshape(-1)
    log_mixw = -mixw[:, :, sen].transpose(0, 2, 1).astype(np.float64) * SENSCR_UNIT
    tmat = _read_tmat(hmm / "transition_matrices")
    tmat = tmat / tmat.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        log_t = np.log(np.maximum(tmat, 1e-30))
    states = np.arange(3)
    trans = np.stack([log_t[ci_tmat][:, states, states], log_t[ci_tmat][:, states, states + 1]], axis=-1)
    fparams = FrontEndParams.from_file(hmm / "feat.params") if (hmm / "feat.params").is_file() else FrontEndParams()
    means_s = means.transpose(1, 0, 2, 3).copy()  # (stream, phone, density, dim)
    var_s = var.transpose(1, 0, 2, 3)
    return SphinxModel(
        phones=tuple(names),
        silence=silence,
        fillers=tuple(fillers),
        ci_senones=ci_sen,
        transitions=trans,
        means=means_s,
        inv_var=1.0 / var_s,
        log_norm=-0.5 * np.log(2 * np.pi * var_s).sum(axis=-1),
        log_mixw=log_mixw,
        frontend=fparams,
        directory=str(hmm),
    )


class SenoneScorer:
    """Log-likelihoods of the CI senones for feature frames, the way Sphinx's PTM module computes them.

    Per stream, each phone's codebook is evaluated (diagonal Gaussians) and mixed with the senone's weights;
    streams multiply (log-add). ``topn`` > 0 keeps only the best densities per codebook like Sphinx's
    decoder (top-4); 0 (default here) mixes all 128, which is both simpler and slightly more accurate.
    """

    def __init__(self, model: SphinxModel, topn: int = 0) -> None:
        self.model = model
        self.topn = topn
        n_stream, n_phone, n_density, dim = model.means.shape
        self.shape = (n_stream, n_phone, n_density)
        self.streams = model.frontend.streams
        if any(b - a != dim for a, b in self.streams):
            raise ModelFormatError(f"feature streams {self.streams} do not match the model's {dim}-dim codebooks")
        # ll = const - 0.5 * x^2 @ IV + x @ MIV per stream, as one batched matmul over streams:
        # (S, n, dim) @ (S, dim, phone*density); float32 halves the time and is ample for scores
        self.iv_half = (-0.5 * model.inv_var.reshape(n_stream, -1, dim).transpose(0, 2, 1)).astype(np.float32)
        self.miv = (model.means * model.inv_var).reshape(n_stream, -1, dim).transpose(0, 2, 1).astype(np.float32)
        self.const = (model.log_norm - 0.5 * (model.means**2 * model.inv_var).sum(-1)).reshape(n_stream, 1, -1)
        # (stream, phone, 3, density) mixture weights of the CI senones
        self.log_mixw = model.log_mixw.reshape(n_stream, n_phone, 3, n_density)
        self.mixw_lin = np.exp(self.log_mixw)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """(n, 39) features -> (n, n_phone, 3) senone log-likelihoods in nats."""
        n = feats.shape[0]
        n_stream, n_phone, n_density = self.shape
        if n == 0:
            return np.zeros((0, n_phone, 3))
        x = np.stack([feats[:, a:b] for a, b in self.streams]).astype(np.float32)  # (S, n, dim)
        ll = self.const + np.matmul(x * x, self.iv_half) + np.matmul(x, self.miv)  # (S, n, P*D) float64
        ll = ll.reshape(n_stream, n, n_phone, n_density).transpose(1, 0, 2, 3)  # (n, S, P, D)
        if self.topn and self.topn < n_density:
            top = np.argpartition(-ll, self.topn - 1, axis=3)[..., : self.topn]  # (n, S, P, k)
            llk = np.take_along_axis(ll, top, axis=3)
            s_idx = np.arange(n_stream)[None, :, None, None, None]
            p_idx = np.arange(n_phone)[None, None, :, None, None]
            j_idx = np.arange(3)[None, None, None, :, None]
            z = llk[:, :, :, None, :] + self.log_mixw[s_idx, p_idx, j_idx, top[:, :, :, None, :]]
            m = z.max(axis=4, keepdims=True)
            per_stream = (m + np.log(np.exp(z - m).sum(axis=4, keepdims=True)))[..., 0]
        else:  # log sum_d w[p,j,d] N_d = max + log(exp(ll - max) @ w)
            m = ll.max(axis=3, keepdims=True)  # (n, S, P, 1)
            mix = np.einsum("nspd,spjd->nspj", np.exp(ll - m), self.mixw_lin)
            per_stream = m + np.log(np.maximum(mix, 1e-300))
        return per_stream.sum(axis=1)  # (n, P, 3)
