"""A live `mla serve` for the fuzz and soak harnesses: start it, watch its process tree, stop it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    url: str
    proc: subprocess.Popen[bytes]
    uploads: Path
    log: Path

    def tree_rss(self) -> int:
        """Resident bytes of the server and every process under it (decode workers, resource tracker)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def decode_workers(self) -> list[psutil.Process]:
        children = psutil.Process(self.proc.pid).children()
        return [c for c in children if "service.decoding" in c.cmdline()]

    def leftovers(self, settle: float = 5.0) -> list[str]:
        """What is still in the upload folder after `settle` seconds, beside the server's own folder
        and its lock (service/uploads.py's Storage): each one a leak."""
        deadline = time.monotonic() + settle
        while True:
            left = [str(p.relative_to(self.uploads)) for p in self.uploads.rglob("*") if not _own(p, self.uploads)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def metric(self, sample: str) -> float:
        """The value of one exposition line, named with its labels as they are printed; 0 when absent."""
        value = metric_value(self.url, sample)
        return 0.0 if value is None else value


def metric_value(url: str, sample: str) -> float | None:
    """The value of one line of the server at `url`'s /metrics, named with its labels as they are printed; None when
    it has no such line (a peer server)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _own(path: Path, uploads: Path) -> bool:
    """The server's folder (uploads/server-<pid>-<random>) and the lock inside it."""
    rel = path.relative_to(uploads).parts
    return rel[0].startswith("server-") and (len(rel) == 1 or rel[1:] == (".lock",))


def start(model: Path, workdir: Path, **env: str) -> Live:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uploads = Path(env.get("MLA_TMP_DIR", workdir / "uploads"))
    log = workdir / "server.log"
    environ = {**os.environ, "MLA_TMP_DIR": str(uploads), "MLA_PROVIDERS": "cpu", "MLA_LOG_LEVEL": "WARNING", **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--model", str(model), "--port", str(port)],
            cwd=ROOT,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, 180, lambda: log.read_text()[-3000:])
    return Live(url, proc, uploads, log)


def wait_ready(proc: subprocess.Popen[bytes], url: str, seconds: float, tail: Callable[[], str] = str) -> None:
    """Until `url`/readyz answers 200; kills `proc` and raises (with `tail()`, its log) if it exits or takes longer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server (pid {proc.pid}) exited with {proc.returncode}:\n{tail()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server (pid {proc.pid}) never became ready in {seconds:g} s:\n{tail()}")


def stop(live: Live) -> None:
    live.proc.terminate()
    try:
        live.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        live.proc.kill()
        live.proc.wait(timeout=30)
