"""The presenter server without media: HTTP page serving, admission (token, origin, max sessions) and the
websocket control protocol against the real engine (built-in defaults). WebRTC media: test_server_webrtc.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import weakref

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streaming.server import PresenterServer
from streaming.static_http import resolve_static
from tests.streaming_fixtures import (
    Raw,
    assert_collected,
    http_get,
    run,
    serve_process,
    server_settings,
    session_threads,
    wait_for,
)

# --- HTTP ------------------------------------------------------------------------------------------------


def test_http_serves_only_the_page_files(live_runtime, tmp_path) -> None:
    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings()) as server:
            status, headers, body = await http_get(server.port, "/")
            assert status == 200 and headers["content-type"].startswith("text/html")
            assert b'src="app.js"' in body and "default-src 'self'" in headers["content-security-policy"]
            status, headers, body = await http_get(server.port, "/app.js")
            assert (
                status == 200
                and headers["content-type"].startswith("text/javascript")
                and b"WebSocket" in body
            )
            status, headers, _ = await http_get(server.port, "/style.css")
            assert status == 200 and headers["content-type"].startswith("text/css")
            for evil in (
                "/../pyproject.toml",
                "/..%2fpyproject.toml",
                "/%2e%2e/%2e%2e/pyproject.toml",
                "/web/../../pyproject.toml",
                "/.git/config",
                "/missing.html",
                "//etc/passwd",
                "/app.js%00.html",
                "/..\\pyproject.toml",
            ):
                status, _, body = await http_get(server.port, evil)
                assert status == 404, (evil, status)
                assert b"[project]" not in body
            status, headers, body = await http_get(server.port, "/healthz")
            health = json.loads(body)
            workers = health.pop("workers")  # the model worker processes the sessions render on
            assert workers["mode"] == "model_workers", workers
            assert workers["count"] == workers["alive"] == live_runtime.config.decoder.workers, workers
            assert sorted(workers["pids"]) == sorted(live_runtime.model_workers.pids()), workers
            assert status == 200 and health == {
                "ok": True,
                "sessions": 0,
                "max_sessions": 4,
                "engine_sessions": 0,
                "rooms": 0,
                "max_rooms": 8,
                "viewers": 0,
                "fanout": "direct",
                "janus_up": 0,
                "janus_nodes": 0,
            }

    run(main())
    # The resolver itself, on a directory with a symlink pointing outside it.
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("<p>hi</p>")
    (tmp_path / "secret.js").write_text("secret")
    (tmp_path / "web" / "link.js").symlink_to(tmp_path / "secret.js")
    assert resolve_static(tmp_path / "web", "/") == (tmp_path / "web" / "index.html").resolve()
    assert resolve_static(tmp_path / "web", "/link.js") is None
    assert resolve_static(tmp_path / "web", "/../secret.js") is None


# --- admission -------------------------------------------------------------------------------------------


def test_token_and_origin_are_checked_before_the_websocket_opens(live_runtime) -> None:
    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings(token="s3cret")) as server:
            base = f"ws://127.0.0.1:{server.port}/ws"
            for url in (base, base + "?token=wrong"):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url):
                        pass
                assert info.value.response.status_code == 401
            with pytest.raises(InvalidStatus) as info:
                async with connect(base + "?token=s3cret", origin="http://evil.example"):
                    pass
            assert info.value.response.status_code == 403
            async with connect(base + "?token=s3cret", origin=f"http://127.0.0.1:{server.port}") as ws:
                welcome = await Raw(ws).read_welcome()
                assert welcome["protocol"] == 1 and welcome["styles"]
            # The page itself needs no token (it holds no secret); the websocket is the gate.
            status, _, _ = await http_get(server.port, "/")
            assert status == 200

    run(main())


def test_max_sessions_refuses_with_server_full_and_frees_slots(live_runtime) -> None:
    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings(max_sessions=2)) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            first, second = await connect(url), await connect(url)
            await Raw(first).read_welcome()
            await Raw(second).read_welcome()
            async with connect(url) as third:
                msg = json.loads(await asyncio.wait_for(third.recv(), 10))
                assert msg["event"] == "error" and msg["code"] == "server_full"
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(third.recv(), 10)
                assert third.close_code == 1013
            await first.close()
            await wait_for(lambda: server.active_sessions == 1, what="slot freed")
            async with connect(url) as again:
                await Raw(again).read_welcome()
            await second.close()
            await wait_for(lambda: server.active_sessions == 0, what="all closed")

    run(main())


# --- control protocol ------------------------------------------------------------------------------------


def _npy(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, array)
    return base64.b64encode(buf.getvalue()).decode()


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_control_requests_against_the_real_engine(live_runtime) -> None:
    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings(upload_burst=100)) as server:
            async with connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as ws:
                c = Raw(ws)
                welcome = await c.read_welcome()
                styles = (await c.call("list_styles"))["result"]["styles"]
                assert styles == welcome["styles"] and live_runtime.config.style.default in styles
                target = styles[-1]
                r = await c.call("set_style", name=target, transition_ms=100)
                assert (
                    r["type"] == "result"
                    and r["result"]["style"] == target
                    and isinstance(r["result"]["frame"], int)
                )
                assert (await c.call("list_styles"))["result"]["current"] == target
                r = await c.call("set_style", name="no-such-style")
                assert r["type"] == "error" and r["code"] == "unknown_style"
                assert (await c.call("set_intensity", value=1.5))["result"] == {"intensity": 1.5}
                assert (await c.call("set_intensity", value=3))["code"] == "bad_field"
                for rtype in ("interrupt", "pause", "resume", "ping"):
                    assert (await c.call(rtype))["type"] == "result", rtype
                stats = (await c.call("stats"))["result"]
                assert stats["session"] == welcome["session"] and isinstance(stats["engine"], dict)
                # the session decodes on a model worker: the stats say which, not the server's idle decoder
                decoder = stats["engine"]["decoder"]
                assert decoder["runs_in"] == "model_worker", decoder
                assert decoder["worker_pid"] in [None, *live_runtime.model_workers.pids()], decoder  # placed at start
                assert stats["transport"] is None  # no media yet
                assert (await c.call("ice", candidate="", sdpMid="0", sdpMLineIndex=0))["code"] == "no_media"
                bad_offer = await c.call("offer", sdp="v=0\r\nthis is not an offer\r\n")
                assert bad_offer["type"] == "error" and bad_offer["code"] == "bad_sdp"

                # A new style from an uploaded clip, usable at once; re-uploading the name is refused.
                rng = np.random.default_rng(0)
                clip = (0.1 * rng.standard_normal((40, 64))).astype(np.float32)
                r = await c.call("upload_style", name="uploaded-1", format="npy", data=_npy(clip))
                assert r["type"] == "result", r
                assert r["result"]["frames"] == 40 and "uploaded-1" in r["result"]["styles"]
                assert (await c.call("set_style", name="uploaded-1"))["type"] == "result"
                again = await c.call("upload_style", name="uploaded-1", format="npy", data=_npy(clip))
                assert again["code"] == "style_exists"
                wrong_shape = await c.call(
                    "upload_style", name="bad", format="npy", data=_npy(np.zeros((5, 7)))
                )
                assert wrong_shape["code"] == "bad_clip"
                nan_clip = np.full((5, 64), np.nan, np.float32)
                assert (await c.call("upload_style", name="nan", format="npy", data=_npy(nan_clip)))[
                    "code"
                ] == "bad_clip"

                # Avatar: the built-in face is accepted; a featureless image is refused with bad_image.
                r = await c.call("set_avatar", format="png", data=_png(live_runtime.avatar))
                assert r["type"] == "result" and r["result"]["width"] == live_runtime.avatar.shape[1]
                blank = np.full((64, 64, 3), 128, np.uint8)
                assert (await c.call("set_avatar", format="png", data=_png(blank)))["code"] == "bad_image"

    run(main())


def test_malformed_messages_get_errors_and_never_end_the_session(live_runtime) -> None:
    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings(max_message_bytes=2048)) as server:
            async with connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as ws:
                c = Raw(ws)
                await c.read_welcome()
                cases = {
                    "not json": "bad_json",
                    b"\xff\x00binary": "bad_json",
                    "[]": "bad_json",
                    '{"v":2,"id":1,"type":"ping"}': "bad_version",
                    '{"v":1,"type":"ping"}': "bad_id",
                    '{"v":1,"id":1,"type":"launch"}': "unknown_type",
                    '{"v":1,"id":1,"type":"set_style","name":"x","oops":1}': "bad_field",
                    json.dumps({"v": 1, "id": 1, "type": "offer", "sdp": "v=0" + "x" * 3000}): "too_large",
                    '{"v":1,"id":1,"type":"upload_style","name":"x","format":"npy","data":"@"}': "bad_base64",
                }
                for raw, code in cases.items():
                    reply = await c.send(raw)
                    assert reply["type"] == "error" and reply["code"] == code, (raw, reply)
                    assert (await c.call("ping"))["type"] == "result"  # still alive after each
                assert server.active_sessions == 1

    run(main())


def test_closing_the_socket_frees_the_session(live_runtime) -> None:
    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings()) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            baseline = session_threads()
            refs: list[weakref.ref] = []
            for _ in range(2):
                ws = await connect(url)
                await Raw(ws).read_welcome()
                refs.extend(weakref.ref(client.session) for client in server.clients.values())
                await ws.close()
                await wait_for(lambda: server.active_sessions == 0, what="session freed")
            assert not live_runtime.sessions, live_runtime.sessions
            await wait_for(
                lambda: session_threads() <= baseline, what=f"threads {session_threads() - baseline}"
            )
            assert_collected(refs)

    run(main())


# --- the command -----------------------------------------------------------------------------------------


def test_serve_command_validates_then_serves_and_stops_cleanly() -> None:
    from streaming.serve_command import main

    assert main(["--max-sessions", "0"]) == 2  # config validation happens before the engine loads
    with serve_process() as (proc, port):
        status, _, body = asyncio.run(http_get(port, "/healthz"))
        assert status == 200 and json.loads(body)["ok"] is True
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
