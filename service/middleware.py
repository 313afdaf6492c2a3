"""Request ids, request metrics, in-flight tracking and the last-resort 500, as one pure ASGI middleware."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.log_config import request_id
from service.metrics import Metrics

log = logging.getLogger("service.access")
SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Label values come from a fixed set: a client cannot mint new time series with made-up methods.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
INTERNAL_ERROR = json.dumps({"error": {"code": "internal", "message": "internal error; see the server log"}}).encode()


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if SAFE_ID.match(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        started = False
        start = time.perf_counter()
        self.metrics.in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Logged here, while the request id is still set, and answered here, so that the
            # 500 carries X-Request-ID like every other answer.
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                raise  # the answer is already on its way: the server can only cut the connection
            status = 500
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(INTERNAL_ERROR)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": INTERNAL_ERROR})
        finally:
            elapsed = time.perf_counter() - start
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
            log.info(
                "%s %s %d %.1f ms",
                method,
                scope["path"],
                status,
                elapsed * 1000,
                extra={"status": status, "route": path, "ms": round(elapsed * 1000, 2)},
            )
            request_id.reset(token)
