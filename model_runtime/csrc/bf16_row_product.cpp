// bf16 products of one or two rows for decoding on x86 CPUs with AVX512-BF16:
//     out (M, N) = x_1 (M, K_1) @ W_1 (N, K_1)^T + ... + x_p (M, K_p) @ W_p (N, K_p)^T, M = 1, 2
// with float32 accumulation and one rounding to bf16 at the end.
//
// Why: a decoding step multiplies a row per sequence by every weight matrix, so it is bound by how
// fast the weights stream from memory. oneDNN's packed bf16 product read them at 20-25 GB/s on a
// 2-core Zen 4, where a plain sum over the same matrices reads 31-39 GB/s. Here each thread walks a
// contiguous range of weight rows front to back (one stream the hardware prefetcher follows) with
// four independent accumulators, which read at 30-38 GB/s there (1.3-1.5x oneDNN for one row and
// for two; for four rows it was no faster, so three or more stay with oneDNN). Loaded by
// model_runtime/bf16_row_product.py, which builds it on first use and checks the CPU first.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "kernels.h"

#include <cstdint>
#include <vector>

namespace {

struct Operand {
  const uint16_t* x;  // (M, K) bf16 bits, rows contiguous
  const uint16_t* w;  // (N, K) bf16 bits, rows contiguous
  int64_t k;
};

// Rows [begin, end) of the output (M, N): each weight row is read once for the M input rows.
// Lanes of 32 bf16 pairs per VDPBF16PS into 4 independent accumulators per input row; the last
// partial lane of a row is a masked load (zeros beyond K). Each input row is summed in the same
// order whatever M is, so a sequence decodes to the same bits alone or beside another.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void product_rows(
    const std::vector<Operand>& operands, int64_t rows_out, at::BFloat16* out, int64_t begin,
    int64_t end) {
  constexpr int kLanes = 4;  // accumulators per input row
  for (int64_t n = begin; n < end; ++n) {
    __m512 acc[M][kLanes];
    for (int m = 0; m < M; ++m) {
      for (int lane = 0; lane < kLanes; ++lane) acc[m][lane] = _mm512_setzero_ps();
    }
    for (const Operand& op : operands) {
      const uint16_t* row = op.w + n * op.k;
      int64_t k = 0;
      for (; k + 32 * kLanes <= op.k; k += 32 * kLanes) {
        for (int lane = 0; lane < kLanes; ++lane) {
          const __m512bh w = (__m512bh)_mm512_loadu_si512(row + k + 32 * lane);
          for (int m = 0; m < M; ++m) {
            const __m512bh x = (__m512bh)_mm512_loadu_si512(op.x + m * op.k + k + 32 * lane);
            acc[m][lane] = _mm512_dpbf16_ps(acc[m][lane], w, x);
          }
        }
      }
      for (; k + 32 <= op.k; k += 32) {
        const __m512bh w = (__m512bh)_mm512_loadu_si512(row + k);
        for (int m = 0; m < M; ++m) {
          const __m512bh x = (__m512bh)_mm512_loadu_si512(op.x + m * op.k + k);
          acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w, x);
        }
      }
      if (k < op.k) {
        const __mmask32 mask = (__mmask32)((1ULL << (op.k - k)) - 1);
        const __m512bh w = (__m512bh)_mm512_maskz_loadu_epi16(mask, row + k);
        for (int m = 0; m < M; ++m) {
          const __m512bh x = (__m512bh)_mm512_maskz_loadu_epi16(mask, op.x + m * op.k + k);
          acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w, x);
        }
      }
    }
    for (int m = 0; m < M; ++m) {
      __m512 sum = acc[m][0];
      for (int lane = 1; lane < kLanes; ++lane) sum = _mm512_add_ps(sum, acc[m][lane]);
      // round to nearest even, as torch does
      out[m * rows_out + n] = at::BFloat16(_mm512_reduce_add_ps(sum));
    }
  }
}

}  // namespace

at::Tensor row_product_sum(const std::vector<at::Tensor>& inputs,
                           const std::vector<at::Tensor>& weights) {
  TORCH_CHECK(!inputs.empty() && inputs.size() == weights.size(),
              "need one weight per input, got ", inputs.size(), " and ", weights.size());
  const int64_t rows_out = weights[0].size(0);
  const int64_t rows_in = inputs[0].numel() / std::max<int64_t>(1, weights[0].size(1));
  TORCH_CHECK(rows_in == 1 || rows_in == 2, "one or two input rows only, got ", rows_in);
  std::vector<Operand> operands;
  std::vector<at::Tensor> held;  // contiguous inputs, alive until the product is done
  int64_t bytes_per_row = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& w = weights[i];
    at::Tensor x = inputs[i].contiguous();
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16,
                "bf16 inputs and weights only");
    TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "CPU tensors only");
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weights must be contiguous (out, in)");
    TORCH_CHECK(w.size(0) == rows_out, "every weight must have ", rows_out, " output rows");
    TORCH_CHECK(x.numel() == rows_in * w.size(1), "input ", i, " must be ", rows_in,
                " rows of ", w.size(1));
    operands.push_back({reinterpret_cast<const uint16_t*>(x.data_ptr()),
                        reinterpret_cast<const uint16_t*>(w.data_ptr()), w.size(1)});
    bytes_per_row += 2 * w.size(1);
    held.push_back(std::move(x));
  }
  at::Tensor out = at::empty({rows_in, rows_out}, inputs[0].options());
  at::BFloat16* out_data = out.data_ptr<at::BFloat16>();
  // at least ~64 KB of weights per task, so that a small matrix is not split across threads
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, bytes_per_row));
  at::parallel_for(0, rows_out, grain, [&](int64_t begin, int64_t end) {
    if (rows_in == 1) {
      product_rows<1>(operands, rows_out, out_data, begin, end);
    } else {
      product_rows<2>(operands, rows_out, out_data, begin, end);
    }
  });
  return out;
}

