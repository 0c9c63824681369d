"""KVCache: growth, crop, select and repeat_interleave, checked against uncached forwards."""

from __future__ import annotations

import pytest
import torch

from model_runtime.palm import KVCache, PaLM

FP32_ATOL = 1e-5  # same computation in a different order, float32


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_empty_cache_shapes(tiny_model: PaLM) -> None:
    cache = KVCache.empty(tiny_model.config, 3, device="cpu", dtype=torch.bfloat16)
    assert (cache.length, cache.batch_size, cache.depth) == (0, 3, 2)
    assert cache.capacity == tiny_model.config.max_seq_len
    keys, values = cache.layer(1)
    assert keys.shape == values.shape == (3, 0, 8)
    assert keys.dtype == torch.bfloat16


def test_prefill_fills_each_layer_and_growth_keeps_content(tiny_model: PaLM) -> None:
    tokens = _tokens(2, 6)
    cache = KVCache.empty(tiny_model.config, 2, device="cpu", dtype=torch.float32, capacity=2)
    with torch.inference_mode():
        tiny_model(tokens[:, :3], cache=cache)
        before = [t.clone() for t in cache.layer(0)]
        tiny_model(tokens[:, 3:], cache=cache)  # 3 + 3 > capacity 4: grows to 6
    assert cache.length == 6
    assert cache.capacity >= 6
    keys, values = cache.layer(0)
    assert keys.shape == (2, 6, 8)
    torch.testing.assert_close(keys[:, :3], before[0], atol=0, rtol=0)
    torch.testing.assert_close(values[:, :3], before[1], atol=0, rtol=0)


def test_crop_then_decode_matches_forward_of_the_kept_prefix(tiny_model: PaLM) -> None:
    tokens = _tokens(1, 8)
    other = _tokens(1, 3, seed=5)
    cache = KVCache.empty(tiny_model.config, 1, device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        tiny_model(tokens, cache=cache)
        cache.crop(5)
        after_crop = tiny_model(other, cache=cache)
        expected = tiny_model(torch.cat((tokens[:, :5], other), dim=1))[:, 5:]
    torch.testing.assert_close(after_crop, expected, atol=FP32_ATOL, rtol=0)
    with pytest.raises(ValueError):
        cache.crop(9)


def test_select_reorders_rows_and_decoding_continues_per_row(tiny_model: PaLM) -> None:
    tokens = _tokens(3, 5)
    next_tokens = _tokens(3, 1, seed=7)
    cache = KVCache.empty(tiny_model.config, 3, device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        tiny_model(tokens, cache=cache)
        rows = torch.tensor([2, 0])
        picked = cache.select(rows)
        assert (picked.batch_size, picked.length) == (2, 5)
        step = tiny_model(next_tokens[rows], cache=picked)
        full = tiny_model(torch.cat((tokens, next_tokens), dim=1))
    torch.testing.assert_close(step[:, 0], full[rows, 5], atol=FP32_ATOL, rtol=0)
    assert cache.length == 5  # the source cache is untouched


def test_repeat_interleave_gives_n_copies_of_each_row(tiny_model: PaLM) -> None:
    tokens = _tokens(2, 4)
    cache = KVCache.empty(tiny_model.config, 2, device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        tiny_model(tokens, cache=cache)
        repeated = cache.repeat_interleave(3)
        assert repeated.batch_size == 6
        for layer in range(cache.depth):
            keys, values = cache.layer(layer)
            rkeys, rvalues = repeated.layer(layer)
            torch.testing.assert_close(rkeys, keys.repeat_interleave(3, dim=0), atol=0, rtol=0)
            torch.testing.assert_close(rvalues, values.repeat_interleave(3, dim=0), atol=0, rtol=0)
        # three different continuations of the same prompt row
        continuation = _tokens(6, 1, seed=3)
        step = tiny_model(continuation, cache=repeated)
        full = tiny_model(torch.cat((tokens.repeat_interleave(3, dim=0), continuation), dim=1))
    torch.testing.assert_close(step[:, 0], full[:, 4], atol=FP32_ATOL, rtol=0)
    with pytest.raises(ValueError):
        cache.repeat_interleave(0)
