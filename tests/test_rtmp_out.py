"""RTMP out: a room pushed to a real nginx-rtmp by ``serve --rtmp URL`` and read back with PyAV.

The presenter speaks (the test WAV, looped) and opens a room; the server pushes it (H.264 + AAC in FLV) to an
nginx started by the test; a PyAV player reads ``rtmp://127.0.0.1:PORT/live/<room>`` and must decode video
frames of the avatar's size and AAC audio. A push to a server that is not there ends with an error in the room's
stats while the room goes on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import av

from streaming.server import PresenterServer
from tests.audience_fixtures import joined_viewer, speaking_presenter
from tests.janus_fixtures import free_port
from tests.rtmp_fixtures import running_nginx_rtmp
from tests.streaming_fixtures import live_runtime, server_settings, wait_for  # noqa: F401 - live_runtime: fixture


def read_back(url: str, seconds: float, seen: dict) -> None:
    """Play ``url`` for ``seconds``: counts of decoded video/audio frames and the video size, into ``seen``."""
    try:
        with av.open(url, options={"analyzeduration": "1000000", "probesize": "200000"}, timeout=15) as player:
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


def test_serve_rtmp_pushes_the_room_audio_and_video_to_nginx(live_runtime, tmp_path: Path) -> None:  # noqa: F811
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


def test_rtmp_server_down_ends_the_push_with_an_error_and_the_room_goes_on(live_runtime) -> None:  # noqa: F811
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
