"""The web process's own engine: one loaded policy, batched across every open stream, run in a
child process (``EngineProcess``), or in this one (``ENGINE_PROCESS=0``, and most tests)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from feedback.inference.base import (
    ChatGenerationRequest,
    ChatTurn,
    GenerationFinished,
    InferenceBusy,
    InferenceUnavailable,
    PromptTooLong,
)
from model_runtime.engine import (
    Engine,
    EngineClosedError,
    EngineConfig,
    EngineError,
    PromptTooLongError,
    QueueFullError,
    SwapError,
)
from model_runtime.engine.process import EngineProcess
from model_runtime.sampling import chat_sampling
from model_runtime.tokenizer import ChatMessage


class LocalInferenceClient:
    def __init__(self, engine: Engine | EngineProcess) -> None:
        self.engine = engine

    @classmethod
    def load(
        cls,
        policy_dir: Path,
        *,
        device: str = "cpu",
        max_batch: int = 16,
        max_queue: int = 64,
        own_process: bool = False,
    ) -> LocalInferenceClient:
        """``own_process``: the engine runs in a child process (see ``EngineProcess``)."""
        if not (policy_dir / "model.safetensors").exists():
            raise InferenceUnavailable(
                f"no policy checkpoint in {policy_dir} (set POLICY_DIR or MODEL_DIR)"
            )
        config = EngineConfig(
            max_batch_size=max_batch,
            max_queued=max_queue,
            device=device,
            # bf16 where the hardware multiplies it (several times fp32's speed), else fp32
            dtype="auto",
        )
        try:
            if own_process:
                return cls(EngineProcess(policy_dir, config))
            return cls(Engine.from_checkpoint(policy_dir, config))
        except SwapError as exc:
            raise InferenceUnavailable(f"the policy in {policy_dir} failed to load: {exc}") from exc

    def close(self) -> None:
        self.engine.close()

    def context_length(self) -> int:
        return self.engine.max_seq_len

    def _prompt(self, messages: Sequence[ChatTurn]) -> list[int]:
        chat = [ChatMessage(m.role, m.content) for m in messages]  # type: ignore[arg-type]
        return self.engine.tokenizer.encode_chat(chat, add_generation_prompt=True).ids

    def count_tokens(self, messages: Sequence[ChatTurn]) -> int:
        return len(self._prompt(messages))

    async def stream_chat(
        self, request: ChatGenerationRequest
    ) -> AsyncGenerator[str | GenerationFinished, None]:
        params = chat_sampling(
            temperature=request.temperature,
            max_new_tokens=request.max_new_tokens,
            seed=request.seed,
        )
        try:
            handle = self.engine.submit(self._prompt(request.messages), params)
        except QueueFullError as exc:
            raise InferenceBusy(str(exc)) from exc
        except PromptTooLongError as exc:
            raise PromptTooLong(str(exc)) from exc
        except EngineClosedError as exc:
            raise InferenceUnavailable(str(exc)) from exc
        pieces = handle.astream()
        try:
            async for piece in pieces:
                yield piece
            result = await handle.aresult()
        # An engine in its own process refuses through the handle, not at submission.
        except QueueFullError as exc:
            raise InferenceBusy(str(exc)) from exc
        except PromptTooLongError as exc:
            raise PromptTooLong(str(exc)) from exc
        except EngineError as exc:
            raise InferenceUnavailable(str(exc)) from exc
        finally:
            await pieces.aclose()  # cancels the request if it is still running
        yield GenerationFinished(
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            model_version=result.version.fingerprint,
        )
