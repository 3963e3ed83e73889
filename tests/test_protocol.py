"""The sans-I/O control protocol: every request type, every error code, and fuzzing (hypothesis).

The property that matters most for a network edge: for ANY input, ``parse_message`` either returns a valid
request or raises ``ProtocolError`` — never another exception — and every reply it leads to is valid JSON.
"""

from __future__ import annotations

import base64
import io
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming import protocol as P

LIMITS = P.Limits(max_message_bytes=4096, max_upload_bytes=2048)


def msg(rtype: str, rid: object = 1, **fields: object) -> str:
    return json.dumps({"v": 1, "id": rid, "type": rtype, **fields})


def expect_error(raw: str | bytes, code: P.ErrorCode, limits: P.Limits = LIMITS) -> P.ProtocolError:
    with pytest.raises(P.ProtocolError) as info:
        P.parse_message(raw, limits)
    assert info.value.code == code, info.value
    return info.value


def png_bytes(width: int = 8, height: int = 6) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(width: int = 9, height: int = 7) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# --- valid requests ---------------------------------------------------------------------------------------


def test_field_less_requests_parse_to_their_classes() -> None:
    for rtype, cls in [
        ("ping", P.Ping),
        ("hangup", P.Hangup),
        ("list_styles", P.ListStyles),
        ("interrupt", P.Interrupt),
        ("pause", P.Pause),
        ("resume", P.Resume),
        ("stats", P.GetStats),
    ]:
        req = P.parse_message(msg(rtype, rid="abc"), LIMITS)
        assert type(req) is cls and req.id == "abc" and req.TYPE == rtype


def test_set_style_defaults_and_bounds() -> None:
    req = P.parse_message(msg("set_style", name="happy"), LIMITS)
    assert req == P.SetStyle(1, name="happy", transition_ms=250)
    req = P.parse_message(msg("set_style", rid=9, name="my style-2.v1", transition_ms=0), LIMITS)
    assert req == P.SetStyle(9, name="my style-2.v1", transition_ms=0)
    # JavaScript sends integral numbers as floats sometimes; 300.0 is accepted as 300, 300.5 is not.
    assert P.parse_message(msg("set_style", name="a", transition_ms=300.0), LIMITS).transition_ms == 300
    expect_error(msg("set_style", name="a", transition_ms=300.5), P.ErrorCode.BAD_FIELD)
    expect_error(msg("set_style", name="a", transition_ms=P.MAX_TRANSITION_MS + 1), P.ErrorCode.BAD_FIELD)
    expect_error(msg("set_style", name="a", transition_ms=-1), P.ErrorCode.BAD_FIELD)
    expect_error(msg("set_style", name="a", transition_ms=True), P.ErrorCode.BAD_FIELD)


@pytest.mark.parametrize("name", ["", " lead", "-x", "a/b", "../etc", "a" * 65, "<script>", "tab\there", "é"])
def test_bad_style_names_are_refused(name: str) -> None:
    err = expect_error(msg("set_style", rid=4, name=name), P.ErrorCode.BAD_FIELD)
    assert err.request_id == 4 and err.request_type == "set_style"


def test_set_intensity_range_and_finiteness() -> None:
    assert P.parse_message(msg("set_intensity", value=0), LIMITS) == P.SetIntensity(1, value=0.0)
    assert P.parse_message(msg("set_intensity", value=1.25), LIMITS).value == 1.25
    for bad in (-0.01, 2.01, "1", None, True, [1]):
        expect_error(msg("set_intensity", value=bad), P.ErrorCode.BAD_FIELD)
    expect_error('{"v":1,"id":1,"type":"set_intensity","value":Infinity}', P.ErrorCode.BAD_JSON)
    expect_error('{"v":1,"id":1,"type":"set_intensity","value":1e999}', P.ErrorCode.BAD_FIELD)


def test_offer_and_ice() -> None:
    sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"
    assert P.parse_message(msg("offer", sdp=sdp), LIMITS) == P.Offer(1, sdp=sdp)
    expect_error(msg("offer", sdp="hello"), P.ErrorCode.BAD_FIELD)
    expect_error(msg("offer"), P.ErrorCode.BAD_FIELD)
    big = P.Limits(max_message_bytes=1 << 20)
    expect_error(msg("offer", sdp="v=0" + "x" * P.MAX_SDP_CHARS), P.ErrorCode.TOO_LARGE, big)

    cand = "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"
    req = P.parse_message(msg("ice", candidate=cand, sdpMid="0", sdpMLineIndex=0), LIMITS)
    assert req == P.IceCandidate(1, candidate=cand, sdp_mid="0", sdp_mline_index=0)
    end = P.parse_message(msg("ice", candidate="", sdpMid=None, sdpMLineIndex=None), LIMITS)
    assert end.candidate == "" and end.sdp_mid is None
    expect_error(msg("ice", candidate=cand), P.ErrorCode.BAD_FIELD)  # needs a mid or an index
    expect_error(msg("ice", candidate=cand, sdpMid=3), P.ErrorCode.BAD_FIELD)
    expect_error(msg("ice", candidate=cand, sdpMLineIndex=-1), P.ErrorCode.BAD_FIELD)


def test_upload_style_decodes_base64_and_checks_the_file_signature() -> None:
    data = npy_bytes(np.zeros((3, 64), np.float32))
    req = P.parse_message(
        msg("upload_style", name="mine", format="npy", data=base64.b64encode(data).decode()), LIMITS
    )
    assert isinstance(req, P.UploadStyle) and req.data == data and req.format == "npy" and req.name == "mine"
    assert "data" not in repr(req).split("format")[1]  # bulky bytes stay out of logs

    expect_error(msg("upload_style", name="m", format="npy", data="!!notbase64"), P.ErrorCode.BAD_BASE64)
    expect_error(msg("upload_style", name="m", format="npy", data=""), P.ErrorCode.BAD_FIELD)
    not_npy = base64.b64encode(b"plain text, not an array").decode()
    expect_error(msg("upload_style", name="m", format="npy", data=not_npy), P.ErrorCode.BAD_CLIP)
    expect_error(msg("upload_style", name="m", format="mat", data=not_npy), P.ErrorCode.BAD_CLIP)
    expect_error(msg("upload_style", name="m", format="wav", data=not_npy), P.ErrorCode.BAD_FIELD)
    mat = b"MATLAB 5.0 MAT-file, Platform: x" + bytes(100)
    ok = P.parse_message(
        msg("upload_style", name="m", format="mat", data=base64.b64encode(mat).decode()), LIMITS
    )
    assert ok.data == mat


def test_upload_size_limits_apply_to_decoded_bytes() -> None:
    limit = LIMITS.max_upload_bytes
    header = npy_bytes(np.zeros((0, 64), np.float32))
    fits = header + bytes(limit - len(header))
    over = fits + b"\0"
    encoded = base64.b64encode(fits).decode()
    assert len(msg("upload_style", name="m", format="npy", data=encoded)) > LIMITS.max_message_bytes // 2
    assert P.parse_message(msg("upload_style", name="m", format="npy", data=encoded), LIMITS).data == fits
    err = expect_error(
        msg("upload_style", rid="u", name="m", format="npy", data=base64.b64encode(over).decode()),
        P.ErrorCode.TOO_LARGE,
    )
    assert err.request_id == "u"


def test_avatar_images_png_and_jpeg_with_dimension_limit() -> None:
    for fmt, data, size in (("png", png_bytes(8, 6), (8, 6)), ("jpeg", jpeg_bytes(9, 7), (9, 7))):
        assert P.image_dimensions(data, fmt) == size
        req = P.parse_message(msg("set_avatar", format=fmt, data=base64.b64encode(data).decode()), LIMITS)
        assert isinstance(req, P.SetAvatar) and req.data == data
    # A PNG/JPEG claiming a huge canvas is refused from its header, before any decoder allocates it.
    bomb = bytearray(png_bytes(8, 6))
    bomb[16:20] = (100_000).to_bytes(4, "big")
    expect_error(
        msg("set_avatar", format="png", data=base64.b64encode(bytes(bomb)).decode()), P.ErrorCode.TOO_LARGE
    )
    jpeg = bytearray(jpeg_bytes(9, 7))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 7] = (60_000).to_bytes(2, "big")
    expect_error(
        msg("set_avatar", format="jpeg", data=base64.b64encode(bytes(jpeg)).decode()), P.ErrorCode.TOO_LARGE
    )
    # Signature and header checks.
    expect_error(
        msg("set_avatar", format="png", data=base64.b64encode(jpeg_bytes()).decode()), P.ErrorCode.BAD_IMAGE
    )
    truncated = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF").decode()
    expect_error(msg("set_avatar", format="jpeg", data=truncated), P.ErrorCode.BAD_IMAGE)
    expect_error(msg("set_avatar", format="gif", data=truncated), P.ErrorCode.BAD_FIELD)


# --- envelope errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        "",
        "hello",
        "[1,2]",
        '"text"',
        "null",
        "42",
        '{"v":1,"id":1,"type":"ping"',
        "NaN",
        "[" * 5000,
    ],
)
def test_bad_json(raw: str | bytes) -> None:
    err = expect_error(raw, P.ErrorCode.BAD_JSON)
    assert err.request_id is None


def test_version_id_and_type_checks_echo_what_they_can() -> None:
    assert (
        expect_error(msg("ping", rid=5).replace('"v": 1', '"v": 2'), P.ErrorCode.BAD_VERSION).request_id == 5
    )
    expect_error('{"id":1,"type":"ping"}', P.ErrorCode.BAD_VERSION)
    expect_error('{"v":true,"id":1,"type":"ping"}', P.ErrorCode.BAD_VERSION)
    for bad_id in (None, True, 1.5, "", "x" * 65, 2**60, [1], {"a": 1}):
        err = expect_error(msg("ping", rid=bad_id), P.ErrorCode.BAD_ID)
        assert err.request_type == "ping"
    expect_error('{"v":1,"type":"ping"}', P.ErrorCode.BAD_ID)
    err = expect_error(msg("dance", rid="d"), P.ErrorCode.UNKNOWN_TYPE)
    assert err.request_id == "d" and "set_style" in err.message
    expect_error('{"v":1,"id":1}', P.ErrorCode.UNKNOWN_TYPE)
    expect_error('{"v":1,"id":1,"type":["ping"]}', P.ErrorCode.UNKNOWN_TYPE)


def test_unknown_fields_are_refused_so_typos_fail_loudly() -> None:
    err = expect_error(msg("set_style", rid=2, name="happy", transition=100), P.ErrorCode.BAD_FIELD)
    assert "transition" in err.message and err.request_id == 2
    expect_error(msg("ping", extra=1), P.ErrorCode.BAD_FIELD)


def test_message_size_limit_for_non_uploads() -> None:
    padding = "v=0" + "x" * LIMITS.max_message_bytes
    expect_error(msg("offer", sdp=padding), P.ErrorCode.TOO_LARGE)
    expect_error("x" * (LIMITS.max_frame_bytes + 1), P.ErrorCode.TOO_LARGE)


# --- replies ---------------------------------------------------------------------------------------------


def test_reply_error_and_event_builders() -> None:
    req = P.SetStyle("r1", name="happy")
    out = json.loads(
        P.reply(req, {"frame": np.int64(12), "lat": np.float32(0.5), "p95": math.nan, "f": Fraction(1, 4)})
    )
    assert out == {
        "v": 1,
        "id": "r1",
        "type": "result",
        "request": "set_style",
        "result": {"frame": 12, "lat": 0.5, "p95": None, "f": 0.25},
    }
    err = json.loads(P.error_reply(P.ErrorCode.UNKNOWN_STYLE, "no style", 3, "set_style"))
    assert err == {
        "v": 1,
        "id": 3,
        "type": "error",
        "request": "set_style",
        "code": "unknown_style",
        "message": "no style",
    }
    exc = P.ProtocolError("bad_field", "x", 7, "ping")
    assert json.loads(P.error_from_exception(exc))["id"] == 7
    with pytest.raises(ValueError):
        P.ProtocolError("not_a_code", "x")
    ev = json.loads(P.event("welcome", session="s1", styles=["a"], stats={"x": math.inf}))
    assert ev == {
        "v": 1,
        "type": "event",
        "event": "welcome",
        "session": "s1",
        "styles": ["a"],
        "stats": {"x": None},
    }
    assert json.loads(P.reply(P.Ping(1), {"arr": np.arange(3)}))["result"]["arr"] == [0, 1, 2]


def test_make_request_round_trips_through_parse() -> None:
    data = png_bytes()
    req = P.parse_message(P.make_request("set_avatar", "a", format="png", data=data), LIMITS)
    assert req == P.SetAvatar("a", format="png", data=data)
    assert P.parse_message(P.make_request("stats", 3), LIMITS) == P.GetStats(3)


# --- fuzzing ---------------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "name",
        "value",
        "transition_ms",
        "sdp",
        "candidate",
        "sdpMid",
        "sdpMLineIndex",
        "format",
        "data",
        "extra",
    ]
)


def _check_outcome(raw: str | bytes) -> None:
    """The edge contract: a Request or a ProtocolError whose error reply is valid JSON; nothing else."""
    try:
        req = P.parse_message(raw, LIMITS)
    except P.ProtocolError as exc:
        assert isinstance(exc.code, P.ErrorCode)
        out = json.loads(P.error_from_exception(exc))
        assert out["type"] == "error" and out["code"] == exc.code.value
        return
    assert isinstance(req, P.Request) and req.TYPE in P.REQUEST_TYPES
    json.loads(P.reply(req, {}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_arbitrary_text_and_bytes(raw: str | bytes) -> None:
    _check_outcome(raw)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rtype=st.sampled_from(sorted(P.REQUEST_TYPES)) | st.text(max_size=12),
    rid=json_values,
    fields=st.dictionaries(field_names, json_values, max_size=4),
    version=st.sampled_from([1, 1, 1, 2, "1", None]),
)
def test_fuzz_structured_messages(rtype: str, rid: object, fields: dict, version: object) -> None:
    raw = json.dumps({"v": version, "id": rid, "type": rtype, **fields})
    _check_outcome(raw)
    _check_outcome(raw.encode())


@settings(max_examples=200, deadline=None)
@given(
    name=st.from_regex(P.STYLE_NAME_RE, fullmatch=True),
    transition=st.integers(0, P.MAX_TRANSITION_MS),
    rid=st.integers(-(2**53) + 1, 2**53 - 1) | st.text(min_size=1, max_size=64),
    value=st.floats(0.0, P.MAX_INTENSITY),
)
def test_fuzz_valid_requests_round_trip(name: str, transition: int, rid: int | str, value: float) -> None:
    assert P.parse_message(P.make_request("set_style", rid, name=name, transition_ms=transition), LIMITS) == (
        P.SetStyle(rid, name=name, transition_ms=transition)
    )
    assert P.parse_message(P.make_request("set_intensity", rid, value=value), LIMITS) == P.SetIntensity(
        rid, value
    )


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=64))
def test_fuzz_image_header_reader_never_crashes(data: bytes) -> None:
    for fmt in ("png", "jpeg"):
        for blob in (data, b"\x89PNG\r\n\x1a\n" + data, b"\xff\xd8\xff" + data):
            size = P.image_dimensions(blob, fmt)
            assert size is None or (isinstance(size[0], int) and isinstance(size[1], int))
