"""Fan-out of rooms through one or more Janus instances (separate processes; GPL, never linked).

Each room is encoded once by an :class:`~streaming.rtp_publisher.RtpPublisher` and the same RTP packets go to an
RTP mountpoint on *every* Janus instance that is up ("publish to each": Janus nodes may live on other machines;
only UDP reaches them). A viewer is placed on the up instance with the fewest viewers; the server proxies its
signaling (Janus' offer, the viewer's answer), so viewers never talk to Janus' API nor learn its secrets.

Janus going away: the node is marked down, its viewers are told (``room_state`` ``fanout_down``), and a
reconnect loop retries every second; when it is back the room mountpoints are created again (new ports, new
targets for the publisher) and its viewers are told ``live`` so they watch again. The presenter never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from streaming.broadcast import Subscriber
from streaming.janus import JanusClient, JanusError, JanusUnavailable, MountpointPorts
from streaming.rtp_publisher import RtpPublisher, RtpTarget

log = logging.getLogger(__name__)

RECONNECT_S = 1.0


@dataclass
class JanusNode:
    """One Janus instance: its websocket client, a handle for mountpoint requests, its viewers."""

    url: str
    client: JanusClient | None = None
    control: int | None = None
    up: bool = False
    viewers: int = 0
    mounts: dict[str, MountpointPorts] = field(default_factory=dict)  # room id -> its mountpoint here

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"


@dataclass
class RoomFeed:
    room: str
    mountpoint: int
    secret: str
    pin: str
    publisher: RtpPublisher
    subscriber: Subscriber


class JanusFanout:
    """Rooms published to every up Janus node; viewers placed on the least loaded one."""

    def __init__(self, urls: list[str], on_node_state: Callable[[JanusNode, bool], None] | None = None) -> None:
        self.nodes = [JanusNode(u) for u in urls]
        self.feeds: dict[str, RoomFeed] = {}
        self.on_node_state = on_node_state
        self._reconnects: dict[int, asyncio.Task[None]] = {}
        self._closing = False

    # ---------------------------------------------------------------------------------------- nodes
    async def start(self) -> None:
        """Connect every node; :class:`JanusUnavailable` (naming the URLs) when none answers."""
        results = await asyncio.gather(*(self._connect(n) for n in self.nodes), return_exceptions=True)
        if not any(n.up for n in self.nodes):
            reasons = "; ".join(str(r) for r in results if isinstance(r, BaseException))
            raise JanusUnavailable(reasons or "no Janus node answered")
        for node, result in zip(self.nodes, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("Janus %s is down (%s); retrying in the background", node.url, result)
                self._reconnect_later(node)

    async def _connect(self, node: JanusNode) -> None:
        client = JanusClient(node.url)
        await client.connect()
        try:
            node.control = await client.attach()
        except BaseException:
            await client.close()
            raise
        node.client = client
        node.mounts.clear()
        client.on_closed = lambda: self._lost(node)
        for feed in list(self.feeds.values()):
            await self._mount(node, feed)
        node.up = True
        self._retarget()
        log.info("Janus %s connected", node.url)

    def _lost(self, node: JanusNode) -> None:
        if self._closing or not node.up:
            return
        node.up = False
        node.mounts.clear()
        node.viewers = 0
        log.warning("lost Janus %s; viewers there are told, reconnecting every %.0f s", node.url, RECONNECT_S)
        self._retarget()
        if self.on_node_state is not None:
            self.on_node_state(node, False)
        self._reconnect_later(node)

    def _reconnect_later(self, node: JanusNode) -> None:
        key = id(node)
        if key in self._reconnects and not self._reconnects[key].done():
            return
        self._reconnects[key] = asyncio.get_running_loop().create_task(self._reconnect(node))

    async def _reconnect(self, node: JanusNode) -> None:
        while not self._closing:
            await asyncio.sleep(RECONNECT_S)
            old, node.client = node.client, None
            if old is not None:
                old.on_closed = None
                await old.close()
            try:
                await self._connect(node)
            except (JanusUnavailable, JanusError, OSError) as exc:
                log.debug("Janus %s still down: %s", node.url, exc)
                continue
            if self.on_node_state is not None:
                self.on_node_state(node, True)
            return

    def _retarget(self) -> None:
        for feed in self.feeds.values():
            targets = [RtpTarget(n.mounts[feed.room].host, n.mounts[feed.room].audio_port,
                                 n.mounts[feed.room].video_port)
                       for n in self.nodes if n.up and feed.room in n.mounts]
            feed.publisher.set_targets(targets)

    async def _mount(self, node: JanusNode, feed: RoomFeed) -> None:
        assert node.client is not None and node.control is not None
        ports = await node.client.create_rtp_mountpoint(
            node.control, feed.mountpoint, f"room {feed.room}", feed.secret, feed.pin, node.host
        )
        node.mounts[feed.room] = ports

    async def close(self) -> None:
        self._closing = True
        for task in self._reconnects.values():
            task.cancel()
        for room in list(self.feeds):
            await self.close_room(room)
        for node in self.nodes:
            if node.client is not None:
                node.client.on_closed = None
                await node.client.close()
            node.up = False

    # ----------------------------------------------------------------------------------------- rooms
    async def open_room(self, room: str, subscriber: Subscriber) -> RoomFeed:
        """Mount the room on every up node and start its one encoder."""
        feed = RoomFeed(room, secrets.randbelow(1 << 40) + 1, secrets.token_hex(12), secrets.token_hex(12),
                        RtpPublisher(subscriber), subscriber)
        self.feeds[room] = feed
        for node in self.nodes:
            if node.up:
                try:
                    await self._mount(node, feed)
                except (JanusUnavailable, JanusError) as exc:
                    log.warning("room %s: Janus %s refused the mountpoint: %s", room, node.url, exc)
        self._retarget()
        await feed.publisher.start()
        return feed

    async def close_room(self, room: str) -> None:
        feed = self.feeds.pop(room, None)
        if feed is None:
            return
        await feed.publisher.close()
        feed.subscriber.close()
        for node in self.nodes:
            if node.mounts.pop(room, None) is not None and node.up and node.client is not None:
                assert node.control is not None
                await node.client.destroy_mountpoint(node.control, feed.mountpoint, feed.secret)

    def stats(self, room: str) -> dict[str, Any]:
        feed = self.feeds.get(room)
        return {
            "nodes": [{"url": n.url, "up": n.up, "viewers": n.viewers} for n in self.nodes],
            "publisher": ({**feed.publisher.stats.as_dict(), "source_dropped": feed.subscriber.dropped,
                           "source_skipped": feed.subscriber.skipped} if feed is not None else None),
        }

    # --------------------------------------------------------------------------------------- viewers
    async def watch(self, room: str, listener: Callable[[dict[str, Any]], None]) -> tuple[JanusNode, int, str]:
        """Place a viewer: (node, its Janus handle, Janus' SDP offer). :class:`JanusUnavailable` if none is up."""
        feed = self.feeds.get(room)
        candidates = [n for n in self.nodes if n.up and feed is not None and room in n.mounts]
        if feed is None or not candidates:
            raise JanusUnavailable("no Janus instance is up for this room")
        node = min(candidates, key=lambda n: n.viewers)
        assert node.client is not None

        def on_event(msg: dict[str, Any]) -> None:
            if msg.get("janus") == "webrtcup":  # this viewer can decode from the next keyframe: make it now
                feed.publisher.request_keyframe()
            listener(msg)

        handle = await node.client.attach(listener=on_event)
        try:
            offer = await node.client.watch(handle, feed.mountpoint, feed.pin)
        except BaseException:
            await node.client.detach(handle)
            raise
        node.viewers += 1
        feed.publisher.request_keyframe()
        return node, handle, offer

    async def answer(self, node: JanusNode, handle: int, sdp: str) -> None:
        if node.client is None or not node.up:
            raise JanusUnavailable("the Janus instance of this viewer is down")
        await node.client.start(handle, sdp)

    async def leave(self, node: JanusNode, handle: int) -> None:
        client = node.client
        if client is not None and node.up:
            node.viewers = max(0, node.viewers - 1)
            with contextlib.suppress(JanusUnavailable, JanusError):
                await client.detach(handle)
