"""Faults injected in-process (the app, its lifespan and dependency overrides): a decode pool that lost its worker,
a failing ONNX Runtime call, an unknown HTTP method, the operator routes."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.errors import Overloaded
from service.log_config import RequestIdFilter
from service.main import create_app
from service.settings import Settings


def _client(tmp: Path, tiny_repo: Path, **extra: Any) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=tiny_repo, providers=["cpu"], decode_workers=1, tmp_dir=tmp, admin_key="operator-secret", **extra
    )
    app = create_app(settings)
    with TestClient(app) as c:
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the app never became ready")
            time.sleep(0.1)
        yield c


@pytest.fixture(scope="module")
def client(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app as served on a CPU: the decode workers run the graphs."""
    yield from _client(tmp_path_factory.mktemp("uploads"), tiny_repo)


@pytest.fixture(scope="module")
def server_client(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app with server inference (sessions behind micro-batchers), as on a GPU."""
    yield from _client(tmp_path_factory.mktemp("uploads"), tiny_repo, inference="server")


def files(row: dict[str, str], *modalities: str) -> dict[str, tuple[str, bytes]]:
    return {m: (Path(row[m]).name, Path(row[m]).read_bytes()) for m in modalities}


class LostWorkerPool:
    ready = True

    async def run_timed(self, *_: Any) -> Any:
        raise Overloaded("the decode worker was killed (out of memory, or by an operator); retry")


def test_a_pool_that_lost_its_worker_answers_503_with_the_request_id(client: TestClient, clean_train_row: dict[str, str]) -> None:
    app: Any = client.app
    model = app.state.repository.get()
    pool, model.decoder = model.decoder, LostWorkerPool()  # what the route's handler takes the decode workers from
    try:
        r = client.post("/v1/predict", files=files(clean_train_row, "audio"), headers={"X-Request-ID": "broken-pool"})
    finally:
        model.decoder = pool
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "overloaded"
    assert r.headers["retry-after"]
    assert r.headers["x-request-id"] == "broken-pool"
    assert client.post("/v1/predict", files=files(clean_train_row, "audio")).status_code == 200


@pytest.mark.parametrize(("attribute", "value", "message"), [("warm", False, "still loading"), ("decoder", None, "not started")])
def test_a_model_not_warm_or_without_workers_answers_503_not_ready(
    client: TestClient, clean_train_row: dict[str, str], attribute: str, value: object, message: str
) -> None:
    """The checks the route's dependencies made, made by its handler now (service.routes.answer_predict): in order,
    each answered 503 not_ready with Retry-After, and nothing held afterwards (the next request is answered)."""
    app: Any = client.app
    model = app.state.repository.get()
    kept = getattr(model, attribute)
    setattr(model, attribute, value)
    try:
        r = client.post("/v1/predict", files=files(clean_train_row, "audio"))
    finally:
        setattr(model, attribute, kept)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "not_ready"
    assert message in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "5"
    assert client.post("/v1/predict", files=files(clean_train_row, "audio")).status_code == 200


class Records(logging.Handler):
    """Every log record, with the request id the service's log filter gives it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def post_recorded(client: TestClient, row: dict[str, str], request_id: str) -> tuple[Any, list[logging.LogRecord]]:
    """A pair sent with `request_id`: the answer, and every log record while it was served."""
    records = Records()
    logging.getLogger().addHandler(records)
    try:
        r = client.post("/v1/predict", files=files(row, "audio", "video"), headers={"X-Request-ID": request_id})
    finally:
        logging.getLogger().removeHandler(records)
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "internal error; see the server log"}}
    assert r.headers["x-request-id"] == request_id
    return r, records.records


def test_a_failing_batch_is_a_500_that_carries_its_request_id(server_client: TestClient, clean_train_row: dict[str, str]) -> None:
    client = server_client
    model: Any = client.app.state.repository.default  # type: ignore[attr-defined]
    batcher = model.runtimes["video"].batcher

    def fail(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA failure: an illegal memory access")

    working, batcher.run = batcher.run, fail
    try:
        _, records = post_recorded(client, clean_train_row, "fault-500")
    finally:
        batcher.run = working
    tracebacks = [rec for rec in records if rec.exc_info and "illegal memory access" in str(rec.exc_info[1])]
    assert tracebacks
    # The request's own traceback carries its id; the batcher's (its own task) names the requests of the batch.
    assert [rec.request_id for rec in tracebacks if rec.name == "service.access"] == ["fault-500"]  # type: ignore[attr-defined]
    assert any("fault-500" in rec.getMessage() for rec in tracebacks if rec.name == "service.batching")
    access = [rec for rec in records if rec.name == "service.access" and rec.levelno == logging.INFO]
    assert [(rec.request_id, rec.status) for rec in access] == [("fault-500", 500)]  # type: ignore[attr-defined]
    assert client.post("/v1/predict", files=files(clean_train_row, "audio", "video")).status_code == 200


def test_a_graph_that_fails_in_a_worker_is_a_500_that_carries_its_request_id(
    client: TestClient, clean_train_row: dict[str, str]
) -> None:
    """Worker inference: the graph's session cannot be built in the worker (its file is gone): the request gets a 500
    with its id, the worker's traceback is logged under it, and the worker serves the next request."""
    model: Any = client.app.state.repository.default  # type: ignore[attr-defined]
    runtime = model.runtimes["video"]
    assert model.in_workers
    working = runtime.graph
    runtime.graph = dataclasses.replace(working, path=working.path + ".missing")
    try:
        _, records = post_recorded(client, clean_train_row, "worker-500")
    finally:
        runtime.graph = working
    failed = [rec for rec in records if rec.exc_info and ".missing" in str(rec.exc_info[1])]
    assert [rec.request_id for rec in failed] == ["worker-500"]  # type: ignore[attr-defined]
    assert client.post("/v1/predict", files=files(clean_train_row, "audio", "video")).status_code == 200


def test_method_labels_come_from_a_fixed_set(client: TestClient) -> None:
    assert client.request("BREW", "/healthz").status_code == 405
    text = client.get("/metrics").text
    assert 'method="other"' in text
    assert "BREW" not in text


def test_metrics_are_documented_as_text_and_the_schema_states_the_rules(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    spec = client.get("/openapi.json").json()
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "404" in spec["paths"]["/v2/models/{name}"]["get"]["responses"]
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["anyOf"]  # at least one file; use_video_audio only with a video and no audio file
    assert not [p for p in spec["paths"] if p.startswith("/admin")]


def test_admin_routes_need_the_admin_key(client: TestClient) -> None:
    assert client.post("/admin/drain").status_code == 401
    assert client.post("/admin/drain", headers={"X-Admin-Key": "wrong"}).status_code == 401
    r = client.post("/admin/drain", headers={"X-Admin-Key": "operator-secret"})
    assert r.json() == {"ready": False}
    assert client.get("/readyz").status_code == 503
    assert client.post("/admin/resume", headers={"X-Admin-Key": "operator-secret"}).json() == {"ready": True}
    assert client.get("/readyz").status_code == 200


def test_admin_routes_are_off_without_a_key(tiny_repo: Path, tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=tiny_repo, providers=["cpu"], decode_workers=1, tmp_dir=tmp_path))
    with TestClient(app) as c:
        r = c.post("/admin/drain")
        assert r.status_code == 403
        assert "MLA_ADMIN_KEY" in r.json()["error"]["message"]
        assert c.post("/admin/resume", headers={"X-Admin-Key": ""}).status_code == 403
