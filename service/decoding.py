"""What runs inside a decode worker process: its main loop, its memory ceiling, and the decode jobs.

A worker is its own program (`python -m service.decoding FD HEADROOM`), started by
service/workers.py with an allow-listed environment: the process that runs FFmpeg on untrusted
bytes holds none of the server's secrets. Jobs take a path or in-memory bytes and plain values and
return a numpy array; replies travel in service/wire.py's fixed layout, never pickled.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import resource
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from common.media_types import Limits, MediaError
from common.modalities import decode
from service import wire

log = logging.getLogger(__name__)


class NamedBytes(io.BytesIO):
    """An upload kept in memory, with the client's file name: FFmpeg takes its extension as a hint."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


Source = Path | tuple[str, bytes]  # a file on disk, or (file name, its bytes)


def _opened(source: Source) -> Path | NamedBytes:
    return source if isinstance(source, Path) else NamedBytes(source[1], source[0])


def decode_file(modality: str, source: Source, spec: Any, limits: Limits) -> np.ndarray:
    """An upload of `modality` to the array its graph takes, accepting only the formats its kind takes from clients."""
    return decode(modality, _opened(source), spec, limits, strict=True)


def _address_space() -> int:
    """Bytes of address space this process has mapped now (VmSize)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def limit_memory(headroom: int) -> int | None:
    """Cap this process's address space at what it maps now (imports done) plus `headroom` bytes.

    Past it, an allocation fails (MemoryError in Python, ENOMEM in FFmpeg) and the job is
    refused with a 413, instead of the kernel's OOM killer taking a process, maybe the server.
    Returns the cap, or None where the platform has no /proc or RLIMIT_AS.
    """
    try:
        cap = _address_space() + headroom
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (OSError, ValueError) as exc:
        log.warning("decode worker runs without a memory ceiling: %s", exc)
        return None
    return cap


def _reply(sock: socket.socket, header: dict[str, object], payload: bytes) -> None:
    started = time.perf_counter()
    try:
        fn, args = pickle.loads(payload)  # from the server, which is trusted
        array = np.asarray(fn(*args))
        if array.dtype.kind not in wire.NUMERIC_KINDS:
            raise TypeError(f"a decode job must return a numeric array, not {array.dtype}")
    except MediaError as exc:
        wire.send(sock, {"status": "media", "kind": type(exc).__name__, "message": str(exc)})
        return
    except MemoryError:
        wire.send(sock, {"status": "memory", "message": "decoding needs more memory than the worker's ceiling"})
        return
    except Exception:  # a bug, not the input: reported as such, and the worker lives on
        wire.send(sock, {"status": "bug", "message": traceback.format_exc()[-8000:]})
        return
    wire.send_array(sock, array, time.perf_counter() - started)


def worker_main(fd: int, memory_headroom: int) -> None:
    """A decode worker: answer one job at a time on socket `fd` until it closes or says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server stops us
    sock = socket.socket(fileno=fd)
    limit_memory(memory_headroom)
    try:
        wire.send(sock, {"status": "ready", "pid": os.getpid()})
    except OSError:  # the server stopped while this worker started
        return
    while True:
        try:
            header, payload = wire.receive_blocking(sock)
        except (EOFError, OSError, wire.ProtocolError):
            return
        if header.get("op") != "job":
            return
        try:
            _reply(sock, header, payload)
        except MemoryError:
            wire.send(sock, {"status": "memory", "message": "the decoded result does not fit under the worker's ceiling"})
        except (BrokenPipeError, EOFError, OSError):
            return


if __name__ == "__main__":
    worker_main(int(sys.argv[1]), int(sys.argv[2]))
