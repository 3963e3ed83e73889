"""The presenter's room requests (``open_room``, ``close_room``), registered in the client handler's table.

Kept apart from :mod:`streaming.client_handler` so the room feature is one module; ``watch``/``answer`` on the
presenter's websocket are refused (``forbidden``): viewers use ``/ws/watch``.
"""

from __future__ import annotations

import re
from typing import Any

from streaming import protocol as P
from streaming.client_handler import ClientHandler, _handles

HOST_RE = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")  # name[:port], [v6][:port]


def link_base(handler: ClientHandler) -> str:
    """The base URL of this node for a room's links: ``server.public_url`` when set, else the host the presenter
    reached the node by (its Host header, when it is a plain ``name[:port]``: with several nodes, or a node bound
    to ``0.0.0.0``, the listening address is not what others can open), else the listening address."""
    public = handler.server.settings.public_url
    if public:
        return public.rstrip("/")
    request = getattr(handler.ws, "request", None)
    hosts = request.headers.get_all("Host") if request is not None else []
    if len(hosts) == 1 and HOST_RE.fullmatch(hosts[0]):
        return f"http://{hosts[0]}"
    return handler.server.url.rstrip("/")


def room_links(handler: ClientHandler, room_id: str, viewer_token: str, control_token: str) -> dict[str, Any]:
    base = link_base(handler)
    return {
        "room": room_id,
        "viewer_token": viewer_token,
        "control_token": control_token,
        "watch_url": f"{base}/watch/{room_id}?t={viewer_token}",
        "control_url": f"{base}/watch/{room_id}?t={control_token}",
    }


@_handles(P.OpenRoom)
async def _open_room(self: ClientHandler, req: P.OpenRoom) -> dict[str, Any]:
    rooms = self.server.rooms
    try:
        room = await rooms.open_room(self)
    except P.ProtocolError as exc:
        exc.request_id, exc.request_type = req.id, req.TYPE
        raise
    result = room_links(self, room.id, room.viewer_token, room.control_token)
    result.update(mode=rooms.mode, state=room.state,
                  max_viewers=rooms.max_direct_viewers if rooms.fanout is None else rooms.max_viewers)
    if rooms.fanout is None:
        result["note"] = (f"direct mode (no Janus): each viewer costs this server an encoder; at most "
                          f"{rooms.max_direct_viewers} viewers")
    return result


@_handles(P.CloseRoom)
async def _close_room(self: ClientHandler, req: P.CloseRoom) -> dict[str, Any]:
    room = self.server.rooms.room_of(self)
    if room is None:
        raise P.ProtocolError(P.ErrorCode.UNKNOWN_ROOM, "this session has no open room", req.id, req.TYPE)
    await self.server.rooms.close_room(room)
    return {"room": room.id, "closed": True}


@_handles(P.Watch)
async def _watch(self: ClientHandler, req: P.Watch) -> dict[str, Any]:
    raise P.ProtocolError(P.ErrorCode.FORBIDDEN, "a presenter does not watch: viewers connect to /ws/watch",
                          req.id, req.TYPE)


@_handles(P.Answer)
async def _answer(self: ClientHandler, req: P.Answer) -> dict[str, Any]:
    raise P.ProtocolError(P.ErrorCode.FORBIDDEN, "answer belongs to a viewer's watch on /ws/watch",
                          req.id, req.TYPE)
