"""Beyond one machine, on loopback: two engine nodes, two Janus instances, rooms placed by the rule.

``python -m benchmarks.nodes [--viewers-per-room 4] [--seconds 15]`` starts two Janus instances and two
``styletalk-live serve --janus A,B --max-sessions 1`` processes (the engine nodes), places two presenters with
:mod:`clients.placement` (the rule of :mod:`streaming.placement` over the nodes' ``/healthz``), each looping the
test speech (tests/data/speech_16k.wav) in a room, then adds viewers to each room: one probe viewer in this
process (for the room's ``stats``) and ``N - 1`` ``clients.viewer`` processes niced to 19. Each node spreads its
room's viewers over both Janus instances. Over ``--seconds`` it measures:

- the CPU (% of one core, /proc) of each engine process and of each Janus process;
- each presenter's engine fps and its room's RTP publisher fps (one encode per room, sent to both Janus);
- per room: the viewers per Janus instance (the node's own count), the viewers' received fps and join time
  (``watch`` sent -> first frame);
- the placement (which node each presenter got, the ranking, skipped nodes) and the nodes' ``/healthz`` after.

Writes ``benchmarks/results/nodes.json`` with the load average. On the shared 2-core machine two engines, two
Janus and the viewers compete for the cores: the fps figures are lower bounds, the CPU split is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.audience import MOUTH, SPEECH, cpu_seconds, free_port, join
from benchmarks.results_io import RESULTS, write_results
from clients.client import MicrophoneTrack, StyleTalkClient, read_wav, to_16k
from clients.placement import connect_placed, place
from clients.viewer import RoomViewer
from clients.viewer_fleet import ViewerProcess, spawn_viewers, stop_viewers
from streaming.janus_config import janus_command, write_config

ROOT = Path(__file__).resolve().parents[1]


def start_janus(tmp: Path, name: str, base: int) -> tuple[subprocess.Popen[bytes], str]:
    ws_port = free_port()
    folder = tmp / f"janus-{name}"
    write_config(folder, ws_port=ws_port, rtp_ports=f"{base}-{base + 499}", mount_ports=f"{base + 500}-{base + 599}")
    proc = subprocess.Popen(janus_command(folder), stdout=open(tmp / f"janus-{name}.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    return proc, f"ws://127.0.0.1:{ws_port}"


def start_node(tmp: Path, name: str, janus: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "serve", "--port", str(port), "--janus", janus, "--max-sessions", "1",
         "--set", "avatar.head_motion=0"], cwd=ROOT, stdout=open(tmp / f"{name}.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def healthz(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:  # noqa: S310 - our own loopback node
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except OSError:
        return None


async def wait_nodes(nodes: dict[str, tuple[subprocess.Popen[bytes], str]], tmp: Path) -> None:
    deadline = time.monotonic() + 240
    for name, (proc, url) in nodes.items():
        while await asyncio.to_thread(healthz, url) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: " + (tmp / f"{name}.log").read_text()[-2000:])
            await asyncio.sleep(1.0)


async def presenter_on(ranked: list[str]) -> tuple[str, StyleTalkClient, dict[str, Any]]:
    node, client = await connect_placed(ranked, keep_frames=600)
    pcm, rate = read_wav(SPEECH)
    await client.start_media(MicrophoneTrack(to_16k(pcm, rate), loop=True))
    await client.wait_frames(30, timeout=120)
    return node, client, await client.request("open_room")


async def run(tmp: Path, nodes: dict[str, tuple[subprocess.Popen[bytes], str]],
              janus: dict[str, tuple[subprocess.Popen[bytes], str]], per_room: int, seconds: float) -> dict[str, Any]:
    await wait_nodes(nodes, tmp)
    urls = [url for _, url in nodes.values()]
    names = {url: name for name, (_, url) in nodes.items()}
    presenters: list[tuple[str, StyleTalkClient, dict[str, Any]]] = []
    placements = []
    probes: list[tuple[RoomViewer, float | None]] = []
    procs: dict[str, list[ViewerProcess]] = {}
    try:
        for _ in range(2):
            placement = await place(urls)
            placements.append({"chosen": names[placement.chosen.url],
                               "ranked": [names[n.url] for n in placement.ranked],
                               "skipped": [names.get(u, u) for u, _ in placement.skipped]})
            presenters.append(await presenter_on([n.url for n in placement.ranked]))
        for node, _, room in presenters:
            port = int(node.rsplit(":", 1)[1])
            probes.append(await join(port, room))
            link = f"{node}/watch/{room['room']}?t={room['viewer_token']}"
            procs[names[node]] = spawn_viewers(link, per_room - 1, tmp / f"viewers-{names[node]}", MOUTH,
                                               seconds=3600)
        everyone = [p for ps in procs.values() for p in ps]
        for _ in range(240):
            if all(p.joined() or p.proc.poll() is not None for p in everyone):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(4.0)  # first keyframes, decoder warm-up
        pids = {**{n: p.pid for n, (p, _) in nodes.items()}, **{f"janus-{n}": p.pid for n, (p, _) in janus.items()}}
        stats0 = [await probe.request("stats") for probe, _ in probes]
        cpu0, t0 = {k: cpu_seconds(pid) for k, pid in pids.items()}, time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = {k: cpu_seconds(pid) for k, pid in pids.items()}, time.monotonic()
        stats1 = [await probe.request("stats") for probe, _ in probes]
        engine = [(await client.request("stats"))["engine"] for _, client, _ in presenters]
        loads = {names[u]: await asyncio.to_thread(healthz, u) for u in urls}
        load_avg = os.getloadavg()
    finally:
        stop_viewers([p for ps in procs.values() for p in ps])
        for probe, _ in probes:
            await probe.close()
        for _, client, _ in presenters:
            await client.close()
    rooms = []
    for (node, _, _), (_, probe_join), s0, s1, eng in zip(presenters, probes, stats0, stats1, engine,
                                                           strict=True):
        viewers = procs[names[node]]
        summaries = [v.summary() if v.json_path.is_file() else {} for v in viewers]
        fps = []
        for v in viewers:
            arrival, _ = v.trace() if v.trace_path.is_file() else ([], None)
            fps.append(sum(1 for a in arrival if t0 <= a <= t1) / (t1 - t0))
        joins = [s["first_arrival"] - s["watch_sent"] for s in summaries if s.get("first_arrival") is not None]
        if probe_join is not None:
            joins.append(probe_join)
        janus_names = {url: name for name, (_, url) in janus.items()}
        rooms.append({
            "node": names[node], "viewers": per_room,
            "viewers_per_janus": {janus_names.get(n["url"], n["url"]): n["viewers"] for n in s1["nodes"]},
            "engine_fps": eng.get("fps"),
            "publisher_fps": round((s1["publisher"]["frames"] - s0["publisher"]["frames"]) / (t1 - t0), 2),
            "viewer_fps_median": round(statistics.median(fps), 2) if fps else None,
            "viewer_fps_min": round(min(fps), 2) if fps else None,
            "join_s_median": round(statistics.median(joins), 3) if joins else None,
            "joined_without_a_frame": sum(s.get("first_arrival") is None for s in summaries),
        })
    return {"placements": placements, "rooms": rooms,
            "cpu_pct": {k: round(100 * (cpu1[k] - cpu0[k]) / (t1 - t0), 1) for k in cpu0},
            "healthz_after": loads, "loadavg": load_avg}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers-per-room", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", default=str(RESULTS / "nodes.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        janus = {"a": start_janus(tmp, "a", 45_000), "b": start_janus(tmp, "b", 46_000)}
        time.sleep(2.0)
        both = ",".join(url for _, url in janus.values())
        nodes = {"node1": start_node(tmp, "node1", both), "node2": start_node(tmp, "node2", both)}
        try:
            result = asyncio.run(run(tmp, nodes, janus, args.viewers_per_room, args.seconds))
        finally:
            for proc, _ in [*nodes.values(), *janus.values()]:
                proc.terminate()
            for proc, _ in [*nodes.values(), *janus.values()]:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):
                        proc.kill()
    result["settings"] = {"viewers_per_room": args.viewers_per_room, "seconds": args.seconds,
                          "data": "tests/data/speech_16k.wav looped by each presenter",
                          "machine": "shared 2-core; 2 engines, 2 Janus, viewers as clients.viewer processes at "
                                     "nice 19 (+ 1 probe viewer per room in the benchmark process)"}
    result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({k: v for k, v in result.items() if k != "healthz_after"}, indent=1))
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
