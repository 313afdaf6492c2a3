"""Chromium for the page's tests: one browser per test module, a fresh context per test, cut off from the internet."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, sync_playwright

from tests.browser import DESKTOP, SENT_HOOK, launch

FAKE_MIC_HZ = 660.0  # the tone the fake microphone plays
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="session")
def fake_mic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three seconds of a pure tone, as 16-bit PCM wav (what Chromium's fake capture reads), looped."""
    path = tmp_path_factory.mktemp("mic") / "tone.wav"
    rate = 48_000
    t = np.arange(3 * rate) / rate
    pcm = (0.5 * np.sin(2 * np.pi * FAKE_MIC_HZ * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="module")
def browser(fake_mic: Path) -> Iterator[Browser]:
    # Per module, not per session: Playwright's sync API runs an event loop in this thread while it
    # is open, and later tests that call asyncio.run (the decode-pool tests) need the thread free.
    with sync_playwright() as pw:
        b = launch(pw, fake_mic)
        yield b
        b.close()


def cut_off(context: BrowserContext, blocked: list[str]) -> None:
    """Abort every request to a host other than loopback, noting it in `blocked`: the machine is offline."""

    def guard(route: Route) -> None:
        if urlparse(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", guard)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context, offline; the test fails if anything in it tried to reach another host."""
    ctx = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    ctx.set_default_timeout(30_000)
    blocked: list[str] = []
    cut_off(ctx, blocked)
    yield ctx
    ctx.close()
    assert not blocked, f"tried to reach other hosts: {blocked}"


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A page that fails its test on any uncaught error, console error or attempt to reach another host."""
    pg = context.new_page()
    pg.add_init_script(SENT_HOOK)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))

    def on_console(message: Any) -> None:
        # A 4xx/5xx answer is logged by Chromium as "Failed to load resource"; the tests check those themselves.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(f"console.error: {message.text}")

    pg.on("console", on_console)
    yield pg
    assert not problems, problems
