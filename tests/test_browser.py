"""The presenter page in real headless Chromium (Debian's /usr/bin/chromium, driven by playwright).

Chromium's fake microphone plays tests/data/speech_16k.wav (looped). The test presses Start, then asserts that
video frames arrive, that the mouth region changes while the speech plays (against the page's own frames
before the microphone started), and that a click on a style button is acknowledged by the server - with the
page's Content-Security-Policy in force. A screenshot is saved to a temporary directory (path printed).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from streaming.server import PresenterServer
from tests.browser_fixtures import presenter_page, requires_chromium, wait_js
from tests.streaming_fixtures import (
    MOUTH_BOX,
    SPEECH_WAV,
    UNTRAINED_REASON,
    server_settings,
    style_clip,
    trained_weights,
    wait_for,
)

pytestmark = requires_chromium


async def grab_mouth(page, seconds: float, box: tuple[float, float, float, float]) -> np.ndarray:  # noqa: ANN001
    """Grey levels of the mouth box of the <video>, sampled in the page every 50 ms, ``(N, pixels)``."""
    samples = await page.evaluate(
        "(a) => window.styletalk.sampleRegion(a.box, a.seconds, 50)", {"box": list(box), "seconds": seconds}
    )
    return np.asarray(samples, np.float32)


def test_page_streams_video_moves_the_mouth_and_switches_style(live_runtime) -> None:
    pytest.importorskip("playwright.async_api")
    shot_dir = Path(tempfile.mkdtemp(prefix="styletalk-browser-"))
    profile = shot_dir / "profile"

    async def main() -> tuple[np.ndarray, np.ndarray]:
        async with PresenterServer(live_runtime, server_settings()) as server:
            fake_mic = f"--use-file-for-fake-audio-capture={SPEECH_WAV}"
            async with presenter_page(server.url, profile, fake_mic) as (page, errors):
                styles = await page.evaluate("window.styletalk.styles")
                # the placeholder is one paragraph: "Press Start and ..." flows as text, not three grid cells
                assert await page.evaluate("""(() => {
                    const box = document.getElementById('placeholder');
                    const p = box.querySelector('p'), b = p && p.querySelector('b');
                    return box.children.length === 1 && b !== null
                        && Math.abs(b.getBoundingClientRect().top - p.getBoundingClientRect().top) < 4;
                })()""")

                await page.click("#start")
                await wait_js(page, "document.getElementById('avatar').videoWidth > 0", timeout=60)
                first = await wait_js(page, "window.styletalk.framesPresented", timeout=30)
                # Speech plays from the moment the mic opened; wait out the pipeline delay, then sample.
                await asyncio.sleep(1.0)
                speaking = await grab_mouth(page, 3.0, MOUTH_BOX)
                frames = await page.evaluate("window.styletalk.framesPresented")
                assert frames > first + 30, (first, frames)
                # Control: Pause makes the server treat the input as silence; the face only idles.
                await page.click("#pause")
                await wait_js(page, "window.styletalk.paused")
                await asyncio.sleep(1.0)
                paused = await grab_mouth(page, 2.0, MOUTH_BOX)
                await page.click("#pause")
                await wait_js(page, "!window.styletalk.paused")
                logged = await page.inner_text("#log")
                assert "paused" in logged and "resumed" in logged and "interrupted" not in logged, logged

                # Style switch by clicking its button: acknowledged by the server, shown on the page.
                if len(styles) < 2:  # only the neutral fallback is built in: add one with the upload form
                    clip_path = shot_dir / "lively.npy"
                    np.save(clip_path, style_clip())
                    await page.click("details.uploads summary")
                    await page.fill("#style-name", "lively")
                    await page.set_input_files("#style-file", str(clip_path))
                    await page.click("#upload-style button[type=submit]")
                    await wait_js(page, "window.styletalk.styles.includes('lively')")
                    styles = await page.evaluate("window.styletalk.styles")
                last = await wait_js(page, "window.styletalk.lastStats")
                target = next(s for s in styles if s != last["engine"]["style"])
                await page.click(f"button[data-style='{target}']")
                ack = await wait_js(page, "window.styletalk.acks.length > 0 && window.styletalk.acks[0]")
                assert ack["style"] == target and isinstance(ack["frame"], int)
                assert target in await page.inner_text("#ack")
                await wait_js(page, "window.styletalk.lastStats && window.styletalk.lastStats.transport")
                await asyncio.sleep(1.2)  # one more stats poll for the readout
                shot = shot_dir / "presenter.png"
                await page.screenshot(path=str(shot))
                print(f"screenshot: {shot}")
                assert await page.inner_text("#rx-fps") not in ("", "–")
                stats = await page.evaluate("window.styletalk.lastStats")
                assert stats["transport"]["mic_seconds_received"] > 1.0
                # stage latencies: a small table of rounded figures; dropped frames with their share
                cells = await page.evaluate(
                    "[...document.querySelectorAll('#stages tbody td')].map((c) => c.textContent)")
                assert cells and "total" in cells, cells
                assert all(re.fullmatch(r"\d+ ms|–", c) for c in cells[1::3] + cells[2::3]), cells
                assert re.fullmatch(r"\d+ \([\d.]+ % of \d+\)", await page.inner_text("#dropped"))
                # Stop: the readout goes blank and the replacement session logs no style change
                newest = "document.querySelector('#log li').textContent"  # the log lists newest first
                marker = await page.evaluate(newest)
                await page.click("#stop")
                await wait_js(page, "document.getElementById('start').disabled === false")
                await asyncio.sleep(2.5)  # two stats polls
                assert await page.evaluate("document.querySelectorAll('#stages tbody tr').length") == 0
                assert await page.inner_text("#dropped") == "–"
                items = await page.evaluate("[...document.querySelectorAll('#log li')].map((li) => li.textContent)")
                after = items[: items.index(marker)]
                assert any("media stopped" in t for t in after), after
                assert not any(re.search(r"  style ", t) for t in after), after
                assert not errors, errors
            await wait_for(lambda: server.active_sessions == 0, what="browser session freed")
        return speaking, paused

    try:
        speaking, paused = asyncio.run(asyncio.wait_for(main(), 240))
    finally:
        shutil.rmtree(profile, ignore_errors=True)

    # The mouth departs from its resting look while speech plays, clearly more than while paused (when only
    # blinks move the face). Deviation from the paused median is robust to repeated frames on a busy machine
    # (a late frame repeats the previous image).
    assert speaking.shape[0] > 20 and paused.shape[0] > 10, (speaking.shape, paused.shape)
    rest = np.median(paused, axis=0)
    talk = np.abs(speaking - rest).mean(axis=1)
    idle = np.abs(paused - rest).mean(axis=1)
    print(
        f"mouth deviation from rest: speaking p90 {np.percentile(talk, 90):.2f}, paused p90 "
        f"{np.percentile(idle, 90):.2f}"
    )
    if not trained_weights(live_runtime):
        pytest.skip(UNTRAINED_REASON)
    assert np.percentile(talk, 90) > 2.0 * np.percentile(idle, 90) + 0.5
