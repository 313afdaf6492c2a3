"""The essentials of the deployment files, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from service.settings import Settings
from tests.conftest import ROOT
from tests.deploy import locks

DOCKERFILES = [ROOT / "docker/Dockerfile", ROOT / "docker/Dockerfile.train"]
CI_DOCKERFILES = [ROOT / "docker/ci/nginx.Dockerfile", ROOT / "docker/ci/prometheus.Dockerfile"]


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        (line.split()[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def arg_defaults(ins: list[tuple[str, str]]) -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in ins if op == "ARG" and "=" in arg)


@pytest.mark.parametrize("path", DOCKERFILES + CI_DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_essentials(path: Path) -> None:
    text = path.read_text()
    ins = instructions(path)
    assert not text.startswith("# syntax="), "a syntax line makes BuildKit fetch a frontend from a registry"
    defaults = arg_defaults(ins)
    stages = {arg.split()[-1] for op, arg in ins if op == "FROM" and " AS " in arg.upper()}
    for op, arg in ins:
        if op == "FROM":
            image = arg.split()[0]
            if image in stages:
                continue
            if image.startswith("${"):  # a build argument: its default is what users get
                image = defaults[image.strip("${}")]
            assert ":" in image, f"{image} is not pinned by tag"
            assert not image.endswith(":latest"), image
    if path in CI_DOCKERFILES:
        return
    users = [arg for op, arg in ins if op == "USER"]
    assert users, "no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    if path.name == "Dockerfile":
        # the variant picks its lock: CUDA build of ONNX Runtime for gpu, CPU build for cpu
        assert "gpu) lock=serve.txt" in runs
        assert "cpu) lock=serve-cpu.txt" in runs
        assert '-r "requirements/$lock"' in runs
        assert "-r requirements/build.txt" in runs  # the pinned build backend
        assert "--no-deps --wheel-dir" in runs
        assert any(op == "HEALTHCHECK" and "/readyz" in arg for op, arg in ins)
        assert "torch" not in locks.versions("serve")
        assert "torch" not in locks.versions("serve-cpu")
        assert defaults["BASE_IMAGE"].startswith("nvidia/cuda:")  # the default variant is gpu
    else:
        assert "-r requirements/train.txt" in runs
        assert "--no-deps ." in runs


def test_ci_installs_the_same_pins() -> None:
    assert "-r requirements/dev.txt" in (ROOT / "Makefile").read_text()
    pinned = {lock: {(p.name, p.version) for p in locks.pins(lock)} for lock in ("serve", "serve-cpu", "train", "dev", "build")}
    # the images' pins are exactly CI's (every platform's: the locks are universal)
    for lock in ("serve", "serve-cpu", "train", "build"):
        assert pinned[lock] <= pinned["dev"], (lock, sorted(pinned[lock] - pinned["dev"]))
    # the CPU image's: the same as the GPU image's, with ONNX Runtime's CPU build of the same release
    here = {lock: locks.versions(lock) for lock in ("serve", "serve-cpu")}
    swapped = {("onnxruntime-gpu" if name == "onnxruntime" else name): v for name, v in here["serve-cpu"].items()}
    assert swapped == here["serve"]
    assert "onnxruntime-gpu" not in here["serve-cpu"]
    # every dependency that pyproject declares is pinned, at a version it accepts
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for lock, extras in {"serve": ("serve", "gpu"), "serve-cpu": ("serve", "cpu"), "train": ("train",)}.items():
        versions = locks.versions(lock)
        for raw in project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]:
            req = Requirement(raw)
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            assert name in versions, (lock, name)
            assert req.specifier.contains(versions[name], prereleases=True), (lock, name, versions[name])


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
    for name in ("api", "api-cpu"):
        svc = services[name]
        assert svc["volumes"] == ["./models:/models:ro"]
        assert svc["read_only"] is True
        # the one writable place: uploads (MLA_TMP_DIR), memory, sized above the spool budget
        assert svc["tmpfs"] == ["/tmp:size=1g"]
        assert Settings().max_spool_bytes + 64 * 2**20 <= 2**30
        assert svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"]
    assert services["api"]["build"]["args"]["VARIANT"] == "gpu"
    cpu_args = services["api-cpu"]["build"]["args"]
    assert cpu_args["VARIANT"] == "cpu"
    assert re.match(r"^debian:\d+\.\d+-slim$", cpu_args["BASE_IMAGE"])  # Debian's Python, like CI's base


def test_ci_override_changes_only_what_ci_cannot_pull() -> None:
    """docker/ci/compose.ci.yml: local images for the official ones, an offline api build, the test's
    model; nothing about how the services run."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    ci = yaml.safe_load((ROOT / "docker/ci/compose.ci.yml").read_text())["services"]
    assert set(ci) == {"api-cpu", "lb", "prometheus"}
    assert set(ci["api-cpu"]) == {"build", "image", "environment", "volumes"}
    assert ci["api-cpu"]["build"]["args"] == {"BASE_IMAGE": "${MLA_CI_BASE_IMAGE}", "WHEELS_ONLY": "1"}
    assert ci["api-cpu"]["volumes"] == ["${MLA_CI_MODELS}:/models:ro"]
    assert set(ci["api-cpu"]["environment"]) == {"MLA_MODEL_DIR"}
    for name in ("lb", "prometheus"):
        assert set(ci[name]) == {"build", "image"}
        assert ci[name]["build"]["context"] == "docker/ci"
        assert (ROOT / "docker/ci" / ci[name]["build"]["dockerfile"]).is_file()
    for name, svc in ci.items():
        assert svc["image"].startswith("mla-ci/")  # never a tag a user builds or pulls
        assert "image" in compose[name]


def test_nginx_keeps_admin_private_and_resends_dropped_requests() -> None:
    conf = (ROOT / "docker/nginx/nginx.conf").read_text()
    assert re.search(r"location \^~ /admin \{\s*return 404", conf)
    assert "proxy_request_buffering on;" in conf  # a dropped request can be sent again
    assert re.search(r"proxy_next_upstream [^;]*\bnon_idempotent\b", conf)


def test_env_example_names_real_settings() -> None:
    names = {line.split("=")[0].lstrip("# ").strip() for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    fields = {f"MLA_{f.upper()}" for f in Settings.model_fields}
    assert names
    assert names <= fields, names - fields
    assert fields <= names, f"settings .env.example does not name: {sorted(fields - names)}"


def test_readme_documents_every_setting() -> None:
    table = {
        name
        for row in re.findall(r"^\| (.+?) \|", (ROOT / "README.md").read_text(), re.M)
        for name in re.findall(r"`(MLA_\w+)`", row)
    }
    fields = {f"MLA_{f.upper()}" for f in Settings.model_fields}
    assert fields <= table, f"the README's settings table does not name: {sorted(fields - table)}"
