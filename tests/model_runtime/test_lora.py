"""LoRA: zero-B identity, targets hit only their slice, training, merging, switching sets,
saving and loading adapters alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from model_runtime.lora import (
    LoRALinear,
    active_lora,
    add_lora,
    has_lora,
    load_lora,
    load_lora_state_dict,
    lora_names,
    lora_parameters,
    lora_spec,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    remove_lora,
    save_lora,
    set_active_lora,
)
from model_runtime.palm import KVCache, PaLM, ParallelBlock

FP32_ATOL = 1e-5


def _tokens(batch: int = 2, length: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


def _randomise(model: PaLM, name: str, seed: int) -> None:
    """Give set ``name`` non-zero B so that it changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lora_parameters(model, name):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _train(model: PaLM, name: str, steps: int = 5) -> None:
    params = mark_only_lora_trainable(model, name)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    tokens = _tokens(4, 12, seed=3)
    model.train()
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_new_set_with_zero_b_leaves_outputs_unchanged(tiny_model: PaLM) -> None:
    tokens = _tokens()
    before = tiny_model(tokens)
    add_lora(tiny_model, "actor", rank=4, alpha=8)
    set_active_lora(tiny_model, "actor")
    assert active_lora(tiny_model) == "actor"
    torch.testing.assert_close(tiny_model(tokens), before, atol=0, rtol=0)


def test_each_target_changes_only_its_slice_of_the_fused_projection(tiny_model: PaLM) -> None:
    block = tiny_model.blocks[0]
    assert isinstance(block, ParallelBlock)
    layout = tiny_model.config.fused_in_layout()
    x = torch.randn(3, 32)
    for target in ("q", "k", "v", "ff_in"):
        base = F.linear(x, block.fused_in.weight)
        add_lora(tiny_model, f"only_{target}", rank=2, alpha=2, targets=(target,))
        _randomise(tiny_model, f"only_{target}", seed=0)
        set_active_lora(tiny_model, f"only_{target}")
        adapted = block.fused_in(x)
        for name, (start, stop) in layout.items():
            same = torch.equal(adapted[:, start:stop], base[:, start:stop])
            assert same == (name != target), (target, name)
    assert lora_spec(tiny_model, "only_k").targets == ("k",)


def test_only_adapter_parameters_train_and_merged_equals_unmerged(tiny_model: PaLM) -> None:
    base_state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    add_lora(tiny_model, "actor", rank=4, alpha=8)
    set_active_lora(tiny_model, "actor")
    tokens = _tokens()
    before = tiny_model(tokens).detach()
    _train(tiny_model, "actor")
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.actor." in n for n in trainable)
    assert len(trainable) == 2 * 6 * tiny_model.config.depth  # A and B, 6 targets, per block
    for key, value in base_state.items():
        assert torch.equal(tiny_model.state_dict()[key], value), key  # base weights frozen
    with torch.no_grad():
        unmerged = tiny_model(tokens)
        assert not torch.allclose(unmerged, before, atol=1e-3)
        merge_lora(tiny_model, "actor")
        merged = tiny_model(tokens)
    torch.testing.assert_close(merged, unmerged, atol=FP32_ATOL, rtol=0)
    assert lora_names(tiny_model) == []
    assert not has_lora(tiny_model)
    assert set(tiny_model.state_dict()) == set(base_state)  # plain model again
    assert not any(isinstance(m, LoRALinear) for m in tiny_model.modules())


def test_every_adapter_gets_a_gradient(tiny_model: PaLM) -> None:
    # Adapters on q and k too: their outputs reach the loss through the rotary product.
    add_lora(tiny_model, "actor", rank=4, alpha=8)
    set_active_lora(tiny_model, "actor")
    params = mark_only_lora_trainable(tiny_model, "actor")
    for name, param in tiny_model.named_parameters():
        if "lora_b" in name:
            torch.nn.init.normal_(param, std=0.1)  # A gets a gradient only once B is non-zero
    tokens = _tokens(2, 9)
    logits = tiny_model(tokens[:, :-1])
    F.cross_entropy(logits.reshape(-1, 64), tokens[:, 1:].reshape(-1)).backward()
    named = {id(p): n for n, p in tiny_model.named_parameters()}
    for param in params:
        assert param.grad is not None and param.grad.abs().sum() > 0, named[id(param)]


def test_two_named_sets_switch_and_none_is_the_base_model(tiny_model: PaLM) -> None:
    tokens = _tokens()
    base = tiny_model(tokens)
    add_lora(tiny_model, "a", rank=2, alpha=4)
    add_lora(tiny_model, "b", rank=4, alpha=4, targets=("v", "ff_out"))
    _randomise(tiny_model, "a", seed=1)
    _randomise(tiny_model, "b", seed=2)
    set_active_lora(tiny_model, "a")
    out_a = tiny_model(tokens)
    set_active_lora(tiny_model, "b")
    out_b = tiny_model(tokens)
    set_active_lora(tiny_model, None)
    torch.testing.assert_close(tiny_model(tokens), base, atol=0, rtol=0)
    assert not torch.allclose(out_a, base, atol=1e-3)
    assert not torch.allclose(out_b, base, atol=1e-3)
    assert not torch.allclose(out_a, out_b, atol=1e-3)
    set_active_lora(tiny_model, "a")
    torch.testing.assert_close(tiny_model(tokens), out_a, atol=0, rtol=0)
    remove_lora(tiny_model, "a")
    assert active_lora(tiny_model) is None
    assert lora_names(tiny_model) == ["b"]
    set_active_lora(tiny_model, "b")
    torch.testing.assert_close(tiny_model(tokens), out_b, atol=0, rtol=0)


def test_adapters_save_and_load_alone(make_model: Callable[..., PaLM], tmp_path: Path) -> None:
    trained = make_model(seed=0)
    add_lora(trained, "critic", rank=3, alpha=5, targets=("q", "v", "ff_out"), dropout=0.1)
    set_active_lora(trained, "critic")
    _train(trained, "critic")
    path = tmp_path / "critic.safetensors"
    save_lora(trained, "critic", path)
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    assert len(keys) == 2 * 3 * trained.config.depth
    assert all(k.endswith((".lora_a", ".lora_b")) for k in keys)  # no base weight in the file

    fresh = make_model(seed=0)  # same base weights, no adapters; eval mode: dropout off
    spec = load_lora(fresh, "critic", path)
    assert spec == lora_spec(trained, "critic")
    assert spec.rank == 3 and spec.alpha == 5.0 and spec.dropout == 0.1
    set_active_lora(fresh, "critic")
    tokens = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens), trained(tokens), atol=0, rtol=0)
    for key, value in lora_state_dict(trained, "critic").items():
        assert torch.equal(lora_state_dict(fresh, "critic")[key], value)


def test_kv_cached_decode_with_an_active_set(tiny_model: PaLM) -> None:
    add_lora(tiny_model, "actor", rank=2, alpha=2)
    _randomise(tiny_model, "actor", seed=4)
    set_active_lora(tiny_model, "actor")
    tokens = _tokens(2, 9)
    with torch.inference_mode():
        full = tiny_model(tokens)
        cache = KVCache.empty(tiny_model.config, 2, device="cpu", dtype=torch.float32)
        pieces = [tiny_model(tokens[:, :4], cache=cache)]
        pieces += [tiny_model(tokens[:, t : t + 1], cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=FP32_ATOL, rtol=0)


def test_fp32_adapters_over_bf16_weights(tiny_model: PaLM) -> None:
    tiny_model.to(torch.bfloat16)
    add_lora(tiny_model, "actor", rank=2, alpha=2, dtype=torch.float32)
    set_active_lora(tiny_model, "actor")
    params = mark_only_lora_trainable(tiny_model, "actor")
    assert all(p.dtype == torch.float32 for p in params)
    logits = tiny_model(_tokens())
    assert logits.dtype == torch.float32
    logits.sum().backward()
    assert all(p.grad is not None for p in params)


def test_bad_names_and_targets_are_refused(tiny_model: PaLM) -> None:
    with pytest.raises(ValueError, match="targets"):
        add_lora(tiny_model, "a", rank=2, alpha=2, targets=("q", "wq"))
    with pytest.raises(ValueError, match="name"):
        add_lora(tiny_model, "has.dot", rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank"):
        add_lora(tiny_model, "a", rank=0, alpha=2)
    add_lora(tiny_model, "a", rank=2, alpha=2)
    with pytest.raises(ValueError, match="already exists"):
        add_lora(tiny_model, "a", rank=2, alpha=2)
    with pytest.raises(KeyError, match="no LoRA set"):
        set_active_lora(tiny_model, "missing")
    state = lora_state_dict(tiny_model, "a")
    state.pop(next(iter(state)))
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(tiny_model, "a", state)
