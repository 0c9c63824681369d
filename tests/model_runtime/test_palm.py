"""The PaLM model: shapes, parameter count, causality, KV-cache equivalence, left padding,
bf16, seeded init and an overfit-one-batch run."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from model_runtime import palm
from model_runtime.config import PaLMConfig
from model_runtime.palm import KVCache, PaLM, ParallelBlock

# Float32 tolerance for two computations of the same logits in a different order (cached vs
# full attention, one row vs a padded batch): ~100 ulps of values of order 1.
FP32_ATOL = 1e-5


def _tokens(batch: int, length: int, vocab: int = 64, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)


def test_forward_returns_float32_logits_of_each_position(tiny_model: PaLM) -> None:
    logits = tiny_model(_tokens(3, 7))
    assert logits.shape == (3, 7, 64)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_forward_is_hidden_states_times_tied_embedding(tiny_model: PaLM) -> None:
    tokens = _tokens(2, 5)
    hidden = tiny_model.hidden_states(tokens)
    assert hidden.shape == (2, 5, 32)
    expected = hidden @ tiny_model.embed.weight.T
    torch.testing.assert_close(tiny_model(tokens), expected, atol=FP32_ATOL, rtol=0)


def test_num_parameters_counts_tied_embedding_once(make_model: Callable[..., PaLM]) -> None:
    for qk_norm in (False, True):
        model = make_model(qk_norm=qk_norm)
        vocab, dim, depth, heads, dim_head, ff_inner = 64, 32, 2, 4, 8, 128
        fused = heads * dim_head + 2 * dim_head + 2 * ff_inner  # q, k, v, SwiGLU value + gate
        per_block = dim + dim * fused + heads * dim_head * dim + ff_inner * dim
        per_block += 2 * dim_head if qk_norm else 0
        expected = vocab * dim + depth * per_block + dim
        assert model.num_parameters() == expected
    # no bias anywhere
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


def test_future_tokens_do_not_change_earlier_logits(tiny_model: PaLM) -> None:
    tokens = _tokens(1, 8)
    changed = tokens.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 64
    a, b = tiny_model(tokens), tiny_model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=FP32_ATOL, rtol=0)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"qk_norm": True}, {"use_xpos": False}],
    ids=["xpos", "qk_norm", "no_xpos"],
)
def test_kv_cached_decode_gives_full_forward_logits(
    make_model: Callable[..., PaLM], overrides: dict[str, bool]
) -> None:
    model = make_model(**overrides)
    tokens = _tokens(2, 12)
    with torch.inference_mode():
        full = model(tokens)
        cache = KVCache.empty(model.config, 2, device="cpu", dtype=torch.float32, capacity=4)
        pieces = [model(tokens[:, :5], cache=cache)]  # prefill (grows the capacity past 4)
        for t in range(5, 12):
            pieces.append(model(tokens[:, t : t + 1], cache=cache))
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=FP32_ATOL, rtol=0)


def test_chunked_prefill_gives_full_forward_logits(tiny_model: PaLM) -> None:
    tokens = _tokens(2, 12)
    with torch.inference_mode():
        full = tiny_model(tokens)
        cache = KVCache.empty(tiny_model.config, 2, device="cpu", dtype=torch.float32)
        chunks = [tiny_model(tokens[:, a:b], cache=cache) for a, b in ((0, 3), (3, 8), (8, 12))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=FP32_ATOL, rtol=0)


def _left_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, width - len(row) :] = row
        mask[i, width - len(row) :] = True
    return tokens, mask


def test_left_padded_batch_gives_each_rows_logits_alone(tiny_model: PaLM) -> None:
    rows = [_tokens(1, n, seed=n)[0] for n in (7, 3, 5)]
    tokens, mask = _left_pad(rows)
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T): 0 at the first real token
    steps = 4
    continuation = _tokens(3, steps, seed=99)
    with torch.inference_mode():
        cache = KVCache.empty(tiny_model.config, 3, device="cpu", dtype=torch.float32)
        batch_prefill = tiny_model(tokens, cache=cache, attention_mask=mask, positions=positions)
        batch_steps = []
        for s in range(steps):
            mask = torch.cat((mask, torch.ones(3, 1, dtype=torch.bool)), dim=1)
            step_pos = positions[:, -1:] + 1
            positions = torch.cat((positions, step_pos), dim=1)
            batch_steps.append(
                tiny_model(
                    continuation[:, s : s + 1],
                    cache=cache,
                    attention_mask=mask,
                    positions=step_pos,
                )
            )
        batch_decode = torch.cat(batch_steps, dim=1)  # (B, steps, V)
        for i, row in enumerate(rows):
            alone = tiny_model(torch.cat((row, continuation[i]))[None])  # (1, n + steps, V)
            n = len(row)
            assert torch.isfinite(batch_prefill[i]).all()  # pad positions too
            torch.testing.assert_close(batch_prefill[i, -n:], alone[0, :n], atol=FP32_ATOL, rtol=0)
            torch.testing.assert_close(batch_decode[i], alone[0, n:], atol=FP32_ATOL, rtol=0)


def test_bad_shapes_raise_clear_errors(tiny_model: PaLM) -> None:
    tokens = _tokens(2, 4)
    with pytest.raises(ValueError, match="attention_mask"):
        tiny_model(tokens, attention_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions"):
        tiny_model(tokens, positions=torch.arange(4)[None])
    with pytest.raises(ValueError, match="int64"):
        tiny_model(tokens.float())
    cache = KVCache.empty(tiny_model.config, 3, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="rows"):
        tiny_model(tokens, cache=cache)
    assert cache.length == 0


def test_init_is_seeded_and_scales_residual_projections(make_model: Callable[..., PaLM]) -> None:
    a, b, c = make_model(seed=3), make_model(seed=3), make_model(seed=4)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if not name.endswith("norm.weight"):
            assert not torch.equal(pa, pc), name
    block = a.blocks[0]
    assert isinstance(block, ParallelBlock)
    assert abs(block.fused_in.weight.std().item() - 0.02) < 0.002
    assert abs(block.ff_out.weight.std().item() - 0.02 / 2) < 0.002  # 1 / sqrt(2 * depth=2)


def test_bf16_weights_give_float32_logits_close_to_fp32(tiny_model: PaLM) -> None:
    tokens = _tokens(2, 10)
    with torch.inference_mode():
        reference = tiny_model(tokens)
        model_bf16 = PaLM(tiny_model.config).eval()
        model_bf16.load_state_dict(tiny_model.state_dict())
        model_bf16.to(torch.bfloat16)
        cache = KVCache.empty(model_bf16.config, 2, device="cpu", dtype=torch.bfloat16)
        prefill = model_bf16(tokens[:, :6], cache=cache)
        steps = [model_bf16(tokens[:, t : t + 1], cache=cache) for t in range(6, 10)]
    logits = torch.cat([prefill, *steps], dim=1)
    assert logits.dtype == torch.float32
    # bf16 keeps 8 mantissa bits (relative error ~4e-3 per op); logits here are of order 0.3.
    torch.testing.assert_close(logits, reference, atol=3e-2, rtol=0)


def test_bf16_autocast_forward_and_backward(tiny_model: PaLM) -> None:
    tokens = _tokens(2, 10)
    reference = tiny_model(tokens).detach()
    tiny_model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = tiny_model(tokens)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, atol=3e-2, rtol=0)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, 64), tokens[:, 1:].reshape(-1))
    loss.backward()
    grads = [p.grad for p in tiny_model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_overfit_one_batch_drives_loss_near_zero(make_model: Callable[..., PaLM]) -> None:
    model = make_model(seed=0).train()
    tokens = _tokens(4, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(150):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 3.5  # about ln(64) = 4.16 at init
    assert losses[-1] < 0.1, losses[-10:]


def test_config_json_round_trip_and_errors() -> None:
    config = PaLMConfig(vocab_size=100, dim=32, depth=2, heads=4, qk_norm=True)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["format_version"] == 1
    assert PaLMConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="format_version"):
        PaLMConfig.from_dict({**data, "format_version": 2})
    with pytest.raises(ValueError, match="unknown PaLM config keys: colour"):
        PaLMConfig.from_dict({**data, "colour": "red"})
    with pytest.raises(ValueError, match="missing PaLM config keys: dim"):
        PaLMConfig.from_dict({k: v for k, v in data.items() if k != "dim"})
    with pytest.raises(ValueError, match="dim_head must be even"):
        PaLMConfig(vocab_size=100, dim=32, depth=2, heads=4, dim_head=7)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        PaLMConfig.from_dict({**data, "depth": "2"})
    with pytest.raises(ValueError, match="qk_norm must be a bool"):
        PaLMConfig.from_dict({**data, "qk_norm": 1})


@pytest.mark.parametrize("case", ["plain", "qk_norm", "padded", "after_cache", "lora"])
def test_last_only_gives_the_last_hidden_state_and_the_same_cache(
    make_model: Callable[..., PaLM], case: str
) -> None:
    # A prefill asks only for the last position: the last layer then skips the other queries.
    from model_runtime.lora import add_lora, set_active_lora

    model = make_model(qk_norm=case == "qk_norm")
    if case == "lora":
        add_lora(model, "actor", rank=2, alpha=2)
        for name, param in model.named_parameters():
            if "lora_b" in name:
                torch.nn.init.normal_(param, std=0.1)
        set_active_lora(model, "actor")
    tokens = _tokens(2, 9)
    mask = None
    if case == "padded":
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[1, :3] = False  # row 1 is left-padded
    hiddens, caches = [], []
    for last_only in (False, True):
        cache = KVCache.empty(model.config, 2, device="cpu", dtype=torch.float32)
        with torch.inference_mode():
            if case == "after_cache":
                model(tokens[:, :4], cache=cache)
                hidden = model.hidden_states(tokens[:, 4:], cache=cache, last_only=last_only)
            else:
                hidden = model.hidden_states(
                    tokens, cache=cache, attention_mask=mask, last_only=last_only
                )
        hiddens.append(hidden)
        caches.append(cache)
    full, last = hiddens
    assert last.shape == (2, 1, 32)
    torch.testing.assert_close(last, full[:, -1:], atol=FP32_ATOL, rtol=0)
    assert caches[0].length == caches[1].length == 9
    for layer in range(model.config.depth):
        for a, b in zip(caches[0].layer(layer), caches[1].layer(layer), strict=True):
            torch.testing.assert_close(a, b, atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("products", [False, True])
def test_a_prefill_without_autograd_gives_the_logits_of_a_training_forward(
    tiny_model: PaLM, monkeypatch: pytest.MonkeyPatch, products: bool
) -> None:
    """Without autograd a block writes attention (in place, chunk by chunk) and SwiGLU into one
    joined input for the output projection; with it, they are separate tensors."""
    _attention_as(monkeypatch, products=products)
    tokens = _tokens(2, 8)
    with torch.no_grad():
        joined = tiny_model(tokens)
    separate = tiny_model(tokens)  # parameters require gradients: the training path
    assert separate.requires_grad and not joined.requires_grad
    torch.testing.assert_close(joined, separate.detach(), atol=FP32_ATOL, rtol=0)


def _attention_as(monkeypatch: pytest.MonkeyPatch, *, products: bool) -> None:
    """Attention as SDPA, or as matrix products 3 new tokens at a time (uneven chunks)."""
    monkeypatch.setattr(palm, "PRODUCTS_ATTENTION_FROM_ROWS", 1 if products else 10**9)
    monkeypatch.setattr(palm, "ATTENTION_CHUNK_TOKENS", 3)
    monkeypatch.setattr(palm, "PREFILL_ATTENTION_CHUNK_TOKENS", 3)


@pytest.mark.parametrize("case", ["causal", "padded", "after_cache"])
@pytest.mark.parametrize("length", [7, 10])
def test_attention_as_products_gives_the_same_logits_and_cache(
    tiny_model: PaLM, monkeypatch: pytest.MonkeyPatch, case: str, length: int
) -> None:
    tokens = _tokens(2, length)
    mask = None
    if case == "padded":
        mask = torch.ones(2, length, dtype=torch.bool)
        mask[1, :3] = False

    def run(products: bool) -> tuple[torch.Tensor, KVCache]:
        _attention_as(monkeypatch, products=products)
        cache = KVCache.empty(tiny_model.config, 2, device="cpu", dtype=torch.float32)
        with torch.inference_mode():
            if case == "after_cache":  # the chunks' keys start after 3 held ones
                tiny_model(tokens[:, :3], cache=cache)
                return tiny_model(tokens[:, 3:], cache=cache), cache
            return tiny_model(tokens, cache=cache, attention_mask=mask), cache

    fused, fused_cache = run(products=False)
    products, products_cache = run(products=True)
    torch.testing.assert_close(products, fused, atol=FP32_ATOL, rtol=0)
    for layer in range(tiny_model.config.depth):
        for a, b in zip(products_cache.layer(layer), fused_cache.layer(layer), strict=True):
            torch.testing.assert_close(a, b, atol=FP32_ATOL, rtol=0)  # later layers' inputs differ


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_attention_as_products_gives_the_same_gradients(
    make_model: Callable[..., PaLM], monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    tokens = _tokens(2, 9)
    grads = []
    for products in (False, True):
        _attention_as(monkeypatch, products=products)
        model = make_model()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    fused, products_grads = grads
    for name, grad in fused.items():
        assert grad is not None
        if precision == "fp32":
            torch.testing.assert_close(products_grads[name], grad, atol=FP32_ATOL, rtol=1e-5)
        else:  # both round scores and probabilities to bf16, in different places: 2^-8 or so
            worst = (products_grads[name] - grad).abs().max() / grad.abs().max()
            assert worst < 0.02, f"{name}: off by {worst:.3f} of its largest entry"


def test_attention_runs_as_products_from_enough_query_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, ...]] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(q.shape))
        return sdpa(q, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(palm.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(palm, "PRODUCTS_ATTENTION_FROM_ROWS", 32)
    config = PaLMConfig(vocab_size=64, dim=32, depth=1, heads=2, dim_head=16, max_seq_len=32)
    model = PaLM(config)
    model(_tokens(2, 8))  # 2 x 8 x 2 = 32 query rows: products
    assert calls == []
    with torch.no_grad():
        model(_tokens(2, 7))  # 28 rows: one SDPA call
        assert calls == [(2, 1, 14, 16)]
        cache = KVCache.empty(config, 2, device="cpu", dtype=torch.float32)
        model(_tokens(2, 8), cache=cache)
        model(_tokens(2, 1), cache=cache)  # a decode step has no mask: SDPA
    assert calls == [(2, 1, 14, 16), (2, 1, 2, 16)]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"qk_norm": True}, {"use_xpos": False}],
    ids=["xpos", "qk_norm", "no_xpos"],
)
@pytest.mark.parametrize("products", [False, True], ids=["sdpa", "products"])
def test_every_parameter_gets_a_gradient(
    make_model: Callable[..., PaLM],
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, bool],
    products: bool,
) -> None:
    # The queries and keys pass through the rotary product: their rows of the fused projection
    # (and their norms) must learn like every other weight.
    _attention_as(monkeypatch, products=products)
    model = make_model(**overrides)
    tokens = _tokens(2, 9)
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    layout = model.config.fused_in_layout()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for block in model.blocks:
        assert isinstance(block, ParallelBlock)
        grad = block.fused_in.weight.grad
        assert grad is not None
        for part, (start, stop) in layout.items():
            assert grad[start:stop].abs().sum() > 0, part
