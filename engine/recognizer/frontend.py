"""Streaming Sphinx-compatible acoustic front end: 16 kHz int16 PCM -> 39-dim features at 100 frames/s.

It reproduces the pocketsphinx front end that the bundled acoustic model was trained with (pre-emphasis 0.97,
25.6 ms Hamming window every 10 ms, 512-point FFT, 25 mel filters 130-6800 Hz with unit area, natural log,
unitary DCT-II to 13 cepstra, sinusoidal lifter 22, optional spectral noise removal), then live cepstral mean
normalisation and the ``1s_c_d_dd`` dynamic features (cepstra, deltas over +-2 frames, double deltas).

Why our own and not pocketsphinx's: the phone-loop recognizer needs acoustic scores per frame, which the
pocketsphinx Python API does not expose; and a numpy front end is sans-I/O, deterministic and lets us choose
the live CMN behaviour (pocketsphinx starts from a fixed ``40,3,-1`` prior and only updates it every few
seconds; here the mean adapts from the first frame on).

Timing: cepstral frame ``k`` of a stream covers samples ``[160 k, 160 k + 410)``; the dynamic features of frame
``k`` need cepstra up to ``k + 3``, so feature frame ``k`` is available once sample ``160 (k + 3) + 410`` is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.recognizer.sphinx_model import FrontEndParams

DELTA_CONTEXT = 3  # 1s_c_d_dd needs cepstra t-3 .. t+3
LOG_FLOOR = 1e-4

# Live CMN starting point: typical speech energy in c0, a flat spectrum otherwise. Data-free on purpose: the
# mean adapts from the first frame on, so the prior matters for about a second (on the shared samples it is
# within 0.3 points of their own average cepstrum; pocketsphinx's default "40,3,-1" costs ~0.5 points).
DEFAULT_CMN_PRIOR: tuple[float, ...] = (50.0,) + (0.0,) * 12


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _melinv(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(p: FrontEndParams) -> np.ndarray:
    """(nfilt, nfft/2+1) triangular filters, edges rounded to FFT bins, unit area (Sphinx defaults)."""
    fftfreq = p.sample_rate / p.nfft
    lo, hi = float(_mel(p.lowerf)), float(_mel(p.upperf))
    bw = (hi - lo) / (p.nfilt + 1)
    nbin = p.nfft // 2 + 1
    hz = np.arange(nbin) * fftfreq
    fb = np.zeros((p.nfilt, nbin))
    for i in range(p.nfilt):
        f = _melinv(lo + bw * np.arange(i, i + 3))
        f = np.floor(f / fftfreq + 0.5) * fftfreq  # round to DFT points
        inside = (hz >= f[0]) & (hz <= f[2])
        inside[-1] = False  # Sphinx stops at the Nyquist bin
        lo_slope = (hz - f[0]) / (f[1] - f[0])
        hi_slope = (f[2] - hz) / (f[2] - f[1])
        fb[i, inside] = np.minimum(lo_slope, hi_slope)[inside] * 2.0 / (f[2] - f[0])
    return fb


def dct_matrix(p: FrontEndParams) -> np.ndarray:
    """(ncep, nfilt) unitary DCT-II followed by the sinusoidal lifter."""
    n = p.nfilt
    i = np.arange(p.ncep)[:, None]
    j = np.arange(n)[None, :]
    m = np.cos(np.pi * i * (j + 0.5) / n) * np.sqrt(2.0 / n)
    m[0] = np.sqrt(1.0 / n)
    if p.lifter:
        lift = 1.0 + p.lifter / 2.0 * np.sin(np.arange(p.ncep) * np.pi / p.lifter)
        m = m * lift[:, None]
    return m


class NoiseRemover:
    """Sphinx's mel-spectrum noise suppression (spectral minimum tracking + temporal masking), per frame.

    Recursive over frames, so it runs frame by frame; the model was trained with it switched on.
    """

    LAMBDA_POWER, LAMBDA_A, LAMBDA_B, LAMBDA_T, MU_T, MAX_GAIN = 0.7, 0.995, 0.5, 0.85, 0.2, 20.0
    SMOOTH = 4

    def __init__(self, nfilt: int) -> None:
        self.nfilt = nfilt
        self.power: np.ndarray | None = None
        self.noise = np.zeros(nfilt)
        self.floor = np.zeros(nfilt)
        self.peak = np.zeros(nfilt)
        # spectral smoothing of gains over +-SMOOTH filters (window clipped at the edges)
        k = np.arange(nfilt)
        lo, hi = np.maximum(k - self.SMOOTH, 0), np.minimum(k + self.SMOOTH, nfilt - 1)
        w = (k[None, :] >= lo[:, None]) & (k[None, :] <= hi[:, None])
        self.smooth = w / w.sum(axis=1, keepdims=True)

    def reset(self) -> None:
        self.power = None

    @staticmethod
    def _envelope(buf: np.ndarray, floor: np.ndarray, a: float, b: float) -> None:
        up = buf >= floor
        floor[:] = np.where(up, a * floor + (1 - a) * buf, b * floor + (1 - b) * buf)

    def __call__(self, mf: np.ndarray) -> np.ndarray:
        """Clean one mel power spectrum ``mf`` (nfilt,) and return the result (new array)."""
        if self.power is None:
            self.power = mf.copy()
            self.noise = mf / self.MAX_GAIN
            self.floor = mf / self.MAX_GAIN
            self.peak = np.zeros(self.nfilt)
        self.power = self.LAMBDA_POWER * self.power + (1 - self.LAMBDA_POWER) * mf
        self._envelope(self.power, self.noise, self.LAMBDA_A, self.LAMBDA_B)
        signal = np.maximum(self.power - self.noise, 1.0)
        self._envelope(signal, self.floor, self.LAMBDA_A, self.LAMBDA_B)
        # temporal masking
        cur = signal.copy()
        self.peak *= self.LAMBDA_T
        masked = signal < self.LAMBDA_T * self.peak
        signal = np.where(masked, self.peak * self.MU_T, signal)
        self.peak = np.maximum(self.peak, cur)
        signal = np.maximum(signal, self.floor)
        # gain = signal / power, limited to [1/MAX_GAIN, MAX_GAIN] (power 0 -> MAX_GAIN, as in Sphinx)
        gain = np.clip(signal / np.maximum(self.power, 1e-300), 1.0 / self.MAX_GAIN, self.MAX_GAIN)
        return mf * (self.smooth @ gain)


@dataclass
class CMNState:
    """Live cepstral mean: a prior worth ``prior_frames`` frames, then a running mean with a finite memory.

    Frames with c0 < 0 (digital silence) are not counted, as in Sphinx.
    """

    mean: np.ndarray
    total: np.ndarray
    count: float
    prior_frames: float = 100.0
    memory_frames: float = 500.0  # once more frames than 1.6x this are counted, the sums are rescaled

    @classmethod
    def create(cls, prior: tuple[float, ...] | np.ndarray, prior_frames: float = 100.0) -> CMNState:
        p = np.asarray(prior, dtype=np.float64)
        return cls(mean=p.copy(), total=p * prior_frames, count=float(prior_frames), prior_frames=prior_frames)

    def apply(self, cep: np.ndarray) -> np.ndarray:
        """Normalise ``cep`` (n, ncep) frame by frame, updating the mean after each frame."""
        out = np.empty_like(cep)
        for i, c in enumerate(cep):
            if c[0] >= 0:
                self.total += c
                self.count += 1
                if self.count > 1.6 * self.memory_frames:
                    scale = self.memory_frames / self.count
                    self.total *= scale
                    self.count = self.memory_frames
                self.mean = self.total / self.count
            out[i] = c - self.mean
        return out


class SphinxFrontEnd:
    """Incremental PCM -> feature converter (sans-I/O): ``push(int16 samples) -> (n, 39)`` new feature rows.

    Row ``k`` of the concatenated output is acoustic frame ``k`` (window start at sample ``160 k``).
    :meth:`finish` pads the end (replicating the last cepstrum, as Sphinx does) and returns the last rows.
    """

    def __init__(
        self,
        params: FrontEndParams | None = None,
        cmn_prior: tuple[float, ...] | np.ndarray = DEFAULT_CMN_PRIOR,
        cmn_prior_frames: float = 100.0,
        remove_noise: bool | None = None,
    ) -> None:
        self.p = params or FrontEndParams()
        self.shift = self.p.sample_rate // self.p.frame_rate  # 160
        self.size = int(round(self.p.window_length * self.p.sample_rate))  # 410
        self.window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(self.size) / (self.size - 1))
        self.fbank = mel_filterbank(self.p)
        self.dct = dct_matrix(self.p)
        use_noise = self.p.remove_noise if remove_noise is None else remove_noise
        self.noise = NoiseRemover(self.p.nfilt) if use_noise else None
        self.cmn_prior = np.asarray(cmn_prior, dtype=np.float64)
        self.cmn_prior_frames = cmn_prior_frames
        self.cmn = CMNState.create(self.cmn_prior, cmn_prior_frames)
        self.reset()

    def reset(self, keep_cmn: bool = True) -> None:
        """Start a new stream at sample 0 (CMN statistics are kept unless ``keep_cmn`` is False)."""
        self._buf = np.zeros(0, dtype=np.float64)  # pre-emphasised samples not yet fully consumed
        self._prev_sample = 0.0
        self._ceps: list[np.ndarray] = []  # normalised cepstra waiting for their delta context
        self._rms: list[float] = []  # RMS (int16 units, pre-emphasised) of the same frames
        self.rms = np.zeros(0)  # RMS of the frames of the rows the last push()/finish() returned
        self._n_cep = 0  # cepstral frames produced so far
        self._n_feat = 0  # feature frames emitted so far
        if self.noise is not None:
            self.noise.reset()
        if not keep_cmn:
            self.cmn = CMNState.create(self.cmn_prior, self.cmn_prior_frames)

    @property
    def frames_emitted(self) -> int:
        return self._n_feat

    def _cepstra(self, frames: np.ndarray) -> np.ndarray:
        # frames: (n, size) pre-emphasised samples -> (n, ncep)
        spec = np.abs(np.fft.rfft(frames * self.window, n=self.p.nfft)) ** 2  # (n, nfft/2+1)
        mel = spec @ self.fbank.T  # (n, nfilt)
        if self.noise is not None:
            mel = np.stack([self.noise(m) for m in mel]) if len(mel) else mel
        return np.log(mel + LOG_FLOOR) @ self.dct.T

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Add int16 (or float in int16 scale) samples; return the feature rows that became complete."""
        x = np.asarray(pcm, dtype=np.float64).reshape(-1)
        if x.size:
            pre = np.empty_like(x)
            pre[0] = x[0] - self.p.alpha * self._prev_sample
            pre[1:] = x[1:] - self.p.alpha * x[:-1]
            self._prev_sample = float(x[-1])
            self._buf = np.concatenate([self._buf, pre])
        n = 0 if self._buf.size < self.size else 1 + (self._buf.size - self.size) // self.shift
        if n:
            idx = np.arange(self.size)[None, :] + self.shift * np.arange(n)[:, None]
            frames = self._buf[idx]
            cep = self.cmn.apply(self._cepstra(frames))
            self._buf = self._buf[n * self.shift :]
            self._add_ceps(cep, np.sqrt(np.mean(frames**2, axis=1)))
        return self._drain(final=False)

    def finish(self) -> np.ndarray:
        """End of stream: emit the remaining feature rows (the tail is padded like Sphinx's end of utterance)."""
        if self._buf.size > self.shift and self._buf.size < self.size:  # one last, zero-padded frame
            frame = np.zeros(self.size)
            frame[: self._buf.size] = self._buf
            self._add_ceps(self.cmn.apply(self._cepstra(frame[None, :])), np.sqrt(np.mean(frame**2))[None])
        self._buf = np.zeros(0)
        out = self._drain(final=True)
        self._ceps = []
        self._rms = []
        return out

    def _add_ceps(self, cep: np.ndarray, rms: np.ndarray) -> None:
        for c, r in zip(cep, rms, strict=True):
            if self._n_cep == 0:  # replicate the first frame as left context (Sphinx begin-of-utterance)
                self._ceps = [c] * DELTA_CONTEXT
                self._rms = [float(r)] * DELTA_CONTEXT
            self._ceps.append(c)
            self._rms.append(float(r))
            self._n_cep += 1

    def _drain(self, final: bool) -> np.ndarray:
        self.rms = np.zeros(0)
        if not self._ceps:
            return np.zeros((0, 3 * self.p.ncep))
        ceps = self._ceps
        if final:
            ceps = ceps + [ceps[-1]] * DELTA_CONTEXT
        c = np.asarray(ceps)  # row r holds cepstral frame (n_feat - 3 + r) relative to the stream
        n_out = len(c) - 2 * DELTA_CONTEXT
        if n_out <= 0:
            return np.zeros((0, 3 * self.p.ncep))
        self.rms = np.asarray(self._rms[DELTA_CONTEXT : DELTA_CONTEXT + n_out])
        self._rms = self._rms[n_out:]
        t = np.arange(DELTA_CONTEXT, DELTA_CONTEXT + n_out)
        d = c[t + 2] - c[t - 2]
        dd = (c[t + 3] - c[t - 1]) - (c[t + 1] - c[t - 3])
        feats = np.concatenate([c[t], d, dd], axis=1)  # (n_out, 39)
        self._ceps = list(c[n_out:]) if not final else []
        self._n_feat += n_out
        return feats
