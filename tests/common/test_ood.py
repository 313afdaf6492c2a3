"""The out-of-distribution detector (common.ood), the served decision (common.answer) and their manifest contract."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.answer import LOW_CONFIDENCE, OUT_OF_DISTRIBUTION, decide
from common.fusion import FusionParams, softmax
from common.manifest import SCHEMA_VERSION, ManifestError, check_hashes, load_detectors, load_manifest
from common.ood import Detector, LinearProbe, NearestNeighbours, l2_normalise, threshold_at_tpr
from tests.conftest import ROOT

DEFAULT = ROOT / "models" / "default" / "2"


def test_knn_score_is_minus_the_distance_to_the_kth_nearest_normalised_bank_row() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 6))
    queries = rng.normal(size=(7, 6)) * rng.uniform(0.1, 10, size=(7, 1))  # scale must not matter: rows are normalised
    knn = NearestNeighbours.fit(bank, k=3)
    unit_bank, unit_q = l2_normalise(bank), l2_normalise(queries)
    brute = np.sort(np.linalg.norm(unit_q[:, None] - unit_bank[None], axis=2), axis=1)
    np.testing.assert_allclose(knn.score(queries), -brute[:, 2], atol=1e-6)  # the bank is stored as float32
    np.testing.assert_allclose(knn.score(queries * 7.0), knn.score(queries), atol=1e-12)
    np.testing.assert_allclose(knn.kth_distances(queries, (1, 3))[1], brute[:, 0], atol=1e-6)
    # a bank row itself is at distance 0 from its own nearest neighbour
    assert knn.kth_distances(bank[:5], (1,))[1].max() < 1e-3
    assert np.all((knn.score(queries) <= 0) & (knn.score(queries) >= -2))


def test_only_the_largest_products_become_distances_with_the_same_numbers_as_all_of_them() -> None:
    """kth_distances turns only the `top` largest float32 products into distances: the k-th smallest distance, for
    every k asked, must be the very number that making every product a distance and sorting gives, ties included
    (a bank row repeated), across chunks of queries, and up to k = the whole bank."""
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(40, 8))
    bank[10:14] = bank[3]  # four more copies of one row: ties among the nearest
    knn = NearestNeighbours.fit(bank, k=2)
    queries = np.concatenate([rng.normal(size=(600, 8)), bank[:4]])  # more than one chunk; some on the bank itself
    z = l2_normalise(queries).astype(np.float32)
    products = (z @ knn._columns).astype(np.float64)  # the products it computes (a BLAS may round another layout apart)
    every = np.sort(np.sqrt(np.maximum(2.0 - 2.0 * products, 0.0)), axis=1)
    got = knn.kth_distances(queries, (1, 2, 5, 40))
    for k in (1, 2, 5, 40):
        np.testing.assert_array_equal(got[k], every[:, k - 1])


@pytest.mark.parametrize("dims", [16, 128, 512])
def test_float32_products_keep_a_distance_within_the_rounding_bound(dims: int) -> None:
    # The served kNN forms its dot products in float32. Exact (float64) distances of the same unit vectors differ
    # from its distances by what rounding allows: |d32^2 - d64^2| <= 2 (dims + 1) 2^-24 (a sum of dims products of
    # unit vectors, and the query's own rounding), with 1% for the float64 reference's rounding.
    rng = np.random.default_rng(dims)
    bank = l2_normalise(rng.normal(size=(400, dims))).astype(np.float32)
    queries = bank[:300] + rng.normal(size=(300, dims)) * rng.uniform(0.001, 0.2, size=(300, 1))  # near and far
    knn = NearestNeighbours(bank, k=5)
    exact = np.sort(np.linalg.norm(l2_normalise(queries)[:, None] - bank.astype(np.float64)[None], axis=2), axis=1)[:, 4]
    served = knn.kth_distances(queries)[5]
    bound = 2 * (dims + 1) * 2.0**-24 * 1.01
    assert np.all(np.abs(served**2 - exact**2) <= bound)
    # one query at a time, as the service sends them (BLAS takes another kernel for a single row)
    one_by_one = np.array([knn.kth_distances(q[None])[5][0] for q in queries[:60]])
    assert np.all(np.abs(one_by_one**2 - exact[:60] ** 2) <= bound)


def test_a_query_far_from_the_bank_scores_lower_than_one_inside_it() -> None:
    rng = np.random.default_rng(1)
    bank = np.abs(rng.normal(size=(200, 8))) + np.eye(8)[0] * 5  # a cluster around the first axis
    knn = NearestNeighbours.fit(bank, k=10)
    inside, outside = bank[:20] + 0.01 * rng.normal(size=(20, 8)), -bank[:20]
    assert knn.score(inside).min() > knn.score(outside).max()


@pytest.mark.parametrize("n", [1, 19, 20, 21, 500])
def test_the_threshold_keeps_at_least_the_tpr_and_is_the_highest_that_does(n: int) -> None:
    scores = np.random.default_rng(n).normal(size=n)
    t = threshold_at_tpr(scores, 0.95)
    assert (scores >= t).mean() >= 0.95
    higher = np.sort(scores)[np.sort(scores) > t]
    if len(higher):
        assert (scores >= higher[0]).mean() < 0.95  # the next score up would keep less


def test_a_bank_or_k_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError, match="k must lie"):
        NearestNeighbours(np.ones((3, 2), np.float32), 4)
    with pytest.raises(ValueError, match="bank"):
        NearestNeighbours(np.ones((0, 2), np.float32), 1)
    with pytest.raises(ValueError, match="finite"):
        NearestNeighbours(np.full((3, 2), np.nan, np.float32), 1)
    with pytest.raises(ValueError, match="threshold needs"):
        threshold_at_tpr(np.array([]))


def _detector(centre: np.ndarray, threshold: float = -0.2) -> Detector:
    bank = centre + 0.01 * np.random.default_rng(2).normal(size=(30, len(centre)))
    return Detector(NearestNeighbours.fit(bank, 5), threshold)


def test_a_modality_judged_out_of_distribution_is_left_out_and_none_left_abstains() -> None:
    rng = np.random.default_rng(3)
    k = 4
    logits = {"audio": rng.normal(size=(4, k)) * 3, "video": rng.normal(size=(4, k)) * 3}
    e = np.eye(3)
    detectors = {"audio": _detector(e[0]), "video": _detector(e[1])}
    # rows: both in; audio out; video out; both out
    features = {"audio": np.stack([e[0], e[2], e[0], e[2]]), "video": np.stack([e[1], e[1], e[2], e[2]])}
    params = FusionParams("loglinear", {"audio": 0.5, "video": 0.5})
    a = decide(params, {"audio": 0.0, "video": 0.0, "audio+video": 0.0}, detectors, logits, features)
    assert a.in_distribution["audio"].tolist() == [True, False, True, False]
    assert a.in_distribution["video"].tolist() == [True, True, False, False]
    assert a.subsets.tolist() == ["audio+video", "video", "audio", "audio+video"]
    assert a.reasons.tolist() == [None, None, None, OUT_OF_DISTRIBUTION]
    # a row fused without a modality is the fusion of the other alone, its weight 0 on the one left out
    np.testing.assert_allclose(a.fused.probs[1], softmax(logits["video"][1]), atol=1e-12)
    np.testing.assert_allclose(a.fused.probs[2], softmax(logits["audio"][2]), atol=1e-12)
    assert a.fused.weights["audio"][1] == 0.0
    assert a.fused.weights["video"][2] == 0.0
    # a threshold of 1 never answers: the in-distribution rows abstain for low confidence, the last stays OOD
    strict = decide(params, {}, detectors, logits, features, min_confidence=1.0)
    assert strict.reasons.tolist() == [LOW_CONFIDENCE] * 3 + [OUT_OF_DISTRIBUTION]
    # without detectors, nothing is flagged and every modality is fused
    plain = decide(params, {}, {}, logits)
    assert plain.reasons.tolist() == [None] * 4
    assert np.isnan(plain.scores["audio"]).all()


def test_a_probe_beside_the_knn_flags_what_either_finds_atypical() -> None:
    """knn+probe: each score standardised by its validation scale, the detector's score the lower of the two."""
    e = np.eye(3)
    knn = NearestNeighbours.fit(e[0] + 0.01 * np.random.default_rng(2).normal(size=(30, 3)), 5)
    probe = LinearProbe(np.array([0.0, 0.0, -10.0]), 1.0)  # "in distribution" unless the third feature is large
    scales = ((-0.05, 0.1), (1.0, 0.5))
    det = Detector(knn, -2.0, probe, scales)
    # rows: typical to both; near the bank but with a third feature (the probe's); far from the bank along e1 (kNN's)
    rows = np.stack([e[0], e[0] + 0.2 * e[2], e[1]])
    z_knn = (knn.score(rows) - scales[0][0]) / scales[0][1]
    z_probe = (probe.score(rows) - scales[1][0]) / scales[1][1]
    scores, inside = det(rows)
    np.testing.assert_allclose(scores, np.minimum(z_knn, z_probe))
    assert inside.tolist() == [True, False, False]
    assert z_knn[1] >= -2.0 > z_probe[1]  # the second row is flagged by the probe alone
    assert z_probe[2] >= -2.0 > z_knn[2]  # the third by the kNN alone
    alone = Detector(knn, -0.2)  # without a probe the kNN's raw score decides, as before
    np.testing.assert_array_equal(alone.score(rows), knn.score(rows))
    with pytest.raises(ValueError, match="needs its scales"):
        Detector(knn, -2.0, probe)
    with pytest.raises(ValueError, match="3 dims"):
        Detector(knn, -2.0, LinearProbe(np.ones(4), 0.0), scales)
    with pytest.raises(ValueError, match="positive sd"):
        Detector(knn, -2.0, probe, ((0.0, 0.0), (1.0, 0.5)))
    with pytest.raises(ValueError, match="not finite"):
        LinearProbe(np.array([np.nan, 1.0, 0.0]), 0.0)


def _copy_default(tmp_path: Path) -> Path:
    target = tmp_path / "2"
    shutil.copytree(DEFAULT, target)
    return target


def test_the_default_model_carries_a_detector_per_modality_with_its_features_output() -> None:
    manifest = load_manifest(DEFAULT)
    assert manifest.schema_version == SCHEMA_VERSION
    assert manifest.ood is not None
    detectors = load_detectors(DEFAULT, manifest)
    for m, entry in manifest.modalities.items():
        assert entry.features is not None
        assert detectors[m].knn.bank.shape[1] == entry.features.shape[-1]
        assert detectors[m].threshold == manifest.ood[m].threshold
        assert "val split" in manifest.ood[m].fitted_on  # the threshold's split is named


def test_a_changed_bank_fails_the_hash_check_and_a_bad_one_is_refused_at_load(tmp_path: Path) -> None:
    version = _copy_default(tmp_path)
    manifest = load_manifest(version)
    bank = version / manifest.ood["audio"].bank  # type: ignore[index]
    np.save(bank, np.load(bank)[:-1])
    assert any("ood/audio.npy" in f for f in check_hashes(version, manifest))
    np.save(bank, np.load(bank).astype(np.float64))
    with pytest.raises(ManifestError, match="float32"):
        load_detectors(version, manifest)
    bank.write_bytes(b"\x80\x04not an array")  # a pickle header: never unpickled
    with pytest.raises(ManifestError, match="not a readable"):
        load_detectors(version, manifest)


def _rewrite(version: Path, change: dict) -> None:
    path = version / "manifest.json"
    raw = json.loads(path.read_text())
    for dotted, value in change.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(leaf)
        else:
            node[leaf] = value
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fusion.weights": {"audio": 1.0}}, "no weight for video"),
        ({"fusion.weights.audio": None}, "no weight for audio"),
        ({"fusion.calibration.temperatures.audio": 25.0}, "less than or equal to 20"),
        ({"fusion.calibration.temperatures.audio": 0.01}, "greater than or equal to 0.05"),
        ({"ood.video.threshold": 0.5}, r"kNN threshold lies in \[-2, 0\]"),
        ({"ood.video.detector": "knn+probe"}, "'knn\\+probe' needs probe"),
        ({"ood.video": None}, "video lacks one"),
        ({"modalities.audio.features": None}, "audio lacks one"),
        ({"ood.speech": {"bank": "x", "bank_sha256": "y", "k": 1, "threshold": -1, "tpr": 0.95, "fitted_on": "z"}}, "speech"),
    ],
)
def test_a_manifest_that_would_fail_requests_is_refused_at_load(tmp_path: Path, change: dict, message: str) -> None:
    version = _copy_default(tmp_path)
    _rewrite(version, change)
    with pytest.raises(ManifestError, match=message):
        load_manifest(version)


def test_a_probe_is_read_from_the_manifest_and_a_bad_one_refused(tmp_path: Path) -> None:
    version = _copy_default(tmp_path)
    features = load_manifest(version).modalities["audio"].features
    assert features is not None
    dims = int(features.shape[-1])
    weights = np.random.default_rng(0).normal(size=dims).tolist()
    probe = {"weights": weights, "bias": 0.5, "knn_scale": [-0.27, 0.03], "probe_scale": [3.0, 1.5], "fitted_on": "test"}
    _rewrite(version, {"ood.audio.detector": "knn+probe", "ood.audio.probe": probe, "ood.audio.threshold": -1.5})
    manifest = load_manifest(version)
    det = load_detectors(version, manifest)["audio"]
    assert det.probe is not None
    assert det.scales == ((-0.27, 0.03), (3.0, 1.5))
    np.testing.assert_array_equal(det.probe.weights, weights)
    assert det.threshold == -1.5  # in standard deviations: below a kNN score's range, allowed with a probe
    for change, message in (
        ({"ood.audio.probe.probe_scale": [3.0, 0.0]}, "sd must be positive"),
        ({"ood.audio.probe.bias": float("nan")}, "not finite"),
        ({"ood.audio.detector": "knn"}, "takes no probe"),
    ):
        broken = _copy_default(tmp_path / str(len(message)))
        _rewrite(broken, {"ood.audio.detector": "knn+probe", "ood.audio.probe": probe, "ood.audio.threshold": -1.5})
        _rewrite(broken, change)
        with pytest.raises(ManifestError, match=message):
            load_manifest(broken)
    _rewrite(version, {"ood.audio.probe.weights": weights[:-1]})
    with pytest.raises(ManifestError, match=f"{dims - 1} weights; the audio features have {dims} dims"):
        load_manifest(version)


def test_validate_builds_the_detectors_as_the_service_does(tmp_path: Path) -> None:
    """A manifest whose detector cannot be built (k beyond the bank's rows) loads, but `mla validate` refuses it."""
    from common.validate import InvalidRepositoryError, validate_repository

    version = _copy_default(tmp_path)
    _rewrite(version, {"ood.audio.k": 10**6})
    load_manifest(version)  # the schema alone cannot know the bank's size
    with pytest.raises(InvalidRepositoryError, match="k must lie in"):
        validate_repository(version)


def test_a_v4_manifest_loads_with_no_detector() -> None:
    manifest = load_manifest(ROOT / "models" / "default" / "1")
    assert manifest.schema_version == SCHEMA_VERSION  # migrated on load
    assert manifest.ood is None
    assert all(e.features is None for e in manifest.modalities.values())


def test_what_a_client_sees_names_no_path_on_the_exporting_machine(tmp_path: Path) -> None:
    """/v1/models shows Manifest.public(): its `fitted_on` notes keep what data fitted a value, by the last two parts
    of its path, never the exporting machine's folders (a home directory, a user name)."""
    newest = max((p for p in (ROOT / "models" / "default").iterdir() if p.is_dir()), key=lambda p: int(p.name))
    version = tmp_path / "v"
    shutil.copytree(newest, version)
    raw = json.loads((version / "manifest.json").read_text())
    notes = {
        "val split of csv:/home/alice/data/digits/manifest.csv, n=500 (/srv/x/y/z)": (
            "val split of csv:.../digits/manifest.csv, n=500 (.../y/z)"
        ),
        "a,/home/alice/d/x.csv; ['/opt/m/e.csv']": "a,.../d/x.csv; ['.../m/e.csv']",
        "csv:/a/b.csv+csv:/home/alice/d/y.csv": "csv:.../b.csv+csv:.../d/y.csv",  # two paths stay two
        "file:///root/x/y.csv and /home/alice": "file://.../x/y.csv and .../alice",
        "default/6's bank, 3/4 of ood/audio.npy": "default/6's bank, 3/4 of ood/audio.npy",  # nothing absolute
    }
    for note, expected in notes.items():
        raw["fusion"]["calibration"]["fitted_on"] = note
        (version / "manifest.json").write_text(json.dumps(raw))
        shown = load_manifest(version).public()
        assert shown["fusion"]["calibration"]["fitted_on"] == expected, note  # type: ignore[index]
        assert shown["ood"]["audio"]["bank"] == "ood/audio.npy"  # type: ignore[index]  # a path inside the version stays
    text = json.dumps(load_manifest(newest).public())
    assert not re.search(r"(?<![\w.~-])/(root|home|tmp|srv|work|opt|mnt|Users)/", text), text
