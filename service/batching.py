"""Dynamic micro-batching: concurrent requests for one modality share one session call.

Every session call has one of a few batch sizes, the buckets (1, 2, 4, 8, ... up to the
largest batch), each run once before the service says it is ready: a new input shape can
cost a first call far slower than the next (the CUDA provider searches convolution
algorithms per shape), and that cost belongs to start-up, not to a live request. A batch
whose size is not a bucket is either padded up to the next bucket with zero rows (`pad`:
on a GPU a larger batch costs about the same) or cut to the largest bucket it fills, the
rest going first into the next call (`split`: on a CPU, compute grows with every row, so
padding would only add work). Padding rows never leave the batcher: each caller gets its
own row back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

from service.errors import Overloaded
from service.log_config import request_id
from service.metrics import Metrics

log = logging.getLogger(__name__)

_Item = tuple[np.ndarray, "asyncio.Future[np.ndarray]", float, str]  # input, answer, enqueued at, request id
Fill = Literal["pad", "split"]


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch` itself: (1, 2, 4, 8, 16, 32) for 32."""
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
    return (*sizes, max_batch)


class MicroBatcher:
    """Collects inputs for up to `max_delay` seconds or `max_batch` items, then runs them together.

    `run` takes a stacked batch (its size always one of `buckets`) and returns one output row
    per input row; it runs on a thread of its own, so the event loop keeps accepting requests
    while ONNX Runtime works.
    """

    def __init__(
        self,
        modality: str,
        run: Callable[[np.ndarray], np.ndarray],
        metrics: Metrics,
        provider: str,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        fill: Fill = "split",
    ) -> None:
        self.modality, self.run, self.metrics, self.provider = modality, run, metrics, provider
        self.max_batch, self.max_delay, self.max_queue, self.fill = max_batch, max_delay, max_queue, fill
        self.buckets = bucket_sizes(max_batch)
        self.pending: deque[_Item] = deque()
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{modality}")
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a batch is running on the executor
        self.warmed: dict[int, float] = {}  # bucket size -> seconds its first call took
        # Labelled metric children, looked up once rather than on every request.
        self._queue_length = metrics.queue_length.labels(modality)
        self._queue_seconds = metrics.queue.labels(modality)
        self._batch_size = metrics.batch_size.labels(modality)
        self._padded = metrics.padded_rows.labels(modality)
        self._inference = metrics.inference.labels(modality, provider)

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"batcher-{self.modality}")

    async def submit(self, x: np.ndarray) -> np.ndarray:
        if len(self.pending) >= self.max_queue:
            raise Overloaded(f"the {self.modality} queue is full ({self.max_queue} waiting); retry shortly")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.pending.append((x, future, time.perf_counter(), request_id.get()))
        self._queue_length.set(len(self.pending))
        self.arrived.set()
        return await future

    async def warm(self, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Run a zero batch of every bucket size, on the session's own thread (before any request)."""
        loop = asyncio.get_running_loop()
        for size in self.buckets:
            t0 = time.perf_counter()
            await loop.run_in_executor(self.executor, self.run, np.zeros((size, *row_shape), dtype))
            self.warmed[size] = time.perf_counter() - t0

    async def _collect(self) -> list[_Item]:
        """The live items of the next call: at most `max_batch`, a bucket's worth when splitting."""
        while True:
            while not self.pending:
                self.arrived.clear()
                await self.arrived.wait()
            if self.max_delay > 0 and len(self.pending) < self.max_batch:
                deadline = time.perf_counter() + self.max_delay
                while len(self.pending) < self.max_batch and (remaining := deadline - time.perf_counter()) > 0:
                    self.arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.arrived.wait(), remaining)
            # A client that gave up needs no answer and takes no row.
            live = [it for it in self.pending if not it[1].done()]
            self.pending.clear()
            if not live:
                continue
            take = min(len(live), self.max_batch)
            if self.fill == "split":
                take = max(b for b in self.buckets if b <= take)
            self.pending.extend(live[take:])  # first in line for the next call
            return live[:take]

    def _batch(self, items: list[_Item]) -> np.ndarray:
        """Stack the rows, with zero rows up to the next bucket when padding."""
        n = len(items)
        size = n if n in self.buckets else min(b for b in self.buckets if b >= n)
        first = items[0][0]
        batch = np.empty((size, *first.shape), dtype=first.dtype)
        for i, (x, _, _, _) in enumerate(items):
            batch[i] = x
        if size > n:
            batch[n:] = 0
            self._padded.inc(size - n)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = await self._collect()
            self._queue_length.set(len(self.pending))
            now = time.perf_counter()
            for _, _, enqueued, _ in live:
                self._queue_seconds.observe(now - enqueued)
            self._batch_size.observe(len(live))
            self.busy = True
            try:
                batch = self._batch(live)
                t0 = time.perf_counter()
                out = await loop.run_in_executor(self.executor, self.run, batch)
                self._inference.observe(time.perf_counter() - t0)
            except Exception as exc:  # a failed session call fails its requests, never the loop
                ids = ", ".join(rid for _, _, _, rid in live)
                log.exception("%s batch of %d failed (requests %s)", self.modality, len(live), ids)
                for _, fut, _, _ in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.busy = False
            for i, (_, fut, _, _) in enumerate(live):  # rows past len(live) are padding: nobody gets them
                if not fut.done():
                    fut.set_result(out[i])

    async def close(self) -> None:
        """Finish what is queued and running, then stop."""
        while self.pending or self.busy:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)
