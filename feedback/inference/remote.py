"""A remote engine speaking the OpenAI chat-completions API (``python -m model_runtime serve``).

History fitting needs token counts before the request is sent, so the client holds the
policy's tokenizer (the engine's ``tokenizer.json``, on the shared model volume) and the
context length the engine reports.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence

import httpx

from feedback.inference.base import (
    ChatGenerationRequest,
    ChatTurn,
    GenerationFinished,
    InferenceBusy,
    InferenceUnavailable,
    PromptTooLong,
)
from model_runtime.sampling import chat_sampling
from model_runtime.tokenizer import ChatMessage, ChatTokenizer


class RemoteInferenceClient:
    def __init__(
        self,
        *,
        base_url: str,
        tokenizer: ChatTokenizer,
        context_length: int,
        api_key: str = "",
        timeout_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._transport = transport
        # Built once: an httpx client would otherwise load the CA bundle for every answer,
        # ~35 ms of CPU on the event loop that every stream of this process shares.
        self._tls = httpx.create_ssl_context()

    def context_length(self) -> int:
        return self._context_length

    def count_tokens(self, messages: Sequence[ChatTurn]) -> int:
        chat = [ChatMessage(m.role, m.content) for m in messages]  # type: ignore[arg-type]
        return len(self._tokenizer.encode_chat(chat, add_generation_prompt=True).ids)

    async def stream_chat(
        self, request: ChatGenerationRequest
    ) -> AsyncGenerator[str | GenerationFinished, None]:
        # the in-process engine's settings, so both paths answer alike
        params = chat_sampling(
            temperature=request.temperature, max_new_tokens=request.max_new_tokens
        )
        body = {
            "model": "policy",
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": params.temperature,
            "top_p": params.top_p,
            "frequency_penalty": params.frequency_penalty,
            "max_tokens": params.max_new_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": request.user,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        finish_reason, model, usage = "", "", {"prompt_tokens": 0, "completion_tokens": 0}
        try:
            async with (
                httpx.AsyncClient(
                    timeout=self._timeout, transport=self._transport, verify=self._tls
                ) as http,
                http.stream(
                    "POST",
                    f"{self._base_url}/v1/chat/completions",
                    json=body,
                    headers=self._headers,
                ) as response,
            ):
                if response.status_code != 200:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    # The fingerprint (name@sha256 prefix) names the exact weights, as in-process.
                    model = chunk.get("system_fingerprint") or chunk.get("model") or model
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices", []):
                        piece = choice.get("delta", {}).get("content")
                        if piece:
                            yield piece
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.TransportError as exc:
            raise InferenceUnavailable(f"the engine at {self._base_url} did not answer") from exc
        yield GenerationFinished(
            finish_reason=finish_reason,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            model_version=model,
        )


def _raise_for(response: httpx.Response) -> None:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    if response.status_code == 429:
        raise InferenceBusy(message)
    if response.status_code == 400 and "context" in message.lower():
        raise PromptTooLong(message)
    raise InferenceUnavailable(f"engine answered {response.status_code}: {message}")
