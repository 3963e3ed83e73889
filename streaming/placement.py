"""Which engine node gets a new room: a pure rule over the loads the nodes report on ``/healthz``.

Beyond one machine, engine nodes (``styletalk-live serve`` processes) and Janus instances are separate processes.
A room lives on one engine node: its presenter's session, the one encoder of its media, its tokens. Its viewers
are served by the Janus instances that node publishes to (``--janus a,b``: every room to each), spread over them
by the node (fewest viewers first). What is left to decide is the node of a new room, before the presenter
connects; that is this module. It does no I/O (``clients/placement.py`` polls the nodes and connects).

**The rule** (documented in ``docs/architecture.md``, "Several machines"):

1. A node is a *candidate* when its ``/healthz`` answered ``ok``, it has a free presenter slot (connected clients
   and engine sessions both below ``max_sessions``), a free room slot (``rooms < max_rooms``), and, when it fans
   out through Janus, at least one of its Janus instances is up (a node whose Janus are all down could host the
   presenter but not its audience).
2. Among candidates, a node with Janus comes before a node in direct mode (whose audience is capped at
   ``max_direct_viewers``); then the lowest presenter load ``sessions / max_sessions`` wins: a presenter session
   (recognizer, decoder, renderer, one encode) is what costs an engine node its CPU, while viewers cost the Janus
   instances (benchmarks/results/audience.json: the engine's CPU per published frame is 26 ms with 1 viewer, 27 ms
   with 10; Janus adds ~0.4 % of a core per viewer);
   ties go to fewer open rooms, then to the order the nodes were listed in (deterministic: the same loads always
   give the same node).
3. No candidate: :class:`PlacementError` with a stable code: ``no_nodes`` (the list is empty),
   ``nodes_unreachable`` (no node answered), ``nodes_full`` (nodes answered, none can take a room; the message
   says why for each).

Loads are a snapshot: two presenters placed at the same moment may both be sent to the same node. The node
itself still admits atomically (``server_full`` at connect, ``room_full`` at ``open_room``), so the caller tries
the next node of :attr:`Placement.ranked` on such a refusal (``clients.placement.connect_placed`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class PlacementCode(StrEnum):
    NO_NODES = "no_nodes"  # no engine node was given
    NODES_UNREACHABLE = "nodes_unreachable"  # none answered /healthz (down, wrong address, not a styletalk node)
    NODES_FULL = "nodes_full"  # some answered; none has a free presenter/room slot with its fan-out up


class PlacementError(Exception):
    """No node can take a new room; ``code`` is a :class:`PlacementCode`, ``reasons`` (url, why) per node."""

    def __init__(self, code: PlacementCode, message: str, reasons: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reasons = reasons


@dataclass(frozen=True)
class NodeLoad:
    """One engine node as its ``/healthz`` describes it (``error`` set: it did not answer usably)."""

    url: str  # the node's page, http://host:port
    ok: bool = False
    sessions: int = 0  # connected presenter clients
    engine_sessions: int = 0  # engine slots in use
    max_sessions: int = 0
    rooms: int = 0
    max_rooms: int = 0
    viewers: int = 0
    fanout: str = "direct"  # "janus" or "direct"
    janus_up: int = 0  # Janus instances of this node that are up
    janus_nodes: int = 0  # Janus instances configured
    error: str | None = None

    @classmethod
    def from_healthz(cls, url: str, body: Any) -> NodeLoad:
        """Parse a ``/healthz`` JSON body; anything malformed gives a node with ``error`` (never an exception)."""
        if not isinstance(body, dict):
            return cls(url, error="/healthz did not answer a JSON object")
        ints = ("sessions", "engine_sessions", "max_sessions", "rooms", "max_rooms", "viewers", "janus_up",
                "janus_nodes")
        values: dict[str, int] = {}
        for key in ints:
            value = body.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return cls(url, error=f"/healthz field {key!r} is not a count: {value!r}")
            values[key] = value
        if "max_rooms" not in body:
            return cls(url, error="/healthz has no room counts (an older server)")
        fanout = body.get("fanout", "direct")
        if fanout not in ("janus", "direct"):
            return cls(url, error=f"/healthz field 'fanout' is unknown: {fanout!r}")
        v = values
        return cls(url, ok=body.get("ok") is True, sessions=v["sessions"], engine_sessions=v["engine_sessions"],
                   max_sessions=v["max_sessions"], rooms=v["rooms"], max_rooms=v["max_rooms"], viewers=v["viewers"],
                   fanout=fanout, janus_up=v["janus_up"], janus_nodes=v["janus_nodes"])

    @classmethod
    def unreachable(cls, url: str, why: str) -> NodeLoad:
        return cls(url, error=why)

    @property
    def presenter_load(self) -> float:
        """Share of the presenter slots in use (1.0 = full)."""
        used = max(self.sessions, self.engine_sessions)
        return used / self.max_sessions if self.max_sessions > 0 else 1.0

    def refusal(self) -> str | None:
        """Why this node cannot take a new room now (None: it is a candidate)."""
        if self.error is not None:
            return self.error
        if not self.ok:
            return "/healthz says not ok"
        if max(self.sessions, self.engine_sessions) >= self.max_sessions:
            return f"presenter slots full ({max(self.sessions, self.engine_sessions)}/{self.max_sessions})"
        if self.rooms >= self.max_rooms:
            return f"room slots full ({self.rooms}/{self.max_rooms})"
        if self.fanout == "janus" and self.janus_up == 0:
            return f"none of its {self.janus_nodes} Janus instance(s) is up"
        return None


@dataclass(frozen=True)
class Placement:
    """The chosen node, every candidate in rule order (fall back along it), and the nodes left out with why."""

    chosen: NodeLoad
    ranked: tuple[NodeLoad, ...]
    skipped: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.chosen.url, "ranked": [n.url for n in self.ranked],
                "skipped": [{"url": u, "why": w} for u, w in self.skipped]}


def rank_key(node: NodeLoad, index: int) -> tuple[bool, float, int, int]:
    """Sort key of a candidate: Janus before direct, lower presenter load, fewer rooms, listed order."""
    return node.fanout != "janus", node.presenter_load, node.rooms, index


def place_room(loads: list[NodeLoad] | tuple[NodeLoad, ...]) -> Placement:
    """The node for a new room by the module's rule; :class:`PlacementError` when none can take it."""
    if not loads:
        raise PlacementError(PlacementCode.NO_NODES, "no engine node given")
    skipped = tuple((n.url, why) for n in loads if (why := n.refusal()) is not None)
    candidates = [(rank_key(n, i), n) for i, n in enumerate(loads) if n.refusal() is None]
    if not candidates:
        detail = "; ".join(f"{u}: {w}" for u, w in skipped)
        if all(n.error is not None for n in loads):
            raise PlacementError(PlacementCode.NODES_UNREACHABLE, f"no engine node answered ({detail})", skipped)
        raise PlacementError(PlacementCode.NODES_FULL, f"no engine node can take a room ({detail})", skipped)
    ranked = tuple(n for _, n in sorted(candidates, key=lambda c: c[0]))
    return Placement(ranked[0], ranked, skipped)
