"""The supervised decode pool, on real worker processes: it heals, kills overruns, caps memory, refuses overload."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from common.media import DecodeError, MediaLimitError
from service.errors import Overloaded
from service.metrics import Metrics
from service.workers import DecodeBugError, DecodePool

MiB = 2**20


# Jobs: module-level, so that a spawned worker can import them by name.
def square(x: int) -> int:
    return x * x


def pid() -> int:
    return os.getpid()


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def allocate(n_bytes: int) -> int:
    return int(np.ones(n_bytes, np.uint8).sum())


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def buggy() -> None:
    raise KeyError("a bug")


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
        await asyncio.sleep(0.3)  # the job is running in the worker
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
            await pool.run(sleep, 30.0)
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
        await asyncio.sleep(0.2)
        waiting = asyncio.ensure_future(pool.run(square, 2))
        await asyncio.sleep(0.05)
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
        await asyncio.sleep(0.1)
        queued = asyncio.ensure_future(pool.run(square, 2))
        await asyncio.sleep(0.05)
        queued.cancel()
        running.cancel()  # the job itself finishes within its deadline and frees the worker
        await asyncio.sleep(0)
        assert not pool.waiters
        assert await pool.run(square, 9) == 81
        assert restarts(metrics, "died") == restarts(metrics, "timeout") == 0

    with_pool(test)


def test_not_ready_only_while_no_worker_can_be_started(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(pool: DecodePool, metrics: Metrics) -> None:
        spawn = pool._spawn

        async def failing() -> Any:
            raise OSError("cannot fork")

        monkeypatch.setattr(pool, "_spawn", failing)
        (first,) = pool.pids()
        os.kill(first, signal.SIGKILL)
        await until(lambda: not pool.ready)  # no worker, and starting one fails
        monkeypatch.setattr(pool, "_spawn", spawn)
        await until(lambda: pool.ready, 90)  # the retry loop starts one once it can
        assert await pool.run(square, 8) == 64

    with_pool(test)


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
