"""A real uvicorn server (the `mla serve` command) on a loopback port, for the tests that need one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    tmp_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def post(
        self, files: Mapping[str, Path | tuple[str | None, bytes]] | None = None, data: dict[str, str] | None = None, **kw: object
    ) -> httpx.Response:
        opened = {}
        for field, value in (files or {}).items():
            opened[field] = (value.name, value.read_bytes()) if isinstance(value, Path) else value
        return httpx.post(f"{self.url}/v1/predict", files=opened or None, data=data, timeout=60, **kw)  # type: ignore[arg-type]

    def tmp_is_empty(self) -> bool:
        return not any(self.tmp_dir.iterdir()) if self.tmp_dir.exists() else True


def start_server(model_dir: Path, workdir: Path, **env: str) -> Server:
    port = free_port()
    tmp_dir = workdir / "uploads"
    log = workdir / "server.log"
    environ = {**os.environ, "MLA_TMP_DIR": str(tmp_dir), "MLA_PROVIDERS": "cpu", "MLA_DECODE_WORKERS": "2", **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--model", str(model_dir), "--port", str(port)],
            cwd=ROOT,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Server(url, tmp_dir, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server never became ready:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
