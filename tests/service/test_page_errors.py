"""The page in Chromium when things go wrong (errors as the API words them, an API key), /docs offline, accessibility."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from playwright.sync_api import BrowserContext, FilePayload, Page

from tests.browser import open_page, send_and_wait
from tests.servers import Server, start_server, stop_server

# Text whose contrast with its background is under WCAG AA: 4.5:1, or 3:1 for large text.
LOW_CONTRAST = """() => {
  const rgba = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const background = (el) => { for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor); if (c && c[3] > 0) return c; } return [255, 255, 255, 1]; };
  const bad = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const el = n.parentElement;
    if (!n.textContent.trim() || el.closest('.sr-only, pre') || !el.checkVisibility({visibilityProperty: true})) continue;
    const s = getComputedStyle(el);
    const fg = rgba(s.color), bg = background(el);
    const a = fg[3], mixed = fg.slice(0, 3).map((v, i) => a * v + (1 - a) * bg[i]);
    const [hi, lo] = [lum(mixed), lum(bg)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(s.fontSize), bold = Number(s.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) bad.push(`${n.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)} < ${need}`);
  }
  return bad;
}"""
# Form controls and links without an accessible name.
UNNAMED = """() => [...document.querySelectorAll('input, button, select, textarea, a, [role=img]')].filter((e) => {
  const byId = (e.getAttribute('aria-labelledby') || '').split(' ').map((id) => document.getElementById(id)?.textContent || '');
  const name = [e.getAttribute('aria-label') || '', ...[...(e.labels || [])].map((l) => l.textContent), ...byId,
    e.tagName === 'INPUT' ? '' : e.textContent].join('').trim();
  return !name;
}).map((e) => e.id || e.outerHTML.slice(0, 60))"""


def payload(name: str, data: bytes) -> FilePayload:
    """A file for an <input type=file> made of bytes, not read from disk."""
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


def error_shown(page: Page) -> dict[str, Any]:
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#result").is_hidden()
    return {
        "title": page.text_content("#error-title"),
        "message": page.text_content("#error-message"),
        "hint": page.text_content("#error-hint"),
        "status": page.get_attribute("#error", "data-status"),
        "code": page.get_attribute("#error", "data-code"),
    }


def check_api_error(page: Page, answer: dict[str, Any], status: int) -> dict[str, Any]:
    """The page shows the API's status, code and message, word for word."""
    shown = error_shown(page)
    assert shown["status"] == str(status)
    assert shown["code"] == answer["error"]["code"]
    assert shown["title"].startswith(f"{status} ")
    assert answer["error"]["code"] in shown["title"]
    assert shown["message"] == answer["error"]["message"]
    return shown


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("page-media")
    files = {"au": d / "tone.au", "long": d / "long.flac"}
    # Sun AU: FFmpeg reads it, the service does not accept it (415).
    for key, fmt, codec, seconds in (("au", "au", "pcm_s16be", 1), ("long", "flac", "flac", 75)):
        with av.open(str(files[key]), "w", format=fmt) as out:
            stream = out.add_stream(codec, rate=8000, layout="mono")
            assert isinstance(stream, av.AudioStream)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000 * seconds), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8000, 0
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                out.mux(packet)
    return files


def test_unsupported_container_shows_the_415(page: Page, server: Server, media: dict[str, Path]) -> None:
    open_page(page, server.url)
    page.set_input_files("#audio-file", media["au"])
    answer = send_and_wait(page)
    shown = check_api_error(page, answer, 415)
    assert "tone.au" in shown["message"]
    assert ".wav" in shown["hint"]  # what would be accepted
    assert ".webm" in shown["hint"]
    assert page.text_content("#status") == "The service answered 415."


def test_too_long_shows_the_413(page: Page, server: Server, media: dict[str, Path]) -> None:
    open_page(page, server.url)
    page.set_input_files("#audio-file", media["long"])
    answer = send_and_wait(page)
    shown = check_api_error(page, answer, 413)
    assert "60 s of audio" in shown["hint"]


def test_over_the_upload_limit_is_refused_before_sending(page: Page, server: Server) -> None:
    """The page knows the limit from /v1/models (4 MiB here) and sends nothing past it."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/v1/predict") else None)
    open_page(page, server.url)
    page.set_input_files("#audio-file", files=[payload("big.wav", b"\0" * (5 << 20))])
    page.click("#send")
    shown = error_shown(page)
    assert shown["status"] == "413"
    assert shown["code"] == "too_large"
    assert "5.0 MiB" in shown["message"]
    assert "4.0 MiB" in shown["message"]
    assert "nothing was sent" in shown["hint"]
    assert sent == []


def test_answers_that_are_not_the_api_s(page: Page, server: Server) -> None:
    """A proxy's HTML error page, a 503 with Retry-After, no answer at all: each is shown, never a blank page."""
    open_page(page, server.url)
    page.set_input_files("#audio-file", files=[payload("a.wav", b"RIFF")])
    page.route(
        "**/v1/predict",
        lambda route: route.fulfill(
            status=502, content_type="text/html", body="<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
        ),
    )
    page.click("#send")
    shown = error_shown(page)
    assert shown["title"] == "502 Bad Gateway"
    assert shown["message"] == "502 Bad Gateway nginx"
    page.unroute("**/v1/predict")
    page.route(
        "**/v1/predict",
        lambda route: route.fulfill(
            status=503, headers={"Retry-After": "7"}, json={"error": {"code": "overloaded", "message": "the queue is full"}}
        ),
    )
    page.click("#send")
    page.wait_for_function("() => document.getElementById('error-title').textContent.startsWith('503')")
    shown = error_shown(page)
    assert shown["message"] == "the queue is full"
    assert "Try again in 7 s" in shown["hint"]
    page.unroute("**/v1/predict")
    page.route("**/v1/predict", lambda route: route.abort("connectionrefused"))
    page.click("#send")
    page.wait_for_function("() => document.getElementById('error-title').textContent === 'No answer'")
    assert "could not be reached" in error_shown(page)["message"]
    assert page.locator("#send").is_enabled()  # the page recovers: it can send again


@pytest.fixture
def keyed_server(tiny_repo: Path, tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tiny_repo, tmp_path, MLA_API_KEY="open-sesame")
    yield srv
    stop_server(srv)


def test_api_key_is_asked_for_and_used(page: Page, keyed_server: Server, clean_train_row: dict[str, str]) -> None:
    page.goto(f"{keyed_server.url}/")
    page.wait_for_selector("#key-section:not([hidden])")
    assert "API key" in page.text_content("#model-line")  # type: ignore[operator]
    assert page.locator("#inputs fieldset").count() == 0  # which inputs the model takes is the model's to say
    page.fill("#api-key", "wrong")
    page.press("#api-key", "Enter")
    page.wait_for_function("() => document.getElementById('model-line').textContent.includes('API key')")
    assert page.locator("#inputs fieldset").count() == 0
    page.fill("#api-key", "open-sesame")
    page.press("#api-key", "Enter")
    page.wait_for_function("() => document.getElementById('model-line').textContent.startsWith('Model tiny')")
    page.set_input_files("#audio-file", clean_train_row["audio"])
    body = send_and_wait(page)
    assert body["label"] == clean_train_row["label"]
    assert page.text_content("#fused-label") == body["label"]
    # a key that stops working (rotated, say) is asked for again where it is typed
    page.fill("#api-key", "rotated")
    answer = send_and_wait(page)
    check_api_error(page, answer, 401)
    assert page.evaluate("document.activeElement.id") == "api-key"  # focus goes where the fix is


def test_docs_and_redoc_work_offline(context: BrowserContext, server: Server) -> None:
    """Every request to another host is aborted (the context fixture fails the test if one is even tried)."""
    spec = httpx.get(f"{server.url}/openapi.json").json()
    operations = sorted((method.upper(), path) for path, item in spec["paths"].items() for method in item)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock-summary")
    shown = page.eval_on_selector_all(
        ".opblock-summary",
        "els => els.map(e => [e.querySelector('.opblock-summary-method').textContent,"
        " e.querySelector('.opblock-summary-path').dataset.path])",
    )
    assert sorted(map(tuple, shown)) == operations
    page.goto(f"{server.url}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']")
    ids = page.eval_on_selector_all("[data-section-id^='operation/']", "els => els.map(e => e.dataset.sectionId)")
    assert len(set(ids)) == len(operations)
    text = page.inner_text("body")
    assert all(op["summary"] in text for item in spec["paths"].values() for op in item.values())
    # The only thing refused is ReDoc's logo, which it hides when it cannot load: the policy stops it before the network.
    assert [e for e in errors if "cdn.redoc.ly/redoc/logo-mini.svg" not in e] == []


def test_page_is_accessible(page: Page, server: Server, clean_train_row: dict[str, str]) -> None:
    """One language, one h1, every control named, live regions, and AA contrast with a result and with an error."""
    open_page(page, server.url)
    assert page.get_attribute("html", "lang") == "en"
    assert page.evaluate("getComputedStyle(document.getElementById('send')).minHeight") == "44px"  # the stylesheet loaded
    assert page.locator("h1").count() == 1
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert page.get_attribute("#error", "role") == "alert"
    page.click("#draw-button")  # the pad and its controls too
    assert page.evaluate(UNNAMED) == []
    page.set_input_files("#audio-file", clean_train_row["audio"])
    page.set_input_files("#video-file", clean_train_row["video"])
    send_and_wait(page)
    assert page.evaluate(LOW_CONTRAST) == []
    page.set_input_files("#video-file", files=[payload("notes.mp4", b"not a video" * 100)])
    send_and_wait(page)
    error_shown(page)
    assert page.evaluate(LOW_CONTRAST) == []
    assert page.evaluate(UNNAMED) == []
