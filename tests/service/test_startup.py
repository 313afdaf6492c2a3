"""Start-up that tells the truth (a warm-up that fails exits, and /healthz says so), and which routes
answer without the API key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from common.hashing import sha256_file
from service.main import create_app
from service.settings import Settings
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def warm_up_fails(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its video graph's batch fixed at 2: it loads, and its warm-up fails at its first call, of one
    row, as a graph exported with a fixed batch would (in a decode worker, or in the server's batch sizes)."""
    repo = tmp_path_factory.mktemp("fixed-batch") / "tiny" / "1"
    shutil.copytree(tiny_repo, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    entry = manifest["modalities"]["video"]
    graph = onnx.load(str(repo / entry["file"]))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(graph, str(repo / entry["file"]))
    entry["sha256"] = sha256_file(repo / entry["file"])
    (repo / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return repo


def test_a_failed_warm_up_makes_healthz_fail(warm_up_fails: Path, tmp_path: Path) -> None:
    fatal: list[int] = []
    settings = Settings(model_dir=warm_up_fails, providers=["cpu"], decode_workers=1, tmp_dir=tmp_path)
    app = create_app(settings, lambda: fatal.append(1))
    with TestClient(app) as c:
        deadline = time.monotonic() + 120
        while c.get("/healthz").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/healthz")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "failed"
        assert "start-up failed" in r.json()["error"]["message"]
        assert c.get("/readyz").status_code == 503
    assert fatal == [1]  # on_fatal was called, once


def test_mla_serve_exits_non_zero_when_the_warm_up_fails(warm_up_fails: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MLA_TMP_DIR": str(tmp_path / "uploads"), "MLA_PROVIDERS": "cpu", "MLA_DECODE_WORKERS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--model", str(warm_up_fails), "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "warm-up failed" in proc.stderr
    assert not list((tmp_path / "uploads").glob("server-*"))  # it cleaned up on its way out


def test_a_missing_model_fails_start_up_with_a_non_zero_exit(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MLA_TMP_DIR": str(tmp_path / "uploads")}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--model", str(tmp_path / "nothing"), "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "cannot serve" in proc.stderr


# --- which routes need the API key -------------------------------------------------------------------
def keyed(tiny_repo: Path, tmp_path: Path, **extra: object) -> TestClient:
    settings = Settings(model_dir=tiny_repo, providers=["cpu"], decode_workers=1, tmp_dir=tmp_path, api_key="k-123", **extra)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


def test_with_an_api_key_only_probes_docs_and_the_public_routes_answer_without_it(tiny_repo: Path, tmp_path: Path) -> None:
    with keyed(tiny_repo, tmp_path) as c:
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/metrics"):
            assert c.get(path).status_code == 200, path
        for path in ("/v1/models", "/v2/models/tiny"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
            assert c.get(path, headers={"X-API-Key": "k-123"}).status_code == 200, path
            assert c.get(path, headers={"Authorization": "Bearer k-123"}).status_code == 200, path
        assert c.post("/v1/predict").status_code == 401


def test_public_routes_are_a_setting(tiny_repo: Path, tmp_path: Path) -> None:
    with keyed(tiny_repo, tmp_path, public_routes=["/v2/models/{name}", "/v1/predict"]) as c:
        assert c.get("/metrics").status_code == 401  # no longer public
        assert c.get("/metrics", headers={"X-API-Key": "k-123"}).status_code == 200
        assert c.get("/v2/models/tiny").status_code == 200  # metadata made public by the operator
        assert c.get("/v1/models").status_code == 401
        # predictions made public too (served past the router: service/direct.py): past the key, to the body's check
        r = c.post("/v1/predict", content=b"{}", headers={"Content-Type": "application/json"})
        assert r.status_code in (415, 503), r.text  # not multipart (or the model still warming), never 401
    assert Settings(public_routes="/metrics, /v1/models").public_routes == ["/metrics", "/v1/models"]


def test_the_server_multiplies_with_one_blas_thread_and_gives_the_process_its_own_back(tiny_repo: Path, tmp_path: Path) -> None:
    """Its kNN multiplies one query by a bank; OpenBLAS's threads, spinning between requests, cost more CPU than that
    (docs/decisions/2026-12-07-one-blas-thread.md). While the app's lifespan runs, the process's BLAS runs one thread;
    when it ends, the limit the process had is back. The lifespan runs in the main thread, as under uvicorn (OpenBLAS
    keeps a limit set in the main thread against one set in another)."""
    import asyncio

    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    seen: dict[str, set[int]] = {}

    async def serve(app: FastAPI) -> None:
        async with app.router.lifespan_context(app):
            seen["serving"] = blas_threads()
            seen["serving, another thread"] = await asyncio.to_thread(blas_threads)

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        if before != {2}:
            pytest.skip(f"this machine's BLAS cannot run 2 threads (it reports {before}), so one would show nothing")
        settings = Settings(model_dir=tiny_repo, providers=["cpu"], decode_workers=1, tmp_dir=tmp_path)
        asyncio.run(serve(create_app(settings)))
        assert seen == {"serving": {1}, "serving, another thread": {1}}
        assert blas_threads() == {2}
