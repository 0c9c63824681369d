"""Every error leaves the server in OpenAI's JSON shape, with the status the API promises:
400 bad parameters (validation errors too: FastAPI's 422 is not used), 401 bad API key,
404 unknown path, 429 queue full, 503 model loading or engine closed, 500 a server fault."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_runtime.engine import (
    EngineClosedError,
    EngineError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
)
from model_runtime.server.schemas import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"


class APIError(Exception):
    """An error to send to the client as-is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(
            error=ErrorBody(message=message, type=type, param=param, code=code)
        )
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body.model_dump(), status_code=self.status, headers=self.headers)


def engine_error(error: EngineError, *, param: str | None = None) -> APIError:
    """The API error for an engine refusal or failure."""
    if isinstance(error, PromptTooLongError):
        return APIError(400, str(error), param=param, code="context_length_exceeded")
    if isinstance(error, InvalidRequestError):
        return APIError(400, str(error), param=param)
    if isinstance(error, QueueFullError):
        return APIError(
            429,
            str(error),
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": "1"},
        )
    if isinstance(error, EngineClosedError):
        return APIError(503, str(error), type="service_unavailable", code="engine_closed")
    return APIError(500, f"generation failed: {error}", type="server_error")


# Statuses a route can answer, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "Invalid parameters"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    429: {"model": ErrorResponse, "description": "Queue full: retry later"},
    500: {"model": ErrorResponse, "description": "Server fault"},
    503: {"model": ErrorResponse, "description": "Model loading or engine stopped"},
}


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through OpenAI's error shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = str(first.get("msg", "invalid request"))
        if param:
            message = f"{param}: {message}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problems)"
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = INVALID_REQUEST if error.status_code < 500 else "server_error"
        return APIError(error.status_code, str(error.detail), type=kind).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error", type="server_error").response()
