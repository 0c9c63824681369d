"""The OpenAI-compatible HTTP API over one :class:`Engine` (FastAPI, served by uvicorn).

Routes: ``GET /healthz``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` answers with server-sent events ending in
``data: [DONE]``), ``POST /admin/swap`` (hot swap, admin key), and the OpenAPI document at
``/openapi.json``. The app answers at once on start-up; the engine loads in a background thread
and every model route answers 503 until it is ready.

Keys: with API keys configured, ``/v1/*`` needs ``Authorization: Bearer <key>`` (401
otherwise). ``/admin/*`` needs the admin key, and is off (403) when none is configured. Swap
targets must lie inside ``checkpoint_root`` when one is set.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Receive, Scope, Send

from model_runtime.engine import (
    CompletionResult,
    Engine,
    EngineError,
    ModelVersion,
    SwapError,
    SwapInProgressError,
)
from model_runtime.server import openai_api
from model_runtime.server.errors import ERROR_RESPONSES, APIError, install_error_handlers
from model_runtime.server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    SwapRequest,
    SwapResponse,
    VersionOut,
)

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25

# Module level: FastAPI resolves these (string) annotations in the module's namespace.
APICredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, scheme_name="APIKey")),
]
AdminCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, scheme_name="AdminKey")),
]


@dataclass(frozen=True)
class ServerSettings:
    """api_keys: accepted bearer keys for /v1 (empty = open). admin_key: bearer key of /admin
    (None = admin API off). served_model_name: the stable name /v1/models lists beside the
    current version's. checkpoint_root: swap targets must lie inside it (None = anywhere)."""

    api_keys: tuple[str, ...] = ()
    admin_key: str | None = None
    served_model_name: str = "palmloop"
    checkpoint_root: Path | None = None


class EngineSlot:
    """The engine, once ``load`` has built it in a background thread."""

    def __init__(
        self,
        load: Callable[[], Engine],
        *,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._load = load
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._error: str | None = None
        self._closed = False
        self.loaded_at = int(time.time())

    def start(self) -> None:
        threading.Thread(target=self._run, name="engine-loader", daemon=True).start()

    def _run(self) -> None:
        try:
            engine = self._load()
        except BaseException as error:
            log.exception("the model failed to load")
            with self._lock:
                self._error = f"{type(error).__name__}: {error}"
            if self._on_failure is not None:
                self._on_failure(error)
            return
        with self._lock:
            if not self._closed:
                self._engine = engine
                self.loaded_at = int(time.time())
                return
        engine.close()  # the server stopped while we were loading

    def close(self) -> None:
        with self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    @property
    def error(self) -> str | None:
        with self._lock:
            return self._error

    def get(self) -> Engine:
        """The engine, or APIError 503 while it loads (or after it failed to)."""
        with self._lock:
            engine, error = self._engine, self._error
        if engine is not None:
            return engine
        if error is not None:
            raise APIError(
                503,
                f"the model failed to load: {error}",
                type="service_unavailable",
                code="model_load_failed",
            )
        raise APIError(
            503,
            "the model is loading; retry shortly",
            type="service_unavailable",
            code="model_loading",
            headers={"Retry-After": "2"},
        )


class _JobStreamResponse(StreamingResponse):
    """An SSE response that cancels its job's sequences however the response ends."""

    def __init__(self, job: openai_api.Job, content: AsyncIterator[str]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.cancel()


def _version_out(version: ModelVersion) -> VersionOut:
    return VersionOut(name=version.name, sha256=version.sha256, path=version.path)


def _key_matches(given: str, accepted: Sequence[str]) -> bool:
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in accepted]
    return any(matches)


def create_app(
    load: Callable[[], Engine],
    settings: ServerSettings | None = None,
    *,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The API app; ``load`` builds the engine (in a background thread at start-up)."""
    settings = settings or ServerSettings()
    slot = EngineSlot(load, on_failure=on_load_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        slot.start()
        try:
            yield
        finally:
            await asyncio.to_thread(slot.close)

    app = FastAPI(
        title="palmloop engine",
        version="1",
        description="OpenAI-compatible completions and chat completions over palmloop's "
        "continuous-batching engine, with hot swap of model versions.",
        lifespan=lifespan,
    )
    app.state.slot = slot
    install_error_handlers(app)

    def require_api_key(
        credentials: APICredentials,
    ) -> None:
        if not settings.api_keys:
            return
        if credentials is None or not _key_matches(credentials.credentials, settings.api_keys):
            raise APIError(
                401,
                "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    def require_admin_key(
        credentials: AdminCredentials,
    ) -> None:
        if settings.admin_key is None:
            raise APIError(
                403, "the admin API is off: no admin key is configured", code="admin_disabled"
            )
        if credentials is None or not _key_matches(credentials.credentials, [settings.admin_key]):
            raise APIError(401, "missing or incorrect admin key", code="invalid_api_key")

    api = [Depends(require_api_key)]

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "Loading, or failed to load"}},
        tags=["health"],
    )
    def healthz() -> Response:
        try:
            engine = slot.get()
        except APIError:
            error = slot.error
            body = Health(status="failed" if error else "loading", error=error)
            return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
        stats = engine.stats()
        body = Health(
            status="ok",
            version=_version_out(engine.version),
            running=stats.running,
            waiting=stats.waiting,
            live_versions=[_version_out(v) for v in stats.versions],
        )
        return JSONResponse(body.model_dump(exclude_none=True))

    @app.get(
        "/v1/models",
        response_model=ModelList,
        responses=ERROR_RESPONSES,
        dependencies=api,
        tags=["openai"],
    )
    def list_models() -> ModelList:
        engine = slot.get()
        created = slot.loaded_at
        names = [settings.served_model_name, engine.version.name]
        unique = list(dict.fromkeys(names))
        return ModelList(data=[ModelCard(id=name, created=created) for name in unique])

    @app.get(
        "/v1/models/{model_id}",
        response_model=ModelCard,
        responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse}},
        dependencies=api,
        tags=["openai"],
    )
    def get_model(model_id: str) -> ModelCard:
        engine = slot.get()
        if model_id not in (settings.served_model_name, engine.version.name):
            raise APIError(
                404, f"the model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        return ModelCard(id=model_id, created=slot.loaded_at)

    stream_responses: dict[int | str, dict[str, Any]] = {
        **ERROR_RESPONSES,
        200: {
            "description": "The completion, or with stream: true server-sent events of "
            "chunks ending in 'data: [DONE]'",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    }

    async def serve_job(
        request: Request,
        job: openai_api.Job,
        stream: bool,
        include_usage: bool,
        respond: Callable[[openai_api.Job, list[CompletionResult]], Completion | ChatCompletion],
    ) -> Response:
        if stream:
            return _JobStreamResponse(job, openai_api.stream_job(job, include_usage=include_usage))
        results = await _wait_for_results(request, job)
        return JSONResponse(respond(job, results).model_dump())

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses=stream_responses,
        dependencies=api,
        tags=["openai"],
    )
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        job = openai_api.submit(slot.get(), "completion", body)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await serve_job(
            request, job, bool(body.stream), include_usage, openai_api.completion_response
        )

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=stream_responses,
        dependencies=api,
        tags=["openai"],
    )
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        job = openai_api.submit(slot.get(), "chat", body)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await serve_job(
            request, job, bool(body.stream), include_usage, openai_api.chat_response
        )

    @app.post(
        "/admin/swap",
        response_model=SwapResponse,
        responses={
            **ERROR_RESPONSES,
            403: {"model": ErrorResponse, "description": "Admin API off"},
            409: {"model": ErrorResponse, "description": "Another swap is in progress"},
        },
        dependencies=[Depends(require_admin_key)],
        tags=["admin"],
    )
    async def swap(body: SwapRequest) -> SwapResponse:
        engine = slot.get()
        target = _swap_target(body.checkpoint, settings.checkpoint_root)
        previous = engine.version
        try:
            version = await asyncio.to_thread(engine.swap, target)
        except SwapInProgressError as error:
            raise APIError(409, str(error), code="swap_in_progress") from error
        except SwapError as error:
            raise APIError(
                400, str(error), param="checkpoint", code="verification_failed"
            ) from error
        except EngineError as error:
            raise APIError(503, str(error), type="service_unavailable") from error
        return SwapResponse(version=_version_out(version), previous=_version_out(previous))

    return app


def _swap_target(checkpoint: str, root: Path | None) -> Path:
    try:
        target = Path(checkpoint).resolve()
    except (OSError, RuntimeError, ValueError) as error:
        raise APIError(400, f"bad checkpoint path: {error}", param="checkpoint") from error
    if root is not None and not target.is_relative_to(root.resolve()):
        raise APIError(
            400,
            "the checkpoint must lie inside the server's checkpoint root",
            param="checkpoint",
            code="outside_checkpoint_root",
        )
    return target


async def _wait_for_results(request: Request, job: openai_api.Job) -> list[CompletionResult]:
    """Results of a non-streamed job; a client that hangs up meanwhile cancels it."""
    waiter = asyncio.ensure_future(openai_api.results_of(job))
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
            if done:
                return waiter.result()
            if await request.is_disconnected():
                job.cancel()
    finally:
        if not waiter.done():
            waiter.cancel()
            job.cancel()
