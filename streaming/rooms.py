"""Rooms and roles: a presenter session opens a room; viewers and operators join it with its tokens.

A room is one presenter's output (:class:`~streaming.broadcast.Broadcast`) plus two secrets: the *viewer token*
(watch only: no microphone, no control) and the *control token* (watch, and style/intensity/interrupt, executed
as if the presenter had sent them). Who may do what is the table in ``streaming/PROTOCOL.md`` (Rooms and roles).

Media for viewers takes one of two routes, chosen by ``server.janus``:

- **Janus** (:class:`~streaming.janus_fanout.JanusFanout`): the room is encoded once and Janus fans it out; the
  audience is limited by Janus, ``max_viewers`` per server here.
- **direct** (no Janus): each viewer gets its own aiortc peer reading the broadcast, i.e. its own encoder in this
  process; the audience of a room is capped at ``max_direct_viewers`` and the reply says so.

Tokens are compared in constant time; a connection that sends wrong tokens is closed after a few tries, and
joins per room are rate limited (a flood of joins costs a token-bucket check each, not a peer connection).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from streaming import protocol as P
from streaming.broadcast import Broadcast, Subscriber
from streaming.janus import JanusUnavailable
from streaming.janus_fanout import JanusFanout, JanusNode
from streaming.rtmp_out import RtmpPush
from streaming.rtp_latency import install_video_encoder
from streaming.webrtc import PC_CLOSE_TIMEOUT_S, SessionAudioTrack, SessionVideoTrack

log = logging.getLogger(__name__)

JOIN_RATE_PER_S = 10.0  # watch requests per room, sustained
JOIN_BURST = 30


class RoomState:
    LIVE = "live"  # the presenter's media is flowing
    WAITING = "waiting"  # the room is open but the presenter has no media running (yet / after a hangup)
    FANOUT_DOWN = "fanout_down"  # this viewer's Janus instance is gone; the server reconnects, then says live
    CLOSED = "closed"  # the presenter closed the room or left


@dataclass
class Room:
    id: str
    viewer_token: str
    control_token: str
    owner: Any  # the presenter's ClientHandler (operators' control requests run through its dispatch)
    broadcast: Broadcast
    viewers: set[Any] = field(default_factory=set)  # ViewerHandlers watching
    joins: P.RateLimiter = field(default_factory=lambda: P.RateLimiter(JOIN_RATE_PER_S, JOIN_BURST))
    opened: float = field(default_factory=time.time)

    def role_for(self, token: str) -> str | None:
        """``"operator"`` for the control token, ``"viewer"`` for the viewer token, None otherwise."""
        if hmac.compare_digest(token.encode(), self.control_token.encode()):
            return "operator"
        if hmac.compare_digest(token.encode(), self.viewer_token.encode()):
            return "viewer"
        return None

    @property
    def state(self) -> str:
        return RoomState.LIVE if self.broadcast.live else RoomState.WAITING


class DirectViewerPeer:
    """Without Janus: one aiortc peer per viewer reading the broadcast (its own encoder: hence the small cap)."""

    def __init__(self, subscriber: Subscriber, on_state: Callable[[str], None], video_bitrate: int = 0) -> None:
        """``video_bitrate``: VP8 at a steady rate, bit/s (``streaming/rtp_latency.py``; 0 = aiortc's encoder)."""
        self.subscriber = subscriber
        self.video_bitrate = video_bitrate
        self.pc = RTCPeerConnection()
        self.video = SessionVideoTrack(subscriber)
        self.pc.addTrack(self.video)
        self.pc.addTrack(SessionAudioTrack(subscriber))

        @self.pc.on("connectionstatechange")
        async def _state() -> None:
            on_state(self.pc.connectionState)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        for transceiver in self.pc.getTransceivers():  # the codec is known now; the sender starts after DTLS
            if transceiver.sender.track is self.video:
                install_video_encoder(transceiver, self.video_bitrate)

    async def close(self) -> None:
        self.subscriber.close()
        await asyncio.wait({asyncio.ensure_future(self.pc.close())}, timeout=PC_CLOSE_TIMEOUT_S)


class RoomRegistry:
    """The server's rooms, the per-presenter broadcasts, and the fan-out route (Janus or direct)."""

    def __init__(self, janus_urls: list[str], max_rooms: int, max_viewers: int, max_direct_viewers: int,
                 rtmp_url: str = "") -> None:
        self.rooms: dict[str, Room] = {}
        self.rtmp_url = rtmp_url  # each opened room is also pushed here ("{room}" -> the room id); "" = none
        self.pushes: dict[str, RtmpPush] = {}  # room id -> its RTMP push
        self.broadcasts: dict[str, Broadcast] = {}  # presenter client id -> its broadcast
        self.max_rooms = max_rooms
        self.max_viewers = max_viewers
        self.max_direct_viewers = max_direct_viewers
        self.fanout = JanusFanout(janus_urls, self._node_state) if janus_urls else None

    @property
    def mode(self) -> str:
        return "janus" if self.fanout is not None else "direct"

    @property
    def viewer_count(self) -> int:
        return sum(len(r.viewers) for r in self.rooms.values())

    async def start(self) -> None:
        """Reach Janus when configured: :class:`JanusUnavailable` (a clear refusal to start) when it is down."""
        if self.fanout is not None:
            await self.fanout.start()

    async def close(self) -> None:
        for room in list(self.rooms.values()):
            await self.close_room(room)
        if self.fanout is not None:
            await self.fanout.close()

    # ------------------------------------------------------------------------------------- presenters
    def broadcast_for(self, owner_id: str) -> Broadcast:
        """The presenter's broadcast (created on first use; it outlives the presenter's sessions)."""
        bc = self.broadcasts.get(owner_id)
        if bc is None:
            bc = self.broadcasts[owner_id] = Broadcast()
        return bc

    def room_of(self, owner: Any) -> Room | None:
        return next((r for r in self.rooms.values() if r.owner is owner), None)

    async def open_room(self, owner: Any) -> Room:
        existing = self.room_of(owner)
        if existing is not None:
            return existing
        if len(self.rooms) >= self.max_rooms:
            raise P.ProtocolError(P.ErrorCode.ROOM_FULL, f"this server has {self.max_rooms} open rooms already")
        room_id = secrets.token_urlsafe(6)
        broadcast = self.broadcast_for(owner.id)
        room = Room(room_id, secrets.token_urlsafe(16), secrets.token_urlsafe(16), owner, broadcast)
        broadcast.on_live = lambda live, r=room: self._tell(r, RoomState.LIVE if live else RoomState.WAITING)
        self.rooms[room_id] = room
        if self.fanout is not None:
            await self.fanout.open_room(room_id, broadcast.subscribe())
        if self.rtmp_url:
            push = self.pushes[room_id] = RtmpPush(self.rtmp_url.replace("{room}", room_id), broadcast.subscribe())
            push.start()
        log.info("room %s opened by %s (%s fan-out)", room_id, owner.id, self.mode)
        return room

    async def close_room(self, room: Room) -> None:
        if self.rooms.pop(room.id, None) is None:
            return
        room.broadcast.on_live = None
        for viewer in list(room.viewers):
            await viewer.room_closed()
        room.viewers.clear()
        if self.fanout is not None:
            await self.fanout.close_room(room.id)
        push = self.pushes.pop(room.id, None)
        if push is not None:
            await push.close()
        log.info("room %s closed", room.id)

    async def owner_left(self, owner: Any) -> None:
        room = self.room_of(owner)
        if room is not None:
            await self.close_room(room)
        bc = self.broadcasts.pop(owner.id, None)
        if bc is not None:
            bc.close()

    # ---------------------------------------------------------------------------------------- viewers
    def admit(self, req: P.Watch, now: float) -> tuple[Room, str]:
        """Room and role for a ``watch``; coded errors for an unknown room, a wrong token, a flood, a full room."""
        room = self.rooms.get(req.room)
        if room is None:
            raise P.ProtocolError(P.ErrorCode.UNKNOWN_ROOM, "no open room with that id", req.id, req.TYPE)
        if not room.joins.allow(now):
            raise P.ProtocolError(P.ErrorCode.RATE_LIMITED, "too many joins for this room; retry in a moment",
                                  req.id, req.TYPE)
        role = room.role_for(req.token)
        if role is None:
            raise P.ProtocolError(P.ErrorCode.BAD_TOKEN, "wrong token for this room", req.id, req.TYPE)
        if self.fanout is None and len(room.viewers) >= self.max_direct_viewers:
            raise P.ProtocolError(
                P.ErrorCode.ROOM_FULL,
                f"direct mode (no Janus): at most {self.max_direct_viewers} viewers per room; "
                "start the server with --janus for an audience", req.id, req.TYPE)
        if self.viewer_count >= self.max_viewers:
            raise P.ProtocolError(P.ErrorCode.ROOM_FULL, f"this server serves at most {self.max_viewers} viewers",
                                  req.id, req.TYPE)
        return room, role

    def _tell(self, room: Room, state: str) -> None:
        for viewer in list(room.viewers):
            viewer.tell_state(state)

    def _node_state(self, node: JanusNode, up: bool) -> None:
        for room in self.rooms.values():
            for viewer in list(room.viewers):
                if viewer.janus_node is node or up:
                    viewer.node_changed(node, up)

    async def janus_watch(self, room: Room, listener: Callable[[dict[str, Any]], None]) -> tuple[JanusNode, int, str]:
        assert self.fanout is not None
        try:
            return await self.fanout.watch(room.id, listener)
        except JanusUnavailable as exc:
            raise P.ProtocolError(P.ErrorCode.FANOUT_DOWN, f"the fan-out server is unreachable: {exc}") from None

    def stats(self, room: Room) -> dict[str, Any]:
        out: dict[str, Any] = {"room": room.id, "mode": self.mode, "state": room.state, "viewers": len(room.viewers)}
        if self.fanout is not None:
            out.update(self.fanout.stats(room.id))
        if room.id in self.pushes:
            out["rtmp"] = self.pushes[room.id].stats()
        return out
