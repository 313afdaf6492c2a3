"""The OOD benchmark (benchmarks/ood): its sets are reproducible and kept apart, its metrics are right, its pipeline runs."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.ood import metrics, sets
from benchmarks.ood.detectors import DETECTORS, serve
from tests.conftest import ROOT, SHARED_DATA

MODEL = ROOT / "models" / "default" / "1"
PER_KIND = 2


def _needs_tools() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is absent (Debian package espeak-ng; make system-deps installs it)")
    if not (SHARED_DATA / "grid").is_dir():
        pytest.skip(f"the GRID clips are absent from {SHARED_DATA}")
    pytest.importorskip("skimage", reason="scikit-image is absent (pip install scikit-image)")


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same small build (two items of every kind) twice, into two folders."""
    _needs_tools()
    return sets.build(tmp_path_factory.mktemp("ood-a"), seed=0, per_kind=PER_KIND), sets.build(
        tmp_path_factory.mktemp("ood-b"), seed=0, per_kind=PER_KIND
    )


def _digests(manifest: Path) -> dict[str, str]:
    return {
        str(it.path.relative_to(manifest.parent)): hashlib.sha256(it.path.read_bytes()).hexdigest()
        for it in sets.read_items(manifest)
    }


def test_tune_and_report_groups_share_no_kind() -> None:
    assert sets.shared_between_groups(sets.KINDS) == set()
    for modality in ("audio", "video"):
        mine = [k for k in sets.KINDS if k.modality == modality]
        assert {k.group for k in mine} == {"tune", "report"}
        assert {k.distance for k in mine if k.group == "report"} == {"near", "far"}
    tune = next(k for k in sets.KINDS if k.group == "tune")
    leak = sets.Kind(tune.make, tune.modality, "report", "far", 1, "the same builder, reported")
    assert sets.shared_between_groups((*sets.KINDS, leak)) == {tune.name}
    with pytest.raises(ValueError, match="in both"):
        sets._check_disjoint((*sets.KINDS, leak))


def test_the_training_outliers_share_no_word_with_any_ood_set() -> None:
    """Outlier exposure's words (benchmarks/avdigits/outliers.py) are in no tune or report list, name no letter and
    are no digit: what the sets measure stays unseen by training."""
    from benchmarks.avdigits.outliers import OUTLIER_WORDS
    from benchmarks.espeak_digits import WORDS as DIGITS

    words = set(OUTLIER_WORDS)
    assert len(words) == len(OUTLIER_WORDS)
    spoken = set(sets.WORDS) | {w.lower() for s in sets.SENTENCES for w in s.split()} | set(sets.LETTERS) | set(DIGITS)
    assert words.isdisjoint(spoken), sorted(words & spoken)
    assert all(len(w) > 1 and w.isalpha() and w.islower() for w in words)


def test_the_training_outliers_build(tmp_path: Path) -> None:
    """A small build: readable as `mla train --outliers`, recorded as the training clips are, the same bytes for a seed."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is absent (Debian package espeak-ng; make system-deps installs it)")

    from benchmarks.avdigits import outliers
    from benchmarks.avdigits.build import SAMPLE_RATE
    from training.data.specs import read_outliers

    first = outliers.build(tmp_path / "a", seed=0, count=12)
    again = outliers.build(tmp_path / "b", seed=0, count=12)
    samples = read_outliers(f"csv:{first}")
    assert len(samples) == 12
    assert all(set(s.files) == {"audio"} and s.label == -1 for s in samples)
    rates = set()
    for s in samples:
        with wave.open(str(s.files["audio"])) as w:
            rates.add(w.getframerate())
    assert rates == {SAMPLE_RATE}  # every one at AV-digits' rate: none clean at 16 kHz (version 1's cue)
    with first.open() as f:
        assert all(row["condition"].startswith("8 kHz, SNR ") for row in csv.DictReader(f))
    digest = lambda csv_path: [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(csv_path.parent.glob("media/*.wav"))]  # noqa: E731
    assert digest(first) == digest(again)
    # --clean: the same recipe with no noise added
    clean = outliers.build(tmp_path / "c", seed=0, count=3, clean=True)
    with clean.open() as f:
        assert [row["condition"] for row in csv.DictReader(f)] == ["8 kHz, clean"] * 3

    def quietest(path: Path) -> float:
        """The quietest 20 ms window's RMS over the loudest's."""
        with wave.open(str(path)) as w:
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)
        rms = np.sqrt((x[: len(x) // 160 * 160].reshape(-1, 160) ** 2).mean(axis=1))
        return float(rms.min() / rms.max())

    # espeak-ng's silence around the words survives clean (a window within 1 LSB of zero against a peak window of
    # thousands); noised at 20 dB SNR or less, every window holds noise of at least a tenth of the signal's RMS
    assert all(quietest(s.files["audio"]) < 1e-3 for s in read_outliers(f"csv:{clean}"))
    assert all(quietest(s.files["audio"]) > 1e-3 for s in samples)


def test_the_same_seed_builds_the_same_bytes(small_sets: tuple[Path, Path]) -> None:
    first, second = small_sets
    a, b = _digests(first), _digests(second)
    assert len(a) == PER_KIND * len(sets.KINDS)
    assert a == b
    assert first.read_text() == second.read_text()


def test_speech_is_recorded_as_the_in_distribution_clips_are(small_sets: tuple[Path, Path]) -> None:
    """Every near audio kind (speech that is not a digit) at AV-digits' rate with its noise throughout: only what is
    said tells it from a test clip. Clean, espeak-ng's output holds digital silence before and after the words; noised
    at 20 dB SNR or less, no 20 ms of a clip is below the noise (its RMS at least a tenth of the clip's, less 20 dB)."""
    from benchmarks.avdigits.build import SAMPLE_RATE
    from common.media import decode_audio

    speech = [it for it in sets.read_items(small_sets[0]) if it.modality == "audio" and it.distance == "near"]
    assert {it.kind for it in speech} == {"espeak_letters", "espeak_words", "espeak_sentences", "grid_speech"}
    for item in speech:
        with wave.open(str(item.path)) as w:
            assert w.getframerate() == SAMPLE_RATE, item
        x = decode_audio(item.path, SAMPLE_RATE).astype(np.float64)
        window = SAMPLE_RATE // 50
        rms = np.sqrt(np.mean(x[: len(x) // window * window].reshape(-1, window) ** 2, axis=1))
        # noise power is signal power / 10^(snr/10) >= mean power / 100 at SNR <= 20 dB; a window's RMS scatters about it
        assert rms.min() >= 0.1 * np.sqrt(np.mean(x**2)) / 10, item


def test_the_sets_digest_follows_the_bytes_not_the_list(small_sets: tuple[Path, Path], tmp_path: Path) -> None:
    """Caches of decoded items are keyed by sets.digest: equal for equal builds, different when one file's bytes
    change under the same items.csv (as version 2 of the sets changed version 1's speech)."""
    first, second = (sets.read_items(m) for m in small_sets)
    assert sets.digest(first) == sets.digest(second)
    copy = tmp_path / "copy"
    shutil.copytree(small_sets[0].parent, copy)
    changed = sets.read_items(copy / "items.csv")
    assert sets.digest(changed) == sets.digest(first)
    target = next(it.path for it in changed if it.modality == "audio")
    data = bytearray(target.read_bytes())
    data[-1] ^= 1  # one bit of one sample of one clip
    target.write_bytes(bytes(data))
    assert (copy / "items.csv").read_bytes() == small_sets[0].read_bytes()
    assert sets.digest(changed) != sets.digest(first)


def test_another_seed_draws_other_items(tmp_path: Path) -> None:
    kinds = [k for k in sets.KINDS if k.name in ("white_noise", "strokes")]
    a = _digests(sets.build(tmp_path / "a", seed=0, per_kind=1, kinds=kinds))
    b = _digests(sets.build(tmp_path / "b", seed=1, per_kind=1, kinds=kinds))
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)


def test_the_service_decoders_accept_every_built_item(small_sets: tuple[Path, Path]) -> None:
    if not (MODEL / "manifest.json").is_file():
        pytest.skip(f"no committed default model in {MODEL} (make default-model builds it)")
    from benchmarks.ood.run import Model
    from common.modalities.audio import AudioEntry

    model = Model(MODEL)
    for item in sets.read_items(small_sets[0]):
        entry = model.manifest.modalities[item.modality]
        array = model.decode(item.modality, item.path)
        assert array.shape == tuple(entry.input.shape[1:]), item
        assert array.dtype == np.dtype(entry.input.dtype), item
        if item.modality == "audio":
            assert np.isfinite(array).all(), item
            with wave.open(str(item.path)) as w:
                rate = w.getframerate()
            assert isinstance(entry, AudioEntry)
            if rate == entry.sample_rate:  # no resampling: 16-bit PCM stays in [-1, 1]
                assert np.abs(array).max() <= 1.0, item
            # speech recorded as AV-digits' clips (8 kHz) is resampled as its clips are, which may overshoot a peak of
            # 0.9 between samples, as theirs does: only finiteness holds there


def test_auroc_on_constructed_scores() -> None:
    assert metrics.auroc(np.array([2.0, 3.0, 4.0]), np.array([0.0, 1.0])) == 1.0
    assert metrics.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0, 4.0])) == 0.0
    assert metrics.auroc(np.ones(50), np.ones(30)) == 0.5
    rng = np.random.default_rng(0)
    same = metrics.auroc(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(same - 0.5) < 0.03


def test_fpr_at_95_tpr_by_hand() -> None:
    in_dist = np.arange(1.0, 21.0)  # 20 scores: keeping 95% (19) means a threshold of 2
    ood = np.array([0.5, 1.5, 2.5, 10.5, 30.0])  # 2.5, 10.5 and 30 reach it: 3 of 5
    assert metrics.fpr_at_tpr(in_dist, ood) == pytest.approx(0.6)
    assert metrics.fpr_at_tpr(in_dist, np.array([0.0, 1.0])) == 0.0
    assert metrics.fpr_at_tpr(in_dist, np.array([2.0])) == 1.0  # a tie at the threshold is kept


def test_the_bootstrap_forms_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    for n_id, n_ood in ((500, 40), (21, 7), (100, 100)):
        x, y = np.round(rng.normal(1, 1, n_id), 1), np.round(rng.normal(0, 1, n_ood), 1)  # rounded: ties
        labels = np.r_[np.ones(n_id), np.zeros(n_ood)]
        assert float(metrics._auroc_rank(x, y)) == pytest.approx(roc_auc_score(labels, np.r_[x, y]))
        assert float(metrics._fpr_quantile(x, y)) == pytest.approx(metrics.fpr_at_tpr(x, y))


def test_intervals_hold_the_value_and_repeat_with_the_seed() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(1, 1, 200), rng.normal(0, 1, 60)
    first = metrics.summary(x, y, seed=0, resamples=200)
    assert first == metrics.summary(x, y, seed=0, resamples=200)
    for value, low, high in first.values():
        assert low <= value <= high
    assert metrics.summary(np.full(10, 2.0), np.zeros(10), resamples=50) == {"auroc": [1.0, 1.0, 1.0], "fpr95": [0.0, 0.0, 0.0]}


def test_detectors_score_the_served_fusion() -> None:
    if not (MODEL / "manifest.json").is_file():
        pytest.skip(f"no committed default model in {MODEL} (make default-model builds it)")
    from common.manifest import load_manifest

    params = load_manifest(MODEL).fusion.params()
    rng = np.random.default_rng(3)
    logits = {"audio": rng.normal(0, 3, (6, 10)), "video": rng.normal(0, 3, (6, 10))}
    logits["audio"][0] *= 100  # far from every class mean: gated
    batch = serve(params, logits)
    alone = params({m: z[:1] for m, z in logits.items()})
    np.testing.assert_allclose(batch.fused.probs[0], alone.probs[0])
    scores = {}
    for detector in DETECTORS:
        score = detector.score(batch)
        if detector.name == "served":  # version 1 has no features output nor detector: nothing served is scored
            assert score is None
            continue
        assert score is not None
        assert score.shape == (6,)
        scores[detector.name] = score
    np.testing.assert_allclose(scores["confidence"], batch.fused.probs.max(axis=1))
    assert scores["typicality"][0] < 1.0
    assert scores["typicality_distance"][0] < -1.0


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end(small_sets: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole run on the small sets and a small AV-digits (one clip per speaker and digit), 20 bootstrap draws."""
    if not (MODEL / "manifest.json").is_file():
        pytest.skip(f"no committed default model in {MODEL} (make default-model builds it)")
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"the shared data sets are absent from {SHARED_DATA}")
    from benchmarks.avdigits import build as avdigits
    from benchmarks.ood import run

    id_csv = avdigits.build(tmp_path / "avdigits", limit_per_speaker_digit=1)
    monkeypatch.setattr(run.sets, "cached", lambda seed=0: small_sets[0])
    monkeypatch.setattr(run.avdigits, "cached", lambda seed=0: id_csv)
    data = run.main(["--resamples", "20"], results=tmp_path / "results")
    assert set(data["conditions"]) == set(run.CONDITIONS)
    assert data["id"]["n"] == 10  # the test speaker's one clip per digit
    for condition in data["conditions"].values():
        assert set(condition["groups"]) == {"report/near", "report/far", "tune/near", "tune/far"}
        for block in condition["groups"].values():
            for figures in block["detectors"].values():
                assert 0.0 <= figures["auroc"][0] <= 1.0
                assert 0.0 <= figures["fpr95"][0] <= 1.0
    saved = json.loads((tmp_path / "results" / "ood.json").read_text())
    assert saved["benchmark"] == "ood"
    report = (tmp_path / "results" / "ood.md").read_text()
    assert "Nothing was chosen on the report sets" in report
    assert "grid_faces" in report
    clean = data["clean_speech"]  # the held-out speaker's FSDD recordings, un-noised: 50 per digit
    assert (clean["speaker"], clean["n"]) == (avdigits.SPEAKER_TEST, 500)
    assert 0.0 <= clean["flagged"] <= 1.0
    assert 0.0 <= clean["answered"] <= 1.0 - clean["flagged"]
    assert "Clean recordings of the held-out speaker" in report


# --- feature detectors (benchmarks/ood/features.py): the math on constructed data -----------------
def test_mahalanobis_equals_a_hand_computation_in_two_dimensions() -> None:
    from benchmarks.ood.features import Mahalanobis

    # Class 0 about (0, 0), class 1 about (4, 0); about its mean each point is (+-1, 0) or (0, +-2), so the
    # shared (maximum-likelihood) covariance is diag(4/8, 16/8) = diag(0.5, 2) and its inverse diag(2, 0.5).
    x = np.array([[-1, 0], [1, 0], [0, -2], [0, 2], [3, 0], [5, 0], [4, -2], [4, 2]], float)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    maha = Mahalanobis.fit(x, labels, shrink=False)
    np.testing.assert_allclose(maha.means, [[0, 0], [4, 0]])
    np.testing.assert_allclose(maha.precision, np.diag([2.0, 0.5]))
    query = np.array([[1.0, 1.0], [4.0, 2.0]])
    # (1, 1): to class 0, 2*1 + 0.5*1 = 2.5; to class 1, (-3, 1): 2*9 + 0.5*1 = 18.5. (4, 2): 16*2 + 0.5*4 = 34; 0 + 2 = 2.
    np.testing.assert_allclose(maha.distances(query), np.sqrt([[2.5, 18.5], [34.0, 2.0]]))
    np.testing.assert_allclose(maha.score(query), -np.sqrt([2.5, 2.0]))


def test_mahalanobis_shrinks_the_covariance_as_ledoit_wolf_does() -> None:
    from sklearn.covariance import LedoitWolf

    from benchmarks.ood.features import Mahalanobis

    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 8)) + 5 * np.eye(8)[labels]  # more dimensions than a class has points to spare
    maha = Mahalanobis.fit(x, labels)
    centred = x - maha.means[labels]
    np.testing.assert_allclose(np.linalg.inv(maha.precision), LedoitWolf(assume_centered=True).fit(centred).covariance_)
    near, far = maha.means[:1] + 0.1, maha.means[:1] + 50
    assert maha.score(near)[0] > maha.score(far)[0]


def test_knn_distances_are_the_sorted_distances_of_normalised_features() -> None:
    from benchmarks.ood.features import NearestNeighbours

    angles = np.array([0.0, 0.1, 0.2, 1.0, 2.0])
    bank = np.c_[np.cos(angles), np.sin(angles)] * np.array([[1], [3], [0.5], [2], [7]])  # lengths must not matter
    knn = NearestNeighbours.fit(bank)
    queries = np.array([[np.cos(0.05), np.sin(0.05)], [np.cos(1.5), np.sin(1.5)], [-1.0, 0.0]]) * np.array([[10], [1], [0.2]])
    got = knn.kth_distances(queries, [1, 2, 5])
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    chord = np.sort(np.linalg.norm(unit[:, None] - knn.bank[None], axis=2), axis=1)  # brute force
    for k in (1, 2, 5):
        np.testing.assert_allclose(got[k], chord[:, k - 1], atol=1e-7)
    np.testing.assert_allclose(got[1][0], 2 * np.sin(0.05 / 2), atol=1e-7)  # the chord to the nearest, 0.05 rad away
    score = knn.score(queries, 2)
    assert score[0] > score[1] > score[2]  # inside the bank's arc, beside it, opposite it
    np.testing.assert_allclose(knn.score(5 * queries, 2), score)


def test_the_pair_rule_standardises_on_validation_then_takes_the_least_typical() -> None:
    from benchmarks.ood.features import Standardiser, combine

    standard = {"audio": Standardiser.fit(np.array([-12.0, -10.0, -8.0])), "video": Standardiser.fit(np.array([-1.0, 1.0]))}
    assert (standard["audio"].mean, standard["video"].mean) == (-10.0, 0.0)
    sd_audio = np.sqrt(8 / 3)
    got = combine({"audio": np.array([-10.0, -20.0, -10.0]), "video": np.array([0.0, 0.0, -3.0])}, standard)
    # an ID pair; audio far below its validation scores beside an ID video; video 3 sd below beside an ID audio
    np.testing.assert_allclose(got, [0.0, -10 / sd_audio, -3.0])
    alone = combine({"audio": np.array([-20.0])}, standard)  # one modality sent: its standardised score
    np.testing.assert_allclose(alone, [-10 / sd_audio])


def test_the_validation_threshold_keeps_95_percent_as_fpr95_counts() -> None:
    from benchmarks.ood.features import choose_k, threshold_at_tpr

    rng = np.random.default_rng(5)
    val, ood = rng.normal(1, 1, 500), rng.normal(0, 1, 300)
    threshold = threshold_at_tpr(val)
    assert (val >= threshold).mean() >= 0.95
    assert (val > threshold).mean() < 0.95
    assert float((ood >= threshold).mean()) == pytest.approx(metrics.fpr_at_tpr(val, ood))
    assert choose_k({1: {"near": 0.7, "far": 0.9}, 5: {"near": 0.9, "far": 0.8}, 10: {"near": 0.8, "far": 0.9}}) == 5
    assert choose_k({20: {"near": 0.8, "far": 0.8}, 5: {"near": 0.9, "far": 0.7}}) == 5  # a tie: the smaller k


def test_a_detector_fitted_on_validation_is_never_chosen_against_it() -> None:
    from benchmarks.ood.detectors import DETECTORS
    from benchmarks.ood.features import choose_detector

    mean = {"typicality_distance": 0.95, "knn": 0.90, "mahalanobis": 0.89, "msp": 0.81}
    assert choose_detector(mean, []) == ("typicality_distance", "knn")
    assert choose_detector(mean, ["typicality_distance"]) == ("knn", "mahalanobis")
    # the gate's statistics come from the validation split; the feature detectors' from the training split
    assert {d.name for d in DETECTORS if d.fitted_on_validation} == {"typicality", "typicality_distance"}


def test_feature_conditions_pair_as_the_logit_run_does() -> None:
    from benchmarks.ood import run
    from benchmarks.ood.features import conditions

    items = [sets.Item(Path(f"{k.name}/{i}"), k.modality, k.name, k.group, k.distance) for k in sets.KINDS for i in range(3)]
    accepted = {m: np.ones(sum(it.modality == m for it in items), bool) for m in ("audio", "video")}
    accepted["video"][1] = False  # a refused item leaves the indices of those accepted
    rng = np.random.default_rng(6)
    ood = {m: rng.normal(size=(int(a.sum()), 10)) for m, a in accepted.items()}
    id_logits = {m: rng.normal(size=(7, 10)) for m in ("audio", "video")}
    decoded = {m: run.Decoded(ood[m], accepted[m], {}) for m in ood}
    expected = run.ood_requests(items, decoded, id_logits, seed=3)
    got = conditions(items, {f"ood_{m}_accepted": a for m, a in accepted.items()}, 7, seed=3)
    assert set(got) == set(expected)
    for name, cond in got.items():
        assert set(cond.modalities) == set(expected[name].logits)
        for m, z in expected[name].logits.items():
            np.testing.assert_array_equal(ood[m][cond.ood[m]] if m in cond.ood else id_logits[m][cond.partner[m]], z)
        assert list(cond.kind) == list(expected[name].kind)
    assert set(got["audio OOD, video ID"].ood) == {"audio"}
    assert set(got["both OOD"].ood) == {"audio", "video"}
