"""The websocket control protocol, version 1: sans-I/O parsing, validation and reply building.

Every message is one JSON object ``{"v": 1, "id": ..., "type": ..., <fields>}``. This module turns raw text
into typed, fully validated request dataclasses (:func:`parse_message`) and builds the replies/events as
JSON text; it does no I/O, so it is unit-tested and fuzzed without a socket and the server can trust every
field it receives. Anything wrong raises :class:`ProtocolError` with a stable machine-readable ``code``
(see :class:`ErrorCode`) and a human sentence; the server turns it into an error reply and keeps the session.

The message catalogue with examples is in ``streaming/PROTOCOL.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from engine.config import MAX_INTENSITY

PROTOCOL_VERSION = 1
MAX_ID_CHARS = 64
MAX_SDP_CHARS = 32 << 10  # a browser offer with audio+video is ~5 KiB; leave room for many candidates
MAX_CANDIDATE_CHARS = 1024
MAX_TRANSITION_MS = 10_000
# An offer carries one media section per track (the presenter needs audio + video; a browser may add a data
# channel). aiortc builds transports and gathers candidates per unbundled section: hundreds of them stall it.
MAX_MEDIA_SECTIONS = 8
MAX_IMAGE_SIDE = 4096  # avatar photos are cropped to the face; larger only costs memory (decompression bombs)
STYLE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+\-]{0,63}")  # "a+b": the mix of styles a and b
# A JSON id may be a string or an integer that survives a round trip through a JavaScript number.
MAX_SAFE_INT = (1 << 53) - 1


class ErrorCode(StrEnum):
    """Stable error codes (documented in PROTOCOL.md); clients switch on these, never on the message text."""

    BAD_JSON = "bad_json"  # not UTF-8, not JSON, or not a JSON object
    BAD_VERSION = "bad_version"  # "v" missing or not 1
    BAD_ID = "bad_id"  # "id" missing or not a string (<= 64 chars) / safe integer
    UNKNOWN_TYPE = "unknown_type"  # "type" missing or not a known request type
    BAD_FIELD = "bad_field"  # a field is missing, unknown, of the wrong type or out of range
    TOO_LARGE = "too_large"  # the message or an upload exceeds its size limit
    BAD_BASE64 = "bad_base64"  # upload data is not valid base64
    BAD_CLIP = "bad_clip"  # uploaded style clip cannot be read as (T, 64) expression coefficients
    BAD_IMAGE = "bad_image"  # uploaded avatar is not a decodable PNG/JPEG with one usable face
    BAD_VIDEO = "bad_video"  # uploaded style video gives no style; the message names "[detail]" (no_face...)
    UNKNOWN_STYLE = "unknown_style"  # no style with that name
    STYLE_EXISTS = "style_exists"  # upload under a name that is already taken
    BAD_STATE = "bad_state"  # request not valid now (e.g. a second offer while media is running)
    NO_MEDIA = "no_media"  # request needs a running WebRTC connection (send "offer" first)
    BAD_SDP = "bad_sdp"  # the offer could not be negotiated
    SERVER_FULL = "server_full"  # max sessions reached (sent as an event, then the socket closes)
    RATE_LIMITED = "rate_limited"  # too many messages on this connection; slow down (the session keeps running)
    INTERNAL = "internal"  # unexpected server failure; the session stays usable
    UNKNOWN_ROOM = "unknown_room"  # no open room with that id (never opened, or closed)
    BAD_TOKEN = "bad_token"  # the token is neither the room's viewer token nor its control token
    FORBIDDEN = "forbidden"  # this role may not send this request (viewers only watch; presenters don't watch)
    ROOM_FULL = "room_full"  # the room has as many viewers as it may (direct mode: a small cap) or rooms are full
    FANOUT_DOWN = "fanout_down"  # the fan-out server (Janus) is unreachable now; the room keeps running


class ProtocolError(Exception):
    """A request that cannot be served; ``request_id``/``request_type`` are filled when they were readable."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        request_id: str | int | None = None,
        request_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.request_id = request_id
        self.request_type = request_type

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Limits:
    """Edge limits; the server fills them from ``ServerConfig`` (max_message_bytes, max_upload_bytes)."""

    max_message_bytes: int = 64 << 10
    max_upload_bytes: int = 8 << 20

    @property
    def max_upload_message_bytes(self) -> int:
        """Largest upload message: base64 of the largest upload plus room for the envelope."""
        return 4 * ((self.max_upload_bytes + 2) // 3) + 4096

    @property
    def max_frame_bytes(self) -> int:
        """The transport's hard cap per websocket message (larger frames are refused by the socket layer)."""
        return max(self.max_message_bytes, self.max_upload_message_bytes)


DEFAULT_LIMITS = Limits()


class RateLimiter:
    """Token bucket per connection: ``burst`` messages at once, ``rate`` per second sustained.

    Sans-I/O (the caller passes the time) so it is tested without sleeping. A flood of control messages
    then costs the server one cheap check per message instead of a dispatch (style switches, stats, uploads)
    each, and the flooding client gets ``rate_limited`` replies while its session keeps running.
    """

    def __init__(self, rate: float = 20.0, burst: int = 40) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None
        self.refused = 0

    def allow(self, now: float) -> bool:
        """Take one token at time ``now`` (seconds, monotonic); False when the bucket is empty."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now if self._last is None else max(self._last, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.refused += 1
        return False

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until the next token is available (0 when one is)."""
        tokens = self._tokens
        if self._last is not None and now > self._last:
            tokens = min(self.burst, tokens + (now - self._last) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)


# Error texts go to remote clients: they must name the problem, never the server's internals.
_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.\-+~@%]+){2,}/?|/(?:tmp|home|root|usr|etc|var|work|proc)\b[^\s:'\",)]*")
_EXC_NAME_RE = re.compile(r"\b(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Warning)\b:?\s?")
MAX_MESSAGE_CHARS = 300


def public_message(text: str) -> str:
    """``text`` made safe for a remote client: no file paths, no exception class names, no tracebacks."""
    text = str(text).split("Traceback (most recent call last)", 1)[0]
    text = _PATH_RE.sub("<file>", text)
    text = _EXC_NAME_RE.sub("", text)
    text = " ".join(text.split()).strip(" :")
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text or "request failed"

# --- requests ---


REQUEST_TYPES: dict[str, type[Request]] = {}  # wire type -> request class; filled as the classes are defined


@dataclass(frozen=True)
class Request:
    """Base of all requests: ``id`` is echoed in the reply so a client can match it to its request.

    A subclass with a ``TYPE`` registers itself in :data:`REQUEST_TYPES`; one with fields overrides
    :meth:`parse`. So a new request is one class here, one handler in the server, one row in PROTOCOL.md
    (``tests/test_protocol_docs.py`` checks the last two).
    """

    TYPE: ClassVar[str] = ""
    id: str | int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            if cls.TYPE in REQUEST_TYPES:
                raise TypeError(f"request type {cls.TYPE!r} is defined twice")
            REQUEST_TYPES[cls.TYPE] = cls

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> Request:
        """Validate this request's fields (``f``) into an instance; requests without fields take none."""
        return cls(rid)


@dataclass(frozen=True)
class Ping(Request):
    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Offer(Request):
    """WebRTC signaling: the client's SDP offer; the reply carries the server's SDP answer."""

    TYPE: ClassVar[str] = "offer"
    sdp: str = ""

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> Offer:
        sdp = f.string("sdp", max_chars=MAX_SDP_CHARS)
        if not sdp or not sdp.startswith("v=0"):
            raise f.error(ErrorCode.BAD_FIELD, '"sdp" must be an SDP offer (starting with "v=0")')
        sections = sum(1 for line in sdp.splitlines() if line.startswith("m="))
        if sections > MAX_MEDIA_SECTIONS:
            raise f.error(
                ErrorCode.BAD_SDP, f"the offer has {sections} media sections, at most {MAX_MEDIA_SECTIONS}"
            )
        return cls(rid, sdp=sdp)


@dataclass(frozen=True)
class IceCandidate(Request):
    """A trickled ICE candidate of the client (an empty ``candidate`` marks the end of candidates)."""

    TYPE: ClassVar[str] = "ice"
    candidate: str = ""
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> IceCandidate:
        candidate = f.string("candidate", max_chars=MAX_CANDIDATE_CHARS)
        mid_value = f.obj.get("sdpMid")
        f.used.add("sdpMid")
        if mid_value is not None and (not isinstance(mid_value, str) or len(mid_value) > 32):
            raise f.error(ErrorCode.BAD_FIELD, '"sdpMid" must be a string of at most 32 characters or null')
        index_value = f.obj.get("sdpMLineIndex")
        f.used.add("sdpMLineIndex")
        if index_value is not None:
            index_value = f.integer("sdpMLineIndex", lo=0, hi=255)
        if candidate and mid_value is None and index_value is None:
            raise f.error(ErrorCode.BAD_FIELD, 'a candidate needs "sdpMid" or "sdpMLineIndex"')
        return cls(rid, candidate=candidate or "", sdp_mid=mid_value, sdp_mline_index=index_value)


@dataclass(frozen=True)
class Hangup(Request):
    """Stop the media (peer connection and live session); the websocket stays open for a new offer."""

    TYPE: ClassVar[str] = "hangup"


@dataclass(frozen=True)
class ListStyles(Request):
    TYPE: ClassVar[str] = "list_styles"


@dataclass(frozen=True)
class SetStyle(Request):
    TYPE: ClassVar[str] = "set_style"
    name: str = ""
    transition_ms: int = 250

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> SetStyle:
        name = f.style_name()
        transition = f.integer("transition_ms", lo=0, hi=MAX_TRANSITION_MS, default=250)
        return cls(rid, name=name, transition_ms=int(transition or 0))


@dataclass(frozen=True)
class SetIntensity(Request):
    TYPE: ClassVar[str] = "set_intensity"
    value: float = 1.0

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> SetIntensity:
        return cls(rid, value=f.number("value", lo=0.0, hi=MAX_INTENSITY))


@dataclass(frozen=True)
class SaveStyle(Request):
    """Keep a style this session uploaded (clip or video) as a user style: stored in the server's styles
    directory (``style.user_dir``, like ``styles add``), so it survives a restart and new sessions list it."""

    TYPE: ClassVar[str] = "save_style"
    name: str = ""

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> SaveStyle:
        return cls(rid, name=f.style_name())


@dataclass(frozen=True)
class UploadStyle(Request):
    """A new named style from a style clip file (``format`` "mat" or "npy") or a short video of a talking face
    (``format`` "mp4" or "webm": the server extracts the clip); ``data`` is the decoded file."""

    TYPE: ClassVar[str] = "upload_style"
    name: str = ""
    format: str = "npy"
    data: bytes = field(default=b"", repr=False)

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> UploadStyle:
        name = f.style_name()
        fmt = f.choice("format", CLIP_FORMATS + VIDEO_FORMATS)
        return cls(rid, name=name, format=fmt, data=f.upload("data", fmt, limits.max_upload_bytes))


@dataclass(frozen=True)
class SetAvatar(Request):
    """A new avatar photo (``format`` "png" or "jpeg"); ``data`` is the decoded file."""

    TYPE: ClassVar[str] = "set_avatar"
    format: str = "png"
    data: bytes = field(default=b"", repr=False)

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> SetAvatar:
        fmt = f.choice("format", IMAGE_FORMATS)
        return cls(rid, format=fmt, data=f.upload("data", fmt, limits.max_upload_bytes))


@dataclass(frozen=True)
class Interrupt(Request):
    """Drop buffered speech and return to idle now (barge-in)."""

    TYPE: ClassVar[str] = "interrupt"


@dataclass(frozen=True)
class Pause(Request):
    TYPE: ClassVar[str] = "pause"


@dataclass(frozen=True)
class Resume(Request):
    TYPE: ClassVar[str] = "resume"


@dataclass(frozen=True)
class GetStats(Request):
    TYPE: ClassVar[str] = "stats"


ROOM_ID_RE = re.compile(r"[A-Za-z0-9_-]{4,32}")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")


@dataclass(frozen=True)
class OpenRoom(Request):
    """Presenter: open a room on this session's output; the reply carries the viewer and control links."""

    TYPE: ClassVar[str] = "open_room"


@dataclass(frozen=True)
class CloseRoom(Request):
    """Presenter: close this session's room; its viewers get ``room_state`` ``closed``."""

    TYPE: ClassVar[str] = "close_room"


@dataclass(frozen=True)
class Watch(Request):
    """Viewer or operator (on ``/ws/watch``): join ``room`` with its viewer or control ``token``; the reply
    carries the server's SDP *offer* (the viewer answers with ``answer``)."""

    TYPE: ClassVar[str] = "watch"
    room: str = ""
    token: str = field(default="", repr=False)

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> Watch:
        room = f.string("room", max_chars=64) or ""
        token = f.string("token", max_chars=128) or ""
        if not ROOM_ID_RE.fullmatch(room):
            raise f.error(ErrorCode.BAD_FIELD, '"room" must be 4..32 letters, digits, "_" or "-"')
        if not TOKEN_RE.fullmatch(token):
            raise f.error(ErrorCode.BAD_TOKEN, '"token" is not a room token')
        return cls(rid, room=room, token=token)


@dataclass(frozen=True)
class Answer(Request):
    """Viewer: the SDP answer to the offer of ``watch``."""

    TYPE: ClassVar[str] = "answer"
    sdp: str = ""

    @classmethod
    def parse(cls, rid: str | int, f: _Fields, limits: Limits) -> Answer:
        sdp = f.string("sdp", max_chars=MAX_SDP_CHARS)
        if not sdp or not sdp.startswith("v=0"):
            raise f.error(ErrorCode.BAD_FIELD, '"sdp" must be an SDP answer (starting with "v=0")')
        return cls(rid, sdp=sdp)


UPLOAD_TYPES = frozenset({UploadStyle.TYPE, SetAvatar.TYPE})
CLIP_FORMATS = ("mat", "npy")
VIDEO_FORMATS = ("mp4", "webm")  # upload_style also takes a short video; the server extracts the style from it
IMAGE_FORMATS = ("png", "jpeg")

# File signatures checked at the edge so an obviously wrong upload fails fast with a precise message.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "npy": (b"\x93NUMPY",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
}

# --- parsing ---


def image_dimensions(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or a JPEG SOFn header without decoding pixels; None when unreadable.

    Checked before any decoder runs, so a tiny file claiming a gigantic canvas never allocates it.
    """
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt != "jpeg":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + length
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode_json(raw: str | bytes) -> Any:
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(ErrorCode.BAD_JSON, f"message is not valid UTF-8 ({exc.reason})") from None
    if not isinstance(raw, str):
        raise ProtocolError(ErrorCode.BAD_JSON, f"message must be text, got {type(raw).__name__}")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_JSON, "message is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"message is not valid JSON ({exc})") from None


def _read_id(obj: dict[str, Any]) -> str | int:
    if "id" not in obj:
        raise ProtocolError(ErrorCode.BAD_ID, 'missing "id" (a string or integer echoed in the reply)')
    rid = obj["id"]
    if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) <= MAX_SAFE_INT:
        return rid
    raise ProtocolError(ErrorCode.BAD_ID, f'"id" must be a 1..{MAX_ID_CHARS} char string or a safe integer')


class _Fields:
    """Typed access to a request's fields; every accessor raises a BAD_FIELD error naming the field."""

    def __init__(self, obj: dict[str, Any], rid: str | int, rtype: str) -> None:
        self.obj = obj
        self.rid = rid
        self.rtype = rtype
        self.used: set[str] = {"v", "id", "type"}

    def error(self, code: ErrorCode, message: str) -> ProtocolError:
        return ProtocolError(code, f"{self.rtype}: {message}", self.rid, self.rtype)

    def _get(self, name: str, required: bool) -> Any:
        self.used.add(name)
        if name not in self.obj:
            if required:
                raise self.error(ErrorCode.BAD_FIELD, f'missing field "{name}"')
            return None
        return self.obj[name]

    def string(
        self, name: str, *, max_chars: int, required: bool = True, default: str | None = None
    ) -> str | None:
        value = self._get(name, required)
        if value is None and not required:
            return default
        if not isinstance(value, str):
            raise self.error(ErrorCode.BAD_FIELD, f'"{name}" must be a string')
        if len(value) > max_chars:
            raise self.error(ErrorCode.TOO_LARGE, f'"{name}" is longer than {max_chars} characters')
        return value

    def integer(self, name: str, *, lo: int, hi: int, default: int | None = None) -> int | None:
        value = self._get(name, default is None)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JavaScript has one number type: 250.0 is 250
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(ErrorCode.BAD_FIELD, f'"{name}" must be an integer')
        if not lo <= value <= hi:
            raise self.error(ErrorCode.BAD_FIELD, f'"{name}" must be in {lo}..{hi}, got {value}')
        return value

    def number(self, name: str, *, lo: float, hi: float) -> float:
        value = self._get(name, True)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise self.error(ErrorCode.BAD_FIELD, f'"{name}" must be a finite number')
        if not lo <= value <= hi:
            raise self.error(ErrorCode.BAD_FIELD, f'"{name}" must be in {lo:g}..{hi:g}, got {value:g}')
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, max_chars=32)
        if value not in choices:
            raise self.error(
                ErrorCode.BAD_FIELD, f'"{name}" must be one of {", ".join(choices)}, got {value!r}'
            )
        return value

    def style_name(self, name: str = "name") -> str:
        value = self.string(name, max_chars=1024)  # the pattern below bounds the length (64)
        if not STYLE_NAME_RE.fullmatch(value or ""):
            raise self.error(
                ErrorCode.BAD_FIELD,
                f'"{name}" must be 1..64 characters of letters, digits, space, "_", ".", "+" or "-" '
                "starting with a letter or digit",
            )
        return value  # type: ignore[return-value]

    def upload(self, name: str, fmt: str, max_bytes: int) -> bytes:
        text = self.string(name, max_chars=4 * ((max_bytes + 2) // 3) + 4)
        assert text is not None
        if len(text) > 4 * ((max_bytes + 2) // 3):  # cheap pre-check before decoding
            raise self.error(ErrorCode.TOO_LARGE, f"upload is larger than {max_bytes} bytes")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise self.error(ErrorCode.BAD_BASE64, f'"{name}" is not valid base64') from None
        if not data:
            raise self.error(ErrorCode.BAD_FIELD, f'"{name}" is empty')
        if len(data) > max_bytes:
            raise self.error(ErrorCode.TOO_LARGE, f"upload is {len(data)} bytes, limit {max_bytes}")
        magic = _MAGIC.get(fmt)
        if magic is not None and not data.startswith(magic):
            code = ErrorCode.BAD_IMAGE if fmt in IMAGE_FORMATS else ErrorCode.BAD_CLIP
            raise self.error(code, f"data is not a {fmt} file (wrong file signature)")
        if fmt == "mp4" and data[4:8] != b"ftyp" or fmt == "webm" and not data.startswith(b"\x1a\x45\xdf\xa3"):
            raise self.error(ErrorCode.BAD_VIDEO, f"[unreadable] data is not an {fmt} file (wrong file signature)")
        if fmt == "mat" and b"MATLAB" not in data[:128]:
            raise self.error(ErrorCode.BAD_CLIP, "data is not a MATLAB .mat file (no MATLAB header)")
        if fmt in IMAGE_FORMATS:
            size = image_dimensions(data, fmt)
            if size is None:
                raise self.error(ErrorCode.BAD_IMAGE, f"cannot read the {fmt} image header")
            if max(size) > MAX_IMAGE_SIDE or min(size) < 1:
                raise self.error(
                    ErrorCode.TOO_LARGE,
                    f"image is {size[0]}x{size[1]}, limit {MAX_IMAGE_SIDE} pixels per side",
                )
        return data

    def finish(self) -> None:
        extra = sorted(set(self.obj) - self.used)
        if extra:
            raise self.error(ErrorCode.BAD_FIELD, f"unknown field(s) {', '.join(map(repr, extra))}")


def _size(raw: str | bytes) -> int:
    if isinstance(raw, str):
        return len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))  # isascii: O(1)
    return len(raw) if isinstance(raw, bytes | bytearray) else 0


_JSON_WS = re.compile(r"[ \t\n\r]*")
_JSON_WS_BYTES = re.compile(rb"[ \t\n\r]*")


def _check_upload_envelope(raw: str | bytes, size: int, limits: Limits) -> None:
    """Refuse, *before* JSON parsing, a large message that cannot be an upload.

    Only uploads may exceed ``max_message_bytes``, and an upload is one flat JSON object whose only long value
    is base64 text: so a large message with a second ``{`` or any ``[`` is refused by a C-speed byte count
    instead of being parsed into millions of objects (seconds of event-loop time, hundreds of MB).
    """
    if isinstance(raw, str):
        start = _JSON_WS.match(raw).end()  # type: ignore[union-attr]
        is_object = raw.startswith("{", start)
        bad = raw.find("{", start + 1) >= 0 or "[" in raw
    else:
        data = raw if isinstance(raw, bytes) else bytes(raw)
        start = _JSON_WS_BYTES.match(data).end()  # type: ignore[union-attr]
        is_object = data.startswith(b"{", start)
        bad = data.find(b"{", start + 1) >= 0 or b"[" in data
    if not is_object:
        raise ProtocolError(ErrorCode.BAD_JSON, "message must be a JSON object")
    if bad:  # each search stops at the first offending bracket
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"message is {size} bytes; only upload_style/set_avatar (one flat object) may exceed "
            f"{limits.max_message_bytes}",
        )


_PEEK_CHARS = 256
_PEEK_ID_RE = re.compile(r'"id"\s*:\s*(?:"([^"\\]{1,64})"|(-?\d{1,16})\b)')
_PEEK_TYPE_RE = re.compile(r'"type"\s*:\s*"([a-z_]{1,20})"')


def peek_envelope(raw: str | bytes) -> tuple[str | int | None, str | None]:
    """The ``id`` and ``type`` of a message *without parsing it*: a scan of its first 256 characters.

    For replies to requests that are refused unparsed (rate limiting): the cost is constant whatever the
    message holds. Best effort: ``(None, None)`` parts when they are not near the start (clients put the
    envelope first) or not well-formed; a ``type`` that is not a known request type is not echoed.
    """
    head = raw[:_PEEK_CHARS]
    if not isinstance(head, str):
        head = bytes(head).decode("utf-8", "replace")
    rid: str | int | None = None
    m = _PEEK_ID_RE.search(head)
    if m is not None:
        rid = m.group(1) if m.group(1) is not None else int(m.group(2))
        if isinstance(rid, int) and abs(rid) > MAX_SAFE_INT:
            rid = None
    t = _PEEK_TYPE_RE.search(head)
    rtype = t.group(1) if t is not None and t.group(1) in REQUEST_TYPES else None
    return rid, rtype


def parse_message(raw: str | bytes, limits: Limits = DEFAULT_LIMITS) -> Request:
    """Parse and validate one client message; raises :class:`ProtocolError` for anything invalid.

    Size rules: uploads (``upload_style``, ``set_avatar``) may be up to ``limits.max_upload_bytes`` once
    decoded; every other message must fit in ``limits.max_message_bytes``.
    """
    size = _size(raw)
    if size > limits.max_frame_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {size} bytes, limit {limits.max_frame_bytes}")
    if size > limits.max_message_bytes:
        _check_upload_envelope(raw, size, limits)
    obj = _decode_json(raw)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, f"message must be a JSON object, got {type(obj).__name__}")
    rtype_raw = obj.get("type")
    rtype = rtype_raw if isinstance(rtype_raw, str) and rtype_raw in REQUEST_TYPES else None
    # Read the id first so every later error can be matched to the request by the client.
    rid_raw = obj.get("id")
    echo_id = rid_raw if isinstance(rid_raw, str | int) and not isinstance(rid_raw, bool) else None
    if obj.get("v") != PROTOCOL_VERSION or isinstance(obj.get("v"), bool):
        raise ProtocolError(
            ErrorCode.BAD_VERSION, f'"v" must be {PROTOCOL_VERSION}, got {obj.get("v")!r}', echo_id, rtype
        )
    try:
        rid = _read_id(obj)
    except ProtocolError as exc:
        exc.request_type = rtype
        raise
    if rtype is None:
        shown = rtype_raw if isinstance(rtype_raw, str) and len(rtype_raw) <= 40 else type(rtype_raw).__name__
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown!r} (known: {', '.join(REQUEST_TYPES)})", rid
        )
    if rtype not in UPLOAD_TYPES and size > limits.max_message_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"{rtype}: message is {size} bytes, limit {limits.max_message_bytes}",
            rid,
            rtype,
        )
    f = _Fields(obj, rid, rtype)
    request = REQUEST_TYPES[rtype].parse(rid, f, limits)
    f.finish()
    return request


# --- replies ---


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    """Make numpy scalars/arrays, Fractions and the like serialisable without importing numpy here."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__float__"):
        number = float(value)
        return number if math.isfinite(number) else None
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value: Any) -> Any:
    """Replace NaN/inf (e.g. an empty p95) by null, recursively, so replies are always valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def reply(request: Request, result: dict[str, Any] | None = None) -> str:
    """Success reply to ``request``: ``{"v":1,"id":…,"type":"result","request":<type>,"result":{…}}``."""
    return _dump(
        {
            "v": PROTOCOL_VERSION,
            "id": request.id,
            "type": "result",
            "request": request.TYPE,
            "result": _finite(result or {}),
        }
    )


def error_reply(
    code: ErrorCode | str, message: str, request_id: str | int | None = None, request_type: str | None = None
) -> str:
    """Error reply: ``{"v":1,"id":…|null,"type":"error","request":…|null,"code":…,"message":…}``."""
    return _dump(
        {
            "v": PROTOCOL_VERSION,
            "id": request_id,
            "type": "error",
            "request": request_type,
            "code": str(ErrorCode(code)),
            "message": public_message(message),
        }
    )


def error_from_exception(exc: ProtocolError) -> str:
    return error_reply(exc.code, exc.message, exc.request_id, exc.request_type)


def event(name: str, **data: Any) -> str:
    """Server-initiated message (no id): ``{"v":1,"type":"event","event":<name>, …data}``."""
    return _dump({"v": PROTOCOL_VERSION, "type": "event", "event": name, **_finite(data)})


def make_request(rtype: str, request_id: str | int, **fields: Any) -> str:
    """Client side: encode a request (bytes in ``data`` fields are base64-encoded)."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "type": rtype}
    for key, value in fields.items():
        body[key] = base64.b64encode(value).decode("ascii") if isinstance(value, bytes | bytearray) else value
    return _dump(body)
