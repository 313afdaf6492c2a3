"""A real Prometheus, with the project's config and rules, scraping a running service."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.servers import Server, free_port, start_server, stop_server

PROM_DIR = ROOT / "docker" / "prometheus"
ADMIN_KEY = "operator-key"  # /admin answers only with it (MLA_ADMIN_KEY has no default)


def _prometheus_config(target: str) -> dict[str, Any]:
    """The project's prometheus.yml with only the api job's target changed: DNS discovery of the
    compose replicas becomes the one test server."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mla-api"]
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return config


NOT_READY_FOR = "10s"  # the test's copy of MlaNotReady waits this long, not the production rule's minute


def _not_ready_rule(rules: dict[str, Any]) -> dict[str, Any]:
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "MlaNotReady"]
    return rule


def _alerts_config() -> dict[str, Any]:
    """The project's alerts.yml with only MlaNotReady's `for` shortened to NOT_READY_FOR: the test watches it go
    pending, fire and resolve, and the minute of waiting would prove nothing more (the minute is asserted below)."""
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    _not_ready_rule(rules)["for"] = NOT_READY_FOR
    return rules


def test_the_not_ready_alert_waits_a_minute() -> None:
    rule = _not_ready_rule(yaml.safe_load((PROM_DIR / "alerts.yml").read_text()))
    assert rule["for"] == "1m"  # a replica loading or warming up for less than a minute pages nobody


def _wait(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: `make test` installs it (Debian package prometheus)")
    work = tmp_path_factory.mktemp("prometheus")
    (work / "api").mkdir()
    api = start_server(tiny_repo, work / "api", MLA_ADMIN_KEY=ADMIN_KEY)
    cfg_dir = work / "etc"
    cfg_dir.mkdir()
    (cfg_dir / "alerts.yml").write_text(yaml.safe_dump(_alerts_config()))
    (cfg_dir / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_config(api.url.removeprefix("http://"))))
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={cfg_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("prometheus to be ready", lambda: _get(f"{url}/-/ready") == 200, 60)
        yield api, url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        stop_server(api)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _alerts(prom: str) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()
    return {a["labels"]["alertname"]: a for a in body["data"]["alerts"]}


def test_prometheus_scrapes_the_service_and_the_not_ready_alert_fires(
    stack: tuple[Server, str], clean_train_row: dict[str, str]
) -> None:
    api, prom = stack
    for _ in range(3):
        assert api.post({"audio": Path(clean_train_row["audio"]), "video": Path(clean_train_row["video"])}).status_code == 200

    # the service's metrics arrive, with the traffic just sent
    def scraped() -> list[dict[str, Any]]:
        rows = _query(prom, 'mla_requests_total{route="/v1/predict",status="200"}')
        return [r for r in rows if float(r["value"][1]) >= 3]

    _wait("the predictions to be scraped", scraped)
    assert float(_query(prom, 'up{job="mla-api"}')[0]["value"][1]) == 1.0
    assert _query(prom, 'mla_batch_size_count{modality="video"}')
    assert _query(prom, "mla_ready")[0]["value"][1] == "1"
    # ready: the not-ready rule is evaluated and stays quiet; the CPU-fallback rule sees the CPU provider
    _wait("the rules to be evaluated", lambda: "MlaCpuFallback" in _alerts(prom))
    assert "MlaNotReady" not in _alerts(prom)

    # taken out of rotation: not ready, the alert goes pending, then fires after its `for` (NOT_READY_FOR here)
    assert httpx.post(f"{api.url}/admin/drain", headers={"X-Admin-Key": ADMIN_KEY}).json() == {"ready": False}
    assert httpx.get(f"{api.url}/readyz").status_code == 503
    pending = _wait("MlaNotReady to be pending", lambda: _alerts(prom).get("MlaNotReady"))
    assert pending["state"] in ("pending", "firing")
    assert pending["labels"]["severity"] == "page"
    _wait("MlaNotReady to fire", lambda: _alerts(prom).get("MlaNotReady", {}).get("state") == "firing", 120)

    # back in rotation: the alert resolves
    assert httpx.post(f"{api.url}/admin/resume", headers={"X-Admin-Key": ADMIN_KEY}).json() == {"ready": True}
    _wait("MlaNotReady to resolve", lambda: "MlaNotReady" not in _alerts(prom))
