"""Hostile clients against the real presenter server and engine (built-in defaults): bad input at every edge,
floods, stalled readers, peers that vanish, churn, and the security defaults.

Every case asserts the error reply *and* that the session (and the server) still serve a valid request
afterwards. One engine runtime for the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from benchmarks.soak import Footprint, churn, settle, speech, webrtc_cycle, ws_cycle
from streaming import protocol as P
from streaming.server import PresenterServer, ServerSettings
from tests.streaming_fixtures import Raw, run, server_settings, shared_runtime

LEAKS = ("/tmp", "/work", "/home", "Traceback", "Error:", "Exception", ".py")


runtime = shared_runtime
settings = functools.partial(server_settings, max_sessions=8)


def assert_clean_error(msg: dict, code: str) -> None:
    assert msg["type"] == "error" and msg["code"] == code, msg
    assert msg["message"], msg
    for leak in LEAKS:
        assert leak not in msg["message"], (leak, msg)


# --- bad control messages ------------------------------------------------------------------------------


MALFORMED: list[tuple[str | bytes, str]] = [
    ("hello", "bad_json"),
    (b"\x00\xff\xfe", "bad_json"),  # binary frame, not UTF-8
    ("[1,2,3]", "bad_json"),
    ('{"v":1,"id":1,"type":"set_intensity","value":NaN}', "bad_json"),
    ("[" * 50_000 + "]" * 50_000, "bad_json"),  # nesting bomb
    ('{"v":2,"id":1,"type":"ping"}', "bad_version"),
    ('{"v":1,"id":{},"type":"ping"}', "bad_id"),
    ('{"v":1,"id":1,"type":"rm -rf"}', "unknown_type"),
    ('{"v":1,"id":1,"type":"ping","extra":1}', "bad_field"),
    ('{"v":1,"id":1,"type":"set_style","name":"nope"}', "unknown_style"),
    ('{"v":1,"id":1,"type":"set_style","name":"neutral","transition_ms":-1}', "bad_field"),
    ('{"v":1,"id":1,"type":"set_intensity","value":3}', "bad_field"),
    ('{"v":1,"id":1,"type":"ice","candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0"}', "no_media"),
    ('{"v":1,"id":1,"type":"upload_style","name":"x","format":"npy","data":"not base64!"}', "bad_base64"),
    ('{"v":1,"id":1,"type":"ping","pad":"' + "x" * 70_000 + '"}', "too_large"),
]


def test_malformed_messages_get_clean_errors_and_the_session_survives(runtime) -> None:
    async def main() -> None:
        async with PresenterServer(runtime, settings(rate_limit_burst=1000)) as server:
            c = await Raw.open(server.port)
            for raw, code in MALFORMED:
                msg = await c.send(raw)
                assert_clean_error(msg, code)
                await c.assert_alive()
            # a frame over the transport cap is refused by the socket layer (1009); the server stays up
            big = "x" * (server.limits.max_frame_bytes + 1)
            await c.ws.send(big)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(c.ws.recv(), 30)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            await settle(server)
            assert not server.clients
            c2 = await Raw.open(server.port)
            await c2.assert_alive()
            await c2.ws.close()

    run(main())


# --- signaling -----------------------------------------------------------------------------------------

BAD_SDP = [
    "v=0\r\n",
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",  # no ICE/DTLS
    "v=0\r\n" + "a=garbage\r\n" * 2000,
    "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n",
]


def test_invalid_sdp_and_candidates_are_refused_and_media_can_still_start(runtime) -> None:
    async def main() -> None:
        from clients.client import StyleTalkClient

        async with PresenterServer(runtime, settings()) as server:
            c = await Raw.open(server.port)
            for sdp in BAD_SDP:
                assert_clean_error(await c.call("offer", sdp=sdp), "bad_sdp")
                await c.assert_alive()
            await c.ws.close()
            await settle(server)
            # a real offer on a fresh client negotiates; then garbage candidates are refused
            client = StyleTalkClient(f"ws://127.0.0.1:{server.port}/ws")
            await client.connect()
            await client.start_media()
            await client.wait_frames(3, timeout=30)
            for cand in ("candidate:", "candidate:1 1 udp", "candidate:x y z w v u t s"):
                msg = await client.send_raw(P.make_request("ice", "c", candidate=cand, sdpMid="0"), "c")
                assert_clean_error(msg, "bad_field")
            msg = await client.send_raw(P.make_request("offer", "o", sdp=BAD_SDP[0]), "o")
            assert_clean_error(msg, "bad_state")
            assert (await client.request("stats"))["transport"]["video_frames_sent"] > 0
            await client.close()
            await settle(server)
            assert not server.clients

    run(main())


# --- uploads: style clips ------------------------------------------------------------------------------


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_bad_style_clips_are_refused_with_bad_clip(runtime) -> None:
    rng = np.random.default_rng(0)
    good = (0.2 * rng.standard_normal((40, 64))).astype(np.float32)
    nan = good.copy()
    nan[3, 5] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    bad = {
        "wrong width": npy(good[:, :63]),
        "3-D": npy(good[None]),
        "1-D": npy(good[0]),
        "no frames": npy(np.zeros((0, 64), np.float32)),
        "NaN": npy(nan),
        "inf": npy(inf),
        "strings": npy(np.array([["a"] * 64] * 4)),
        "object/pickle": npy(np.array([{"x": 1}], dtype=object)),
        "truncated": npy(good)[:100],
        "npy magic only": b"\x93NUMPY",
    }
    too_long = (0.1 * rng.standard_normal((20_000, 64))).astype(np.float32)  # 5 MB: cut to the encoder's 256
    one_frame = good[:1]

    async def main() -> None:
        async with PresenterServer(runtime, settings(rate_limit_burst=1000, upload_burst=1000)) as server:
            c = await Raw.open(server.port)
            for i, (what, data) in enumerate(bad.items()):
                msg = await c.call("upload_style", name=f"bad{i}", format="npy", data=data)
                assert_clean_error(msg, "bad_clip")
                del what
                await c.assert_alive()
            msg = await c.call("upload_style", name="mat1", format="mat", data=b"MATLAB 5.0 MAT-file" + b"\x00" * 200)
            assert_clean_error(msg, "bad_clip")
            for name, clip in (("long", too_long), ("short", one_frame)):
                msg = await c.call("upload_style", name=name, format="npy", data=npy(clip))
                assert msg["type"] == "result" and msg["result"]["frames"] == clip.shape[0], msg
                assert (await c.call("set_style", name=name))["type"] == "result"
            assert_clean_error(await c.call("upload_style", name="long", format="npy", data=npy(good)), "style_exists")
            await c.ws.close()
        # an upload over a (small) server limit
        async with PresenterServer(runtime, settings(max_upload_bytes=10_000)) as server:
            c = await Raw.open(server.port)
            assert_clean_error(await c.call("upload_style", name="big", format="npy", data=npy(good)), "too_large")
            await c.assert_alive()
            await c.ws.close()

    run(main())


# --- uploads: avatar photos ----------------------------------------------------------------------------


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(
        b"IEND", b""
    )


def test_bad_photos_are_refused_and_a_good_one_is_accepted(runtime) -> None:
    face = np.asarray(runtime.avatar)  # the built-in avatar: exactly one face
    cases = {
        "no face (grey)": (png(np.full((200, 200, 3), 128, np.uint8)), "png", "bad_image"),
        "noise": (png(np.random.default_rng(1).integers(0, 255, (160, 160, 3), dtype=np.uint8)), "png", "bad_image"),
        "two faces": (png(np.concatenate([face, face], axis=1)), "png", "bad_image"),
        "corrupt body": (png(face)[:200], "png", "bad_image"),
        "bomb header": (png_claiming(30_000, 30_000), "png", "too_large"),
        "zero width": (png_claiming(0, 100), "png", "too_large"),
        "png sent as jpeg": (png(face), "jpeg", "bad_image"),
        "jpeg garbage": (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "jpeg", "bad_image"),
    }

    async def main() -> None:
        async with PresenterServer(runtime, settings(upload_burst=1000)) as server:
            c = await Raw.open(server.port)
            for _what, (data, fmt, code) in cases.items():
                assert_clean_error(await c.call("set_avatar", format=fmt, data=data), code)
                await c.assert_alive()
            msg = await c.call("set_avatar", format="png", data=png(face))
            assert msg["type"] == "result", msg
            await c.ws.close()

    run(main())


# --- flood control -------------------------------------------------------------------------------------


def test_a_flood_of_control_messages_is_rate_limited_and_the_session_keeps_running(runtime) -> None:
    async def main() -> None:
        async with PresenterServer(runtime, settings(rate_limit_per_s=20.0, rate_limit_burst=40)) as server:
            c = await Raw.open(server.port)
            other = await Raw.open(server.port)
            n = 300
            t0 = asyncio.get_running_loop().time()
            for i in range(n):
                await c.ws.send(P.make_request("set_style", f"f{i}", name="neutral", transition_ms=0))
            replies = [await c.next_reply() for _ in range(n)]
            elapsed = asyncio.get_running_loop().time() - t0
            assert [r["id"] for r in replies] == [f"f{i}" for i in range(n)]  # every request answered, in order
            limited = [r for r in replies if r.get("code") == "rate_limited"]
            ok = [r for r in replies if r["type"] == "result"]
            # the burst, plus what refilled while the flood was being answered, was served; the rest refused
            assert 40 <= len(ok) <= 40 + 20 * elapsed + 1, (len(ok), elapsed)
            assert len(ok) + len(limited) == n and limited, (len(ok), len(limited))
            assert all(r["request"] == "set_style" and r["message"] for r in limited)
            await other.assert_alive()  # other clients are not affected
            await asyncio.sleep(0.5)  # tokens refill
            await c.assert_alive()
            assert server.clients[c.welcome["session"]].session is not None
            await c.ws.close()
            await other.ws.close()

    run(main())


# --- internal failures: no internals in the reply ---------------------------------------------------------


def test_internal_failures_reply_internal_without_details(runtime) -> None:
    async def main() -> None:
        async with PresenterServer(runtime, settings()) as server:
            c = await Raw.open(server.port)
            handler = server.clients[c.welcome["session"]]
            session = handler.session

            def broken_stats() -> dict:
                raise KeyError("/work/main/engine/secret_path.py: internal state")

            session.stats = broken_stats
            assert_clean_error(await c.call("stats"), "internal")
            await c.assert_alive()
            # engine error events are forwarded without paths / exception names
            await session.start()
            handler.session_started = True
            session.channel.error("pipeline", "ValueError: failed in /work/main/models/warp.py line 3")
            for _ in range(50):
                await c.assert_alive()
                errors = [e for e in c.events if e["event"] == "error"]
                if errors:
                    break
                await asyncio.sleep(0.05)
            assert errors, c.events
            text = json.dumps(errors[0])
            assert "/work" not in text and "ValueError" not in text and ".py" not in text, text
            await c.ws.close()

    run(main())


# --- slow / stalled / vanishing clients ---------------------------------------------------------------


def _masked_text_frame(text: str) -> bytes:
    """One client-to-server websocket text frame (RFC 6455: clients must mask)."""
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = b"\x81" + (bytes([0x80 | n]) if n < 126 else b"\xfe" + struct.pack(">H", n))
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def test_a_client_that_never_reads_is_disconnected_and_others_keep_working(runtime) -> None:
    async def main() -> None:
        async with PresenterServer(runtime, settings(rate_limit_burst=100_000, send_timeout_s=1.0)) as server:
            other = await Raw.open(server.port)
            # a raw websocket client with a tiny receive buffer that never reads a byte after connecting
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            await writer.drain()
            await wait_until(lambda: len(server.clients) == 2, "stalled client admitted")
            for handler in server.clients.values():  # small kernel buffers: the stall shows after ~50 KB
                if handler.id != other.welcome["session"]:
                    conn = handler.ws.transport.get_extra_info("socket")
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            frame = _masked_text_frame(P.make_request("stats", 1))  # each reply is ~2-3 KB nobody reads
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                for _ in range(100):
                    if server.stalled_disconnects:
                        break
                    writer.write(frame * 200)
                    await asyncio.wait_for(writer.drain(), 5)
                    await other.assert_alive()  # the loop is not blocked by the stalled client
                    await asyncio.sleep(0.2)
            await wait_until(lambda: server.stalled_disconnects == 1, "stalled client dropped")
            await wait_until(lambda: len(server.clients) == 1, "stalled client freed")
            assert list(server.clients) == [other.welcome["session"]]
            await other.assert_alive()
            writer.close()
            await other.ws.close()

    run(main())


async def wait_until(predicate, what: str, timeout: float = 30.0) -> None:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_peers_that_vanish_mid_stream_free_everything(runtime) -> None:
    async def main() -> None:
        async with PresenterServer(runtime, settings()) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            pcm = speech()
            await webrtc_cycle(url, pcm)  # warm-up (first-use allocations)
            await settle(server)
            before = Footprint.now()
            sessions = []
            server.on_client_closed = sessions.append
            for _ in range(3):
                await webrtc_cycle(url, pcm, abrupt=True)
                await ws_cycle(url, abrupt=True)
            await settle(server)
            after = Footprint.now()
            assert len(sessions) == 6 and not server.clients and not runtime.sessions
            growth = after.minus(before)
            assert growth["py_threads"] <= 1 and growth["os_threads"] <= 2, growth
            assert growth["tasks"] <= 1 and growth["fds"] <= 4, growth

    run(main())


# --- churn ----------------------------------------------------------------------------------------------

CHURN_CYCLES = 24  # CI size (20 websocket-only + 4 WebRTC); benchmarks/soak.py runs 200


def test_churn_leaves_no_growth(runtime) -> None:
    async def main() -> dict:
        async with PresenterServer(runtime, settings()) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            await ws_cycle(url)
            await webrtc_cycle(url, speech())
            await settle(server)
            before = Footprint.now()
            result = await churn(url, server, cycles=CHURN_CYCLES, webrtc_every=6, abrupt=True)
            await settle(server)
            after = Footprint.now()
            assert result.survived == result.cycles == CHURN_CYCLES, result.errors
            assert not server.clients and not runtime.sessions
            return after.minus(before)

    growth = run(main())
    print(f"growth after {CHURN_CYCLES} cycles (1 in 6 with WebRTC, every other one abrupt):", growth)
    assert growth["py_threads"] <= 1 and growth["os_threads"] <= 2, growth
    assert growth["tasks"] <= 1 and growth["fds"] <= 4, growth
    assert growth["rss_kb"] < 60 * 1024, growth  # allocator noise, not per-cycle growth (~MBs per session)


# --- security defaults ----------------------------------------------------------------------------------


def test_defaults_bind_loopback_and_serve_refuses_exposure_without_a_token(monkeypatch, capsys) -> None:
    from engine.config import load_config
    from streaming import serve_command as serve

    assert load_config().server.host == "127.0.0.1"
    assert ServerSettings().host == "127.0.0.1"
    assert serve.build_parser().parse_args([]).host is None  # no flag: the config's loopback default
    assert serve.check_exposure("127.0.0.1", None, False) is None
    assert serve.check_exposure("::1", None, False) is None
    assert serve.check_exposure("0.0.0.0", "t0k", False) is None
    assert serve.check_exposure("0.0.0.0", None, True) is None
    assert serve.check_exposure("0.0.0.0", None, False)
    assert serve.check_exposure("192.168.1.5", None, False)
    monkeypatch.delenv(serve.TOKEN_ENV, raising=False)
    assert serve.main(["--host", "0.0.0.0", "--port", "0"]) == 2  # refused before loading the engine
    assert "--insecure" in capsys.readouterr().err


def test_static_handler_refuses_traversal_and_symlinks(runtime, tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>page</p>")
    (tmp_path / "secret.js").write_text("SECRET")
    (web / "link.js").symlink_to(tmp_path / "secret.js")
    (web / "sub").mkdir()
    (web / "sub" / "up.js").symlink_to(tmp_path / "secret.js")

    async def get(port: int, path: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    async def main() -> None:
        async with PresenterServer(runtime, settings(), web_root=web) as server:
            assert (await get(server.port, "/"))[0] == 200
            for evil in (
                "/../secret.js", "/%2e%2e/secret.js", "/%2E%2E%2Fsecret.js", "/%252e%252e/secret.js",
                f"/{tmp_path}/secret.js", f"/%2F{str(tmp_path).lstrip('/')}/secret.js", "/link.js", "/sub/up.js",
                "/sub/../../secret.js", "/index.html/../../secret.js", "/.%2e/secret.js", "/%00/secret.js",
            ):
                status, body = await get(server.port, evil)
                assert status in (400, 404), (evil, status)
                assert b"SECRET" not in body, evil
            await Raw.open(server.port)  # the websocket still works

    run(main())
