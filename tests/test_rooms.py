"""Rooms and roles over real loopback WebRTC without Janus (direct mode): a presenter opens a room, viewers
and an operator join with their tokens, the protocol refuses what a role may not do, wrong rooms/tokens get
coded errors, the direct audience is capped, and the room closes when its presenter leaves."""

from __future__ import annotations

import asyncio
import time

import pytest

from clients.client import ClientError
from clients.viewer import RoomViewer, split_watch_url
from streaming import protocol as P
from streaming.server import PresenterServer
from tests.audience_fixtures import joined_viewer, mouth_moves, mouth_talk_vs_rest, speaking_presenter
from tests.streaming_fixtures import (
    UNTRAINED_REASON,
    server_settings,
    trained_weights,
    wait_for,
)


def run(coro) -> object:  # noqa: ANN001
    return asyncio.run(asyncio.wait_for(coro, 240))


def test_watch_and_answer_parse_into_typed_requests_with_coded_errors() -> None:
    req = P.parse_message(P.make_request("watch", 1, room="abcd_12", token="x" * 22))
    assert isinstance(req, P.Watch) and req.room == "abcd_12"
    assert "x" * 22 not in repr(req)  # tokens never end up in logs through repr
    for fields, code in (({"room": "a/b", "token": "x" * 22}, "bad_field"),
                         ({"room": "abcd", "token": "short"}, "bad_token"),
                         ({"room": "abcd"}, "bad_field")):
        with pytest.raises(P.ProtocolError) as err:
            P.parse_message(P.make_request("watch", 2, **fields))
        assert err.value.code == code, fields
    with pytest.raises(P.ProtocolError) as err:
        P.parse_message(P.make_request("answer", 3, sdp="nope"))
    assert err.value.code == "bad_field"
    assert split_watch_url("http://h:1/watch/abcd?t=tok") == ("ws://h:1/ws/watch", "abcd", "tok")


def test_watch_links_name_the_node_as_the_presenter_reached_it_or_its_public_url(live_runtime) -> None:
    """Beyond one machine the listening address (127.0.0.1, 0.0.0.0) is not what viewers open: the links use the
    presenter's Host (here ``localhost``), or ``server.public_url`` when set."""
    from clients.client import StyleTalkClient

    async def links(settings: object, host: str) -> dict:
        async with PresenterServer(live_runtime, settings) as server:
            client = StyleTalkClient(f"ws://{host}:{server.port}/ws")
            await client.connect()
            room = await client.request("open_room")
            await client.close()
            return {"room": room, "port": server.port}

    seen = run(links(server_settings(), "localhost"))
    room, port = seen["room"], seen["port"]
    assert room["watch_url"] == f"http://localhost:{port}/watch/{room['room']}?t={room['viewer_token']}"
    assert room["control_url"] == f"http://localhost:{port}/watch/{room['room']}?t={room['control_token']}"
    room = run(links(server_settings(public_url="https://node7.example/"), "127.0.0.1"))["room"]
    assert room["watch_url"] == f"https://node7.example/watch/{room['room']}?t={room['viewer_token']}"


def test_viewers_watch_the_presenter_operator_controls_viewer_cannot(live_runtime) -> None:
    async def main() -> tuple[float, float]:
        settings = server_settings(max_direct_viewers=2)
        async with PresenterServer(live_runtime, settings) as server:
            presenter, room = await speaking_presenter(server.port)
            assert room["mode"] == "direct" and room["max_viewers"] == 2 and "direct mode" in room["note"]
            assert room["watch_url"].endswith(f"/watch/{room['room']}?t={room['viewer_token']}")
            # the viewer page is served for the link; the engine spends no session slot on viewers
            viewer = await joined_viewer(server.port, room)
            operator = await joined_viewer(server.port, room, "control_token")
            assert viewer.watch_result["role"] == "viewer" and operator.watch_result["role"] == "operator"
            assert len(live_runtime.sessions) == 1
            await viewer.wait_frames(30, timeout=60)
            t0 = time.monotonic()
            await asyncio.sleep(4.0)
            await presenter.request("pause")  # the control: only blinks move the face
            t1 = time.monotonic()
            await asyncio.sleep(4.0)
            await presenter.request("resume")
            motion = mouth_talk_vs_rest(viewer.recording.frames, (t0 + 0.5, t1), (t1 + 1.5, t1 + 4.0))

            # viewers only watch: style control and presenter requests are forbidden, with codes
            for rtype, fields in (("set_style", {"name": "happy"}), ("interrupt", {}),
                                  ("offer", {"sdp": "v=0\r\n"}), ("open_room", {})):
                with pytest.raises(ClientError) as err:
                    await viewer.request(rtype, **fields)
                assert err.value.code == "forbidden", rtype
            # the operator's control reaches the presenter's session
            styles = (await operator.request("list_styles"))["styles"]
            target = next(s for s in styles if s != "neutral")
            assert (await operator.request("set_style", name=target))["style"] == target
            assert (await presenter.request("stats"))["engine"]["style"] == target
            # a presenter does not watch on its own socket
            with pytest.raises(ClientError) as err:
                await presenter.request("watch", room=room["room"], token=room["viewer_token"])
            assert err.value.code == "forbidden"

            # wrong room, wrong token, and the direct-mode cap (2 watching already)
            other = RoomViewer(f"ws://127.0.0.1:{server.port}/ws/watch")
            await other.connect()
            with pytest.raises(ClientError) as err:
                await other.watch("nosuchroom", room["viewer_token"])
            assert err.value.code == "unknown_room"
            with pytest.raises(ClientError) as err:
                await other.watch(room["room"], "A" * 22)
            assert err.value.code == "bad_token"
            with pytest.raises(ClientError) as err:
                await other.watch(room["room"], room["viewer_token"])
            assert err.value.code == "room_full"
            # a connection guessing tokens is closed after a few tries
            for _ in range(4):
                with pytest.raises(ClientError):
                    await other.watch(room["room"], "B" * 22)
            await wait_for(lambda: other.ws is not None and other.ws.state.name == "CLOSED", what="guesser closed")

            # the presenter leaves: the room closes and its viewers are told
            await presenter.close()
            await wait_for(lambda: "closed" in viewer.states(), what="room_state closed")
            assert server.rooms.rooms == {}
            await viewer.close()
            await operator.close()
            await other.close()
        return motion

    talk, rest = run(main())
    print(f"viewer's mouth deviation p90: speaking {talk:.2f}, paused {rest:.2f}")
    if not trained_weights(live_runtime):
        pytest.skip(UNTRAINED_REASON)
    assert mouth_moves(talk, rest), (talk, rest)
