"""How do the reference phoneme rows of the sample source clips line up with the 3DMM coefficient rows?

Evidence behind ``models.dataset.PHONEME_OFFSET`` (reported in ``models/assets/styletalk_default.md``):

1. row counts: phoneme rows, coefficient rows, video frames, audio length in frames;
2. phonemes vs audio: correlation of the per-frame audio log-energy with "not silence" at lags -4..+4;
3. phonemes vs face: correlation of mouth opening with an open-vowel (+1) / bilabial (-1) indicator, with
   phoneme row ``i + lag`` paired to coefficient row ``i`` (lags -4..+8). Mouth opening = first principal
   component of the per-clip-centred lower-face coefficients (sign chosen so that open vowels are positive);
4. the same with a richer signal: leave-one-clip-out R^2 of predicting the 13 lower-face coefficients
   (per-clip standardised) from the phoneme at that lag (per-phoneme means of the other clips).

    .venv/bin/python -m benchmarks.phoneme_alignment
"""

from __future__ import annotations

import argparse
import json
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.results_io import write_results
from models.clips import load_style_clip
from models.dataset import PHONEME_OFFSET, default_data_dir, list_clips
from models.phonemes import PHONEME_INDEX, SIL
from models.styletalk import LOWER_FACE3D_INDICES

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "phoneme_alignment.json"
LOWER = list(LOWER_FACE3D_INDICES)
OPEN = {PHONEME_INDEX[p] for p in ("AA", "AE", "AH", "AO", "AW", "AY")}
BILABIAL = {PHONEME_INDEX[p] for p in ("P", "B", "M")}


def _pairs(n: int, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficient rows i and phoneme rows i + lag that both exist."""
    i = np.arange(max(0, -lag), min(n, n - lag))
    return i, i + lag


def _video_frames(path: Path) -> int | None:
    try:
        import av  # optional here: only for the frame count
    except ImportError:
        return None
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def analyse(data_dir: Path) -> dict:
    clips = {}
    for name in list_clips(data_dir, "source"):
        exp = load_style_clip(data_dir / "source" / "3dmm" / f"{name}.mat").astype(np.float64)
        seq = np.asarray(json.loads((data_dir / "source" / "phoneme" / f"{name}_seq.json").read_text()))
        with wave.open(str(data_dir / "source" / "wav" / f"{name}.wav")) as w:
            rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(float)
        spf = rate / 30.0
        n_audio = len(pcm) / spf
        energy = np.array(
            [
                np.log(np.mean(pcm[int(t * spf) : int((t + 1) * spf)] ** 2) + 1e-3)
                for t in range(min(len(seq), int(n_audio)))
            ]
        )
        video = data_dir / "source" / "video" / f"{name}.mp4"
        clips[name] = {
            "exp": exp,
            "seq": seq,
            "energy": energy,
            "rows": {
                "coefficients": len(exp),
                "phonemes": len(seq),
                "audio_frames": round(n_audio, 2),
                "video_frames": _video_frames(video) if video.is_file() else None,
            },
        }

    out: dict = {"rows": {n: c["rows"] for n, c in clips.items()}}
    # 2. audio energy vs speech
    audio = {}
    for lag in range(-4, 5):
        rs = []
        for c in clips.values():
            e, s = c["energy"], c["seq"][: len(c["energy"])]
            i, j = _pairs(len(e), lag)
            rs.append(np.corrcoef(e[i], s[j] != SIL)[0, 1])
        audio[lag] = round(float(np.mean(rs)), 3)
    out["audio_energy_vs_speech_corr"] = audio

    # 3. mouth opening (PC1) vs open-vowel/bilabial indicator
    centred = np.concatenate([c["exp"][:, LOWER] - c["exp"][:, LOWER].mean(0) for c in clips.values()])
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pc1 = vt[0]
    lags = list(range(-4, 9))
    per_clip: dict[str, dict[int, float]] = {}
    pooled = {}
    for lag in lags:
        xs, ys = [], []
        for name, c in clips.items():
            m = (c["exp"][:, LOWER] - c["exp"][:, LOWER].mean(0)) @ pc1
            ind = np.array([1.0 if p in OPEN else (-1.0 if p in BILABIAL else np.nan) for p in c["seq"]])
            i, j = _pairs(len(m), lag)
            ok = ~np.isnan(ind[j])
            per_clip.setdefault(name, {})[lag] = float(np.corrcoef(m[i][ok], ind[j][ok])[0, 1])
            xs.append(m[i][ok])
            ys.append(ind[j][ok])
        pooled[lag] = float(np.corrcoef(np.concatenate(xs), np.concatenate(ys))[0, 1])
    sign = 1.0 if max(pooled.values(), key=abs) > 0 else -1.0
    out["mouth_open_vs_indicator_corr"] = {lag: round(sign * v, 3) for lag, v in pooled.items()}
    out["mouth_open_best_lag_per_clip"] = {n: max(v, key=lambda k: sign * v[k]) for n, v in per_clip.items()}

    # 4. leave-one-clip-out R^2 of the lower face from the phoneme at each lag
    z = {
        n: (c["exp"][:, LOWER] - c["exp"][:, LOWER].mean(0)) / c["exp"][:, LOWER].std(0)
        for n, c in clips.items()
    }
    loco = {}
    for lag in lags:
        r2 = []
        for held in clips:
            ph_tr, y_tr = [], []
            for n, c in clips.items():
                i, j = _pairs(len(z[n]), lag)
                if n == held:
                    ph_te, y_te = c["seq"][j], z[n][i]
                else:
                    ph_tr.append(c["seq"][j])
                    y_tr.append(z[n][i])
            ph_a, y_a = np.concatenate(ph_tr), np.concatenate(y_tr)
            table = {p: y_a[ph_a == p].mean(0) for p in np.unique(ph_a)}
            pred = np.stack([table.get(p, np.zeros(len(LOWER))) for p in ph_te])
            r2.append(1.0 - ((pred - y_te) ** 2).sum() / ((y_te - y_te.mean(0)) ** 2).sum())
        loco[lag] = round(float(np.mean(r2)), 4)
    out["lower_face_loco_r2"] = loco
    out["chosen_offset"] = PHONEME_OFFSET
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="phoneme-row vs coefficient-row alignment of the sample clips")
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    res = analyse(args.data)
    print("rows:", json.dumps(res["rows"]))
    print(f"{'lag':>4} {'audio~speech r':>15} {'open~indicator r':>17} {'LOCO R2':>8}")
    for lag in range(-4, 9):
        a = res["audio_energy_vs_speech_corr"].get(lag)
        print(
            f"{lag:>4} {'' if a is None else f'{a:15.3f}':>15} "
            f"{res['mouth_open_vs_indicator_corr'][lag]:17.3f} {res['lower_face_loco_r2'][lag]:8.4f}"
        )
    print("best mouth-opening lag per clip:", res["mouth_open_best_lag_per_clip"])
    write_results(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
