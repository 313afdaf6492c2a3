"""Fixtures of the compose test: a Docker engine, a tiny model, the stack built and brought up.

Run by `make compose-test` (pytest --compose); a plain pytest run deselects these tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.deploy.compose import engine as eng
from tests.deploy.compose.stack import (
    CI_IMAGES,
    PROJECT,
    SERVICES,
    Stack,
    fill_wheelhouse,
    get,
    health,
    name,
)
from tests.servers import Server, free_port, start_server, stop_server
from tests.waiting import wait_for

T = TypeVar("T")


def report(message: str) -> None:
    """One line per check made, in the test's output (make compose-test runs pytest -s)."""
    print(f"\n    [compose] {message}", flush=True)


def _unavailable(reason: str) -> None:
    # A CI machine that must prove the deployment sets MLA_REQUIRE_DOCKER=1: no silent skip there.
    if os.environ.get("MLA_REQUIRE_DOCKER") == "1":
        pytest.fail(f"no Docker engine: {reason}")
    pytest.skip(f"no Docker engine: {reason}")


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[eng.Engine]:
    reason = eng.unavailable_reason()
    if reason:
        _unavailable(reason)
    try:
        engine = eng.start_engine(tmp_path_factory.mktemp("dockerd"))
    except eng.EngineUnavailableError as exc:
        _unavailable(str(exc))
    if engine.proc is None:
        report(f"Docker engine {engine.version} already running: used, and left running")
    else:
        report(f"Docker engine {engine.version}: started dockerd (pid {engine.proc.pid}), log {engine.log}")
    yield engine
    if engine.proc is not None:
        eng.stop_engine(engine)
        report(f"dockerd (pid {engine.proc.pid}) stopped: exit code {engine.proc.returncode}")


@pytest.fixture(scope="session")
def ci_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MLA model trained for this test (seconds), exported: MODELS/tiny/1. What it predicts
    does not matter here; that the containers answer exactly as the host does, does."""
    from model_export.repository import export_run
    from training.config import TrainConfig
    from training.data.demo import generate
    from training.train import train

    work = tmp_path_factory.mktemp("ci-model")
    start = time.monotonic()
    manifest = generate(work / "demo", seed=5, sizes={"train": 40, "val": 16, "test": 8})
    train(f"csv:{manifest}", work / "run", TrainConfig(method="mla", epochs=4, batch_size=16, workers=0))
    version = export_run(work / "run", work / "models", name="tiny", version="1")
    # The replicas run as uid 10001: the mounted folder must be readable by anyone (pytest's are 0700).
    for path in [work / "models", *(work / "models").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    report(f"tiny model trained and exported in {time.monotonic() - start:.0f} s: {version}")
    return version


@pytest.fixture(scope="session")
def demo_pair(ci_model: Path) -> dict[str, str]:
    """A clean training clip of the demo the tiny model was trained on: its wav, its mp4, its label."""
    import csv

    manifest = ci_model.parents[2] / "demo" / "manifest.csv"
    with manifest.open() as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "train" and not r["corrupted"])
    return {"audio": str(manifest.parent / row["audio"]), "video": str(manifest.parent / row["video"]), "label": row["label"]}


@pytest.fixture(scope="session")
def host_server(ci_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`mla serve` on the host with the same model: the reference the containers must match."""
    server = start_server(ci_model.parent, tmp_path_factory.mktemp("host-server"))
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def stack(engine: eng.Engine, ci_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("compose")
    http_port, prom_port = free_port(), free_port()
    env_file = work / "ci.env"  # also keeps a developer's .env (COMPOSE_PROFILES...) out of the run
    base, how = _timed("base image", eng.ensure_base_image)
    report(f"base image {base}: {how}")
    env_file.write_text(
        f"MLA_CI_BASE_IMAGE={base}\nMLA_CI_MODELS={ci_model.parents[1]}\nMLA_CI_MODEL_NAME={ci_model.parent.name}\n"
        f"MLA_HTTP_PORT=127.0.0.1:{http_port}\nMLA_PROMETHEUS_PORT=127.0.0.1:{prom_port}\n"
    )
    stack = Stack(env_file, f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{prom_port}", work / "compose.log")
    added: list[Path] = []
    try:
        stack.compose("down", "--volumes", "--remove-orphans")  # whatever an interrupted run left
        added = _bring_up(stack)
        yield stack
    finally:
        _teardown(stack, engine, added)


def _bring_up(stack: Stack) -> list[Path]:
    """Build the images and start the stack; a failure says what the containers logged."""
    added: list[Path] = []
    try:
        added = _timed("wheelhouse", fill_wheelhouse)
        size = sum(p.stat().st_size for p in added) / 2**20
        report(f"wheelhouse: {len(added)} wheels ({size:.0f} MiB) downloaded on the host for Python 3.11 manylinux x86-64")
        _timed("image builds", lambda: stack.compose("build", "--parallel", *SERVICES, timeout=1500))
        for image in CI_IMAGES:
            mib = int(eng.docker("image", "inspect", "--format", "{{.Size}}", image)) / 2**20
            report(f"built {image}: {mib:.0f} MiB")
        _timed("up", lambda: stack.compose("up", "--detach", "--no-build", "--scale", "api-cpu=2", *SERVICES))
        replicas = stack.replicas()
        assert len(replicas) == 2, replicas
        for c in replicas:
            wait_for(f"{name(c)} to be healthy", lambda c=c: health(c) == "healthy", timeout=180)  # type: ignore[misc]
        wait_for("nginx to answer", lambda: (r := get(f"{stack.http}/readyz")) is not None and r.status_code == 200)
        wait_for("Prometheus to be ready", lambda: (r := get(f"{stack.prometheus}/-/ready")) is not None and r.status_code == 200)
        report(f"stack up: {', '.join(name(c) for c in replicas)} healthy; nginx {stack.http}, Prometheus {stack.prometheus}")
        return added
    except Exception as exc:
        try:
            logs = stack.compose("logs", "--no-color", "--tail", "40")
        except RuntimeError as err:
            logs = str(err)
        for path in added:
            path.unlink(missing_ok=True)
        raise RuntimeError(f"{exc}\n--- docker-compose logs ---\n{logs}") from exc


def _timed(what: str, step: Callable[[], T]) -> T:
    start = time.monotonic()
    result = step()
    report(f"{what}: {time.monotonic() - start:.0f} s")
    return result


def _teardown(stack: Stack, engine: eng.Engine, added: list[Path]) -> None:
    """Remove the project's containers, networks and volumes and the images built for it; check
    nothing is left. The base image stays (the cache)."""
    try:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "45")
        eng.docker("image", "rm", "--force", *CI_IMAGES, check=False)
        if engine.proc is not None:  # our own engine: also drop the build stages left dangling
            eng.docker("image", "prune", "--force")
        label = f"label=com.docker.compose.project={PROJECT}"
        left = {
            "containers": eng.docker("container", "ls", "--all", "--quiet", "--filter", label),
            "networks": eng.docker("network", "ls", "--quiet", "--filter", label),
            "volumes": eng.docker("volume", "ls", "--quiet", "--filter", label),
        }
        assert not any(left.values()), f"left behind: {left}"
        assert not eng.docker("image", "ls", "--quiet", "mla-ci/api"), "the api image was not removed"
        report("torn down: no container, network or volume of the project left; its images removed")
    finally:
        for path in added:  # only what this run downloaded: a developer's own wheels stay
            path.unlink(missing_ok=True)
