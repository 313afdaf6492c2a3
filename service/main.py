"""Builds the app; nothing else. Heavy objects live in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from threadpoolctl import threadpool_limits

from service.admission import Admission
from service.direct import install_direct_routes
from service.errors import install_handlers
from service.log_config import configure_logging
from service.metrics import Metrics
from service.middleware import RequestContext
from service.page import install_page
from service.repository import Repository
from service.routes import answer_predict, router
from service.routes_v2 import router as router_v2
from service.schemas import predict_body
from service.settings import Settings, get_settings
from service.uploads import Budget, Storage

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, on_fatal: Callable[[], None] | None = None) -> FastAPI:
    """The app. A model that loads but fails its warm-up leaves the replica failed: /healthz answers
    503 (a liveness probe restarts it) and `on_fatal` is called (`mla serve` stops, exit code 1)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()
    storage = Storage(settings.tmp_dir, settings.max_spool_bytes, settings.min_free_disk_bytes)
    metrics.spooled.set_function(lambda: float(storage.spooled))

    def warmed(task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        app.state.failed = f"{type(task.exception()).__name__}: {task.exception()}"
        log.error("warm-up failed; the service cannot serve this model", exc_info=task.exception())
        if on_fatal is not None:
            on_fatal()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One BLAS thread in this process while it serves, the process's own limit back when it stops. What it
        # multiplies is one query by a kNN bank; above about 4,000 rows OpenBLAS splits that over its threads, which
        # then spin between requests: 3.5 ms of CPU a request on 2 cores (docs/decisions/2026-12-07-one-blas-thread.md).
        with threadpool_limits(limits=1, user_api="blas"):
            await asyncio.to_thread(storage.open)  # cleans what servers that died left in MLA_TMP_DIR
            repository = Repository(settings, metrics, storage)
            await asyncio.to_thread(repository.load_first)  # fails fast on a bad repository
            app.state.repository = repository
            warm = asyncio.create_task(repository.start())  # answers /healthz at once, /readyz once warm
            warm.add_done_callback(warmed)
            try:
                yield
            finally:
                if not warm.done():
                    warm.cancel()
                    with contextlib.suppress(BaseException):  # its workers, half started, are cleaned up before the pool closes
                        await warm
                await repository.close()
                storage.close()
                log.info("stopped")

    # /docs and /redoc load Swagger UI and ReDoc from the app itself, not a CDN: they work offline.
    app = FastAPIOffline(
        title="mla-serve",
        summary="Any of the model's inputs (audio, video, an image, text) in, an uncertainty-fused prediction out (MLA).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.storage = storage
    app.state.body_memory = Budget(settings.max_body_memory_bytes)  # the Open Inference Protocol's bodies
    metrics.body_memory.set_function(lambda: float(app.state.body_memory.used))
    app.state.admission = Admission(settings, metrics)
    app.state.failed = None
    app.include_router(router)
    app.include_router(router_v2)
    install_direct_routes(app, router, {("POST", "/v1/predict"): answer_predict})  # innermost: every middleware below wraps it
    generated = app.openapi

    def openapi() -> dict[str, Any]:
        """The schema, /v1/predict's body as the served model takes it (its inputs, not every kind's)."""
        schema = generated()
        repository = getattr(app.state, "repository", None)
        model = repository.default if repository is not None else None
        if model is not None and model.manifest is not None:
            body = predict_body(list(model.manifest.modalities))["requestBody"]
            schema["paths"]["/v1/predict"]["post"]["requestBody"] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_page(app)
    install_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(RequestContext, metrics=metrics)
    return app
