"""The presenter server: the browser page over plain HTTP and a websocket for signaling + control, one port.

One ``websockets`` asyncio server does both: its ``process_request`` hook answers plain GETs (the files under
``clients/web`` and ``/healthz``) before any websocket handshake, and ``/ws`` upgrades. Every websocket is one
client with its own :class:`~engine.live.LiveSession` and, after an ``offer``, its own aiortc peer; all
clients share the process-wide :class:`~engine.runtime.EngineRuntime` (models loaded once).

Isolation: each client's messages are handled in its own task and every failure is caught at that client's
boundary (an error reply, or at worst closing that client); a closing socket releases the peer, the session's
tasks/threads and its queues. Admission: optional token (``?token=``), same-origin check for browsers, and
``max_sessions`` concurrent clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import hmac
import http
import ipaddress
import itertools
import logging
import mimetypes
import secrets
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response

from engine.config import ServerConfig
from streaming import protocol as P
from streaming.webrtc import MediaPeer

log = logging.getLogger(__name__)

DEFAULT_WEB_ROOT = Path(__file__).resolve().parents[1] / "clients" / "web"
WS_PATH = "/ws"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
# The page loads only its own files; media comes via RTCPeerConnection (srcObject), control via the websocket.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _split_host(host: str | None) -> tuple[str, int] | None:
    """A Host header (``name``, ``name:port``, ``[v6]:port``) → (lower-case name, port); None if malformed."""
    if not host or len(host) > 300:
        return None
    try:
        url = urlsplit("//" + host)
        name, port = url.hostname, url.port
    except ValueError:
        return None
    if not name or url.path or url.query or url.username is not None:
        return None
    return name.rstrip("."), port or 80


def _same_origin(origin: str, host: str | None) -> bool:
    """A browser's Origin is this server's own page: ``http``, the same host name and the same port."""
    if len(origin) > 300:
        return False
    expected = _split_host(host)
    try:
        url = urlsplit(origin)
        port = url.port or (80 if url.scheme == "http" else None)
    except ValueError:
        return False
    if expected is None or url.scheme != "http" or not url.hostname:
        return False
    return (url.hostname.rstrip("."), port) == expected


class RuntimeLike(Protocol):
    """What the server needs from ``engine.runtime.EngineRuntime``."""

    def new_session(self, session_id: str, max_sessions: int | None = None) -> Any: ...
    def forget(self, session_id: str, session: Any = None) -> None: ...


@dataclass(frozen=True)
class ServerSettings:
    """The subset of ``engine.config.ServerConfig`` the server reads (any object with these fields works),
    plus the server-only limits below; the shared fields take the engine's defaults."""

    host: str = ServerConfig.host
    port: int = ServerConfig.port
    token: str | None = ServerConfig.token
    max_sessions: int = ServerConfig.max_sessions
    max_upload_bytes: int = ServerConfig.max_upload_bytes
    max_message_bytes: int = ServerConfig.max_message_bytes
    # per-connection flood control (token bucket): a UI sends a few messages per second; 20/s sustained
    # with bursts of 40 leaves ample room for it and for scripted clients
    rate_limit_per_s: float = 20.0
    rate_limit_burst: int = 40
    # a client that stops reading its websocket is disconnected after this long instead of pinning its
    # session (and everything queued for it) forever
    send_timeout_s: float = 10.0
    # uploads (style clips, photos) cost decoding + a style encoding or a face detection each: a client gets
    # a burst of 3, then one every 5 s, and at most 16 uploaded styles
    upload_rate_per_s: float = 0.2
    upload_burst: int = 3
    max_uploaded_styles: int = 16
    # host names (besides loopback names and IP addresses) a tokenless server answers to: the Host header is
    # checked so that a web page cannot reach the server through DNS rebinding (evil.example -> 127.0.0.1)
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: Any) -> ServerSettings:
        """Fields missing from ``cfg`` (e.g. the engine's ``ServerConfig``) keep their defaults."""
        fields = {name: getattr(cfg, name) for name in cls.__dataclass_fields__ if hasattr(cfg, name)}
        return cls(**fields)


def _response(
    status: int, body: bytes, content_type: str, extra: list[tuple[str, str]] | None = None
) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            *(extra or []),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _text(status: int, text: str) -> Response:
    return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


def resolve_static(web_root: Path, url_path: str) -> Path | None:
    """Map a URL path to a file strictly inside ``web_root`` (no traversal, no hidden files, known types)."""
    try:
        return _resolve_static(web_root, url_path)
    except (OSError, ValueError):  # e.g. a path segment longer than the file system allows: not found
        return None


def _resolve_static(web_root: Path, url_path: str) -> Path | None:
    path = unquote(url_path)
    if path in ("", "/"):
        path = "/index.html"
    if "\x00" in path or "\\" in path:
        return None
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
        return None
    root = web_root.resolve()
    candidate = root.joinpath(*parts).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    if candidate.suffix.lower() not in STATIC_TYPES:
        return None
    return candidate


def _decode_clip(data: bytes, fmt: str) -> np.ndarray:
    """Uploaded style clip bytes → expression ``(T, 64)`` float32 through the shared clip reader."""
    from models.clips import load_style_clip  # the one reader of clip files (validates shape and values)

    with tempfile.TemporaryDirectory(prefix="styletalk-upload-") as tmp:
        path = Path(tmp) / f"upload.{fmt}"
        path.write_bytes(data)
        return load_style_clip(path)


AVATAR_DETECT_SIDE = 1024  # photos are shrunk to this before face detection (cost grows with the pixels)


def _decode_avatar(data: bytes, fmt: str, size: int) -> np.ndarray:
    """Uploaded PNG/JPEG bytes → the face crop ``(size, size, 3)`` uint8 RGB the renderer animates.

    Uses the engine's own reader and face detector/cropper (raises ``AvatarError`` for an unreadable image or
    one without exactly one usable face). The decoded size is bounded by what the decoder will really use
    (not the first header: a PNG may carry a second IHDR), and large photos are shrunk before the face
    detection, whose time and memory grow with the pixel count; the crop is ``size``² (256) anyway.
    Slow (face detection): run it off the event loop.
    """
    from engine.avatar import crop_face, load_image

    with tempfile.TemporaryDirectory(prefix="styletalk-upload-") as tmp:
        path = Path(tmp) / f"avatar.{'jpg' if fmt == 'jpeg' else fmt}"
        path.write_bytes(data)
        image = load_image(path, max_pixels=P.MAX_IMAGE_SIDE**2)
    return crop_face(_shrink(image, AVATAR_DETECT_SIDE), size=size).image


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 box-filtered by an integer factor so that its longer side is <= ``side``."""
    factor = -(-max(image.shape[:2]) // side)
    if factor <= 1:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).reduce(factor))


def _clip_errors() -> tuple[type[BaseException], ...]:
    from models.clips import ClipError

    errors: list[type[BaseException]] = [ClipError]
    with contextlib.suppress(ImportError):
        from engine.stylebank import StyleError

        errors.append(StyleError)
    return tuple(errors)


def _avatar_errors() -> tuple[type[BaseException], ...]:
    from engine.avatar import AvatarError

    return (AvatarError,)


CLEANUP_TIMEOUT_S = 15.0  # freeing one client (peer close <= 5 s, session threads <= 5 s) never takes longer


class SessionRefused(RuntimeError):
    """The engine refused to create a session (its own limit); the client is told ``server_full``."""


class ClientHandler:
    """One websocket client: its live session, its media peer, and the dispatch of its requests."""

    def __init__(self, server: PresenterServer, ws: ServerConnection, client_id: str) -> None:
        self.server = server
        self.ws = ws
        self.id = client_id
        self.session: Any = None
        self.session_started = False
        self.peer: MediaPeer | None = None
        # The client's choices, re-applied when a hangup replaces the session with a fresh one.
        self.style: str | None = None
        self.intensity: float | None = None
        self.avatar: np.ndarray | None = None
        self.uploaded: dict[str, np.ndarray] = {}  # name -> style code (encoded once, on upload)
        self._events_task: asyncio.Task[None] | None = None
        self._aux_tasks: set[asyncio.Task[Any]] = set()
        self._releases: set[asyncio.Task[None]] = set()  # this client's clean-ups (owned by the server)
        self.closing = False  # the websocket is gone: no new session may be created any more
        self.requests = 0
        self.errors = 0
        self.limiter = P.RateLimiter(server.settings.rate_limit_per_s, server.settings.rate_limit_burst)
        self.upload_limiter = P.RateLimiter(server.settings.upload_rate_per_s, server.settings.upload_burst)

    # -------------------------------------------------------------------------------------------- life cycle
    async def _new_session(self) -> None:
        """Create a fresh (not yet started) live session, re-applying this client's choices to it.

        Built in a worker thread: a session owns a recognizer whose set-up (model files) takes ~0.5 s, which
        must not stall the other clients' media on the event loop. If this coroutine is cancelled while the
        thread runs (the client left), the session the thread still builds is freed when it is ready instead
        of holding its slot forever.
        """
        if self.closing:
            raise ConnectionClosed(None, None)
        runtime = self.server.runtime
        # admission (max_sessions) happens in the engine's session registry, atomically, and nowhere else
        future = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(runtime.new_session, self.id, max_sessions=self.server.settings.max_sessions)
        )
        try:
            session = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._free_orphan)
            raise
        except RuntimeError as exc:
            raise SessionRefused(str(exc)) from exc
        if self.closing:  # the client left while the session was built: never hand it out
            self._release_later(None, None, session)
            raise ConnectionClosed(None, None)
        self.session = session
        self.session_started = False
        bank = getattr(self.session, "styles", None)
        for name, code in self.uploaded.items():
            if bank is not None and name not in bank:
                bank.add_code(name, code)
        if self.intensity is not None:
            self.session.set_intensity(self.intensity)
        if self.style is not None:
            self.session.set_style(self.style, 0)
        events = getattr(self.session, "events", None)
        if isinstance(events, asyncio.Queue):
            self._events_task = asyncio.get_running_loop().create_task(self._forward_events(events))

    def _free_orphan(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._release_later(None, None, future.result())

    async def _close_media(self) -> None:
        """Free the peer and the session (tasks, threads, queues, the engine slot).

        The freeing runs in a task owned by the server: a caller cancelled halfway (the client's websocket
        closed during a drop, server shutdown) cannot leave a half-closed peer or a session that still holds
        its engine slot; the caller waits for it unless it is itself cancelled.
        """
        peer, self.peer = self.peer, None
        session, self.session = self.session, None
        task, self._events_task = self._events_task, None
        self.session_started = False
        if peer is None and session is None and task is None:
            return
        await asyncio.shield(self._release_later(peer, task, session))

    def _release_later(
        self, peer: MediaPeer | None, task: asyncio.Task[None] | None, session: Any
    ) -> asyncio.Task[None]:
        release = self.server.own(self._release(peer, task, session), name=f"release-{self.id}")
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)
        return release

    async def _release(self, peer: MediaPeer | None, task: asyncio.Task[None] | None, session: Any) -> None:
        try:
            if task is not None:
                task.cancel()
            if peer is not None:
                try:
                    await peer.close()
                except Exception:  # noqa: BLE001 - the session below must be freed anyway
                    log.exception("client %s: closing the peer connection failed", self.id)
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if session is not None:
                await session.close()
        finally:
            if session is not None:  # whatever happened above, the engine slot is given back
                self.server.runtime.forget(self.id, session)

    async def run(self) -> None:
        await self._new_session()
        await self.send(
            P.event(
                "welcome",
                session=self.id,
                protocol=P.PROTOCOL_VERSION,
                styles=self.session.list_styles(),
                limits={
                    "max_message_bytes": self.server.limits.max_message_bytes,
                    "max_upload_bytes": self.server.limits.max_upload_bytes,
                },
            )
        )
        async for raw in self.ws:
            await self.handle_raw(raw)

    async def close(self) -> None:
        """The websocket is gone: free everything this client holds, and wait until it is free.

        A drop in flight (the peer connection closed first) is let finish its clean-up rather than cancelled
        halfway; ``closing`` stops it from creating a replacement session.
        """
        self.closing = True
        pending = set(self._aux_tasks)
        if pending:
            await asyncio.wait(pending, timeout=CLEANUP_TIMEOUT_S)
            for task in pending:
                task.cancel()
        await self._close_media()
        if self._releases:
            done, stuck = await asyncio.wait(set(self._releases), timeout=CLEANUP_TIMEOUT_S)
            if stuck:
                log.warning("client %s: clean-up still running after %.0f s", self.id, CLEANUP_TIMEOUT_S)

    async def send(self, text: str) -> None:
        """Send one message; a client that does not read for ``send_timeout_s`` is disconnected.

        The websocket's write buffer is bounded, so a stalled reader makes ``send`` wait; without a timeout
        that client's handler (and its session) would hang forever. Aborting the transport ends the client's
        ``run`` loop, and the usual clean-up frees the session.
        """
        try:
            await asyncio.wait_for(self.ws.send(text), self.server.settings.send_timeout_s)
        except ConnectionClosed:
            pass
        except TimeoutError:
            log.warning("client %s: not reading its websocket; disconnecting", self.id)
            self.server.stalled_disconnects += 1
            transport = getattr(self.ws, "transport", None)
            if transport is not None:
                transport.abort()
            raise ConnectionClosed(None, None) from None

    async def _forward_events(self, events: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            item = await events.get()
            kind = item.get("type") if isinstance(item, dict) else None
            name = kind if kind in ("error", "warning", "info") else "info"
            if isinstance(item, dict) and isinstance(item.get("message"), str):
                item = {**item, "message": P.public_message(item["message"])}  # no internals to clients
            try:
                await self.send(P.event(name, source="engine", data=item))
            except ConnectionClosed:
                return

    def _on_peer_state(self, state: str) -> None:
        if state in ("failed", "closed") and self.peer is not None:
            peer = self.peer

            async def drop() -> None:
                if self.peer is not peer or self.closing:
                    return
                await self._close_media()
                if self.closing:  # the websocket closed meanwhile: no replacement session
                    return
                try:
                    await self._new_session()
                    await self.send(P.event("media_ended", reason=f"peer connection {state}"))
                except (ConnectionClosed, SessionRefused):
                    return  # gone, or no room: the next request creates the session (or says server_full)
                except Exception:  # noqa: BLE001 - a failed replacement never takes the client down
                    log.exception("client %s: could not replace the session after the peer ended", self.id)

            task = asyncio.get_running_loop().create_task(drop(), name=f"drop-{self.id}")
            self._aux_tasks.add(task)
            task.add_done_callback(self._aux_tasks.discard)

    # --------------------------------------------------------------------------------------------- requests
    async def handle_raw(self, raw: str | bytes) -> None:
        """Parse, dispatch and answer one message; nothing a client sends ends its session.

        Refusals come *before* parsing: a rate-limited message is not parsed at all (its id and type are
        echoed from a scan of its first 256 characters), and only an upload may be larger than
        ``max_message_bytes`` (see :func:`streaming.protocol.parse_message`); a large upload is parsed
        (JSON + base64 of megabytes) on the upload thread instead of the event loop.
        """
        self.requests += 1
        request: P.Request | None = None
        now = time.monotonic()
        limits = self.server.limits
        large = len(raw) > limits.max_message_bytes  # characters <= bytes: only an upload can be this large
        if not self.limiter.allow(now):
            await self._refuse_unparsed(
                raw,
                f"too many messages: at most {self.limiter.rate:g} per second (bursts of "
                f"{self.limiter.burst:g}); this request was not executed",
            )
            return
        upload_charged = large or P.peek_envelope(raw)[1] in P.UPLOAD_TYPES
        if upload_charged and not self.upload_limiter.allow(now):
            await self._refuse_unparsed(raw, self._upload_limit_message())
            return
        try:
            if large:
                loop = asyncio.get_running_loop()
                request = await loop.run_in_executor(self.server.uploads, P.parse_message, raw, limits)
            else:
                request = P.parse_message(raw, limits)
            if request.TYPE in P.UPLOAD_TYPES and not upload_charged and not self.upload_limiter.allow(now):
                raise P.ProtocolError(P.ErrorCode.RATE_LIMITED, self._upload_limit_message(), request.id, request.TYPE)
            result = await self.dispatch(request)
            await self.send(P.reply(request, result))
        except P.ProtocolError as exc:
            self.errors += 1
            await self.send(P.error_from_exception(exc))
        except ConnectionClosed:
            raise
        except SessionRefused as exc:
            self.errors += 1
            rid, rtype = (request.id, request.TYPE) if request is not None else (None, None)
            await self.send(P.error_reply(P.ErrorCode.SERVER_FULL, str(exc), rid, rtype))
        except Exception as exc:  # noqa: BLE001 - the session survives any single failing request
            self.errors += 1
            log.exception("client %s: request failed", self.id)
            rid = request.id if request is not None else None
            rtype = request.TYPE if request is not None else None
            # the details are in the server log; the client gets no exception text (paths, internals)
            del exc
            await self.send(
                P.error_reply(P.ErrorCode.INTERNAL, "internal server error (logged on the server)", rid, rtype)
            )

    async def _refuse_unparsed(self, raw: str | bytes, message: str) -> None:
        self.errors += 1
        rid, rtype = P.peek_envelope(raw)
        await self.send(P.error_reply(P.ErrorCode.RATE_LIMITED, message, rid, rtype))

    def _upload_limit_message(self) -> str:
        per_min = self.upload_limiter.rate * 60
        return (
            f"too many uploads: at most {per_min:g} per minute (bursts of {self.upload_limiter.burst:g}); "
            "this upload was not executed"
        )

    def _intensity(self) -> float | None:
        if self.intensity is not None:
            return self.intensity
        config = getattr(self.server.runtime, "config", None)
        return float(config.style.intensity) if config is not None else None

    def _error(self, request: P.Request, code: P.ErrorCode, message: str) -> P.ProtocolError:
        return P.ProtocolError(code, message, request.id, request.TYPE)

    async def dispatch(self, req: P.Request) -> dict[str, Any]:
        if self.session is None:
            await self._new_session()
        session = self.session
        if isinstance(req, P.Ping):
            return {"server_time": time.time()}
        if isinstance(req, P.Offer):
            return await self._offer(req)
        if isinstance(req, P.IceCandidate):
            if self.peer is None:
                raise self._error(req, P.ErrorCode.NO_MEDIA, "no peer connection: send an offer first")
            try:
                await self.peer.add_ice_candidate(req.candidate, req.sdp_mid, req.sdp_mline_index)
            except ValueError as exc:
                raise self._error(req, P.ErrorCode.BAD_FIELD, str(exc)) from None
            return {}
        if isinstance(req, P.Hangup):
            had_media = self.peer is not None
            await self._close_media()
            await self._new_session()
            return {"stopped": had_media}
        if isinstance(req, P.ListStyles):
            current = getattr(session, "style", None) or self.style
            return {"styles": session.list_styles(), "current": current, "intensity": self._intensity()}
        if isinstance(req, P.SetStyle):
            if req.name not in session.list_styles():
                raise self._error(req, P.ErrorCode.UNKNOWN_STYLE, f"no style named {req.name!r}")
            frame = session.set_style(req.name, req.transition_ms)
            self.style = req.name
            return {"style": req.name, "frame": int(frame), "transition_ms": req.transition_ms}
        if isinstance(req, P.SetIntensity):
            session.set_intensity(req.value)
            self.intensity = req.value
            return {"intensity": req.value}
        if isinstance(req, P.UploadStyle):
            return await self._upload_style(req)
        if isinstance(req, P.SetAvatar):
            return await self._set_avatar(req)
        if isinstance(req, P.Interrupt):
            session.interrupt()
            return {}
        if isinstance(req, P.Pause):
            session.pause()
            return {}
        if isinstance(req, P.Resume):
            session.resume()
            return {}
        if isinstance(req, P.GetStats):
            return {
                "session": self.id,
                "engine": session.stats(),
                "transport": self.peer.stats() if self.peer is not None else None,
            }
        raise self._error(req, P.ErrorCode.UNKNOWN_TYPE, f"{req.TYPE} is not handled")  # pragma: no cover

    async def _offer(self, req: P.Offer) -> dict[str, Any]:
        if self.peer is not None:
            raise self._error(
                req, P.ErrorCode.BAD_STATE, "media already running: send hangup before a new offer"
            )
        if not self.session_started:
            await self.session.start()
            self.session_started = True
            if self.avatar is not None:  # chosen before media started
                self.session.set_avatar(self.avatar)
        peer = MediaPeer(self.session, on_state=self._on_peer_state)
        try:
            answer = await peer.accept_offer(req.sdp)
        except Exception as exc:  # noqa: BLE001 - aiortc raises assorted errors for unusable SDP
            await peer.close()
            log.info("client %s: offer refused: %r", self.id, exc)
            # our own ValueErrors explain the problem; aiortc's internal errors (assertions) say nothing useful
            detail = f": {exc}" if isinstance(exc, ValueError) and str(exc) else ""
            raise self._error(req, P.ErrorCode.BAD_SDP, f"cannot negotiate the offer{detail}") from None
        self.peer = peer
        return {"sdp": answer, "sdp_type": "answer"}

    async def _upload_style(self, req: P.UploadStyle) -> dict[str, Any]:
        """Decode the clip and encode its style code on the server's upload thread: neither the event loop
        nor the model worker (every session's frames) spends time on an upload."""
        if req.name in self.session.list_styles():
            raise self._error(req, P.ErrorCode.STYLE_EXISTS, f"a style named {req.name!r} already exists")
        limit = self.server.settings.max_uploaded_styles
        if len(self.uploaded) >= limit:
            raise self._error(req, P.ErrorCode.BAD_STATE, f"this session already has {limit} uploaded styles")
        session = self.session
        loop = asyncio.get_running_loop()
        try:
            clip = await loop.run_in_executor(self.server.uploads, _decode_clip, req.data, req.format)
            bank = getattr(session, "styles", None)
            if bank is not None:
                await loop.run_in_executor(self.server.uploads, bank.add, req.name, clip)
            else:
                session.add_style(req.name, clip)
        except _clip_errors() as exc:
            raise self._error(req, P.ErrorCode.BAD_CLIP, str(exc)) from None
        bank = getattr(session, "styles", None)
        if bank is not None and req.name in bank:
            code = bank.get(req.name)
            self.uploaded[req.name] = code
            current = getattr(self.session, "styles", None)
            if current is not None and current is not bank and req.name not in current:
                current.add_code(req.name, code)  # the session was replaced meanwhile (peer ended)
        return {"style": req.name, "frames": int(clip.shape[0]), "styles": self.session.list_styles()}

    async def _set_avatar(self, req: P.SetAvatar) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        size = self.server.avatar_size
        try:
            image = await loop.run_in_executor(self.server.uploads, _decode_avatar, req.data, req.format, size)
            if self.session_started:
                self.session.set_avatar(image)  # prepared on the model worker; failures arrive as events
        except (*_avatar_errors(), ValueError) as exc:  # type: ignore[misc]  # mypy: no starred except
            raise self._error(req, P.ErrorCode.BAD_IMAGE, str(exc)) from None
        self.avatar = image
        return {"width": int(image.shape[1]), "height": int(image.shape[0])}


class PresenterServer:
    """HTTP page + websocket control/signaling on one port; one :class:`ClientHandler` per websocket."""

    def __init__(self, runtime: RuntimeLike, settings: Any = None, web_root: Path | None = None) -> None:
        """``settings``: a :class:`ServerSettings` or ``ServerConfig``; default ``runtime.config.server``."""
        self.runtime = runtime
        config = getattr(runtime, "config", None)
        if settings is None:
            settings = config.server  # type: ignore[union-attr]
        self.settings = (
            settings if isinstance(settings, ServerSettings) else ServerSettings.from_config(settings)
        )
        self.avatar_size = int(config.renderer.size) if config is not None else 256
        self.web_root = (web_root or DEFAULT_WEB_ROOT).resolve()
        self.limits = P.Limits(self.settings.max_message_bytes, self.settings.max_upload_bytes)
        self.clients: dict[str, ClientHandler] = {}
        self._ids = itertools.count(1)
        self.stalled_disconnects = 0  # clients dropped because they stopped reading (send timeout)
        self._server: Server | None = None
        self._owned: set[asyncio.Task[Any]] = set()  # clean-ups that must finish even if their caller is cancelled
        # uploads (large-message parsing, clip decoding + style encoding, photo decoding + face detection) run
        # one at a time on this thread: never on the event loop, never on the model worker that renders frames
        self.uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="styletalk-upload")
        self.on_client_closed: Callable[[str], None] | None = (
            None  # test hook: called after a client is freed
        )

    # -------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            max_size=self.limits.max_frame_bytes,
            max_queue=4,
            ping_interval=20,
            ping_timeout=20,
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    @property
    def active_sessions(self) -> int:
        return len(self.clients)

    def own(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` in a task owned by the server (kept referenced, awaited by :meth:`close`)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)
        return task

    async def close(self) -> None:
        """Stop listening, close every client and wait (bounded) until their sessions are freed."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self._owned:
            _, stuck = await asyncio.wait(set(self._owned), timeout=CLEANUP_TIMEOUT_S)
            if stuck:
                log.warning("%d clean-up task(s) still running at shutdown", len(stuck))
        self.uploads.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> PresenterServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -------------------------------------------------------------------------------------------------- HTTP
    def _token_ok(self, query: str) -> bool:
        expected = self.settings.token
        if not expected:
            return True
        given = parse_qs(query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), expected.encode())

    def _host_allowed(self, host: str | None) -> bool:
        """Whether a request naming ``host`` (its Host header) may be served.

        A tokenless server answers only to IP addresses, ``localhost`` names and the configured
        ``allowed_hosts``: DNS rebinding needs a *name* (``evil.example`` resolving to 127.0.0.1), so an
        attacker's page cannot reach the server through its own origin. With a token the token protects it.
        """
        if self.settings.token:
            return True
        parsed = _split_host(host)
        if parsed is None:
            return False
        name = parsed[0]
        if name == "localhost" or name.endswith(".localhost") or name in self._allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    @property
    def _allowed_hosts(self) -> frozenset[str]:
        return frozenset(h.lower().rstrip(".") for h in self.settings.allowed_hosts)

    def _process_request(self, connection: ServerConnection, request: HttpRequest) -> Response | None:
        """Admission and plain HTTP (GET and HEAD; other methods 405) before any websocket handshake."""
        try:
            response = self._route(request)
        except Exception:  # noqa: BLE001 - one line in the log, never a traceback per request
            log.warning("HTTP %s %.80s failed", request.method, request.path, exc_info=log.isEnabledFor(logging.DEBUG))
            response = _text(500, "internal server error")
        if response is not None and request.method == "HEAD":
            response = Response(response.status_code, response.reason_phrase, response.headers, b"")
        return response

    def _route(self, request: HttpRequest) -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return _response(405, b"method not allowed\n", "text/plain; charset=utf-8", [("Allow", "GET, HEAD")])
        url = urlsplit(request.path)
        hosts, origins = request.headers.get_all("Host"), request.headers.get_all("Origin")
        if len(hosts) > 1 or len(origins) > 1:
            return _text(400, "bad request: repeated Host or Origin header")
        host = hosts[0] if hosts else None
        if not self._host_allowed(host):
            return _text(403, "forbidden: unknown host name (serve --allow-host NAME to allow it)")
        if url.path == WS_PATH:
            if request.method != "GET":
                return _response(405, b"websocket: use GET\n", "text/plain; charset=utf-8", [("Allow", "GET")])
            if not self._token_ok(url.query):
                return _text(401, "unauthorized: open the page with ?token=<the server's token>")
            origin = origins[0] if origins else None
            if origin is not None and not _same_origin(origin, host):
                return _text(403, "forbidden: cross-origin websocket")
            return None  # continue with the websocket handshake
        if url.path == "/healthz":
            body = P._dump(
                {
                    "ok": True,
                    "sessions": self.active_sessions,
                    "max_sessions": self.settings.max_sessions,
                    "engine_sessions": len(getattr(self.runtime, "sessions", ())),
                }
            )
            return _response(200, body.encode(), "application/json")
        path = resolve_static(self.web_root, url.path)
        if path is None:
            return _text(404, "not found")
        content_type = (
            STATIC_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "text/plain"
        )
        return _response(
            200,
            path.read_bytes(),
            content_type,
            [("Content-Security-Policy", CONTENT_SECURITY_POLICY), ("Referrer-Policy", "no-referrer")],
        )

    # ---------------------------------------------------------------------------------------------- clients
    async def _refuse(self, ws: ServerConnection, message: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(P.event("error", code=str(P.ErrorCode.SERVER_FULL), message=message))
            await ws.close(1013, "server full")

    async def _handle(self, ws: ServerConnection) -> None:
        client_id = f"s{next(self._ids)}-{secrets.token_hex(3)}"
        client = ClientHandler(self, ws, client_id)
        self.clients[client_id] = client
        log.info("client %s connected (%d active)", client_id, len(self.clients))
        try:
            await client.run()
        except ConnectionClosed:
            pass
        except SessionRefused as exc:  # no room: the engine's registry refused (max_sessions)
            await self._refuse(ws, f"server full: {exc}; try later")
        except Exception:  # noqa: BLE001 - a broken client must never take the server down
            log.exception("client %s failed", client_id)
            with contextlib.suppress(ConnectionClosed):
                await ws.close(1011, "internal error")
        finally:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                log.exception("client %s: error while freeing its session", client_id)
            self.clients.pop(client_id, None)
            log.info("client %s closed (%d active)", client_id, len(self.clients))
            if self.on_client_closed is not None:
                self.on_client_closed(client_id)
