"""HTTP routes: /v1 predictions and model info, health, the Open Inference Protocol probes, metrics."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_core import to_json

from common.modalities import borrow, borrowing, kind
from service import uploads
from service.admission import Admission
from service.errors import ClientGone, Failed, Forbidden, InvalidMedia, InvalidRequest, NotReady, Overloaded, Unauthorized
from service.model import ServedModel
from service.repository import Repository
from service.schemas import ERROR_RESPONSES, METRICS_RESPONSE, PREDICT_BODY, PredictResponse
from service.settings import Settings
from service.workers import DecodePool

router = APIRouter()
T = TypeVar("T")
# Every dependency is `async def`: FastAPI runs a plain `def` dependency on a worker thread, a
# thread hop per dependency per request, where these only read attributes.
TRUE, FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


async def get_repository(request: Request) -> Repository:
    repository: Repository = request.app.state.repository
    return repository


async def get_model(request: Request) -> ServedModel:
    """The version that answers requests naming none."""
    repository: Repository = request.app.state.repository
    return repository.get()


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_decoder(model: Annotated[ServedModel, Depends(get_model)]) -> DecodePool:
    if model.decoder is None:
        raise NotReady("the decode workers are not started yet; retry shortly")
    return model.decoder


ModelDep = Annotated[ServedModel, Depends(get_model)]
RepositoryDep = Annotated[Repository, Depends(get_repository)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DecoderDep = Annotated[DecodePool, Depends(get_decoder)]


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """With MLA_API_KEY set, every route that uses this needs the key, but those in MLA_PUBLIC_ROUTES.

    Never behind the key: the probes (/healthz, /readyz, /v2/health/*: an orchestrator has no key,
    and they say nothing about the model), the page and the API docs (static). /metrics is public
    by default (a Prometheus scrape carries no credentials; it holds counts, no request content).
    """
    if settings.api_key is None:
        return
    route = request.scope.get("route")
    if getattr(route, "path", None) in settings.public_routes:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise Unauthorized("a valid API key is required (X-API-Key or Authorization: Bearer)")


async def require_admin_key(request: Request, settings: SettingsDep) -> None:
    """Operator routes: off unless MLA_ADMIN_KEY is set (it has no default), then only with that key."""
    if settings.admin_key is None:
        raise Forbidden("the admin routes are off; set MLA_ADMIN_KEY to use them")
    given = request.headers.get("x-admin-key") or ""
    if not given or not hmac.compare_digest(given.encode(), settings.admin_key.get_secret_value().encode()):
        raise Unauthorized("a valid admin key is required (X-Admin-Key)")


async def warm_model(model: ModelDep) -> ServedModel:
    """Predictions need the sessions warmed up; a draining replica still answers them."""
    if not model.warm:
        raise NotReady("the model is still loading; retry shortly")
    return model


async def ready_model(model: ModelDep) -> ServedModel:
    if not model.ready:
        raise NotReady(model.not_ready_reason() or "not ready")
    return model


ReadyModel = Annotated[ServedModel, Depends(ready_model)]


def _min_confidence(value: str | None) -> float | None:
    """The per-request abstention threshold: a number in [0, 1], or absent for the model's own."""
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequest(f"min_confidence must be a number between 0 and 1, not {value[:40]!r}") from None
    if not 0.0 <= number <= 1.0:  # NaN fails this too
        raise InvalidRequest(f"min_confidence must be between 0 and 1, not {value[:40]!r}")
    return number


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=PREDICT_BODY,
    summary="Predict from an audio file, a video file, or both, fused per sample by uncertainty",
)
async def predict(request: Request) -> Response:
    # Served by service.direct.DirectRoutes, which calls answer_predict straight from the middleware stack; this
    # declaration gives the schema and serves an app built without it.
    return await answer_predict(request)


async def answer_predict(request: Request) -> Response:
    """POST /v1/predict, whole: the key, the model's readiness, the upload, the workers, the answer.

    It takes no FastAPI dependencies, so that service.direct can call it without FastAPI's routing and dependency
    injection (a fifth of the server process's CPU per request): each check a dependency made is made here, in the
    order FastAPI made them (key, model, warm, decode workers)."""
    state = request.app.state
    settings: Settings = state.settings
    await require_api_key(request, settings)
    repository: Repository = state.repository
    default = await warm_model(repository.get())
    decoder = await get_decoder(default)
    admission: Admission = state.admission
    storage: uploads.Storage = state.storage
    admission.enter()  # before a byte of the body is read: 503 when too many are in flight
    upload = uploads.Upload()
    model: ServedModel | None = None
    try:
        await uploads.receive(request, storage, admission.bounds, upload)
        version = _version(request.query_params.get("version"), upload.form.get("version"))
        # the version answers from here to the end, even if another is swapped in meanwhile
        model = repository.get(version=version).acquire()
        async with asyncio.timeout(settings.request_timeout_seconds):
            files = dict(upload.files)
            for field, size in upload.sizes.items():
                if size == 0:
                    raise InvalidMedia(f"{field}: the file is empty")
            asked = {}
            for flag in borrowing():
                raw = upload.form.get(flag, "").strip().lower()
                if raw not in TRUE | FALSE:
                    raise InvalidRequest(f"{flag} must be true or false, not {raw!r}")
                asked[flag] = raw in TRUE
            try:
                borrow(files, asked)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
            if not files:
                raise InvalidRequest("send at least one of the model's inputs: " + ", ".join(model.modalities()))
            min_confidence = _min_confidence(upload.form.get("min_confidence"))
            model.check_modalities(set(files))
            outputs = await unless_client_leaves(request, model.infer(files, decoder))
            # Serialised here, by pydantic-core: the answer is built by postprocess in the shape of
            # PredictResponse (the OpenAPI schema; the end-to-end tests and schemathesis check answers against it), so
            # validating it again on every request would only cost time.
            answer = model.postprocess(outputs, min_confidence)
            model.metrics.version_predictions.labels(model.version).inc()
            return Response(to_json(answer), media_type="application/json")
    except TimeoutError:
        raise Overloaded(f"the request took longer than {settings.request_timeout_seconds:g} s") from None
    finally:
        if model is not None:
            model.release()
        uploads.release(upload, storage)
        admission.leave()


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone as soon as the client closes its connection (its body fully read): `work` is
    cancelled then, so its jobs still waiting for a decode worker leave the line (one already running finishes and
    frees its worker). Without this, a client that timed out still had its answer computed, for nobody.

    `work` runs in this task; a watcher task cancels this one when the client leaves (as `asyncio.timeout` does),
    and the cancellation it asked for becomes ClientGone, after `work`'s own cleanup has run. Any other cancellation
    (a timeout's, the server's at shutdown), even one that came in the same step as the watcher's, goes on as it
    came: only when the watcher's is the last one pending does it become ClientGone."""
    task = asyncio.current_task()
    assert task is not None
    gone = False
    before = task.cancelling()  # cancellations pending from outside before this began

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() <= before:  # the watcher's request taken back; none besides it is pending
            raise ClientGone("the client closed the connection before its answer was ready") from None
        raise
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the ASGI server reports `http.disconnect` (after the body, it sends nothing else; uvicorn also
    sends it once the response is complete, by when this has been cancelled)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _version(query: str | None, form: str | None) -> str | None:
    """The version a /v1/predict request names (query `version` or form field `version`), or None for the default."""
    named = {v.strip() for v in (query, form) if v is not None and v.strip()}
    if len(named) > 1:
        raise InvalidRequest(f"the query and the form name different versions: {sorted(named)}")
    return named.pop() if named else None


def _borrow(how: tuple[str, str] | None) -> dict[str, str] | None:
    """A kind that may be taken from another's file: {"from": that kind, "flag": the form flag asking for it}."""
    return None if how is None else {"from": how[0], "flag": how[1]}


@router.get("/v1/models", dependencies=[Depends(require_api_key)], summary="The served model: labels, inputs, limits, providers")
async def models(model: ModelDep, repository: RepositoryDep, settings: SettingsDep) -> dict[str, Any]:
    assert model.manifest is not None
    return {
        **model.manifest.public(),
        "manifest_sha256": model.manifest_sha256,
        "loaded_versions": sorted(repository.versions),
        "providers": {m: rt.provider for m, rt in model.runtimes.items()},
        # where the graphs run: "server" (sessions behind micro-batchers, below) or "workers" (each decode worker)
        "inference": "workers" if model.in_workers else "server",
        # Session calls only ever have these batch sizes, each run once before ready.
        "batching": {
            m: {"buckets": list(rt.batcher.buckets), "fill": rt.batcher.fill, "warmed": sorted(rt.batcher.warmed)}
            for m, rt in model.runtimes.items()
            if rt.batcher is not None
        },
        # how a client sends each input: a file part, or a value (text) that may also come as a file
        "inputs": {
            m: {
                "field": kind(m).field,
                "widget": kind(m).widget,
                "borrow": _borrow(kind(m).borrow),
                "accept": kind(m).accept,
                "description": kind(m).description,
                "limits": kind(m).limits(settings).given(),
            }
            for m in model.runtimes
        },
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_audio_seconds": settings.max_audio_seconds,
            "max_video_seconds": settings.max_video_seconds,
            "max_video_pixels": settings.max_video_pixels,
            "max_video_frames": settings.max_video_frames,
            "max_image_pixels": settings.max_image_pixels,
            "max_text_bytes": settings.max_text_bytes,
        },
        "ready": model.ready,
    }


@router.get("/healthz", summary="Alive: the event loop answers, start-up has not failed", responses={503: ERROR_RESPONSES[503]})
async def healthz(request: Request) -> dict[str, str]:
    failed: str | None = request.app.state.failed
    if failed is not None:
        raise Failed(f"start-up failed: {failed}")
    return {"status": "alive"}


@router.get("/readyz", summary="Ready: sessions loaded and warmed up", responses={503: ERROR_RESPONSES[503]})
async def readyz(model: ReadyModel) -> dict[str, str]:
    return {"status": "ready"}


# Operator routes: left out of the public schema, and answered only with the admin key.
@router.post(
    "/admin/drain",
    dependencies=[Depends(require_admin_key)],
    include_in_schema=False,
    summary="Report not ready (stop new traffic), keep serving",
)
async def drain(model: ModelDep) -> dict[str, bool]:
    """Before stopping a replica: the load balancer or orchestrator sees /readyz fail and moves traffic away."""
    model.set_draining(True)
    return {"ready": model.ready}


@router.post("/admin/resume", dependencies=[Depends(require_admin_key)], include_in_schema=False, summary="Undo /admin/drain")
async def resume(model: ModelDep) -> dict[str, bool]:
    model.set_draining(False)
    return {"ready": model.ready}


@router.get(
    "/metrics",
    dependencies=[Depends(require_api_key)],
    summary="Prometheus exposition",
    response_class=Response,
    responses=METRICS_RESPONSE,
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
