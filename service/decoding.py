"""What runs inside a decode worker process: its main loop, its memory ceiling, and the decode jobs.

The jobs take paths and plain values and return numpy arrays; a MediaError travels back to
the event loop as itself. service/workers.py starts and supervises these processes.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from common.media import MEDIA_FORMATS, AudioSpec, Limits, MediaError, VideoSpec, load_audio, load_video

log = logging.getLogger(__name__)


def decode_audio_file(path: Path, spec: AudioSpec, limits: Limits) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    return load_audio(path, spec, limits, MEDIA_FORMATS), time.perf_counter() - t0


def decode_video_file(path: Path, spec: VideoSpec, limits: Limits) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    # One FFmpeg thread: the pool already runs one worker per core, so more would only contend.
    return load_video(path, spec, limits, MEDIA_FORMATS, threads=1), time.perf_counter() - t0


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


def worker_main(conn: Connection, memory_headroom: int) -> None:
    """A decode worker: answer one job at a time on `conn` until it closes or sends None.

    Replies are ("ready", pid) once, then per job ("ok", result), ("media", MediaError),
    ("memory", message) or ("bug", traceback).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server stops us
    limit_memory(memory_headroom)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fn, args = job
        reply: tuple[str, Any]
        try:
            reply = ("ok", fn(*args))
        except MediaError as exc:
            reply = ("media", exc)
        except MemoryError:
            reply = ("memory", "decoding needs more memory than the worker's ceiling")
        except Exception:  # a bug, not the input: reported as such, and the worker lives on
            reply = ("bug", traceback.format_exc())
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("memory", "the decoded result does not fit under the worker's ceiling"))
        except (BrokenPipeError, EOFError, OSError):
            return
