"""The presenter server: the browser page over plain HTTP and a websocket for signaling + control, one port.

One ``websockets`` asyncio server does both: its ``process_request`` hook answers plain GETs (the files under
``clients/web`` and ``/healthz``) before any websocket handshake, and ``/ws`` upgrades. Every websocket is one
client with its own :class:`~engine.live.LiveSession` and, after an ``offer``, its own aiortc peer; all
clients share the process-wide :class:`~engine.runtime.EngineRuntime` (models loaded once).

This module is the listener: admission (optional token ``?token=``, same-origin check for browsers; the
engine's session registry enforces ``max_sessions``), ``/healthz``, and one :class:`ClientHandler` per
websocket. The parts: :mod:`streaming.static_http` (the page's files), :mod:`streaming.uploads` (style clips,
avatar photos), :mod:`streaming.client_handler` (one client's session, peer and requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import logging
import multiprocessing
import secrets
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response

from engine.config import ServerConfig
from streaming import allocator
from streaming import protocol as P
from streaming.client_handler import CLEANUP_TIMEOUT_S, ClientHandler, SessionRefused
from streaming.contracts import ServedRuntime
from streaming.rooms import RoomRegistry
from streaming.static_http import DEFAULT_WEB_ROOT, response, static_file, text
from streaming.uploads import DecoderFailed
from streaming.viewer_handler import ViewerHandler

log = logging.getLogger(__name__)

WS_PATH = "/ws"
WATCH_WS_PATH = "/ws/watch"


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
    # save_style writes to the styles directory on disk: at most this many user styles there
    max_saved_styles: int = 64
    # host names (besides loopback names and IP addresses) a tokenless server answers to: the Host header is
    # checked so that a web page cannot reach the server through DNS rebinding (evil.example -> 127.0.0.1)
    allowed_hosts: tuple[str, ...] = ()
    # rooms (see streaming/rooms.py): Janus URLs ("" = direct WebRTC, small audience), caps
    janus: str = ServerConfig.janus
    max_direct_viewers: int = ServerConfig.max_direct_viewers
    max_viewers: int = ServerConfig.max_viewers
    max_rooms: int = ServerConfig.max_rooms
    rtmp: str = ServerConfig.rtmp  # each opened room is also pushed to this RTMP URL ("" = none)
    public_url: str = ServerConfig.public_url  # the base of rooms' watch links ("" = the presenter's Host)
    mic_prefetch_packets: int = ServerConfig.mic_prefetch_packets  # see ServerConfig (streaming/rtp_latency.py)
    playout_delay_ms: str = ServerConfig.playout_delay_ms
    audio_frame_ms: int = ServerConfig.audio_frame_ms
    opus_application: str = ServerConfig.opus_application
    mic_ptime_ms: int = ServerConfig.mic_ptime_ms
    video_bitrate_kbps: int = ServerConfig.video_bitrate_kbps

    @classmethod
    def from_config(cls, cfg: Any) -> ServerSettings:
        """Fields missing from ``cfg`` (e.g. the engine's ``ServerConfig``) keep their defaults."""
        fields = {name: getattr(cfg, name) for name in cls.__dataclass_fields__ if hasattr(cfg, name)}
        return cls(**fields)


class PresenterServer:
    """HTTP page + websocket control/signaling on one port; one :class:`ClientHandler` per websocket."""

    def __init__(self, runtime: ServedRuntime, settings: ServerSettings | ServerConfig | None = None,
                 web_root: Path | None = None) -> None:
        """``settings``: a :class:`ServerSettings` or ``ServerConfig``; default ``runtime.config.server``."""
        self.runtime = runtime
        config = runtime.config
        if settings is None:
            settings = config.server
        self.settings = (
            settings if isinstance(settings, ServerSettings) else ServerSettings.from_config(settings)
        )
        self.avatar_size = int(config.renderer.size)
        self.web_root = (web_root or DEFAULT_WEB_ROOT).resolve()
        self.limits = P.Limits(self.settings.max_message_bytes, self.settings.max_upload_bytes)
        self.clients: dict[str, ClientHandler] = {}
        self._ids = itertools.count(1)
        self.stalled_disconnects = 0  # clients dropped because they stopped reading (send timeout)
        self.heap_trims = 0  # times the server, going idle, gave the heap's free pages back (glibc's malloc_trim)
        self._server: Server | None = None
        self._owned: set[asyncio.Task[Any]] = set()  # clean-ups that must finish even if their caller is cancelled
        # Uploads never run on the event loop nor on the model worker that renders every session's frames:
        # large-message parsing and style encoding (the model) run one at a time on this thread; file
        # decoding and face detection (GIL-holding C code: dlib, scipy, Pillow) in a decoder process
        self.uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="styletalk-upload")
        self._decoder: ProcessPoolExecutor | None = None
        self.rooms = RoomRegistry([u.strip() for u in self.settings.janus.split(",") if u.strip()],
                                  self.settings.max_rooms, self.settings.max_viewers,
                                  self.settings.max_direct_viewers, self.settings.rtmp)
        self.viewers: dict[str, ViewerHandler] = {}
        self.on_client_closed: Callable[[str], None] | None = (
            None  # test hook: called after a client is freed
        )

    # -------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.rooms.start()  # with Janus configured and unreachable: JanusUnavailable, nothing listens
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
        await self.rooms.close()
        if self._owned:
            _, stuck = await asyncio.wait(set(self._owned), timeout=CLEANUP_TIMEOUT_S)
            if stuck:
                log.warning("%d clean-up task(s) still running at shutdown", len(stuck))
        self.uploads.shutdown(wait=False, cancel_futures=True)
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._decoder = None

    async def _trim_heap(self) -> None:
        """The server went idle: give the heap's free pages back to the system (see streaming/allocator.py).

        Sessions free their frame buffers, but glibc keeps the space inside its arenas (the close-order soak:
        +130 MiB resident after 50 sessions, all of it free heap). Trimming costs ~30 ms and takes the arenas'
        locks, so it runs only when no session is rendering, off the event loop."""
        released = await asyncio.to_thread(allocator.trim)
        self.heap_trims += 1
        log.debug("server idle: heap trimmed (%s)", "pages released" if released else "nothing to release")

    async def decode_upload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the upload decoder process (started on first use, one upload at a time).

        A separate process keeps the cost of a decode - CPU the GIL would take from the event loop, memory
        of a large photo - away from the sessions' media; if it dies (e.g. killed for memory) the upload fails
        with :class:`DecoderFailed` and the next upload starts a fresh one.
        """
        if self._decoder is None:
            self._decoder = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decoder, fn, *args)
        except BrokenProcessPool:
            log.warning("the upload decoder process died; starting a new one for the next upload")
            self._decoder = None
            raise DecoderFailed("the upload could not be decoded") from None

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
        resp: Response | None
        try:
            resp = self._route(request)
        except Exception:  # noqa: BLE001 - one line in the log, never a traceback per request
            log.warning("HTTP %s %.80s failed", request.method, request.path,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            resp = text(500, "internal server error")
        if resp is not None and request.method == "HEAD":
            resp = Response(resp.status_code, resp.reason_phrase, resp.headers, b"")
        return resp

    def _route(self, request: HttpRequest) -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return response(405, b"method not allowed\n", "text/plain; charset=utf-8",
                            [("Allow", "GET, HEAD")])
        url = urlsplit(request.path)
        hosts, origins = request.headers.get_all("Host"), request.headers.get_all("Origin")
        if len(hosts) > 1 or len(origins) > 1:
            return text(400, "bad request: repeated Host or Origin header")
        host = hosts[0] if hosts else None
        if not self._host_allowed(host):
            return text(403, "forbidden: unknown host name (serve --allow-host NAME to allow it)")
        if url.path == WATCH_WS_PATH:  # viewers: the room token (checked in the protocol) replaces the server's
            origin = origins[0] if origins else None
            if origin is not None and not _same_origin(origin, host):
                return text(403, "forbidden: cross-origin websocket")
            return None
        if url.path.startswith("/watch/"):
            return static_file(self.web_root, "/watch.html")
        if url.path == WS_PATH:
            if request.method != "GET":
                return response(405, b"websocket: use GET\n", "text/plain; charset=utf-8",
                                [("Allow", "GET")])
            if not self._token_ok(url.query):
                return text(401, "unauthorized: open the page with ?token=<the server's token>")
            origin = origins[0] if origins else None
            if origin is not None and not _same_origin(origin, host):
                return text(403, "forbidden: cross-origin websocket")
            return None  # continue with the websocket handshake
        if url.path == "/healthz":
            return response(200, P._dump(self.health()).encode(), "application/json")
        return static_file(self.web_root, url.path)

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` body: liveness plus the load a room placement reads (``streaming/placement.py``):
        presenter and room slots, viewers, how many of this node's Janus instances are up, and its model workers
        (``workers``: a node whose workers are not all alive is rendering on fewer processes than configured)."""
        rooms = self.rooms
        nodes = rooms.fanout.nodes if rooms.fanout is not None else []
        return {
            "ok": True,
            "sessions": self.active_sessions,
            "max_sessions": self.settings.max_sessions,
            "engine_sessions": len(self.runtime.sessions),
            "rooms": len(rooms.rooms),
            "max_rooms": rooms.max_rooms,
            "viewers": rooms.viewer_count,
            "fanout": rooms.mode,
            "janus_up": sum(1 for n in nodes if n.up),
            "janus_nodes": len(nodes),
            "workers": self.runtime.workers_health(),
        }

    # ---------------------------------------------------------------------------------------------- clients
    async def _refuse(self, ws: ServerConnection, message: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(P.event("error", code=str(P.ErrorCode.SERVER_FULL), message=message))
            await ws.close(1013, "server full")

    async def _handle_viewer(self, ws: ServerConnection) -> None:
        viewer_id = f"v{next(self._ids)}-{secrets.token_hex(3)}"
        if len(self.viewers) >= self.settings.max_viewers + 16:  # a few extra for operators and joins in flight
            with contextlib.suppress(ConnectionClosed):
                await ws.send(P.event("error", code=str(P.ErrorCode.ROOM_FULL), message="too many viewers"))
                await ws.close(1013, "too many viewers")
            return
        viewer = ViewerHandler(self, ws, viewer_id)
        self.viewers[viewer_id] = viewer
        try:
            await viewer.run()
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - a broken viewer must never take the server down
            log.exception("viewer %s failed", viewer_id)
        finally:
            self.viewers.pop(viewer_id, None)
            await asyncio.shield(self.own(viewer.close(), name=f"release-{viewer_id}"))

    async def _handle(self, ws: ServerConnection) -> None:
        if ws.request is not None and urlsplit(ws.request.path).path == WATCH_WS_PATH:
            await self._handle_viewer(ws)
            return
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
            if not self.clients and not self.runtime.sessions:
                self.own(self._trim_heap(), name="trim-heap")
            if self.on_client_closed is not None:
                self.on_client_closed(client_id)
