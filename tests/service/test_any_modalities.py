"""Models of other modalities, end to end: image + text and audio + image + text trained from a `csv:` manifest,
exported, checked, served by a real uvicorn server, and asked with every subset of their inputs."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from playwright.sync_api import Page

from common.hashing import sha256_file
from common.manifest import load_manifest
from common.media_types import NO_LIMITS
from common.modalities import decode, kind, spec_of
from common.parity import FP32
from tests.browser import open_page, send_and_wait, sent_file
from tests.conftest import ROOT, shared_data
from tests.servers import Server, start_server, stop_server
from tests.service.test_e2e import check_answer
from tests.service.test_page_browser import check_rendered

SETS = {"image-text": ("image", "text"), "audio-image-text": ("audio", "image", "text")}


def _cli(*args: str, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AIT-digits with two recordings per speaker and digit (120 rows): the folder of both manifests."""
    shared_data("fsdd", "recordings")
    shared_data("mnist")
    out = tmp_path_factory.mktemp("aitdigits")
    cmd = [sys.executable, "-m", "benchmarks.aitdigits.build", str(out), "--limit", "2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module", params=list(SETS))
def exported(request: pytest.FixtureRequest, small_set: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """`mla train` then `mla export` on one of the sets: (its name, the version folder)."""
    name = request.param
    manifest = small_set / ("manifest-image-text.csv" if name == "image-text" else "manifest.csv")
    run = tmp_path_factory.mktemp(f"run-{name}")
    _cli(
        "train",
        "--data",
        f"csv:{manifest}",
        "--method",
        "mla",
        "--epochs",
        "3",
        "--owm-alpha",
        "10",
        "--workers",
        "0",
        "--out",
        str(run),
    )
    models = tmp_path_factory.mktemp(f"models-{name}")
    _cli("export", str(run), "--out", str(models), "--name", name, "--version", "1")
    return name, models / name / "1"


@pytest.fixture(scope="module")
def served(exported: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Server]]:
    name, repo = exported
    server = start_server(repo, tmp_path_factory.mktemp(f"work-{name}"))
    yield name, repo, server
    stop_server(server)


def _test_row(small_set: Path) -> dict[str, Path]:
    """The files of the first test row (the held-out speaker)."""
    import csv

    with (small_set / "manifest.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "test")
    return {m: small_set / row[m] for m in ("audio", "image", "text")}


def test_the_export_holds_a_graph_per_modality_that_agrees_with_its_checks(exported: tuple[str, Path]) -> None:
    name, repo = exported
    manifest = load_manifest(repo)
    assert list(manifest.modalities) == list(SETS[name])
    for m, entry in manifest.modalities.items():
        assert entry.kind == m
        dtype, shape = kind(m).input(kind(m).settings_from_entry(entry) | kind(m).defaults("small"))
        assert entry.input.dtype == dtype
        assert entry.input.shape == ["batch", *shape]
        assert manifest.export.parity[m].top1_agreement == 1.0  # the exporter's parity check, on real inputs
    _cli("validate", str(repo))  # the parity samples again, and every hash


def test_every_subset_is_answered_through_the_running_service(served: tuple[str, Path, Server], small_set: Path) -> None:
    name, repo, server = served
    manifest = load_manifest(repo)
    files = _test_row(small_set)
    inputs = SETS[name]
    for n in range(1, len(inputs) + 1):
        for subset in itertools.combinations(inputs, n):
            r = server.post({m: files[m] for m in subset})
            assert r.status_code == 200, (subset, r.text)
            body = r.json()
            check_answer(body, set(subset), manifest)
            assert body["model"]["manifest_sha256"] == sha256_file(repo / "manifest.json")
    assert server.tmp_is_empty()


def test_each_answer_is_the_graph_run_on_the_shared_decoder(served: tuple[str, Path, Server], small_set: Path) -> None:
    """The service's per-modality probabilities equal the ONNX graph run here on the same decoding."""
    _, repo, server = served
    manifest = load_manifest(repo)
    files = _test_row(small_set)
    body = server.post({m: files[m] for m in manifest.modalities}).json()
    for m, entry in manifest.modalities.items():
        x = decode(m, files[m], spec_of(entry), NO_LIMITS)
        sess = ort.InferenceSession(str(repo / entry.file), providers=["CPUExecutionProvider"])
        raw = sess.run(None, {entry.input.name: x[None]})[0][0]
        logits = raw / manifest.fusion.calibration.temperatures[m]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        got = [body["modalities"][m]["probabilities"][c] for c in manifest.labels]
        # Same graph, same input; only ORT's kernel choice may differ (thread count, batch): the fp32 parity bound on
        # the logits, scaled by the temperature, and softmax moves no probability by more than that.
        t = manifest.fusion.calibration.temperatures[m]
        bound = FP32.max_rel_logit_diff * max(1.0, float(np.abs(raw).max())) / min(t, 1.0)  # type: ignore[operator]
        np.testing.assert_allclose(got, p, atol=bound)


def test_text_comes_as_a_form_value_or_a_file_alike(served: tuple[str, Path, Server], small_set: Path) -> None:
    _, _, server = served
    path = _test_row(small_set)["text"]
    as_file = server.post({"text": path}).json()
    as_value = httpx.post(f"{server.url}/v1/predict", files={"text": (None, path.read_bytes())}, timeout=60).json()
    assert as_value["probabilities"] == as_file["probabilities"]
    # the same word, composed and decomposed, in another case: one input after normalisation
    composed = httpx.post(f"{server.url}/v1/predict", files={"text": (None, "Z\u00e9ro".encode())}, timeout=60).json()
    decomposed = httpx.post(f"{server.url}/v1/predict", files={"text": (None, "ZE\u0301RO".lower().encode())}, timeout=60).json()
    assert composed["probabilities"] == decomposed["probabilities"]


@pytest.mark.parametrize(
    ("field", "data", "status", "code"),
    [
        ("text", b"\xff\xfeseven", 400, "invalid_media"),
        ("text", b"   \n", 400, "invalid_media"),
        ("text", b"x" * 20_000, 413, "too_large"),
        ("image", b"GIF89a" + b"\0" * 64, 415, "unsupported_media"),
        ("image", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 415, "unsupported_media"),
        ("video", b"\0" * 64, 422, "invalid_request"),
    ],
    ids=["not-utf8", "blank", "too-long", "gif", "broken-png", "absent-modality"],
)
def test_bad_inputs_of_the_new_kinds_get_a_clear_4xx(
    served: tuple[str, Path, Server], field: str, data: bytes, status: int, code: str
) -> None:
    name, _, server = served
    if field not in SETS[name] and field != "video":
        pytest.skip(f"{name} has no {field}")
    r = httpx.post(f"{server.url}/v1/predict", files={field: ("upload.bin" if field != "text" else None, data)}, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert server.tmp_is_empty()


def test_the_page_offers_the_model_s_own_inputs_and_sends_them(
    page: Page, served: tuple[str, Path, Server], small_set: Path
) -> None:
    """In Chromium: a card per input the model takes (an image chooser, a text box), none for the others."""
    name, repo, server = served
    labels = load_manifest(repo).labels
    files = _test_row(small_set)
    open_page(page, server.url)
    for m in ("audio", "video", "image", "text"):
        assert page.locator(f"#{m}-card").is_visible() == (m in SETS[name]), m
    assert page.locator("#image-file").get_attribute("accept") == kind("image").accept
    page.set_input_files("#image-file", str(files["image"]))
    page.locator("#image-image").wait_for(state="visible")  # the chosen image is shown (after the change event)
    page.fill("#text-value", files["text"].read_text(encoding="utf-8"))
    if "audio" in SETS[name]:
        page.set_input_files("#audio-file", str(files["audio"]))
    body = send_and_wait(page)
    assert set(body["modalities"]) == set(SETS[name])
    check_rendered(page, body, labels)
    assert sent_file(page, "image") == files["image"].read_bytes()
    expected = server.post({m: files[m] for m in SETS[name]}).json()
    assert body["probabilities"] == expected["probabilities"]  # the typed text is the file's text


def test_mla_predict_sends_files_and_values_by_modality(served: tuple[str, Path, Server], small_set: Path) -> None:
    _, _, server = served
    files = _test_row(small_set)
    args = ["predict", "--url", server.url, "--json", "--file", f"image={files['image']}"]
    args += ["--value", f"text={files['text'].read_text(encoding='utf-8')}"]
    body = json.loads(_cli(*args))
    assert set(body["modalities"]) == {"image", "text"}
    expected = server.post({"image": files["image"], "text": files["text"]}).json()
    assert body["probabilities"] == expected["probabilities"]
    refused = subprocess.run(
        [sys.executable, "-m", "cli.main", "predict", "--url", server.url, "--file", "smell=x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "smell: x is not a file" in refused.stderr


def test_the_model_description_says_how_each_input_is_sent(served: tuple[str, Path, Server]) -> None:
    name, _, server = served
    info = httpx.get(f"{server.url}/v1/models", timeout=10).json()
    assert list(info["inputs"]) == list(SETS[name])
    assert info["inputs"]["text"]["field"] == "value"
    assert info["inputs"]["text"]["limits"] == {"max_bytes": info["limits"]["max_text_bytes"]}
    assert info["inputs"]["image"]["accept"] == "image/png,image/jpeg,image/webp"
    assert info["inputs"]["image"]["limits"]["max_pixels"] == info["limits"]["max_image_pixels"]


def test_the_openapi_schema_offers_the_served_model_s_inputs(served: tuple[str, Path, Server]) -> None:
    """Schemathesis and clients read /v1/predict's fields from it: the model's inputs, not every kind there is."""
    name, _, server = served
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    schema = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    inputs = [p for p in schema["properties"] if p not in ("min_confidence", "version")]
    assert inputs == list(SETS[name])  # no borrowing flag either: no video to take sound from
    assert [w["required"] for w in schema["anyOf"]] == [[m] for m in SETS[name]]
    assert schema["properties"]["text"] == {"type": "string", "description": kind("text").description}
    assert schema["properties"]["image"]["format"] == "binary"
