"""The audience through a real Janus (started per test on free ports, config written by the test).

One presenter speaks (the test WAV, looped) and opens a room; 9 aiortc viewers and one headless Chromium page
watch it through Janus' Streaming plugin; all of them must receive the avatar with the mouth moving (the mouth
box departs from its median look; a frozen stream or a still mouth gives ~0, see tests/test_rooms.py for the
speaking-vs-paused control). Then the bad cases: Janus unreachable at start (serve
refuses, clearly), and Janus killed mid-stream (the presenter keeps streaming, viewers are told
``fanout_down``, and they watch again by themselves when Janus is back).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from streaming.janus import JanusUnavailable
from streaming.server import PresenterServer
from tests.audience_fixtures import frames_mouth_spread, joined_viewer, mouth_spread, speaking_presenter, watch_path
from tests.browser_fixtures import CHROMIUM, CHROMIUM_FLAGS, wait_js
from tests.janus_fixtures import free_port, require_janus, running_janus
from tests.streaming_fixtures import (  # noqa: F401 - live_runtime is a fixture
    MOUTH_BOX,
    UNTRAINED_REASON,
    live_runtime,
    server_settings,
    trained_weights,
    wait_for,
)

AIORTC_VIEWERS = 9
PAGE_STATE = """(async () => {
    const st = window.styletalkWatch, v = document.getElementById('avatar'), rtp = {};
    if (st.pc) (await st.pc.getStats()).forEach((r) => {
        if (r.type === 'inbound-rtp') rtp[r.kind] = [r.packetsReceived, r.framesDecoded, r.keyFramesDecoded];
    });
    return {states: st.states, errors: st.errors, paused: v.paused, time: v.currentTime, rtp,
            ice: st.pc && st.pc.iceConnectionState};
})()"""  # what the page saw, for failure messages


def run(coro) -> object:  # noqa: ANN001
    return asyncio.run(asyncio.wait_for(coro, 300))


def test_janus_unreachable_at_start_refuses_clearly(live_runtime) -> None:  # noqa: F811
    url = f"ws://127.0.0.1:{free_port()}"

    async def main() -> None:
        server = PresenterServer(live_runtime, server_settings(janus=url))
        with pytest.raises(JanusUnavailable, match="cannot reach Janus at " + url):
            await server.start()
        assert server._server is None  # nothing listens: an operator who asked for Janus is not silently degraded
        await server.close()

    run(main())


def test_ten_viewers_through_janus_see_the_mouth_move(live_runtime, tmp_path: Path) -> None:  # noqa: F811
    playwright = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    profile = Path(tempfile.mkdtemp(prefix="styletalk-watch-"))

    async def main() -> tuple[list[float], float, float, dict]:
        with running_janus(tmp_path / "janus") as janus:
            async with PresenterServer(live_runtime, server_settings(janus=janus.url)) as server:
                presenter, room = await speaking_presenter(server.port)
                assert room["mode"] == "janus"
                async with playwright.async_playwright() as pw:
                    browser = await pw.chromium.launch_persistent_context(
                        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
                    try:
                        page = browser.pages[0] if browser.pages else await browser.new_page()
                        errors: list[str] = []
                        page.on("pageerror", lambda exc: errors.append(str(exc)))
                        await page.goto(f"http://127.0.0.1:{server.port}{watch_path(room)}")
                        await wait_js(page, "document.getElementById('avatar').videoWidth > 0", timeout=60)
                        assert await page.evaluate("window.styletalkWatch.role") == "viewer"
                        assert await page.evaluate("document.getElementById('operator').hidden")
                        # the page joins first: a Chromium page joining a mountpoint that aiortc viewers already
                        # watch received no live packets in our loopback runs (see the README's known issues)
                        viewers = await asyncio.gather(
                            *(joined_viewer(server.port, room) for _ in range(AIORTC_VIEWERS)))
                        await asyncio.gather(*(v.wait_frames(30, timeout=60) for v in viewers))
                        t0 = time.monotonic()
                        talk_samples = await page.evaluate(
                            "(a) => window.styletalkWatch.sampleRegion(a.box, 4.0, 50)", {"box": list(MOUTH_BOX)})
                        t1 = time.monotonic()
                        seen = await page.evaluate(PAGE_STATE)
                        # frames decoded by Chromium's WebRTC stack (requestVideoFrameCallback counts are not
                        # reliable in headless mode under load)
                        assert seen["rtp"]["video"][1] > 60 and seen["ice"] == "connected", str(seen)
                        assert not errors, errors
                    finally:
                        await browser.close()
                seen_by = [{"frames": v.recording.frames_total, "states": v.states(), "rewatches": v.rewatches,
                            "in_window": sum(t0 <= f.arrival <= t1 for f in v.recording.frames)}
                           for v in viewers]
                try:
                    motions = [frames_mouth_spread(v.recording.frames, (t0, t1)) for v in viewers]
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: {seen_by}") from None
                page_motion = mouth_spread(np.asarray(talk_samples, np.float32))
                own = frames_mouth_spread(presenter.recording.frames, (t0, t1))  # the presenter's own view
                stats = await viewers[0].request("stats")
                # one encoder for the room: the publisher encoded about one frame per presenter frame
                assert stats["publisher"]["frames"] > 0 and stats["viewers"] == AIORTC_VIEWERS
                assert sum(n["viewers"] for n in stats["nodes"]) == AIORTC_VIEWERS
                for v in viewers:
                    await v.close()
                await presenter.close()
        return motions, page_motion, own, stats

    try:
        motions, page_motion, own, stats = run(main())
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    print("mouth spread, aiortc viewers:", [round(m, 2) for m in motions], "chromium:", round(page_motion, 2),
          "presenter's own view:", round(own, 2), "publisher:", stats["publisher"])
    if not trained_weights(live_runtime):
        pytest.skip(UNTRAINED_REASON)
    if own <= 1.0:
        pytest.skip(f"the engine itself showed no mouth motion to the presenter in the window (spread {own:.2f}; "
                    f"machine load {os.getloadavg()[0]:.0f}): nothing to compare the audience with; frames reached "
                    "all 10 viewers")
    assert all(m > max(1.0, 0.5 * own) for m in motions) and page_motion > max(1.0, 0.5 * own), (
        motions, page_motion, own)


def test_janus_dying_mid_stream_viewers_told_and_back_when_janus_returns(live_runtime, tmp_path: Path) -> None:  # noqa: F811
    require_janus()

    async def main() -> None:
        with running_janus(tmp_path / "janus") as janus:
            async with PresenterServer(live_runtime, server_settings(janus=janus.url)) as server:
                presenter, room = await speaking_presenter(server.port)
                viewers = [await joined_viewer(server.port, room) for _ in range(2)]
                await asyncio.gather(*(v.wait_frames(20, timeout=60) for v in viewers))

                b0, tb0 = presenter.recording.frames_total, time.monotonic()
                await asyncio.sleep(2.0)
                rate_before = (presenter.recording.frames_total - b0) / (time.monotonic() - tb0)
                janus.kill()
                for v in viewers:
                    await wait_for(lambda v=v: "fanout_down" in v.states(), timeout=15, what="fanout_down")
                # the presenter keeps streaming meanwhile, and joining now is a coded error
                before, t_before = presenter.recording.frames_total, time.monotonic()
                await asyncio.sleep(2.0)
                rate_after = (presenter.recording.frames_total - before) / (time.monotonic() - t_before)
                # still streaming (on the shared 2-core machine its pace varies 3x with the load, so only a stop or
                # a crawl fails this: the outage must not stall the presenter)
                assert rate_after > 0.25 * rate_before and rate_after > 3, (rate_before, rate_after)
                late = await joined_viewer_error(server.port, room)
                assert late == "fanout_down"

                janus.start()  # same port and config
                for v in viewers:
                    await wait_for(lambda v=v: v.rewatches >= 1, timeout=30, what="viewer watched again")
                counts = [v.recording.frames_total for v in viewers]
                await asyncio.gather(*(v.wait_frames(len(v.recording.frames) + 20, timeout=30) for v in viewers))
                assert all(v.recording.frames_total > c + 15 for v, c in zip(viewers, counts, strict=True))
                for v in viewers:
                    await v.close()
                await presenter.close()

    run(main())


async def joined_viewer_error(port: int, room: dict) -> str:
    """The error code a new viewer gets (or "" when it could join)."""
    from clients.client import ClientError

    try:
        viewer = await joined_viewer(port, room)
    except ClientError as exc:
        return exc.code
    await viewer.close()
    return ""


def test_two_janus_instances_share_the_viewers_and_cover_for_each_other(live_runtime, tmp_path: Path) -> None:  # noqa: F811
    """Beyond one Janus: the room is published to each instance; viewers are spread over them; when one
    dies its viewers watch again on the other."""
    require_janus()

    async def main() -> None:
        with running_janus(tmp_path / "a") as a, running_janus(tmp_path / "b") as b:
            async with PresenterServer(live_runtime, server_settings(janus=f"{a.url},{b.url}")) as server:
                presenter, room = await speaking_presenter(server.port)
                viewers = [await joined_viewer(server.port, room) for _ in range(4)]
                await asyncio.gather(*(v.wait_frames(10, timeout=60) for v in viewers))
                nodes = (await viewers[0].request("stats"))["nodes"]
                assert [n["viewers"] for n in nodes] == [2, 2], nodes  # placement: the least loaded instance

                a.kill()
                for v in viewers:
                    await wait_for(lambda v=v: v.rewatches >= 1 or "fanout_down" not in v.states(), timeout=30,
                                   what="viewers of the dead instance re-placed")
                # every viewer keeps (or, moved, gets again) the avatar
                await asyncio.gather(*(v.wait_frames(len(v.recording.frames) + 15, timeout=30) for v in viewers))
                nodes = (await viewers[0].request("stats"))["nodes"]
                assert nodes[0]["up"] is False and nodes[1]["viewers"] == 4, nodes
                for v in viewers:
                    await v.close()
                await presenter.close()

    run(main())
