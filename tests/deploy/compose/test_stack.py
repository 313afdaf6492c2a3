"""The deployment, for real: the CPU image built offline and the compose stack (two api replicas
behind nginx, Prometheus) run in a Docker engine, checked through nginx's published port.

`make compose-test` runs this module in order (pytest --compose); each check prints a line.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.conftest import ROOT, shared_data
from tests.deploy import locks
from tests.deploy.compose.conftest import report
from tests.deploy.compose.engine import docker
from tests.deploy.compose.stack import (
    Stack,
    get,
    health,
    inspect,
    ip,
    name,
    predictions_served,
)
from tests.servers import Server
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

# Both sides run the same float32 graph on the same decoded input (one PyAV wheel), with two
# builds of one ONNX Runtime release (CPU in the image, CUDA build's CPU provider on the host):
# the logits agree to float32 round-off, far inside 1e-4 of their scale (common/parity.py),
# and softmax at most halves a logit difference. 1e-3 per probability leaves room for logits
# up to 20; a different model, decoder or preprocessing is off by percent.
PROB_TOL = 1e-3


def predict(base: str, files: dict[str, Path], data: dict[str, str] | None = None) -> httpx.Response:
    opened = {field: (path.name, path.read_bytes()) for field, path in files.items()}
    return httpx.post(f"{base}/v1/predict", files=opened, data=data, timeout=60)


def assert_same_answer(got: dict[str, Any], want: dict[str, Any]) -> float:
    """The container's answer is the host's, to float round-off; returns the largest difference."""
    assert got["model"] == want["model"]
    assert got["label"] == want["label"], (got["label"], want["label"])
    assert set(got["modalities"]) == set(want["modalities"])
    worst = 0.0
    pairs = [(got["probabilities"], want["probabilities"])]
    pairs += [(got["modalities"][m]["probabilities"], want["modalities"][m]["probabilities"]) for m in want["modalities"]]
    for g, w in pairs:
        assert set(g) == set(w)
        worst = max(worst, *(abs(g[k] - w[k]) for k in w))
    assert worst <= PROB_TOL, worst
    assert abs(sum(got["probabilities"].values()) - 1) < 1e-5
    return worst


def check_prediction(stack: Stack, host: Server, what: str, files: dict[str, Path], data: dict[str, str] | None = None) -> None:
    response = predict(stack.http, files, data)
    assert response.status_code == 200, response.text
    reference = predict(host.url, files, data)
    assert reference.status_code == 200, reference.text
    body = response.json()
    worst = assert_same_answer(body, reference.json())
    report(
        f"{what} through nginx: 200, label {body['label']!r}, modalities {sorted(body['modalities'])}; "
        f"the host's answer within {worst:.1e}"
    )


def test_cpu_image_holds_the_cpu_runtime_and_exactly_the_lock(stack: Stack) -> None:
    script = (
        "import json, sys, importlib.metadata as m, onnxruntime as ort;"
        "print(json.dumps({'dists': {d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()},"
        "'providers': ort.get_available_providers(), 'python': sys.version.split()[0]}))"
    )
    out = json.loads(docker("run", "--rm", "--entrypoint", "python3", "mla-ci/api:cpu", "-c", script))
    lock = locks.versions("serve-cpu")  # the pins for Linux and the host's Python 3.11, which are the image's
    installed = {k: v for k, v in out["dists"].items() if k not in ("mla-serve", "pip", "setuptools")}
    differ = {k: (installed.get(k), lock.get(k)) for k in set(installed) | set(lock) if installed.get(k) != lock.get(k)}
    assert not differ, differ  # (installed, locked)
    assert "onnxruntime" in installed
    assert "onnxruntime-gpu" not in installed
    assert "torch" not in installed
    assert "CPUExecutionProvider" in out["providers"]
    assert "CUDAExecutionProvider" not in out["providers"]
    config = inspect("mla-ci/api:cpu")["Config"]
    assert config["User"] == "10001:10001"
    assert "/readyz" in " ".join(config["Healthcheck"]["Test"])
    report(
        f"image mla-ci/api:cpu: Python {out['python']}, exactly the {len(lock)} pins of requirements/serve-cpu.txt "
        f"(onnxruntime {installed['onnxruntime']}, no onnxruntime-gpu, no torch), providers {out['providers']}"
    )


def test_replicas_are_healthy_non_root_and_cannot_write_their_model(stack: Stack) -> None:
    replicas = stack.replicas()
    assert len(replicas) == 2
    for c in replicas:
        info = inspect(c)
        assert health(c) == "healthy"
        status = dict(line.split(":", 1) for line in docker("exec", c, "cat", "/proc/1/status").splitlines() if ":" in line)
        uids, gids = status["Uid"].split(), status["Gid"].split()
        assert set(uids) == {"10001"}, uids
        assert set(gids) == {"10001"}, gids
        assert int(status["CapEff"], 16) == 0  # cap_drop: ALL
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts["/models"]["RW"] is False
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        for path in ("/models/probe", "/app/probe"):  # even root cannot write there
            result = subprocess.run(["docker", "exec", "--user", "0", c, "touch", path], capture_output=True)
            assert result.returncode != 0
            assert b"Read-only file system" in result.stderr, result.stderr
        report(f"{name(c)}: Docker says healthy; pid 1 runs as uid/gid 10001 with no capabilities; /models and / read-only")


def test_demo_pair_through_nginx(stack: Stack, host_server: Server, demo_pair: dict[str, str]) -> None:
    files = {"audio": Path(demo_pair["audio"]), "video": Path(demo_pair["video"])}
    check_prediction(stack, host_server, "wav + mp4 pair (demo)", files)


def test_grid_clip_with_its_own_audio_through_nginx(stack: Stack, host_server: Server) -> None:
    clip = sorted(shared_data("grid").glob("*.mpg"))[0]
    check_prediction(stack, host_server, f"GRID {clip.name}, use_video_audio=true", {"video": clip}, {"use_video_audio": "true"})


def test_fsdd_wav_through_nginx(stack: Stack, host_server: Server) -> None:
    wav = shared_data("fsdd", "recordings", "3_jackson_0.wav")
    check_prediction(stack, host_server, f"FSDD {wav.name}", {"audio": wav})


def test_both_replicas_serve_and_count_their_own_traffic(stack: Stack, demo_pair: dict[str, str]) -> None:
    replicas = stack.replicas()
    before = {c: predictions_served(c) for c in replicas}
    n = 20  # nginx picks a replica at random per request: both get some with probability 1 - 2^-19
    files = {"audio": Path(demo_pair["audio"]), "video": Path(demo_pair["video"])}
    for _ in range(n):
        assert predict(stack.http, files).status_code == 200
    served = {c: predictions_served(c) - before[c] for c in replicas}
    assert sum(served.values()) == n, served
    assert all(v >= 1 for v in served.values()), served
    counts = ", ".join(f"{name(c)} {v:.0f}" for c, v in served.items())
    report(f"{n} predictions through nginx, counted by each replica's /metrics: {counts}")


def test_prometheus_scrapes_both_replicas_and_loads_the_rules(stack: Stack) -> None:
    replicas = stack.replicas()
    want = {f"{ip(c)}:8000" for c in replicas}

    def targets_up() -> set[str] | None:
        body = httpx.get(f"{stack.prometheus}/api/v1/targets", params={"state": "active"}, timeout=5).json()
        targets = [t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "mla-api"]
        up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
        return up if up == want and len(targets) == len(want) else None

    wait_for("Prometheus to scrape both replicas", targets_up, timeout=90)
    rows = _query(stack, 'up{job="mla-api"}')
    assert {r["metric"]["instance"] for r in rows if r["value"][1] == "1"} == want

    # what each replica counts itself is what Prometheus holds for it, once scraped (no traffic now)
    own = {f"{ip(c)}:8000": predictions_served(c) for c in replicas}
    assert all(v > 0 for v in own.values()), own

    def per_replica() -> dict[str, float] | None:
        rows = _query(stack, 'sum by (instance) (mla_requests_total{route="/v1/predict",status="200"})')
        counts = {r["metric"]["instance"]: float(r["value"][1]) for r in rows}
        return counts if counts == own else None

    per_instance = wait_for("Prometheus to hold each replica's own prediction count", per_replica, timeout=60)

    alerts = yaml.safe_load((ROOT / "docker/prometheus/alerts.yml").read_text())
    expected = {r["alert"] for g in alerts["groups"] for r in g["rules"]}

    def rules_evaluated() -> dict[str, str] | None:
        groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = {r["name"]: r["health"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        return rules if set(rules) == expected and all(h == "ok" for h in rules.values()) else None

    rules = wait_for("the alert rules to be loaded and evaluated", rules_evaluated, timeout=60)
    report(f"Prometheus: targets {sorted(want)} up; per-replica prediction counts {per_instance}, as the replicas count them")
    report(f"Prometheus: {len(rules)} alert rules loaded and evaluated without error: {sorted(rules)}")


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _raw_post(base: str, path: str) -> tuple[int, bytes]:
    """POST with the path sent exactly as written (httpx would normalise it)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request("POST", path, body=b"", headers={"Content-Length": "0"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_admin_is_not_reachable_through_nginx(stack: Stack) -> None:
    paths = ["/admin/drain", "/admin/resume", "/admin/", "//admin/drain", "/%61dmin/drain", "/./admin/drain"]
    paths += ["/v1/../admin/drain", "/v2/repository/index", "/v2/repository/models/tiny/load", "//v2/repository/index"]
    for path in paths:
        status, body = _raw_post(stack.http, path)
        assert status == 404, (path, status, body)  # a replica would answer 403 (no MLA_ADMIN_KEY) or 401
        error = json.loads(body)
        # the service's shape, or on /v2 the Open Inference Protocol's ({"error": message, "code": ...})
        assert (error["error"]["code"] if isinstance(error["error"], dict) else error["code"]) == "not_found", path
    for c in stack.replicas():  # no request got through: no replica was drained
        response = httpx.get(f"http://{ip(c)}:8000/readyz", timeout=5)
        assert response.status_code == 200, (name(c), response.text)
    report(f"/admin/* and /v2/repository/* through nginx: 404 for {paths}; both replicas still ready (none drained)")


def test_requests_keep_succeeding_with_a_replica_stopped(stack: Stack, demo_pair: dict[str, str]) -> None:
    stopped, survivor = stack.replicas()
    docker("stop", "--time", "45", stopped, timeout=90)
    assert inspect(stopped)["State"]["ExitCode"] == 0  # SIGTERM: drained and exited cleanly
    before = predictions_served(survivor)
    files = {"audio": Path(demo_pair["audio"]), "video": Path(demo_pair["video"])}
    statuses = [predict(stack.http, files).status_code for _ in range(10)]
    assert statuses == [200] * 10, statuses
    assert predictions_served(survivor) - before == 10
    report(f"{name(stopped)} stopped (exit 0): 10 of 10 predictions through nginx answered by {name(survivor)}")
    docker("start", stopped)
    wait_for(f"{name(stopped)} to be healthy again", lambda: health(stopped) == "healthy", timeout=180)
    report(f"{name(stopped)} started again and healthy")


def test_sigterm_under_load_loses_no_request(stack: Stack, demo_pair: dict[str, str]) -> None:
    replicas = stack.replicas()
    for c in replicas:
        wait_for(f"{name(c)} to be healthy", lambda c=c: health(c) == "healthy", timeout=180)  # type: ignore[misc]
    victim = replicas[1]
    files = {"audio": Path(demo_pair["audio"]), "video": Path(demo_pair["video"])}
    results: list[tuple[float, int | str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status: int | str = predict(stack.http, files).status_code
            except httpx.HTTPError as exc:
                status = repr(exc)
            results.append((time.monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(4)]
    before = predictions_served(victim)
    for t in threads:
        t.start()
    try:
        wait_for(f"{name(victim)} to be serving the load", lambda: predictions_served(victim) - before >= 10, timeout=60)
        waiter = subprocess.Popen(["docker", "wait", victim], stdout=subprocess.PIPE)
        sent_at = time.monotonic()
        docker("kill", "--signal", "SIGTERM", victim)
        exit_code = waiter.communicate(timeout=90)[0].decode().strip()
        exited_at = time.monotonic()
        time.sleep(3)  # and a little longer, while nginx still has the old address cached
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    failures = [s for _, s in results if s != 200]
    during = sum(1 for at, _ in results if sent_at <= at <= exited_at)
    assert not failures, failures[:5]
    assert exit_code == "0", exit_code
    report(
        f"SIGTERM to {name(victim)} under 4 concurrent clients: it exited 0 after {exited_at - sent_at:.1f} s; "
        f"{len(results)} predictions, {during} of them answered while it shut down, none lost"
    )


def test_no_replica_left_is_a_503_in_the_service_shape(stack: Stack) -> None:
    replicas = stack.containers("api-cpu", all_states=True)
    for c in replicas:
        docker("stop", "--time", "45", c, timeout=90)
    response = wait_for("nginx to give up on the stopped replicas", lambda: get(f"{stack.http}/v1/models"), timeout=30)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["retry-after"] == "1"
    report("every replica stopped: nginx answers 503 with Retry-After, in the service's error shape")
