"""The Open Inference Protocol against a real server: the real clients from PyPI (tritonclient, KServe's), the JSON form
checked by KServe's own data models of the protocol, the binary extension, decoded tensors, and its errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from common.manifest import load_manifest
from common.media_types import NO_LIMITS
from common.modalities import decode, spec_of
from service.protocol import HEADER_LENGTH, encode_bytes
from tests.conftest import ROOT
from tests.servers import Server

pytestmark = pytest.mark.slow
SUBSETS = [("audio",), ("video",), ("audio", "video")]


def clients_python() -> Path:
    """The clients' own venv (make clients: requirements/clients.txt), apart from the project's pins."""
    path = Path(os.environ.get("MLA_CLIENTS_PYTHON", ROOT / ".venv/clients/bin/python"))
    if not path.exists():
        pytest.skip(f"{path} is absent: `make clients` installs tritonclient and kserve (requirements/clients.txt)")
    return path


def run_clients(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    script = Path(__file__).with_name("oip_clients.py")
    done = subprocess.run(
        [str(clients_python()), str(script), json.dumps(jobs)], capture_output=True, text=True, timeout=300, cwd="/"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def v1_answer(server: Server, row: dict[str, str], subset: tuple[str, ...]) -> dict:
    r = server.post({m: Path(row[m]) for m in subset})
    assert r.status_code == 200, r.text
    answer: dict = r.json()
    return answer


@pytest.fixture(scope="module")
def rows(demo_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Two clips the tiny model has not trained on, one of them corrupted: answers that differ between modalities."""
    held = [r for r in demo_rows if r["split"] != "train"]
    return [next(r for r in held if not r["corrupted"]), next((r for r in held if r["corrupted"]), held[1])]


@pytest.mark.parametrize("client", ["triton", "kserve"])
def test_each_real_client_gets_the_answer_v1_predict_gives(
    client: str, server: Server, rows: list[dict[str, str]], tiny_repo: Path
) -> None:
    """tritonclient.http and KServe's InferenceRESTClient, each with audio alone, video alone and both, binary extension
    on: the answer is /v1/predict's for the same files, field for field."""
    url = server.url.removeprefix("http://")
    jobs: list[dict[str, Any]] = [
        {"client": client, "url": url, "model": "tiny", "files": {m: row[m] for m in subset}, "binary": True}
        for row in rows
        for subset in SUBSETS
    ]
    results = run_clients(jobs)
    labels = load_manifest(tiny_repo).labels
    for job, got in zip(jobs, results, strict=True):
        subset = tuple(job["files"])
        want = v1_answer(server, {m: job["files"][m] for m in subset}, subset)
        assert got["answer"] == want, (client, subset)
        assert got["label"] == want["label"]
        np.testing.assert_allclose(got["probabilities"][0], [want["probabilities"][k] for k in labels], rtol=1e-6)
        assert sorted(got["answer"]["modalities"]) == sorted(subset)
        assert got["model_ready"] is True
        assert got["server_live"] is True
    if client == "triton":  # the model's metadata as the client reads it: both forms of each modality's input
        assert {"audio", "video"} <= set(results[0]["metadata_inputs"])
        assert any(n.startswith("audio/") for n in results[0]["metadata_inputs"])
    else:
        assert results[0]["answer"]["model"]["version"] == "1"  # KServe's client drops the response's model_version
        assert results[0]["id"] == "kserve-1"  # the request's id comes back


def decoded(row: dict[str, str], repo: Path) -> dict[str, np.ndarray]:
    """What the graphs take, decoded here as the service's workers decode an upload."""
    manifest = load_manifest(repo)
    return {m: decode(m, Path(row[m]), spec_of(manifest.modalities[m]), NO_LIMITS) for m in ("audio", "video")}


def test_the_json_form_takes_base64_files_and_decoded_tensors_and_fits_the_protocol_schema(
    server: Server, rows: list[dict[str, str]], tiny_repo: Path
) -> None:
    """The JSON form, no binary data: audio as base64 file bytes, video as the decoded tensor the graph takes. The
    answer is /v1/predict's; request, response and model metadata validate against KServe's protocol data models."""
    manifest = load_manifest(tiny_repo)
    row = rows[0]
    video = decoded(row, tiny_repo)["video"]
    vname = manifest.modalities["video"].input.name
    request = {
        "id": "json-1",
        "inputs": [
            {
                "name": "audio",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(Path(row["audio"]).read_bytes()).decode()],
            },
            {"name": f"video/{vname}", "shape": [1, *video.shape], "datatype": "UINT8", "data": video.reshape(-1).tolist()},
        ],
    }
    r = httpx.post(f"{server.url}/v2/models/tiny/infer", json=request, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "json-1"
    assert body["model_name"] == "tiny"
    assert body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    answer = json.loads(outputs["answer"]["data"][0])
    assert answer == v1_answer(server, row, ("audio", "video"))
    assert outputs["probabilities"]["shape"] == [1, len(manifest.labels)]
    assert outputs["abstained"]["data"] == [answer["abstained"]]
    meta = httpx.get(f"{server.url}/v2/models/tiny").json()
    assert run_clients([{"client": "schema", "request": request, "response": body, "metadata": meta}]) == [{"valid": True}]
    # a schema check that could fail: the response without its outputs is not one
    with pytest.raises(AssertionError):
        run_clients([{"client": "schema", "request": request, "response": {"id": "x"}, "metadata": meta}])


def test_rows_are_answered_each_as_alone_and_outputs_can_be_picked_and_binary(server: Server, rows: list[dict[str, str]]) -> None:
    """Two files in one BYTES tensor (the binary extension, by hand): each row answered as it would be alone; the outputs
    asked for, no others, as binary where asked."""
    audio = [Path(r["audio"]).read_bytes() for r in rows]
    blob = encode_bytes(audio)
    head = json.dumps(
        {
            "inputs": [{"name": "audio", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}],
            "outputs": [{"name": "confidence", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    ).encode()
    r = httpx.post(
        f"{server.url}/v2/models/tiny/versions/1/infer",
        content=head + blob,
        headers={HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER_LENGTH])
    body = json.loads(r.content[:n])
    assert [o["name"] for o in body["outputs"]] == ["confidence", "label"]
    confidence = np.frombuffer(r.content[n:], "<f4")
    assert body["outputs"][0]["parameters"]["binary_data_size"] == confidence.nbytes == 8
    alone = [v1_answer(server, row, ("audio",)) for row in rows]
    np.testing.assert_allclose(confidence, [a["confidence"] for a in alone], rtol=1e-6)
    assert body["outputs"][1]["data"] == [a["label"] for a in alone]


ONE = {"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["x"]}


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"inputs": [{"name": "smell", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 422, "no input named"),
        ({"inputs": [{"name": "audio", "shape": [2], "datatype": "BYTES", "data": ["x"]}]}, 422, "shape says 2"),
        ({"inputs": [{"name": "audio", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 422, "BYTES"),
        ({"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [""]}]}, 400, "empty"),
        ({"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["not a sound"]}]}, 400, "audio"),
        ({"inputs": []}, 422, "inputs"),
        ({"inputs": [{**ONE, "data": ["%%"], "parameters": {"content_type": "base64"}}]}, 422, "base64"),
        ({"inputs": [{"name": "audio/waveform", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, 422, "shape"),
        ({"inputs": [ONE], "outputs": [{"name": "nope"}]}, 422, "no output named"),
        ({"inputs": [ONE], "outputs": [{"name": "video/weight"}]}, 422, "no output named"),  # video was not sent
    ],
)  # fmt: skip
def test_a_bad_request_is_a_4xx_in_the_protocols_error_shape(server: Server, body: dict, status: int, says: str) -> None:
    r = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()
    assert isinstance(error["error"], str), error
    assert says in error["error"], error


def test_unknown_models_versions_and_torn_binary_bodies_are_refused(server: Server) -> None:
    one = {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    assert httpx.post(f"{server.url}/v2/models/other/infer", json=one).status_code == 404
    missing = httpx.post(f"{server.url}/v2/models/tiny/versions/9/infer", json=one)
    assert missing.status_code == 404
    assert "not loaded" in missing.json()["error"]
    head = json.dumps({"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 99}}]})
    torn = httpx.post(
        f"{server.url}/v2/models/tiny/infer",
        content=head.encode() + b"\x01\x00\x00\x00a",
        headers={HEADER_LENGTH: str(len(head))},
    )
    assert torn.status_code == 400
    assert "binary data" in torn.json()["error"]
    liar = httpx.post(f"{server.url}/v2/models/tiny/infer", content=b"{}", headers={HEADER_LENGTH: "500"})
    assert liar.status_code == 400
    assert httpx.get(f"{server.url}/v2").json()["extensions"] == ["binary_tensor_data", "model_repository"]
    assert httpx.get(f"{server.url}/v2/models/tiny/versions/1/ready").json() == {"name": "tiny", "ready": True}
    assert httpx.post(f"{server.url}/v2/repository/index").status_code == 403  # operator routes: off without MLA_ADMIN_KEY
    assert server.tmp_is_empty()


def test_the_docs_tritonclient_example_runs_as_written(server: Server, rows: list[dict[str, str]]) -> None:
    """docs/protocol.md's example, its address, model and files swapped for this server's, run by the real client."""
    text = (ROOT / "docs/protocol.md").read_text()
    code = text.split("## With tritonclient", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    row = rows[0]
    swaps = {
        '"127.0.0.1:8000"': repr(server.url.removeprefix("http://")),
        'client.infer("default", inputs)': 'client.infer("tiny", inputs)',
        '{"audio": "02301_7_theo_1.wav", "video": "02301_7_theo_1.mp4"}': repr({"audio": row["audio"], "video": row["video"]}),
    }
    for old, new in swaps.items():
        assert old in code, f"the example no longer has {old}: update this test with it"
        code = code.replace(old, new)
    done = subprocess.run([str(clients_python()), "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    want = v1_answer(server, row, ("audio", "video"))
    label, confidence = done.stdout.splitlines()[0].split()
    assert label == want["label"]
    assert float(confidence) == pytest.approx(want["confidence"], rel=1e-6)
    assert done.stdout.splitlines()[1] == f"{want['model']['version']} {want['abstained']} {want['fused_modalities']}"


@pytest.fixture(scope="module")
def tight(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with 1 MiB for protocol bodies in memory and a 512 KiB JSON part."""
    from tests.servers import start_server, stop_server

    env = {"MLA_MAX_BODY_MEMORY_BYTES": str(2**20), "MLA_MAX_JSON_BYTES": str(512 * 2**10)}
    srv = start_server(tiny_repo, tmp_path_factory.mktemp("tight"), **env)
    yield srv
    stop_server(srv)


def test_json_bodies_are_bounded_in_size_and_in_the_memory_their_parse_takes(
    tight: Server, rows: list[dict[str, str]], tiny_repo: Path
) -> None:
    """A JSON part past MLA_MAX_JSON_BYTES is a 413; one whose parse (12x its text) would pass the memory budget is a
    503 with Retry-After, and costs nothing afterwards: the same tensor as binary data is answered, and the budget is
    back to 0."""
    manifest = load_manifest(tiny_repo)
    name = manifest.modalities["audio"].input.name
    samples = manifest.modalities["audio"].input.shape[1]
    waveform = decoded(rows[0], tiny_repo)["audio"]
    too_long = {"inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": ["x" * (600 * 2**10)]}]}
    r = httpx.post(f"{tight.url}/v2/models/tiny/infer", json=too_long, timeout=30)
    assert r.status_code == 413, r.text
    assert "binary data" in r.json()["error"]
    # a clip of noise as a JSON list (about 20 characters a sample): under the JSON limit, and under the memory budget
    # as text, but 12x its text, its parse's allowance, is past the budget
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, int(samples)).astype(np.float32)
    as_json = {"inputs": [{"name": f"audio/{name}", "shape": [1, samples], "datatype": "FP32", "data": noise.tolist()}]}
    text = json.dumps(as_json).encode()
    assert len(text) <= 512 * 2**10, "the tiny model's clip got longer: shorten this request"
    assert len(text) < 2**20 < 12 * len(text)
    refused = httpx.post(f"{tight.url}/v2/models/tiny/infer", content=text, headers={"content-type": "application/json"})
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"]
    blob = waveform.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": f"audio/{name}",
                    "shape": [1, samples],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    ok = httpx.post(f"{tight.url}/v2/models/tiny/infer", content=head + blob, headers={HEADER_LENGTH: str(len(head))}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert tight.metric("mla_body_memory_bytes") == 0
