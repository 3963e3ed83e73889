"""Hostile input must never cost memory, CPU or other users' frames (issue #12, items 2-8).

Each case is the attack as the issue describes it, against the real readers (scipy, Pillow/skimage, the face
cropper) or the real presenter server on loopback, and asserts the clean error *and* the cost: every request
stays under 200 MB of extra memory (peak RSS, reset per case through ``/proc/self/clear_refs``) and 2 s of CPU.
The fps / ping figures of a concurrent session under each attack are measured by ``python -m benchmarks.soak``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streaming import protocol as P
from streaming.server import PresenterServer
from tests.streaming_fixtures import Raw, run, server_settings, shared_runtime

MAX_EXTRA_MB = 200
MAX_CPU_S = 2.0


# --- cost of one call --------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cost(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; returns (result or the exception it raised, extra peak memory MB, CPU seconds of this thread).

    The peak (VmHWM) is reset first (``/proc/self/clear_refs`` = 5), so the figure is this call's own peak.
    """
    Path("/proc/self/clear_refs").write_text("5")
    rss0 = _status_kb("VmRSS")
    t0 = time.thread_time()
    try:
        out: Any = fn()
    except Exception as exc:  # noqa: BLE001 - returned for the caller to check
        out = exc
    cpu = time.thread_time() - t0
    return out, (_status_kb("VmHWM") - rss0) / 1024, cpu


def assert_cheap(mb: float, cpu: float, what: str) -> None:
    print(f"{what}: +{mb:.0f} MB peak, {cpu:.2f} s CPU")
    assert mb < MAX_EXTRA_MB, f"{what}: {mb:.0f} MB"
    assert cpu < MAX_CPU_S, f"{what}: {cpu:.2f} s CPU"


# --- files -------------------------------------------------------------------------------------------------


def mat_bomb(rows: int = 400_000) -> bytes:
    """A compressed MATLAB v5 file whose ``coeff`` is ``rows`` x 257 zeros (~800 KB on disk, 820 MB decoded)."""
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, {"coeff": np.zeros((rows, 257))}, do_compression=True)
    return buf.getvalue()


def mat_file(array: np.ndarray, compress: bool = True) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, {"coeff": array}, do_compression=compress)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_two_ihdr(first: int = 64, second: int = 12_000) -> bytes:
    """A real 64x64 PNG with a second IHDR chunk claiming ``second`` x ``second`` (Pillow honours the last)."""
    good = png_bytes(np.full((first, first, 3), 128, np.uint8))
    end_of_ihdr = 8 + 8 + 13 + 4
    extra = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", second, second, 8, 2, 0, 0, 0))
    return good[:end_of_ihdr] + extra + good[end_of_ihdr:]


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def big_face(side: int = 4096) -> np.ndarray:
    """The built-in avatar's face scaled up to ``side`` x ``side`` (a real, large photo with one face)."""
    from PIL import Image

    from engine.avatar import builtin_avatar

    return np.asarray(Image.fromarray(np.asarray(builtin_avatar(256))).resize((side, side), Image.BILINEAR))


# --- item 2: .mat zlib bomb --------------------------------------------------------------------------------


def test_mat_zlib_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    from models.clips import ClipError, load_style_clip

    data = mat_bomb()
    assert len(data) < 8 << 20  # passes the upload's (compressed) size limit
    path = tmp_path / "bomb.mat"
    path.write_bytes(data)
    out, mb, cpu = cost(lambda: load_style_clip(path))
    assert isinstance(out, ClipError), out
    assert "decompress" in str(out) or "frames" in str(out), out
    assert_cheap(mb, cpu, ".mat zlib bomb")
    # a normal clip (the sample data's format: coeff (T, 257), compressed) still loads
    clip = np.random.default_rng(0).standard_normal((300, 257))
    path.write_bytes(mat_file(clip))
    np.testing.assert_allclose(load_style_clip(path), clip[:, 80:144].astype(np.float32))
    path.write_bytes(mat_file(clip, compress=False))
    assert load_style_clip(path).shape == (300, 64)


def test_sample_mat_files_still_load() -> None:
    from models.clips import load_pose, load_style_clip
    from models.dataset import default_data_dir

    mats = sorted(Path(default_data_dir()).rglob("*.mat"))[:3]
    if not mats:
        pytest.skip("no sample .mat files")
    for p in mats:
        assert load_style_clip(p).shape[1] == 64
        with __import__("contextlib").suppress(Exception):
            load_pose(p)


def test_npy_claiming_a_huge_shape_is_refused_cheaply(tmp_path: Path) -> None:
    from models.clips import ClipError, load_style_clip

    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 64), np.float32))
    header = buf.getvalue().replace(b"(4, 64)", b"(400000000, 64)")
    path = tmp_path / "huge.npy"
    path.write_bytes(header)
    out, mb, cpu = cost(lambda: load_style_clip(path))
    assert isinstance(out, ClipError), out
    assert_cheap(mb, cpu, ".npy claiming 400M frames")


# --- item 3: images whose decoded size differs from their first header -----------------------------------


def test_png_with_a_second_ihdr_is_refused_before_decoding(tmp_path: Path) -> None:
    from engine.avatar import AvatarError, load_image

    data = png_two_ihdr()
    assert P.image_dimensions(data, "png") == (64, 64)  # the edge check sees only the first header
    path = tmp_path / "two-ihdr.png"
    path.write_bytes(data)
    out, mb, cpu = cost(lambda: load_image(path, max_pixels=P.MAX_IMAGE_SIDE**2))
    assert isinstance(out, AvatarError), out
    assert "12000" in str(out), out
    assert_cheap(mb, cpu, "PNG with a second 12000x12000 IHDR")


_CHILD_DECODE = """
import json, sys, time
from pathlib import Path
from streaming.uploads import decode_avatar
warm, big, fmt = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes(), sys.argv[3]
decode_avatar(warm, fmt, 256)  # loads the face detector, as a running server has
def kb(field):
    return next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
Path("/proc/self/clear_refs").write_text("5")
rss0, t0 = kb("VmRSS:"), time.thread_time()
out = decode_avatar(big, fmt, 256)
print(json.dumps({"shape": list(out.shape), "mb": (kb("VmHWM:") - rss0) / 1024, "cpu": time.thread_time() - t0}))
"""


def test_a_large_real_photo_is_cropped_within_budget(tmp_path: Path) -> None:
    """Measured in a child process that does nothing else: the peak RSS is process-wide, and in the suite's
    process other threads (the shared engine's, a lingering server's) allocate at the same time."""
    import subprocess
    import sys

    face = big_face(4096)
    for fmt, encode in (("jpeg", jpeg_bytes), ("png", png_bytes)):
        warm, big = tmp_path / f"warm.{fmt}", tmp_path / f"big.{fmt}"
        warm.write_bytes(encode(face[::16, ::16]))
        big.write_bytes(encode(face))
        done = subprocess.run([sys.executable, "-c", _CHILD_DECODE, str(warm), str(big), fmt],
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
        assert done.returncode == 0, done.stderr[-2000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert got["shape"] == [256, 256, 3], got
        assert_cheap(got["mb"], got["cpu"], f"4096x4096 {fmt.upper()} avatar")


# --- the server --------------------------------------------------------------------------------------------


runtime = shared_runtime
settings = functools.partial(server_settings, max_sessions=8)


def test_upload_bombs_get_clean_errors_from_the_server(runtime) -> None:
    async def main() -> None:
        async with PresenterServer(runtime, settings()) as server:
            c = await Raw.open(server.port)
            msg = await c.call("upload_style", name="bomb", format="mat", data=mat_bomb())
            assert msg["type"] == "error" and msg["code"] == "bad_clip", msg
            msg = await c.call("set_avatar", format="png", data=png_two_ihdr())
            assert msg["type"] == "error" and msg["code"] in ("bad_image", "too_large"), msg
            await c.assert_alive()
            await c.ws.close()

    run(main())


# --- item 4: event-loop stall ------------------------------------------------------------------------------


def test_large_non_upload_messages_are_refused_before_json_parsing() -> None:
    import tracemalloc

    bomb = '{"v":1,"id":1,"type":"ping","x":[' + "{}," * 3_600_000 + "{}]}"  # 11 MB, millions of objects
    limits = P.Limits()
    assert len(bomb) < limits.max_frame_bytes  # the transport accepts it
    tracemalloc.start()
    try:
        out, _, cpu = cost(lambda: P.parse_message(bomb, limits))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(out, P.ProtocolError) and out.code == P.ErrorCode.TOO_LARGE, out
    assert peak < 1 << 20, f"{peak} bytes allocated: the message was parsed"
    assert cpu < 0.5, cpu
    # an upload-sized message that is one flat object is still parsed (and then validated)
    upload = P.make_request("upload_style", 2, name="x", format="npy", data=b"\x93NUMPY" + b"\x00" * (1 << 20))
    assert len(upload) > limits.max_message_bytes
    request = P.parse_message(upload, limits)
    assert isinstance(request, P.UploadStyle) and len(request.data) == 6 + (1 << 20)


def test_rate_limited_messages_are_not_parsed(runtime, monkeypatch) -> None:
    parsed: list[int] = []
    real = P.parse_message

    def counting(raw, limits=P.DEFAULT_LIMITS):  # noqa: ANN001, ANN202
        parsed.append(len(raw))
        return real(raw, limits)

    monkeypatch.setattr(P, "parse_message", counting)

    async def main() -> None:
        async with PresenterServer(runtime, settings(rate_limit_per_s=0.5, rate_limit_burst=2)) as server:
            c = await Raw.open(server.port)
            padded = '{"v":1,"id":"p%d","type":"ping","pad":[' + ",".join(["{}"] * 20_000) + "]}"
            replies = []
            for i in range(30):
                await c.ws.send(padded.replace("%d", str(i)))
            for _ in range(30):
                replies.append(json.loads(await asyncio.wait_for(c.ws.recv(), 30)))
            limited = [r for r in replies if r.get("code") == "rate_limited"]
            assert len(limited) >= 27, replies[:3]
            assert [r["id"] for r in limited] == [f"p{i}" for i in range(30 - len(limited), 30)]
            assert all(r["request"] == "ping" for r in limited)
            assert len(parsed) == 30 - len(limited), parsed
            await c.ws.close()

    run(main())


def test_offers_with_too_many_media_sections_are_refused_before_negotiation() -> None:
    fingerprint = ":".join(["AA"] * 32)
    body = "".join(f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{i}\r\na=rtpmap:96 VP8/90000\r\n" for i in range(250))
    sdp = (
        f"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:{'x' * 24}\r\n"
        f"a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\n" + body
    )
    assert len(sdp) < P.MAX_SDP_CHARS  # the offer: 22 KB, within the SDP size limit
    with pytest.raises(P.ProtocolError) as info:
        P.parse_message(P.make_request("offer", 1, sdp=sdp))
    assert info.value.code == P.ErrorCode.BAD_SDP and "250 media sections" in info.value.message


# --- item 5: DNS rebinding ---------------------------------------------------------------------------------


async def _ws_status(port: int, headers: dict[str, str]) -> int:
    """Status of a raw websocket handshake with exactly these Host/Origin headers (101 = accepted)."""
    lines = [f"{k}: {v}" for k, v in headers.items()]
    request = (
        "GET /ws HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 20)
    writer.close()
    return int(status_line.split()[1])


async def _http_status(port: int, request: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return int(status_line.split()[1]), headers, body


def test_dns_rebinding_host_and_cross_scheme_origins_are_refused(runtime) -> None:
    async def main() -> None:
        async with PresenterServer(runtime, settings(allowed_hosts=("talk.example",))) as server:
            p = server.port

            def hdr(host: str, origin: str | None = None) -> dict[str, str]:
                return {"Host": host} | ({"Origin": origin} if origin else {})

            assert await _ws_status(p, hdr(f"evil.example:{p}", f"http://evil.example:{p}")) == 403
            assert await _ws_status(p, hdr(f"evil.example:{p}")) == 403
            assert await _ws_status(p, hdr(f"127.0.0.1:{p}", f"chrome-extension://127.0.0.1:{p}")) == 403
            assert await _ws_status(p, hdr(f"127.0.0.1:{p}", f"https://127.0.0.1:{p}")) == 403
            assert await _ws_status(p, hdr(f"127.0.0.1:{p}", f"http://127.0.0.1:{p + 1}")) == 403
            assert await _ws_status(p, hdr(f"127.0.0.1:{p}", "null")) == 403
            assert await _ws_status(p, hdr(f"127.0.0.1:{p}", f"http://127.0.0.1:{p}")) == 101
            assert await _ws_status(p, hdr(f"localhost:{p}", f"http://localhost:{p}")) == 101
            assert await _ws_status(p, hdr(f"[::1]:{p}", f"http://[::1]:{p}")) == 101
            assert await _ws_status(p, hdr(f"talk.example:{p}", f"http://talk.example:{p}")) == 101
            assert await _ws_status(p, hdr(f"127.0.0.1:{p}")) == 101  # no Origin: not a browser
            two_hosts = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nHost: evil.example:{p}\r\n\r\n"
            assert (await _http_status(p, two_hosts))[0] == 400
            # the page and /healthz are not served under a rebound name either
            status, _, _ = await _http_status(p, f"GET /healthz HTTP/1.1\r\nHost: evil.example:{p}\r\n\r\n")
            assert status == 403
        # with a token the token protects the socket: any host name may reach it (LAN names, proxies)
        async with PresenterServer(runtime, settings(token="s3cret")) as server:
            p = server.port
            status, _, _ = await _http_status(p, f"GET /healthz HTTP/1.1\r\nHost: box.lan:{p}\r\n\r\n")
            assert status == 200

    run(main())


# --- item 6: upload flood ----------------------------------------------------------------------------------


def test_uploads_are_capped_per_session_and_encoded_off_the_model_worker(runtime, monkeypatch) -> None:
    import threading

    threads: list[str] = []
    real = runtime.decoder.encode_style

    def recording(clip):  # noqa: ANN001, ANN202
        threads.append(threading.current_thread().name)
        return real(clip)

    monkeypatch.setattr(runtime.decoder, "encode_style", recording)
    buf = io.BytesIO()
    np.save(buf, (0.2 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32))
    clip = buf.getvalue()

    async def main() -> None:
        async with PresenterServer(runtime, settings(rate_limit_burst=1000)) as server:
            c = await Raw.open(server.port)
            replies = [await c.call("upload_style", name=f"u{i}", format="npy", data=clip) for i in range(20)]
            ok = [r for r in replies if r["type"] == "result"]
            limited = [r for r in replies if r.get("code") == "rate_limited"]
            assert 1 <= len(ok) <= server.settings.upload_burst + 1 and len(ok) + len(limited) == 20, replies
            assert all("upload" in r["message"] for r in limited)
            await c.assert_alive()
            await c.ws.close()

    run(main())
    assert threads and all(not t.startswith(("styletalk-model", "MainThread")) for t in threads), threads


# --- items 7, 8: tokens, HTTP edge cases, invalid UTF-8 ----------------------------------------------------

TOKEN = "a+b&c%d=e f"


def test_tokens_with_url_special_characters_work_as_printed(runtime) -> None:
    from urllib.parse import parse_qs, urlsplit

    from clients.client import StyleTalkClient
    from streaming.serve_command import page_url

    async def main() -> None:
        async with PresenterServer(runtime, settings(token=TOKEN)) as server:
            printed = page_url(server)
            assert parse_qs(urlsplit(printed).query)["token"] == [TOKEN]  # as the page's URLSearchParams reads it
            client = StyleTalkClient(f"ws://127.0.0.1:{server.port}/ws", token=TOKEN)
            await client.connect()
            assert (await client.request("ping"))["server_time"] > 0
            await client.close()

    run(main())


def test_http_edge_cases_long_segments_head_and_unknown_methods(runtime, caplog) -> None:
    async def main() -> None:
        async with PresenterServer(runtime, settings()) as server:
            p = server.port
            with caplog.at_level(logging.ERROR):
                status, _, _ = await _http_status(p, f"GET /{'a' * 256} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n")
                assert status == 404
                status, _, _ = await _http_status(
                    p, f"GET /{'a' * 300}/{'b' * 300}.js HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n"
                )
                assert status == 404
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
            get_status, get_headers, get_body = await _http_status(p, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n")
            status, headers, body = await _http_status(p, f"HEAD / HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n")
            assert status == get_status == 200 and body == b"" and get_body
            assert headers["content-length"] == get_headers["content-length"] == str(len(get_body))
            for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE", "BREW"):
                status, headers, _ = await _http_status(p, f"{method} / HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n")
                assert status == 405 and headers["allow"] == "GET, HEAD", (method, status)

    run(main())


def test_invalid_utf8_closes_with_1007_as_documented(runtime) -> None:
    doc = (Path(__file__).resolve().parents[1] / "streaming" / "PROTOCOL.md").read_text()
    assert "1007" in doc

    async def main() -> int:
        async with PresenterServer(runtime, settings()) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            key = base64.b64encode(b"0123456789abcdef").decode()
            writer.write(
                (
                    f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            await reader.readuntil(b"\r\n\r\n")
            mask = b"\x01\x02\x03\x04"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\xff\xfe"))
            writer.write(bytes([0x81, 0x80 | 2]) + mask + payload)  # a text frame that is not UTF-8
            await writer.drain()
            data = b""
            while True:
                chunk = await asyncio.wait_for(reader.read(4096), 20)
                if not chunk:
                    break
                data += chunk
            writer.close()
            # the server's frames: the welcome event (text), then a close frame with its code
            i = 0
            while i < len(data):
                opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
                i += 2
                if length == 126:
                    length = int.from_bytes(data[i : i + 2], "big")
                    i += 2
                if opcode == 0x8:
                    return int.from_bytes(data[i : i + 2], "big")
                i += length
            raise AssertionError("no close frame")

    assert run(main()) == 1007

