"""Room placement across engine nodes: the pure rule (streaming/placement.py), then the real thing on loopback.

The loopback test runs two ``styletalk-live serve`` processes (engine nodes), both fanning out through the same
two Janus instances; presenters are placed by the rule (``clients.placement``: the nodes' ``/healthz``), one room
lands on each node, and each room has a viewer on each Janus instance - checked from outside the engine: the ICE
candidates of the offer a viewer gets are in that Janus process's own UDP range. A node that is not there is
skipped, a presenter holding a stale ranking is refused by the full node and lands on the other, and when both
nodes are full the placement says so with its code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import pytest

from clients.placement import connect_placed, main, place, read_load
from streaming.placement import NodeLoad, PlacementCode, PlacementError, place_room
from tests.audience_fixtures import joined_viewer, speak_and_open_room
from tests.janus_fixtures import free_port, require_janus, running_janus
from tests.streaming_fixtures import http_get, run, serve_processes


def node(url: str, sessions: int = 0, max_sessions: int = 4, rooms: int = 0, max_rooms: int = 8,
         fanout: str = "janus", janus_up: int = 2, janus_nodes: int = 2, ok: bool = True) -> NodeLoad:
    return NodeLoad(url, ok=ok, sessions=sessions, engine_sessions=sessions, max_sessions=max_sessions,
                    rooms=rooms, max_rooms=max_rooms, fanout=fanout, janus_up=janus_up, janus_nodes=janus_nodes)


# --- the rule -----------------------------------------------------------------------------------------------


def test_lowest_presenter_load_wins_relative_to_the_node_size() -> None:
    small = node("http://a", sessions=1, max_sessions=2)  # half full
    big = node("http://b", sessions=2, max_sessions=8)  # a quarter full, though more sessions
    assert place_room([small, big]).chosen.url == "http://b"
    assert [n.url for n in place_room([small, big]).ranked] == ["http://b", "http://a"]


def test_ties_go_to_fewer_rooms_then_to_the_listed_order() -> None:
    a, b, c = node("http://a", rooms=1), node("http://b"), node("http://c")
    assert [n.url for n in place_room([a, b, c]).ranked] == ["http://b", "http://c", "http://a"]
    assert place_room([c, b]).chosen.url == "http://c"  # same loads, same answer: the order given


def test_a_node_with_janus_comes_before_a_direct_node_even_when_busier() -> None:
    direct = node("http://d", fanout="direct", janus_up=0, janus_nodes=0)
    busy = node("http://j", sessions=3)
    assert place_room([direct, busy]).chosen.url == "http://j"
    assert place_room([direct]).chosen.url == "http://d"  # a direct node still takes a room when it is all there is


def test_full_down_or_fanout_less_nodes_are_skipped_with_the_reason() -> None:
    loads = [node("http://full", sessions=4), node("http://rooms", rooms=8), node("http://nojanus", janus_up=0),
             NodeLoad.unreachable("http://gone", "no /healthz: connection refused"), node("http://ok")]
    placement = place_room(loads)
    assert placement.chosen.url == "http://ok" and len(placement.ranked) == 1
    why = dict(placement.skipped)
    assert "presenter slots full (4/4)" in why["http://full"] and "room slots full" in why["http://rooms"]
    assert "Janus" in why["http://nojanus"] and "refused" in why["http://gone"]


def test_stable_error_codes_when_no_node_can_take_a_room() -> None:
    with pytest.raises(PlacementError) as empty:
        place_room([])
    assert empty.value.code == PlacementCode.NO_NODES
    with pytest.raises(PlacementError) as down:
        place_room([NodeLoad.unreachable("http://a", "timeout"), NodeLoad.unreachable("http://b", "refused")])
    assert down.value.code == PlacementCode.NODES_UNREACHABLE and len(down.value.reasons) == 2
    with pytest.raises(PlacementError) as full:
        place_room([node("http://a", sessions=4), NodeLoad.unreachable("http://b", "refused")])
    assert full.value.code == PlacementCode.NODES_FULL and "http://a: presenter slots full" in str(full.value)


@pytest.mark.parametrize("body", [None, [], {"ok": True}, {"ok": True, "max_rooms": "8"},
                                  {"ok": True, "max_rooms": 8, "sessions": -1},
                                  {"ok": True, "max_rooms": 8, "sessions": True},
                                  {"ok": True, "max_rooms": 8, "fanout": "carrier pigeon"}])
def test_a_garbled_healthz_is_a_skipped_node_never_an_exception(body: object) -> None:
    load = NodeLoad.from_healthz("http://x", body)
    assert load.error is not None and load.refusal() == load.error


def test_healthz_not_ok_is_not_a_candidate() -> None:
    body = {"ok": False, "sessions": 0, "max_sessions": 4, "max_rooms": 8, "fanout": "direct"}
    assert NodeLoad.from_healthz("http://x", body).refusal() == "/healthz says not ok"


# --- two engine nodes and two Janus instances on loopback ------------------------------------------------------

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ", re.MULTILINE | re.IGNORECASE)


def offer_ports(sdp: str) -> set[int]:
    """The UDP ports of the ICE candidates in an SDP (Janus' offer: where its media for this viewer comes from)."""
    return {int(port) for _, port in CANDIDATE.findall(sdp)}


async def healthz(url: str) -> dict:
    port = int(url.rsplit(":", 1)[1])
    status, _, body = await http_get(port, "/healthz")
    assert status == 200
    return json.loads(body)


def test_two_engine_nodes_two_janus_rooms_placed_by_the_rule_viewers_on_both(tmp_path: Path) -> None:
    require_janus()
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(running_janus(tmp_path / "janus-a"))
        b = stack.enter_context(running_janus(tmp_path / "janus-b"))
        # each node takes one presenter (max_sessions 1), so the second room must go to the other node
        node_args = ("--janus", f"{a.url},{b.url}", "--max-sessions", "1")
        (p1, port1), (p2, port2) = stack.enter_context(serve_processes(2, *node_args))
        n1, n2 = f"http://127.0.0.1:{port1}", f"http://127.0.0.1:{port2}"
        gone = f"http://127.0.0.1:{free_port()}"  # a node that is not there
        nodes = [gone, n1, n2]

        async def main() -> dict:
            first = await place(nodes)
            assert first.chosen.url == n1, first  # both empty: the listed order decides
            assert [u for u, _ in first.skipped] == [gone] and [n.url for n in first.ranked] == [n1, n2]
            at1, presenter1 = await connect_placed([n.url for n in first.ranked])
            room1 = await speak_and_open_room(presenter1)

            second = await place(nodes)
            assert second.chosen.url == n2 and dict(second.skipped)[n1] == "presenter slots full (1/1)", second
            # a presenter that read the loads before the first one connected (the race the rule cannot see):
            # the full node refuses it at connect, and it lands on the next node of its ranking
            at2, presenter2 = await connect_placed([n.url for n in first.ranked])
            assert (at1, at2) == (n1, n2)
            room2 = await speak_and_open_room(presenter2)

            with pytest.raises(PlacementError) as nowhere:
                await place(nodes)
            assert nowhere.value.code == PlacementCode.NODES_FULL, nowhere.value

            # two viewers per room: each node spreads its room's viewers over both Janus instances
            seen: dict = {}
            viewers = []
            for name, port, room in (("node1", port1, room1), ("node2", port2, room2)):
                for _ in range(2):
                    viewer = await joined_viewer(port, room)
                    viewers.append(viewer)
                    ports = offer_ports(viewer.watch_result["sdp"])
                    where = ["a" for p in ports if a.serves(p)] + ["b" for p in ports if b.serves(p)]
                    assert ports and len(set(where)) == 1 and len(where) == len(ports), (ports, a, b)
                    seen.setdefault(name, []).append(where[0])
            await asyncio.gather(*(v.wait_frames(15, timeout=90) for v in viewers))
            loads = {u: await healthz(u) for u in (n1, n2)}
            frames = [v.recording.frames_total for v in viewers]
            for v in viewers:
                await v.close()
            await presenter1.close()
            await presenter2.close()
            return {"janus_of_viewers": seen, "loads": loads, "frames": frames}

        seen = run(main(), timeout=400)
    print("viewers' Janus per room:", seen["janus_of_viewers"], "frames:", seen["frames"])
    assert seen["janus_of_viewers"] == {"node1": ["a", "b"], "node2": ["a", "b"]}, seen
    for load in seen["loads"].values():
        assert load["rooms"] == 1 and load["viewers"] == 2 and load["janus_up"] == 2, seen["loads"]
    assert all(f >= 15 for f in seen["frames"])


def test_read_load_of_a_node_that_is_not_there_or_not_http() -> None:
    """(A real node's load is read in the loopback test above.)"""
    assert run(read_load("ftp://127.0.0.1:1")).error == "not an http(s) URL"
    unreachable = run(read_load(f"http://127.0.0.1:{free_port()}", timeout=1.0))
    assert unreachable.error is not None and unreachable.error.startswith("no /healthz")


def test_the_command_prints_the_placement_error_as_json_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    assert main([*dead, "--timeout", "1"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["error"] == "nodes_unreachable" and [s["url"] for s in out["skipped"]] == dead
