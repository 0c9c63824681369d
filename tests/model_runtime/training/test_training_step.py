"""Pieces of an optimizer step: decay groups, freezing, autocast, the summed loss."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model_runtime.palm import PaLM
from model_runtime.training import step
from model_runtime.training.data import IGNORE_INDEX
from model_runtime.training.step import (
    CausalLMLoss,
    autocast,
    build_adamw,
    freeze_all_but_last_blocks,
    linear_cross_entropy_sum,
    lm_loss_sum,
    parameter_groups,
    resolve_precision,
)


def names(model: PaLM, params: list[torch.nn.Parameter]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_embeddings_and_norms_are_not_decayed(make_model: Callable[..., PaLM]) -> None:
    model = make_model()
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert names(model, no_decay["params"]) == {
        "embed.weight",
        "norm.weight",
        "blocks.0.norm.weight",
        "blocks.1.norm.weight",
    }
    assert names(model, decay["params"]) == {
        f"blocks.{i}.{layer}.weight" for i in (0, 1) for layer in ("fused_in", "attn_out", "ff_out")
    }
    optimizer = build_adamw(model, lr=1e-3, weight_decay=0.1)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_freezing_leaves_only_the_last_blocks_in_the_optimizer(
    make_model: Callable[..., PaLM],
) -> None:
    model = make_model(depth=3)
    trainable = freeze_all_but_last_blocks(model, 2)
    assert trainable == [
        n for n, _ in model.named_parameters() if n.startswith(("blocks.1.", "blocks.2."))
    ]
    optimizer = build_adamw(model, lr=1e-3, weight_decay=0.1)
    in_optimizer = {n for g in optimizer.param_groups for n in names(model, g["params"])}
    assert in_optimizer == set(trainable)
    with pytest.raises(ValueError, match=r"last 1\.\.3 blocks"):
        freeze_all_but_last_blocks(model, 4)


@pytest.mark.parametrize(
    ("native", "float32_faster", "auto"),
    [(True, False, "bf16"), (True, True, "fp32"), (False, True, "fp32"), (False, False, "fp32")],
)
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_faster(
    native: bool, float32_faster: bool, auto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(step, "native_bf16_cpu", lambda: native)
    monkeypatch.setattr(step, "float32_faster", lambda: float32_faster)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == auto
    assert resolve_precision("bf16", cpu) == "bf16"  # asked for: as given, native or not
    assert resolve_precision("fp32", cpu) == "fp32"


def test_bf16_autocast_runs_matmuls_in_bf16_and_fp32_is_plain(
    make_model: Callable[..., PaLM],
) -> None:
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(x).dtype == torch.float32


def test_loss_sum_skips_ignored_positions() -> None:
    logits = torch.zeros(1, 3, 4)  # uniform: -log p = log 4 at every position
    labels = torch.tensor([[1, IGNORE_INDEX, 3]])
    assert lm_loss_sum(logits, labels).item() == pytest.approx(
        2 * torch.log(torch.tensor(4.0)).item()
    )


@pytest.mark.parametrize("chunk_rows", [1, 3, 256])  # 1: several weight-gradient groups
def test_chunked_loss_matches_the_loss_of_full_logits(chunk_rows: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 1] = labels[1, 4] = IGNORE_INDEX
    reference = lm_loss_sum(hidden @ weight.T, labels)
    ref_grads = torch.autograd.grad(reference, (hidden, weight))
    chunked = linear_cross_entropy_sum(
        hidden, weight, labels, compute_dtype=torch.float64, chunk_rows=chunk_rows
    )
    grads = torch.autograd.grad(chunked * 2.0, (hidden, weight))  # the output's grad is used
    assert torch.allclose(chunked.double(), reference.double(), atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, 2.0 * want, atol=1e-6)
    assert float(grads[0][0, 1].abs().sum()) == 0.0  # an ignored position gets no gradient
    with torch.no_grad():
        no_grad = linear_cross_entropy_sum(
            hidden, weight, labels, compute_dtype=torch.float64, chunk_rows=chunk_rows
        )
    assert torch.allclose(no_grad.double(), reference.double(), atol=1e-5)


def test_causal_lm_loss_equals_the_models_own_logits(make_model: Callable[..., PaLM]) -> None:
    model = make_model()
    inputs = torch.randint(0, 64, (3, 10))
    labels = torch.randint(0, 64, (3, 10))
    labels[:, :2] = IGNORE_INDEX
    for precision, tolerance in (("fp32", 1e-4), ("bf16", 5e-2)):
        with autocast(torch.device("cpu"), precision):
            logits = model(inputs)
        expected = lm_loss_sum(logits, labels)
        got = CausalLMLoss(model, precision)(inputs, labels)
        assert torch.allclose(got, expected, rtol=tolerance / 10, atol=tolerance), precision


def test_compiled_training_traces_the_model_as_one_graph(make_model: Callable[..., PaLM]) -> None:
    """The model and packed_linear's plain path (decided before anything torch.compile cannot
    trace: the CPU's flags are read from a file) compile as one graph; the default positions'
    rotary tables need no host sync. On a CPU the loss is left out of it (its kernel cannot be
    traced): the graph ends there."""
    inputs = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(CausalLMLoss(make_model(), "bf16"))(inputs, inputs)
    assert explanation.graph_count == 1, explanation.break_reasons
    [reason] = explanation.break_reasons
    assert "disable" in reason.reason and "linear_cross_entropy_sum" in reason.reason
