"""An audience through Janus: engine CPU and frame timing at 1, 10, 50 viewers; Janus CPU per viewer; viewer
join time; the latency a viewer sees on top of the presenter's own view; how many viewers get >= 29 fps.

``python -m benchmarks.audience [--counts 1,10,50] [--seconds 8]`` starts its own Janus (free ports) and
``styletalk-live serve --janus`` as a *separate process* (so its CPU is the engine's alone), a presenter client
looping the test speech (tests/data/speech_16k.wav) with a room, then adds aiortc viewers step by step. Each
step waits for the new viewers' first frames, settles 2 s, then measures over ``--seconds``:

- engine process CPU (% of one core, from /proc) and the presenter's engine fps / the RTP publisher's encoded
  fps and VP8 encode time: flat in the viewer count when the room is encoded once;
- Janus CPU (% of one core) and its increase per added viewer;
- per viewer: received fps; the number of viewers at >= 29 fps;
- join time: ``watch`` sent -> first decoded frame (median of the step's new viewers);
- added latency: the mouth-region brightness signal of a viewer vs the presenter's own received video,
  cross-correlated on their arrival times (lag at the best correlation; positive = the viewer is later).

The viewers are ``python -m clients.viewer`` processes niced to 19 (:mod:`clients.viewer_fleet`), each leaving
a trace of its frames' arrivals and mouth box, read after the run; only the presenter and one probe viewer (for
the room's ``stats``) decode in this process. Decoding every viewer here starved this process (and with it the
presenter's connection) at 50 viewers. On a shared 2-core machine the viewers still compete with the engine for
the CPU, so viewer fps at high counts is a lower bound of what Janus delivers (the JSON records the load average).
Writes ``benchmarks/results/audience.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clients.client import MicrophoneTrack, StyleTalkClient, read_wav, to_16k
from clients.viewer import RoomViewer
from clients.viewer_fleet import ViewerProcess, spawn_viewers, stop_viewers
from streaming.janus_config import janus_command, write_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SPEECH = ROOT / "tests" / "data" / "speech_16k.wav"
MOUTH = (0.33, 0.58, 0.67, 0.82)
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def trace_signal(arrival: np.ndarray, grey: np.ndarray, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """A viewer process's mouth signal (mean grey of the box per frame) in ``[t0, t1]``."""
    sel = (arrival >= t0) & (arrival <= t1)
    return arrival[sel], grey[sel].mean(axis=1).astype(np.float64) if sel.any() else np.zeros(0)


def mouth_signal(frames: list, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    sel = [f for f in frames if t0 <= f.arrival <= t1]
    if not sel:
        return np.zeros(0), np.zeros(0)
    h, w = sel[0].image.shape[:2]
    x0, y0, x1, y1 = int(MOUTH[0] * w), int(MOUTH[1] * h), int(MOUTH[2] * w), int(MOUTH[3] * h)
    return (np.array([f.arrival for f in sel]),
            np.array([f.image[y0:y1, x0:x1].mean() for f in sel], np.float64))


def added_latency_ms(presenter: tuple[np.ndarray, np.ndarray], viewer: tuple[np.ndarray, np.ndarray],
                     t0: float, t1: float) -> float | None:
    """Lag (ms) maximising the correlation of the viewer's mouth signal with the presenter's (10 ms grid)."""
    (ta, a), (tb, b) = presenter, viewer
    if len(a) < 30 or len(b) < 30 or a.std() == 0 or b.std() == 0:
        return None
    grid = np.arange(t0 + 0.6, t1 - 0.6, 0.01)
    ra = np.interp(grid, ta, a)
    best, best_lag = -2.0, 0.0
    for lag_ms in range(-200, 501, 10):
        rb = np.interp(grid + lag_ms / 1000, tb, b)
        if ra.std() == 0 or rb.std() == 0:
            continue
        c = float(np.corrcoef(ra, rb)[0, 1])
        if c > best:
            best, best_lag = c, lag_ms
    return best_lag if best > 0.5 else None


async def join(port: int, room: dict) -> tuple[RoomViewer, float | None]:
    """A new viewer and its join time (None: no frame within 30 s; it stays, counted at 0 fps)."""
    viewer = RoomViewer(f"ws://127.0.0.1:{port}/ws/watch", keep_frames=600, auto_rewatch=False)
    await viewer.connect()
    t = time.monotonic()
    await viewer.watch(room["room"], room["viewer_token"])
    try:
        await viewer.wait_frames(1, timeout=30)
    except TimeoutError:
        return viewer, None
    return viewer, viewer.recording.frames[0].arrival - t


def start_processes(tmp: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]:
    """Janus and ``styletalk-live serve --janus`` as separate processes; returns (janus, engine, http port)."""
    ws_port = free_port()
    write_config(tmp / "janus", ws_port=ws_port, rtp_ports="44000-44499", mount_ports="44500-44599")
    janus = subprocess.Popen(janus_command(tmp / "janus"), stdout=open(tmp / "janus.log", "wb"),  # noqa: SIM115
                             stderr=subprocess.STDOUT)
    time.sleep(2.0)
    port = free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "serve", "--port", str(port), "--janus", f"ws://127.0.0.1:{ws_port}",
         "--set", "avatar.head_motion=0"], cwd=ROOT, stdout=open(tmp / "serve.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT)
    return janus, engine, port


async def run(counts: list[int], seconds: float, tmp: Path, janus: subprocess.Popen[bytes],
              engine: subprocess.Popen[bytes], port: int) -> dict:
    procs: list[ViewerProcess] = []
    probe: RoomViewer | None = None
    steps = []
    windows: list[tuple[float, float, int, int, tuple[np.ndarray, np.ndarray]]] = []  # t0, t1, viewers, new from
    try:
        deadline = time.monotonic() + 180
        presenter = None
        while presenter is None:
            if engine.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("serve did not start: " + (tmp / "serve.log").read_text()[-2000:])
            try:
                presenter = StyleTalkClient(f"ws://127.0.0.1:{port}/ws", keep_frames=2000)
                await presenter.connect()
            except OSError:
                presenter = None
                await asyncio.sleep(1.0)
        pcm, rate = read_wav(SPEECH)
        await presenter.start_media(MicrophoneTrack(to_16k(pcm, rate), loop=True))
        await presenter.wait_frames(30, timeout=120)
        room = await presenter.request("open_room")
        link = f"http://127.0.0.1:{port}/watch/{room['room']}?t={room['viewer_token']}"
        probe, probe_join = await join(port, room)  # viewer 1: in this process, for the room's stats
        for n in counts:
            first_new = len(procs)
            while len(procs) < n - 1:  # in batches of 10: the room admits 10 joins/s (bursts of 30)
                batch = min(10, n - 1 - len(procs))
                procs += spawn_viewers(link, batch, tmp / "viewers", MOUTH, seconds=3600, first=len(procs))
                await asyncio.sleep(1.0)
            for _ in range(240):  # up to 2 min for the processes to start and join
                if all(p.joined() or p.proc.poll() is not None for p in procs):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(4.0)  # first keyframes, decoder warm-up
            stats0 = await probe.request("stats")
            e0, j0, t0 = cpu_seconds(engine.pid), cpu_seconds(janus.pid), time.monotonic()
            probe0 = probe.recording.frames_total
            await asyncio.sleep(seconds)
            e1, j1, t1 = cpu_seconds(engine.pid), cpu_seconds(janus.pid), time.monotonic()
            stats1 = await probe.request("stats")
            engine_stats = (await presenter.request("stats"))["engine"]
            pub0, pub1 = stats0["publisher"], stats1["publisher"]
            windows.append((t0, t1, len(procs), first_new, mouth_signal(presenter.recording.frames, t0, t1)))
            step = {
                "viewers": len(procs) + 1,
                "engine_cpu_pct": round(100 * (e1 - e0) / (t1 - t0), 1),
                "janus_cpu_pct": round(100 * (j1 - j0) / (t1 - t0), 1),
                "engine_fps": engine_stats.get("fps"),
                "publisher_fps": round((pub1["frames"] - pub0["frames"]) / (t1 - t0), 2),
                # the engine's CPU per frame it published: its CPU % alone moves with the fps the loaded machine
                # lets it reach, this does not
                "engine_cpu_ms_per_frame": round(1000 * (e1 - e0) / max(1, pub1["frames"] - pub0["frames"]), 2),
                "vp8_encode_ms_p50": pub1["encode_ms_p50"],
                "probe_fps": round((probe.recording.frames_total - probe0) / (t1 - t0), 2),
                "loadavg": os.getloadavg(),
            }
            steps.append(step)
            print(json.dumps(step), flush=True)
    finally:
        stop_viewers(procs)
        if probe is not None:
            await probe.close()
    # the viewer processes' records: fps, join time and added latency per step
    traces = [p.trace() if p.trace_path.is_file() else (np.zeros(0), np.zeros((0, 1), np.float32)) for p in procs]
    summaries = [p.summary() if p.json_path.is_file() else {} for p in procs]
    for step, (t0, t1, n, first_new, own) in zip(steps, windows, strict=True):
        fps = [float(((arr >= t0) & (arr <= t1)).sum()) / (t1 - t0) for arr, _ in traces[:n]] + [step["probe_fps"]]
        joins = [s["first_arrival"] - s["watch_sent"] for s in summaries[first_new:n]
                 if s.get("first_arrival") is not None]
        if first_new == 0 and probe_join is not None:
            joins.append(probe_join)
        lat = [added_latency_ms(own, trace_signal(arr, grey, t0, t1), t0, t1) for arr, grey in traces[:3]]
        step.update({
            "viewer_fps_median": round(statistics.median(fps), 2),
            "viewer_fps_min": round(min(fps), 2),
            "viewers_at_29fps": sum(f >= 29 for f in fps),
            "join_s_median": round(statistics.median(joins), 3) if joins else None,
            "joined_without_a_frame": sum(s.get("first_arrival") is None for s in summaries[first_new:n]),
            "added_latency_ms": [x for x in lat if x is not None],
        })
    base = steps[0]
    per_viewer = [(s["janus_cpu_pct"] - base["janus_cpu_pct"]) / (s["viewers"] - base["viewers"])
                  for s in steps[1:] if s["viewers"] > base["viewers"]]
    return {"steps": steps, "janus_cpu_pct_per_viewer": [round(x, 2) for x in per_viewer],
            "most_viewers_all_at_29fps": max((s["viewers"] for s in steps
                                              if s["viewers_at_29fps"] == s["viewers"]), default=0)}


MEDIAN_KEYS = ("engine_cpu_pct", "engine_cpu_ms_per_frame", "janus_cpu_pct", "publisher_fps", "viewer_fps_median",
               "join_s_median")


def median_per_count(runs: list[dict]) -> dict[int, dict[str, float | None]]:
    """Per viewer count, the median over runs of each step figure (and of the load average's 1-min value)."""
    out: dict[int, dict[str, float | None]] = {}
    for step0 in runs[0]["steps"]:
        n = step0["viewers"]
        steps = [s for r in runs for s in r["steps"] if s["viewers"] == n]
        row: dict[str, float | None] = {}
        for key in MEDIAN_KEYS:
            values = [s[key] for s in steps if s.get(key) is not None]
            row[key] = round(statistics.median(values), 2) if values else None
        row["loadavg_1min"] = round(statistics.median(s["loadavg"][0] for s in steps), 2)
        row["runs"] = len(steps)
        out[n] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1,10,50")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="whole runs (fresh Janus and engine each); the summary gives per-count medians")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            janus, engine, port = start_processes(Path(tmp))
            try:
                runs.append(asyncio.run(run(counts, args.seconds, Path(tmp), janus, engine, port)))
            finally:
                engine.terminate()
                janus.terminate()
                for proc in (engine, janus):
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    result = runs[0] if len(runs) == 1 else {"runs": runs, "median_per_count": median_per_count(runs)}
    result.update(settings={"counts": counts, "seconds": args.seconds, "repeat": args.repeat,
                            "data": "tests/data/speech_16k.wav looped",
                            "machine": "shared 2-core; viewers: clients.viewer processes at nice 19 "
                                       "(+ 1 probe viewer in the benchmark process)"},
                  uptime=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audience.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("steps", "runs")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
