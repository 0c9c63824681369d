"""Request and response bodies of the OpenAI-compatible API (the OpenAPI document is built from
these). Fields follow OpenAI's API; ``top_k`` and ``repetition_penalty`` are extensions (as in
vLLM). Unknown fields are ignored, as OpenAI-compatible servers commonly do, so clients that
send newer parameters still work; every field declared here is validated and a bad value is a
400 with OpenAI's error shape."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16
MAX_STOP = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- errors ----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody


# --- shared request fields -------------------------------------------------------------------


class StreamOptions(_Body):
    include_usage: bool | None = None


class SamplingRequest(_Body):
    model: str = Field(description="Any name: one model is served; responses name its version.")
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=MAX_STOP)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        default=None, description="Token id (as a string) -> bias added to its logit."
    )
    top_k: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Extension: keep the k most likely tokens (0 = off)."
    )
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = Field(
        default=None, description="Extension: CTRL repetition penalty (1 = off)."
    )


# --- completions -----------------------------------------------------------------------------


class CompletionRequest(SamplingRequest):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_N)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
            Field(min_length=1, max_length=MAX_N),
        ]
    )
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str = Field(description="The model version that produced the choices.")
    system_fingerprint: str = Field(description="Version name and weights sha256 prefix.")
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- chat completions ------------------------------------------------------------------------


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut]
    refusal: None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The model version that produced the choices.")
    system_fingerprint: str = Field(description="Version name and weights sha256 prefix.")
    choices: list[ChatChoice]
    usage: Usage


# --- models, health, admin -------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "palmloop"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class VersionOut(BaseModel):
    name: str
    sha256: str
    path: str | None = None


class Health(BaseModel):
    status: Literal["ok", "loading", "failed"]
    version: VersionOut | None = None
    running: int | None = None
    waiting: int | None = None
    live_versions: list[VersionOut] | None = None
    error: str | None = None


class SwapRequest(_Body):
    checkpoint: NonEmptyStr = Field(description="Checkpoint directory on the server.")


class SwapResponse(BaseModel):
    version: VersionOut
    previous: VersionOut
