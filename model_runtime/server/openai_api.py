"""OpenAI request bodies -> engine submissions, engine results -> OpenAI responses and SSE chunks.

Rules that differ from, or go beyond, OpenAI's:

- ``model`` may be any name: one model is served, and ``model`` in a response is the version
  that produced it (``system_fingerprint`` adds its weights' sha256 prefix).
- ``max_tokens`` defaults to 16 for completions (as OpenAI) and to the engine's cap for chat;
  generation also ends when prompt + completion fill the model's context ("length").
- A request that ran past the engine's wall-time limit finishes with "length".
- Logprobs are the model's own distribution at the request's temperature, before penalties,
  top-k/top-p and logit bias. A final end-of-turn token is not listed. In streams they arrive
  in each choice's final chunk.
- ``echo`` (completions) prepends the prompt's text; echo with logprobs is refused (400).
- Chat prompts are built by ``tokenizer.encode_chat(..., add_generation_prompt=True)``: role
  text is never parsed for special tokens; "developer" counts as "system".
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from model_runtime.engine import (
    CompletionResult,
    Engine,
    EngineError,
    FinishReason,
    ModelVersion,
    RequestHandle,
    TokenLogprob,
)
from model_runtime.sampling import SamplingParams
from model_runtime.server.errors import APIError, engine_error
from model_runtime.server.schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    SamplingRequest,
    TokenLogprobOut,
    TopLogprob,
    Usage,
)
from model_runtime.tokenizer import ChatMessage, ChatTokenizer

COMPLETION_DEFAULT_MAX_TOKENS = 16
Kind = Literal["completion", "chat"]


@dataclass(frozen=True)
class Job:
    """One API request in the engine: a handle per choice (choice i = handles[i]), the prompts'
    token counts, and how to present the results."""

    kind: Kind
    request_id: str
    created: int
    handles: list[RequestHandle]
    prompt_tokens: int
    tokenizer: ChatTokenizer
    with_logprobs: bool
    echo_texts: tuple[str, ...]  # per choice: prompt text to prepend ("" unless echo)

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()


# --- requests -> engine ----------------------------------------------------------------------


def sampling_params(body: SamplingRequest, *, max_tokens: int, n: int) -> SamplingParams:
    """SamplingParams of a request body; APIError 400 for a combination SamplingParams refuses."""
    stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
    seed = None if body.seed is None else body.seed % 2**63  # OpenAI seeds are any int64
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            repetition_penalty=(
                1.0 if body.repetition_penalty is None else body.repetition_penalty
            ),
            frequency_penalty=body.frequency_penalty or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            max_new_tokens=max_tokens,
            stop_strings=tuple(stop),
            seed=seed,
            n=n,
        )
    except ValueError as error:
        raise APIError(400, str(error)) from error


def logit_bias(body: SamplingRequest) -> dict[int, float]:
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            token_id = int(key)
        except ValueError:
            raise APIError(
                400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            ) from None
        bias[token_id] = value
    return bias


def chat_prompt(body: ChatCompletionRequest, tokenizer: ChatTokenizer) -> list[int]:
    messages = []
    for message in body.messages:
        role: Literal["system", "user", "assistant"] = (
            "system" if message.role == "developer" else message.role
        )
        content = message.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        messages.append(ChatMessage(role, content or ""))
    return tokenizer.encode_chat(messages, add_generation_prompt=True).ids


def completion_prompts(body: CompletionRequest, tokenizer: ChatTokenizer) -> list[list[int]]:
    """Token ids of each prompt; an empty text starts a new document (``<|endoftext|>``)."""
    prompt = body.prompt
    if isinstance(prompt, str):
        texts: list[str] | None = [prompt]
    elif isinstance(prompt[0], str):
        texts = [p for p in prompt if isinstance(p, str)]
    else:
        texts = None
    if texts is not None:
        return [tokenizer.encode_text(text) or [tokenizer.eos_id] for text in texts]
    if isinstance(prompt[0], int):
        return [[p for p in prompt if isinstance(p, int)]]
    return [list(p) for p in prompt if isinstance(p, list)]


def submit(
    engine: Engine,
    kind: Kind,
    body: ChatCompletionRequest | CompletionRequest,
) -> Job:
    """Validate ``body`` and queue all of its choices (all or none)."""
    tokenizer = engine.tokenizer
    n = body.n or 1
    echo = False
    if isinstance(body, ChatCompletionRequest):
        prompts = [chat_prompt(body, tokenizer)]
        requested = body.max_completion_tokens or body.max_tokens
        max_tokens = requested or engine.config.max_new_tokens
        with_logprobs = bool(body.logprobs)
        if body.top_logprobs and not with_logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        top = body.top_logprobs or 0
        param = "messages"
    else:
        prompts = completion_prompts(body, tokenizer)
        max_tokens = body.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS
        with_logprobs = body.logprobs is not None
        top = body.logprobs or 0
        echo = bool(body.echo)
        if echo and with_logprobs:
            raise APIError(400, "echo with logprobs is not supported", param="echo")
        param = "prompt"
    if len(prompts) * n > engine.config.max_batch_size:
        raise APIError(
            400,
            f"{len(prompts)} prompt(s) x n={n} is more than this server's batch "
            f"({engine.config.max_batch_size})",
            param="n",
        )
    params = sampling_params(body, max_tokens=max_tokens, n=n)
    bias = logit_bias(body)
    handles: list[RequestHandle] = []
    try:
        for prompt in prompts:
            handles += engine.submit_n(prompt, params, top_logprobs=top, logit_bias=bias)
    except EngineError as error:
        for handle in handles:
            handle.cancel()
        error_param = "logit_bias" if "logit_bias" in str(error) else param
        raise engine_error(error, param=error_param) from error
    echo_texts = tuple(
        tokenizer.decode(prompt) if echo else "" for prompt in prompts for _ in range(n)
    )
    return Job(
        kind=kind,
        request_id=f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
        created=int(time.time()),
        handles=handles,
        prompt_tokens=sum(len(prompt) for prompt in prompts),
        tokenizer=tokenizer,
        with_logprobs=with_logprobs,
        echo_texts=echo_texts,
    )


# --- results -> responses --------------------------------------------------------------------


def finish_reason(reason: FinishReason) -> Literal["stop", "length"]:
    return "stop" if reason in ("stop", "cancelled") else "length"


def usage(job: Job, results: Sequence[CompletionResult]) -> Usage:
    completion = sum(result.completion_tokens for result in results)
    return Usage(
        prompt_tokens=job.prompt_tokens,
        completion_tokens=completion,
        total_tokens=job.prompt_tokens + completion,
    )


def _listed_tokens(
    job: Job, result: CompletionResult
) -> list[tuple[int, float, tuple[TokenLogprob, ...]]]:
    """(token id, logprob, top alternatives) of the tokens to list (no final end token)."""
    rows = list(zip(result.token_ids, result.logprobs, result.top_logprobs, strict=True))
    tokenizer = job.tokenizer
    if rows and result.finish_reason == "stop" and rows[-1][0] in tokenizer.control_ids:
        rows.pop()
    return rows


def _token_text(tokenizer: ChatTokenizer, token_id: int) -> str:
    """A token's text; control tokens show their name (they add no text)."""
    if token_id in tokenizer.control_ids:
        return tokenizer.id_to_token(token_id)
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


def completion_logprobs(job: Job, result: CompletionResult) -> CompletionLogprobs:
    tokenizer = job.tokenizer
    rows = _listed_tokens(job, result)
    decoder = tokenizer.incremental_decoder()
    offsets, offset = [], 0
    for token_id, _, _ in rows:
        offsets.append(offset)
        offset += len(decoder.push(token_id))
    top = None
    if any(alternatives for _, _, alternatives in rows):
        top = [
            {_token_text(tokenizer, alt.token_id): alt.logprob for alt in alternatives}
            for _, _, alternatives in rows
        ]
    return CompletionLogprobs(
        tokens=[_token_text(tokenizer, token_id) for token_id, _, _ in rows],
        token_logprobs=[logprob for _, logprob, _ in rows],
        top_logprobs=top,
        text_offset=offsets,
    )


def chat_logprobs(job: Job, result: CompletionResult) -> ChatLogprobs:
    tokenizer = job.tokenizer

    def entry(token_id: int) -> tuple[str, list[int]]:
        return _token_text(tokenizer, token_id), list(tokenizer.token_bytes(token_id))

    content = []
    for token_id, logprob, alternatives in _listed_tokens(job, result):
        text, raw = entry(token_id)
        tops = []
        for alt in alternatives:
            alt_text, alt_raw = entry(alt.token_id)
            tops.append(TopLogprob(token=alt_text, logprob=alt.logprob, bytes=alt_raw))
        content.append(TokenLogprobOut(token=text, logprob=logprob, bytes=raw, top_logprobs=tops))
    return ChatLogprobs(content=content)


def _version(results: Sequence[CompletionResult]) -> ModelVersion:
    return results[0].version


def completion_response(job: Job, results: Sequence[CompletionResult]) -> Completion:
    choices = [
        CompletionChoice(
            text=job.echo_texts[index] + result.text,
            index=index,
            logprobs=completion_logprobs(job, result) if job.with_logprobs else None,
            finish_reason=finish_reason(result.finish_reason),
        )
        for index, result in enumerate(results)
    ]
    version = _version(results)
    return Completion(
        id=job.request_id,
        created=job.created,
        model=version.name,
        system_fingerprint=version.fingerprint,
        choices=choices,
        usage=usage(job, results),
    )


def chat_response(job: Job, results: Sequence[CompletionResult]) -> ChatCompletion:
    choices = [
        ChatChoice(
            index=index,
            message=ChatMessageOut(content=result.text),
            logprobs=chat_logprobs(job, result) if job.with_logprobs else None,
            finish_reason=finish_reason(result.finish_reason),
        )
        for index, result in enumerate(results)
    ]
    version = _version(results)
    return ChatCompletion(
        id=job.request_id,
        created=job.created,
        model=version.name,
        system_fingerprint=version.fingerprint,
        choices=choices,
        usage=usage(job, results),
    )


async def results_of(job: Job) -> list[CompletionResult]:
    """Wait for every choice; APIError if one failed."""
    try:
        return [await handle.aresult() for handle in job.handles]
    except EngineError as error:
        job.cancel()
        raise engine_error(error) from error


# --- streaming -------------------------------------------------------------------------------


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class _ChunkWriter:
    """Builds the chunks of one streamed job (the two APIs differ only in layout)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        chat = job.kind == "chat"
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def _chunk(self, version: ModelVersion | None, choices: list[dict[str, Any]]) -> str:
        name = version.name if version is not None else ""
        return _sse(
            {
                "id": self.job.request_id,
                "object": self.object,
                "created": self.job.created,
                "model": name,
                "system_fingerprint": version.fingerprint if version is not None else None,
                "choices": choices,
            }
        )

    def opening(self, index: int, version: ModelVersion | None) -> str | None:
        """First chunk of a choice: the role (chat) or the echoed prompt (completions)."""
        if self.job.kind == "chat":
            delta = {"role": "assistant", "content": ""}
            return self._chunk(
                version,
                [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}],
            )
        echo = self.job.echo_texts[index]
        return self.piece(index, version, echo) if echo else None

    def piece(self, index: int, version: ModelVersion | None, text: str) -> str:
        if self.job.kind == "chat":
            choice: dict[str, Any] = {"index": index, "delta": {"content": text}}
        else:
            choice = {"index": index, "text": text}
        choice.update(logprobs=None, finish_reason=None)
        return self._chunk(version, [choice])

    def closing(self, index: int, result: CompletionResult) -> str:
        logprobs: dict[str, Any] | None = None
        if self.job.with_logprobs:
            if self.job.kind == "chat":
                logprobs = chat_logprobs(self.job, result).model_dump()
            else:
                logprobs = completion_logprobs(self.job, result).model_dump()
        reason = finish_reason(result.finish_reason)
        if self.job.kind == "chat":
            choice: dict[str, Any] = {"index": index, "delta": {}}
        else:
            choice = {"index": index, "text": ""}
        choice.update(logprobs=logprobs, finish_reason=reason)
        return self._chunk(result.version, [choice])

    def usage(self, results: Sequence[CompletionResult]) -> str:
        payload = self._chunk(_version(results), [])
        data = json.loads(payload.removeprefix("data: "))
        data["usage"] = usage(self.job, results).model_dump()
        return _sse(data)


async def stream_job(job: Job, *, include_usage: bool) -> AsyncIterator[str]:
    """SSE lines of a streamed job, ending with ``data: [DONE]``. Choices interleave as their
    pieces arrive. Closing this iterator (a client that hung up) cancels every choice."""
    writer = _ChunkWriter(job)
    queue: asyncio.Queue[tuple[int, str | None, EngineError | None]] = asyncio.Queue()

    async def pump(index: int, handle: RequestHandle) -> None:
        try:
            async for piece in handle.astream():
                await queue.put((index, piece, None))
            await queue.put((index, None, None))
        except EngineError as error:
            await queue.put((index, None, error))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(job.handles)]
    opened = [False] * len(job.handles)
    results: dict[int, CompletionResult] = {}
    try:
        while len(results) < len(job.handles):
            index, piece, error = await queue.get()
            if error is not None:
                api_error = engine_error(error)
                yield _sse(api_error.body.model_dump())
                break
            handle = job.handles[index]
            if not opened[index]:
                opened[index] = True
                opening = writer.opening(index, handle.version)
                if opening:
                    yield opening
            if piece is not None:
                yield writer.piece(index, handle.version, piece)
                continue
            results[index] = await handle.aresult()
            yield writer.closing(index, results[index])
        else:
            if include_usage:
                yield writer.usage([results[i] for i in range(len(job.handles))])
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()
        for task in tasks:
            task.cancel()
