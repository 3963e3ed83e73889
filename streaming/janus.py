"""A small asyncio client of the Janus WebRTC Server's WebSocket API (the ``janus-protocol`` subprotocol).

Janus (GPL) always runs as a separate process; this module only speaks its JSON API over a websocket. What the
engine needs from it is narrow: one Janus session per connection (kept alive), a handle on the Streaming plugin
to create/destroy RTP mountpoints, and one handle per viewer to ``watch`` a mountpoint (Janus makes the WebRTC
offer) and ``start`` it with the viewer's answer. Everything here is transport glue; the room logic that uses it
is :mod:`streaming.janus_rooms`.

Every request carries a fresh ``transaction``; replies come back as ``success``/``error``/``ack`` followed, for
asynchronous plugin requests, by an ``event`` with the same transaction. Events without a pending transaction
(``webrtcup``, ``hangup``, ``media``, plugin events) go to the handle's listener. When the socket drops, every
pending request fails with :class:`JanusUnavailable` and ``on_closed`` is called: the caller decides to
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

log = logging.getLogger(__name__)

STREAMING_PLUGIN = "janus.plugin.streaming"
KEEPALIVE_S = 20.0  # Janus drops sessions idle for session_timeout (60 s by default)
REQUEST_TIMEOUT_S = 10.0


class JanusUnavailable(RuntimeError):
    """Janus cannot be reached, went away, or did not answer in time."""


class JanusError(RuntimeError):
    """Janus (or its plugin) answered a request with an error."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"janus error {code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class MountpointPorts:
    """Where the engine sends RTP for one mountpoint: the Janus host and its audio/video UDP ports."""

    mountpoint: int
    host: str
    audio_port: int
    video_port: int


class JanusClient:
    """One websocket to Janus with one Janus session on it; plugin handles are attached per purpose."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._ws: ClientConnection | None = None
        self.session_id: int | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self.on_closed: Callable[[], None] | None = None
        self.closed = asyncio.Event()

    # ----------------------------------------------------------------------------------------- lifecycle
    async def connect(self, timeout: float = 5.0) -> None:
        """Open the websocket and create the Janus session; :class:`JanusUnavailable` when it cannot."""
        try:
            self._ws = await asyncio.wait_for(
                connect(self.url, subprotocols=["janus-protocol"], max_size=4 << 20,  # type: ignore[list-item]
                        open_timeout=timeout, ping_interval=None),
                timeout,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise JanusUnavailable(f"cannot reach Janus at {self.url}: {exc}") from None
        self._tasks.append(asyncio.get_running_loop().create_task(self._read(), name="janus-read"))
        reply = await self.request({"janus": "create"})
        self.session_id = int(reply["data"]["id"])
        self._tasks.append(asyncio.get_running_loop().create_task(self._keepalive(), name="janus-keepalive"))

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self.closed.is_set()

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            if self.session_id is not None and not self.closed.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        ws.send(json.dumps({"janus": "destroy", "session_id": self.session_id,
                                            "transaction": "bye"})), 1.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._fail_pending("closed")
        self.closed.set()

    def _fail_pending(self, why: str) -> None:
        for fut in [*self._pending.values(), *self._acks.values()]:
            if not fut.done():
                fut.set_exception(JanusUnavailable(f"Janus connection {why}"))
        self._pending.clear()
        self._acks.clear()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    self._dispatch(msg)
        except ConnectionClosed:
            pass
        finally:
            was_open = not self.closed.is_set()
            self.closed.set()
            self._fail_pending("lost")
            if was_open and self._ws is not None and self.on_closed is not None:
                self.on_closed()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("janus")
        tx = msg.get("transaction")
        if kind == "ack":
            ack = self._acks.pop(tx, None) if isinstance(tx, str) else None
            if ack is not None and not ack.done():
                ack.set_result(msg)
            return
        fut = self._pending.pop(tx, None) if isinstance(tx, str) else None
        if fut is not None:
            self._acks.pop(str(tx), None)
            if not fut.done():
                fut.set_result(msg)
            return
        sender = msg.get("sender")
        if isinstance(sender, int) and sender in self._listeners:
            try:
                self._listeners[sender](msg)
            except Exception:  # noqa: BLE001 - one listener's failure never stops the reader
                log.exception("janus event listener failed")

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            with contextlib.suppress(JanusUnavailable, JanusError):
                await self.request({"janus": "keepalive", "session_id": self.session_id})

    # ------------------------------------------------------------------------------------------ requests
    async def request(self, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT_S,
                      until_event: bool = False) -> dict[str, Any]:
        """Send ``body`` and wait for its reply (``until_event``: the plugin's asynchronous event after the ack).

        Raises :class:`JanusError` for an ``error`` reply or a plugin ``error`` field, :class:`JanusUnavailable`
        when the socket is gone or nothing came back within ``timeout``.
        """
        if self._ws is None or self.closed.is_set():
            raise JanusUnavailable("not connected to Janus")
        tx = f"t{next(self._ids)}-{secrets.token_hex(4)}"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[tx] = fut
        if until_event:
            self._acks[tx] = loop.create_future()  # the ack is swallowed; the event answers
        try:
            await self._ws.send(json.dumps({**body, "transaction": tx}))
            msg = await asyncio.wait_for(fut, timeout)
        except ConnectionClosed:
            raise JanusUnavailable("Janus connection lost") from None
        except TimeoutError:
            raise JanusUnavailable(f"Janus did not answer {body.get('janus')} within {timeout:g} s") from None
        finally:
            self._pending.pop(tx, None)
            self._acks.pop(tx, None)
        if msg.get("janus") == "error":
            err = msg.get("error") or {}
            raise JanusError(err.get("code"), str(err.get("reason", "unknown error")))
        data = (msg.get("plugindata") or {}).get("data") or {}
        if isinstance(data, dict) and data.get("error"):
            raise JanusError(data.get("error_code"), str(data["error"]))
        return msg

    async def attach(self, plugin: str = STREAMING_PLUGIN,
                     listener: Callable[[dict[str, Any]], None] | None = None) -> int:
        """A new handle on ``plugin``; ``listener`` gets the handle's unsolicited events."""
        reply = await self.request({"janus": "attach", "session_id": self.session_id, "plugin": plugin})
        handle = int(reply["data"]["id"])
        if listener is not None:
            self._listeners[handle] = listener
        return handle

    async def detach(self, handle: int) -> None:
        self._listeners.pop(handle, None)
        with contextlib.suppress(JanusUnavailable, JanusError):
            await self.request({"janus": "detach", "session_id": self.session_id, "handle_id": handle},
                               timeout=3.0)

    async def message(self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None,
                      until_event: bool = False) -> dict[str, Any]:
        """A plugin message on ``handle``; the reply's ``plugindata.data`` and ``jsep`` are in the result."""
        request: dict[str, Any] = {"janus": "message", "session_id": self.session_id, "handle_id": handle,
                                   "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        return await self.request(request, until_event=until_event)

    # -------------------------------------------------------------------------------- streaming plugin
    async def create_rtp_mountpoint(self, handle: int, mountpoint: int, description: str, secret: str,
                                    pin: str, rtp_host: str) -> MountpointPorts:
        """An RTP mountpoint (Opus audio pt 111, VP8 video pt 96) on ports Janus picks (``port: 0``); the reply
        names them. No ``bufferkf``: Janus 1.1 replays the buffered keyframe with old sequence numbers, and
        Chromium then drops the live packets that follow; the publisher sends a fresh keyframe when a viewer's
        WebRTC comes up instead."""
        body = {
            "request": "create", "type": "rtp", "id": mountpoint, "description": description,
            "secret": secret, "pin": pin, "permanent": False, "is_private": True,
            "media": [
                {"type": "audio", "mid": "a", "port": 0, "pt": 111, "codec": "opus"},
                {"type": "video", "mid": "v", "port": 0, "pt": 96, "codec": "vp8"},
            ],
        }
        reply = await self.message(handle, body)
        stream = reply["plugindata"]["data"].get("stream") or {}
        ports = {p.get("mid"): int(p.get("port", 0)) for p in stream.get("ports", []) if isinstance(p, dict)}
        if not ports.get("a") or not ports.get("v"):
            raise JanusError(None, f"mountpoint created without RTP ports: {stream}")
        return MountpointPorts(mountpoint, str(stream.get("host") or rtp_host), ports["a"], ports["v"])

    async def destroy_mountpoint(self, handle: int, mountpoint: int, secret: str) -> None:
        with contextlib.suppress(JanusUnavailable, JanusError):
            await self.message(handle, {"request": "destroy", "id": mountpoint, "secret": secret})

    async def watch(self, handle: int, mountpoint: int, pin: str) -> str:
        """Ask Janus to stream ``mountpoint`` to ``handle``: returns Janus' SDP offer for the viewer."""
        reply = await self.message(handle, {"request": "watch", "id": mountpoint, "pin": pin},
                                   until_event=True)
        jsep = reply.get("jsep") or {}
        if jsep.get("type") != "offer" or not isinstance(jsep.get("sdp"), str):
            raise JanusError(None, "Janus sent no offer for the mountpoint")
        return str(jsep["sdp"])

    async def start(self, handle: int, answer_sdp: str) -> None:
        """The viewer's SDP answer: Janus starts sending the mountpoint's media to it."""
        await self.message(handle, {"request": "start"}, jsep={"type": "answer", "sdp": answer_sdp},
                           until_event=True)
