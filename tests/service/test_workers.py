"""The supervised decode pool, on real worker processes: it heals, kills overruns, caps memory, refuses overload.

Jobs return numeric arrays: a worker's reply is parsed as data, never unpickled (service/wire.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import pytest

from common.media import DecodeError, MediaLimitError
from service.errors import Overloaded
from service.metrics import Metrics
from service.workers import AHEAD_BYTES, WORKER_ENV, DecodeBugError, DecodePool

MiB = 2**20


# Jobs: module-level, so that a worker can import them by name.
def square(x: int) -> np.ndarray:
    return np.asarray(x * x)


def pid() -> np.ndarray:
    return np.asarray(os.getpid())


def sleep(seconds: float) -> np.ndarray:
    time.sleep(seconds)
    return np.asarray(seconds)


def spin(seconds: float) -> np.ndarray:
    """Busy for `seconds` of CPU: a costly input, as opposed to a hung worker."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return np.asarray(seconds)


def allocate(n_bytes: int) -> np.ndarray:
    return np.asarray(int(np.ones(n_bytes, np.uint8).sum()))


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def buggy() -> None:
    raise KeyError("a bug")


def environment() -> np.ndarray:
    """The worker's environment as its kernel shows it, NUL-separated bytes."""
    return np.frombuffer(open(f"/proc/{os.getpid()}/environ", "rb").read(), np.uint8)


def forge(header: dict[str, Any], payload: bytes) -> np.ndarray:
    """A subverted worker: writes its own reply on the pool's socket before the real one."""
    from service import wire

    os.write(int(sys.argv[1]), wire.encode(header, len(payload)) + payload)
    return np.asarray(0)


def restarts(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("mla_decode_worker_restarts_total", {"reason": reason})
    return value or 0.0


def with_pool(test: Callable[[DecodePool, Metrics], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        metrics = Metrics()
        options: dict[str, Any] = {
            "size": 1,
            "max_waiting": 4,
            "wait_seconds": 30.0,
            "job_seconds": 30.0,
            "memory_headroom": 256 * MiB,
        }
        pool = DecodePool(**{**options, **kw}, metrics=metrics)
        await pool.start()
        try:
            await test(pool, metrics)
        finally:
            await pool.close()

    asyncio.run(main())


def busy(pool: DecodePool) -> int:
    return sum(w.busy for w in pool.live)


def in_line_or_done(pool: DecodePool, job: asyncio.Future[Any]) -> bool:
    return len(pool.line) == 1 or job.done()


def both_busy_or_one_done(pool: DecodePool, jobs: Sequence[asyncio.Future[Any]]) -> bool:
    return busy(pool) == 2 or any(job.done() for job in jobs)


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_a_worker_killed_mid_job_is_replaced_and_its_request_gets_a_503() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        assert await pool.run(square, 7) == 49
        (first,) = pool.pids()
        job = asyncio.ensure_future(pool.run(sleep, 20.0))
        await until(lambda: busy(pool) == 1)  # the job is running in the worker
        os.kill(first, signal.SIGKILL)  # as the OOM killer would
        with pytest.raises(Overloaded, match="killed"):
            await job
        assert restarts(metrics, "died") == 1
        assert await pool.run(pid) not in (first, os.getpid())  # a new worker answers
        assert pool.ready

    with_pool(test)


def test_an_idle_worker_that_dies_is_replaced() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        (first,) = pool.pids()
        os.kill(first, signal.SIGKILL)
        await until(lambda: restarts(metrics, "died") == 1)
        assert await pool.run(square, 3) == 9
        assert pool.pids() != [first]

    with_pool(test)


def test_an_overrunning_job_has_its_worker_killed() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        (first,) = pool.pids()
        with pytest.raises(MediaLimitError, match="longer than 1 s"):
            await pool.run(spin, 30.0)
        assert restarts(metrics, "timeout") == 1
        await until(lambda: bool(pool.pids()))
        await until(lambda: not os.path.exists(f"/proc/{first}"))  # the overrunning worker is gone, not left decoding
        assert await pool.run(square, 4) == 16

    with_pool(test, job_seconds=1.0)


def test_a_decoder_crash_is_the_file_s_fault_and_a_bug_is_reported_as_one() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        with pytest.raises(DecodeError, match="SIGSEGV"):
            await pool.run(crash)
        with pytest.raises(DecodeBugError, match="KeyError"):
            await pool.run(buggy)
        assert await pool.run(square, 5) == 25
        assert restarts(metrics, "died") == 1

    with_pool(test)


def test_memory_past_the_ceiling_is_a_limit_error_not_an_oom_kill() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        assert await pool.run(allocate, 16 * MiB) == 16 * MiB  # well under the headroom
        with pytest.raises(MediaLimitError, match="memory"):
            await pool.run(allocate, 512 * MiB)
        assert restarts(metrics, "memory") == 1  # recycled: its heap starts afresh
        assert await pool.run(allocate, 16 * MiB) == 16 * MiB

    with_pool(test, memory_headroom=128 * MiB)


def test_admission_refuses_a_full_line_and_a_long_wait_with_503() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        running = asyncio.ensure_future(pool.run(sleep, 2.0))
        await until(lambda: busy(pool) == 1)
        waiting = asyncio.ensure_future(pool.run(square, 2))
        await until(lambda: len(pool.line) == 1)
        with pytest.raises(Overloaded, match="already waiting"):
            await pool.run(square, 3)
        with pytest.raises(Overloaded, match=r"no decode worker was free within 0\.5 s"):
            await waiting
        assert await running == 2.0
        assert await pool.run(square, 6) == 36  # the line is free again
        refused = {
            r: metrics.registry.get_sample_value("mla_decode_refused_total", {"reason": r}) for r in ("line_full", "wait_timeout")
        }
        assert refused == {"line_full": 1.0, "wait_timeout": 1.0}

    with_pool(test, max_waiting=1, wait_seconds=0.5)


def test_a_caller_that_gives_up_frees_its_place_and_its_worker() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        running = asyncio.ensure_future(pool.run(sleep, 0.5))
        await until(lambda: busy(pool) == 1)
        queued = asyncio.ensure_future(pool.run(square, 2))
        await until(lambda: len(pool.line) == 1)
        queued.cancel()
        running.cancel()  # the job itself finishes within its deadline and frees the worker
        await asyncio.sleep(0)
        assert not pool.line
        assert await pool.run(square, 9) == 81
        assert restarts(metrics, "died") == restarts(metrics, "timeout") == 0

    with_pool(test)


def test_not_ready_while_fewer_workers_than_configured_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        spawn = pool._spawn

        async def failing() -> Any:
            raise OSError("cannot fork")

        monkeypatch.setattr(pool, "_spawn", failing)
        first, _ = pool.pids()
        os.kill(first, signal.SIGKILL)
        await until(lambda: len(pool.live) == 1)
        assert not pool.ready  # one of two runs, and starting the other fails
        assert await pool.run(square, 8) == 64  # the one left still serves
        assert metrics.registry.get_sample_value("mla_decode_workers_idle") == 1.0
        monkeypatch.setattr(pool, "_spawn", spawn)
        await until(lambda: pool.ready, 90)  # the retry loop starts one once it can
        assert metrics.registry.get_sample_value("mla_decode_workers_idle") == 2.0

    with_pool(test, size=2)


def test_a_job_whose_wait_runs_out_in_the_iteration_its_worker_frees_up_is_served_or_refused_never_lost() -> None:
    """The race that once lost a worker for good: the running job ends, and the next one's wait runs out, in the same
    event-loop iteration. Forced here: a callback blocks the loop past both the end of the running job and the
    deadline, so the reply and the deadline are both due in one iteration."""

    async def test(pool: DecodePool, metrics: Metrics) -> None:
        loop = asyncio.get_running_loop()
        outcomes: dict[str, int] = {}
        for i in range(40):
            running = asyncio.ensure_future(pool.run(sleep, 0.3))
            await until(lambda: busy(pool) == 1)
            waiter = asyncio.ensure_future(pool.run(square, 3))
            # in line; on a loaded machine its 50 ms may run out before this looks, and it is refused: counted below
            await until(functools.partial(in_line_or_done, pool, waiter))
            # The loop stalls past the deadline and, from the 20th round on, past the job's end too.
            loop.call_soon(time.sleep, 0.3 * i / 20)
            assert await running == 0.3
            try:
                assert await waiter == 9
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except Overloaded:
                outcomes["503"] = outcomes.get("503", 0) + 1
            await until(lambda: len(pool.idle) == 1 and busy(pool) == 0)
            assert not pool.line
        assert pool.ready
        assert await pool.run(square, 4) == 16
        refused = metrics.registry.get_sample_value("mla_decode_refused_total", {"reason": "wait_timeout"}) or 0.0
        assert refused == outcomes.get("503", 0)  # each refusal counted once, and nothing else refused

    with_pool(test, wait_seconds=0.05)


def test_overload_at_the_wait_deadline_never_loses_a_worker() -> None:
    """Hundreds of jobs that end around the moment the next one's wait runs out, as under sustained
    overload: whatever each request gets, every worker is idle and serving afterwards."""

    async def test(pool: DecodePool, metrics: Metrics) -> None:
        outcomes: dict[str, int] = {}
        for i in range(300):
            offset = (i % 30 - 15) * 0.0004  # the jobs' end swept across the deadline, +-6 ms
            running = [asyncio.ensure_future(pool.run(sleep, pool.wait_seconds + offset)) for _ in range(2)]
            # both workers busy, so the next job waits (sent ahead or in line) until one ends, about when its wait
            # runs out; a loaded machine may let a job end before this looks, and then the next one simply runs
            await until(functools.partial(both_busy_or_one_done, pool, running))
            waiting = asyncio.ensure_future(pool.run(square, 2))
            for job in (*running, waiting):
                try:
                    await job
                    outcomes["ok"] = outcomes.get("ok", 0) + 1
                except Overloaded:
                    outcomes["503"] = outcomes.get("503", 0) + 1
            await until(lambda: len(pool.idle) == 2 and busy(pool) == 0)
        assert pool.ready
        assert len(pool.idle) == 2
        assert await asyncio.gather(*(pool.run(square, k) for k in range(4))) == [0, 1, 4, 9]
        assert outcomes["ok"] >= 600  # every running job (each had an idle worker), and the waiters served in time
        assert outcomes["ok"] + outcomes.get("503", 0) == 900

    with_pool(test, size=2, wait_seconds=0.03, max_waiting=8)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_workers_run_under_sched_batch_and_the_server_does_not() -> None:
    # A worker's wake-ups must not preempt the event loop that hands it jobs (service.decoding.batch_scheduling).
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        assert len(pool.pids()) == 2
        for worker in pool.pids():
            assert os.sched_getscheduler(worker) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the policy went to the workers alone

    with_pool(test, size=2)


def test_a_worker_outlives_a_sigterm_sent_to_the_whole_group_and_stops_with_its_pool() -> None:
    # A supervisor that signals the process group (systemd's default kill mode) reaches the workers too; the server
    # stops them itself, so SIGTERM must not kill one first (it was taken for a crash and replaced during shutdown).
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        (worker,) = pool.pids()
        os.kill(worker, signal.SIGTERM)  # pending from here: the default action would end it before its next read
        assert await pool.run(square, 3) == 9
        assert pool.pids() == [worker]
        assert metrics.worker_restarts.labels("died")._value.get() == 0
        process = next(iter(pool.live)).process
        await pool.close()
        assert process.poll() == 0  # stopped by the pool, not by the signal

    with_pool(test)


def test_workers_hold_none_of_the_servers_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLA_API_KEY", "api-secret-4f1c")
    monkeypatch.setenv("MLA_ADMIN_KEY", "admin-secret-9b2e")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-secret-77aa")

    async def test(pool: DecodePool, metrics: Metrics) -> None:
        seen_inside = bytes(await pool.run(environment))
        (worker,) = pool.pids()
        with open(f"/proc/{worker}/environ", "rb") as f:
            seen_outside = f.read()  # what anyone who can read the process sees
        for env in (seen_inside, seen_outside):
            names = {entry.split(b"=", 1)[0].decode() for entry in env.split(b"\0") if entry}
            assert names <= set(WORKER_ENV) | {"PYTHONPATH"}, names
            assert b"secret" not in env
        # The control: a process started the ordinary way (as multiprocessing did) inherits the key.
        inherited = subprocess.run([sys.executable, "-c", "import os; print(os.environ['MLA_API_KEY'])"], capture_output=True)
        assert inherited.stdout.strip() == b"api-secret-4f1c"

    with_pool(test)


def test_a_forged_reply_retires_its_worker_and_is_never_unpickled(tmp_path: Any) -> None:
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps(Bomb(str(marker)))
    assert not marker.exists()

    async def test(pool: DecodePool, metrics: Metrics) -> None:
        forgeries = [
            ({"status": "ok", "dtype": "|O", "shape": [1]}, b"\0" * 8),  # an object array: pickles inside
            ({"status": "ok", "dtype": "<f4", "shape": [4]}, b"\0" * 3),  # fewer bytes than the shape says
            ({"status": "media", "kind": "Bomb", "message": "x"}, b""),  # not one of the media errors
            ({"status": "pickled"}, bomb),  # a pickle after a header: read as data, refused
            ({"status": "ok", "dtype": "<f8", "shape": [2**40]}, b""),  # past what a worker may send
        ]
        for n, (header, payload) in enumerate(forgeries, 1):
            with pytest.raises(DecodeError, match="out of protocol"):
                await pool.run(forge, header, payload)
            assert restarts(metrics, "protocol") == n
            await until(lambda: pool.ready)
        assert await pool.run(square, 6) == 36
        assert not marker.exists()

    with_pool(test)


class Bomb:
    """Unpickling this creates a file: it must never happen in the server."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_a_hung_worker_is_replaced_and_its_request_gets_a_503_not_a_413() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        assert await pool.run(spin, 2.5) == 2.5  # busy past the hang window, but working: not hung
        (first,) = pool.pids()
        job = asyncio.ensure_future(pool.run(spin, 60.0))
        await until(lambda: busy(pool) == 1)
        os.kill(first, signal.SIGSTOP)  # stopped mid-job: it will never answer nor use CPU
        with pytest.raises(Overloaded, match="hung"):
            await job
        assert restarts(metrics, "hung") == 1
        assert restarts(metrics, "timeout") == 0
        await until(lambda: not os.path.exists(f"/proc/{first}"))  # killed and reaped, not left stopped
        assert await pool.run(square, 5) == 25

    with_pool(test, hang_seconds=1.0)


def test_an_idle_worker_that_is_stopped_is_replaced() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        (first,) = pool.pids()
        os.kill(first, signal.SIGSTOP)
        await until(lambda: restarts(metrics, "hung") == 1)
        await until(lambda: pool.ready)
        assert pool.pids() != [first]
        assert await pool.run(square, 4) == 16

    with_pool(test, hang_seconds=1.0)


def pattern(n_bytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8)


def test_replies_of_every_size_arrive_whole_and_in_order() -> None:
    """Replies are read on the event loop as their bytes arrive: one far past the socket's buffer
    comes in many reads, and each job still gets exactly its own reply."""

    async def test(pool: DecodePool, metrics: Metrics) -> None:
        sizes = [0, 1, 3, 4, 5, 4096, 65_536, 200_000, 8 * MiB + 7]
        for i, n in enumerate(sizes):
            np.testing.assert_array_equal(await pool.run(pattern, n, i), pattern(n, i))
        together = await asyncio.gather(*(pool.run(pattern, n, i) for i, n in enumerate(sizes)))
        for i, (n, out) in enumerate(zip(sizes, together, strict=True)):
            np.testing.assert_array_equal(out, pattern(n, i))
        assert restarts(metrics, "died") == 0

    with_pool(test, size=2, max_waiting=16)


def test_a_job_sent_ahead_to_a_worker_that_is_killed_runs_on_its_replacement() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        (first,) = pool.pids()
        running = asyncio.ensure_future(pool.run(sleep, 20.0))
        await until(lambda: busy(pool) == 1)
        queued = asyncio.ensure_future(pool.run(sleep, 0.5))  # waits in line: the worker took its job before it came
        ahead = asyncio.ensure_future(pool.run(square, 3))
        await until(lambda: len(pool.line) == 2)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(Overloaded, match="killed"):
            await running
        # The replacement takes `queued` and sends `ahead` after it; kill that one too while `ahead` has not started.
        await until(lambda: len(pool.pids()) == 1 and pool.pids() != [first] and not pool.line)
        (second,) = pool.pids()
        os.kill(second, signal.SIGKILL)
        with pytest.raises(Overloaded, match="killed"):
            await queued
        assert await asyncio.wait_for(ahead, 60) == 9  # never started where it was sent: it ran on the third worker
        assert pool.pids() not in ([first], [second])
        assert restarts(metrics, "died") == 2

    with_pool(test)


async def queue_behind(pool: DecodePool, seconds: float, *calls: tuple[Any, ...]) -> tuple[asyncio.Future[Any], list[Any]]:
    """A job of `seconds` running on the pool's one worker, then `calls` ((fn, *args) each) asked for behind it: all
    in line, as the worker took its job before they came."""
    running = asyncio.ensure_future(pool.run(sleep, seconds))
    await until(lambda: busy(pool) == 1)
    queued = [asyncio.ensure_future(pool.run(fn, *args)) for fn, *args in calls]
    await until(lambda: len(pool.line) == len(calls))
    return running, queued


def test_jobs_are_sent_ahead_only_while_small_and_stay_bounded_by_their_wait() -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        # Sent ahead: a small job leaves the line as soon as the worker starts the one before it.
        running, (first, second) = await queue_behind(pool, 0.3, (sleep, 0.3), (square, 4))
        assert await running == 0.3
        await until(lambda: not pool.line)
        assert not first.done()  # `first` runs, and `second` left the line for the worker's socket meanwhile
        assert (await first, await second) == (0.3, 16)
        # Not sent ahead: a job past AHEAD_BYTES waits in line for the worker to be free.
        running, (queued, large) = await queue_behind(pool, 0.3, (sleep, 0.3), (np.sum, np.zeros(AHEAD_BYTES + 1, np.uint8)))
        assert await running == 0.3
        await until(lambda: busy(pool) == 1 and len(pool.line) == 1)  # `queued` runs; `large` still waits its turn
        assert (await queued, await large) == (0.3, 0)
        # Bounded: a job sent ahead behind a long one is refused when its wait runs out, and its worker goes on.
        running, (slow, behind) = await queue_behind(pool, 0.1, (sleep, 2.0), (square, 5))
        assert await running == 0.1
        with pytest.raises(Overloaded, match=r"free within 1 s"):
            await behind  # sent ahead behind `slow`, whose 2 s outlast its 1 s wait
        assert await slow == 2.0
        assert await pool.run(square, 6) == 36
        assert restarts(metrics, "died") == restarts(metrics, "protocol") == 0

    with_pool(test, wait_seconds=1.0)
