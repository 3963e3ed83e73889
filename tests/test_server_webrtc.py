"""Real WebRTC over loopback: the aiortc client (clients/client.py) against the real server and engine.

Asserts the user-visible behaviour: video frames arrive, speech moves the mouth (compared with the same
session's silence), a style switch mid-stream is acknowledged while frames keep flowing (no renegotiation),
one failing session leaves another untouched, hangup + new offer works on the same socket, and closing frees
the session (tasks, threads, objects).
"""

from __future__ import annotations

import asyncio
import weakref

import numpy as np
import pytest

from clients.client import ClientError, MicrophoneTrack, StyleTalkClient
from streaming.server import PresenterServer
from tests.streaming_fixtures import (
    UNTRAINED_REASON,
    assert_collected,
    mouth_changes,
    npy_bytes,
    server_settings,
    session_threads,
    speech_16k,
    style_clip,
    trained_weights,
    wait_for,
)

RATE = 16_000


def run(coro) -> object:  # noqa: ANN001
    return asyncio.run(asyncio.wait_for(coro, 240))


def test_speech_moves_the_mouth_and_style_switches_mid_stream(live_runtime) -> None:
    async def main() -> tuple[np.ndarray, np.ndarray]:
        async with PresenterServer(live_runtime, server_settings()) as server:
            baseline_threads = session_threads()
            speech = speech_16k()
            mic = MicrophoneTrack()
            mic.feed(np.zeros(2 * RATE, np.int16))  # 2 s of silence: the idle baseline
            speech_at = mic.feed(speech)
            mic.feed(np.zeros(RATE, np.int16))
            speech_end = speech_at + len(speech)

            client = StyleTalkClient(f"ws://127.0.0.1:{server.port}/ws")
            welcome = await client.connect()
            await client.start_media(mic)
            frames = await client.wait_frames(10, timeout=60)
            assert frames[0].image.shape == (live_runtime.config.renderer.size,) * 2 + (3,)
            session_ref = weakref.ref(server.clients[welcome["session"]].session)

            # Wait until the whole utterance has been sent and has come back out (pipeline delay + margin).
            await wait_for(lambda: mic.samples_sent >= speech_end, timeout=60, what="speech sent")
            stats = await client.request("stats")
            delay = stats["engine"]["delay_ms"] / 1000.0
            t_speech, t_end = mic.time_of_sample(speech_at), mic.time_of_sample(speech_end - 1)
            await wait_for(
                lambda: client.recording.frames[-1].arrival > t_end + delay + 0.3, timeout=30, what="tail"
            )
            frames = list(client.recording.frames)
            silent = [f.image for f in frames if t_speech - 1.5 < f.arrival < t_speech + delay]
            spoken = [f.image for f in frames if t_speech + delay + 0.2 < f.arrival < t_end + delay]
            assert len(silent) > 15 and len(spoken) > 45, (len(silent), len(spoken))
            idle = mouth_changes(silent)  # blinks only
            talking = mouth_changes(spoken)
            print(
                f"mouth change per frame: silence p90 {np.percentile(idle, 90):.2f}, speech p90 "
                f"{np.percentile(talking, 90):.2f}"
            )

            # The delayed input audio comes back.
            received = np.concatenate(client.recording.audio).astype(np.float32)
            assert np.abs(received).max() > 1000

            transport = stats["transport"]
            assert transport["connection_state"] == "connected"
            assert transport["mic_seconds_received"] > 2.0 + len(speech) / RATE - 0.5

            # Style switch mid-stream: acknowledged with its landing frame; frames keep flowing, same peer.
            styles = welcome["styles"]
            if len(styles) < 2:  # only the neutral fallback is built in: add a style by upload
                upload = await client.request(
                    "upload_style", name="uploaded", format="npy", data=npy_bytes(style_clip())
                )
                styles = upload["styles"]
            target = next(s for s in styles if s != stats["engine"]["style"])
            result = await client.request("set_style", name=target, transition_ms=200)
            assert result["style"] == target and result["frame"] >= stats["transport"]["last_video_index"]
            count = len(client.recording.frames)
            await client.wait_frames(count + 30, timeout=30)
            assert (await client.request("stats"))["engine"]["style"] == target
            try:
                await client.request("set_style", name="does-not-exist")
            except ClientError as exc:
                assert exc.code == "unknown_style"
            else:
                raise AssertionError("unknown style accepted")

            # Trickled candidates are validated; an end-of-candidates marker is accepted.
            assert await client.request("ice", candidate="", sdpMid="0", sdpMLineIndex=0) == {}
            try:
                await client.request("ice", candidate="candidate:garbage", sdpMid="0", sdpMLineIndex=0)
            except ClientError as exc:
                assert exc.code == "bad_field"
            else:
                raise AssertionError("garbage candidate accepted")

            await client.close()
            await wait_for(lambda: server.active_sessions == 0, what="session freed")
            assert not live_runtime.sessions
            await wait_for(lambda: session_threads() <= baseline_threads, what="session threads gone")
            assert_collected([session_ref])
            return idle, talking

    idle, talking = run(main())
    if not trained_weights(live_runtime):
        pytest.skip(UNTRAINED_REASON)
    assert np.percentile(talking, 90) > 2.0 * np.percentile(idle, 90) + 0.3


def test_failing_session_leaves_the_other_untouched_and_hangup_restarts(live_runtime) -> None:
    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings()) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            a, b = StyleTalkClient(url), StyleTalkClient(url)
            wa, wb = await a.connect(), await b.connect()
            await a.start_media(MicrophoneTrack(speech_16k(), loop=True))
            await b.start_media(MicrophoneTrack(speech_16k(), loop=True))
            await a.wait_frames(10, timeout=60)
            await b.wait_frames(10, timeout=60)

            # Session A's pipeline breaks: its video track ends, its socket still answers, B carries on.
            session_a = server.clients[wa["session"]].session

            async def broken() -> object:
                raise RuntimeError("injected pipeline failure")

            session_a.next_video_frame = broken
            peer_a = server.clients[wa["session"]].peer
            await wait_for(lambda: peer_a.video.failure is not None, what="A's video track ended")
            # Frames already in flight to A still arrive (on a loaded machine for more than a second): wait until
            # none has arrived for 1.5 s, then A must stay frozen while B keeps going.
            frozen_a = -1
            while frozen_a != len(a.recording.frames):
                frozen_a = len(a.recording.frames)
                await asyncio.sleep(1.5)
            count_b = len(b.recording.frames)
            await b.wait_frames(count_b + 45, timeout=30)
            assert len(a.recording.frames) == frozen_a
            assert (await a.request("ping"))["server_time"] > 0
            assert (await b.request("stats"))["transport"]["connection_state"] == "connected"

            # A hangs up and starts again on the same websocket: a fresh session, media flows again.
            assert (await a.request("hangup")) == {"stopped": True}
            await a.stop_media()
            a.recording.frames.clear()
            await a.start_media(MicrophoneTrack(speech_16k()))
            await a.wait_frames(15, timeout=60)
            assert server.clients[wa["session"]].session is not session_a
            assert server.active_sessions == 2 and wb["session"] in server.clients

            await a.close()
            await b.close()
            await wait_for(lambda: server.active_sessions == 0, what="sessions freed")
            assert not live_runtime.sessions

    run(main())
