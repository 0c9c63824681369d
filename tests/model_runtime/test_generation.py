"""Generation: batching, seeds, stopping, logprobs, streaming, n, bf16.

Two kinds of model: a tiny random PaLM for the properties that must hold for any model (its
logits are sharpened so greedy choices are not near-ties; its greedy output loops on one token,
so where varied text matters a test adds a presence penalty), and a *scripted* PaLM whose next
token is a fixed function of the current one, for exact expectations about text and stops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from model_runtime.config import PaLMConfig
from model_runtime.generation import (
    GenerationResult,
    completion_seed,
    generate,
    stream_generate,
)
from model_runtime.palm import KVCache, PaLM, ParallelBlock
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatMessage, ChatTokenizer, train_tokenizer

CORPUS = (
    "Hello there, how are you? I am fine, thank you very much.\n"
    "Café au lait, naïve façade, 日本語のテキスト, emoji 🙂 too.\n"
    "The quick brown fox jumps over the lazy dog. STOP means stop.\n"
) * 20

SAMPLED = SamplingParams(
    temperature=0.9,
    top_k=60,
    top_p=0.95,
    repetition_penalty=1.2,
    frequency_penalty=0.5,
    presence_penalty=0.3,
    max_new_tokens=12,
    seed=1234,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return train_tokenizer([path], 300)


@pytest.fixture(scope="module")
def model(tokenizer: ChatTokenizer) -> PaLM:
    torch.manual_seed(0)
    config = PaLMConfig(
        vocab_size=tokenizer.vocab_size, dim=32, depth=2, heads=4, dim_head=8, max_seq_len=64
    )
    palm = PaLM(config).eval()
    with torch.no_grad():
        # Logits of std ~1 (not ~0.1): clear winners, few near-ties between top tokens.
        palm.norm.weight.mul_(10)
        for block in palm.blocks:
            assert isinstance(block, ParallelBlock)
            block.attn_out.weight.mul_(10)
            block.ff_out.weight.mul_(10)
    return palm


def chat_prompt(tokenizer: ChatTokenizer, text: str) -> list[int]:
    messages = [ChatMessage("user", text)]
    return tokenizer.encode_chat(messages, add_generation_prompt=True).ids


@pytest.fixture(scope="module")
def prompts(tokenizer: ChatTokenizer) -> list[list[int]]:
    texts = ["Hello there, how are you doing today?", "Café", "The quick brown fox jumps"]
    result = [chat_prompt(tokenizer, text) for text in texts]
    assert len({len(p) for p in result}) == 3  # really different lengths: left padding in play
    return result


def one_at_a_time(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]], params: SamplingParams
) -> list[GenerationResult]:
    return [result for p in prompts for result in generate(model, tokenizer, [p], params)]


def assert_same_results(got: list[GenerationResult], expected: list[GenerationResult]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
        assert (a.prompt_tokens, a.completion_tokens) == (b.prompt_tokens, b.completion_tokens)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


# --- the random model -------------------------------------------------------------------------


def test_greedy_matches_a_full_forward_pass_without_cache(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=8)
    for prompt, result in zip(prompts, generate(model, tokenizer, prompts, params), strict=True):
        sequence = list(prompt)
        for token, logprob in zip(result.token_ids, result.logprobs, strict=True):
            with torch.no_grad():
                logits = model(torch.tensor([sequence]))[0, -1]  # (V,)
            logits[sorted(tokenizer.never_generated_ids)] = float("-inf")  # never drawn
            assert token == int(logits.argmax())
            assert logprob == pytest.approx(float(logits.log_softmax(-1)[token]), abs=1e-4)
            sequence.append(token)


def test_logprobs_are_the_raw_distribution_at_the_temperature(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    params = SamplingParams(temperature=0.5, top_k=3, max_new_tokens=1, seed=3)
    (result,) = generate(model, tokenizer, prompts[:1], params)
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0]]))[0, -1]
    logits[sorted(tokenizer.never_generated_ids)] = float("-inf")
    expected = (logits / 0.5).log_softmax(-1)[result.token_ids[0]]
    assert result.logprobs[0] == pytest.approx(float(expected), abs=1e-4)


def test_batched_greedy_equals_one_prompt_at_a_time(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=12, presence_penalty=2.0)
    batched = generate(model, tokenizer, prompts, params)
    assert len(set(batched[0].token_ids)) > 6
    assert_same_results(batched, one_at_a_time(model, tokenizer, prompts, params))


def test_batched_seeded_sampling_equals_one_prompt_at_a_time(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    batched = generate(model, tokenizer, prompts, SAMPLED)
    assert_same_results(batched, one_at_a_time(model, tokenizer, prompts, SAMPLED))


def test_same_seed_same_output_and_different_seeds_differ(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    params = SamplingParams(max_new_tokens=16, seed=7)
    first = generate(model, tokenizer, prompts, params)
    assert_same_results(generate(model, tokenizer, prompts, params), first)
    other = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=16, seed=8))
    assert [r.token_ids for r in other] != [r.token_ids for r in first]


def test_n_gives_n_distinct_results_per_prompt_in_prompt_order(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    params = SamplingParams(max_new_tokens=10, seed=11, n=2)
    results = generate(model, tokenizer, prompts[:2], params)
    assert len(results) == 4
    assert [r.prompt_tokens for r in results] == [len(prompts[0])] * 2 + [len(prompts[1])] * 2
    assert results[0].token_ids != results[1].token_ids
    # completion 0 uses the request seed itself, completion 1 a derived one
    single = SamplingParams(max_new_tokens=10, seed=11)
    derived = SamplingParams(max_new_tokens=10, seed=completion_seed(11, 1))
    assert_same_results([results[2]], generate(model, tokenizer, prompts[1:2], single))
    assert_same_results([results[3]], generate(model, tokenizer, prompts[1:2], derived))


def test_max_new_tokens_ends_with_length(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=5, stop_token_ids=())
    for prompt, result in zip(prompts, generate(model, tokenizer, prompts, params), strict=True):
        if result.finish_reason == "length":
            assert result.completion_tokens == len(result.token_ids) == 5
        assert result.prompt_tokens == len(prompt)
        assert len(result.logprobs) == result.completion_tokens
        assert result.text == tokenizer.decode(result.token_ids)


def test_the_context_limit_ends_with_length(model: PaLM, tokenizer: ChatTokenizer) -> None:
    limit = model.config.max_seq_len
    prompt = tokenizer.encode_text("word " * 200)[: limit - 3]
    params = SamplingParams(temperature=0, max_new_tokens=50, stop_token_ids=())
    (result,) = generate(model, tokenizer, [prompt], params)
    stopped_early = result.finish_reason == "stop" and result.token_ids[-1] in {
        tokenizer.end_id,
        tokenizer.eos_id,
    }
    assert stopped_early or (result.finish_reason == "length" and result.completion_tokens == 3)
    with pytest.raises(ValueError, match="at most 63"):
        generate(model, tokenizer, [[*prompt, 7, 7, 7]], params)


def test_bad_prompts_are_value_errors(model: PaLM, tokenizer: ChatTokenizer) -> None:
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, tokenizer, [[5], []], SamplingParams())
    with pytest.raises(ValueError, match="outside"):
        generate(model, tokenizer, [[tokenizer.vocab_size]], SamplingParams())
    with pytest.raises(ValueError, match="n=2"):
        stream_generate(model, tokenizer, [5], SamplingParams(n=2))


def test_stop_string_cuts_exactly_before_it(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    base = SamplingParams(temperature=0, max_new_tokens=20, presence_penalty=2.0)
    (full,) = generate(model, tokenizer, prompts[:1], base)
    text = full.text
    # a two-character stop string whose first occurrence is at position 4 or later
    cut = next(p for p in range(4, len(text) - 1) if text.find(text[p : p + 2]) == p)
    stop = text[cut : cut + 2]
    params = dataclasses.replace(base, stop_strings=(stop,))
    (result,) = generate(model, tokenizer, prompts[:1], params)
    assert result.text == text[:cut]
    assert result.finish_reason == "stop"
    # kept tokens: exactly those whose text starts before the cut
    decoder, offset, starts = tokenizer.incremental_decoder(), 0, []
    for token in full.token_ids:
        starts.append(offset)
        offset += len(decoder.push(token))
    kept = sum(1 for start in starts if start < cut)
    assert result.token_ids == full.token_ids[:kept]
    assert result.logprobs == pytest.approx(full.logprobs[:kept], abs=1e-5)
    assert tokenizer.decode(result.token_ids).startswith(result.text)


def test_stream_pieces_join_to_the_result_of_generate(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    stream = stream_generate(model, tokenizer, prompts[1], SAMPLED)
    with pytest.raises(RuntimeError, match="not finished"):
        _ = stream.result
    pieces = list(stream)
    (expected,) = generate(model, tokenizer, prompts[1:2], SAMPLED)
    assert "".join(pieces) == stream.result.text == expected.text
    assert stream.result == expected
    assert not torch.is_inference_mode_enabled()  # nothing leaks out of the generator


def test_bf16_weights_generate(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    bf16 = PaLM(model.config).eval()
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    batched = generate(bf16, tokenizer, prompts, params)
    assert all(len(r.logprobs) == r.completion_tokens > 0 for r in batched)
    assert all(torch.isfinite(torch.tensor(r.logprobs)).all() for r in batched)
    assert [r.token_ids[:2] for r in batched] == [
        r.token_ids[:2] for r in one_at_a_time(bf16, tokenizer, prompts, params)
    ]


# --- the scripted model ---------------------------------------------------------------------


class ScriptedPaLM(PaLM):
    """The next token after t is ``successor[t]`` (logit 20), ``runner_up[t]`` gets 15, every
    other token 0. The real trunk still runs (and fills the cache); its output is replaced."""

    def __init__(
        self,
        config: PaLMConfig,
        successor: Mapping[int, int],
        runner_up: Mapping[int, int],
        default: int,
    ) -> None:
        super().__init__(config)
        assert config.dim >= config.vocab_size
        vocab = config.vocab_size
        table = torch.full((vocab, config.dim), 0.0)
        for token in range(vocab):
            table[token, successor.get(token, default)] = 20.0
            if token in runner_up:
                table[token, runner_up[token]] = 15.0
        self.register_buffer("table", table)
        with torch.no_grad():
            self.embed.weight.copy_(torch.eye(vocab, config.dim))

    def hidden_states(
        self,
        tokens: torch.Tensor,
        *,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        trunk = super().hidden_states(
            tokens,
            cache=cache,
            attention_mask=attention_mask,
            positions=positions,
            last_only=last_only,
        )
        table: torch.Tensor = self.table  # type: ignore[assignment]
        if last_only:
            tokens = tokens[:, -1:]
        return F.embedding(tokens, table).to(trunk.dtype)  # (B, T or 1, dim)


def byte_token(tokenizer: ChatTokenizer, value: int) -> int:
    return next(
        i for i in range(tokenizer.vocab_size) if tokenizer.token_bytes(i) == bytes([value])
    )


SCRIPT = "x\xc3\xa9ySTOPz"  # latin-1 spelling of the bytes: x, é (2 bytes), y, S, T, O, P, z


@pytest.fixture(scope="module")
def scripted(tokenizer: ChatTokenizer) -> ScriptedPaLM:
    """After <|assistant|> it writes "xéySTOPz" one byte token at a time, then <|end|>.
    "a" repeats itself forever; "b" continues with <|end|> and "d" with "e", each with a close
    runner-up ("c" and "f")."""
    chain = [tokenizer.assistant_id, *(byte_token(tokenizer, ord(c)) for c in SCRIPT)]
    successor = dict(zip(chain, [*chain[1:], tokenizer.end_id], strict=True))
    a, b, c, d, e, f = (byte_token(tokenizer, ord(ch)) for ch in "abcdef")
    successor[a] = a
    successor[b] = tokenizer.end_id
    successor[d] = e
    x = byte_token(tokenizer, ord("x"))
    vocab = tokenizer.vocab_size
    config = PaLMConfig(vocab_size=vocab, dim=vocab, depth=1, heads=2, dim_head=8, ff_mult=1)
    torch.manual_seed(0)
    return ScriptedPaLM(config, successor, runner_up={b: c, d: f}, default=x).eval()


def test_the_end_token_stops_and_is_the_last_token(
    scripted: ScriptedPaLM, tokenizer: ChatTokenizer
) -> None:
    prompt = chat_prompt(tokenizer, "hi")
    (result,) = generate(scripted, tokenizer, [prompt], SamplingParams(seed=0))
    assert result.text == "xéySTOPz"
    assert result.finish_reason == "stop"
    assert result.token_ids[-1] == tokenizer.end_id
    assert result.completion_tokens == 10  # 9 bytes + <|end|>
    assert result.text == tokenizer.decode(result.token_ids)


def test_stop_token_ids_stop_and_their_text_is_not_shown(
    scripted: ScriptedPaLM, tokenizer: ChatTokenizer
) -> None:
    y = byte_token(tokenizer, ord("y"))
    params = SamplingParams(temperature=0, stop_token_ids=(y,))
    (result,) = generate(scripted, tokenizer, [chat_prompt(tokenizer, "hi")], params)
    assert (result.text, result.finish_reason) == ("xé", "stop")
    assert result.token_ids[-1] == y and result.completion_tokens == 4
    assert tokenizer.decode(result.token_ids) == "xéy"


@pytest.mark.parametrize(
    ("stop", "text", "tokens"),
    [
        ("TO", "xéyS", 5),  # stop string over two tokens on a token boundary
        ("é", "x", 1),  # the byte token that begins "é" starts at the cut: dropped
        ("Pz", "xéySTO", 7),
        ("xé", "", 0),
    ],
)
def test_stop_strings_cut_exactly(
    scripted: ScriptedPaLM, tokenizer: ChatTokenizer, stop: str, text: str, tokens: int
) -> None:
    params = SamplingParams(temperature=0, stop_strings=(stop, "never"))
    (result,) = generate(scripted, tokenizer, [chat_prompt(tokenizer, "hi")], params)
    assert (result.text, result.finish_reason, result.completion_tokens) == (text, "stop", tokens)
    assert len(result.token_ids) == len(result.logprobs) == tokens


def test_streaming_never_splits_a_character_nor_shows_a_stop_string(
    scripted: ScriptedPaLM, tokenizer: ChatTokenizer
) -> None:
    params = SamplingParams(temperature=0, stop_strings=("STOP",))
    stream = stream_generate(scripted, tokenizer, chat_prompt(tokenizer, "hi"), params)
    pieces = list(stream)
    assert "".join(pieces) == "xéy" == stream.result.text
    assert "é" in pieces[1]  # arrives whole, with the token that completes it
    assert all("\ufffd" not in piece and "S" not in piece for piece in pieces)


def test_length_with_an_unfinished_character_flushes_a_replacement_char(
    scripted: ScriptedPaLM, tokenizer: ChatTokenizer
) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=2)
    stream = stream_generate(scripted, tokenizer, chat_prompt(tokenizer, "hi"), params)
    assert "".join(stream) == "x\ufffd" == stream.result.text
    assert stream.result.finish_reason == "length"
    assert stream.result.text == tokenizer.decode(stream.result.token_ids)


def test_frequency_penalty_breaks_a_loop(scripted: ScriptedPaLM, tokenizer: ChatTokenizer) -> None:
    a = byte_token(tokenizer, ord("a"))
    prompt = [tokenizer.user_id, a]
    plain = SamplingParams(temperature=0, max_new_tokens=20)
    (looping,) = generate(scripted, tokenizer, [prompt], plain)
    assert looping.text == "a" * 20 and looping.finish_reason == "length"
    # logit of "a" after c completion "a"s: 20 - 1.5 c, still the max while c <= 13
    penalised = SamplingParams(temperature=0, max_new_tokens=20, frequency_penalty=1.5)
    (result,) = generate(scripted, tokenizer, [prompt], penalised)
    assert list(result.token_ids[:14]) == [a] * 14 and result.token_ids[14] != a


def test_repetition_penalty_spares_control_tokens_but_not_text(
    scripted: ScriptedPaLM, tokenizer: ChatTokenizer
) -> None:
    b, d, e, f = (byte_token(tokenizer, ord(ch)) for ch in "bdef")
    params = SamplingParams(temperature=0, repetition_penalty=2.0, max_new_tokens=1)
    # after "b": <|end|> 20, "c" 15. <|end|> is in the prompt, yet is not penalised.
    prompt = [tokenizer.user_id, b, tokenizer.end_id, tokenizer.assistant_id, b]
    (result,) = generate(scripted, tokenizer, [prompt], params)
    assert result.token_ids == (tokenizer.end_id,)
    # after "d": "e" 20, "f" 15. With "e" in the prompt its 20 becomes 10 and "f" wins.
    (result,) = generate(scripted, tokenizer, [[tokenizer.user_id, d]], params)
    assert result.token_ids == (e,)
    (result,) = generate(scripted, tokenizer, [[tokenizer.user_id, e, d]], params)
    assert result.token_ids == (f,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generation_on_cuda(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]]
) -> None:
    cuda = PaLM(model.config).eval()
    cuda.load_state_dict(model.state_dict())
    cuda = cuda.to("cuda")
    greedy = SamplingParams(temperature=0, max_new_tokens=6, presence_penalty=2.0)
    on_cuda = generate(cuda, tokenizer, prompts, greedy)
    assert_same_results(on_cuda, one_at_a_time(cuda, tokenizer, prompts, greedy))
    assert_same_results(
        generate(cuda, tokenizer, prompts, SAMPLED),
        one_at_a_time(cuda, tokenizer, prompts, SAMPLED),
    )
    bf16 = cuda.to(torch.bfloat16)
    first = generate(bf16, tokenizer, prompts, SAMPLED)
    again = generate(bf16, tokenizer, prompts, SAMPLED)
    assert [r.token_ids for r in again] == [r.token_ids for r in first]
    assert all(r.completion_tokens > 0 for r in first)


def test_role_and_padding_tokens_are_never_generated(
    model: PaLM, tokenizer: ChatTokenizer, prompts: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a model that prefers them cannot speak for the user or open a new turn."""
    original = model.forward

    def prefers_role_tokens(*args: Any, **kwargs: Any) -> torch.Tensor:
        logits = original(*args, **kwargs).clone()
        logits[..., sorted(tokenizer.never_generated_ids)] += 1e4
        return logits

    monkeypatch.setattr(model, "forward", prefers_role_tokens)
    for params in (SamplingParams(temperature=0, max_new_tokens=6), SAMPLED):
        for result in generate(model, tokenizer, prompts, params):
            assert result.completion_tokens > 0
            assert not set(result.token_ids) & tokenizer.never_generated_ids
