"""What runs inside a decode worker process: its main loop, its memory ceiling, and the decode jobs.

A worker is its own program (`python -m service.decoding FD HEADROOM`), started by
service/workers.py with an allow-listed environment: the process that runs FFmpeg on untrusted
bytes holds none of the server's secrets. Jobs take a path or in-memory bytes and plain values and
return a numpy array; replies travel in service/wire.py's fixed layout, never pickled.

Where the service runs inference in its workers (`MLA_INFERENCE`, service/model.py), a job also runs
the modality's graph on what it decoded (`decode_and_run`), so that only the graph's outputs, a few
hundred bytes, cross the process line. Each worker keeps the sessions it has used (`SESSIONS_KEPT`,
least recently used first out), one intra-op thread each: the workers are as many as the cores.
"""

from __future__ import annotations

import contextlib
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
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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


SESSIONS_KEPT = 8  # graphs a worker keeps loaded: two versions of a model of up to four modalities


@dataclass(frozen=True)
class Graph:
    """One modality's exported graph, as a worker runs it: its file, the sha256 its manifest gives the file (a
    session is kept under both, so a new file at the same path is loaded afresh), and the outputs wanted (the
    logits, then the features where the modality has a detector), joined along axis 1 in this order."""

    path: str
    sha256: str
    outputs: tuple[str, ...]


class Timed(NamedTuple):
    """A job's array and the seconds of it that ONNX Runtime took (the rest of the job's time is decoding)."""

    array: np.ndarray
    inference_seconds: float


class _Loaded(NamedTuple):
    session: Any
    input_name: str


_sessions: OrderedDict[Graph, _Loaded] = OrderedDict()


def session_options(threads: int | None) -> Any:
    """ONNX Runtime options for every session the service runs, in the server or in a worker: the graph optimised
    fully (ORT_ENABLE_ALL), `threads` intra-op threads (None: ONNX Runtime's choice; 1 also sets one inter-op
    thread), and no busy-waiting between calls. The decode workers share the cores, and a spinning pool took them
    (video decoding measured 5 ms alone, 24 ms beside spinning ORT)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if threads == 1:
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def worker_session(graph: Graph) -> _Loaded:
    """This process's ONNX Runtime session for `graph`, loaded on first use, with `session_options(1)`: each worker
    is one core's worth of work."""
    loaded = _sessions.get(graph)
    if loaded is not None:
        _sessions.move_to_end(graph)
        return loaded
    import onnxruntime as ort

    session = ort.InferenceSession(graph.path, session_options(1), providers=["CPUExecutionProvider"])
    loaded = _sessions[graph] = _Loaded(session, session.get_inputs()[0].name)
    while len(_sessions) > SESSIONS_KEPT:
        _sessions.popitem(last=False)
    return loaded


def run_graph(graph: Graph, x: np.ndarray) -> Timed:
    """The graph's outputs for one input row `x` (no batch axis), as one float32 row: [sum of the outputs' widths]
    (what a server session's batch gives that row)."""
    loaded = worker_session(graph)
    started = time.perf_counter()
    outputs = loaded.session.run(list(graph.outputs), {loaded.input_name: np.ascontiguousarray(x)[None]})
    row = np.concatenate([np.asarray(o, np.float32).reshape(-1) for o in outputs])
    return Timed(row, time.perf_counter() - started)


def decode_and_run(modality: str, source: Source, spec: Any, limits: Limits, graph: Graph) -> Timed:
    """An upload of `modality` decoded (as `decode_file` does) and run through its graph: `run_graph`'s row."""
    return run_graph(graph, decode_file(modality, source, spec, limits))


def warm_graphs(graphs: list[tuple[Graph, tuple[int, ...], str]]) -> np.ndarray:
    """The service's warm-up in this worker: each (graph, input row shape, dtype) loaded and run once on a row of
    zeros, before a request needs it (a graph that cannot run one row fails start-up here); [graphs warmed]."""
    for graph, shape, dtype in graphs:
        run_graph(graph, np.zeros(shape, np.dtype(dtype)))
    return np.array([len(graphs)])


def _address_space() -> int:
    """Bytes of address space this process has mapped now (VmSize)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def batch_scheduling() -> None:
    """This process under SCHED_BATCH, where the OS has it (Linux); elsewhere, or where a sandbox forbids it, as it was.

    A job is handed to a worker blocked in recv, and the scheduler used to switch to the worker it woke at once,
    preempting the server's event loop, the service's one serial stage, inside its send: 270-300 us of the loop's
    wall time per job, against 37-40 us for a worker under SCHED_BATCH, whose wake-ups preempt nobody (measured
    under wrk at concurrency 32 on 2 cores). Its share of the CPU is the same: SCHED_BATCH is scheduled as
    SCHED_OTHER at the same nice value, only never at once on waking."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


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
        result = fn(*args)
        inference = None
        if isinstance(result, Timed):
            result, inference = result
        array = np.asarray(result)
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
    wire.send_array(sock, array, time.perf_counter() - started, inference)


def worker_main(fd: int, memory_headroom: int, onnxruntime: bool = False) -> None:
    """A decode worker: answer one job at a time on socket `fd` until it closes or says stop. `onnxruntime`: its jobs
    run graphs, so ONNX Runtime is imported before the memory ceiling is set (its libraries are not the jobs' memory)."""
    # Ctrl-C reaches the whole process group, and so does SIGTERM where a supervisor signals the group (systemd's
    # control-group kill mode, `kill -- -PGID`): the server stops its workers (pool.close) and, when it dies, the
    # socket's EOF does. A worker that died first was taken for a crash and replaced while the server shut down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    batch_scheduling()
    sock = socket.socket(fileno=fd)
    if onnxruntime:
        import onnxruntime as _  # noqa: F401
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
    # Run as service.decoding, not __main__: the jobs unpickle into that module, and its Timed and its session cache
    # must be the ones the loop sees.
    from service.decoding import worker_main as main

    main(int(sys.argv[1]), int(sys.argv[2]), "--onnxruntime" in sys.argv[3:])
