"""Dynamic micro-batching: concurrent requests for one modality share one session call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.errors import Overloaded
from service.log_config import request_id
from service.metrics import Metrics

log = logging.getLogger(__name__)

_Item = tuple[np.ndarray, "asyncio.Future[np.ndarray]", float, str]  # input, answer, enqueued at, request id


class MicroBatcher:
    """Collects inputs for up to `max_delay` seconds or `max_batch` items, then runs them together.

    `run` takes a stacked batch and returns one output row per input; it runs on a thread of
    its own, so the event loop keeps accepting requests while ONNX Runtime works.
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
    ) -> None:
        self.modality, self.run, self.metrics, self.provider = modality, run, metrics, provider
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay, max_queue
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{modality}")
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a batch is running on the executor

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"batcher-{self.modality}")

    async def submit(self, x: np.ndarray) -> np.ndarray:
        if self.queue.qsize() >= self.max_queue:
            raise Overloaded(f"the {self.modality} queue is full ({self.max_queue} waiting); retry shortly")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((x, future, time.perf_counter(), request_id.get()))
        self.metrics.queue_length.labels(self.modality).set(self.queue.qsize())
        return await future

    async def _collect(self) -> list[_Item]:
        items = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_delay
        while len(items) < self.max_batch:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            live = [it for it in items if not it[1].done()]  # a client that gave up needs no answer
            self.metrics.queue_length.labels(self.modality).set(self.queue.qsize())
            if not live:
                continue
            now = time.perf_counter()
            for _, _, enqueued, _ in live:
                self.metrics.queue.labels(self.modality).observe(now - enqueued)
            batch = np.stack([x for x, _, _, _ in live])
            self.metrics.batch_size.labels(self.modality).observe(len(live))
            self.busy = True
            try:
                t0 = time.perf_counter()
                out = await loop.run_in_executor(self.executor, self.run, batch)
                self.metrics.inference.labels(self.modality, self.provider).observe(time.perf_counter() - t0)
            except Exception as exc:  # a failed session call fails its requests, never the loop
                ids = ", ".join(rid for _, _, _, rid in live)
                log.exception("%s batch of %d failed (requests %s)", self.modality, len(live), ids)
                for _, fut, _, _ in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.busy = False
            for i, (_, fut, _, _) in enumerate(live):
                if not fut.done():
                    fut.set_result(out[i])

    async def close(self) -> None:
        """Finish what is queued and running, then stop."""
        while not self.queue.empty() or self.busy:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)
