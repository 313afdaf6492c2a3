"""A real uvicorn server (the `mla serve` command) on a loopback port, for the tests that need one.

It is the benchmarks' live server (benchmarks/live.py) with what tests add: a helper to post
files, and a look at the upload folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import httpx

from benchmarks.live import Live, free_port, start, stop

__all__ = ["Server", "free_port", "start_server", "stop_server"]


@dataclass
class Server(Live):
    def post(
        self, files: Mapping[str, Path | tuple[str | None, bytes]] | None = None, data: dict[str, str] | None = None, **kw: object
    ) -> httpx.Response:
        opened = {}
        for field, value in (files or {}).items():
            opened[field] = (value.name, value.read_bytes()) if isinstance(value, Path) else value
        return httpx.post(f"{self.url}/v1/predict", files=opened or None, data=data, timeout=60, **kw)  # type: ignore[arg-type]

    def tmp_is_empty(self) -> bool:
        return not self.leftovers(settle=0)


def start_server(model_dir: Path, workdir: Path, **env: str) -> Server:
    """`mla serve` on `model_dir` with two decode workers and INFO logs; `env` adds or overrides settings."""
    live = start(model_dir, workdir, **{"MLA_DECODE_WORKERS": "2", "MLA_LOG_LEVEL": "INFO", **env})
    return Server(**{f.name: getattr(live, f.name) for f in fields(live)})  # the same process, seen as a Server


def stop_server(server: Server) -> None:
    stop(server)
