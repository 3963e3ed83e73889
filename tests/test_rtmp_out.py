"""RTMP out: a room pushed to a real nginx-rtmp by ``serve --rtmp URL``, and ``speak --rtmp URL``, read back
with PyAV.

The presenter speaks (the test WAV, looped) and opens a room; the server pushes it (H.264 + AAC in FLV) to an
nginx started by the test; a PyAV player reads ``rtmp://127.0.0.1:PORT/live/<room>`` and must decode video
frames of the avatar's size and AAC audio. A push to a server that is not there ends with an error in the room's
stats while the room goes on. ``styletalk-live speak --rtmp`` (the same encoder, :mod:`engine.rtmp`) is run as
the real command on the test WAV while a player waits on its stream; a push to nobody exits 1 and says why,
after the recording ran to its end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import av

from streaming.server import PresenterServer
from tests.audience_fixtures import joined_viewer, speaking_presenter
from tests.janus_fixtures import free_port
from tests.rtmp_fixtures import running_nginx_rtmp
from tests.streaming_fixtures import SPEECH_WAV, server_settings, wait_for

ROOT = Path(__file__).resolve().parents[1]


def read_back(url: str, seconds: float, seen: dict, timeout: float | tuple[float, float] = 15) -> None:
    """Play ``url`` for ``seconds``: counts of decoded video/audio frames and the video size, into ``seen``."""
    try:
        with av.open(url, options={"analyzeduration": "1000000", "probesize": "200000"}, timeout=timeout) as player:
            start = time.monotonic()
            for packet in player.demux():
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        seen["video"] = seen.get("video", 0) + 1
                        seen["size"] = (frame.width, frame.height)
                    else:
                        seen["audio"] = seen.get("audio", 0) + 1
                        seen["rate"] = frame.sample_rate
                if time.monotonic() - start > seconds:
                    break
    except Exception as exc:  # reported by the assertion below
        seen["error"] = repr(exc)


def test_serve_rtmp_pushes_the_room_audio_and_video_to_nginx(live_runtime, tmp_path: Path) -> None:
    with running_nginx_rtmp(tmp_path / "nginx") as port:
        base = f"rtmp://127.0.0.1:{port}/live"

        async def main() -> tuple[dict, dict]:
            async with PresenterServer(live_runtime, server_settings(rtmp=base + "/{room}")) as server:
                presenter, room = await speaking_presenter(server.port)
                push = server.rooms.pushes[room["room"]]
                await wait_for(lambda: push.video_frames >= 15, timeout=60, what="first frames pushed")
                seen: dict = {}
                player = threading.Thread(target=read_back, args=(f"{base}/{room['room']}", 3.0, seen))
                player.start()
                await asyncio.to_thread(player.join, 60)
                viewer = await joined_viewer(server.port, room)  # the room's stats show the push
                stats = await viewer.request("stats")
                await viewer.close()
                await presenter.request("close_room")
                assert not push.running and room["room"] not in server.rooms.pushes
                await presenter.close()
                return seen, stats["rtmp"]

        seen, stats = asyncio.run(asyncio.wait_for(main(), 300))
    print("read back:", seen, "push:", stats)
    assert "error" not in seen, seen
    assert seen.get("video", 0) >= 30 and seen.get("size") == (live_runtime.config.renderer.size,) * 2, seen
    assert seen.get("audio", 0) >= 10 and seen.get("rate") == 16_000, seen
    assert stats["error"] is None and stats["video_frames"] > 30 and stats["audio_frames"] > 10, stats


def test_rtmp_server_down_ends_the_push_with_an_error_and_the_room_goes_on(live_runtime) -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/key"  # nobody listens

    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings(rtmp=url)) as server:
            presenter, room = await speaking_presenter(server.port)
            push = server.rooms.pushes[room["room"]]
            await wait_for(lambda: push.error is not None, timeout=30, what="the push failed")
            # the presenter keeps streaming
            await presenter.wait_frames(len(presenter.recording.frames) + 15, timeout=30)
            viewer = await joined_viewer(server.port, room)  # and the room still admits viewers
            stats = await viewer.request("stats")
            assert stats["rtmp"]["running"] is False and stats["rtmp"]["error"], stats
            await viewer.close()
            await presenter.close()

    asyncio.run(asyncio.wait_for(main(), 300))


def speak_command(*args: str) -> subprocess.CompletedProcess[str]:
    """``styletalk-live speak --audio <test speech> -o '' --no-progress *args`` as the real command."""
    return subprocess.run([sys.executable, "-m", "clients.cli", "speak", "--audio", str(SPEECH_WAV), "-o", "",
                           "--no-progress", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_speak_rtmp_pushes_the_live_output_to_nginx(tmp_path: Path) -> None:
    with running_nginx_rtmp(tmp_path / "nginx") as port:
        url = f"rtmp://127.0.0.1:{port}/live/speak"
        seen: dict = {}
        # the player connects first and waits (nginx-rtmp holds a play before the publish) for the whole stream;
        # the engine loads in the speak process meanwhile
        player = threading.Thread(target=read_back, args=(url, 60.0, seen, (120.0, 10.0)))
        player.start()
        done = speak_command("--rtmp", url)
        player.join(60)
    print("read back:", seen, "speak:", done.stdout.strip().splitlines()[-2:])
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    pushed = next(line for line in done.stdout.splitlines() if line.startswith("speak: pushed"))
    video_pushed = int(pushed.split()[2])
    # the speech (3.9 s) plus the pipeline delay and the tail, at 30 fps
    assert video_pushed >= 120, pushed
    # the player ends on its read timeout once the publisher left (nginx keeps a play open: PyAV's ExitError in
    # seen["error"]); it must have seen most of the stream, at the avatar's size
    assert seen.get("size") == (256, 256) and seen.get("video", 0) >= 0.8 * video_pushed, (seen, pushed)
    assert seen.get("audio", 0) >= 40 and seen.get("rate") == 16_000, seen


def test_speak_rtmp_to_nobody_records_to_the_end_then_exits_1_saying_why() -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/key"
    done = speak_command("--rtmp", url)
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    assert f"the RTMP push to {url} failed: ConnectionRefusedError" in done.stderr
    frames = int(next(line for line in done.stdout.splitlines() if line.startswith("speak: ")).split()[1])
    assert frames >= 120, done.stdout  # the live session ran its whole input regardless
    assert speak_command("--rtmp", "http://example.com/x").returncode == 2  # not an RTMP URL: a usage error
