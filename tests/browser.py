"""Debian's Chromium driven by Playwright: for the page's tests and for its screenshots.

    .venv/bin/python -m tests.browser [--model models/default] [--out docs] [--digit 7] [--audio FILE]

serves MODEL with `mla serve`, speaks the digit with espeak-ng (or sends --audio), draws
it on the page's pad, sends both, and saves docs/page-desktop.png and docs/page-phone.png
(`make screenshots`). No browser is downloaded: Playwright's driver ships in its wheel and
the browser is the system's (`apt-get install chromium`; MLA_CHROMIUM moves it).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.conftest import ROOT

log = logging.getLogger(__name__)
CHROMIUM = Path(os.environ.get("MLA_CHROMIUM", "/usr/bin/chromium"))
# Headless, no sandbox (CI runs as root), nothing that phones home; fake camera and microphone
# that are granted without a prompt.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Keeps what the page sent to /v1/predict, so a test can decode the recorded or drawn clip.
SENT_HOOK = """(() => {
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (body) { window.__sent = body; return send.call(this, body); };
})()"""
# One or two strokes per digit, in a unit box (x right, y down), as a person would draw them.
STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "0": [[(0.5, 0.15), (0.3, 0.3), (0.28, 0.6), (0.5, 0.85), (0.7, 0.6), (0.7, 0.3), (0.5, 0.15)]],
    "1": [[(0.38, 0.27), (0.52, 0.15), (0.52, 0.85)]],
    "2": [[(0.3, 0.3), (0.4, 0.17), (0.6, 0.15), (0.7, 0.28), (0.65, 0.45), (0.3, 0.85), (0.72, 0.85)]],
    "3": [[(0.3, 0.2), (0.6, 0.15), (0.7, 0.3), (0.5, 0.48), (0.7, 0.65), (0.6, 0.85), (0.3, 0.8)]],
    "4": [[(0.6, 0.85), (0.6, 0.15), (0.28, 0.6), (0.75, 0.6)]],
    "5": [[(0.7, 0.15), (0.35, 0.15), (0.32, 0.47), (0.6, 0.45), (0.7, 0.62), (0.6, 0.85), (0.3, 0.82)]],
    "6": [[(0.65, 0.15), (0.4, 0.4), (0.32, 0.65), (0.45, 0.85), (0.65, 0.78), (0.65, 0.58), (0.4, 0.55), (0.33, 0.65)]],
    "7": [[(0.28, 0.18), (0.72, 0.18), (0.42, 0.85)]],
    "8": [[(0.5, 0.48), (0.33, 0.32), (0.5, 0.15), (0.67, 0.32), (0.5, 0.48), (0.3, 0.68), (0.5, 0.85), (0.7, 0.68), (0.5, 0.5)]],
    "9": [[(0.65, 0.35), (0.5, 0.17), (0.35, 0.3), (0.45, 0.48), (0.65, 0.38), (0.62, 0.85)]],
}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def launch(pw: Playwright, fake_audio: Path | None = None) -> Browser:
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is absent: `make system-deps` installs Debian's chromium (MLA_CHROMIUM moves it)")
    args = ARGS + ([f"--use-file-for-fake-audio-capture={fake_audio}"] if fake_audio else [])
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=args)


def open_page(page: Page, url: str) -> None:
    """Load the page and wait until it has read the model's description."""
    page.goto(f"{url}/")
    page.wait_for_function("() => document.getElementById('model-line').textContent.startsWith('Model ')")


def draw(page: Page, digit: str) -> None:
    """Open the pad and draw `digit` with the mouse."""
    if page.locator("#draw-panel").is_hidden():
        page.click("#draw-button")
    pad = page.locator("#pad")
    pad.scroll_into_view_if_needed()  # the mouse acts inside the viewport only
    box = pad.bounding_box()
    assert box is not None
    for stroke in STROKES[digit]:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()


def sent_file(page: Page, field: str) -> bytes:
    """The bytes of the file the page last sent in `field` (needs SENT_HOOK)."""
    data = page.evaluate("async (f) => Array.from(new Uint8Array(await window.__sent.get(f).arrayBuffer()))", field)
    return bytes(data)


def send_and_wait(page: Page) -> dict[str, Any]:
    """Click Send; return the service's JSON answer once the page has rendered it (or its error)."""
    with page.expect_response("**/v1/predict") as answer:
        page.click("#send")
    body: dict[str, Any] = answer.value.json()
    page.wait_for_selector("#result:not([hidden]), #error:not([hidden])")
    return body


def speak(digit: str, out: Path) -> Path:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is absent (apt-get install espeak-ng), or pass --audio FILE")
    subprocess.run([espeak, "-v", "en-us", "-s", "140", "-w", str(out), WORDS[int(digit)]], check=True)
    return out


def screenshots(model: Path, out: Path, digit: str, audio: Path | None) -> list[Path]:
    from tests.servers import start_server, stop_server

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = audio or speak(digit, work / f"{WORDS[int(digit)]}.wav")
        server = start_server(model, work)
        saved = []
        try:
            with sync_playwright() as pw:
                browser = launch(pw)
                for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                    page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
                    page.on("console", lambda m: log.info("console.%s: %s", m.type, m.text))
                    page.on("pageerror", lambda e: log.error("page error: %s", e))
                    open_page(page, server.url)
                    page.set_input_files("#audio-file", str(clip))
                    draw(page, digit)
                    page.click("#pad-use")
                    page.wait_for_selector("#video-clip:not([hidden])")
                    send_and_wait(page)
                    page.locator("#result-title").scroll_into_view_if_needed()
                    path = out / f"page-{name}.png"
                    page.screenshot(path=str(path), full_page=True)
                    saved.append(path)
                    page.close()
                browser.close()
        finally:
            stop_server(server)
    return saved


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--digit", choices=sorted(STROKES), default="7")
    parser.add_argument("--audio", type=Path, help="an audio file to send instead of the spoken digit")
    args = parser.parse_args()
    for path in screenshots(args.model, args.out, args.digit, args.audio):
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
