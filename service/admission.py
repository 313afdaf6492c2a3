"""Admission: how many predictions may be received or served at once, and the bounds on each body."""

from __future__ import annotations

from service.errors import Overloaded
from service.metrics import Metrics
from service.settings import Settings
from service.uploads import Bounds


class Admission:
    """A request past `max_requests_in_flight` is answered 503 with Retry-After before its body is read.

    Every request in flight holds an upload in memory (up to two files of `memory_upload_bytes`) or
    on disk (within the spool budget), a place in the decode line and a task: this bound keeps all
    of them finite however many clients connect at once.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.limit, self.metrics = settings.max_requests_in_flight, metrics
        self.in_flight = 0
        self.bounds = Bounds(
            max_bytes=settings.max_upload_bytes,
            memory_bytes=settings.memory_upload_bytes,
            body_seconds=settings.body_timeout_seconds,
            idle_seconds=settings.body_idle_seconds,
        )
        metrics.predictions_in_flight.set_function(lambda: float(self.in_flight))

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            self.metrics.admission_refused.inc()
            raise Overloaded(f"{self.in_flight} predictions are in flight, the most this replica takes; retry shortly")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
