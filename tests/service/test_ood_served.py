"""The committed default model (its newest version) behind a real server, on inputs unlike anything it was trained on.

Each modality's graph returns its encoder's features beside its logits, and the manifest's detector (common.ood:
kNN distance to the training split's features, and for the voice a digit-or-not probe beside it; its threshold keeping
95% of a new speaker's inputs) judges each input. A blank grey frame and white noise are judged out of distribution
and abstained on, with the reason, and so are some spoken words that are not digits (not yet all: issue 27); clean
recordings of the digits in the same voice are in distribution, and a real spoken digit beside a real handwritten one
is still answered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.avdigits.build import FPS, SPEAKER_TEST, digit_clip, mnist
from common.manifest import load_manifest, newest_version
from tests.conftest import ROOT, shared_data
from tests.servers import Server, start_server, stop_server
from tests.service.test_e2e import check_answer
from training.data.writers import write_audio, write_video

DEFAULT = newest_version(ROOT / "models" / "default")
RATE = 16_000
# spoken by espeak-ng's default voice; no digit in them, none among the default model's training outliers
# (benchmarks/avdigits/outliers.py; checked below); a fixed list, not chosen by their scores
WORDS = tuple(
    [
        "banana",
        "pineapple",
        "yesterday",
        "telephone",
        "computer",
        "window",
        "garden",
        "butterfly",
        "elephant",
        "morning",
        "bicycle",
        "river",
        "volcano",
        "happy",
        "orange",
        "pencil",
        "table",
        "music",
        "water",
        "carrot",
    ]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(DEFAULT, tmp_path_factory.mktemp("ood-server"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def unlike(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("ood-media")
    files = {}
    files["blank"] = out / "blank.mp4"
    write_video(files["blank"], np.full((8, 64, 64, 3), 128, np.uint8), FPS, codec="mpeg4")  # a blank grey frame
    files["noise"] = out / "noise.wav"
    noise = np.random.default_rng(0).standard_normal(RATE)
    write_audio(files["noise"], (0.5 * noise / np.abs(noise).max()).astype(np.float32), RATE)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is absent (make system-deps installs it)")
    for word in WORDS:
        files[word] = out / f"{word}.wav"
        subprocess.run([espeak, "-w", str(files[word]), word], check=True, capture_output=True, timeout=60)
    return files


def _flagged(body: dict, modality: str) -> None:
    part = body["modalities"][modality]
    assert part["in_distribution"] is False, part
    assert part["ood_score"] < part["ood_threshold"]
    assert body["abstained"] is True
    assert body["abstain_reason"] == "out_of_distribution"


@pytest.mark.parametrize("name", ["blank", "noise"])
def test_an_input_unlike_the_training_data_is_flagged_and_abstained_on(
    server: Server, unlike: dict[str, Path], name: str
) -> None:
    manifest = load_manifest(DEFAULT)
    modality = "video" if name == "blank" else "audio"
    r = server.post({modality: unlike[name]})
    assert r.status_code == 200, r.text
    body = r.json()
    check_answer(body, {modality}, manifest)
    _flagged(body, modality)


def test_a_spoken_word_judged_out_of_distribution_is_abstained_on(server: Server, unlike: dict[str, Path]) -> None:
    """Each word's answer is the served decision (check_answer rebuilds it); a word the detector flags is abstained on
    as out of distribution, and at least one of the list is (the detector is not blind to words)."""
    manifest = load_manifest(DEFAULT)
    flagged = 0
    for word in WORDS:
        body = server.post({"audio": unlike[word]}).json()
        check_answer(body, {"audio"}, manifest)
        if body["modalities"]["audio"]["in_distribution"] is False:
            flagged += 1
            assert body["abstained"] is True, word
            assert body["abstain_reason"] == "out_of_distribution", word
    assert flagged >= 1


def test_no_word_sent_here_was_trained_on_as_an_outlier() -> None:
    from benchmarks.avdigits.outliers import OUTLIER_WORDS

    assert set(WORDS).isdisjoint(OUTLIER_WORDS), sorted(set(WORDS) & set(OUTLIER_WORDS))


@pytest.mark.xfail(
    strict=True,
    reason="issue 27: clean 16 kHz words in espeak-ng's default voice, a recording no training clip or outlier has, pass "
    "the voice's detector about half the time (versions 9 and 10, the same detector: 11 of 20 flagged), though "
    "speech recorded as the digits are is told apart (near-OOD AUROC 0.941, benchmarks/results/ood.md). Version 4 "
    "passed this by flagging every clean recording, digits too (docs/decisions/2026-12-06-version-4-withdrawn.md)",
)
def test_every_spoken_word_that_is_not_a_digit_is_out_of_distribution(server: Server, unlike: dict[str, Path]) -> None:
    flags = {w: server.post({"audio": unlike[w]}).json()["modalities"]["audio"]["in_distribution"] for w in WORDS}
    assert not any(flags.values()), flags


def test_a_clean_recording_of_each_digit_is_in_distribution_and_answered(
    server: Server, unlike: dict[str, Path], tmp_path: Path
) -> None:
    """The control for the words above: the same voice, the same clean recording, saying the digits. A detector that
    flags these has learnt the recording, not the words (version 4 flagged all ten and answered none)."""
    from benchmarks.espeak_digits import WORDS as DIGITS

    espeak = shutil.which("espeak-ng")
    assert espeak is not None  # the unlike fixture skipped otherwise
    right = 0
    for digit, word in enumerate(DIGITS):
        path = tmp_path / f"{word}.wav"
        subprocess.run([espeak, "-w", str(path), word], check=True, capture_output=True, timeout=60)
        body = server.post({"audio": path}).json()
        assert body["modalities"]["audio"]["in_distribution"] is True, (word, body["modalities"]["audio"])
        assert body["abstain_reason"] != "out_of_distribution", word
        right += body["label"] == str(digit)
    assert right >= 8, right  # a clean digit in the synthesiser's own voice is not a hard case


def test_both_unlike_is_abstained_and_the_metrics_count_them(server: Server, unlike: dict[str, Path]) -> None:
    import httpx

    def counted(modality: str, verdict: str) -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        key = f'mla_ood_checks_total{{in_distribution="{verdict}",modality="{modality}"}}'
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(key)))

    before = {m: counted(m, "false") for m in ("audio", "video")}
    body = server.post({"audio": unlike["noise"], "video": unlike["blank"]}).json()
    check_answer(body, {"audio", "video"}, load_manifest(DEFAULT))
    _flagged(body, "audio")
    _flagged(body, "video")
    assert body["fused_modalities"] == ["audio", "video"]  # the label shown is the fusion of both, abstained
    assert {m: counted(m, "false") for m in before} == {m: v + 1 for m, v in before.items()}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Path]]:
    """Per digit: the held-out speaker's first recording and a clip of the first MNIST drawing of it."""
    images, labels = mnist(shared_data("mnist").parent)
    out = tmp_path_factory.mktemp("digits")
    files = {}
    for digit in range(10):
        clip = out / f"drawn{digit}.mp4"
        write_video(clip, digit_clip(images[int(np.flatnonzero(labels == digit)[0])], np.random.default_rng(0), ""), FPS)
        files[digit] = {"audio": shared_data("fsdd", "recordings", f"{digit}_{SPEAKER_TEST}_0.wav"), "video": clip}
    return files


def test_real_digit_pairs_are_still_answered(server: Server, digits: dict[int, dict[str, Path]]) -> None:
    """Ten real pairs of the held-out speaker and unseen drawings: answered and right, as in distribution."""
    manifest = load_manifest(DEFAULT)
    answered = right = 0
    for digit, files in digits.items():
        body = server.post(files).json()
        check_answer(body, {"audio", "video"}, manifest)
        assert body["modalities"]["video"]["in_distribution"] is True, digit  # a drawing is never taken for noise
        answered += not body["abstained"]
        right += body["label"] == str(digit)
    # the test split's pairs: 93% answered with 1.7% error (benchmarks/results/ood.md); ten fail together at most
    # as often as a binomial(10, 0.07) reaches 4 (5e-3): the bounds are that, not this run's count
    assert answered >= 7
    assert right >= 9


def test_mla_predict_prints_the_verdicts(server: Server, unlike: dict[str, Path], digits: dict[int, dict[str, Path]]) -> None:
    cmd = [sys.executable, "-m", "cli.main", "predict", "--url", server.url, "--audio", str(unlike["noise"])]
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run(
        [*cmd, "--video", str(digits[3]["video"])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    body = server.post({"audio": unlike["noise"], "video": digits[3]["video"]}).json()
    assert body["fused_modalities"] == ["video"]
    audio_row = next(line for line in proc.stdout.splitlines() if "audio" in line and "│" in line)
    assert "no" in audio_row.split("│")[-2]  # the in-distribution column
    assert "left out of the fusion" in proc.stdout
