"""The committed default model behind a real server: real speech and handwriting, and speech drowned in noise.

The default model fuses by `gated_loglinear`. A speaker it never heard saying a digit, with
that digit drawn by hand, is answered as the product of the two experts; the same recording
drowned in white noise (10 dB more noise than speech) makes the audio branch sure of some
digit it cannot hear, and the gate takes that branch's say away, so the drawing decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.avdigits.build import FPS, SAMPLE_RATE, SPEAKER_TEST, digit_clip, mnist
from common.fusion import log_softmax, softmax
from common.manifest import load_manifest
from common.media import decode_audio
from tests.conftest import ROOT, shared_data
from tests.servers import Server, start_server, stop_server
from tests.service.test_e2e import check_answer
from training.data.writers import write_audio, write_video

DEFAULT = ROOT / "models" / "default" / "1"
DIGIT = 4
SNR_DB = -10.0


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(DEFAULT, tmp_path_factory.mktemp("default-server"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The held-out speaker's first recording of DIGIT, the first MNIST drawing of it, and the recording in noise."""
    recording = shared_data("fsdd", "recordings", f"{DIGIT}_{SPEAKER_TEST}_0.wav")
    images, labels = mnist(shared_data("mnist").parent)
    out = tmp_path_factory.mktemp("default-media")
    clip = out / "drawn.mp4"
    write_video(
        clip, digit_clip(images[int(np.flatnonzero(labels == DIGIT)[0])], np.random.default_rng(0), ""), FPS, codec="mpeg4"
    )
    speech = decode_audio(recording, SAMPLE_RATE).astype(np.float64)
    noise = np.random.default_rng(1).standard_normal(len(speech))
    noise *= np.sqrt(np.mean(speech**2) / 10 ** (SNR_DB / 10) / np.mean(noise**2))
    drowned = speech + noise
    drowned *= 0.9 / np.abs(drowned).max()  # within full scale, as a recording would be
    write_audio(out / "drowned.wav", drowned.astype(np.float32), SAMPLE_RATE)
    return {"speech": recording, "drawn": clip, "drowned": out / "drowned.wav"}


def test_the_default_model_fuses_by_the_gated_product(default_server: Server, media: dict[str, Path]) -> None:
    manifest = load_manifest(DEFAULT)
    assert manifest.fusion.rule == "gated_loglinear"
    clean = default_server.post({"audio": media["speech"], "video": media["drawn"]})
    assert clean.status_code == 200, clean.text
    check_answer(clean.json(), {"audio", "video"}, manifest)
    assert clean.json()["label"] == str(DIGIT)
    for m in ("audio", "video"):
        assert clean.json()["modalities"][m]["typicality"] == 1.0, m  # both like what validation saw
    assert default_server.tmp_is_empty()


def test_speech_drowned_in_noise_loses_its_say(default_server: Server, media: dict[str, Path]) -> None:
    manifest = load_manifest(DEFAULT)
    clean = default_server.post({"audio": media["speech"], "video": media["drawn"]}).json()
    r = default_server.post({"audio": media["drowned"], "video": media["drawn"]})
    assert r.status_code == 200, r.text
    noisy = r.json()
    check_answer(noisy, {"audio", "video"}, manifest)
    audio, video = noisy["modalities"]["audio"], noisy["modalities"]["video"]
    assert audio["label"] != str(DIGIT)  # the audio branch hears a digit that is not there ...
    assert audio["typicality"] < 0.5  # ... from logits far outside validation's, so its gate closes
    assert video["typicality"] == 1.0
    assert audio["weight"] < clean["modalities"]["audio"]["weight"]
    assert noisy["label"] == video["label"] == str(DIGIT)  # the drawing decides
    # Without the gate (every typicality 1) the same parts would give the product of experts,
    # which the sure but wrong audio outvotes: what `loglinear` serves.
    labels = manifest.labels
    w = manifest.fusion.weights
    assert w is not None
    log_q = sum(
        w[m] * log_softmax(np.log([noisy["modalities"][m]["probabilities"][c] for c in labels])) for m in ("audio", "video")
    )
    ungated = softmax(np.asarray(log_q))
    assert labels[int(ungated.argmax())] == audio["label"]
    assert default_server.tmp_is_empty()
