"""End to end against a real uvicorn server: real media, every subset of modalities, fusion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.fusion import GATED_RULES, FusionParams, log_softmax, softmax
from common.hashing import sha256_file
from common.manifest import Manifest, load_manifest
from common.media import AudioSpec, VideoSpec, load_audio, load_video
from common.media_types import NO_LIMITS
from common.modalities import decode, spec_of
from common.parity import FP32
from service.schemas import PredictResponse
from tests.conftest import ROOT, shared_data
from tests.servers import Server
from training.data.demo import synth_video
from training.data.writers import write_audio, write_video

SUBSETS = [("audio",), ("video",), ("audio", "video")]


def check_answer(body: dict, sent: set[str], manifest: Manifest) -> None:
    """Shape of the answer, and the fused part equal to the manifest's calibrated rule on the parts."""
    labels, fusion = manifest.labels, manifest.fusion
    PredictResponse.model_validate(body, strict=True)  # the documented shape (the route no longer validates it)
    assert body["fusion"] == fusion.rule
    assert set(body["modalities"]) == sent
    assert body["label"] in labels
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    # the fused set: the modalities sent that are in distribution, or all of them when none is (then abstained)
    flags = {m: body["modalities"][m]["in_distribution"] for m in sent}
    if manifest.ood is None:
        assert all(f is None for f in flags.values())
    else:
        for m in sent:
            part = body["modalities"][m]
            assert part["ood_threshold"] == manifest.ood[m].threshold
            assert part["in_distribution"] == (part["ood_score"] >= part["ood_threshold"])
    kept = sorted(m for m in sent if flags[m] is not False)
    names = kept or sorted(sent)
    assert body["fused_modalities"] == names
    for m in sent:
        assert body["modalities"][m]["fused"] == (m in names)
        if m not in names:
            assert body["modalities"][m]["weight"] == 0.0
    probs = {m: np.array([[body["modalities"][m]["probabilities"][c] for c in labels]]) for m in names}
    for m in sent:  # each modality's probabilities come calibrated with the manifest's temperature
        assert body["modalities"][m]["temperature"] == fusion.calibration.temperatures[m]
    subset = "+".join(names)
    assert body["fused_temperature"] == fusion.calibration.fused_temperatures.get(subset, 1.0)
    # log p is a logit vector whose softmax is p: the same rule (already calibrated per modality) on it
    if fusion.rule in GATED_RULES:
        # the gate acts on the raw logits, which the answer does not carry: rebuild the product from the
        # typicality it reports, log q = sum_m w_m g_m log p_m, then the fused temperature
        assert fusion.weights is not None
        w = {m: fusion.weights[m] / sum(fusion.weights[k] for k in names) for m in names}
        gates = {m: body["modalities"][m]["typicality"] for m in names}
        assert all(0.0 < g <= 1.0 for g in gates.values()), gates
        # and blend it with the mixture, each modality's share its gate's: (1 - s) log q + s log(sum_m g_m p_m / sum g)
        s = fusion.mixture_share
        assert body["mixture_share"] == s
        log_q = log_softmax(sum(w[m] * gates[m] * np.log(probs[m]) for m in names))
        g_total = sum(gates[m] for m in names)
        log_q = (1 - s) * log_q + s * np.log(sum(gates[m] * probs[m] for m in names) / g_total)
        t_s = fusion.calibration.fused_temperatures.get(subset, 1.0) if len(names) > 1 else 1.0
        expect = softmax(log_q / t_s)
        total = sum(w[m] * gates[m] for m in names)
        shares = {m: np.array([(1 - s) * w[m] * gates[m] / total + s * gates[m] / g_total]) for m in names}
    else:
        for m in names:
            assert body["modalities"][m]["typicality"] is None
        refit = FusionParams(fusion.rule, fusion.weights, None, fusion.calibration.fused_temperatures)
        fused = refit({m: np.log(p) for m, p in probs.items()})
        expect, shares = fused.probs, fused.weights
    # last, the top-label map of this set of modalities, where the manifest has one
    cmap = fusion.calibration.confidence_maps.get(subset)
    if cmap is None:
        assert body["confidence_map"] is None
    else:
        assert body["confidence_map"] == {"slope": cmap.slope, "offset": cmap.offset, "lowest": cmap.lowest}
        expect = cmap.confidence_map()(expect)
    np.testing.assert_allclose([body["probabilities"][c] for c in labels], expect[0], atol=1e-9)
    for m in names:
        assert body["modalities"][m]["weight"] == pytest.approx(shares[m][0], abs=1e-9)
        p = probs[m][0]
        assert body["modalities"][m]["entropy"] == pytest.approx(float(-(p * np.log(np.clip(p, 1e-12, 1))).sum()), abs=1e-6)
        assert body["modalities"][m]["label"] == labels[int(p.argmax())]
    assert body["label"] == labels[int(expect[0].argmax())]
    assert body["confidence"] == pytest.approx(float(expect[0].max()))
    assert body["min_confidence"] == fusion.abstention.threshold(subset)
    if fusion.conformal is None or not kept or subset not in fusion.conformal.qhat:
        assert body["prediction_set"] is None
    else:
        q = fusion.conformal.qhat[subset]
        inside = [c for c in labels if body["probabilities"][c] >= 1.0 - q or c == body["label"]]
        assert body["prediction_set"] == inside
    if not kept:
        assert body["abstained"]
        assert body["abstain_reason"] == "out_of_distribution"
    else:
        low = body["confidence"] < body["min_confidence"] or body["min_confidence"] >= 1.0
        assert body["abstained"] == low
        assert body["abstain_reason"] == ("low_confidence" if low else None)


@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_every_subset_of_demo_media(
    server: Server, tiny_repo: Path, clean_train_row: dict[str, str], subset: tuple[str, ...]
) -> None:
    files = {m: Path(clean_train_row[m]) for m in subset}
    r = server.post(files)
    assert r.status_code == 200, r.text
    body = r.json()
    check_answer(body, set(subset), load_manifest(tiny_repo))
    # the manifest's hash, which names every file of the version that answered
    assert body["model"] == {"name": "tiny", "version": "1", "manifest_sha256": sha256_file(tiny_repo / "manifest.json")}
    assert r.headers["x-request-id"]
    assert server.tmp_is_empty()


def test_two_files_with_one_name_stay_apart(server: Server, clean_train_row: dict[str, str]) -> None:
    """Uploads lie flat in the request's folder: a second file with the first one's name must get
    a place of its own, not overwrite it (the audio would then be decoded from the mp4)."""
    audio, video = Path(clean_train_row["audio"]), Path(clean_train_row["video"])
    named = server.post({"audio": audio, "video": video})
    same = server.post({"audio": ("clip", audio.read_bytes()), "video": ("clip", video.read_bytes())})
    assert named.status_code == same.status_code == 200, same.text
    assert same.json()["modalities"] == named.json()["modalities"]
    assert same.json()["probabilities"] == named.json()["probabilities"]
    assert server.tmp_is_empty()


def test_service_runs_the_exported_graph_on_the_shared_decoder(
    server: Server, tiny_repo: Path, clean_train_row: dict[str, str]
) -> None:
    """Per-modality probabilities equal the ONNX graph run here on common.media's decoding."""
    manifest = load_manifest(tiny_repo)
    body = server.post({"audio": Path(clean_train_row["audio"]), "video": Path(clean_train_row["video"])}).json()
    inputs = {m: decode(m, Path(clean_train_row[m]), spec_of(manifest.modalities[m]), NO_LIMITS) for m in ("audio", "video")}
    for m, entry in manifest.modalities.items():
        sess = ort.InferenceSession(str(tiny_repo / entry.file), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {entry.input.name: inputs[m][None]})[0][0]
        scaled = logits / manifest.fusion.calibration.temperatures[m]  # calibrated as the manifest says
        p = np.exp(scaled - scaled.max())
        p /= p.sum()
        # Same graph, same input; only ORT's kernel choice may differ (thread count, batch): the
        # fp32 parity bound on the logits, and softmax moves no probability by more than that.
        bound = FP32.max_rel_logit_diff * max(1.0, float(np.abs(logits).max()))  # type: ignore[operator]
        np.testing.assert_allclose([body["modalities"][m]["probabilities"][c] for c in manifest.labels], p, atol=bound)


def test_the_trained_class_wins_on_a_training_clip(server: Server, clean_train_row: dict[str, str]) -> None:
    body = server.post({"audio": Path(clean_train_row["audio"]), "video": Path(clean_train_row["video"])}).json()
    assert body["label"] == clean_train_row["label"]


def test_noise_only_video_gets_a_low_weight(server: Server, clean_train_row: dict[str, str], tmp_path: Path) -> None:
    # Noise as the demo's corruption recipe makes it: frames with no digit in them.
    noise = tmp_path / "noise.mp4"
    write_video(noise, synth_video(np.zeros((8, 8)), np.random.default_rng(0), corrupt=True), fps=16)
    audio = Path(clean_train_row["audio"])
    with_noise = server.post({"audio": audio, "video": noise}).json()
    with_clean = server.post({"audio": audio, "video": Path(clean_train_row["video"])}).json()
    assert with_noise["modalities"]["video"]["weight"] < 0.5
    assert with_noise["modalities"]["video"]["weight"] < with_clean["modalities"]["video"]["weight"]
    assert with_noise["modalities"]["video"]["entropy"] > with_clean["modalities"]["video"]["entropy"]
    assert with_noise["label"] == clean_train_row["label"]  # the confident audio carries the answer


@pytest.fixture(scope="module")
def generated_media(tmp_path_factory: pytest.TempPathFactory, clean_train_row: dict[str, str]) -> dict[str, Path]:
    """The same clip in several real containers and codecs."""
    d = tmp_path_factory.mktemp("media")
    wave = load_audio(clean_train_row["audio"], AudioSpec(16_000, 16_000))
    frames = load_video(clean_train_row["video"], VideoSpec(16, 64, 64))
    out = {
        "wav": d / "a.wav",
        "flac": d / "a.flac",
        "mp3": d / "a.mp3",
        "mp4": d / "v.mp4",
        "mkv": d / "v.mkv",
        "flv": d / "v.flv",
    }
    write_audio(out["wav"], wave, 16_000)
    write_audio(out["flac"], wave, 16_000, codec="flac")
    write_audio(out["mp3"], wave, 16_000, codec="libmp3lame")
    write_video(out["mp4"], frames, 16, codec="libx264", audio=wave, audio_codec="aac")
    write_video(out["mkv"], frames, 16, codec="libvpx", audio=wave, sample_rate=48_000, audio_codec="libopus")
    write_video(out["flv"], frames, 16, codec="flv", fmt="flv", audio=wave, sample_rate=22_050, audio_codec="libmp3lame")
    return out


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3"])
def test_audio_containers(server: Server, tiny_repo: Path, generated_media: dict[str, Path], kind: str) -> None:
    r = server.post({"audio": generated_media[kind]})
    assert r.status_code == 200, r.text
    check_answer(r.json(), {"audio"}, load_manifest(tiny_repo))


@pytest.mark.parametrize("kind", ["mp4", "mkv", "flv"])
def test_video_containers_with_their_audio_track(
    server: Server, tiny_repo: Path, generated_media: dict[str, Path], kind: str
) -> None:
    manifest = load_manifest(tiny_repo)
    r = server.post({"video": generated_media[kind]})
    assert r.status_code == 200, r.text
    check_answer(r.json(), {"video"}, manifest)
    r = server.post({"video": generated_media[kind]}, data={"use_video_audio": "true"})
    assert r.status_code == 200, r.text
    check_answer(r.json(), {"audio", "video"}, manifest)
    assert server.tmp_is_empty()


def test_grid_clips_and_fsdd_recordings(server: Server, tiny_repo: Path) -> None:
    manifest = load_manifest(tiny_repo)
    clips = sorted(shared_data("grid").glob("*.mpg"))[:3]
    recordings = sorted((shared_data("fsdd") / "recordings").glob("*.wav"))[:3]
    for clip, rec in zip(clips, recordings, strict=True):
        for files, data, sent in (
            ({"video": clip}, {"use_video_audio": "true"}, {"audio", "video"}),
            ({"audio": rec}, None, {"audio"}),
            ({"audio": rec, "video": clip}, None, {"audio", "video"}),
        ):
            r = server.post(files, data=data)
            assert r.status_code == 200, (clip.name, rec.name, r.text)
            check_answer(r.json(), sent, manifest)
    assert server.tmp_is_empty()


def test_min_confidence_overrides_the_models_threshold(server: Server, tiny_repo: Path, clean_train_row: dict[str, str]) -> None:
    files = {"audio": Path(clean_train_row["audio"]), "video": Path(clean_train_row["video"])}
    never = server.post(files, data={"min_confidence": "0"}).json()
    assert never["abstained"] is False
    assert never["min_confidence"] == 0.0
    always = server.post(files, data={"min_confidence": "1"}).json()
    assert always["min_confidence"] == 1.0
    assert always["abstained"] == (always["confidence"] < 1.0)
    own = server.post(files).json()
    assert own["min_confidence"] == load_manifest(tiny_repo).fusion.abstention.threshold("audio+video")
    for bad in ("abc", "1.5", "-0.1", "nan"):
        r = server.post(files, data={"min_confidence": bad})
        assert r.status_code == 422, (bad, r.text)
        assert "min_confidence" in r.json()["error"]["message"]
    assert server.tmp_is_empty()


def test_models_health_and_protocol_routes(server: Server) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["name"] == "tiny"
    assert models["providers"] == {"audio": "CPUExecutionProvider", "video": "CPUExecutionProvider"}
    assert models["limits"]["max_upload_bytes"] == 4 * 1024 * 1024
    assert models["labels"] == [str(i) for i in range(10)]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{server.url}/v2/models/tiny").json()
    assert meta["versions"] == ["1"]
    assert {i["name"] for i in meta["inputs"]} == {"audio", "video", "audio/waveform", "video/frames"}
    missing = httpx.get(f"{server.url}/v2/models/other")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"  # the protocol's error shape on /v2: {"error": "<message>"}
    assert "other" in missing.json()["error"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


def test_metrics_count_what_happened(server: Server, clean_train_row: dict[str, str]) -> None:
    server.post({"audio": Path(clean_train_row["audio"]), "video": Path(clean_train_row["video"])})
    assert server.post({"notes": ("n.txt", b"x")}).status_code == 422  # refused, and counted
    text = httpx.get(f"{server.url}/metrics").text
    # the server's default on a CPU: the decode workers run the graphs, one row a call, each after its wait for a worker
    assert httpx.get(f"{server.url}/v1/models").json()["inference"] == "workers"
    counts = {
        (f.name, s.labels.get("modality")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.endswith("_count")
    }
    for m in ("audio", "video"):
        assert counts[("mla_inference_seconds", m)] >= 1, m  # a job's ORT time, reported by its worker
        assert counts[("mla_decode_seconds", m)] >= 1, m
        assert counts[("mla_batch_size", m)] == counts[("mla_inference_seconds", m)], m  # every call one row
        assert counts[("mla_queue_seconds", m)] == counts[("mla_inference_seconds", m)], m  # each waited for a worker
    for name in (
        "mla_requests_total",
        "mla_request_seconds_bucket",
        "mla_decode_seconds_bucket",
        "mla_inference_seconds_bucket",
        "mla_batch_size_bucket",
        "mla_modality_subset_total",
        "mla_abstained_total",
        "mla_entropy_nats_bucket",
        "mla_fusion_weight_bucket",
        "mla_requests_in_flight",
        "mla_model_info",
        "mla_ready",
    ):
        assert name in text, name
    assert 'mla_model_info{modality="audio",name="tiny",provider="CPUExecutionProvider",version="1"} 1.0' in text
    assert 'mla_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'mla_rejected_total{code="invalid_request"}' in text


def test_mla_predict_command(server: Server, clean_train_row: dict[str, str]) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "predict",
            "--url",
            server.url,
            "--audio",
            clean_train_row["audio"],
            "--video",
            clean_train_row["video"],
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    assert set(json.loads(proc.stdout)["modalities"]) == {"audio", "video"}


def test_mla_predict_names_a_version(server: Server, clean_train_row: dict[str, str]) -> None:
    """--version: the version served answers; one that is not loaded is refused, never answered by another."""
    base = [sys.executable, "-m", "cli.main", "predict", "--url", server.url, "--audio", clean_train_row["audio"]]
    ok = subprocess.run([*base, "--version", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["model"]["version"] == "1"
    missing = subprocess.run([*base, "--version", "7"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "404" in missing.stderr
    assert "not loaded" in missing.stderr
