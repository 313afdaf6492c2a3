"""API key, CORS, readiness, and graceful shutdown on SIGTERM, on real servers."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, start_server, stop_server
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def guarded(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tiny_repo,
        tmp_path_factory.mktemp("guarded"),
        MLA_API_KEY="let-me-in",
        MLA_CORS_ORIGINS="https://app.example",
        MLA_LOG_FORMAT="json",
    )
    yield srv
    stop_server(srv)


def test_api_key_is_required_when_configured(guarded: Server, clean_train_row: dict[str, str]) -> None:
    files = {"audio": Path(clean_train_row["audio"])}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        r = guarded.post(files, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    assert guarded.post(files, headers={"X-API-Key": "let-me-in"}).status_code == 200
    assert guarded.post(files, headers={"Authorization": "Bearer let-me-in"}).status_code == 200
    # Probes and metrics stay open for the orchestrator and Prometheus.
    assert httpx.get(f"{guarded.url}/readyz").status_code == 200
    assert httpx.get(f"{guarded.url}/metrics").status_code == 200
    assert guarded.tmp_is_empty()


def test_cors_and_request_ids(guarded: Server) -> None:
    pre = httpx.options(
        f"{guarded.url}/v1/predict", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert pre.headers.get("access-control-allow-origin") == "https://app.example"
    other = httpx.get(f"{guarded.url}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    r = httpx.get(f"{guarded.url}/healthz", headers={"X-Request-ID": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"

    def logged() -> list[str]:
        return [line for line in guarded.log.read_text().splitlines() if "trace-123" in line]

    lines = wait_for("the request id in the log", logged, timeout=30, every=0.05)
    assert lines[0].startswith("{")  # JSON log lines
    assert '"request_id": "trace-123"' in lines[0]


def test_sigterm_finishes_the_request_in_flight(tiny_repo: Path, tmp_path: Path, clean_train_row: dict[str, str]) -> None:
    srv = start_server(tiny_repo, tmp_path)
    audio = Path(clean_train_row["audio"]).read_bytes()
    boundary = "b0undary"
    started = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'.encode()
        started.set()
        for i in range(0, len(audio), 4096):
            time.sleep(0.05)  # about two seconds in all: SIGTERM arrives in the middle
            yield audio[i : i + 4096]
        yield f"\r\n--{boundary}--\r\n".encode()

    result: dict[str, httpx.Response] = {}

    def client() -> None:
        result["r"] = httpx.post(
            f"{srv.url}/v1/predict",
            content=slow_body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            timeout=60,
        )

    thread = threading.Thread(target=client)
    thread.start()
    assert started.wait(10)
    wait_for("the request in flight", lambda: srv.metric("mla_requests_in_flight") >= 1, timeout=30, every=0.02)
    srv.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert result["r"].status_code == 200, result["r"].text
    assert set(result["r"].json()["modalities"]) == {"audio"}
    # uvicorn re-raises the signal once it has shut down cleanly, as process managers expect
    assert srv.proc.wait(30) in (0, -signal.SIGTERM)
    log = srv.log.read_text()
    assert "Waiting for application shutdown" in log
    assert "stopped" in log  # the lifespan closed the batchers and the decode pool
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/healthz", timeout=2)  # no longer accepting
    assert srv.tmp_is_empty()


def test_serve_without_a_model_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--model", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no model version" in proc.stderr
    assert "Traceback" not in proc.stderr
