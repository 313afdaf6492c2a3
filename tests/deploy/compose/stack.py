"""The compose project under test: docker-compose.yml with the CI override, CPU profile, two api
replicas behind nginx, and Prometheus, built offline on the local Debian base."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.conftest import ROOT
from tests.deploy.compose.engine import docker

PROJECT = "mla-ci"
COMPOSE_FILES = ("docker-compose.yml", "docker/ci/compose.ci.yml")
SERVICES = ("api-cpu", "lb", "prometheus")
CI_IMAGES = ("mla-ci/api:cpu", "mla-ci/nginx:bookworm", "mla-ci/prometheus:bookworm")
WHEELHOUSE = ROOT / "docker" / "wheelhouse"
# The CPU image's interpreter and platform: Debian bookworm's python3 (3.11) and glibc (2.36).
# Given --platform, pip takes that tag alone, so name every manylinux tag glibc 2.36 runs, as pip
# would there: manylinux_2_36 down to manylinux_2_5, and their legacy aliases.
IMAGE_PYTHON = "3.11"
IMAGE_ABIS = ("cp311", "abi3", "none")
IMAGE_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
LOCKS = ("requirements/serve-cpu.txt", "requirements/build.txt")

T = TypeVar("T")


def fill_wheelhouse() -> list[Path]:
    """Download, on the host, the wheels of the CPU image's lock files into the build context;
    return the files added (pip's own cache makes a second run local)."""
    before = set(WHEELHOUSE.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", IMAGE_PYTHON, "--implementation", "cp"]
    for abi in IMAGE_ABIS:
        cmd += ["--abi", abi]
    for platform in IMAGE_PLATFORMS:
        cmd += ["--platform", platform]
    cmd += ["--dest", str(WHEELHOUSE)]
    for lock in LOCKS:
        cmd += ["-r", str(ROOT / lock)]
    result = subprocess.run(cmd, capture_output=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"pip download failed:\n{(result.stdout + result.stderr).decode(errors='replace')[-3000:]}")
    return sorted(set(WHEELHOUSE.iterdir()) - before)


@dataclass
class Stack:
    env_file: Path
    http: str  # nginx, published on loopback
    prometheus: str
    log: Path

    def compose(self, *args: str, timeout: float = 900) -> str:
        cmd = ["docker-compose", "--project-name", PROJECT, "--project-directory", str(ROOT), "--env-file", str(self.env_file)]
        for f in COMPOSE_FILES:
            cmd += ["--file", str(ROOT / f)]
        cmd += ["--profile", "cpu", *args]
        with self.log.open("ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            result = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, timeout=timeout)
            log.write(result.stdout)
        if result.returncode != 0:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"docker-compose {' '.join(args)} failed ({result.returncode}); end of {self.log}:\n{tail}")
        return result.stdout.decode().strip()

    def containers(self, service: str, *, all_states: bool = False) -> list[str]:
        args = ["ps", "-a", "-q"] if all_states else ["ps", "-q"]
        return [c for c in self.compose(*args, service).splitlines() if c]

    def replicas(self) -> list[str]:
        return self.containers("api-cpu")


def inspect(container: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(docker("inspect", container))
    return data[0]


def name(container: str) -> str:
    return str(inspect(container)["Name"]).lstrip("/")


def ip(container: str) -> str:
    networks = inspect(container)["NetworkSettings"]["Networks"]
    (net,) = networks.values()
    return str(net["IPAddress"])


def health(container: str) -> str:
    return str(inspect(container)["State"].get("Health", {}).get("Status", "none"))


def get(url: str, **kw: Any) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kw)
    except httpx.HTTPError:
        return None


def counter(metrics_text: str, metric: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`, from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def predictions_served(container: str) -> float:
    """The replica's own count of answered predictions, read from its /metrics on the compose network."""
    response = httpx.get(f"http://{ip(container)}:8000/metrics", timeout=5)
    response.raise_for_status()
    return counter(response.text, "mla_requests_total", route="/v1/predict", status="200")
