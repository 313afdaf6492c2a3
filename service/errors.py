"""Domain errors, each mapped to one HTTP status, all answered as {"error": {"code", "message"}}."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.media import DecodeError, MediaError, MediaLimitError, MissingStreamError, StillImageError, UnsupportedFormatError


class ServiceError(Exception):
    status = 500
    code = "internal"
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidMedia(ServiceError):  # noqa: N818 - the names read as HTTP outcomes
    status, code = 400, "invalid_media"


class WrongModality(ServiceError):  # noqa: N818
    status, code = 400, "wrong_modality"


class BadRequest(ServiceError):  # noqa: N818
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):  # noqa: N818
    status, code = 401, "unauthorized"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):  # noqa: N818
    status, code = 403, "forbidden"


class NotFound(ServiceError):  # noqa: N818
    status, code = 404, "not_found"


class TooLarge(ServiceError):  # noqa: N818
    status, code = 413, "too_large"
    # Close the connection: otherwise the server keeps reading (and dropping) the rest of the body.
    headers: ClassVar[dict[str, str] | None] = {"Connection": "close"}


class RequestTimeout(ServiceError):  # noqa: N818
    status, code = 408, "request_timeout"
    headers: ClassVar[dict[str, str] | None] = {"Connection": "close"}


class UnsupportedMedia(ServiceError):  # noqa: N818
    status, code = 415, "unsupported_media"


class InvalidRequest(ServiceError):  # noqa: N818
    status, code = 422, "invalid_request"


class ClientGone(ServiceError):  # noqa: N818
    """The client closed the connection before its answer was ready: nobody reads this status (nginx's 499); the
    access log and `mla_requests_total` record it."""

    status, code = 499, "client_closed_request"


class NotReady(ServiceError):  # noqa: N818
    status, code = 503, "not_ready"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class Failed(ServiceError):  # noqa: N818
    """Start-up failed for good (the model's warm-up, say): a liveness probe restarts the replica."""

    status, code = 503, "failed"


class Overloaded(ServiceError):  # noqa: N818
    status, code = 503, "overloaded"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class StorageUnavailable(ServiceError):  # noqa: N818
    """The upload folder cannot take a file (full, out of inodes, unwritable): the server's fault, not the client's."""

    status, code = 503, "storage_unavailable"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


def from_media_error(exc: MediaError, field: str) -> ServiceError:
    """The HTTP meaning of a decoding failure for the upload in `field`."""
    message = f"{field}: {exc}"
    if isinstance(exc, MediaLimitError):
        return TooLarge(message)
    if isinstance(exc, UnsupportedFormatError):
        return UnsupportedMedia(message)
    if isinstance(exc, StillImageError | MissingStreamError):
        return WrongModality(message)
    if isinstance(exc, DecodeError):
        return InvalidMedia(message)
    return InvalidMedia(message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_body_for(request: Request, code: str, message: str) -> dict[str, Any]:
    """The house shape, or on the Open Inference Protocol's routes (/v2) its own: {"error": message}, code beside."""
    if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
        return {"error": message, "code": code}
    return error_body(code, message)


def service_error_response(request: Request, exc: ServiceError) -> JSONResponse:
    """The answer to a ServiceError (counted in `mla_rejected_total`), wherever it was raised."""
    request.app.state.metrics.rejected.labels(exc.code).inc()
    return JSONResponse(error_body_for(request, exc.code, exc.message), status_code=exc.status, headers=exc.headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return JSONResponse(error_body_for(request, "invalid_request", problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body_for(request, code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    # Anything else is answered by RequestContext (service/middleware.py): it runs outside this
    # app's own exception handling, so the 500 still carries X-Request-ID and its log line the id.
