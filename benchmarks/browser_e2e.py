"""What the person in the browser sees: the real presenter page in headless Chromium, measured inside the page.

The server (``styletalk-live serve``, a subprocess on a free port) streams to Chromium, whose fake microphone
plays a WAV of 1 s speech bursts between 2 s silences (cut from ``tests/data/speech_16k.wav``, eSpeak NG). A
probe injected into the page (``benchmarks/browser_probe.js``) times everything on the page's own clock:

- **sent-track onsets**: peak level of every audio block of the local microphone track (the track the page
  sends), read with ``MediaStreamTrackProcessor``; onset = first loud block after >= 0.5 s of quiet.
- **received frames**: ``requestVideoFrameCallback`` on the page's ``<video>``: receive time, presentation
  time, expected display time, RTP timestamp, and the grey levels of the avatar's mouth box (and of a face box)
  drawn on a canvas at that moment.
- **visible mouth motion**: per onset, the first presented frame whose mouth box departs from the preceding
  second of silence by more than that silence's own jitter (the rule of ``benchmarks/e2e.py``); "visible" =
  the frame's expected display time, "arrived" = its receive time (what the browser then adds in between).
- **remote-audio onsets, as heard**: the audio receiver's ``getSynchronizationSources()``, polled every few ms,
  names the RTP packet whose audio was last delivered for playout, when, and its level (the server's RTP
  audio-level extension, RMS in dBov); onset = the first loud packet after >= 0.5 s of quiet ones, at its
  delivery time. What follows is the output device's own buffer (not visible to a page). The earlier reading, the
  same level probe as the sent track on the avatar's audio track (``MediaStreamTrackProcessor``, "the tap"), is
  kept beside it: it runs behind the delivery for playout (a copy of the track, buffered on its way to the
  probe; ``onset_to_remote_audio_tap_ms`` beside ``onset_to_remote_audio_ms`` says by how much).
- **per stage**: the mouth frame's ``captureTime`` (rVFC: the server's send time of that RTP timestamp, mapped
  through its RTCP sender reports onto the page clock; approximate, as that mapping is), ``receiveTime`` (last
  packet arrived) and expected display time; on the server, how long microphone packets waited in its receive
  buffer (``server_mic_hold_ms``, ``streaming/rtp_latency.py``).
- **getStats**: fps, freezes, video/audio jitter-buffer delay (delay / emitted count), target and minimum.
- **A/V offset**: as seen (visible mouth onset - remote audio onset, per burst) against as sent: the same
  bursts through ``styletalk-live speak``, which records the live session's output with its audio on the
  stream's media clock (the clock the server stamps RTP with), measured with the same detectors.
- **A/V playout skew (Chromium's account)**: every 250 ms, ``estimatedPlayoutTimestamp`` of the audio and of the
  video inbound stream from one getStats report (each: the sender's NTP time, mapped through its RTCP sender
  reports, of the media playing out now); audio - video < 0 means the voice plays older media than the picture.
  It needs no audio tap, so it tells a skew of the browser's sync from a lag of the probe's audio reading.
- **style click -> new style on screen**: a click on a style button (in silence) to the expected display time
  of the first frame at or after the frame the server's reply names (frame indices from RTP timestamps). In
  silence the styles share the resting face, so a pixel change would not say when the style arrived.

A second Chromium plays a silent WAV of the same length: a control that must detect no onset, no remote audio
and no mouth motion before its style clicks (a blind mouth-motion detector, no audio reference).

    python -m benchmarks.browser_e2e                 # ~3 min on 2 cores: 60 s speech, 25 s silence, reference
    python -m benchmarks.browser_e2e --quick         # ~1.5 min: 20 s speech, 12 s silence, no reference
    python -m benchmarks.browser_e2e --hint jitter=0 # receiver hints in the page (see --help)

Writes ``benchmarks/results/browser_e2e.json`` (``--out``), prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.e2e import ServerProcess, decoder_weights
from benchmarks.results_io import run_header
from clients.client import read_wav, to_16k

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "browser_e2e.json"
SPEECH_WAV = ROOT / "tests" / "data" / "speech_16k.wav"
PROBE_JS = Path(__file__).resolve().parent / "browser_probe.js"
CHROMIUM = os.environ.get("STYLETALK_CHROMIUM", "/usr/bin/chromium")
RATE = 16_000
# Mouth box of the built-in avatar with a still head (fractions of the frame; dlib mouth landmarks
# x 0.35-0.63, y 0.62-0.73, room left for the jaw); the face box for style changes.
MOUTH_BOX = (0.33, 0.58, 0.67, 0.82)
FACE_BOX = (0.2, 0.2, 0.8, 0.9)
LEAD_S, BURST_S, GAP_S = 2.5, 1.0, 2.0
ONSET_LEVEL = 1000 / 32768  # peak |sample| (full scale 1) above this = sound
# audioLevel of a played packet above this = sound: the sender's RTP audio-level extension is the packet's RMS
# (dBov, linear 0..1 here), ~10-15 dB below its peak for speech, so -45 dBov stands for the peak rule's -30 dBFS
PLAYED_LEVEL = 10 ** (-45 / 20)
OPUS_KHZ = 48.0  # RTP clock of the returned audio (Opus), ticks per ms
PACKET_MS = 20.0  # the server's Opus packets
QUIET_S = 0.5  # an onset needs this much quiet before it
HORIZON_S = 2.5  # a mouth/audio onset must follow its speech onset within this (bursts are 3 s apart)
CHROMIUM_BASE_FLAGS = [  # headless, fake camera/mic, no background traffic: the tests' page launch uses these too
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
CHROMIUM_FLAGS = [*CHROMIUM_BASE_FLAGS, "--autoplay-policy=no-user-gesture-required"]


# ------------------------------------------------------------------------------------------------- stimulus
def burst_wav(path: Path, bursts: int, silent: bool = False) -> list[float]:
    """Write the stimulus WAV (16 kHz mono s16): lead silence, then ``bursts`` x (1 s speech, 2 s silence).

    Returns the burst start times in the file (seconds). ``silent``: the same length, all zeros.
    """
    pcm, rate = read_wav(SPEECH_WAV)
    speech = to_16k(pcm, rate)[: int(BURST_S * RATE)]
    parts = [np.zeros(int(LEAD_S * RATE), np.int16)]
    starts = []
    for _ in range(bursts):
        starts.append(sum(len(p) for p in parts) / RATE)
        parts += [speech, np.zeros(int(GAP_S * RATE), np.int16)]
    data = np.concatenate(parts)
    if silent:
        data = np.zeros_like(data)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(data.astype("<i2").tobytes())
    return starts


# ------------------------------------------------------------------------------------------------- analysis
def block_times(blocks: list[list[float]]) -> np.ndarray:
    """Page-clock times (ms) of audio blocks ``[read time, peak, own timestamp]``.

    A block is read some time after it was captured/rendered (the page's main thread may be busy); its own
    timestamp runs on a steady clock, so each block is placed at its timestamp plus the smallest read delay
    seen over the run. Blocks without a timestamp keep their read time.
    """
    arr = np.asarray(blocks, np.float64).reshape(len(blocks), -1)
    if not len(arr) or arr.shape[1] < 3 or np.isnan(arr[:, 2]).any():
        return arr[:, 0] if len(arr) else np.zeros(0)
    return arr[:, 2] + float(np.min(arr[:, 0] - arr[:, 2]))


def audio_onsets(blocks: list[list[float]], level: float = ONSET_LEVEL, quiet_s: float = QUIET_S) -> list[float]:
    """Times (ms) of blocks ``[(t_ms, peak, ts_ms), ...]`` that are loud after >= ``quiet_s`` of quiet."""
    onsets: list[float] = []
    last_loud: float | None = None
    times = block_times(blocks) if len(blocks) else np.zeros(0)
    for t, (_, peak, *_rest) in zip(times, blocks, strict=True):
        if peak > level:
            if last_loud is None or t - last_loud >= 1000 * quiet_s:
                onsets.append(float(t))
            last_loud = float(t)
    return onsets


def played_onsets(rows: list[list[float | None]], time_origin: float | None, level: float = PLAYED_LEVEL,
                  quiet_s: float = QUIET_S) -> list[float]:
    """Times (ms, page clock) at which the audio receiver delivered a loud packet for playout after >= ``quiet_s``
    of quiet ones (by RTP time), from the probe's ``getSynchronizationSources`` rows ``[poll, timestamp,
    rtpTimestamp, audioLevel]``. The source's timestamp is the delivery time; Chromium gives it on the wall clock
    (epoch ms), which ``time_origin`` (``performance.timeOrigin``) maps to the page clock.
    """
    good = [r for r in rows if r[1] is not None and r[2] is not None and r[3] is not None]
    if not good:
        return []
    arr = np.asarray(good, np.float64)
    stamp = arr[:, 1]
    if time_origin is not None and np.median(stamp - arr[:, 0]) > 1e9:  # epoch ms -> page clock
        stamp = stamp - time_origin
    onsets: list[float] = []
    last_loud: float | None = None
    rtp_ms = np.unwrap(arr[:, 2], period=2**32) / OPUS_KHZ
    for k, (t, r, lvl) in enumerate(zip(stamp, rtp_ms, arr[:, 3], strict=True)):
        if lvl > level:
            if last_loud is None or r - last_loud >= 1000 * quiet_s:
                # polls that missed packets (a busy page) leave the onset between the last quiet packet seen and
                # this one: take the middle, played as audio plays, in real time (exact when none was missed)
                skipped = max(0.0, r - rtp_ms[k - 1] - PACKET_MS) if k else 0.0
                onsets.append(float(t - skipped / 2))
            last_loud = float(r)
    return onsets


def first_after(times: list[float], t0: float, horizon_ms: float = 1000 * HORIZON_S) -> float | None:
    later = [t for t in times if t0 <= t <= t0 + horizon_ms]
    return min(later) if later else None


@dataclass
class Frames:
    """The presented frames as arrays: times in ms on the page clock, grey regions ``(N, pixels)``."""

    t: np.ndarray  # rVFC callback time
    shown: np.ndarray  # expected display time
    received: np.ndarray  # receive time of the frame's last packet (NaN if not given)
    captured: np.ndarray  # the sender's time of the frame (rVFC captureTime, via RTCP sender reports; NaN if not)
    rtp: np.ndarray
    mouth: np.ndarray
    face: np.ndarray

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> Frames:
        def col(k: str) -> np.ndarray:
            return np.array([np.nan if r.get(k) is None else r[k] for r in rows], np.float64)

        return cls(col("t"), col("e"), col("r"), col("c"), col("rtp"),
                   np.array([r["mouth"] for r in rows], np.float32).reshape(len(rows), -1),
                   np.array([r["face"] for r in rows], np.float32).reshape(len(rows), -1))


def departure(times: np.ndarray, grey: np.ndarray, t0: float, horizon_ms: float = 1000 * HORIZON_S,
              ref_ms: float = 1000.0, received: np.ndarray | None = None) -> int | None:
    """Index of the first frame at/after ``t0`` whose region departs from the ``ref_ms`` before ``t0``.

    The reference is the mean of the frames in [t0 - ref_ms, t0 - 50 ms]; the threshold max(1.5 x, x + 1)
    grey levels, x = the largest departure of a reference frame from that mean (its own jitter), as in
    ``benchmarks/e2e.py``. None: not enough reference frames, or no departure within the horizon. ``received``
    (receive times): frames that arrived before ``t0`` cannot show what followed it and are not candidates.
    """
    before = np.nonzero((times >= t0 - ref_ms) & (times < t0 - 50))[0]
    candidate = (times >= t0) & (times <= t0 + horizon_ms)
    if received is not None:
        candidate &= ~(received < t0)  # NaN (unknown) stays a candidate
    after = np.nonzero(candidate)[0]
    if len(before) < 5 or not len(after):
        return None
    ref = grey[before].mean(axis=0)
    jitter = float(np.abs(grey[before] - ref).mean(axis=1).max())
    threshold = max(1.5 * jitter, jitter + 1.0)
    dev = np.abs(grey[after] - ref).mean(axis=1)
    hit = np.nonzero(dev > threshold)[0]
    return int(after[hit[0]]) if len(hit) else None


def motion_events(times: np.ndarray, grey: np.ndarray, level: float = 3.0, rest_ms: float = 500.0) -> list[float]:
    """Blind mouth-motion events (no audio reference): times where the region departs from its resting look
    (the per-pixel median of all frames: the face rests most of the time) by more than ``level`` grey levels,
    after ``rest_ms`` within it. Departure from rest, not frame-to-frame change: on a busy machine late frames
    repeat, so consecutive differences come and go while the open mouth stays open.
    """
    if len(times) < 10:
        return []
    rest = np.median(grey, axis=0)
    away = np.abs(grey - rest).mean(axis=1) > level
    events: list[float] = []
    last_away = -np.inf
    for t, a in zip(times, away, strict=True):
        if a:
            if t - last_away >= rest_ms:
                events.append(float(t))
            last_away = float(t)
    return events


def frame_indices(frames: Frames, raw: dict[str, Any]) -> np.ndarray:
    """Engine frame index of every presented frame, from its RTP timestamp (90 kHz, 3000 per frame at 30 fps)
    relative to the first frame the page presented (the server's first, index ``first_video_index``)."""
    if raw.get("firstRtp") is None or raw.get("firstVideoIndex") is None:
        return np.full(len(frames.t), -1.0)
    delta = (frames.rtp - raw["firstRtp"]) % 2**32
    return raw["firstVideoIndex"] + np.round(delta / 3000)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def stats_delta(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """Figures of the getStats window between two snapshots of one inbound-rtp stream."""
    if not a or not b:
        return {}
    out: dict[str, Any] = {"codec": b.get("codec"), "decoder": b.get("decoderImplementation")}
    emitted = b.get("jitterBufferEmittedCount", 0) - a.get("jitterBufferEmittedCount", 0)
    if emitted > 0:
        for key in ("jitterBufferDelay", "jitterBufferTargetDelay", "jitterBufferMinimumDelay"):
            if key in b and key in a:
                out[f"{key}_ms"] = 1000 * (b[key] - a[key]) / emitted
    for key in ("freezeCount", "totalFreezesDuration", "framesDropped", "framesDecoded", "packetsLost",
                "pauseCount", "keyFramesDecoded", "pliCount", "nackCount", "concealedSamples"):
        if key in b:
            out[key] = b[key] - a.get(key, 0)
    if "framesPerSecond" in b:
        out["framesPerSecond_last"] = b["framesPerSecond"]
    return out


def analyse_speech(raw: dict[str, Any]) -> dict[str, Any]:
    """Per burst: sent onset -> arrived / visible mouth motion and -> remote audio; the A/V offset as seen."""
    frames = Frames.of(raw["frames"])
    sent = audio_onsets(raw["sent"])
    tapped = audio_onsets(raw["remote"])
    played = played_onsets(raw.get("played", []), raw.get("timeOrigin"))
    trials = []
    for onset in sent:
        i = departure(frames.t, frames.mouth, onset, received=frames.received)
        audio = first_after(played, onset)
        tap = first_after(tapped, onset)
        trials.append({
            "onset_ms": onset,
            "sent_by_server_ms": None if i is None or np.isnan(frames.captured[i]) else frames.captured[i] - onset,
            "arrived_ms": None if i is None or np.isnan(frames.received[i]) else frames.received[i] - onset,
            "visible_ms": None if i is None else frames.shown[i] - onset,
            "presented_ms": None if i is None else frames.t[i] - onset,
            "remote_audio_ms": None if audio is None else audio - onset,
            "remote_audio_tap_ms": None if tap is None else tap - onset,
        })
    for tr in trials:
        tr["av_seen_ms"] = (tr["visible_ms"] - tr["remote_audio_ms"]
                            if tr["visible_ms"] is not None and tr["remote_audio_ms"] is not None else None)
    return {
        "sent_onsets": len(sent),
        "remote_onsets": len(played),
        "remote_tap_onsets": len(tapped),
        "mouth_events": len(motion_events(frames.t, frames.mouth)),
        "playout_skew_ms": playout_skew(raw.get("playout", [])),
        "answer_extmaps": sorted(set(raw.get("extmaps", []))),
        "trials": trials,
        **frame_rate(frames, raw),
    }


def playout_skew(rows: list[list[float | None]]) -> dict[str, Any]:
    """Audio minus video estimated playout time (sender NTP ms) over the probe's getStats samples."""
    diffs = [a - v for _, a, v in rows if a is not None and v is not None]
    return {"p50": pct(diffs, 50), "p5": pct(diffs, 5), "p95": pct(diffs, 95), "n": len(diffs), "of": len(rows)}


def frame_rate(frames: Frames, raw: dict[str, Any]) -> dict[str, Any]:
    span = (frames.t[-1] - frames.t[0]) / 1000 if len(frames.t) > 1 else 0.0
    gaps = np.diff(frames.t) if len(frames.t) > 1 else np.zeros(0)
    return {
        "frames_presented": int(len(frames.t)),
        "fps_presented": (len(frames.t) - 1) / span if span > 0 else 0.0,
        "frame_gap_ms": {"p50": pct(list(gaps), 50), "p99": pct(list(gaps), 99),
                         "max": float(gaps.max()) if len(gaps) else None},
        "video": stats_delta(raw["stats"][0]["video"], raw["stats"][1]["video"]),
        "audio": stats_delta(raw["stats"][0]["audio"], raw["stats"][1]["audio"]),
    }


def analyse_silence(raw: dict[str, Any]) -> dict[str, Any]:
    """The control: nothing may be detected before the first style click; then click -> new style on screen."""
    frames = Frames.of(raw["frames"])
    clicks = [c["t"] for c in raw["clicks"]]
    until = clicks[0] if clicks else np.inf
    quiet = frames.t < until
    index = frame_indices(frames, raw)
    switches = []
    for c in raw["clicks"]:
        landed = np.nonzero((index >= c["frame"]) & (frames.t >= c["t"]))[0] if c.get("frame") is not None else []
        first = int(landed[0]) if len(landed) else None
        switches.append({"style": c["style"], "frame": c.get("frame"), "ack_ms": c.get("ack_ms"),
                         "visible_ms": None if first is None else frames.shown[first] - c["t"]})
    return {
        "sent_onsets": len(audio_onsets(raw["sent"])),
        "remote_onsets": len(played_onsets(raw.get("played", []), raw.get("timeOrigin"))),
        "remote_tap_onsets": len(audio_onsets(raw["remote"])),
        "mouth_events": len(motion_events(frames.t[quiet], frames.mouth[quiet])),
        "control_seconds": float((min(until, frames.t[-1]) - frames.t[0]) / 1000) if len(frames.t) else 0.0,
        "style_switches": switches,
        **frame_rate(frames, raw),
    }


# ------------------------------------------------------------------------------------------------ reference
def reference_offsets(wav: Path, overrides: list[str]) -> dict[str, Any]:
    """The A/V offset in the stream as the engine sends it: ``styletalk-live speak`` on the same bursts records
    the live session's frames and delayed audio on one media clock; the same detectors on that recording."""
    import av

    with tempfile.TemporaryDirectory(prefix="browser-e2e-ref-") as tmp:
        mp4 = Path(tmp) / "ref.mp4"
        cmd = [sys.executable, "-m", "clients.cli", "speak", "--audio", str(wav), "-o", str(mp4), "--no-progress",
               *[x for o in overrides for x in ("--set", o)]]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times, mouth = [], []
        blocks: list[list[float]] = []
        with av.open(str(mp4)) as box:
            for frame in box.decode(video=0):
                image = frame.to_ndarray(format="rgb24")
                times.append(1000 * float(frame.pts * frame.time_base))
                mouth.append(region_grey(image, MOUTH_BOX, (32, 20)))
        with av.open(str(mp4)) as box:
            for frame in box.decode(audio=0):
                pcm = frame.to_ndarray()
                scale = 32768.0 if pcm.dtype == np.int16 else 1.0
                mono = np.abs(pcm.astype(np.float32).reshape(pcm.shape[0], -1)).max(axis=0) / scale
                t0 = 1000 * float(frame.pts * frame.time_base)
                step = frame.sample_rate // 100  # 10 ms blocks
                for k in range(0, len(mono), step):
                    t = t0 + 1000 * k / frame.sample_rate
                    blocks.append([t, float(mono[k : k + step].max()), t])
    t = np.asarray(times)
    grey = np.asarray(mouth, np.float32)
    audio = audio_onsets(blocks)
    offsets = []
    for onset in audio:
        i = departure(t, grey, onset)
        offsets.append(None if i is None else float(t[i] - onset))
    found = [o for o in offsets if o is not None]
    return {"audio_onsets": len(audio), "mouth_minus_audio_ms": offsets, "p50_ms": pct(found, 50)}


def region_grey(image: np.ndarray, box: tuple[float, float, float, float], grid: tuple[int, int]) -> np.ndarray:
    """Grey levels of a box of an RGB frame, area-averaged to ``grid`` (w, h) cells, flattened."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    grey = image[y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    gw, gh = grid
    ys = np.linspace(0, grey.shape[0], gh + 1).astype(int)
    xs = np.linspace(0, grey.shape[1], gw + 1).astype(int)
    return np.array([[grey[ys[j] : ys[j + 1], xs[i] : xs[i + 1]].mean() for i in range(gw)] for j in range(gh)],
                    np.float32).reshape(-1)


# -------------------------------------------------------------------------------------------------- browser
async def drive_page(page_url: str, wav: Path, seconds: float, clicks: int, hints: dict[str, str],
                     settle_s: float = 2.0) -> dict[str, Any]:
    """One Chromium with ``wav`` as its microphone: Start, probe for ``seconds``, then ``clicks`` style clicks
    (2.5 s apart, in whatever the WAV plays then). Returns the probe's raw records and two getStats snapshots."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            query = "&".join(f"{k}={v}" for k, v in hints.items())
            await page.goto(page_url + (f"?{query}" if query else ""))
            await poll(page, "window.styletalk && window.styletalk.connected && window.styletalk.styles.length > 0")
            await page.evaluate(PROBE_JS.read_text())
            await page.check("#hear")  # the person listens: the returned audio plays
            await page.evaluate("window.__probe.arm()")
            await page.click("#start")
            await poll(page, "document.getElementById('avatar').videoWidth > 0 && "
                             "document.getElementById('avatar').srcObject.getAudioTracks().length > 0", 60)
            await page.evaluate("([m, f]) => window.__probe.begin(m, f)", [list(MOUTH_BOX), list(FACE_BOX)])
            await asyncio.sleep(settle_s)
            first = await page.evaluate("window.__probe.snapshot()")
            await asyncio.sleep(seconds)
            styles = await page.evaluate("window.styletalk.styles")
            for k in range(clicks):
                current = await page.evaluate("window.styletalk.currentStyle")
                target = [s for s in styles if s != current][k % max(1, len(styles) - 1)]
                await page.evaluate("""(name) => {
                    const t = performance.now();
                    const n = window.styletalk.acks.length;
                    window.__probe.clicks.push({t, style: name});
                    document.querySelector(`button[data-style="${name}"]`).click();
                    const click = window.__probe.clicks[window.__probe.clicks.length - 1];
                    const wait = () => {
                        if (window.styletalk.acks.length <= n) return setTimeout(wait, 5);
                        click.ack_ms = performance.now() - t;
                        click.frame = window.styletalk.acks[n].frame;
                    };
                    wait();
                }""", target)
                await asyncio.sleep(2.5)
            await poll(page, "window.styletalk.lastStats && window.styletalk.lastStats.transport")
            last = await page.evaluate("window.__probe.snapshot()")
            await page.evaluate("window.__probe.stop()")
            raw = await page.evaluate("window.__probe.collect()")
            raw["stats"] = [first, last]
            raw["server_stats"] = await page.evaluate("window.styletalk.lastStats")
            raw["page_errors"] = errors
            raw["settle_ms"] = 1000 * settle_s
            raw["frames"] = [f for f in raw["frames"] if f["t"] >= raw["t0"] + 1000 * settle_s - 1000]
            return raw
        finally:
            await browser.close()


async def poll(page: Any, expression: str, timeout: float = 30.0) -> Any:
    """Poll a JS expression until truthy (page.evaluate is allowed under the page's CSP; wait_for_function is not)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {expression}")
        await asyncio.sleep(0.1)


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    speech_wav, silent_wav = work / "bursts.wav", work / "silence.wav"
    starts = burst_wav(speech_wav, args.bursts)
    burst_wav(silent_wav, args.bursts, silent=True)
    overrides = ["avatar.head_motion=0", *args.set_args_raw]
    server_args = [x for o in overrides for x in ("--set", o)]
    out: dict[str, Any] = {"stimulus": {"burst_starts_s": starts, "burst_s": BURST_S, "gap_s": GAP_S,
                                        "file_s": LEAD_S + args.bursts * (BURST_S + GAP_S)}}
    with ServerProcess(server_args, max_sessions=2) as server:
        page_url = server.url.replace("ws://", "http://").removesuffix("/ws") + "/"
        print(f"server: {page_url}", flush=True)
        speech = await drive_page(page_url, speech_wav, args.seconds, 0, args.hints)
        out["speech"] = analyse_speech(speech)
        out["speech"]["page_errors"] = speech["page_errors"] + speech["errors"]
        out["speech"]["server_engine"] = (speech.get("server_stats") or {}).get("engine")
        out["speech"]["server_transport"] = (speech.get("server_stats") or {}).get("transport")
        silence = await drive_page(page_url, silent_wav, args.control_seconds, args.clicks, args.hints)
        out["silence"] = analyse_silence(silence)
        out["silence"]["page_errors"] = silence["page_errors"] + silence["errors"]
        if args.keep_raw:
            out["raw"] = {"speech": speech, "silence": silence}
    if not args.no_reference:
        out["reference"] = reference_offsets(speech_wav, overrides)
    return out


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    sp = data["speech"]
    trials = sp["trials"]

    def col(key: str) -> list[float]:
        return [t[key] for t in trials if t[key] is not None]

    visible, arrived, audio, seen = col("visible_ms"), col("arrived_ms"), col("remote_audio_ms"), col("av_seen_ms")
    sent_by_server, tap = col("sent_by_server_ms"), col("remote_audio_tap_ms")
    ref = data.get("reference") or {}
    sent_offset = ref.get("p50_ms")
    switches = [s["visible_ms"] for s in data["silence"]["style_switches"] if s["visible_ms"] is not None]
    video = sp["video"]
    return {
        "onset_to_visible_mouth_ms": {"p50": pct(visible, 50), "p95": pct(visible, 95), "n": len(visible),
                                      "of": len(trials)},
        "onset_to_server_sent_mouth_ms": {"p50": pct(sent_by_server, 50), "p95": pct(sent_by_server, 95),
                                          "n": len(sent_by_server)},
        "onset_to_arrived_mouth_ms": {"p50": pct(arrived, 50), "p95": pct(arrived, 95), "n": len(arrived)},
        "onset_to_remote_audio_ms": {"p50": pct(audio, 50), "p95": pct(audio, 95), "n": len(audio)},
        "onset_to_remote_audio_tap_ms": {"p50": pct(tap, 50), "p95": pct(tap, 95), "n": len(tap)},
        "av_offset_seen_ms": {"p50": pct(seen, 50), "n": len(seen)},
        "av_offset_sent_ms": sent_offset,
        "av_skew_added_by_browser_ms": (pct(seen, 50) - sent_offset) if seen and sent_offset is not None else None,
        "av_playout_skew_ms": sp["playout_skew_ms"],
        "style_click_to_screen_ms": {"p50": pct(switches, 50), "n": len(switches),
                                      "of": len(data["silence"]["style_switches"])},
        "fps_presented": sp["fps_presented"],
        "freezes": video.get("freezeCount"),
        "video_jitter_buffer_ms": video.get("jitterBufferDelay_ms"),
        "video_jitter_target_ms": video.get("jitterBufferTargetDelay_ms"),
        "video_jitter_minimum_ms": video.get("jitterBufferMinimumDelay_ms"),
        "audio_jitter_buffer_ms": sp["audio"].get("jitterBufferDelay_ms"),
        "audio_jitter_target_ms": sp["audio"].get("jitterBufferTargetDelay_ms"),
        "codec": video.get("codec"),
        "server_mic_hold_ms": (sp.get("server_transport") or {}).get("mic_hold_ms"),
        "server_audio_send_hold_ms": (sp.get("server_transport") or {}).get("audio_send_hold_ms"),
        "server_audio_frame_ms": (sp.get("server_transport") or {}).get("audio_frame_ms"),
        "mic_packet_ms": (sp.get("server_transport") or {}).get("mic_packet_ms"),
        "playout_delay_negotiated": any("playout-delay" in x for x in sp.get("answer_extmaps", [])),
        "control": {k: data["silence"][k] for k in ("sent_onsets", "remote_onsets", "remote_tap_onsets", "mouth_events",
                                                      "control_seconds")},
        "speech_detections": {k: sp[k] for k in ("sent_onsets", "remote_onsets", "remote_tap_onsets", "mouth_events")},
    }


def print_table(s: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.0f}" if isinstance(x, float) else str(x)

    rows = [
        ("speech onset -> visible mouth (ms)", s["onset_to_visible_mouth_ms"]),
        ("speech onset -> mouth frame sent by the server (rVFC captureTime, ms)", s["onset_to_server_sent_mouth_ms"]),
        ("speech onset -> mouth frame arrived (ms)", s["onset_to_arrived_mouth_ms"]),
        ("speech onset -> remote audio played (getSynchronizationSources, ms)", s["onset_to_remote_audio_ms"]),
        ("speech onset -> remote audio read by the track tap (ms)", s["onset_to_remote_audio_tap_ms"]),
    ]
    print("| metric | p50 | p95 | n |")
    print("|---|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {f(v['p50'])} | {f(v['p95'])} | {v['n']} |")
    print(f"| A/V offset seen (mouth - audio, ms) | {f(s['av_offset_seen_ms']['p50'])} | | "
          f"{s['av_offset_seen_ms']['n']} |")
    print(f"| A/V offset as sent (ms) | {f(s['av_offset_sent_ms'])} | | |")
    print(f"| skew added by the browser (ms) | {f(s['av_skew_added_by_browser_ms'])} | | |")
    ps = s["av_playout_skew_ms"]
    print(f"| A/V playout skew, Chromium's estimatedPlayoutTimestamp (audio - video, ms) | {f(ps['p50'])} | "
          f"{f(ps['p95'])} | {ps['n']}/{ps['of']} |")
    sw = s["style_click_to_screen_ms"]
    print(f"| style click -> new-style frame on screen (ms) | {f(sw['p50'])} | | {sw['n']}/{sw['of']} |")
    print(f"fps presented {s['fps_presented']:.1f}, freezes {f(s['freezes'])}, codec {s['codec']}; "
          f"jitter buffer video {f(s['video_jitter_buffer_ms'])} ms (target {f(s['video_jitter_target_ms'])}, "
          f"min {f(s['video_jitter_minimum_ms'])}), audio {f(s['audio_jitter_buffer_ms'])} ms "
          f"(target {f(s['audio_jitter_target_ms'])})")
    c, d = s["control"], s["speech_detections"]
    print(f"detections speech: {d['sent_onsets']} sent onsets, {d['remote_onsets']} remote-audio onsets, "
          f"{d['mouth_events']} mouth events; silent control ({c['control_seconds']:.0f} s): "
          f"{c['sent_onsets']}/{c['remote_onsets']}/{c['mouth_events']}")


def parse_hints(items: list[str]) -> dict[str, str]:
    hints = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--hint {item}: use KEY=VALUE")
        hints[key] = value
    return hints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.browser_e2e", description=__doc__.split("\n\n")[0],
                                     epilog="Needs Chromium (/usr/bin/chromium or $STYLETALK_CHROMIUM) and "
                                            "playwright (make test installs both).")
    parser.add_argument("--seconds", type=float, default=None, help="speech run measured (default 60, quick 20)")
    parser.add_argument("--control-seconds", type=float, default=None,
                        help="silent control before its clicks (default 15, quick 10)")
    parser.add_argument("--clicks", type=int, default=None, help="style clicks in the silent run (default 4, quick 2)")
    parser.add_argument("--bursts", type=int, default=6, help="speech bursts in the (looped) WAV")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the as-sent A/V reference (styletalk-live speak on the same bursts)")
    parser.add_argument("--hint", dest="hint_raw", action="append", default=[], metavar="KEY=VALUE",
                        help="page URL parameter for the receiver, e.g. jitter=0 (RTCRtpReceiver.jitterBufferTarget "
                             "in ms on both receivers), jitter_video=0, jitter_audio=0")
    parser.add_argument("--set", dest="set_args_raw", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="engine override passed to the server (avatar.head_motion=0 is always set)")
    parser.add_argument("--quick", action="store_true", help="20 s speech, 10 s control, 2 clicks, no reference")
    parser.add_argument("--keep-raw", action="store_true", help="also save the probe's raw records")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    args.hints = parse_hints(args.hint_raw)
    quick = {"seconds": 20.0, "control_seconds": 10.0, "clicks": 2}
    full = {"seconds": 60.0, "control_seconds": 15.0, "clicks": 4}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:  # explicit values win over --quick
            setattr(args, key, value)
    args.no_reference = args.no_reference or args.quick
    if not Path(CHROMIUM).is_file():
        print(f"Chromium not found at {CHROMIUM}", file=sys.stderr)
        return 2

    started = time.time()
    load_at_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="browser-e2e-") as tmp:
        data = asyncio.run(measure(args, Path(tmp)))
    summary = summarize(data)
    print()
    print_table(summary)
    result = {
        **run_header("browser_e2e", started, load_at_start),
        "decoder_weights": decoder_weights(args.set_args_raw),
        "server_overrides": ["avatar.head_motion=0", *args.set_args_raw],
        "hints": args.hints,
        "summary": summary,
        **data,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out}  ({result['duration_s']:.0f} s, load {load_at_start[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
