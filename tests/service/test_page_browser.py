"""The page in a real Chromium against a real `mla serve`: files, microphone, camera and drawing round-trip to an answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from playwright.sync_api import Page

from common.manifest import load_manifest
from common.media import VideoSpec, decode_audio, load_video
from tests.browser import PHONE, draw, open_page, send_and_wait, sent_file
from tests.servers import Server
from tests.service.conftest import FAKE_MIC_HZ

# Everything the page shows of an answer, read back from the DOM.
READ_RESULT = """() => {
  const bars = (root) => [...root.querySelectorAll(':scope > .bar-row, :scope > details > .bar-row')].map((r) => ({
    label: r.dataset.label, value: Number(r.dataset.value), text: r.querySelector('.bar-value').textContent,
    top: r.classList.contains('top'), width: parseFloat(r.querySelector('.bar-fill').style.width)}));
  const dd = (card, cls) => card.querySelector('dd.' + cls).textContent;
  const modalities = {};
  for (const card of document.querySelectorAll('#modalities .modality')) {
    modalities[card.dataset.modality] = {label: dd(card, 'modality-label'), weight: dd(card, 'modality-weight'),
      entropy: dd(card, 'modality-entropy'), bars: bars(card.querySelector('.bars'))};
  }
  const badge = document.getElementById('abstained');
  const extra = [...document.querySelectorAll('#extra dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent]);
  return {visible: !document.getElementById('result').hidden, label: document.getElementById('fused-label').textContent,
    confidence: document.getElementById('fused-confidence').textContent, fused: bars(document.getElementById('fused-bars')),
    modalities, abstained: badge.hidden ? null : badge.textContent, extra,
    status: document.getElementById('status').textContent};
}"""


def shown_percent(text: str, p: float) -> bool:
    """`text` is p as a percentage with one decimal (either rounding of an exact tie)."""
    return text.endswith("%") and abs(float(text[:-1]) - 100 * p) <= 0.05 + 1e-9


def check_bars(rows: list[dict[str, Any]], probs: dict[str, float], labels: list[str]) -> None:
    assert [r["label"] for r in rows] == labels
    for r in rows:
        assert r["value"] == probs[r["label"]]  # the exact number, not a rounding of it
        assert shown_percent(r["text"], probs[r["label"]]), r
        assert r["width"] == pytest.approx(100 * probs[r["label"]], abs=1e-3)
    assert [r["label"] for r in rows if r["top"]] == [max(probs, key=probs.__getitem__)]


def check_rendered(page: Page, body: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """What the page shows is the answer: fused label and confidence, every bar, each modality's entropy and weight."""
    shown = page.evaluate(READ_RESULT)
    assert shown["visible"]
    assert page.locator("#error").is_hidden()
    assert shown["label"] == body["label"]
    assert shown_percent(shown["confidence"], body["confidence"])
    check_bars(shown["fused"], body["probabilities"], labels)
    assert set(shown["modalities"]) == set(body["modalities"])
    for name, got in shown["modalities"].items():
        want = body["modalities"][name]
        assert got["label"] == want["label"]
        assert shown_percent(got["weight"], want["weight"])
        assert got["entropy"].startswith(f"{want['entropy']:.3f} nats")
        check_bars(got["bars"], want["probabilities"], labels)
    assert shown["status"].startswith(f"Result: {body['label']}, confidence")
    return shown


def saved(blob: bytes, folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(blob)
    return path


def dominant_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(spectrum.argmax() * rate / wave.size)


@pytest.fixture(scope="module")
def labels(tiny_repo: Path) -> list[str]:
    return load_manifest(tiny_repo).labels


def test_upload_wav_and_mp4(page: Page, server: Server, clean_train_row: dict[str, str], labels: list[str]) -> None:
    open_page(page, server.url)
    assert page.locator("#send").is_disabled()
    page.set_input_files("#audio-file", clean_train_row["audio"])
    page.set_input_files("#video-file", clean_train_row["video"])
    assert page.locator("#audio-name").text_content().startswith(Path(clean_train_row["audio"]).name)  # type: ignore[union-attr]
    assert page.locator("#use-video-audio").is_disabled()  # an audio file is there: no need for the video's sound
    body = send_and_wait(page)
    assert body["label"] == clean_train_row["label"]
    check_rendered(page, body, labels)
    assert page.locator("#result-json").text_content().strip().startswith("{")  # type: ignore[union-attr]
    # which version answered, and the manifest hash that names its files
    model = body["model"]
    shown = page.locator("#result-meta").text_content() or ""
    assert f"model {model['name']} v{model['version']} ({model['manifest_sha256'][:12]})" in shown
    # Removing one clip and sending again replaces the answer with one of that modality alone.
    page.click("#audio-clear")
    body = send_and_wait(page)
    assert set(check_rendered(page, body, labels)["modalities"]) == {"video"}


def test_microphone_recording_round_trips(page: Page, server: Server, labels: list[str], tmp_path: Path) -> None:
    open_page(page, server.url)
    page.click("#mic-button")
    page.wait_for_selector("#mic-button[aria-pressed=true]")  # once the microphone is open
    assert page.locator("#send").is_disabled()  # nothing to send while recording
    page.wait_for_function("() => parseFloat(document.getElementById('mic-timer').textContent.split(' ')[1]) >= 1.3")
    page.click("#mic-button")
    page.wait_for_selector("#audio-clip:not([hidden])")
    assert page.locator("#audio-name").text_content().startswith("microphone.")  # type: ignore[union-attr]
    body = send_and_wait(page)
    assert set(check_rendered(page, body, labels)["modalities"]) == {"audio"}
    # What was sent is the fake microphone's tone, decodable by the service's own decoder.
    wave = decode_audio(saved(sent_file(page, "audio"), tmp_path, "microphone.webm"), 16_000)
    assert wave.size >= 16_000, f"{wave.size / 16_000:.2f} s recorded"
    assert dominant_hz(wave, 16_000) == pytest.approx(FAKE_MIC_HZ, abs=3.0)


def test_camera_recording_with_its_sound(page: Page, server: Server, labels: list[str], tmp_path: Path) -> None:
    open_page(page, server.url)
    page.check("#cam-sound")
    page.click("#cam-button")
    page.wait_for_selector("#cam-button[aria-pressed=true]")
    page.wait_for_function("() => parseFloat(document.getElementById('cam-timer').textContent.split(' ')[1]) >= 1.3")
    page.click("#cam-button")
    page.wait_for_selector("#video-clip:not([hidden])")
    assert page.locator("#use-video-audio").is_checked()  # recorded with sound, no other audio: use it
    body = send_and_wait(page)
    assert set(check_rendered(page, body, labels)["modalities"]) == {"audio", "video"}
    assert page.evaluate("window.__sent.get('use_video_audio')") == "true"
    clip = saved(sent_file(page, "video"), tmp_path, "camera.webm")
    with av.open(str(clip)) as container:
        assert container.streams.video
        assert container.streams.audio
        assert sum(1 for _ in container.decode(video=0)) >= 2  # a clip, not a still (the service needs two frames)
    assert dominant_hz(decode_audio(clip, 16_000), 16_000) == pytest.approx(FAKE_MIC_HZ, abs=3.0)


def test_drawn_digit_becomes_a_clip_the_service_decodes(page: Page, server: Server, labels: list[str], tmp_path: Path) -> None:
    open_page(page, server.url)
    draw(page, "7")
    page.click("#pad-use")
    page.wait_for_selector("#video-clip:not([hidden])")
    body = send_and_wait(page)
    assert set(check_rendered(page, body, labels)["modalities"]) == {"video"}
    clip = saved(sent_file(page, "video"), tmp_path, "drawing.webm")
    with av.open(str(clip)) as container:
        assert container.format.name == "matroska,webm"
        frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    assert len(frames) >= 2, "a clip, not a still"
    size = frames[0].shape[0]
    boxes, centres = [], []
    for f in frames:
        ys, xs = np.nonzero(f > 128)
        assert 0.01 < ys.size / f.size < 0.3  # white strokes on black, not a blank or white frame
        boxes.append(max(np.ptp(xs), np.ptp(ys)) + 1)
        centres.append((xs.mean(), ys.mean()))
    # The digit spans 20/28 of the 56/64 MNIST frame, as in the clips the model learnt from (codec edges: a few px).
    assert np.median(boxes) == pytest.approx(size * 20 / 28 * 56 / 64, abs=size * 0.06)
    # ...and drifts by up to 4/64 of the picture, down and to the right.
    shift = np.subtract(centres[-1], centres[0])
    assert np.all(shift > size * 1.5 / 64), shift
    assert np.all(shift < size * 5 / 64), shift
    # The service's decoder reads it as it would any upload.
    decoded = load_video(clip, VideoSpec(8, 64, 64))
    assert decoded.shape == (8, 64, 64, 3)
    assert decoded.max() > 200


def test_keyboard_alone_draws_and_sends(page: Page, server: Server, labels: list[str]) -> None:
    """Every step can be done from the keyboard: open the pad, type a digit to draw it, make the clip, send."""
    open_page(page, server.url)

    def tab_to(element_id: str) -> None:
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == element_id:
                return
        raise AssertionError(f"#{element_id} cannot be reached with Tab")

    tab_to("draw-button")
    page.keyboard.press("Enter")
    assert page.locator("#draw-panel").is_visible()
    assert page.locator("#draw-button").get_attribute("aria-expanded") == "true"
    tab_to("stamp")
    page.keyboard.type("4")
    tab_to("pad-use")
    page.keyboard.press("Enter")
    page.wait_for_selector("#video-clip:not([hidden])")
    tab_to("send")
    with page.expect_response("**/v1/predict") as answer:
        page.keyboard.press("Enter")
    page.wait_for_selector("#result:not([hidden])")
    check_rendered(page, answer.value.json(), labels)


def test_phone_width(page: Page, server: Server, clean_train_row: dict[str, str], labels: list[str]) -> None:
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    open_page(page, server.url)
    overflow = "document.documentElement.scrollWidth - window.innerWidth"
    assert page.evaluate(overflow) <= 0, "the page scrolls sideways on a phone"
    audio, video = page.locator("#audio-card").bounding_box(), page.locator("#video-card").bounding_box()
    assert audio
    assert video
    assert audio["x"] == video["x"]  # one column
    assert video["y"] > audio["y"]
    page.set_input_files("#audio-file", clean_train_row["audio"])
    draw(page, "7")
    pad = page.locator("#pad").bounding_box()
    assert pad
    assert pad["x"] + pad["width"] <= PHONE["width"]
    page.click("#pad-use")
    page.wait_for_selector("#video-clip:not([hidden])")
    check_rendered(page, send_and_wait(page), labels)
    assert page.evaluate(overflow) <= 0
    for button in ("#send", "#mic-button", "#cam-button", "#draw-button"):
        box = page.locator(button).bounding_box()
        assert box
        assert box["height"] >= 44, f"{button} is too small to tap"


def test_min_confidence_is_sent_and_the_answer_says_abstained(
    page: Page, server: Server, clean_train_row: dict[str, str], labels: list[str]
) -> None:
    """The threshold field goes to the real service: 1 makes it abstain (unless it is certain), 0 never."""
    open_page(page, server.url)
    page.set_input_files("#audio-file", clean_train_row["audio"])
    page.fill("#min-confidence", "1")
    body = send_and_wait(page)
    assert body["min_confidence"] == 1.0
    shown = check_rendered(page, body, labels)
    assert shown["abstained"].startswith("Abstained" if body["confidence"] < 1.0 else "Answered")
    page.fill("#min-confidence", "0")
    body = send_and_wait(page)
    assert body["min_confidence"] == 0.0
    assert check_rendered(page, body, labels)["abstained"].startswith("Answered")


def test_new_fields_render_and_abstention_shows(
    page: Page, server: Server, clean_train_row: dict[str, str], labels: list[str]
) -> None:
    """Fields the API may add (abstention, calibration) are shown, not dropped: a real answer, extended."""
    body = server.post({"audio": Path(clean_train_row["audio"])}).json()
    body["abstained"] = True
    body["calibration"] = {"temperature": 1.25}
    body["modalities"]["audio"]["temperature"] = 1.5
    page.route("**/v1/predict", lambda route: route.fulfill(json=body))
    open_page(page, server.url)
    page.set_input_files("#audio-file", clean_train_row["audio"])
    send_and_wait(page)
    shown = check_rendered(page, body, labels)
    assert shown["abstained"].startswith("Abstained")
    assert ["calibration", '{"temperature":1.25}'] in shown["extra"]
    assert "(abstained)" in shown["status"]
    assert page.locator("#modalities .extra-facts dd").first.text_content() == "1.5"
    assert page.locator(".modality-typicality").count() == 0  # null under this model's rule: not shown
    body["abstained"] = False
    body["modalities"]["audio"]["typicality"] = 0.25  # what a gated rule answers for an atypical input
    send_and_wait(page)
    assert check_rendered(page, body, labels)["abstained"].startswith("Answered")
    typicality = page.locator(".modality-typicality").text_content()
    assert typicality is not None
    assert typicality.startswith("25")
    assert "weight was cut" in typicality
    # a detector's verdict (version 2 on): the input unlike the training data, left out, the answer abstained for it
    body["modalities"]["audio"].update(ood_score=-0.5, ood_threshold=-0.3, in_distribution=False, fused=False)
    body.update(abstained=True, abstain_reason="out_of_distribution")
    send_and_wait(page)
    shown = check_rendered(page, body, labels)
    assert shown["abstained"].startswith("Abstained: nothing sent is like the data the model knows")
    verdict = page.locator(".modality-ood").text_content()
    assert verdict == "no: unlike the model's data, left out of the answer (score -0.500, threshold -0.300)"
    body["modalities"]["audio"].update(ood_score=-0.2, in_distribution=True, fused=True)
    body.update(abstained=False, abstain_reason=None)
    send_and_wait(page)
    assert page.locator(".modality-ood").text_content() == "yes (score -0.200, threshold -0.300)"
