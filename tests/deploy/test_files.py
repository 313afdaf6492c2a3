"""The essentials of the deployment files, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from service.settings import Settings
from tests.conftest import ROOT

DOCKERFILES = [ROOT / "docker/Dockerfile", ROOT / "docker/Dockerfile.train"]


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        (line.split()[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_essentials(path: Path) -> None:
    ins = instructions(path)
    stages = {arg.split()[-1] for op, arg in ins if op == "FROM" and " AS " in arg.upper()}
    for op, arg in ins:
        if op == "FROM":
            image = arg.split()[0]
            if image.startswith("base-"):
                assert image.removeprefix("base-") == "${VARIANT}" or image in stages
                continue
            assert ":" in image, f"{image} is not pinned by tag"
            assert not image.endswith(":latest"), image
    users = [arg for op, arg in ins if op == "USER"]
    assert users, "no USER"
    assert users[-1] not in ("root", "0")
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    lock = "serve.txt" if path.name == "Dockerfile" else "train.txt"
    assert f"-r requirements/{lock}" in runs  # the pins CI installs
    assert "--no-deps ." in runs
    if path.name == "Dockerfile":
        assert any(op == "HEALTHCHECK" and "/readyz" in arg for op, arg in ins)
        assert "torch" not in (ROOT / "requirements/serve.txt").read_text()


def test_ci_installs_the_same_pins() -> None:
    assert "-r requirements/dev.txt" in (ROOT / "Makefile").read_text()
    pins = {}
    for lock in ("serve", "train", "dev"):
        pins[lock] = dict(
            line.split("==") for line in (ROOT / f"requirements/{lock}.txt").read_text().splitlines() if "==" in line
        )
    # the images' pins are exactly CI's
    for lock in ("serve", "train"):
        for name, version in pins[lock].items():
            assert pins["dev"].get(name) == version, (lock, name)
    # every dependency that pyproject declares is pinned, at a version it accepts
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra in ("serve", "train"):
        for raw in project["dependencies"] + project["optional-dependencies"][extra]:
            req = Requirement(raw)
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            assert name in pins[extra], (extra, name)
            assert req.specifier.contains(pins[extra][name], prereleases=True), (extra, name, pins[extra][name])


def test_compose_gpu_reservation_and_pinned_images() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    devices = services["api"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert "deploy" not in services["api-cpu"]
    for name, svc in services.items():
        if "image" in svc and "build" not in svc:
            assert re.match(r"^[\w./-]+:[\w.-]+$", svc["image"]), (name, svc["image"])
            assert not svc["image"].endswith(":latest")
    assert services["api"]["volumes"] == ["./models:/models:ro"]


def test_env_example_names_real_settings() -> None:
    names = {line.split("=")[0].lstrip("# ").strip() for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    fields = {f"MLA_{f.upper()}" for f in Settings.model_fields}
    assert names
    assert names <= fields, names - fields
