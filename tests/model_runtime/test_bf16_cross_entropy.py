"""The fused cross-entropy kernel: each row's loss and gradient computed in float32 from the bf16
logits (the gradient rounded once), ignored rows zero, and the trainer's loss routed through it
where it runs, eagerly even in a compiled step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model_runtime import bf16_cross_entropy, cpu_kernels
from model_runtime.cpu_features import cpu_flags
from model_runtime.palm import PaLM
from model_runtime.training import step
from model_runtime.training.data import IGNORE_INDEX

pytestmark = pytest.mark.skipif(
    not cpu_flags() >= cpu_kernels.REQUIRED_CPU_FLAGS,
    reason="this CPU lacks AVX512-BF16 / AVX512-BW / AVX512-VL: the kernels are not used here",
)


def _logits(rows: int, vocab: int, *, seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=generator) * scale).bfloat16()


def _labels(rows: int, vocab: int, *, seed: int) -> torch.Tensor:
    labels = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(seed))
    labels[1::3] = IGNORE_INDEX
    return labels


def _exact(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 losses and softmax - onehot of the bf16 logits, zero where ignored."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    kept = labels != IGNORE_INDEX
    safe = labels.masked_fill(~kept, 0)
    losses = -logp.gather(1, safe[:, None]).squeeze(1) * kept
    grad = logp.exp()
    grad[torch.arange(len(labels)), safe] -= 1.0
    return losses, grad * kept[:, None]


@pytest.mark.parametrize("vocab", [1, 15, 16, 33, 100, 8192])
def test_losses_and_gradient_are_the_exact_values(vocab: int) -> None:
    logits, labels = _logits(7, vocab, seed=vocab), _labels(7, vocab, seed=vocab + 1)
    grad = torch.full((7, vocab), 9.0, dtype=torch.bfloat16)
    losses = bf16_cross_entropy.cross_entropy_rows(
        logits, labels, ignore_index=IGNORE_INDEX, grad_out=grad
    )
    exact_losses, exact_grad = _exact(logits, labels)
    assert losses is not None and losses.dtype == torch.float32 and losses.shape == (7,)
    torch.testing.assert_close(losses.double(), exact_losses, rtol=1e-5, atol=1e-5)
    # rounded once to bf16 (half a step, 2^-9 relative) plus float32 arithmetic's error
    error = (grad.double() - exact_grad).abs()
    assert bool((error <= exact_grad.abs() * 2.0**-8 + 1e-6).all()), float(error.max())
    assert bool((grad[1::3] == 0).all())  # ignored rows: no gradient
    no_grad = bf16_cross_entropy.cross_entropy_rows(logits, labels, ignore_index=IGNORE_INDEX)
    assert no_grad is not None and torch.equal(no_grad, losses)


def test_large_logits_stay_finite() -> None:
    logits = torch.tensor([[3e4, -3e4, 0.0, 1e3], [-1e4, -1e4, -1e4, -1e4]]).bfloat16()
    labels = torch.tensor([1, 2])
    grad = torch.empty(2, 4, dtype=torch.bfloat16)
    losses = bf16_cross_entropy.cross_entropy_rows(
        logits, labels, ignore_index=IGNORE_INDEX, grad_out=grad
    )
    exact_losses, exact_grad = _exact(logits, labels)
    assert losses is not None and bool(torch.isfinite(losses).all())
    torch.testing.assert_close(losses.double(), exact_losses, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=2.0**-8, atol=1e-6)


def test_a_nan_logit_makes_its_row_nan_as_in_torch() -> None:
    """A diverged model must show in the loss: a NaN logit that is not the label's made a finite
    loss (exp clamped NaN to e^88)."""
    logits = _logits(3, 40, seed=9)
    logits[1, 5] = float("nan")
    labels = torch.tensor([2, 7, 3])
    grad = torch.zeros(3, 40, dtype=torch.bfloat16)
    losses = bf16_cross_entropy.cross_entropy_rows(
        logits, labels, ignore_index=IGNORE_INDEX, grad_out=grad
    )
    assert losses is not None
    assert bool(torch.isnan(losses[1])) and bool(torch.isfinite(losses[[0, 2]]).all())
    assert bool(torch.isnan(grad[1]).all()) and bool(torch.isfinite(grad[[0, 2]]).all())


def test_gradient_rows_may_be_spaced_apart() -> None:
    """The trainer's case: the gradient of a block goes into rows of a larger buffer."""
    logits, labels = _logits(4, 40, seed=3), _labels(4, 40, seed=4)
    buffer = torch.full((6, 48), 5.0, dtype=torch.bfloat16)
    target = buffer[1:5, :40]
    bf16_cross_entropy.cross_entropy_rows(
        logits, labels, ignore_index=IGNORE_INDEX, grad_out=target
    )
    torch.testing.assert_close(target.double(), _exact(logits, labels)[1], rtol=2**-8, atol=1e-6)
    assert bool((buffer[0] == 5.0).all() and (buffer[5] == 5.0).all())
    assert bool((buffer[:, 40:] == 5.0).all())  # nothing written outside the target


def test_a_label_outside_the_vocabulary_is_an_error() -> None:
    logits = _logits(3, 10, seed=5)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        bf16_cross_entropy.cross_entropy_rows(
            logits, torch.tensor([1, 10, 2]), ignore_index=IGNORE_INDEX
        )
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        bf16_cross_entropy.cross_entropy_rows(
            logits, torch.tensor([1, -1, 2]), ignore_index=IGNORE_INDEX
        )


def test_what_it_does_not_take_is_left_to_torch() -> None:
    logits, labels = _logits(3, 10, seed=6), _labels(3, 10, seed=7)
    call = bf16_cross_entropy.cross_entropy_rows
    assert call(logits.float(), labels, ignore_index=IGNORE_INDEX) is None
    assert call(logits[:, ::2], labels, ignore_index=IGNORE_INDEX) is None
    assert call(logits, labels[:2], ignore_index=IGNORE_INDEX) is None
    assert call(logits, labels.int(), ignore_index=IGNORE_INDEX) is None
    wrong = torch.empty(3, 9, dtype=torch.bfloat16)
    assert call(logits, labels, ignore_index=IGNORE_INDEX, grad_out=wrong) is None
    trained = logits.float().requires_grad_().bfloat16()
    assert call(trained, labels, ignore_index=IGNORE_INDEX) is None  # autograd: no backward


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each of the trainer's calls of the kernel ran it (True) or fell back (False)."""
    taken: list[bool] = []
    real = bf16_cross_entropy.cross_entropy_rows

    def counting(*args: object, **kwargs: object) -> torch.Tensor | None:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        taken.append(result is not None)
        return result

    monkeypatch.setattr(step, "cross_entropy_rows", counting)
    return taken


def test_the_trainer_s_loss_is_the_same_with_and_without_the_kernel(
    monkeypatch: pytest.MonkeyPatch, kernel_calls: list[bool]
) -> None:
    generator = torch.Generator().manual_seed(8)
    hidden = torch.randn(2, 300, 32, generator=generator).requires_grad_()
    weight = (torch.randn(500, 32, generator=generator) * 0.3).requires_grad_()
    labels = torch.randint(0, 500, (2, 300), generator=generator)
    labels[:, :5] = IGNORE_INDEX

    def loss_and_grads() -> tuple[torch.Tensor, ...]:
        hidden.grad = weight.grad = None
        loss = step.linear_cross_entropy_sum(
            hidden, weight, labels, compute_dtype=torch.bfloat16, chunk_rows=64
        )
        loss.backward()
        assert hidden.grad is not None and weight.grad is not None
        return loss.detach(), hidden.grad.clone(), weight.grad.clone()

    with_kernel = loss_and_grads()
    assert kernel_calls == [True] * 10  # 600 rows in blocks of 64
    with torch.no_grad():  # evaluation: the loss alone, through the kernel too
        evaluated = step.linear_cross_entropy_sum(
            hidden, weight, labels, compute_dtype=torch.bfloat16, chunk_rows=64
        )
    assert kernel_calls == [True] * 20
    torch.testing.assert_close(evaluated, with_kernel[0], rtol=1e-5, atol=1e-3)
    monkeypatch.setattr(step, "cross_entropy_rows", lambda *args, **kwargs: None)
    with_torch = loss_and_grads()
    torch.testing.assert_close(with_kernel[0], with_torch[0], rtol=1e-5, atol=1e-3)
    for got, want in zip(with_kernel[1:], with_torch[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0.02, atol=1e-3)


def test_a_compiled_training_step_runs_the_loss_through_the_kernel(
    kernel_calls: list[bool], make_model: Callable[[], PaLM]
) -> None:
    model = make_model()
    inputs = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    eager = step.CausalLMLoss(model, "bf16")(inputs, inputs)
    compiled = torch.compile(step.CausalLMLoss(model, "bf16"))(inputs, inputs)
    compiled.backward()
    assert kernel_calls and all(kernel_calls)
    torch.testing.assert_close(compiled, eager, rtol=0.02, atol=0.05)
