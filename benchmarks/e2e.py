"""End-to-end benchmark over loopback WebRTC: the real server (subprocess) and aiortc clients (this process).

Measures what a user of the presenter experiences:

1. **speech onset → mouth motion**: bursts of speech after silence; onset = the 20 ms mic frame carrying the
   first loud sample (monotonic send time); motion = arrival of the first received frame whose mouth region
   departs from the preceding silence by more than the silence's own jitter. p50 / p95 over the trials.
   Includes the engine's deliberate output delay (recognizer lag + lookahead), VP8 encode/decode and the
   loopback network.
2. **style switch → first frame in the new style**: ``set_style`` (transition 0) sent during silence; the
   reply names the landing frame F; latency = arrival of the first received frame with index >= F (indices
   recovered from RTP timestamps + the server's ``first_video_index``) minus the send time.
3. **frames/s received** and **max concurrent sessions at >= 29 fps**: N clients streaming looped speech at
   once; per session the received fps (client) and the fresh-frame fps (server: frames sent minus frames
   repeated because they were late). A level passes when every session has both >= 29.

The server runs in its own process (as in production) so the clients' VP8 decoding does not share its GIL;
both still share this machine's cores, which makes the concurrency figure a lower bound.

    python -m benchmarks.e2e                 # full run (~2-3 min), writes benchmarks/results/e2e.json
    python -m benchmarks.e2e --quick         # fewer trials / shorter levels
    python -m benchmarks.e2e --set decoder.lookahead=2   # any engine override is passed to the server
    python -m benchmarks.e2e --sessions-only --max-sessions 4   # only the concurrency levels (~1.5 min)
    python -m benchmarks.e2e --sessions-only --all-levels --max-sessions 3 --set decoder.workers=0   # the
        # model thread instead of model worker processes (the JSON records them under ``model_workers``)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import run_header, write_results
from clients.client import MicrophoneTrack, StyleTalkClient, read_wav, to_16k
from engine.timing import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "e2e.json"
SPEECH_WAV = ROOT / "tests" / "data" / "speech_16k.wav"
RATE = SAMPLE_RATE
# Mouth region of the built-in avatar (fractions of the frame; dlib mouth landmarks x 0.35-0.63, y 0.62-0.73).
MOUTH_BOX = (0.33, 0.58, 0.67, 0.82)
ONSET_LEVEL = 1000  # |sample| above this (of 32767) = speech
FPS_TARGET = 29.0


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _ms(x: float | None) -> str:
    return "   -  " if x is None else f"{1000 * x:6.0f}"


def decoder_weights(overrides: list[str]) -> str:
    """ "trained" or "random": the onset->motion figure means little with random stand-in weights."""
    from engine.runtime import BUILTIN_CHECKPOINT

    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("decoder.checkpoint=")]
    if chosen:
        return "random" if chosen[-1] == "random" else f"trained ({chosen[-1]})"
    return "trained (built-in)" if BUILTIN_CHECKPOINT.is_file() else "random (built-in checkpoint missing)"


# --------------------------------------------------------------------------------------------------- server
class ServerProcess:
    """``python -m streaming.serve_command --port 0`` in a subprocess; the URL is read from its first output line."""

    def __init__(self, extra_args: list[str], max_sessions: int) -> None:
        self.args = [
            sys.executable,
            "-m",
            "streaming.serve_command",
            "--port",
            "0",
            "--max-sessions",
            str(max_sessions),
            *extra_args,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []

    def __enter__(self) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 180
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = re.search(r"serving on (http://\S+)", line)
            if match:
                self.url = match.group(1).replace("http://", "ws://").rstrip("/") + "/ws"
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.proc.kill()
            raise RuntimeError("server did not start (see its output above)")
        threading.Thread(target=self._drain, daemon=True).start()  # a full pipe would block the server
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            del self.log[:-200]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def sessions_freed(ws_url: str, timeout: float = 30.0) -> None:
    """Wait until the server's ``/healthz`` reports no session: a closed client's session is freed a moment after
    it closes, and a level that starts before would be refused (``server_full`` at ``--max-sessions 1``)."""
    from benchmarks.nodes import healthz

    url = ws_url.replace("ws://", "http://").removesuffix("/ws")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = await asyncio.to_thread(healthz, url)
        if health is not None and health.get("sessions") == 0:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server still holds a session {timeout:g} s after its clients closed")


# ------------------------------------------------------------------------------------------------- analysis
def mouth_grey(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (
        int(MOUTH_BOX[0] * w),
        int(MOUTH_BOX[1] * h),
        int(MOUTH_BOX[2] * w),
        int(MOUTH_BOX[3] * h),
    )
    return image[y0:y1, x0:x1].astype(np.float32).mean(axis=2)


def motion_onset(frames: list[Any], onset: float, horizon: float = 1.5) -> float | None:
    """Arrival time of the first frame after ``onset`` whose mouth departs from the preceding silence."""
    before = [f for f in frames if onset - 1.0 <= f.arrival < onset - 0.05]
    after = [f for f in frames if onset <= f.arrival <= onset + horizon]
    if len(before) < 10 or not after:
        return None
    ref = np.mean([mouth_grey(f.image) for f in before], axis=0)
    jitter = max(float(np.abs(mouth_grey(f.image) - ref).mean()) for f in before)
    threshold = max(1.5 * jitter, jitter + 1.0)
    for f in after:
        if float(np.abs(mouth_grey(f.image) - ref).mean()) > threshold:
            return f.arrival
    return None


# ------------------------------------------------------------------------------------------------- measures
async def measure_latency(url: str, speech: np.ndarray, trials: int, styles_trials: int,
                          arrival_buffers: bool = True) -> dict[str, Any]:
    """Speech onset -> mouth motion over ``trials`` bursts, then style-switch latency in silence."""
    burst = speech[: int(1.2 * RATE)]
    gap = np.zeros(int(1.6 * RATE), np.int16)
    mic = MicrophoneTrack()
    onsets: list[int] = []
    mic.feed(np.zeros(int(2.0 * RATE), np.int16))  # warm-up silence
    for _ in range(trials):
        first = mic.feed(burst)
        loud = np.nonzero(np.abs(burst.astype(np.int32)) > ONSET_LEVEL)[0]
        onsets.append(first + int(loud[0]))
        mic.feed(gap)
    client = StyleTalkClient(url, keep_frames=100_000, arrival_buffers=arrival_buffers)
    welcome = await client.connect()
    await client.start_media(mic)
    total = mic.pending_samples
    while mic.samples_sent < total:  # noqa: ASYNC110 - the track's sender owns this count; 0.2 s is plenty
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    frames = list(client.recording.frames)
    latencies = []
    for offset in onsets:
        sent = mic.time_of_sample(offset)
        arrived = motion_onset(frames, sent) if sent is not None else None
        if arrived is not None:
            latencies.append(arrived - sent)

    # Style switches (transition 0) in silence: reply's landing frame -> first received frame at/after it.
    stats = await client.request("stats")
    first_index = stats["transport"]["first_video_index"]
    styles = welcome["styles"]
    if len(styles) < 2:  # only the neutral fallback is built in: add a second style by upload
        rng = np.random.default_rng(1)
        buf = io.BytesIO()
        np.save(buf, (0.3 * rng.standard_normal((48, 64))).astype(np.float32))
        styles = (await client.request("upload_style", name="bench", format="npy", data=buf.getvalue()))[
            "styles"
        ]
    switch = []
    replies = []
    for i in range(styles_trials if len(styles) > 1 else 0):
        name = styles[(i + 1) % len(styles)]
        sent_at = time.monotonic()
        result = await client.request("set_style", name=name, transition_ms=0)
        replies.append(time.monotonic() - sent_at)
        landing = result["frame"]
        await asyncio.sleep(1.5)  # the switch lands after the engine's output delay
        arrivals = [
            f.arrival
            for f in client.recording.frames
            if f.arrival >= sent_at and f.index(first_index) >= landing
        ]
        if arrivals:
            switch.append(min(arrivals) - sent_at)
    engine = (await client.request("stats"))["engine"]
    await client.close()
    return {
        "onset_to_motion_s": latencies,
        "onset_trials": trials,
        "onset_detected": len(latencies),
        "style_switch_s": switch,
        "style_reply_s": replies,
        "engine_delay_ms": engine.get("delay_ms"),
        "engine_latency_ms": engine.get("latency_ms"),
        "engine_av_offset_ms": engine.get("av_offset_ms"),
    }


def process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) a process has used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int | None) -> list[int]:
    """The processes started under ``pid`` (the server's recognizer and model worker processes), from /proc."""
    out: list[int] = []
    todo = [pid] if pid is not None else []
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def tree_cpu_s(pid: int | None) -> dict[int, float]:
    """CPU seconds so far of ``pid`` and each of its descendants (pid -> seconds)."""
    out = {}
    for p in ([pid] if pid is not None else []) + descendants(pid):
        cpu = process_cpu_s(p)
        if cpu is not None:
            out[p] = cpu
    return out


async def measure_level(url: str, speech: np.ndarray, n: int, warmup: float, window: float,
                        server_pid: int | None = None) -> dict[str, Any]:
    """``n`` concurrent sessions streaming looped speech; fps received and fresh fps per session, and the CPU
    the server used meanwhile (cores: CPU seconds per wall second)."""
    clients = [StyleTalkClient(url, keep_frames=2000) for _ in range(n)]
    for c in clients:
        await c.connect()
    await asyncio.gather(*(c.start_media(MicrophoneTrack(speech, loop=True)) for c in clients))
    await asyncio.sleep(warmup)
    before = await asyncio.gather(*(c.request("stats") for c in clients))
    t0 = time.monotonic()
    cpu0 = process_cpu_s(server_pid)
    tree0 = tree_cpu_s(server_pid)
    await asyncio.sleep(window)
    after = await asyncio.gather(*(c.request("stats") for c in clients))
    t1 = time.monotonic()
    cpu1 = process_cpu_s(server_pid)
    tree1 = tree_cpu_s(server_pid)
    sessions = []
    for c, b, a in zip(clients, before, after, strict=True):
        sent = a["engine"]["frames_sent"] - b["engine"]["frames_sent"]
        late = a["engine"]["late_frames"] - b["engine"]["late_frames"]
        received = sum(1 for f in c.recording.frames if t0 <= f.arrival <= t1)
        sessions.append(
            {
                "received_fps": received / (t1 - t0),
                "fresh_fps": (sent - late) / (t1 - t0),
                "late_fraction": late / sent if sent else None,
                "total_p50_ms": (a["engine"]["latency_ms"].get("total") or {}).get("p50"),
            }
        )
    await asyncio.gather(*(c.close() for c in clients))
    ok = all(s["received_fps"] >= FPS_TARGET and s["fresh_fps"] >= FPS_TARGET for s in sessions)
    cores = (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None
    # the server with its child processes (recognizers, model workers) that ran through the whole window
    tree = sum(tree1[p] - tree0[p] for p in tree1 if p in tree0) / (t1 - t0) if tree1 else None
    return {"sessions": n, "ok": ok, "server_cpu_cores": cores, "server_tree_cpu_cores": tree,
            "load_average": list(os.getloadavg()), "per_session": sessions}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pcm, rate = read_wav(SPEECH_WAV)
    speech = to_16k(pcm, rate)
    out: dict[str, Any] = {}
    with ServerProcess(args.set_args, max_sessions=args.max_sessions) as server:
        print(f"server: {server.url}", flush=True)
        out["latency"] = (
            {"onset_to_motion_s": [], "onset_trials": 0, "style_switch_s": [], "engine_delay_ms": None}
            if args.sessions_only else await measure_latency(server.url, speech, args.trials, args.style_trials,
                                                             not args.aiortc_buffers)
        )
        await sessions_freed(server.url)  # the latency client's session must be gone before level 1
        levels = []
        for n in range(1, args.max_sessions + 1):
            pid = server.proc.pid if server.proc is not None else None
            level = await measure_level(server.url, speech, n, args.warmup, args.window, pid)
            levels.append(level)
            fps = ", ".join(f"{s['received_fps']:.1f}/{s['fresh_fps']:.1f}" for s in level["per_session"])
            cores, tree = level["server_cpu_cores"], level["server_tree_cpu_cores"]
            print(
                f"  {n} session(s): received/fresh fps {fps}; server CPU "
                f"{'-' if cores is None else f'{cores:.2f}'} cores (with its child processes "
                f"{'-' if tree is None else f'{tree:.2f}'}), load {level['load_average'][0]:.1f} -> "
                f"{'ok' if level['ok'] else 'below target'}",
                flush=True,
            )
            if not level["ok"] and not args.all_levels:
                break
            await asyncio.sleep(1.0)
        out["levels"] = levels
    return out


def model_workers(set_args: list[str]) -> dict[str, int]:
    """The server's ``decoder.workers`` (model worker processes; 0 = the model thread) and ``decoder.worker_nice``
    under these overrides."""
    from engine.config import load_config

    overrides = dict(item.split("=", 1) for item in set_args if "=" in item)
    keys = ("decoder.workers", "decoder.worker_nice")
    dc = load_config(None, {k: v for k, v in overrides.items() if k in keys}).decoder
    return {"workers": dc.workers, "worker_nice": dc.worker_nice}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="speech bursts for onset->motion")
    parser.add_argument("--style-trials", type=int, default=10)
    parser.add_argument("--max-sessions", type=int, default=6, help="highest concurrency level tried")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring a level")
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured per level")
    parser.add_argument("--quick", action="store_true", help="6 trials, 5 style switches, 5 s windows")
    parser.add_argument("--sessions-only", action="store_true",
                        help="skip onset/style latency: only the concurrency levels (most sessions at >= 29 fresh fps)")
    parser.add_argument("--all-levels", action="store_true", help="measure every level up to --max-sessions, "
                        "not only until the first one below target")
    parser.add_argument(
        "--set", dest="set_args_raw", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for the server, e.g. --serve-arg=--event-loop=asyncio (repeatable)")
    parser.add_argument("--aiortc-buffers", action="store_true",
                        help="the latency client receives through aiortc's own jitter buffers (one video frame and "
                             "4 audio packets behind; default: arrival buffers, streaming/rtp_latency.py)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.style_trials, args.window, args.warmup = 6, 5, 5.0, 2.0
    args.set_args = [x for item in args.set_args_raw for x in ("--set", item)] + args.serve_arg

    started = time.time()
    load_at_start = list(os.getloadavg())
    data = asyncio.run(run(args))
    lat = data["latency"]
    onset = lat["onset_to_motion_s"]
    switch = lat["style_switch_s"]
    passing = [lv["sessions"] for lv in data["levels"] if lv["ok"]]
    passing = [n for n in passing if all(m in passing for m in range(1, n))]  # every level up to n passed
    one = data["levels"][0]["per_session"][0] if data["levels"] else {}
    summary = {
        "onset_to_motion_ms": {"p50": _pct(onset, 50), "p95": _pct(onset, 95), "n": len(onset)},
        "style_switch_ms": {"p50": _pct(switch, 50), "p95": _pct(switch, 95), "n": len(switch)},
        "received_fps_1_session": one.get("received_fps"),
        "fresh_fps_1_session": one.get("fresh_fps"),
        "max_sessions_at_29fps": max(passing) if passing else 0,
    }
    for key in ("onset_to_motion_ms", "style_switch_ms"):
        summary[key] = {
            k: (v * 1000 if isinstance(v, float) and k != "n" else v) for k, v in summary[key].items()
        }

    print()
    print("| metric | p50 | p95 | n |")
    print("|---|---|---|---|")
    print(
        f"| speech onset -> mouth motion (ms) | {_ms(_pct(onset, 50))} | {_ms(_pct(onset, 95))} | "
        f"{len(onset)}/{lat['onset_trials']} |"
    )
    print(
        f"| style switch -> first new-style frame (ms) | {_ms(_pct(switch, 50))} | {_ms(_pct(switch, 95))} | "
        f"{len(switch)} |"
    )
    if lat["engine_delay_ms"] is not None:
        print(f"engine output delay (constant, included above): {lat['engine_delay_ms']:.0f} ms")
    if one:
        print(
            f"frames/s received (1 session): {one['received_fps']:.1f}"
            f"  (fresh on server: {one['fresh_fps']:.1f})"
        )
    print(f"max concurrent sessions at >= {FPS_TARGET:g} fps received and fresh: {summary['max_sessions_at_29fps']}")
    for level in data["levels"]:
        cores = level["server_cpu_cores"]
        if cores is not None:
            print(f"  {level['sessions']} session(s): server {cores:.2f} CPU cores ({cores / level['sessions']:.2f} "
                  "per session)")

    result = {
        **run_header("e2e", started, load_at_start),
        "decoder_weights": decoder_weights(args.set_args_raw),
        "server_overrides": args.set_args_raw,
        "model_workers": model_workers(args.set_args_raw),  # {"workers": 2, "worker_nice": 5}
        "server_args": args.serve_arg,
        "client_buffers": "aiortc" if args.aiortc_buffers else "arrival",
        "summary": summary,
        **data,
    }
    write_results(args.out, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
