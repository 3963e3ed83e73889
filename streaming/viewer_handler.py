"""One websocket on ``/ws/watch``: a viewer (watch only) or an operator (watch + style control) of a room.

No engine session is created for these connections: a viewer costs no ``max_sessions`` slot. The connection's
first useful request is ``watch`` {room, token}; the token decides the role. Requests a role may not send get
``forbidden``; an operator's control requests are executed by the presenter's own handler, exactly as if the
presenter had sent them. Media: the reply to ``watch`` is the server's (or Janus') SDP offer; ``answer`` completes
it. ``room_state`` events tell the viewer what is going on (live, waiting, fanout_down, closed); after
``fanout_down`` -> ``live`` the viewer simply sends ``watch`` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streaming import protocol as P
from streaming.janus import JanusError, JanusUnavailable
from streaming.janus_fanout import JanusNode
from streaming.rooms import DirectViewerPeer, Room, RoomState

if TYPE_CHECKING:
    from streaming.server import PresenterServer

log = logging.getLogger("streaming.server")

VIEWER_RATE_PER_S = 5.0  # a viewer page sends a handful of messages per join
VIEWER_BURST = 15
MAX_BAD_TOKENS = 5  # wrong tokens on one connection before it is closed
OPERATOR_REQUESTS = (P.SetStyle, P.SetIntensity, P.Interrupt, P.ListStyles)


class ViewerHandler:
    def __init__(self, server: PresenterServer, ws: ServerConnection, client_id: str) -> None:
        self.server = server
        self.ws = ws
        self.id = client_id
        self.room: Room | None = None
        self.role: str | None = None
        self.janus_node: JanusNode | None = None
        self.janus_handle: int | None = None
        self.direct: DirectViewerPeer | None = None
        self.limiter = P.RateLimiter(VIEWER_RATE_PER_S, VIEWER_BURST)
        self.bad_tokens = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        rooms = self.server.rooms
        await self.send(P.event("welcome", session=self.id, protocol=P.PROTOCOL_VERSION, role="none",
                                mode=rooms.mode))
        async for raw in self.ws:
            await self.handle_raw(raw)

    async def send(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(self.ws.send(text), self.server.settings.send_timeout_s)

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------------------------------- requests
    async def handle_raw(self, raw: str | bytes) -> None:
        if not self.limiter.allow(time.monotonic()):
            rid, rtype = P.peek_envelope(raw)
            await self.send(P.error_reply(P.ErrorCode.RATE_LIMITED,
                                          f"too many messages: at most {self.limiter.rate:g} per second", rid, rtype))
            return
        request: P.Request | None = None
        try:
            request = P.parse_message(raw, self.server.limits)
            result = await self.dispatch(request)
            await self.send(P.reply(request, result))
        except P.ProtocolError as exc:
            if request is not None and exc.request_id is None:
                exc.request_id, exc.request_type = request.id, request.TYPE
            await self.send(P.error_from_exception(exc))
            if exc.code == P.ErrorCode.BAD_TOKEN:
                self.bad_tokens += 1
                if self.bad_tokens >= MAX_BAD_TOKENS:
                    await self.ws.close(1008, "too many wrong tokens")
        except ConnectionClosed:
            raise
        except Exception:  # noqa: BLE001 - a viewer's failing request never takes the server down
            log.exception("viewer %s: request failed", self.id)
            rid, rtype = (request.id, request.TYPE) if request is not None else (None, None)
            await self.send(P.error_reply(P.ErrorCode.INTERNAL, "internal server error (logged on the server)",
                                          rid, rtype))

    async def dispatch(self, req: P.Request) -> dict[str, Any]:
        if isinstance(req, P.Ping):
            return {"server_time": time.time()}
        if isinstance(req, P.Watch):
            return await self._watch(req)
        if isinstance(req, P.Answer):
            return await self._answer(req)
        if isinstance(req, P.Hangup):
            had = self.room is not None
            await self._leave()
            return {"stopped": had}
        if isinstance(req, P.GetStats):
            if self.room is None:
                raise P.ProtocolError(P.ErrorCode.BAD_STATE, "not watching a room", req.id, req.TYPE)
            return self.server.rooms.stats(self.room)
        if isinstance(req, OPERATOR_REQUESTS):
            if self.room is None or self.role != "operator":
                raise P.ProtocolError(P.ErrorCode.FORBIDDEN,
                                      f"{req.TYPE} needs the room's control token (viewers only watch)",
                                      req.id, req.TYPE)
            result: dict[str, Any] = await self.room.owner.dispatch(req)
            return result
        raise P.ProtocolError(P.ErrorCode.FORBIDDEN,
                              f"{req.TYPE} is not available to viewers (on /ws/watch: watch, answer, hangup, ping, "
                              "stats; operators also set_style, set_intensity, interrupt, list_styles)",
                              req.id, req.TYPE)

    async def _watch(self, req: P.Watch) -> dict[str, Any]:
        rooms = self.server.rooms
        await self._leave()
        room, role = rooms.admit(req, time.monotonic())
        self.room, self.role = room, role
        room.viewers.add(self)
        try:
            if rooms.fanout is not None:
                node, handle, offer = await rooms.janus_watch(room, self._janus_event)
                self.janus_node, self.janus_handle = node, handle
            else:
                self.direct = DirectViewerPeer(room.broadcast.subscribe(), self._direct_state,
                                               1000 * self.server.settings.video_bitrate_kbps)
                offer = await self.direct.offer()
        except BaseException:
            await self._leave()
            raise
        return {"room": room.id, "role": role, "mode": rooms.mode, "state": room.state, "sdp": offer,
                "sdp_type": "offer",
                "max_viewers": rooms.max_direct_viewers if rooms.fanout is None else rooms.max_viewers}

    async def _answer(self, req: P.Answer) -> dict[str, Any]:
        rooms = self.server.rooms
        try:
            if self.direct is not None:
                await self.direct.answer(req.sdp)
            elif self.janus_node is not None and self.janus_handle is not None and rooms.fanout is not None:
                await rooms.fanout.answer(self.janus_node, self.janus_handle, req.sdp)
            else:
                raise P.ProtocolError(P.ErrorCode.BAD_STATE, "send watch first", req.id, req.TYPE)
        except JanusUnavailable as exc:
            raise P.ProtocolError(P.ErrorCode.FANOUT_DOWN, str(exc), req.id, req.TYPE) from None
        except (JanusError, ValueError) as exc:
            raise P.ProtocolError(P.ErrorCode.BAD_SDP, f"cannot use the answer: {exc}", req.id, req.TYPE) from None
        return {}

    # ------------------------------------------------------------------------------------------- events
    def tell_state(self, state: str, **extra: Any) -> None:
        if self.room is not None:
            self._later(self.send(P.event("room_state", room=self.room.id, state=state, **extra)))

    def node_changed(self, node: JanusNode, up: bool) -> None:
        """A Janus node went down (this viewer's) or came back (any): the viewer is told; it re-watches on live."""
        if not up:
            self.janus_node, self.janus_handle = None, None
            self.tell_state(RoomState.FANOUT_DOWN, detail="the fan-out server went away; reconnecting")
            fanout = self.server.rooms.fanout
            if self.room is not None and fanout is not None and any(n.up for n in fanout.nodes):
                # another Janus instance serves the room: watch again now (placed there)
                self.tell_state(self.room.state, detail="another fan-out server has the room: send watch again")
        elif self.janus_node is None and self.room is not None:
            self.tell_state(self.room.state, detail="the fan-out server is back: send watch again")

    def _janus_event(self, msg: dict[str, Any]) -> None:
        if msg.get("janus") == "hangup" and self.room is not None:
            self.tell_state("ended", detail="media stopped; send watch again")

    def _direct_state(self, state: str) -> None:
        if state in ("failed", "closed") and self.room is not None and self.direct is not None:
            self.tell_state("ended", detail=f"peer connection {state}; send watch again")

    async def room_closed(self) -> None:
        """The presenter closed the room (or left): tell the viewer and free its media."""
        room = self.room
        if room is not None:
            await self.send(P.event("room_state", room=room.id, state=RoomState.CLOSED))
        await self._leave()

    # ---------------------------------------------------------------------------------------- clean-up
    async def _leave(self) -> None:
        room, self.room = self.room, None
        self.role = None
        if room is not None:
            room.viewers.discard(self)
        direct, self.direct = self.direct, None
        if direct is not None:
            await direct.close()
        node, handle = self.janus_node, self.janus_handle
        self.janus_node, self.janus_handle = None, None
        fanout = self.server.rooms.fanout
        if node is not None and handle is not None and fanout is not None:
            await fanout.leave(node, handle)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._leave()
