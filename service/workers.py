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

Admission: a worker runs one job at a time. Jobs wait in a bounded line (`max_waiting`), each
for at most `wait_seconds` before it starts; past either bound the request gets a 503 with
Retry-After: overload, not the client's fault. While a worker runs a job, the next one in line
is sent ahead to it (small jobs only: `AHEAD_BYTES`), so it starts the moment the first ends
instead of when the event loop next gets to the worker: at concurrency 8 and 32 that idle gap
was a fifth of each worker's time. A job sent ahead that has not started is bounded by its wait
like any other, and goes back to the line's front if its worker is lost; one whose caller has
left still runs (at most one per worker). A job that runs past
`job_seconds` has its worker killed and the request gets a 413 (its input is too costly); one
that uses no CPU for `hang_seconds` (stopped, deadlocked) is hung: its worker is replaced and the
request gets a 503, a fault of the server's, not of the file.

Workers are programs of their own (service/decoding.py), started with an allow-listed
environment (`WORKER_ENV`: no API or admin key reaches a process that parses hostile media), and
their replies are parsed as data in a fixed layout (service/wire.py), never unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from common.media import DecodeError, MediaLimitError
from service import wire
from service.errors import NotReady, Overloaded
from service.metrics import Metrics

log = logging.getLogger(__name__)
START_SECONDS = 60.0  # a worker that has not said "ready" by then is killed and started again
# What a worker's environment may hold: where programs, libraries and locales are, and thread
# counts. Everything else, MLA_API_KEY and MLA_ADMIN_KEY first, stays in the server.
WORKER_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "VIRTUAL_ENV",
    "PYTHONHASHSEED",
    "PYTHONDONTWRITEBYTECODE",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "MKL_NUM_THREADS",
)
# A job is sent ahead to a busy worker only where it and the one running are at most this big: two such messages, and
# the replies of graph jobs (kilobytes), fit a local socket's buffer (SO_SNDBUF, 208 KiB on Linux by default) with room.
AHEAD_BYTES = 64 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class DecodeBugError(RuntimeError):
    """A decode job raised something that is not a MediaError: a bug here, logged with its traceback."""


def worker_environment() -> dict[str, str]:
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    # The worker imports what this process imports (the project, and the jobs' modules) from the same places.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    return env


def cpu_ticks(pid: int) -> int | None:
    """CPU time (user + system, in clock ticks) that process `pid` has used; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces
    try:
        return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of the whole line
    except (IndexError, ValueError):
        return None


class Done(NamedTuple):
    """A job's result: its array; the seconds the worker spent on it; of those, the seconds ONNX Runtime took where the
    job ran a graph (None where it did not); and the seconds it waited for a free worker first."""

    array: np.ndarray
    seconds: float
    inference_seconds: float | None
    waited_seconds: float


@dataclass(eq=False)
class _Job:
    """One call waiting for, or running on, a worker: its pickled call, the future its caller awaits, and, while it
    waits in the line, the timer that refuses it once it has waited `wait_seconds`."""

    name: str
    payload: bytes
    future: asyncio.Future[Done]
    asked: float  # perf_counter when it was asked for
    timer: asyncio.TimerHandle | None = None
    started: bool = False  # its worker runs it (or has run it)

    def message(self) -> bytes:
        return wire.encode({"op": "job"}, len(self.payload)) + self.payload


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    sock: socket.socket
    pid: int = 0
    busy: bool = False
    retired: bool = False
    jobs: int = field(default=0)
    driver: asyncio.Task[None] | None = None  # the task that feeds it jobs and reads its replies
    inbox: asyncio.Future[_Job] | None = None  # while idle: where the next job is handed to its driver
    sending: asyncio.Future[None] | None = None  # the rest of a job sent ahead, where one send did not take it all


class DecodePool:
    """The workers, each fed by a driver task of its own: the driver sends a job, reads the reply, and takes the
    next job from the line in the same step, so a worker that finishes waits for no other task (the call that
    asked, a hand-over) before its next job goes out. Admission and failures: see the module's docstring."""

    def __init__(
        self,
        size: int,
        max_waiting: int,
        wait_seconds: float,
        job_seconds: float,
        memory_headroom: int,
        metrics: Metrics,
        hang_seconds: float = 5.0,
        runs_graphs: bool = False,
    ) -> None:
        self.runs_graphs = runs_graphs  # workers import ONNX Runtime before their memory ceiling: jobs run graphs
        self.size, self.max_waiting, self.wait_seconds, self.job_seconds = size, max_waiting, wait_seconds, job_seconds
        self.memory_headroom, self.metrics, self.hang_seconds = memory_headroom, metrics, hang_seconds
        self.live: set[_Worker] = set()
        self.idle: deque[_Worker] = deque()
        self.line: deque[_Job] = deque()  # jobs waiting for a worker, oldest first
        self.spawn_failing = False  # the last attempt to start a worker failed
        self.closing = False
        self.background: set[asyncio.Task[Any]] = set()
        self.reapers: set[asyncio.Task[Any]] = set()  # waits on killed workers: awaited by close, never cancelled

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
        self._background(self._watch_idle())
        self._gauges()

    @property
    def ready(self) -> bool:
        """True while every configured worker runs: one lost, hung or being replaced makes it False."""
        return not self.closing and len(self.live) >= self.size

    async def close(self) -> None:
        self.closing = True
        for task in list(self.background):
            task.cancel()
        while self.line:
            self._fail(self.line.popleft(), NotReady("the server is shutting down"))
        workers = list(self.live)
        self.live.clear()
        self.idle.clear()
        for w in workers:
            self._unwatch(w)
            if w.driver is not None:
                w.driver.cancel()  # a job it runs is answered 503 (NotReady)
        await asyncio.gather(*(w.driver for w in workers if w.driver is not None), return_exceptions=True)
        for w in workers:
            with contextlib.suppress(OSError):
                w.sock.setblocking(True)
                w.sock.sendall(wire.encode({"op": "stop"}))
        for w in workers:
            await asyncio.to_thread(_wait, w.process, 5)
            if w.process.poll() is None:
                w.process.kill()
                await asyncio.to_thread(_wait, w.process, 5)
            w.sock.close()
        await asyncio.gather(*list(self.reapers), return_exceptions=True)
        self._gauges()

    # --- running a job -----------------------------------------------------------------------------
    async def run(self, fn: Callable[..., Any], *args: Any) -> np.ndarray:
        """Run fn(*args) in a worker and return its result, a numeric array."""
        return (await self.run_timed(fn, *args)).array

    async def run_timed(self, fn: Callable[..., Any], *args: Any) -> Done:
        """Run fn(*args) in a worker: its result (a numeric array) and its times (`Done`).

        Raises Overloaded (503) when no worker is free in time or the line is full, or when its
        worker was killed from outside or hung; the job's own MediaError (4xx); MediaLimitError
        when it overran or ran out of memory (413); DecodeError when the decoder crashed on the
        input or its worker answered out of protocol (400); DecodeBugError for anything else. A
        caller cancelled while its job waits takes it out of the line; once the job runs, it
        finishes (bounded by `job_seconds`) and frees its worker.
        """
        if self.closing:
            raise NotReady("the server is shutting down")
        loop = asyncio.get_running_loop()
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        job = _Job(getattr(fn, "__name__", str(fn)), payload, loop.create_future(), time.perf_counter())
        job.future.add_done_callback(_consume)  # a caller that gave up leaves nobody to read its outcome
        worker = self._idle_worker()
        if worker is not None:
            self._hand(worker, job)
        elif len(self.line) >= self.max_waiting:
            self.metrics.decode_refused.labels("line_full").inc()
            raise Overloaded(f"{len(self.line)} decodes are already waiting for a worker; retry shortly")
        else:
            self.line.append(job)
            job.timer = loop.call_later(self.wait_seconds, self._expire, job)
            self._gauges()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self._leave(job)
            raise

    def _idle_worker(self) -> _Worker | None:
        while self.idle:
            worker = self.idle.popleft()
            if not worker.retired:
                return worker
        return None

    def _hand(self, worker: _Worker, job: _Job) -> None:
        """Give an idle worker's driver its next job."""
        self._unwatch(worker)
        inbox, worker.inbox = worker.inbox, None
        assert inbox is not None
        assert not inbox.done()
        inbox.set_result(job)
        worker.busy = True
        self._gauges()

    def _leave(self, job: _Job) -> None:
        """Take a job whose caller gave up out of the line (one already running finishes)."""
        if job.timer is not None:
            job.timer.cancel()
        with contextlib.suppress(ValueError):
            self.line.remove(job)
            self._gauges()

    def _expire(self, job: _Job) -> None:
        """The job has waited `wait_seconds` without starting (a driver that starts it cancels this): it is refused.
        One sent ahead to a worker still runs there when its turn comes, for nobody."""
        if job.started or job.future.done():
            return
        with contextlib.suppress(ValueError):
            self.line.remove(job)
            self._gauges()
        self._refuse_waited(job)

    def _refuse_waited(self, job: _Job) -> None:
        """503 for a job that waited `wait_seconds` without starting."""
        self.metrics.decode_refused.labels("wait_timeout").inc()
        self._fail(job, Overloaded(f"no decode worker was free within {self.wait_seconds:g} s; retry shortly"))

    def _next(self, keep_timer: bool = False) -> _Job | None:
        """The oldest job in line, taken out of it; its wait's timer cancelled, unless `keep_timer` (sent ahead)."""
        if not self.line:
            return None
        job = self.line.popleft()
        if job.timer is not None and not keep_timer:
            job.timer.cancel()
        self._gauges()
        return job

    async def _drive(self, worker: _Worker) -> None:
        """Feed `worker` jobs until it is retired or the pool closes: the line's first, else whatever is handed to it
        while idle. While it runs a job, the next one in line is sent ahead (`_send_ahead`), so it starts the moment
        the first ends, without waiting for this task to be scheduled; a worker holds at most one job ahead."""
        pending: deque[_Job] = deque()  # sent to the worker, replies awaited in this order; the first runs
        try:
            while not worker.retired:
                if not pending:
                    job = self._next()
                    if job is None:
                        worker.busy = False
                        worker.inbox = asyncio.get_running_loop().create_future()
                        self.idle.append(worker)
                        self._watch(worker)
                        self._gauges()
                        job = await worker.inbox
                    worker.busy = True
                    if job.future.done():  # its caller gave up as it was handed over: nothing to run
                        continue
                    pending.append(job)
                    try:
                        await self._send(worker, job)
                    except Exception as exc:  # the worker is retired: the job goes to its caller
                        self._fail(pending.popleft(), exc)
                        continue
                if len(pending) == 1:
                    self._send_ahead(worker, pending)
                job = pending[0]
                job.started = True  # now: the one before it has ended
                if job.timer is not None:
                    job.timer.cancel()
                waited = time.perf_counter() - job.asked
                try:
                    done = await self._outcome(worker, job, waited)
                except Exception as exc:  # the job's outcome, whatever it is, goes to its caller
                    self._fail(job, exc)
                else:
                    if not job.future.done():
                        job.future.set_result(done)
                pending.popleft()
                worker.jobs += 1
        except asyncio.CancelledError:
            for job in pending:
                self._fail(job, NotReady("the server is shutting down"))
            pending.clear()
            raise
        finally:
            worker.busy = False
            worker.inbox = None
            # Left here: jobs sent ahead to a worker that was then retired. They never started: back to the line.
            self._requeue(list(pending))

    async def _send(self, worker: _Worker, job: _Job) -> None:
        """Send `job` to an idle worker, which reads it at once: one that has not within the hang window is stopped."""
        if worker.sending is not None:
            with contextlib.suppress(Exception):
                await worker.sending  # done by now: the worker has replied to the job it carried
        try:
            async with asyncio.timeout(self.hang_seconds):
                await asyncio.get_running_loop().sock_sendall(worker.sock, job.message())
        except TimeoutError:
            self._retire(worker, "hung")
            raise Overloaded(f"a decode worker hung (took no job for {self.hang_seconds:g} s); retry") from None
        except (OSError, ValueError):  # it died while idle, before its exit was noticed: the job never started
            self._retire(worker, "died")
            raise Overloaded("a decode worker was lost; retry") from None

    def _send_ahead(self, worker: _Worker, pending: deque[_Job]) -> None:
        """Send the line's first job to `worker` while it runs `pending[0]`, where both fit the socket's buffer with
        room to spare (AHEAD_BYTES each): the send then never blocks, and neither does the worker's reply, so
        nothing waits on a peer that waits in turn. A larger job waits for a free worker, as every job used to."""
        if not self.line or len(pending[0].payload) > AHEAD_BYTES or len(self.line[0].payload) > AHEAD_BYTES:
            return
        if worker.sending is not None and not worker.sending.done():
            return
        job = self._next(keep_timer=True)  # its wait is bounded still: it has not started
        assert job is not None
        message = job.message()
        try:
            sent = worker.sock.send(message)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except (OSError, ValueError):  # the worker is gone: its running job learns how; this one never started
            sent = -1
        if sent <= 0:
            self._requeue([job])
            return
        if sent < len(message):  # not expected at these sizes; the rest goes out beside this task, never blocking it
            worker.sending = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(worker.sock, message[sent:]))
            worker.sending.add_done_callback(_consume)  # a failure shows as the worker's EOF, to the job it runs
        pending.append(job)

    def _requeue(self, jobs: list[_Job]) -> None:
        """Jobs that never started, back to the front of the line in their order, within what is left of their wait."""
        loop = asyncio.get_running_loop()
        for job in reversed(jobs):
            if job.future.done():
                continue
            if self.closing:
                self._fail(job, NotReady("the server is shutting down"))
                continue
            left = self.wait_seconds - (time.perf_counter() - job.asked)
            if left <= 0:
                self._refuse_waited(job)
                continue
            if job.timer is not None:
                job.timer.cancel()
            self.line.appendleft(job)
            job.timer = loop.call_later(left, self._expire, job)
        while self.line:
            worker = self._idle_worker()
            if worker is None:
                break
            first = self._next()
            assert first is not None
            self._hand(worker, first)
        self._gauges()

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    async def _outcome(self, worker: _Worker, job: _Job, waited: float) -> Done:
        """The reply to `job`, which `worker` runs now, as a `Done` or the exception its caller gets."""
        try:
            header, payload_view = await self._await_reply(worker)
        except _HungError:
            self._retire(worker, "hung")
            raise Overloaded(f"a decode worker hung (no CPU used for {self.hang_seconds:g} s); retry") from None
        except _OverrunError:
            self._retire(worker, "timeout")
            raise MediaLimitError(f"decoding took longer than {self.job_seconds:g} s") from None
        except (EOFError, OSError):  # the worker died with the job
            code = await asyncio.to_thread(_wait, worker.process, 5)
            self._retire(worker, "died")
            if code == -signal.SIGKILL:
                raise Overloaded("the decode worker was killed (out of memory, or by an operator); retry") from None
            raise DecodeError(f"the decoder crashed on this file ({_describe(code)})") from None
        except wire.ProtocolError as exc:
            self._retire(worker, "protocol")
            log.warning("decode worker %d answered out of protocol: %s", worker.pid, exc)
            raise DecodeError("the decoder failed on this file (its worker answered out of protocol)") from None
        status = header.get("status")
        if status == "memory":
            self._retire(worker, "memory")  # its heap may stay large: start afresh
            raise MediaLimitError(f"{header.get('message', 'out of memory')} ({self.memory_headroom // 2**20} MiB)")
        try:
            if status == "ok":
                assert payload_view is not None
                try:
                    seconds = float(header.get("seconds", 0.0))
                    inference = header.get("inference_seconds")
                    inference = None if inference is None else float(inference)
                except (TypeError, ValueError):
                    raise wire.ProtocolError(f"seconds {header.get('seconds')!r}") from None
                return Done(payload_view, seconds, inference, waited)
            if status == "media":
                raise wire.media_error(header)
            if status == "bug":
                raise DecodeBugError(f"decode job {job.name} failed:\n{str(header.get('message'))[-8000:]}")
            raise wire.ProtocolError(f"unknown status {status!r}")
        except wire.ProtocolError as exc:
            self._retire(worker, "protocol")
            log.warning("decode worker %d answered out of protocol: %s", worker.pid, exc)
            raise DecodeError("the decoder failed on this file (its worker answered out of protocol)") from None

    async def _await_reply(self, worker: _Worker) -> tuple[dict[str, Any], np.ndarray | None]:
        """The worker's reply, read by this task itself; _OverrunError past `job_seconds`, _HungError once the worker
        has used no CPU for `hang_seconds`. A timer checks both every step (a quarter of `hang_seconds`, at most 1 s),
        from a step into the job: most jobs end before it, and reading /proc on every job cost the event loop 2% of
        its time. On either verdict it cancels this read; the worker is then retired, its stream unread."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        deadline = loop.time() + self.job_seconds
        step = min(1.0, self.hang_seconds / 4)
        verdict: list[type[Exception]] = []
        progress_at, last_cpu = loop.time(), -1  # when the worker last used CPU, and its CPU ticks then
        timer: list[asyncio.TimerHandle] = []

        def check() -> None:
            nonlocal progress_at, last_cpu
            now = loop.time()
            cpu = cpu_ticks(worker.pid)
            if now >= deadline:
                verdict.append(_OverrunError)
            elif cpu is None or cpu != last_cpu:
                progress_at, last_cpu = now, -1 if cpu is None else cpu
            elif now - progress_at >= self.hang_seconds:
                verdict.append(_HungError)
            if verdict:
                task.cancel()
            else:
                timer[0] = loop.call_at(min(now + step, deadline), check)

        timer.append(loop.call_at(min(loop.time() + step, deadline), check))
        try:
            return await _receive(worker.sock, self.memory_headroom)
        except asyncio.CancelledError:
            if verdict and task.uncancel() == 0:
                raise verdict[0] from None
            raise
        finally:
            timer[0].cancel()

    # --- workers -------------------------------------------------------------------------------
    async def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            # On the loop, not a thread: a vfork and an exec take milliseconds, and a start cancelled
            # midway (the server stopping) can then never leave a process nobody holds.
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service.decoding",
                    str(theirs.fileno()),
                    str(self.memory_headroom),
                    *(["--onnxruntime"] if self.runs_graphs else []),
                ],
                pass_fds=(theirs.fileno(),),
                env=worker_environment(),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = _Worker(process, ours, pid=process.pid)
        try:
            async with asyncio.timeout(START_SECONDS):
                header, _ = await _receive(ours, 0)
            if header.get("status") != "ready":
                raise wire.ProtocolError(f"it said {header!r} instead of ready")
        except BaseException as exc:  # cancelled (the server stopping) included: nothing is left behind
            process.kill()
            ours.close()
            # Reaped here, not in a thread: a cancelled start may be the loop's last act, and a thread
            # job queued then never runs (a zombie, and the Popen's ResourceWarning). SIGKILL takes milliseconds.
            _wait(process, 5)
            if isinstance(exc, TimeoutError | EOFError | OSError | wire.ProtocolError):
                raise RuntimeError(f"a decode worker did not start: {exc!r}") from exc
            raise
        return worker

    def _add(self, worker: _Worker) -> None:
        self.live.add(worker)
        worker.driver = asyncio.create_task(self._drive(worker))
        worker.driver.add_done_callback(_consume)

    def _watch(self, worker: _Worker) -> None:
        """An idle worker's socket turns readable only when the worker dies (EOF) or breaks protocol."""
        with contextlib.suppress(OSError, ValueError):
            asyncio.get_running_loop().add_reader(worker.sock.fileno(), self._on_idle_readable, worker)

    def _unwatch(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError, ValueError):
            asyncio.get_running_loop().remove_reader(worker.sock.fileno())

    def _on_idle_readable(self, worker: _Worker) -> None:
        self._unwatch(worker)
        if not worker.busy and not self.closing:  # a busy one is retired by its job, which also answers its request
            self._retire(worker, "died")

    async def _watch_idle(self) -> None:
        """Every few seconds: an idle worker that is stopped (SIGSTOP, a debugger left attached) is hung."""
        while not self.closing:
            await asyncio.sleep(max(0.5, min(5.0, self.hang_seconds / 2)))
            for worker in list(self.idle):
                if _stopped(worker.pid):
                    self._retire(worker, "hung")

    def _retire(self, worker: _Worker, reason: str) -> None:
        """Take a worker out (killing it if alive) and start its replacement."""
        if worker.retired:
            return
        worker.retired = True
        self.live.discard(worker)
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        self._unwatch(worker)
        if worker.inbox is not None and worker.driver is not None:
            worker.driver.cancel()  # idle: nothing to answer; a busy driver ends once its job has its outcome
        if worker.process.poll() is None:
            worker.process.kill()
        worker.sock.close()
        reaper = asyncio.create_task(asyncio.to_thread(_wait, worker.process, 10))  # reap it: no zombie left behind
        self.reapers.add(reaper)
        reaper.add_done_callback(self.reapers.discard)
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
            if self.closing:
                worker.process.kill()
                worker.sock.close()
                _wait(worker.process, 5)
                return
            self._add(worker)
            return

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _gauges(self) -> None:
        self.metrics.decode_workers.set(len(self.live))
        self.metrics.decode_idle.set(len(self.idle))
        self.metrics.decode_waiting.set(len(self.line))

    def pids(self) -> list[int]:
        return sorted(w.pid for w in self.live)


class _HungError(Exception):
    """A busy worker that used no CPU for `hang_seconds`."""


class _OverrunError(Exception):
    """A job that ran past `job_seconds`."""


async def _receive(sock: socket.socket, max_bytes: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """The worker's next message, read on the event loop as its bytes arrive: no thread per reply.

    The header is checked before the payload is read; an array's bytes land straight in the
    array that is returned. EOFError when the worker's end closes (it died).
    """
    loop = asyncio.get_running_loop()
    prefix = await _read(loop, sock, memoryview(bytearray(wire.PREFIX.size)))
    header_size, payload_size = wire.PREFIX.unpack(prefix)
    if header_size > wire.MAX_HEADER:
        raise wire.ProtocolError(f"a header of {header_size} bytes")
    header = wire.parse_header(bytes(await _read(loop, sock, memoryview(bytearray(header_size)))))
    if header.get("status") != "ok":
        if payload_size:
            raise wire.ProtocolError(f"{payload_size} bytes after a {header.get('status')!r} header")
        return header, None
    dtype, shape, size = wire.array_layout(header, max_bytes)
    if size != payload_size:
        raise wire.ProtocolError(f"{payload_size} bytes for an array of {size}")
    array = np.empty(shape, dtype)
    if size:
        await _read(loop, sock, array.reshape(-1).view(np.uint8).data)
    return header, array


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket, view: memoryview) -> memoryview:
    """Fill `view` from the socket: what has arrived is read at once, the loop is awaited only for what has not."""
    got = 0
    while got < len(view):
        try:
            n = sock.recv_into(view[got:])
        except (BlockingIOError, InterruptedError):
            n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise EOFError("the decode worker closed its end")
        got += n
    return view


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _wait(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(seconds)
    return process.returncode


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "T": stopped by a signal (SIGSTOP); not "t", a tracer's brief stop (py-spy sampling)
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"T"


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
