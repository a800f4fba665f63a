"""Errors to HTTP: every error becomes ``application/problem+json`` (RFC 9457) here.

The body carries ``type``, ``title``, ``status``, ``detail``, ``instance`` and the stable
``code`` of :mod:`model.errors` / :mod:`service.errors`. No other module chooses a status code.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.errors import (
    ConfigurationError,
    InputError,
    LlmctvError,
    ModelNotFoundError,
    PayloadTooLargeError,
    PromotionRefusedError,
    UnknownModelVersionError,
)
from service.dicomnet.errors import UnknownDestinationError
from service.errors import (
    ForbiddenError,
    JobAlreadyFinishedError,
    JobFailedError,
    JobNotFinishedError,
    JobNotFoundError,
    MalformedMultipartError,
    ServiceUnavailableError,
    StorageFullError,
    TooManyAttemptsError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from service.orders import DuplicateOrderError, OrderNotFoundError
from workers.errors import StorageUnavailableError, storage_error
from workers.review import AlreadyReviewedError, ReviewRequiredError, StructureSetRejectedError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
TYPE_ROOT = "urn:llmctv:problem:"

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[LlmctvError], int], ...] = (
    (UnauthorizedError, 401),
    (TooManyAttemptsError, 429),
    (ForbiddenError, 403),
    (JobNotFoundError, 404),
    (OrderNotFoundError, 404),
    (UnknownDestinationError, 422),
    (JobNotFinishedError, 409),
    (JobAlreadyFinishedError, 409),
    (JobFailedError, 409),
    (AlreadyReviewedError, 409),
    (ReviewRequiredError, 409),
    (StructureSetRejectedError, 409),
    (DuplicateOrderError, 409),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (MalformedMultipartError, 400),
    (UnknownModelVersionError, 404),
    (PromotionRefusedError, 409),
    (InputError, 422),
    (ServiceUnavailableError, 503),
    (StorageUnavailableError, 503),
    (ModelNotFoundError, 503),
    (ConfigurationError, 500),
)
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def status_for(exc: LlmctvError) -> int:
    """The HTTP status of an llmctv error."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem(status: int, code: str, detail: str, instance: str, **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": f"{TYPE_ROOT}{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(exc: LlmctvError, instance: str) -> JSONResponse:
    """The problem+json response of an llmctv error (with ``Retry-After`` where it has one)."""
    status = status_for(exc)
    if status >= 500:
        log.error("request failed: [%s] %s", exc.code, exc.detail)
    response = problem(status, exc.code, exc.detail, instance)
    if isinstance(exc, StorageFullError | TooManyAttemptsError):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(LlmctvError)
    async def _llmctv(request: Request, exc: LlmctvError) -> JSONResponse:
        return problem_for(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_name(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "invalid_request", detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, OSError) and (storage := storage_error(exc)) is not None:
            log.error("request refused: [%s] %s", storage.code, storage.detail)
            return problem(503, storage.code, storage.detail, request.url.path)
        if isinstance(exc, redis.RedisError):  # the job store of Celery mode is down
            log.error("request refused: Redis unreachable: %s", exc)
            detail = "the job store (Redis) cannot be reached; try again later"
            return problem(503, ServiceUnavailableError.code, detail, request.url.path)
        log.exception("unexpected error on %s", request.url.path)
        return problem(
            500, "internal_error", "unexpected error; see the service log", request.url.path
        )
