"""Headless Chromium for the page tests (Debian's /usr/bin/chromium, driven by playwright).

One launch recipe for every test that opens the presenter page: fake media devices (the caller names the
files Chromium's fake microphone / camera play), no network services, a throw-away profile.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.browser_e2e import CHROMIUM, CHROMIUM_BASE_FLAGS, poll

CHROMIUM_FLAGS = list(CHROMIUM_BASE_FLAGS)

requires_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
)


async def wait_js(page, expression: str, timeout: float = 30.0) -> object:  # noqa: ANN001
    """``benchmarks.browser_e2e.poll`` (the page's CSP allows page.evaluate, not wait_for_function), failing the
    test with an assertion on timeout."""
    try:
        return await poll(page, expression, timeout)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from exc


@contextlib.asynccontextmanager
async def presenter_page(url: str, profile: Path, *flags: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """The presenter page at ``url`` in headless Chromium, loaded (its style list arrived); yields the page and
    the list its uncaught script errors are appended to. ``flags`` add to :data:`CHROMIUM_FLAGS` (e.g. the
    fake capture files)."""
    playwright = pytest.importorskip("playwright.async_api")
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_FLAGS, *flags],
            viewport={"width": 1200, "height": 760},
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            await wait_js(page, "window.styletalk && window.styletalk.styles.length > 0")
            yield page, errors
        finally:
            await browser.close()
