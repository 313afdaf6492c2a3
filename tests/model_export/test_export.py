"""Export: parity with torch in fp32 and fp16, the manifest, `mla validate`, and the errors."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from common.fusion import ConfidenceMap
from common.manifest import SCHEMA_VERSION, Manifest, ManifestError, load_manifest, manifest_sha256, published
from common.modalities.audio import AudioEntry
from common.parity import FP32, compare
from common.validate import InvalidRepositoryError, validate_repository
from model_export.onnx_graph import CUDA_OPS, ExportError
from model_export.repository import calibrate_run, export_run, graph_predictions, recalibrate
from training.calibrate import GATE_MARGIN, MIXTURE_SHARE, SERVED_RULE, risk_upper_bound
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint

runner = CliRunner()


def test_fp32_export_matches_torch_and_validates(tiny_repo: Path, tiny_run: Path) -> None:
    manifest = load_manifest(tiny_repo)
    assert manifest.name == "tiny"
    assert manifest.version == "1"
    assert manifest.export.precision == "fp32"
    assert set(manifest.modalities) == {"audio", "video"}
    for m, parity in manifest.export.parity.items():
        assert parity.n > 1, m
        assert parity.max_rel_logit_diff is not None
        assert parity.max_rel_logit_diff <= FP32.max_rel_logit_diff, m  # type: ignore[operator]
        assert parity.tolerance == FP32.as_dict(), m
    audio, video = manifest.modalities["audio"], manifest.modalities["video"]
    assert audio.kind == "audio"
    assert audio.input.dtype == "float32"
    assert audio.input.shape[0] == "batch"
    assert video.kind == "video"
    assert video.input.dtype == "uint8"
    assert video.input.shape[-1] == 3
    # Independently of the exporter's own check: fresh inputs at a batch size it never saw.
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    rng = np.random.default_rng(0)
    waves = (0.2 * rng.normal(size=(3, *map(int, audio.input.shape[1:])))).astype(np.float32)
    frames = rng.integers(0, 256, (3, *map(int, video.input.shape[1:])), dtype=np.uint8)
    for entry, x in ((audio, waves), (video, frames)):
        sess = ort.InferenceSession(str(tiny_repo / entry.file), providers=["CPUExecutionProvider"])
        got = sess.run(None, {entry.input.name: x})[0]
        with torch.no_grad():
            ref = model.head(entry.kind)(model.encoders[entry.kind](torch.from_numpy(x))).numpy()
        _, failures = compare(entry.file, {"logits": ref}, {"logits": got}, FP32)
        assert not failures
    assert validate_repository(tiny_repo)["parity"]["audio"]["max_rel_logit_diff"] <= 1e-4


def test_the_audio_graph_gives_the_same_logits_at_any_input_level(tiny_repo: Path) -> None:
    # The level step is inside the graph: a quiet clip (peak 0.25) made 64 times quieter or 2 times louder (powers
    # of two, which scale float32 exactly; tests/training/test_level.py says why the result is then bit-identical)
    # gives the same logits; at full scale it passes unchanged, so its logits differ.
    audio = load_manifest(tiny_repo).modalities["audio"]
    assert isinstance(audio, AudioEntry)
    sess = ort.InferenceSession(str(tiny_repo / audio.file), providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(1).normal(size=(2, audio.clip_samples))
    waves = (0.25 * noise / np.abs(noise).max(axis=1, keepdims=True)).astype(np.float32)
    ref = sess.run(None, {audio.input.name: waves})[0]
    for level in (2.0**-6, 2.0):
        assert np.array_equal(sess.run(None, {audio.input.name: waves * np.float32(level)})[0], ref), level
    assert not np.allclose(sess.run(None, {audio.input.name: waves * np.float32(4.0)})[0], ref)
    graph = onnx.load(str(tiny_repo / audio.file))
    assert "ReduceMax" in {n.op_type for n in graph.graph.node}  # the peak is taken in the graph, not by the service


def test_fp16_export_parity(tiny_run: Path, tmp_path: Path) -> None:
    repo = export_run(tiny_run, tmp_path, name="tiny", fp16=True)
    manifest = load_manifest(repo)
    assert manifest.export.precision == "fp16"
    assert repo.name == "1"
    for m, parity in manifest.export.parity.items():
        assert parity.max_prob_diff <= 1e-2, m
    graph = onnx.load(str(repo / "audio.onnx"))
    types = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}
    assert types == {"waveform": onnx.TensorProto.FLOAT}  # inputs stay float32 ...
    inits = {t.data_type for t in graph.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in inits  # ... while the trunk's weights are fp16
    validate_repository(repo)


def test_graphs_hold_only_ops_with_cuda_kernels(tiny_repo: Path) -> None:
    for name in ("audio.onnx", "video.onnx"):
        ops = {n.op_type for n in onnx.load(str(tiny_repo / name)).graph.node}
        assert not ops & {"STFT", "DFT", "MelWeightMatrix", "HannWindow"}, name
        assert ops <= CUDA_OPS, (name, ops - CUDA_OPS)


def test_changed_byte_fails_validate_naming_the_file(tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    data = bytearray((repo / "video.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (repo / "video.onnx").write_bytes(bytes(data))
    result = runner.invoke(app, ["validate", str(repo)])
    assert result.exit_code == 1
    assert "video.onnx (video) does not match its sha256" in result.stderr
    assert "audio.onnx" not in result.stderr
    ok = runner.invoke(app, ["validate", str(tiny_repo)])
    assert ok.exit_code == 0, ok.output


def test_manifest_schema_failures(tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    doc = json.loads((repo / "manifest.json").read_text())
    doc["schema_version"] = 99
    del doc["labels"]
    (repo / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"schema_version.*labels|labels.*schema_version"):
        load_manifest(repo)
    with pytest.raises(InvalidRepositoryError, match="fails the manifest schema"):
        validate_repository(repo)
    (repo / "manifest.json").unlink()
    with pytest.raises(InvalidRepositoryError, match=r"no manifest\.json"):
        validate_repository(repo)
    # The manifest round-trips through its own model.
    original = load_manifest(tiny_repo)
    assert Manifest.model_validate_json(original.model_dump_json()) == original


def test_export_errors(tiny_run: Path, tiny_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="already exists"):
        export_run(tiny_run, tiny_repo.parent.parent, name="tiny", version="1")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_run(tmp_path / "nothing", tmp_path)
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        export_run(bad, tmp_path)
    ckpt = load_checkpoint(tiny_run)
    ckpt["model_config"]["encoder"] = "transformer9000"
    odd = tmp_path / "odd"
    odd.mkdir()
    torch.save(ckpt, odd / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="unknown encoder 'transformer9000'"):
        export_run(odd, tmp_path)
    with pytest.raises(ExportError, match="model name"):
        export_run(tiny_run, tmp_path, name="../escape")
    result = runner.invoke(app, ["export", str(odd), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown encoder" in result.stderr
    assert "Traceback" not in result.output


def test_export_writes_the_calibration_fitted_on_validation(tiny_run: Path, tiny_repo: Path) -> None:
    fusion = load_manifest(tiny_repo).fusion
    assert fusion.rule == "entropy"  # as the fixture asked
    cal = fusion.calibration
    assert set(cal.temperatures) == {"audio", "video"}
    assert set(cal.fused_temperatures) == {"audio+video"}
    assert "val split" in cal.fitted_on
    # what it writes is what fitting on the validation split gives, and it does not make validation worse
    again = calibrate_run(tiny_run, rule="entropy")
    assert again["calibration"]["temperatures"] == pytest.approx(cal.temperatures)
    for sub, fig in cal.val.items():
        assert fig["nll"] <= fig["nll_raw"] + 1e-9, sub
    a = fusion.abstention
    assert a.target_risk == 0.05
    assert set(a.min_confidence) == {"audio", "video", "audio+video"}  # one threshold per set of modalities sent
    for sub, t in a.min_confidence.items():
        assert 0.0 <= t <= 1.0, sub
        assert a.val[sub]["risk_bound"] <= a.target_risk or t == 1.0, sub  # within target, or answers only certainties
        assert a.val[sub]["risk"] <= a.val[sub]["risk_bound"], sub


def test_a_schema_v1_manifest_is_served_uncalibrated(tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "v1"
    shutil.copytree(tiny_repo, repo)
    doc = json.loads((repo / "manifest.json").read_text())
    doc["schema_version"] = 1
    doc["fusion"] = {"rule": "entropy", "combine": "probabilities"}  # what v1 wrote
    (repo / "manifest.json").write_text(json.dumps(doc))
    migrated = load_manifest(repo)
    assert migrated.schema_version == SCHEMA_VERSION == 7
    assert migrated.fusion.calibration.temperatures == {"audio": 1.0, "video": 1.0}
    assert migrated.fusion.calibration.fused_temperatures == {}
    assert migrated.fusion.abstention.min_confidence == {}
    assert migrated.fusion.abstention.threshold("audio+video") == 0.0  # never abstains
    validate_repository(repo)  # the graphs and parity samples are untouched


def test_confidence_maps_are_read_from_the_manifest_and_bad_ones_refused(tiny_run: Path, tmp_path: Path) -> None:
    repo = export_run(tiny_run, tmp_path, name="maps")
    doc = json.loads((repo / "manifest.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION

    def loaded(change: Callable[[dict[str, Any]], None]) -> Manifest:
        changed = json.loads(json.dumps(doc))
        change(changed)
        (repo / "manifest.json").write_text(json.dumps(changed))
        return load_manifest(repo)

    def put(maps: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
        return lambda d: d["fusion"]["calibration"].update(confidence_maps=maps)

    manifest = loaded(put({"audio": {"slope": 0.5, "offset": 0.25, "lowest": 0.2}}))
    maps = manifest.fusion.params().confidence_maps
    assert maps == {"audio": ConfidenceMap(0.5, 0.25, 0.2)}
    for maps_, message in (
        ({"audio": {"slope": 0.0, "offset": 0.0, "lowest": 0.2}}, "greater than 0"),
        ({"audio": {"slope": 1.0, "offset": float("nan"), "lowest": 0.2}}, "finite"),
        ({"audio": {"slope": 1.0, "offset": 0.0, "lowest": 1.0}}, "less than 1"),
        ({"smell": {"slope": 1.0, "offset": 0.0, "lowest": 0.2}}, "not a set of its modalities"),
        ({"video+audio": {"slope": 1.0, "offset": 0.0, "lowest": 0.2}}, "alphabetical"),
        ({"audio": {"slope": 1.0, "lowest": 0.2}}, "offset"),
        ({"audio": {"slope": 1.0, "offset": 0.0}}, "lowest"),
    ):
        with pytest.raises(ManifestError, match=message):
            loaded(put(maps_))

    # a v3 manifest, from before the maps, loads and serves without any
    def as_v3(d: dict[str, Any]) -> None:
        d["schema_version"] = 3
        d["fusion"]["calibration"].pop("confidence_maps", None)

    v3 = loaded(as_v3)
    assert v3.schema_version == SCHEMA_VERSION
    assert v3.fusion.params().confidence_maps is None


def test_calibrate_refits_an_export_from_its_graphs_into_the_next_version(tiny_repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    shutil.copytree(tiny_repo, root / "1")
    before = load_manifest(root / "1")
    target = recalibrate(root / "1")
    assert target == root / "2"
    after = load_manifest(target)
    assert after.version == "2"
    assert after.fusion.rule == before.fusion.rule
    assert "through the exported graphs" in after.fusion.calibration.fitted_on
    # the same graphs, byte for byte, still passing their parity check; everything but the fusion section kept
    for entry in after.modalities.values():
        assert (target / entry.file).read_bytes() == (root / "1" / entry.file).read_bytes()
    validate_repository(target)
    assert (after.modalities, after.training, after.export, after.labels) == (
        before.modalities,
        before.training,
        before.export,
        before.labels,
    )
    # the graphs give torch's logits to within parity, so the fit lands where export's did
    for m, t in before.fusion.calibration.temperatures.items():
        assert after.fusion.calibration.temperatures[m] == pytest.approx(t, rel=1e-3), m
    assert after.fusion.abstention.min_confidence.keys() == before.fusion.abstention.min_confidence.keys()
    assert load_manifest(root / "1") == before  # the version it came from is untouched
    assert published(root)["2"] == manifest_sha256(target)  # published as it was written
    # under another rule: again a new version, never a rewrite
    assert recalibrate(root / "1", rule="gated_loglinear") == root / "3"
    assert (load_manifest(root / "3").version, load_manifest(root / "3").fusion.rule) == ("3", "gated_loglinear")
    assert load_manifest(root / "1") == before
    assert not list(root.glob(".*"))  # no temporary file or folder left beside them
    with pytest.raises(ExportError, match="already exists"):
        recalibrate(root / "1", version="2")
    shutil.rmtree(root / "3")  # a published version deleted: its number is never given again
    with pytest.raises(ExportError, match="published before"):
        recalibrate(root / "1", version="3")
    assert recalibrate(root / "1") == root / "4"
    (root / "2" / "audio.onnx").write_bytes(b"not the graph the manifest names")
    with pytest.raises(ExportError, match="does not match its manifest"):
        recalibrate(root / "2")


def test_mla_calibrate_reports_what_it_fitted_and_refuses_plainly(tiny_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_repo, tmp_path / "tiny" / "1")
    result = runner.invoke(app, ["calibrate", str(tmp_path / "tiny" / "1")])
    assert result.exit_code == 0, result.stderr
    assert "calibrated" in result.stderr
    assert "temperatures audio" in result.stderr
    assert (tmp_path / "tiny" / "2" / "manifest.json").is_file()
    for args, message in (
        ([str(tmp_path / "nothing")], "no manifest.json"),
        ([str(tmp_path / "tiny" / "1"), "--in-place"], "No such option"),
        ([str(tmp_path / "tiny" / "1"), "--fusion", "median"], "unknown fusion rule"),
        ([str(tmp_path / "tiny" / "1"), "--target-risk", "0"], "target risk must be in (0, 1)"),
        ([str(tmp_path / "tiny" / "1"), "--risk-confidence", "1"], "confidence must be in (0, 1)"),
    ):
        result = runner.invoke(app, ["calibrate", *args])
        assert result.exit_code == 2, args
        assert message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "tiny" / "3").exists()  # a refused target writes nothing


def _stand_in_folds(version: Path, folder: Path) -> Path:
    """A training.crossfit folder's oof.npz made of the graphs' own predictions on the validation split, as if from
    two more speakers (anna, ben): what pooling and leaving one speaker out need, without training folds."""
    manifest = load_manifest(version)
    val = graph_predictions(version, manifest, manifest.training.data, "val")
    folder.mkdir()
    arrays: dict[str, Any] = {f"logits_{m}": z for m, z in val.logits.items()}
    arrays |= {f"present_{m}": p for m, p in val.present.items()}
    arrays |= {"labels": val.labels, "speaker": np.where(np.arange(len(val.labels)) % 2 == 0, "anna", "ben")}
    np.savez(folder / "oof.npz", allow_pickle=False, **arrays)
    return folder


def test_export_with_folds_decides_each_temperature_on_held_out_speakers(tiny_run: Path, tiny_repo: Path, tmp_path: Path) -> None:
    section = calibrate_run(tiny_run, rule="loglinear", crossfit=_stand_in_folds(tiny_repo, tmp_path / "folds"))
    cal = section["calibration"]
    assert "pooled with out-of-fold predictions of 2 training speakers (anna, ben)" in cal["fitted_on"]
    assert set(cal["temperature_choice"]) == {"audio", "video"}
    for m, choice in cal["temperature_choice"].items():
        assert choice["groups"] == 3
        assert choice["kept"] or cal["temperatures"][m] == 1.0, m
    plain = calibrate_run(tiny_run, rule="loglinear")  # no folds: validation alone, every temperature fitted
    assert plain["calibration"]["temperature_choice"] == {}
    for sub, fig in section["abstention"]["val"].items():
        assert fig["n"] == 2 * plain["abstention"]["val"][sub]["n"], sub  # validation and its stand-in folds


def test_mla_calibrate_pools_out_of_fold_predictions_and_keeps_a_temperature_only_where_it_pays(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """`--crossfit`: a training.crossfit folder's oof.npz pooled with validation, each speaker a group left out in
    turn; the choice and its intervals in the manifest, and a temperature not kept written as exactly 1."""
    root = tmp_path / "tiny"
    shutil.copytree(tiny_repo, root / "1")
    manifest = load_manifest(root / "1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"no oof\.npz"):
        recalibrate(root / "1", crossfit=tmp_path / "empty")
    folds = _stand_in_folds(root / "1", tmp_path / "folds")
    result = runner.invoke(app, ["calibrate", str(root / "1"), "--crossfit", str(folds)])
    assert result.exit_code == 0, result.stderr
    assert "temperature" in result.stderr
    assert "leaving each of 3 speakers out" in result.stderr
    cal = load_manifest(root / "2").fusion.calibration
    assert "pooled with out-of-fold predictions of 2 training speakers (anna, ben)" in cal.fitted_on
    assert set(cal.temperature_choice) == set(manifest.modalities)
    for m, choice in cal.temperature_choice.items():
        assert choice.groups == 3
        assert choice.kept == any(low > 0 for _, low, _ in choice.nll_change.values())
        if not choice.kept:
            assert cal.temperatures[m] == 1.0


def test_the_abstention_target_is_the_operators_to_choose(tiny_repo: Path, tmp_path: Path) -> None:
    import inspect

    from cli.main import calibrate, export_model
    from training.calibrate import CONFIDENCE, TARGET_RISK

    # the CLI spells its defaults out (it imports no torch to start); they are the library's
    for command in (export_model, calibrate):
        params = inspect.signature(command).parameters
        assert (params["target_risk"].default, params["risk_confidence"].default) == (TARGET_RISK, CONFIDENCE)
    shutil.copytree(tiny_repo, tmp_path / "tiny" / "1")
    default = load_manifest(tiny_repo).fusion.abstention
    assert (default.target_risk, default.confidence) == (TARGET_RISK, CONFIDENCE)
    args = ["calibrate", str(tmp_path / "tiny" / "1"), "--target-risk", "0.2", "--risk-confidence", "0.75"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    looser = load_manifest(tmp_path / "tiny" / "2").fusion.abstention
    assert (looser.target_risk, looser.confidence) == (0.2, 0.75)
    for sub, fig in looser.val.items():
        tests = int(fig["tests"])
        assert f"one of {tests} tests, each at {100 * (1 - 0.25 / tests):.1f}%" in result.stderr
        assert fig["risk_bound"] <= 0.2 or looser.min_confidence[sub] == 1.0, sub
        if looser.min_confidence[sub] < 1.0:  # the bound is the one test's, at 1 - (1 - 0.75) / tests
            answered = round(fig["coverage"] * fig["n"])
            bound = risk_upper_bound(round(fig["risk"] * answered), answered, 1 - 0.25 / tests)
            assert fig["risk_bound"] == pytest.approx(bound), sub


def test_export_serves_the_product_and_a_detector_per_modality_by_default(tiny_run: Path, tmp_path: Path) -> None:
    repo = export_run(tiny_run, tmp_path, name="tiny")
    manifest = load_manifest(repo)
    fusion = manifest.fusion
    assert fusion.rule == SERVED_RULE == "loglinear"  # the feature detector replaces the logit gate (issue 27)
    assert manifest.ood is not None
    assert set(manifest.ood) == set(manifest.modalities)
    for m, entry in manifest.modalities.items():
        assert entry.features is not None
        assert manifest.export.parity[m].max_rel_feature_diff is not None  # the features were checked against torch
        assert manifest.ood[m].val["in_distribution"] >= manifest.ood[m].tpr  # the threshold keeps its share of val
    assert fusion.weights is not None
    assert sum(fusion.weights.values()) == pytest.approx(1.0)
    result = runner.invoke(app, ["export", str(tiny_run), "--out", str(tmp_path), "--fusion", "median"])
    assert result.exit_code == 2
    assert "unknown fusion rule 'median'" in result.stderr


def test_a_gated_export_carries_its_typicality_and_bad_ones_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    repo = export_run(tiny_run, tmp_path, name="gated", rule="gated_loglinear")
    manifest = load_manifest(repo)
    fusion = manifest.fusion
    assert fusion.rule == "gated_loglinear"
    assert fusion.typicality is not None
    assert set(fusion.typicality) == {"audio", "video"}
    k = len(manifest.labels)
    for m, entry in fusion.typicality.items():
        assert len(entry.means) == k, m
        assert all(len(r) == k for r in entry.means), m
        # the threshold sits at the margin above validation's 99th percentile, so validation keeps its full weight
        assert entry.threshold == pytest.approx(GATE_MARGIN * entry.val_quantiles["0.99"]), m
        assert entry.val_quantiles["0.5"] <= entry.val_quantiles["0.99"] < entry.threshold, m
    params = fusion.params()
    assert params.typicality is not None
    np.testing.assert_array_equal(params.typicality["audio"].means, np.asarray(fusion.typicality["audio"].means))
    # the blend with the mixture is written and served as fitted
    assert fusion.mixture_share == MIXTURE_SHARE
    assert params.mixture_share == MIXTURE_SHARE
    doc = json.loads((repo / "manifest.json").read_text())

    def refused(change: Callable[[dict[str, Any]], None], message: str) -> None:
        bad = json.loads(json.dumps(doc))
        change(bad)
        (repo / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(ManifestError, match=message):
            load_manifest(repo)

    refused(lambda d: d["fusion"].pop("typicality"), "needs a typicality")
    refused(lambda d: d["fusion"]["typicality"]["audio"]["means"][0].pop(), r"\[classes\]\[classes\]")
    refused(lambda d: d["fusion"]["typicality"]["audio"].update(threshold=0), "greater than 0")
    refused(lambda d: d["fusion"]["typicality"].update(smell=d["fusion"]["typicality"]["audio"]), "not one of its modalities")
    refused(lambda d: d["fusion"].update(mixture_share=1.0), "less than 1")
    refused(lambda d: d["fusion"].update(mixture_share=-0.1), "greater than or equal to 0")
    refused(lambda d: d["fusion"].update(rule="entropy", weights=None), "has none")
    # a v2 manifest (no typicality section, no confidence maps) loads as the current schema, unchanged otherwise
    v2 = json.loads(json.dumps(doc))
    v2["schema_version"] = 2
    v2["fusion"]["rule"] = "loglinear"
    v2["fusion"].pop("typicality")
    v2["fusion"].pop("mixture_share")
    v2["fusion"]["calibration"].pop("confidence_maps", None)
    (repo / "manifest.json").write_text(json.dumps(v2))
    older = load_manifest(repo)
    assert older.schema_version == SCHEMA_VERSION
    assert older.fusion.calibration.confidence_maps == {}
    assert older.fusion.params().confidence_maps is None
    assert older.fusion.typicality is None
    assert older.fusion.params().weights == fusion.weights
    assert older.fusion.params().mixture_share == 0.0  # the product alone, as it served
