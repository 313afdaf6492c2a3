"""The Open Inference Protocol's REST routes (KServe v2, as Triton and MLServer serve it): health, server and model
metadata, inference (JSON and the binary tensor extension), and the model repository extension (index, load, unload).

Errors on these routes take the protocol's shape, {"error": "<message>"}, with the service's code beside it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.manifest import version_key
from common.modalities import borrow, borrowing
from service import protocol, uploads
from service.admission import Admission
from service.decoding import Source
from service.errors import InvalidMedia, InvalidRequest, NotReady, Overloaded, TooLarge
from service.log_config import request_id
from service.model import ServedModel
from service.repository import Repository
from service.routes import (
    TRUE,
    DecoderDep,
    RepositoryDep,
    SettingsDep,
    _min_confidence,
    healthz,
    require_admin_key,
    require_api_key,
    unless_client_leaves,
)
from service.schemas import ERROR_RESPONSES_V2, INFER_BODY
from service.workers import DecodePool

router = APIRouter()
SERVER_EXTENSIONS = ["binary_tensor_data", "model_repository"]
BINARY_ADVICE = "send tensors and files as binary data (the binary tensor extension)"


@router.get("/v2/health/live", summary="Live: the event loop answers, start-up has not failed", responses=ERROR_RESPONSES_V2)
async def v2_live(request: Request) -> dict[str, bool]:
    await healthz(request)
    return {"live": True}


@router.get("/v2/health/ready", summary="Ready: the default version loaded and warm", responses=ERROR_RESPONSES_V2)
async def v2_ready(repository: RepositoryDep) -> dict[str, bool]:
    model = repository.get()
    if not model.ready:
        raise NotReady(model.not_ready_reason() or "not ready")
    return {"ready": True}


@router.get("/v2", dependencies=[Depends(require_api_key)], summary="Server metadata")
async def v2_server(request: Request) -> dict[str, Any]:
    return {"name": "mla-serve", "version": request.app.version, "extensions": SERVER_EXTENSIONS}


def _metadata(repository: Repository, model: ServedModel) -> dict[str, Any]:
    manifest = model.manifest
    assert manifest is not None
    inputs: list[dict[str, Any]] = []
    for m, e in manifest.modalities.items():
        inputs.append({"name": m, "datatype": "BYTES", "shape": [-1], "parameters": {"content": "a media file"}})
        inputs.append(
            {
                "name": f"{m}/{e.input.name}",
                "datatype": protocol.MANIFEST_TYPES[e.input.dtype],
                "shape": [-1, *(int(d) for d in e.input.shape[1:])],
                "parameters": {"content": "decoded, as the graph takes it"},
            }
        )
    return {
        "name": manifest.name,
        "versions": sorted(repository.versions, key=version_key),
        "platform": "mla-serve_onnxruntime",
        "inputs": inputs,
        "outputs": protocol.outputs(manifest.labels, list(manifest.modalities), set(model.detectors)),
        "parameters": {"version": manifest.version, "manifest_sha256": model.manifest_sha256, "labels": manifest.labels},
    }


@router.get("/v2/models/{name}", dependencies=[Depends(require_api_key)], summary="Model metadata", responses=ERROR_RESPONSES_V2)
async def v2_model(name: str, repository: RepositoryDep) -> dict[str, Any]:
    return _metadata(repository, repository.get(name))


@router.get(
    "/v2/models/{name}/versions/{version}",
    dependencies=[Depends(require_api_key)],
    summary="Model metadata of one version",
    responses=ERROR_RESPONSES_V2,
)
async def v2_model_version(name: str, version: str, repository: RepositoryDep) -> dict[str, Any]:
    return _metadata(repository, repository.get(name, version))


async def _model_ready(repository: Repository, name: str, version: str | None) -> dict[str, Any]:
    model = repository.get(name, version)
    if not model.ready:
        raise NotReady(model.not_ready_reason() or "not ready")
    return {"name": name, "ready": True}


@router.get(
    "/v2/models/{name}/ready", dependencies=[Depends(require_api_key)], summary="Model ready", responses=ERROR_RESPONSES_V2
)
async def v2_model_ready(name: str, repository: RepositoryDep) -> dict[str, Any]:
    return await _model_ready(repository, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    dependencies=[Depends(require_api_key)],
    summary="Model version ready",
    responses=ERROR_RESPONSES_V2,
)
async def v2_model_version_ready(name: str, version: str, repository: RepositoryDep) -> dict[str, Any]:
    return await _model_ready(repository, name, version)


# --- inference -----------------------------------------------------------------------------------------------------


async def _infer(
    request: Request, name: str, version: str | None, repository: Repository, decoder: DecodePool, settings: Any
) -> Response:
    admission: Admission = request.app.state.admission
    budget: uploads.Budget = request.app.state.body_memory
    admission.enter()  # before a byte of the body is read: 503 when too many are in flight
    upload = uploads.Upload()
    model: ServedModel | None = None
    try:
        declared = request.headers.get("content-length", "")
        if protocol.HEADER_LENGTH not in request.headers and declared.isdigit() and int(declared) > settings.max_json_bytes:
            raise TooLarge(f"a JSON body of {declared} bytes; the limit is {settings.max_json_bytes}: {BINARY_ADVICE}")
        body = await uploads.receive_bytes(request, budget, admission.bounds, upload)
        head, binary = protocol.split_body(body, request.headers.get(protocol.HEADER_LENGTH))
        if len(head) > settings.max_json_bytes:
            raise TooLarge(f"the JSON part is {len(head)} bytes; the limit is {settings.max_json_bytes}: {BINARY_ADVICE}")
        # parsed, a JSON number list takes up to 10 times its text (a 40-byte int object and its list slot for "300,"):
        # that memory is counted too, so that many big JSON bodies at once are a 503, not an exhausted server
        parsing = protocol.JSON_PARSE_FACTOR * len(head)
        if not budget.take(parsing):
            raise Overloaded("request bodies held in memory are at the server's limit; retry shortly")
        upload.reserved += parsing
        # the version answers from here to the end, even if another is swapped in meanwhile
        model = repository.get(name, version).acquire()
        if not model.warm:
            raise NotReady("the model is still loading; retry shortly")
        manifest = model.manifest
        assert manifest is not None
        shapes = {
            m: (e.input.name, protocol.MANIFEST_TYPES[e.input.dtype], tuple(int(d) for d in e.input.shape[1:]))
            for m, e in manifest.modalities.items()
        }
        parsed = protocol.parse(head, binary, shapes, settings.max_batch_size)
        sent = sorted(set(parsed.files) | set(parsed.tensors))
        known = {o["name"] for o in protocol.outputs(manifest.labels, sent, set(model.detectors))}
        for o in parsed.request.outputs or []:  # refused before any work is done
            if o.name not in known:
                raise InvalidRequest(f"no output named {o.name!r} for these inputs; there are {', '.join(sorted(known))}")
        params = parsed.request.parameters or {}
        min_confidence = _min_confidence(None if params.get("min_confidence") is None else str(params["min_confidence"]))
        files: dict[str, list[bytes]] = dict(parsed.files)
        try:
            borrow(files, {flag: str(params.get(flag, "")).lower() in TRUE for flag in borrowing()}, parsed.tensors)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        for m, elements in files.items():
            if any(len(e) == 0 for e in elements):
                raise InvalidMedia(f"{m}: a file is empty")
        async with asyncio.timeout(settings.request_timeout_seconds):
            rows = (_row(model, decoder, files, parsed.tensors, i, min_confidence) for i in range(parsed.rows))
            answers = await unless_client_leaves(request, asyncio.gather(*rows))
        for _ in answers:
            model.metrics.version_predictions.labels(model.version).inc()
        produced = protocol.tensors(list(answers), manifest.labels)
        binary_default = params.get("binary_data_output", False)
        if not isinstance(binary_default, bool):
            raise InvalidRequest("binary_data_output must be true or false")
        head_out: dict[str, Any] = {
            "model_name": manifest.name,
            "model_version": manifest.version,
            "parameters": {"manifest_sha256": model.manifest_sha256},
        }
        head_out["id"] = parsed.request.id if parsed.request.id is not None else request_id.get()  # the X-Request-ID
        content, json_length = protocol.encode(produced, parsed.request.outputs, binary_default, head_out)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(json_length)}
        )
    except TimeoutError:
        raise Overloaded(f"the request took longer than {settings.request_timeout_seconds:g} s") from None
    finally:
        if model is not None:
            model.release()
        uploads.release(upload, budget)
        admission.leave()


async def _row(
    model: ServedModel,
    decoder: DecodePool,
    files: dict[str, list[bytes]],
    tensors: dict[str, Any],
    i: int,
    min_confidence: float | None,
) -> dict[str, Any]:
    """Row i's answer: its files decoded (as /v1/predict decodes uploads), its tensors taken as they are."""
    sources: dict[str, Source] = {m: (m, elements[i]) for m, elements in files.items()}
    return model.postprocess(await model.infer(sources, decoder, {m: t[i] for m, t in tensors.items()}), min_confidence)


INFER: dict[str, Any] = {
    "dependencies": [Depends(require_api_key)],
    "responses": ERROR_RESPONSES_V2,
    "openapi_extra": INFER_BODY,
    "response_class": Response,
}


@router.post("/v2/models/{name}/infer", summary="Inference: any subset of modalities, files or decoded tensors", **INFER)
async def v2_infer(
    request: Request, name: str, repository: RepositoryDep, decoder: DecoderDep, settings: SettingsDep
) -> Response:
    return await _infer(request, name, None, repository, decoder, settings)


@router.post("/v2/models/{name}/versions/{version}/infer", summary="Inference by one version", **INFER)
async def v2_infer_version(
    request: Request, name: str, version: str, repository: RepositoryDep, decoder: DecoderDep, settings: SettingsDep
) -> Response:
    return await _infer(request, name, version, repository, decoder, settings)


# --- the model repository extension (operator routes: MLA_ADMIN_KEY) ------------------------------------------------


class RepositoryParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str | None = Field(None, max_length=64, description="the version folder; default: the highest on disk")


class RepositoryRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    parameters: RepositoryParameters = Field(default_factory=RepositoryParameters)


async def _repository_request(request: Request) -> RepositoryRequest:
    body = await request.body()
    if len(body) > 64 * 1024:
        raise InvalidRequest("a repository request is a small JSON object")
    if not body.strip():
        return RepositoryRequest()
    try:
        return RepositoryRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(f"not a repository request: {exc.errors()[0]['msg']}") from None


ADMIN: dict[str, Any] = {"dependencies": [Depends(require_admin_key)], "responses": ERROR_RESPONSES_V2}
# the body is read by _repository_request (it may be empty), so its schema is given here for the OpenAPI document
REPOSITORY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "version": {
                                    "anyOf": [{"type": "string", "maxLength": 64}, {"type": "null"}],
                                    "description": "a version folder (default: the highest on disk)",
                                }
                            },
                        }
                    },
                }
            }
        },
    }
}
RepositoryBody = Annotated[RepositoryRequest, Depends(_repository_request)]


@router.post("/v2/repository/index", summary="Every version on disk and loaded, with its state", **ADMIN)
async def v2_repository_index(repository: RepositoryDep) -> list[dict[str, Any]]:
    return repository.index()


@router.post(
    "/v2/repository/models/{name}/load",
    summary="Load a version beside the one serving, warm it, swap, unload the old once its requests have answered",
    openapi_extra=REPOSITORY_BODY,
    **ADMIN,
)
async def v2_repository_load(name: str, repository: RepositoryDep, body: RepositoryBody) -> dict[str, Any]:
    repository.get(name)  # 404 for another model
    version = body.parameters.version
    model = await repository.load(version)
    return {"name": name, "version": model.version, "manifest_sha256": model.manifest_sha256}


@router.post(
    "/v2/repository/models/{name}/unload",
    summary="Unload a version that is not the default",
    openapi_extra=REPOSITORY_BODY,
    **ADMIN,
)
async def v2_repository_unload(name: str, repository: RepositoryDep, body: RepositoryBody) -> dict[str, Any]:
    repository.get(name)
    version = body.parameters.version
    if version is None:
        raise InvalidRequest('name the version to unload: {"parameters": {"version": "..."}}')
    await repository.unload(version)
    return {"name": name, "version": version, "state": "UNLOADING"}
