"""Builds the app; nothing else. Heavy objects live in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from service.errors import install_handlers
from service.log_config import configure_logging
from service.metrics import Metrics
from service.middleware import RequestContext
from service.model import ServedModel
from service.page import install_page
from service.routes import router
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("warm-up failed; the service stays not ready", exc_info=task.exception())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = ServedModel(settings, metrics)
        await asyncio.to_thread(model.load)  # fails fast on a bad repository
        app.state.model = model
        warm = asyncio.create_task(model.start())  # answers /healthz at once, /readyz once warm
        warm.add_done_callback(_log_failure)
        try:
            yield
        finally:
            if not warm.done():
                warm.cancel()
            await model.close()
            log.info("stopped")

    # /docs and /redoc load Swagger UI and ReDoc from the app itself, not a CDN: they work offline.
    app = FastAPIOffline(
        title="mla-serve",
        summary="Audio and/or video in, an uncertainty-fused prediction out (MLA).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(router)
    install_page(app)
    install_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(RequestContext, metrics=metrics)
    return app
