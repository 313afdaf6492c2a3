"""The OOD benchmark (benchmarks/ood): its sets are reproducible and kept apart, its metrics are right, its pipeline runs."""

from __future__ import annotations

import hashlib
import json
import shutil
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


def test_the_same_seed_builds_the_same_bytes(small_sets: tuple[Path, Path]) -> None:
    first, second = small_sets
    a, b = _digests(first), _digests(second)
    assert len(a) == PER_KIND * len(sets.KINDS)
    assert a == b
    assert first.read_text() == second.read_text()


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

    model = Model(MODEL)
    for item in sets.read_items(small_sets[0]):
        entry = model.manifest.modalities[item.modality]
        array = model.decode(item.modality, item.path)
        assert array.shape == tuple(entry.input.shape[1:]), item
        assert array.dtype == np.dtype(entry.input.dtype), item
        if item.modality == "audio":
            assert np.isfinite(array).all(), item
            assert np.abs(array).max() <= 1.0, item


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
