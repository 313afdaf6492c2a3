"""A probe beside the kNN detector: fitted by training.ood, written by `mla export --outliers` and `mla refit-ood`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from common.manifest import load_detectors, load_manifest, manifest_sha256, published
from common.ood import TPR, Detector, LinearProbe, NearestNeighbours
from common.validate import validate_repository
from model_export.errors import ExportError
from model_export.recalibrate import graph_features, refit_ood
from tests.conftest import ROOT
from tests.training.test_outliers import _noise_outliers
from training.data.specs import parse_spec, read_outliers
from training.detectors import PROBE_CS, fit_probe, ood_section

runner = CliRunner()


def test_the_probe_separates_inliers_from_outliers_and_its_c_is_chosen_from_the_grid() -> None:
    rng = np.random.default_rng(0)
    dims = 8
    inliers = rng.normal(size=(400, dims)) + 3 * np.eye(dims)[0]
    outliers = rng.normal(size=(200, dims)) + 3 * np.eye(dims)[1]
    probe, about = fit_probe(inliers, outliers)
    assert any(f"C = {c:g} " in about for c in PROBE_CS)
    new_in = rng.normal(size=(200, dims)) + 3 * np.eye(dims)[0]
    new_out = rng.normal(size=(200, dims)) + 3 * np.eye(dims)[1]
    # two unit-variance blobs 3 sd apart per axis: a linear rule errs on well under 10% of either
    assert (probe.score(new_in) > 0).mean() > 0.9
    assert (probe.score(new_out) < 0).mean() > 0.9
    with pytest.raises(ValueError, match="at least 5 rows"):
        fit_probe(inliers, outliers[:4])


def test_a_section_with_outliers_holds_a_probe_and_its_threshold_keeps_the_tpr() -> None:
    rng = np.random.default_rng(1)
    train = {"audio": rng.normal(size=(300, 6)) + 2, "video": rng.normal(size=(300, 6))}
    val = {"audio": rng.normal(size=(101, 6)) + 2, "video": rng.normal(size=(101, 6))}
    aux = {"audio": rng.normal(size=(100, 6)) - 2}  # none for video: its detector stays a kNN
    section, banks = ood_section(train, val, aux, {"audio": 5, "video": 5}, "bank: test")
    assert section["audio"]["detector"] == "knn+probe"
    assert len(section["audio"]["probe"]["weights"]) == 6
    assert section["video"]["detector"] == "knn"
    assert "probe" not in section["video"]
    for m in ("audio", "video"):
        assert banks[m].dtype == np.float32
        assert np.allclose(np.linalg.norm(banks[m], axis=1), 1, atol=1e-6)
    # the detector as the service rebuilds it from the section (its bank, probe and scales as written) gives the
    # scores the threshold was read from: it keeps the TPR of validation, and flags the outliers' side of the space
    probe = section["audio"]["probe"]
    served = Detector(
        NearestNeighbours(banks["audio"], section["audio"]["k"]),
        section["audio"]["threshold"],
        LinearProbe(np.asarray(probe["weights"]), probe["bias"]),
        (tuple(probe["knn_scale"]), tuple(probe["probe_scale"])),
    )
    assert served(val["audio"])[1].mean() >= TPR
    assert not served(rng.normal(size=(50, 6)) - 2)[1].any()


def test_refit_ood_adds_a_probe_into_a_new_version_and_changes_nothing_else(
    tiny_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outliers = f"csv:{_noise_outliers(tmp_path / 'noise')}"
    root = tmp_path / "tiny"
    shutil.copytree(tiny_repo, root / "1")
    before = load_manifest(root / "1")
    target = refit_ood(root / "1", outliers)
    assert target == root / "2"
    after = load_manifest(target)
    assert after.ood is not None
    assert before.ood is not None
    assert (after.ood["audio"].detector, after.ood["video"].detector) == ("knn+probe", "knn")
    assert outliers in after.ood["audio"].probe.fitted_on  # type: ignore[union-attr]
    assert (after.modalities, after.fusion, after.training, after.export, after.labels) == (
        before.modalities,
        before.fusion,
        before.training,
        before.export,
        before.labels,
    )
    for entry in after.modalities.values():
        assert (target / entry.file).read_bytes() == (root / "1" / entry.file).read_bytes()
    validate_repository(target)
    assert after.name == before.name
    for m in ("audio", "video"):
        assert after.ood[m].k == before.ood[m].k
        assert after.ood[m].bank_sha256 == before.ood[m].bank_sha256  # the same bank, byte for byte
    # video has no outliers: its kNN threshold is fitted again on the graphs' features, and lands where export's
    # (on torch's) did: the two agree to parity (1e-4 of the features' scale), far inside a threshold's own spread
    assert after.ood["video"].threshold == pytest.approx(before.ood["video"].threshold, abs=1e-4)
    detectors = load_detectors(target, after)
    # the threshold keeps 95% of validation through the graphs; new noise, never fitted on, scores below it
    val = graph_features(target, after, parse_spec(before.training.data).split("val"))
    assert detectors["audio"](val["audio"])[1].mean() >= TPR
    fresh = f"csv:{_noise_outliers(tmp_path / 'fresh', n=12, seed=1)}"
    noise = graph_features(target, after, read_outliers(fresh))["audio"]
    assert not detectors["audio"](noise)[1].any()
    assert load_manifest(root / "1") == before  # the version it came from is untouched
    assert published(root)["2"] == manifest_sha256(target)
    assert not list(root.glob(".*"))  # no temporary folder left beside them
    with pytest.raises(ExportError, match="already exists"):
        refit_ood(root / "1", outliers, version="2")
    with pytest.raises(ExportError, match=r"no oof\.json"):
        refit_ood(root / "1", outliers, crossfit=tmp_path)  # refused before any graph runs
    # without outliers a probe is not refitted: said, and the new version's voice is judged by its kNN alone
    with caplog.at_level(logging.WARNING, logger="model_export.recalibrate"):
        plain = refit_ood(root / "2")
    assert "its probe is not refitted" in caplog.text
    assert load_manifest(plain).ood["audio"].detector == "knn"  # type: ignore[index]
    (root / "2" / "audio.onnx").write_bytes(b"changed")
    with pytest.raises(ExportError, match="does not match its manifest"):
        refit_ood(root / "2", outliers)


def test_mla_refit_ood_reports_the_detectors_and_refuses_plainly(tiny_repo: Path, tmp_path: Path) -> None:
    outliers = f"csv:{_noise_outliers(tmp_path / 'noise', n=12)}"
    shutil.copytree(tiny_repo, tmp_path / "tiny" / "1")
    result = runner.invoke(app, ["refit-ood", str(tmp_path / "tiny" / "1"), "--outliers", outliers])
    assert result.exit_code == 0, result.output
    assert "audio: knn+probe" in result.output
    assert "video: knn," in result.output
    assert (tmp_path / "tiny" / "2" / "manifest.json").is_file()
    shutil.copytree(ROOT / "models" / "default" / "1", tmp_path / "old" / "1")  # schema v4: no detectors at all
    result = runner.invoke(app, ["refit-ood", str(tmp_path / "old" / "1"), "--outliers", outliers])
    assert result.exit_code == 2
    assert "no out-of-distribution detectors" in result.output
    result = runner.invoke(app, ["refit-ood", str(tmp_path / "tiny" / "1"), "--outliers", "csv:/nonexistent.csv"])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir() if p.is_dir()) == ["1", "2"]


def test_export_with_outliers_writes_a_probe_for_the_modalities_they_give(tiny_run: Path, tmp_path: Path) -> None:
    from model_export.repository import export_run

    outliers = f"csv:{_noise_outliers(tmp_path / 'noise', n=24)}"
    target = export_run(tiny_run, tmp_path / "models", name="tiny", version="1", outliers=outliers)
    manifest = load_manifest(target)
    assert manifest.ood is not None
    assert (manifest.ood["audio"].detector, manifest.ood["video"].detector) == ("knn+probe", "knn")
    assert manifest.ood["audio"].val["in_distribution"] >= TPR
    validate_repository(target)


def test_an_fp16_export_fits_its_detectors_on_the_features_its_graphs_give(tiny_run: Path, tmp_path: Path) -> None:
    """The service scores the fp16 graphs' features, which differ from torch's by up to the fp16 tolerance: the
    manifest's validation figures are those of the graphs' features, to float rounding, not torch's."""
    from model_export.repository import export_run

    outliers = f"csv:{_noise_outliers(tmp_path / 'noise', n=24)}"
    target = export_run(tiny_run, tmp_path / "models", name="tiny", version="1", fp16=True, outliers=outliers)
    manifest = load_manifest(target)
    assert manifest.export.precision == "fp16"
    assert manifest.ood is not None
    detectors = load_detectors(target, manifest)
    val = graph_features(target, manifest, parse_spec(manifest.training.data).split("val"))
    for m in ("audio", "video"):
        scores = detectors[m].score(val[m])
        assert float(scores.mean()) == pytest.approx(manifest.ood[m].val["mean"], abs=1e-9), m
        assert float(np.quantile(scores, 0.5)) == pytest.approx(manifest.ood[m].val["q0.5"], abs=1e-9), m
