"""Version 1 of the default model behind a real server: real speech and handwriting, speech drowned in noise, and a
sound that is not speech. Version 1 stays published and servable; it is the one that fuses by `gated_loglinear`, the
rule these tests exercise (the current version's answers: tests/service/test_ood_served.py).

Version 1 fuses by `gated_loglinear`. For each digit, the held-out speaker's first
recording of it and the first MNIST drawing of it are sent, then the same drawing with the
recording drowned in white noise: one second recorded at 16 kHz with noise 10 dB louder than
the speech, before, under and after it, across the whole band, and again with the noise
kept to the 0-4 kHz band the 8 kHz training recordings occupy (an 8 kHz microphone in a
noisy room). The audio branch, trained on noisy speech in many voices, takes the drowned
speech for speech (its typicality stays near 1) and is wrong on several digits; the drawing
decides all ten. A rising chirp is no speech at all: its logits lie far from every class
mean, the gate takes the audio's say away, and the drawing decides alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.avdigits.build import FPS, SPEAKER_TEST, digit_clip, mnist
from benchmarks.avdigits.robustness import _low_band
from common.manifest import load_manifest
from common.media import decode_audio
from tests.conftest import ROOT, shared_data
from tests.servers import Server, start_server, stop_server
from tests.service.test_e2e import check_answer
from training.data.writers import write_audio, write_video

DEFAULT = ROOT / "models" / "default" / "1"
DIGITS = range(10)
SNR_DB = -10.0
RATE = 16_000
BANDS = ("drowned", "drowned_low")  # white noise over the whole band; the same kept to 0-4 kHz


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(DEFAULT, tmp_path_factory.mktemp("default-server"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Path]]:
    """Per digit: the held-out speaker's recording, a clip of the drawing, and the recording drowned in either noise."""
    images, labels = mnist(shared_data("mnist").parent)
    out = tmp_path_factory.mktemp("default-media")
    files = {}
    for digit in DIGITS:
        recording = shared_data("fsdd", "recordings", f"{digit}_{SPEAKER_TEST}_0.wav")
        clip = out / f"drawn{digit}.mp4"
        image = images[int(np.flatnonzero(labels == digit)[0])]
        write_video(clip, digit_clip(image, np.random.default_rng(0), ""), FPS, codec="mpeg4")
        speech = decode_audio(recording, RATE).astype(np.float64)
        second = np.zeros(RATE)
        second[: min(RATE, len(speech))] = speech[:RATE]
        files[digit] = {"speech": recording, "drawn": clip}
        white = np.random.default_rng(1).standard_normal(RATE)
        for band, noise in zip(BANDS, (white, _low_band(white, RATE)), strict=True):
            noise = noise * np.sqrt(np.mean(speech**2) / 10 ** (SNR_DB / 10) / np.mean(noise**2))
            drowned = second + noise
            drowned *= 0.9 / np.abs(drowned).max()  # within full scale, as a recording would be
            files[digit][band] = out / f"{band}{digit}.wav"
            write_audio(files[digit][band], drowned.astype(np.float32), RATE)
    return files


@pytest.mark.parametrize("band", BANDS)
def test_speech_drowned_in_noise_leaves_the_drawing_deciding(
    default_server: Server, media: dict[int, dict[str, Path]], band: str
) -> None:
    manifest = load_manifest(DEFAULT)
    assert manifest.fusion.rule == "gated_loglinear"
    audio_wrong = 0
    for digit, files in media.items():
        noisy = default_server.post({"audio": files[band], "video": files["drawn"]})
        assert noisy.status_code == 200, (digit, noisy.text)
        body = noisy.json()
        check_answer(body, {"audio", "video"}, manifest)  # the answer is the gated product of its parts
        parts = body["modalities"]
        assert parts["video"]["label"] == str(digit), digit  # the drawing alone is right ...
        assert parts["video"]["typicality"] == 1.0, digit  # ... and looks like validation's drawings
        assert body["label"] == str(digit), digit  # and decides
        audio_wrong += parts["audio"]["label"] != str(digit)
    assert audio_wrong > 0  # against a drowned voice that says another digit on some of them
    assert default_server.tmp_is_empty()


def test_a_sound_that_is_not_speech_loses_its_say(
    default_server: Server, media: dict[int, dict[str, Path]], tmp_path: Path
) -> None:
    manifest = load_manifest(DEFAULT)
    t = np.arange(RATE) / RATE
    chirp = tmp_path / "chirp.wav"
    write_audio(chirp, (0.9 * np.sin(2 * np.pi * (200 + 3000 * t) * t)).astype(np.float32), RATE)
    for digit, files in media.items():
        speech = default_server.post({"audio": files["speech"], "video": files["drawn"]}).json()
        swept = default_server.post({"audio": chirp, "video": files["drawn"]}).json()
        check_answer(swept, {"audio", "video"}, manifest)
        # beyond the gate's threshold (typicality 1 up to it): the audio's weight falls below the speech's
        assert swept["modalities"]["audio"]["typicality"] < 1.0, digit
        assert swept["modalities"]["audio"]["typicality"] < speech["modalities"]["audio"]["typicality"], digit
        assert swept["modalities"]["audio"]["weight"] < speech["modalities"]["audio"]["weight"], digit
        assert swept["label"] == str(digit), digit  # the drawing decides


def test_a_recording_made_quieter_gets_the_same_answer(default_server: Server, tmp_path: Path) -> None:
    """The audio graph raises a quiet clip to its training clips' level first, so how quietly it was recorded does
    not matter.

    Each of the held-out speaker's recordings is written as 16-bit samples peaking at 250 of 32767 (42 dB
    under full scale), and again with every sample exactly 8 times larger (peak 2000): powers of two scale
    float32 exactly, so the graph sees the same floats (tests/training/test_level.py) and the answers are
    identical. The model without the level step got 13% of this speaker's raw recordings right by voice.
    """
    right = 0
    for digit in DIGITS:
        speech = decode_audio(shared_data("fsdd", "recordings", f"{digit}_{SPEAKER_TEST}_0.wav"), RATE)
        quiet = np.round(speech / np.abs(speech).max() * 250).astype(np.int16)
        answers = []
        for name, samples in (("quiet", quiet), ("loud", quiet * 8)):
            path = tmp_path / f"{name}{digit}.wav"
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(RATE)
                out.writeframes(samples.tobytes())
            r = default_server.post({"audio": path})
            assert r.status_code == 200, r.text
            answers.append(r.json())
        quiet_answer, loud_answer = answers
        assert quiet_answer["modalities"]["audio"]["probabilities"] == loud_answer["modalities"]["audio"]["probabilities"]
        assert (quiet_answer["label"], quiet_answer["confidence"]) == (loud_answer["label"], loud_answer["confidence"])
        right += quiet_answer["label"] == str(digit)
    assert right >= 6  # heard, not just consistent: a 42 dB quieter voice is still mostly understood (84% of 500 by hand)


def test_one_modality_alone_answers_as_the_manifest_says(default_server: Server, media: dict[int, dict[str, Path]]) -> None:
    """Audio alone and video alone: the calibrated, gated part, then the set's confidence map where it has one."""
    manifest = load_manifest(DEFAULT)
    for files in media.values():
        for sent, path in (("audio", files["speech"]), ("audio", files["drowned"]), ("video", files["drawn"])):
            r = default_server.post({sent: path})
            assert r.status_code == 200, r.text
            check_answer(r.json(), {sent}, manifest)


def test_mla_predict_shows_the_typicality(default_server: Server, media: dict[int, dict[str, Path]]) -> None:
    files = media[3]
    cmd = [sys.executable, "-m", "cli.main", "predict", "--url", default_server.url, "--audio", str(files["drowned"])]
    env = {**os.environ, "COLUMNS": "160"}  # one line per row, whatever terminal the tests run in
    proc = subprocess.run([*cmd, "--video", str(files["drawn"])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "typicality" in proc.stdout
    assert "gated_loglinear fusion" in proc.stdout
    audio_row = next(line for line in proc.stdout.splitlines() if "audio" in line and "│" in line)
    shown = float(audio_row.split("│")[-2])  # the last column
    body = default_server.post({"audio": files["drowned"], "video": files["drawn"]}).json()
    assert shown == pytest.approx(body["modalities"]["audio"]["typicality"], abs=5e-4)
    # each modality's own confidence is labelled as such, and the pair's blend with the mixture is said
    assert "own confidence" in proc.stdout
    assert body["mixture_share"] > 0
    assert f"equal-weight mixture at {body['mixture_share']:g}" in proc.stdout
