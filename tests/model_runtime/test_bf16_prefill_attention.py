"""The prefill attention kernel: causal multi-query attention against the exact float64 value,
under padding masks and after held keys, for head counts and sizes its fast and general paths
take; and the model's prefill routed through it where it runs."""

from __future__ import annotations

import pytest
import torch

from model_runtime import bf16_prefill_attention, cpu_kernels, palm
from model_runtime.config import PaLMConfig
from model_runtime.cpu_features import cpu_flags
from model_runtime.palm import KVCache, PaLM

pytestmark = pytest.mark.skipif(
    not cpu_flags() >= cpu_kernels.REQUIRED_CPU_FLAGS,
    reason="this CPU lacks AVX512-BF16 / AVX512-BW / AVX512-VL: the kernels are not used here",
)


def _bf16(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


def _mask(batch: int, new: int, held: int, heads: int, hidden: dict[int, int]) -> torch.Tensor:
    """Additive (B, 1, T*H, S+T) causal mask; ``hidden`` {row: n} hides that row's first n keys
    (left padding), each query still seeing its own key, as PaLM builds it."""
    keys = torch.arange(held + new)
    queries = torch.arange(held, held + new)
    allowed = (keys[None] <= queries[:, None])[None].repeat(batch, 1, 1)  # (B, T, S+T)
    for row, count in hidden.items():
        allowed[row, :, :count] = False
        allowed[row] |= keys[None] == queries[:, None]
    allowed = allowed[:, :, None].expand(batch, new, heads, held + new)
    allowed = allowed.reshape(batch, 1, new * heads, held + new)
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf")).bfloat16()


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    batch, new, heads, dim_head = q.shape
    scores = q.double().reshape(batch, new * heads, dim_head) @ k.double().transpose(1, 2)
    probs = torch.softmax(scores * dim_head**-0.5 + mask.double().squeeze(1), dim=-1)
    return (probs @ v.double()).view(batch, new, heads, dim_head)


@pytest.mark.parametrize(
    ("batch", "new", "held", "heads", "dim_head", "hidden"),
    [
        (1, 256, 0, 12, 64, {}),  # a prompt: three groups of four heads
        (1, 33, 0, 6, 64, {}),  # a group of four, then two single heads; odd T
        (2, 17, 0, 5, 64, {1: 6}),  # a left-padded batch
        (2, 9, 7, 4, 64, {0: 3}),  # after 7 held keys (an odd S + T)
        (1, 1, 0, 3, 64, {}),  # one token
        (1, 40, 3, 3, 18, {}),  # a head size off the fast path
        (2, 20, 0, 2, 128, {1: 2}),
    ],
)
def test_attention_is_the_exact_value_to_bf16_accuracy(
    batch: int, new: int, held: int, heads: int, dim_head: int, hidden: dict[int, int]
) -> None:
    q = _bf16(batch, new, heads, dim_head, seed=1)
    k, v = _bf16(batch, held + new, dim_head, seed=2), _bf16(batch, held + new, dim_head, seed=3)
    mask = _mask(batch, new, held, heads, hidden)
    out = torch.full((batch, new, heads, dim_head), 9.0, dtype=torch.bfloat16)
    assert bf16_prefill_attention.prefill_attention(q, k, v, mask, out) is out
    # probabilities are rounded to bf16 for the product with the values, then the output
    torch.testing.assert_close(out.double(), _exact(q, k, v, mask), atol=0.03, rtol=2**-7)
    products = palm._attention_by_products(q, k, v, mask).view(out.shape)
    torch.testing.assert_close(out.float(), products.float(), atol=0.03, rtol=2**-6)


def test_hidden_keys_carry_no_weight_at_all() -> None:
    """Pads and later keys hold huge values: a trace of weight on them would show."""
    q = _bf16(2, 12, 4, 64, seed=4)
    k, v = _bf16(2, 12, 64, seed=5), _bf16(2, 12, 64, seed=6)
    v[1, :5] = 3e38  # row 1's pads
    mask = _mask(2, 12, 0, 4, {1: 5})
    out = torch.empty(2, 12, 4, 64, dtype=torch.bfloat16)
    assert bf16_prefill_attention.prefill_attention(q, k, v, mask, out) is not None
    assert bool(torch.isfinite(out[1, 5:]).all())
    later = _bf16(2, 12, 64, seed=6)
    later[:, 6:] = 3e38  # keys after token 5: no query up to 5 may see them
    first = torch.empty_like(out)
    assert bf16_prefill_attention.prefill_attention(q, k, later, mask, first) is not None
    torch.testing.assert_close(first[0, :6], out[0, :6], atol=0, rtol=0)


def test_writes_into_a_strided_output_and_nowhere_else() -> None:
    """The prefill's case: ``out`` is the attention part of the joined input of the output
    projection, (B, T, H, dh) rows inside wider (B, T, width) rows."""
    q = _bf16(1, 10, 3, 64, seed=7)
    k, v = _bf16(1, 10, 64, seed=8), _bf16(1, 10, 64, seed=9)
    mask = _mask(1, 10, 0, 3, {})
    joined = torch.full((1, 10, 3 * 64 + 50), 5.0, dtype=torch.bfloat16)
    out = joined[..., : 3 * 64].view(1, 10, 3, 64)
    assert bf16_prefill_attention.prefill_attention(q, k, v, mask, out) is out
    torch.testing.assert_close(out.double(), _exact(q, k, v, mask), atol=0.03, rtol=2**-7)
    assert bool((joined[..., 3 * 64 :] == 5.0).all())


def test_what_it_does_not_take_is_left_to_torch() -> None:
    q = _bf16(1, 4, 2, 64, seed=10)
    k, v = _bf16(1, 4, 64, seed=11), _bf16(1, 4, 64, seed=12)
    mask, out = _mask(1, 4, 0, 2, {}), torch.empty(1, 4, 2, 64, dtype=torch.bfloat16)
    attend = bf16_prefill_attention.prefill_attention
    assert attend(q.float(), k, v, mask, out) is None
    assert attend(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, mask, out) is None
    assert attend(q, k[:, :3], v[:, :3], mask[..., :3], out) is None  # fewer keys than tokens
    assert attend(q, k, v, mask[..., :3], out) is None
    assert attend(q, k[..., :32], v[..., :32], mask, out) is None
    trained = q.float().requires_grad_().bfloat16()
    assert attend(trained, k, v, mask, out) is None


def test_the_model_s_prefill_runs_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    real = bf16_prefill_attention.prefill_attention

    def counting(*args: torch.Tensor) -> torch.Tensor | None:
        result = real(*args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(bf16_prefill_attention, "prefill_attention", counting)
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=128, dim=128, depth=2, heads=2, dim_head=64, max_seq_len=32)
    model = PaLM(config).bfloat16().eval()
    tokens = torch.randint(1, 128, (1, 9))
    cache = KVCache.empty(config, 1, device="cpu", dtype=torch.bfloat16)
    with torch.no_grad():
        prefilled = model(tokens[:, :8], cache=cache)[:, -1]
        stepped = model(tokens[:, 8:], cache=cache)[:, -1]  # one token: no mask, SDPA
        full = model(tokens)
    assert calls == [True, True, True, True]  # two layers, two prefills
    torch.testing.assert_close(prefilled, full[:, 7], atol=0.05, rtol=0.05)
    torch.testing.assert_close(stepped, full[:, 8], atol=0.05, rtol=0.05)
    calls.clear()
    model.float().train()
    model(tokens).sum().backward()  # training never reaches it
    assert calls == []
