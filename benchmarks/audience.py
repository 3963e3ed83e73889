"""An audience through Janus: engine CPU and frame timing at 1, 10, 50 viewers; Janus CPU per viewer; viewer
join time; viewer fps; the latency a viewer sees on top of the presenter's own view; how many viewers get >= 29 fps.

``python -m benchmarks.audience`` (``--counts 1,10,50 --seconds 10``) starts its own Janus (free ports) and
``styletalk-live serve --janus`` as a *separate process* (its CPU, with any child processes, is the engine's),
a presenter client looping the test speech (tests/data/speech_16k.wav) with a room, then grows the audience step
by step. Each step waits for the new viewers to join, settles 4 s, then measures over ``--seconds``.

The audience of a step of N viewers: one *probe* viewer in this process, up to ``--full`` (3) *full* viewers,
each a ``python -m clients.viewer`` process that decodes VP8 and keeps the mouth box of every frame (they prove
the avatar is seen moving), and the rest *count-only* viewers (:mod:`clients.count_only`: the whole receiving
path, ICE, DTLS-SRTP, depacketisation, jitter buffer, but no decoding), ``--per-process`` (10) per process: 50
decoding viewers swamp 2 cores (~17 % of a core each at 30 fps), a counting one costs ~3.5 %. Viewer processes
run at the benchmark's own niceness (``--viewer-nice`` adds to it): niced crowds starved behind the other users
of the shared machine and measured their own backlog (seconds), not Janus.

Figures per step (``steps`` in the JSON; each field is described in ``fields``):

- engine: CPU (% of one core, from /proc, serve and its children), CPU ms per frame it published (flat in N
  when the room is encoded once), its own fps and the publisher's fps, VP8 encode p50;
- Janus CPU, and its increase per added viewer (``janus_cpu_pct_per_viewer``); the viewers' own CPU;
- viewers: fps (median, min), how many reach 29 fps, how many receive >= 95 % of what the publisher sent in
  the window (the fan-out's own share: under load the engine itself may publish < 29 fps);
- join: ``watch`` sent -> first frame (a keyframe), median over the step's new viewers;
- added latency: for every engine frame index both received, the arrival at a viewer minus the arrival at the
  presenter's own client (its own peer), both ``time.monotonic()`` (one clock for every process of the
  machine). The presenter's frames map to indices by its ``first_video_index``; a viewer's by the room
  publisher's ``frame_map`` (polled every second) and :mod:`clients.frame_index`. The headline figure is the
  probe's: presenter and probe both count without decoding, in this process, so the difference is the fan-out
  path alone (the second encode, Janus, the viewer's receiving) and not decode time or another process'
  scheduling; the full and count-only viewer processes' figures are given beside it.

Writes ``benchmarks/results/audience.json`` (``--out``).
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
from typing import Any

import numpy as np

from benchmarks.results_io import RESULTS, run_header, write_results
from clients.client import MicrophoneTrack, StyleTalkClient, read_wav, to_16k
from clients.count_only import FrameLog
from clients.frame_index import added_latency, arrival_by_index, find_offset, indices_of, merge_frame_maps
from clients.viewer import RoomViewer, join_counting
from clients.viewer_fleet import CrowdProcess, ViewerProcess, spawn_crowd, spawn_viewers, stop_viewers
from streaming.janus_config import janus_command, write_config

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "data" / "speech_16k.wav"
MOUTH = (0.33, 0.58, 0.67, 0.82)
TICK = os.sysconf("SC_CLK_TCK")
ENGINE_COUNTERS = ("late_frames", "dropped_frames", "recognizer_restarts", "errors")
FULL_RATE = 29.0  # fps a viewer must reach
DELIVERED = 0.95  # share of the published frames a viewer must receive to count as fully served

FIELDS = {
    "viewers": "viewers in the room during the window: the probe (count-only, in the benchmark process) + full "
               "+ count-only viewer processes",
    "full_viewers": "of which decode VP8 and keep the mouth box (clients.viewer processes)",
    "engine_cpu_pct": "serve process and its children, % of one core over the window",
    "engine_cpu_ms_per_frame": "engine CPU per frame the room's publisher sent: flat in viewers = one encode",
    "engine_fps": "the presenter session's own fps (engine stats)",
    "engine_counters": "the presenter session's late/dropped frames, recognizer restarts (a starved engine shows a "
                       "still face) and errors since it started",
    "publisher_fps": "frames the room's RTP publisher encoded and sent per second in the window",
    "vp8_encode_ms_p50": "the publisher's VP8 encode time, median of its last 300",
    "janus_cpu_pct": "Janus, % of one core over the window",
    "viewer_fps_median": "frames per second received by the viewers in the window (full and count-only)",
    "viewers_at_29fps": "viewers receiving >= 29 fps in the window",
    "viewers_served": "viewers receiving >= 95 % of the frames the publisher sent in the window",
    "join_s_median": "watch sent -> first frame (a keyframe), the step's new viewers",
    "added_latency_ms": "the fan-out's added latency: probe viewer arrival - presenter arrival of the same engine "
                        "frame (both count-only, in the benchmark process, arrival = frame assembled): p50, p95, "
                        "frames",
    "added_latency_ms_full": "the same for the full viewers (their arrival after decoding, in their own processes)",
    "added_latency_ms_count_only": "the same for the count-only viewer processes",
    "mouth_moving_full": "per full viewer: mouth-box spread in the window (p90 deviation from its median look, "
                         "grey levels; ~0 = a still mouth)",
    "full_viewer_cpu_pct_each": "CPU of one full (decoding) viewer process, % of one core",
    "count_only_viewer_cpu_pct_each": "CPU of the count-only viewer processes per viewer, % of one core",
    "loadavg": "1/5/15-min load average at the end of the window",
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants (an engine may run model work in child processes)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += [c for c, pp in parents.items() if pp == p]
    return total


async def join(port: int, room: dict) -> tuple[RoomViewer, float | None]:
    """A new (decoding) viewer in this process and its join time (None: no frame within 30 s)."""
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


def presenter_by_index(log: FrameLog, first_index: int) -> dict[int, float]:
    """{engine index: arrival} of the presenter's own (count-only) frames: its peer stamps the engine's media
    clock (90 kHz, 3000 per frame) and the first frame it sent is ``first_video_index``."""
    n = len(log)
    index = first_index + np.round(np.asarray(log.rtp[:n], np.float64) / 3000).astype(np.int64)
    return arrival_by_index(index, np.asarray(log.arrival[:n]))


def percentiles_ms(values: list[np.ndarray]) -> dict[str, float | int | None]:
    both = np.concatenate(values) if values else np.zeros(0)
    if len(both) == 0:
        return {"p50": None, "p95": None, "frames": 0}
    return {"p50": round(float(np.percentile(both, 50)) * 1000, 1),
            "p95": round(float(np.percentile(both, 95)) * 1000, 1), "frames": len(both)}


def in_window(arrival: np.ndarray, t0: float, t1: float) -> np.ndarray:
    return (arrival >= t0) & (arrival <= t1)


def mouth_spread(grey: np.ndarray) -> float | None:
    """p90 of the mouth box's mean absolute deviation from its median look (grey levels; ~0 = still)."""
    if len(grey) < 10:
        return None
    median = np.median(grey, axis=0)
    return round(float(np.percentile(np.abs(grey - median).mean(axis=1), 90)), 2)


async def poll_room(presenter: StyleTalkClient, maps: list[list[list[int]]], stop: asyncio.Event) -> None:
    """The publisher's frame map every second (it holds the newest 300 frames)."""
    while not stop.is_set():
        try:
            room = (await presenter.request("stats")).get("room") or {}
            if room.get("publisher"):
                maps.append(room["publisher"]["frame_map"])
        except Exception:  # noqa: BLE001, S110 - a missed poll leaves a gap the next one mostly covers
            pass
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, tmp: Path, janus: subprocess.Popen[bytes],
              engine: subprocess.Popen[bytes], port: int) -> dict[str, Any]:
    full: list[ViewerProcess] = []
    crowd: list[CrowdProcess] = []
    steps: list[dict[str, Any]] = []
    windows: list[tuple[float, float, int, int, int, int]] = []  # t0, t1, full, crowd procs, new from (full, crowd)
    maps: list[list[list[int]]] = []
    stop_polling = asyncio.Event()
    deadline = time.monotonic() + 180
    presenter = None
    while presenter is None:
        if engine.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("serve did not start: " + (tmp / "serve.log").read_text()[-2000:])
        try:
            presenter = StyleTalkClient(f"ws://127.0.0.1:{port}/ws", keep_frames=60)
            await presenter.connect()
        except OSError:
            presenter = None
            await asyncio.sleep(1.0)
    pcm, rate = read_wav(SPEECH)
    # the presenter's own view and the probe viewer (both here, both counting without decoding): the same engine
    # frame seen by both at the same point of the same receiving code, so their difference is the fan-out's
    await presenter.start_media(MicrophoneTrack(to_16k(pcm, rate), loop=True), count_only=True)
    for _ in range(1200):
        if len(presenter.counted["video"]) >= 30:
            break
        await asyncio.sleep(0.1)
    first_index = (await presenter.request("stats"))["transport"]["first_video_index"]
    room = await presenter.request("open_room")
    link = f"http://127.0.0.1:{port}/watch/{room['room']}?t={room['viewer_token']}"
    poller = asyncio.get_running_loop().create_task(poll_room(presenter, maps, stop_polling))
    probe = await join_counting(f"ws://127.0.0.1:{port}/ws/watch", room["room"], room["viewer_token"])
    try:
        for n in args.counts:
            new_full, new_crowd = len(full), len(crowd)
            want_full = min(args.full, n - 1)
            if len(full) < want_full:
                full += spawn_viewers(link, want_full - len(full), tmp / "viewers", MOUTH, seconds=3600,
                                      first=len(full), nice=args.viewer_nice)
            have = sum(c.viewers for c in crowd)
            if n - 1 - want_full > have:
                crowd += spawn_crowd(link, n - 1 - want_full - have, args.per_process, tmp / "viewers", seconds=3600,
                                     first=len(crowd), nice=args.viewer_nice)
            everyone: list[ViewerProcess] = [*full, *crowd]
            for _ in range(240):  # up to 2 min for the processes to start and join
                if all(p.joined() or p.proc.poll() is not None for p in everyone):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(4.0)  # first keyframes, decoder warm-up
            s0 = await presenter.request("stats")
            f0, c0 = sum(cpu_seconds(p.proc.pid) for p in full), sum(cpu_seconds(p.proc.pid) for p in crowd)
            e0, j0, t0 = cpu_seconds(engine.pid), cpu_seconds(janus.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            e1, j1, t1 = cpu_seconds(engine.pid), cpu_seconds(janus.pid), time.monotonic()
            f1, c1 = sum(cpu_seconds(p.proc.pid) for p in full), sum(cpu_seconds(p.proc.pid) for p in crowd)
            n_crowd = sum(c.viewers for c in crowd)
            s1 = await presenter.request("stats")
            pub0, pub1 = s0["room"]["publisher"], s1["room"]["publisher"]
            published = pub1["frames"] - pub0["frames"]
            windows.append((t0, t1, len(full), len(crowd), new_full, new_crowd))
            step = {
                "viewers": 1 + len(full) + sum(c.viewers for c in crowd),
                "full_viewers": len(full),
                "room_viewers": s1["room"]["viewers"],
                "viewer_processes": len(everyone),
                "engine_cpu_pct": round(100 * (e1 - e0) / (t1 - t0), 1),
                "engine_cpu_ms_per_frame": round(1000 * (e1 - e0) / max(1, published), 2),
                "engine_fps": s1["engine"].get("fps"),
                "engine_counters": {k: s1["engine"].get(k) for k in ENGINE_COUNTERS},
                "publisher_fps": round(published / (t1 - t0), 2),
                "published_frames": published,
                "vp8_encode_ms_p50": pub1["encode_ms_p50"],
                "janus_cpu_pct": round(100 * (j1 - j0) / (t1 - t0), 1),
                "full_viewer_cpu_pct_each": round(100 * (f1 - f0) / (t1 - t0) / max(1, len(full)), 1),
                "count_only_viewer_cpu_pct_each": round(100 * (c1 - c0) / (t1 - t0) / n_crowd, 1) if n_crowd else None,
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
            steps.append(step)
            print(json.dumps(step), flush=True)
    finally:
        stop_polling.set()
        stop_viewers([*full, *crowd])
        await poller
        await presenter.close()
        await probe.close()
    table = merge_frame_maps(maps)
    presenter_at = presenter_by_index(presenter.counted["video"], first_index)
    # each viewer: its frames' arrivals, their engine indices, its join time
    n_probe = len(probe.video)
    viewers: list[dict[str, Any]] = [{
        "full": None, "proc": None, "summary": probe.summary(0.0), "grey": None,
        "arrival": np.asarray(probe.video.arrival[:n_probe]), "rtp": np.asarray(probe.video.rtp[:n_probe])}]
    for p in full:
        s = p.summary() if p.json_path.is_file() else {}
        arrival, grey = p.trace() if p.trace_path.is_file() else (np.zeros(0), np.zeros((0, 1), np.float32))
        rtp = p.rtp() if p.trace_path.is_file() else np.zeros(0, np.int64)
        viewers.append({"full": True, "proc": p, "summary": s, "arrival": arrival, "rtp": rtp, "grey": grey})
    for c in crowd:
        summaries = c.summaries() if c.json_path.is_file() else [{}] * c.viewers
        for k, s in enumerate(summaries):
            arrival, rtp = c.frames(k) if c.trace_path.is_file() else (np.zeros(0), np.zeros(0, np.int64))
            viewers.append({"full": False, "proc": c, "summary": s, "arrival": arrival, "rtp": rtp, "grey": None})
    aligned = []
    for v in viewers:
        offset, matches = find_offset(v["rtp"], table)
        v["index"] = indices_of(v["rtp"], table, offset) if offset is not None else np.full(len(v["rtp"]), -1)
        aligned.append(matches / max(1, len(v["rtp"])))
    for step, (t0, t1, n_full, n_crowd, new_full, new_crowd) in zip(steps, windows, strict=True):
        present = [v for v in viewers if v["proc"] is None or v["proc"] in full[:n_full]
                   or v["proc"] in crowd[:n_crowd]]
        new = [v for v in present if (v["proc"] is None and step is steps[0]) or v["proc"] in full[new_full:n_full]
               or v["proc"] in crowd[new_crowd:n_crowd]]
        fps = [float(in_window(v["arrival"], t0, t1).sum()) / (t1 - t0) for v in present]
        got = [int(in_window(v["arrival"], t0, t1).sum()) for v in present]
        joins = [v["summary"]["first_arrival"] - v["summary"]["watch_sent"] for v in new
                 if v["summary"].get("first_arrival") is not None]
        own_window = {i: t for i, t in presenter_at.items() if t0 <= t <= t1}
        lat: dict[bool | None, list[np.ndarray]] = {None: [], True: [], False: []}
        for v in present:
            if (v["index"] >= 0).any():
                lat[v["full"]].append(added_latency(arrival_by_index(v["index"], v["arrival"]), own_window))
        step.update({
            "viewer_fps_median": round(statistics.median(fps), 2) if fps else None,
            "viewer_fps_min": round(min(fps), 2) if fps else None,
            "viewers_at_29fps": sum(f >= FULL_RATE for f in fps),
            "viewers_served": sum(g >= DELIVERED * step["published_frames"] for g in got),
            "join_s_median": round(statistics.median(joins), 3) if joins else None,
            "joined_without_a_frame": len(new) - len(joins),
            "added_latency_ms": percentiles_ms(lat[None]),
            "added_latency_ms_full": percentiles_ms(lat[True]),
            "added_latency_ms_count_only": percentiles_ms(lat[False]),
            "mouth_moving_full": [mouth_spread(v["grey"][in_window(v["arrival"], t0, t1)])
                                  for v in present if v["full"]],
        })
    base = steps[0]
    per_viewer = [(s["janus_cpu_pct"] - base["janus_cpu_pct"]) / (s["viewers"] - base["viewers"])
                  for s in steps[1:] if s["viewers"] > base["viewers"]]
    return {"steps": steps, "janus_cpu_pct_per_viewer": [round(x, 2) for x in per_viewer],
            "most_viewers_all_at_29fps": max((s["viewers"] for s in steps
                                              if s["viewers_at_29fps"] == s["viewers"]), default=0),
            "most_viewers_all_served": max((s["viewers"] for s in steps if s["viewers_served"] == s["viewers"]),
                                           default=0),
            "frame_map_entries": len(table),
            "frames_aligned_to_engine_index": round(statistics.median(aligned), 3) if aligned else None}


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
        for key in ("added_latency_ms", "added_latency_ms_full", "added_latency_ms_count_only"):
            values = [s[key]["p50"] for s in steps if s[key]["p50"] is not None]
            row[key + "_p50"] = round(statistics.median(values), 1) if values else None
        row["loadavg_1min"] = round(statistics.median(s["loadavg"][0] for s in steps), 2)
        row["runs"] = len(steps)
        out[n] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1,10,50", type=lambda t: [int(c) for c in t.split(",")])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window of each step")
    parser.add_argument("--full", type=int, default=3, help="decoding viewers in every step (the rest count only)")
    parser.add_argument("--per-process", type=int, default=10, help="count-only viewers per process")
    parser.add_argument("--viewer-nice", type=int, default=0,
                        help="niceness added to the viewer processes (0: as the engine; niced crowds starved on "
                             "the loaded machine, 8 s behind at nice +5)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="whole runs (fresh Janus and engine each); the summary gives per-count medians")
    parser.add_argument("--out", default=str(RESULTS / "audience.json"))
    args = parser.parse_args(argv)
    started, load0 = time.time(), list(os.getloadavg())
    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            janus, engine, port = start_processes(Path(tmp))
            try:
                runs.append(asyncio.run(run(args, Path(tmp), janus, engine, port)))
            finally:
                engine.terminate()
                janus.terminate()
                for proc in (engine, janus):
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    result: dict[str, Any] = run_header("audience", started, load0)
    result.update(runs[0] if len(runs) == 1 else {"runs": runs, "median_per_count": median_per_count(runs)})
    result.update(
        settings={"counts": args.counts, "seconds": args.seconds, "full": args.full,
                  "per_process": args.per_process, "viewer_nice": args.viewer_nice, "repeat": args.repeat,
                  "data": "tests/data/speech_16k.wav looped by the presenter's client",
                  "viewers": "full = clients.viewer processes decoding VP8; count-only = clients.viewer "
                             "--count-only --viewers K processes (receive, assemble, count; no decoding)"},
        fields=FIELDS,
        uptime_before=uptime0, uptime_after=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    write_results(args.out, result, indent=1)
    summary = {k: v for k, v in result.items() if k not in ("steps", "runs", "fields")}
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
