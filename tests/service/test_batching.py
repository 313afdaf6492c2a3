"""The micro-batcher: concurrent submissions share one call; a full queue refuses."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batching import MicroBatcher, bucket_sizes
from service.errors import Overloaded
from service.metrics import Metrics


def test_concurrent_inputs_share_one_call() -> None:
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch * 2

    async def main() -> list[np.ndarray]:
        b = MicroBatcher("audio", run, Metrics(), "CPUExecutionProvider", max_batch=8, max_delay=0.05, max_queue=100)
        b.start()
        outs = await asyncio.gather(*(b.submit(np.full(3, i, np.float32)) for i in range(20)))
        await b.close()
        return outs

    outs = asyncio.run(main())
    for i, out in enumerate(outs):  # each caller gets its own row back
        np.testing.assert_array_equal(out, np.full(3, 2 * i))
    assert sum(calls) == 20
    assert max(calls) == 8
    assert len(calls) == 3  # 8 + 8 + 4, not 20 calls


def test_full_queue_is_refused_and_errors_reach_every_caller() -> None:
    gate = threading.Event()

    def slow(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        if (batch < 0).any():
            raise RuntimeError("session failed")
        return batch

    async def main() -> None:
        b = MicroBatcher("video", slow, Metrics(), "CPUExecutionProvider", max_batch=1, max_delay=0.0, max_queue=2)
        b.start()
        first = asyncio.create_task(b.submit(np.zeros(1)))
        await asyncio.sleep(0.05)  # the first is now running; the next two wait in the queue
        waiting = [asyncio.create_task(b.submit(np.full(1, -1.0))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="queue is full"):
            await b.submit(np.zeros(1))
        gate.set()
        np.testing.assert_array_equal(await first, np.zeros(1))
        for task in waiting:
            with pytest.raises(RuntimeError, match="session failed"):
                await task
        await b.close()

    asyncio.run(main())


@pytest.mark.parametrize("fill", ["pad", "split"])
def test_every_call_has_a_bucket_size_and_padding_never_reaches_a_caller(fill: str) -> None:
    """Bursts of every size from 1 to 40: each caller gets its own row, no call is off the buckets."""
    calls: list[tuple[int, int]] = []  # (batch size, rows that were padding)

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append((len(batch), int((batch == 0).all(axis=1).sum())))
        return batch * 2 + 1  # a padding row (zeros) would come out as ones

    async def main() -> None:
        b = MicroBatcher("audio", run, Metrics(), "CPUExecutionProvider", max_batch=32, max_delay=0.02, max_queue=100, fill=fill)  # type: ignore[arg-type]
        b.start()
        for burst in range(1, 41):
            rows = [np.full(3, 10 * burst + i + 1, np.float32) for i in range(burst)]
            outs = await asyncio.gather(*(b.submit(x) for x in rows))
            for x, out in zip(rows, outs, strict=True):
                np.testing.assert_array_equal(out, x * 2 + 1)  # its own row, never a padding row
        await b.close()

    asyncio.run(main())
    assert b_sizes(calls) <= {1, 2, 4, 8, 16, 32}
    padded = sum(p for _, p in calls)
    if fill == "split":
        assert padded == 0
    else:
        assert padded > 0  # bursts of 3, 5, ... were padded up
    assert sum(n - p for n, p in calls) == sum(range(1, 41))  # every real row ran exactly once


def b_sizes(calls: list[tuple[int, int]]) -> set[int]:
    return {n for n, _ in calls}


def test_bucket_sizes_stop_at_the_largest_batch() -> None:
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert bucket_sizes(12) == (1, 2, 4, 8, 12)
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
