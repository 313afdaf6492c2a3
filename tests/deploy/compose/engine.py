"""A Docker engine for the compose test, and a Debian base image built without a registry.

The engine is the one already running, or a `dockerd` started here in the background (there is
no systemd on CI machines) and stopped by its PID afterwards: one daemon per machine. No
registry is reachable from CI, so every image builds on a Debian bookworm made here with
`debootstrap --variant=minbase` and `docker import`, and cached as a tarball between runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The cache outlives the test session: read where it lives now, before tests/conftest.py points
# MLA_CACHE_DIR at a temporary folder for the session.
CACHE_DIR = Path(os.environ.get("MLA_CACHE_DIR") or Path.home() / ".cache" / "mla-serve") / "docker"
MIRROR = os.environ.get("MLA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
BASE_IMAGE = f"mla-ci/debian:{SUITE}"
# Security updates land in the mirror, not in a cached tarball: bootstrap again after a week.
BASE_MAX_AGE_S = 7 * 24 * 3600
PID_FILE = Path("/var/run/docker.pid")


class EngineUnavailableError(Exception):
    """This machine cannot run a Docker engine (the compose test is skipped with this reason)."""


@dataclass
class Engine:
    version: str
    proc: subprocess.Popen[bytes] | None  # the dockerd started here; None when one was already running
    log: Path | None


def docker(*args: str, check: bool = True, timeout: float = 600, input: bytes | None = None) -> str:
    """Run the docker CLI; its stdout, stripped. A failure raises with its stderr."""
    result = subprocess.run(["docker", *args], capture_output=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr.decode(errors='replace')}")
    return result.stdout.decode().strip()


def _server_version() -> str | None:
    try:
        result = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.decode().strip() if result.returncode == 0 else None


def unavailable_reason() -> str | None:
    """Why no engine can run here, or None. `make test` installs the packages (system-deps)."""
    missing = [tool for tool in ("docker", "dockerd", "docker-compose", "debootstrap", "iptables") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages docker.io, docker-compose, debootstrap, iptables)"
    if _server_version() is None and os.geteuid() != 0:
        return "no Docker engine is running and starting dockerd needs root"
    return None


def start_engine(workdir: Path, timeout: float = 90) -> Engine:
    """Use the running engine, or start dockerd in the background and wait until it answers."""
    version = _server_version()
    if version is not None:
        return Engine(version, None, None)
    if PID_FILE.exists():  # left by a daemon that was killed: dockerd refuses to start over it
        try:
            os.kill(int(PID_FILE.read_text().strip() or 0), 0)
        except (ValueError, ProcessLookupError):
            PID_FILE.unlink()
    log = workdir / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailableError(f"dockerd exited with {proc.returncode}: {_tail(log)}")
        version = _server_version()
        if version is not None:
            return Engine(version, proc, log)
        time.sleep(0.5)
    stop_engine(Engine("", proc, log))
    raise EngineUnavailableError(f"dockerd did not answer within {timeout:.0f} s: {_tail(log)}")


def stop_engine(engine: Engine, timeout: float = 60) -> None:
    """Stop the dockerd started here (it stops its containerd); leave a running one alone."""
    if engine.proc is None or engine.proc.poll() is not None:
        return
    engine.proc.send_signal(signal.SIGTERM)
    try:
        engine.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        engine.proc.kill()
        engine.proc.wait(10)
        raise RuntimeError(f"dockerd did not stop within {timeout:.0f} s of SIGTERM and was killed") from None


def _tail(log: Path, lines: int = 5) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:]) if log.exists() else ""


SOURCE_LABEL = "org.mla-serve.ci.source"  # which tarball (path and mtime) an imported base came from


def _image_source(tag: str) -> str | None:
    out = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{SOURCE_LABEL}"}}}}', tag, check=False)
    return out or None


def ensure_base_image() -> tuple[str, str]:
    """The local Debian base, imported from the cached tarball (bootstrapped when absent or old).
    Returns the tag and how it was obtained."""
    tarball = CACHE_DIR / f"debian-{SUITE}-minbase.tar"
    fresh = tarball.exists() and time.time() - tarball.stat().st_mtime < BASE_MAX_AGE_S
    if fresh and _image_source(BASE_IMAGE) == f"{tarball}@{tarball.stat().st_mtime_ns}":
        return BASE_IMAGE, f"already in the engine, imported from the cache {tarball}"
    how = f"imported from the cache {tarball}"
    if not fresh:
        bootstrap(tarball)
        how = f"bootstrapped from {MIRROR} (debootstrap --variant=minbase {SUITE}) and cached at {tarball}"
    docker(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["bash"]',
        "--change",
        f'LABEL {SOURCE_LABEL}="{tarball}@{tarball.stat().st_mtime_ns}"',
        str(tarball),
        BASE_IMAGE,
    )
    return BASE_IMAGE, how


# What the official Debian images do to a debootstrap (debuerreotype's "docker" tweaks, the
# ones that matter here): no services started by package scripts, no apt caches or docs kept.
_TWEAKS = {
    "usr/sbin/policy-rc.d": "#!/bin/sh\n# packages must not start services while an image builds\nexit 101\n",
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb'
        ' /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb'
        ' /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n'
    ),
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
    "etc/dpkg/dpkg.cfg.d/docker-slim": (
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n"
    ),
    "etc/apt/sources.list": (
        f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
        f"deb {MIRROR.rsplit('/', 1)[0]}/debian-security {SUITE}-security main\n"
    ),
}


def bootstrap(tarball: Path) -> None:
    """debootstrap a minimal bookworm, slim it like the official image, and tar it (as root)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mla-rootfs-", dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR], timeout=900)
        for rel, text in _TWEAKS.items():
            path = rootfs / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (rootfs / "usr/sbin/policy-rc.d").chmod(0o755)
        for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*", "var/log/*.log"):
            for path in rootfs.glob(pattern):
                if path.is_file():
                    path.unlink()
        for share in ("man", "info"):
            shutil.rmtree(rootfs / "usr/share" / share, ignore_errors=True)
        for doc in (rootfs / "usr/share/doc").glob("*"):
            for path in doc.rglob("*"):
                if path.is_file() and path.name != "copyright":
                    path.unlink()
        for locale in (rootfs / "usr/share/locale").glob("*"):
            if locale.is_dir():
                shutil.rmtree(locale)
        partial = Path(tmp) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
        partial.replace(tarball)  # whole or absent: an interrupted run leaves no half tarball


def _run(cmd: Sequence[str], timeout: float) -> None:
    result = subprocess.run(list(cmd), capture_output=True, timeout=timeout)
    if result.returncode != 0:
        out = (result.stdout + result.stderr).decode(errors="replace")
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}):\n{out[-3000:]}")
