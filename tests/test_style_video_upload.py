"""Styles from video over the wire: `upload_style` with an mp4/webm (server) and the page's "Record my style"
(real headless Chromium, fake camera fed from a sample video with --use-file-for-fake-video-capture)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from streaming.server import PresenterServer
from tests.browser_fixtures import presenter_page, requires_chromium, wait_js
from tests.streaming_fixtures import server_settings
from tests.test_style_extract import read_frames, write_video


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


async def _call(ws, n: int, rtype: str, events: list[dict], **fields: object) -> dict:  # noqa: ANN001
    await ws.send(json.dumps({"v": 1, "id": n, "type": rtype, **fields}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if msg["type"] == "event":
            events.append(msg)
        elif msg["id"] == n:
            return msg


def test_upload_style_video_extracts_off_the_loop_with_progress_and_coded_errors(live_runtime, samples_dir,
                                                                                  tmp_path) -> None:
    frames = read_frames(samples_dir / "source" / "video" / "KristiNoem.mp4")[:150]  # 5 s
    good = write_video(tmp_path / "me.webm", frames, codec="libvpx")
    rng = np.random.default_rng(0)
    noface = write_video(tmp_path / "noface.mp4", [rng.integers(0, 255, (128, 128, 3), np.uint8)] * 75)
    short = write_video(tmp_path / "short.mp4", frames[:20])

    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings()) as server:
            async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                events: list[dict] = []
                json.loads(await ws.recv())  # welcome
                pings: list[float] = []

                async def ping_while_extracting() -> None:  # the event loop stays responsive meanwhile
                    async with connect(f"ws://127.0.0.1:{server.port}/ws") as other:
                        json.loads(await other.recv())
                        for k in range(5):
                            t0 = asyncio.get_running_loop().time()
                            r = await _call(other, k + 1, "ping", [])
                            assert r["type"] == "result"
                            pings.append(asyncio.get_running_loop().time() - t0)
                            await asyncio.sleep(0.3)

                pinger = asyncio.create_task(ping_while_extracting())
                r = await _call(ws, 1, "upload_style", events, name="me", format="webm", data=_b64(good))
                await pinger
                assert r["type"] == "result", (r.get("code"), r.get("message"))
                assert r["result"]["frames"] == 150 and "me" in r["result"]["styles"]
                progress = [e for e in events if e["event"] == "style_progress"]
                assert progress and progress[-1]["style"] == "me" and progress[-1]["frames"] > 0
                assert max(pings) < 2.0, pings
                assert (await _call(ws, 2, "set_style", events, name="me"))["type"] == "result"

                # (uploads have their own rate bucket, bursts of 3: two more here; the signature case below)
                for n, (path, fmt, detail) in enumerate([(noface, "mp4", "no_face"), (short, "mp4", "too_short")], 3):
                    r = await _call(ws, n, "upload_style", events, name=f"bad{n}", format=fmt, data=_b64(path))
                    assert r["type"] == "error" and r["code"] == "bad_video", r
                    assert f"[{detail}]" in r["message"], r
                styles = (await _call(ws, 9, "list_styles", events))["result"]["styles"]
                assert "me" in styles and not any(s.startswith("bad") for s in styles)

    asyncio.run(asyncio.wait_for(main(), 300))
    # a webm sent as mp4 fails at the edge, before any decoding
    from streaming import protocol as P

    msg = json.dumps({"v": 1, "id": 1, "type": "upload_style", "name": "x", "format": "mp4", "data": _b64(good)})
    with pytest.raises(P.ProtocolError) as exc:
        P.parse_message(msg, P.Limits())
    assert exc.value.code == P.ErrorCode.BAD_VIDEO and "[unreadable]" in str(exc.value)


def _y4m(frames: list[np.ndarray], path: Path) -> Path:
    """A raw YUV4MPEG2 file (what Chromium's fake camera reads)."""
    return write_video(path, frames, codec="rawvideo", container="yuv4mpegpipe")


@requires_chromium
def test_record_my_style_in_chromium(live_runtime, samples_dir) -> None:
    pytest.importorskip("playwright.async_api")
    work = Path(tempfile.mkdtemp(prefix="styletalk-record-"))
    camera = _y4m(read_frames(samples_dir / "source" / "video" / "KristiNoem.mp4")[:240], work / "camera.y4m")

    async def main() -> dict:
        async with PresenterServer(live_runtime, server_settings()) as server:
            fake_camera = f"--use-file-for-fake-video-capture={camera}"
            async with presenter_page(server.url, work / "profile", fake_camera) as (page, errors):
                await wait_js(page, "!document.getElementById('record-style').disabled")
                await page.click("#record-style")
                await wait_js(page, "window.styletalk.recording && window.styletalk.recording.phase === "
                                    "'recording'", timeout=20)
                rec = await wait_js(page, "['done', 'failed'].includes(window.styletalk.recording.phase) && "
                                          "window.styletalk.recording", timeout=120)
                assert rec["phase"] == "done", rec
                assert rec["style"] in await page.evaluate("window.styletalk.styles")
                assert "ready" in await page.inner_text("#record-status")
                # selectable like any style: click it, the server acknowledges
                await page.click(f"button[data-style='{rec['style']}']")
                ack = await wait_js(page, "window.styletalk.acks.length > 0 && window.styletalk.acks[0]")
                assert ack["style"] == rec["style"]
                await page.screenshot(path=str(work / "record.png"))
                assert not errors, errors
                return rec

    try:
        rec = asyncio.run(asyncio.wait_for(main(), 240))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert rec["bytes"] > 10_000  # a real recording was uploaded
    assert rec["progress"]["frames"] > 0  # extracted with progress events (throttled: not the last frame's)
    # ~6 s on the 30 fps grid whatever rate the recorder kept on a loaded machine (timestamps are resampled)
    assert rec["frames"] > 100, rec


def test_video_extraction_does_not_block_the_clients_requests_and_save_style_persists(  # noqa: F811
        live_runtime, samples_dir, tmp_path) -> None:
    from engine.runtime import build_styles
    from engine.user_styles import UserStyles, styles_dir

    frames = read_frames(samples_dir / "source" / "video" / "KristiNoem.mp4")[:75]  # 2.5 s
    video = write_video(tmp_path / "mine.mp4", frames)
    name = "saved_from_video_test"
    store = UserStyles(styles_dir(live_runtime.config.style))

    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings()) as server:
            async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                json.loads(await ws.recv())  # welcome
                await ws.send(json.dumps({"v": 1, "id": "up", "type": "upload_style", "name": name,
                                          "format": "mp4", "data": _b64(video)}))
                await ws.send(json.dumps({"v": 1, "id": "again", "type": "upload_style", "name": "second",
                                          "format": "mp4", "data": _b64(video)}))
                await ws.send(json.dumps({"v": 1, "id": "p", "type": "ping"}))
                order: list[str] = []
                replies: dict[str, dict] = {}
                while "up" not in replies:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
                    if msg["type"] != "event":
                        order.append(msg["id"])
                        replies[msg["id"]] = msg
                # the ping and the refused second extraction were answered while the video was extracted
                assert order.index("p") < order.index("up") and order.index("again") < order.index("up"), order
                assert replies["again"]["type"] == "error" and replies["again"]["code"] == "bad_state"
                assert replies["up"]["type"] == "result", replies["up"]
                events: list[dict] = []
                assert (await _call(ws, 1, "save_style", events, name="nope"))["code"] == "unknown_style"
                r = await _call(ws, 2, "save_style", events, name=name)
                assert r["type"] == "result" and r["result"] == {"style": name, "frames": 75, "saved": True}, r
                assert (await _call(ws, 3, "save_style", events, name=name))["code"] == "style_exists"
            # a new client (new session) lists it at once ...
            async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws2:
                welcome = json.loads(await ws2.recv())
                assert name in welcome["styles"], welcome["styles"]

    try:
        asyncio.run(main())
        assert name in [s.name for s in store.list()]
        # ... and after a restart: the styles directory is read when a runtime builds its styles
        bank = build_styles(live_runtime.config, live_runtime.decoder)
        np.testing.assert_allclose(bank.get(name), live_runtime.styles.get(name), atol=1e-5)
    finally:
        if name in [s.name for s in store.list()]:
            store.remove(name)
        live_runtime.styles.remove(name)
