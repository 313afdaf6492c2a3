"""Supervised decode workers: a pool that heals, deadlines that kill, admission that answers 503.

Why not concurrent.futures or pebble: a ProcessPoolExecutor breaks for good when one worker
dies (every later call raises BrokenProcessPool) and cannot stop a job that overruns. pebble's
ProcessPool does both, but its workers share one pipe guarded by a cross-process lock, and
a worker killed while holding it (kill -9 or the OOM killer strike at any moment, an idle
worker waits for work holding the reader lock) leaves the lock held and the pool stuck. Here
each worker has its own pipe, so killing one at any moment touches no other; and the pool
knows exactly which worker holds which job, which it needs to count restarts, to answer the
job's request precisely (503 for a worker killed from outside, 400 for a decoder that crashed
on the file) and to report readiness.

Admission: a job runs only on an idle worker, one at a time per worker. Jobs wait in a
bounded line (`max_waiting`), each for at most `wait_seconds`; past either bound the request
gets a 503 with Retry-After: overload, not the client's fault. A job that runs past
`job_seconds` has its worker killed and the request gets a 413 (its input is too costly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import struct
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from common.media import DecodeError, MediaLimitError
from service.decoding import worker_main
from service.errors import NotReady, Overloaded
from service.metrics import Metrics

log = logging.getLogger(__name__)
START_SECONDS = 60.0  # a worker that has not said "ready" by then is killed and started again


class DecodeBugError(RuntimeError):
    """A decode job raised something that is not a MediaError: a bug here, logged with its traceback."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    pid: int = 0
    busy: bool = False
    retired: bool = False
    jobs: int = field(default=0)


class DecodePool:
    def __init__(
        self,
        size: int,
        max_waiting: int,
        wait_seconds: float,
        job_seconds: float,
        memory_headroom: int,
        metrics: Metrics,
    ) -> None:
        self.size, self.max_waiting, self.wait_seconds, self.job_seconds = size, max_waiting, wait_seconds, job_seconds
        self.memory_headroom, self.metrics = memory_headroom, metrics
        self.ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds ORT threads
        self.live: set[_Worker] = set()
        self.idle: deque[_Worker] = deque()
        self.waiters: deque[asyncio.Future[_Worker]] = deque()
        self.spawn_failing = False  # the last attempt to start a worker failed
        self.closing = False
        self.background: set[asyncio.Task[Any]] = set()
        # recv() blocks until a reply (or EOF when the worker dies): one thread per busy worker, and spares
        self.threads = ThreadPoolExecutor(max_workers=2 * size + 2, thread_name_prefix="decode-recv")

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker (each imports its decoders first); fails if none starts."""
        results = await asyncio.gather(*(self._spawn() for _ in range(self.size)), return_exceptions=True)
        for r in results:
            if isinstance(r, _Worker):
                self._add(r)
            else:
                self._background(self._replace())
        if not self.live:
            raise RuntimeError(f"no decode worker could be started: {results[0]!r}")
        self._gauges()

    @property
    def ready(self) -> bool:
        """False only while no worker runs and the last attempt to start one failed."""
        return not self.closing and (bool(self.live) or not self.spawn_failing)

    async def close(self) -> None:
        self.closing = True
        for task in list(self.background):
            task.cancel()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(NotReady("the server is shutting down"))
        workers = list(self.live)
        self.live.clear()
        self.idle.clear()
        loop = asyncio.get_running_loop()
        for w in workers:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(w.process.sentinel)
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(None)
        for w in workers:
            await asyncio.to_thread(w.process.join, 5)
            if w.process.is_alive():
                w.process.kill()
                await asyncio.to_thread(w.process.join, 5)
        self.threads.shutdown(wait=False, cancel_futures=True)
        self._gauges()

    # --- running a job -----------------------------------------------------------------------------
    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) in a worker and return its result.

        Raises Overloaded (503) when no worker is free in time or the line is full; the job's
        own MediaError (4xx); MediaLimitError when it overran or ran out of memory (413);
        DecodeError when the decoder crashed on the input (400); Overloaded when its worker was
        killed from outside; DecodeBugError for anything else. If the caller is cancelled once the
        job runs, the job still finishes (bounded by `job_seconds`) and frees its worker.
        """
        worker = await self._acquire()
        job = asyncio.create_task(self._execute(worker, fn, args))
        job.add_done_callback(_consume)  # a caller that gave up leaves nobody to read its outcome
        return await asyncio.shield(job)

    async def _acquire(self) -> _Worker:
        if self.closing:
            raise NotReady("the server is shutting down")
        while self.idle:
            worker = self.idle.popleft()
            if not worker.retired:
                return worker
        if len(self.waiters) >= self.max_waiting:
            self.metrics.decode_refused.labels("line_full").inc()
            raise Overloaded(f"{len(self.waiters)} decodes are already waiting for a worker; retry shortly")
        fut: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self._gauges()
        try:
            async with asyncio.timeout(self.wait_seconds):
                return await fut
        except TimeoutError:
            self.metrics.decode_refused.labels("wait_timeout").inc()
            raise Overloaded(f"no decode worker was free within {self.wait_seconds:g} s; retry shortly") from None
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())  # handed over just as the caller gave up: pass it on
            raise
        finally:
            # Only when still in line: a miss in deque.remove formats repr(fut), the worker's
            # repr with it, and that asks the OS for the process's status, on every request.
            if fut in self.waiters:
                self.waiters.remove(fut)
            self._gauges()

    async def _execute(self, worker: _Worker, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        worker.busy, worker.jobs = True, worker.jobs + 1
        self._gauges()
        try:
            worker.conn.send((fn, args))
        except (OSError, ValueError):  # it died while idle, before its exit was noticed: the job never started
            worker.busy = False
            self._retire(worker, "died")
            raise Overloaded("a decode worker was lost; retry") from None
        try:
            async with asyncio.timeout(self.job_seconds):
                status, value = await _receive(worker.conn)
        except TimeoutError:
            self._retire(worker, "timeout")
            raise MediaLimitError(f"decoding took longer than {self.job_seconds:g} s") from None
        except (EOFError, OSError):  # the worker died with the job
            code = await asyncio.to_thread(_exit_code, worker.process)
            self._retire(worker, "died")
            if code == -signal.SIGKILL:
                raise Overloaded("the decode worker was killed (out of memory, or by an operator); retry") from None
            raise DecodeError(f"the decoder crashed on this file ({_describe(code)})") from None
        finally:
            worker.busy = False
        if status == "memory":
            self._retire(worker, "memory")  # its heap may stay large: start afresh
            raise MediaLimitError(f"{value} ({self.memory_headroom // 2**20} MiB)")
        self._release(worker)
        if status == "ok":
            return value
        if status == "media":
            raise value
        raise DecodeBugError(f"decode job {getattr(fn, '__name__', fn)} failed:\n{value}")

    # --- workers -------------------------------------------------------------------------------
    async def _spawn(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=worker_main, args=(child, self.memory_headroom), daemon=True, name="mla-decode")
        await asyncio.to_thread(process.start)
        child.close()
        worker = _Worker(process, parent)
        try:
            async with asyncio.timeout(START_SECONDS):
                status, pid = await asyncio.get_running_loop().run_in_executor(self.threads, parent.recv)
        except (TimeoutError, EOFError, OSError) as exc:
            process.kill()
            await asyncio.to_thread(process.join, 5)
            raise RuntimeError(f"a decode worker did not start: {exc!r}") from exc
        if status != "ready":
            process.kill()
            raise RuntimeError(f"a decode worker said {status!r} instead of ready")
        worker.pid = pid
        return worker

    def _add(self, worker: _Worker) -> None:
        # Replies are read on the event loop as they arrive (_receive); sends are a few hundred
        # bytes, far below the socket's buffer, so they never wait either.
        os.set_blocking(worker.conn.fileno(), False)
        self.live.add(worker)
        # The process's sentinel becomes readable when it exits: an idle worker's death is seen at once.
        asyncio.get_running_loop().add_reader(worker.process.sentinel, self._on_exit, worker)
        self._release(worker)

    def _on_exit(self, worker: _Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        if not worker.busy and not self.closing:  # a busy one is retired by its job, which also answers its request
            self._retire(worker, "died")

    def _release(self, worker: _Worker) -> None:
        if worker.retired or worker not in self.live:
            return
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                return
        self.idle.append(worker)
        self._gauges()

    def _retire(self, worker: _Worker, reason: str) -> None:
        """Take a worker out (killing it if alive) and start its replacement."""
        if worker.retired:
            return
        worker.retired = True
        self.live.discard(worker)
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        if worker.process.is_alive():
            worker.process.kill()
        self._background(asyncio.to_thread(worker.process.join, 10))  # reap it: no zombie left behind
        log.warning("decode worker %d retired (%s) after %d jobs; starting another", worker.pid, reason, worker.jobs)
        self.metrics.worker_restarts.labels(reason).inc()
        self._gauges()
        if not self.closing:
            self._background(self._replace())

    async def _replace(self) -> None:
        delay = 0.5
        while not self.closing:
            try:
                worker = await self._spawn()
            except Exception as exc:
                self.spawn_failing = True
                log.error("cannot start a decode worker (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.spawn_failing = False
            self._add(worker)
            return

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _gauges(self) -> None:
        self.metrics.decode_workers.set(len(self.live))
        self.metrics.decode_waiting.set(len(self.waiters))

    def pids(self) -> list[int]:
        return sorted(w.pid for w in self.live)


async def _receive(conn: Connection) -> Any:
    """The next message on `conn`, read on the event loop as its bytes arrive: no thread per reply.

    The framing is multiprocessing's own (Connection.send on the worker's side): a signed 32-bit
    big-endian length (-1, then an unsigned 64-bit one, past 2 GiB), then the pickle. EOFError
    when the worker's end closes (it died), as Connection.recv would raise.
    """
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    done: asyncio.Future[bytes] = loop.create_future()
    buf = bytearray()
    need, header = 4, True  # bytes wanted in buf; still reading the length

    def readable() -> None:
        nonlocal need, header
        try:
            while True:
                if len(buf) == need:
                    if not header:
                        break
                    if need == 4 and struct.unpack("!i", buf)[0] == -1:
                        need = 12  # a 64-bit length follows
                        continue
                    size = struct.unpack("!i", buf)[0] if need == 4 else struct.unpack("!Q", buf[4:])[0]
                    buf.clear()
                    need, header = size, False
                    continue
                chunk = os.read(fd, need - len(buf))  # never past this message
                if not chunk:
                    raise EOFError("the decode worker closed its end")
                buf.extend(chunk)
        except BlockingIOError:
            return  # the rest has not arrived yet: called again when it has
        except (EOFError, OSError) as exc:
            loop.remove_reader(fd)
            if not done.done():
                done.set_exception(exc)
            return
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(bytes(buf))

    loop.add_reader(fd, readable)
    try:
        payload = await done
    finally:
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(fd)
    return ForkingPickler.loads(payload)


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _exit_code(process: BaseProcess) -> int | None:
    process.join(5)
    return process.exitcode


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
