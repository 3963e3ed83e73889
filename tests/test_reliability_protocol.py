"""Hostile input at the sans-I/O edge: the control-message parser, the flood limiter, error-text hygiene and
image-header checks (decompression bombs are refused from the header, before any pixel is decoded).

No server, no engine: these run in a few seconds and fuzz the parser with hypothesis.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming import protocol as P

LIMITS = P.Limits(max_message_bytes=4096, max_upload_bytes=4096)

# --- fuzzing: parse_message raises nothing but ProtocolError --------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    ["v", "id", "type", "name", "transition_ms", "value", "format", "data", "sdp", "candidate", "sdpMid",
     "sdpMLineIndex", "extra"]
)
_types = st.one_of(st.sampled_from(sorted(P.REQUEST_TYPES)), st.text(max_size=20), _scalars)
_field_values = st.one_of(
    _json,
    st.sampled_from(["npy", "mat", "png", "jpeg", "v=0\r\n", "candidate:1 1 udp 1 1.2.3.4 5 typ host",
                     "iVBORw0KGgo=", "k05VTVBZ", "happy", "neutral", "", "A" * 70]),
)
_envelopes = st.fixed_dictionaries(
    {"v": st.one_of(st.just(1), _scalars), "id": st.one_of(st.integers(-5, 5), _scalars), "type": _types},
    optional={},
).flatmap(lambda base: st.dictionaries(_field_names, _field_values, max_size=4).map(lambda d: {**base, **d}))


def _check(raw: str | bytes) -> None:
    try:
        request = P.parse_message(raw, LIMITS)
    except P.ProtocolError as exc:
        assert isinstance(exc.code, P.ErrorCode)
        text = P.error_from_exception(exc)  # the reply is always valid JSON
        reply = json.loads(text)
        assert reply["type"] == "error" and reply["code"] == str(exc.code)
        return
    assert request.TYPE in P.REQUEST_TYPES
    json.loads(P.reply(request, {}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_envelopes)
def test_fuzz_structured_messages_raise_only_protocol_errors(obj: dict) -> None:
    _check(json.dumps(obj))


@settings(max_examples=200, deadline=None)
@given(st.one_of(_json.map(json.dumps), st.text(max_size=200), st.binary(max_size=200)))
def test_fuzz_arbitrary_text_and_bytes_raise_only_protocol_errors(raw: str | bytes) -> None:
    _check(raw)


def test_pathological_messages() -> None:
    cases: list[tuple[str | bytes, P.ErrorCode]] = [
        ("[" * 100_000 + "]" * 100_000, P.ErrorCode.BAD_JSON),  # nested too deeply (no RecursionError)
        ("[" * 6000 + "]" * 6000, P.ErrorCode.TOO_LARGE),  # over this test's frame cap (4 KiB + upload)
        ("[" * 2000 + "]" * 2000, P.ErrorCode.BAD_JSON),  # not an object (deep nesting parses)
        ('{"v":1,"id":1,"type":"ping","x":' + "[" * 1500 + "]" * 1500 + "}", P.ErrorCode.BAD_JSON),
        (b"\xff\xfe{}", P.ErrorCode.BAD_JSON),
        ("\ud800", P.ErrorCode.BAD_JSON),  # lone surrogate
        ('{"v":1,"id":1,"type":"set_intensity","value":NaN}', P.ErrorCode.BAD_JSON),
        ('{"v":1,"id":1,"type":"set_intensity","value":1e999}', P.ErrorCode.BAD_FIELD),
        ('{"v":true,"id":1,"type":"ping"}', P.ErrorCode.BAD_VERSION),
        ('{"v":1,"id":9007199254740993,"type":"ping"}', P.ErrorCode.BAD_ID),
        ('{"v":1,"id":1,"type":"ping","type":"hangup","x":1}', P.ErrorCode.BAD_FIELD),  # dup keys: last wins
        ('{"v":1,"id":1,"type":"set_style","name":"../../etc/passwd"}', P.ErrorCode.BAD_FIELD),
        ('{"v":1,"id":1,"type":"set_style","name":"ok","transition_ms":1e300}', P.ErrorCode.BAD_FIELD),
        ('{"v":1,"id":1,"type":"upload_style","name":"x","format":"npy","data":"@@@@"}',
         P.ErrorCode.BAD_BASE64),
        ('{"v":1,"id":1,"type":"offer","sdp":"hello"}', P.ErrorCode.BAD_FIELD),
        ("  ", P.ErrorCode.BAD_JSON),
        ("", P.ErrorCode.BAD_JSON),
    ]
    for raw, code in cases:
        with pytest.raises(P.ProtocolError) as info:
            P.parse_message(raw, P.DEFAULT_LIMITS if isinstance(raw, str) and len(raw) > 100_000 else LIMITS)
        assert info.value.code == code, (str(raw)[:60], info.value)


# --- images: dimensions are checked from the header ------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IDAT holds a little zlib data: the classic decompression-bomb shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + b"\x00" * 3 * min(width, 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * 4, 9)) + chunk(
        b"IEND", b""
    )


def _avatar_request(data: bytes, fmt: str = "png") -> str:
    return P.make_request("set_avatar", 1, format=fmt, data=data)


@pytest.mark.parametrize("size", [(5000, 10), (10, 5000), (100_000, 100_000), (0, 10), (2**31, 2**31)])
def test_image_bombs_and_empty_canvases_are_refused_from_the_header(size: tuple[int, int]) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.parse_message(_avatar_request(_png_header(*size)), P.DEFAULT_LIMITS)
    assert info.value.code == P.ErrorCode.TOO_LARGE


def test_jpeg_header_dimensions_and_truncated_headers() -> None:
    # SOI, an APP0 segment, then SOF0 claiming 60000 x 60000
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00"
    jpeg = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9 + sof
    assert P.image_dimensions(jpeg, "jpeg") == (60000, 60000)
    with pytest.raises(P.ProtocolError) as info:
        P.parse_message(_avatar_request(jpeg, "jpeg"), P.DEFAULT_LIMITS)
    assert info.value.code == P.ErrorCode.TOO_LARGE
    for broken in (b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x01", b"\xff\xd8\xff\xe0\xff\xff" + b"\x00" * 10):
        with pytest.raises(P.ProtocolError) as info:
            P.parse_message(_avatar_request(broken, "jpeg"), P.DEFAULT_LIMITS)
        assert info.value.code == P.ErrorCode.BAD_IMAGE
    with pytest.raises(P.ProtocolError) as info:  # PNG signature, no IHDR
        P.parse_message(_avatar_request(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30), P.DEFAULT_LIMITS)
    assert info.value.code == P.ErrorCode.BAD_IMAGE


def test_upload_over_the_limit_is_refused_before_decoding() -> None:
    data = base64.b64encode(b"\x93NUMPY" + b"\x00" * 5000).decode()
    raw = json.dumps({"v": 1, "id": 1, "type": "upload_style", "name": "x", "format": "npy", "data": data})
    with pytest.raises(P.ProtocolError) as info:
        P.parse_message(raw, LIMITS)
    assert info.value.code == P.ErrorCode.TOO_LARGE


# --- flood control -------------------------------------------------------------------------------------


def test_rate_limiter_allows_bursts_then_refills() -> None:
    limiter = P.RateLimiter(rate=8.0, burst=5)  # times below are exact binary fractions
    assert [limiter.allow(100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.refused == 2
    assert limiter.allow(100.0625) is False  # half a token
    assert limiter.allow(100.125) is True  # one token after 1/8 s
    assert [limiter.allow(200.0) for _ in range(6)] == [True] * 5 + [False]  # refill capped at the burst
    assert limiter.allow(150.0) is False  # a clock going backwards gives nothing
    with pytest.raises(ValueError):
        P.RateLimiter(rate=0, burst=1)


# --- error hygiene -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "/tmp/styletalk-upload-x1/upload.npy: cannot read .npy file (ValueError: cannot reshape array)",
        "cannot read avatar image /tmp/abc/avatar.png: cannot identify image file '/tmp/abc/avatar.png'",
        "Traceback (most recent call last):\n  File \"/work/main/engine/session.py\", line 3\nKeyError: 'x'",
        "RuntimeError: boom in /home/user/project/models/warp.py",
    ],
)
def test_error_replies_carry_no_paths_tracebacks_or_exception_names(text: str) -> None:
    reply = json.loads(P.error_reply(P.ErrorCode.BAD_CLIP, text, 1, "upload_style"))
    message = reply["message"]
    assert message
    for leak in ("/tmp", "/work", "/home", "Traceback", "Error:", "ValueError", "KeyError", "RuntimeError",
                 ".py"):
        assert leak not in message, (leak, message)


def test_error_hygiene_keeps_useful_text() -> None:
    for text in ("no style named 'hapy'", "style clip must have shape (frames, 64), got (10, 3)",
                 'set_style: "transition_ms" must be in 0..10000, got 20000'):
        assert json.loads(P.error_reply(P.ErrorCode.BAD_FIELD, text))["message"] == text
