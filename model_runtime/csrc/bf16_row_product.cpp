// One-row bf16 products for decoding on x86 CPUs with AVX512-BF16:
//     out (1, N) = x_1 (1, K_1) @ W_1 (N, K_1)^T + ... + x_p (1, K_p) @ W_p (N, K_p)^T
// with float32 accumulation and one rounding to bf16 at the end.
//
// Why: a decoding step multiplies one row by every weight matrix, so it is bound by how fast the
// weights stream from memory. oneDNN's packed bf16 product read them at 20-25 GB/s on a 2-core
// Zen 4, where a plain sum over the same matrices reads 31-39 GB/s. Here each thread walks a
// contiguous range of weight rows front to back (one stream the hardware prefetcher follows) with
// four independent accumulators, which read at 30-38 GB/s there. Loaded by
// model_runtime/bf16_row_product.py, which builds it on first use and checks the CPU first.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace {

struct Operand {
  const uint16_t* x;  // (K,) bf16 bits
  const uint16_t* w;  // (N, K) bf16 bits, rows contiguous
  int64_t k;
};

// Rows [begin, end) of the output. Lanes of 32 bf16 pairs per VDPBF16PS; the last partial lane
// of a row is a masked load (zeros beyond K).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void product_rows(
    const std::vector<Operand>& operands, at::BFloat16* out, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (const Operand& op : operands) {
      const uint16_t* row = op.w + n * op.k;
      const uint16_t* x = op.x;
      int64_t k = 0;
      for (; k + 128 <= op.k; k += 128) {
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(row + k),
                              (__m512bh)_mm512_loadu_si512(x + k));
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(row + k + 32),
                              (__m512bh)_mm512_loadu_si512(x + k + 32));
        a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(row + k + 64),
                              (__m512bh)_mm512_loadu_si512(x + k + 64));
        a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(row + k + 96),
                              (__m512bh)_mm512_loadu_si512(x + k + 96));
      }
      for (; k + 32 <= op.k; k += 32) {
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(row + k),
                              (__m512bh)_mm512_loadu_si512(x + k));
      }
      if (k < op.k) {
        const __mmask32 mask = (__mmask32)((1ULL << (op.k - k)) - 1);
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_maskz_loadu_epi16(mask, row + k),
                              (__m512bh)_mm512_maskz_loadu_epi16(mask, x + k));
      }
    }
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    out[n] = at::BFloat16(_mm512_reduce_add_ps(sum));  // round to nearest even, as torch does
  }
}

torch::Tensor row_product_sum(const std::vector<torch::Tensor>& inputs,
                              const std::vector<torch::Tensor>& weights) {
  TORCH_CHECK(!inputs.empty() && inputs.size() == weights.size(),
              "need one weight per input, got ", inputs.size(), " and ", weights.size());
  const int64_t rows_out = weights[0].size(0);
  std::vector<Operand> operands;
  std::vector<torch::Tensor> held;  // contiguous inputs, alive until the product is done
  int64_t bytes_per_row = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const torch::Tensor& w = weights[i];
    torch::Tensor x = inputs[i].contiguous();
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16,
                "bf16 inputs and weights only");
    TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "CPU tensors only");
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weights must be contiguous (out, in)");
    TORCH_CHECK(w.size(0) == rows_out, "every weight must have ", rows_out, " output rows");
    TORCH_CHECK(x.numel() == w.size(1), "input ", i, " must be one row of ", w.size(1));
    operands.push_back({reinterpret_cast<const uint16_t*>(x.data_ptr()),
                        reinterpret_cast<const uint16_t*>(w.data_ptr()), w.size(1)});
    bytes_per_row += 2 * w.size(1);
    held.push_back(std::move(x));
  }
  torch::Tensor out = torch::empty({rows_out}, inputs[0].options());
  at::BFloat16* out_data = out.data_ptr<at::BFloat16>();
  // at least ~64 KB of weights per task, so that a small matrix is not split across threads
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, bytes_per_row));
  at::parallel_for(0, rows_out, grain, [&](int64_t begin, int64_t end) {
    product_rows(operands, out_data, begin, end);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("row_product_sum", &row_product_sum,
        "sum_i x_i @ W_i^T for one bf16 row x_i (K_i,) and bf16 weights W_i (N, K_i) -> (N,)");
}
