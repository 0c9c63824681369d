// Cross-entropy of bf16 logits, row by row, with its gradient, for x86 CPUs with AVX512-BF16:
//     loss[r] = logsumexp(logits[r]) - logits[r, label[r]]      (0 where the label is ignored)
//     grad[r] = softmax(logits[r]) - onehot(label[r])           (zeros where ignored; optional)
// in float32, the gradient rounded once to bf16.
//
// Why: the trainer's loss (model_runtime/training/step.py) takes the logits of a block of rows
// from the tied output projection in bf16. As torch operations its softmax, pick, gradient and
// masking are six passes over (rows, vocab) float32 tensors (a widening log-softmax, a gather,
// an exp, a scatter, a masked narrowing copy); at 10M parameters they took more time than the
// loss's three matrix products. Here each row (16 KiB at a vocabulary of 8,192) is read three
// times while it sits in cache (max, sum of exponentials, then the gradient) and written once.
// Loaded by model_runtime/bf16_cross_entropy.py through model_runtime/cpu_kernels.py.
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels.h"
#include "simd.h"

namespace {

PALMLOOP_TARGET float row_max(const at::BFloat16* x, int64_t width) {
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < width; i += 16) {
    const __mmask16 mask = tail_mask(width - i);
    best = _mm512_mask_max_ps(best, mask, best, load_bf16(x + i, mask));
  }
  return _mm512_reduce_max_ps(best);
}

PALMLOOP_TARGET float row_sum_exp(const at::BFloat16* x, int64_t width, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= width; i += 32) {  // two chains: the additions' latency overlaps
    sum0 = _mm512_add_ps(sum0, exp_ps(_mm512_sub_ps(load_bf16(x + i, 0xFFFF), s)));
    sum1 = _mm512_add_ps(sum1, exp_ps(_mm512_sub_ps(load_bf16(x + i + 16, 0xFFFF), s)));
  }
  for (; i < width; i += 16) {
    const __mmask16 mask = tail_mask(width - i);
    sum0 = _mm512_mask_add_ps(sum0, mask, sum0, exp_ps(_mm512_sub_ps(load_bf16(x + i, mask), s)));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
}

PALMLOOP_TARGET void row_softmax(const at::BFloat16* x, at::BFloat16* out, int64_t width,
                                 float log_sum) {
  const __m512 s = _mm512_set1_ps(log_sum);
  for (int64_t i = 0; i < width; i += 16) {
    const __mmask16 mask = tail_mask(width - i);
    store_bf16(out + i, exp_ps(_mm512_sub_ps(load_bf16(x + i, mask), s)), mask);
  }
}

PALMLOOP_TARGET void zero_row(at::BFloat16* out, int64_t width) {
  for (int64_t i = 0; i < width; i += 32) {
    _mm512_mask_storeu_epi16(out + i, tail_mask32(width - i), _mm512_setzero_si512());
  }
}

}  // namespace

at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& labels,
                              const std::optional<at::Tensor>& grad, int64_t ignore_index) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kBFloat16,
              "logits must be a bf16 CPU tensor");
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1, "logits must be (rows, vocab), rows "
              "contiguous");
  TORCH_CHECK(labels.device().is_cpu() && labels.scalar_type() == at::kLong && labels.dim() == 1 &&
                  labels.size(0) == logits.size(0),
              "labels must be int64 (rows,)");
  const int64_t rows = logits.size(0), width = logits.size(1);
  TORCH_CHECK(width > 0, "logits must have a vocabulary");
  at::BFloat16* grad_data = nullptr;
  int64_t grad_stride = 0;
  if (grad.has_value()) {
    const at::Tensor& g = *grad;
    TORCH_CHECK(g.device().is_cpu() && g.scalar_type() == at::kBFloat16 && g.dim() == 2 &&
                    g.size(0) == rows && g.size(1) == width && g.stride(1) == 1,
                "grad must be a bf16 CPU tensor shaped like logits, rows contiguous");
    grad_data = g.data_ptr<at::BFloat16>();
    grad_stride = g.stride(0);
  }
  const at::Tensor label_values = labels.contiguous();
  const int64_t* label = label_values.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(label[r] == ignore_index || (label[r] >= 0 && label[r] < width), "label ",
                label[r], " of row ", r, " is outside the vocabulary of ", width);
  }
  at::Tensor losses = at::empty({rows}, logits.options().dtype(at::kFloat));
  float* loss = losses.data_ptr<float>();
  const at::BFloat16* x = logits.data_ptr<at::BFloat16>();
  const int64_t x_stride = logits.stride(0);
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const at::BFloat16* row = x + r * x_stride;
      at::BFloat16* grad_row = grad_data == nullptr ? nullptr : grad_data + r * grad_stride;
      if (label[r] == ignore_index) {
        loss[r] = 0.0f;
        if (grad_row != nullptr) zero_row(grad_row, width);
        continue;
      }
      const float top = row_max(row, width);
      const float log_sum = top + std::log(row_sum_exp(row, width, top));
      const float picked = static_cast<float>(row[label[r]]);
      loss[r] = log_sum - picked;
      if (grad_row != nullptr) {
        row_softmax(row, grad_row, width, log_sum);
        grad_row[label[r]] = static_cast<at::BFloat16>(std::exp(picked - log_sum) - 1.0f);
      }
    }
  });
  return losses;
}
