// Fused pointwise steps of a PaLM block on bf16 tensors, for x86 CPUs with AVX512-BF16:
//     swiglu_into:  out = silu(gate) * value
//     rotate_qk:    q_out, k_out = the H query heads and the key of qk, each feature pair times
//                   its complex factor (rotary + xPos)
// computed in float32 and rounded once to bf16.
//
// Why: in a prefill these run on every position of every layer between the matrix products,
// which are at the CPU's bf16 peak. As torch operations SwiGLU is two passes (silu, then the
// product) and rotary four (widen to float32, complex product, narrow to bf16, then a copy of
// the strided query heads for attention); here each is one pass that reads its inputs where they
// lie (strided views of the fused projection) and writes contiguous outputs. Loaded by
// model_runtime/bf16_pointwise.py through model_runtime/cpu_kernels.py.
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstdint>

#include "kernels.h"
#include "simd.h"

namespace {

PALMLOOP_TARGET void swiglu_rows(const at::BFloat16* value, const at::BFloat16* gate,
                                 at::BFloat16* out, int64_t width, int64_t value_stride,
                                 int64_t gate_stride, int64_t out_stride, int64_t begin,
                                 int64_t end) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  for (int64_t row = begin; row < end; ++row) {
    const at::BFloat16* v = value + row * value_stride;
    const at::BFloat16* g = gate + row * gate_stride;
    at::BFloat16* o = out + row * out_stride;
    for (int64_t i = 0; i < width; i += 16) {
      const __mmask16 mask = tail_mask(width - i);
      const __m512 gv = load_bf16(g + i, mask);
      // silu(g) = g * sigmoid(g), sigmoid(g) = 1 / (1 + exp(-g)) from a 14-bit reciprocal and
      // one Newton step (~23 bits; a division is several times slower here). exp(-g) is
      // clamped at e^88, so for g < -88 the sigmoid is ~6e-39 and silu(g) rounds to -0.
      const __m512 d = _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv)));
      __m512 sigmoid = _mm512_rcp14_ps(d);
      sigmoid = _mm512_mul_ps(sigmoid, _mm512_fnmadd_ps(d, sigmoid, two));
      store_bf16(o + i, _mm512_mul_ps(_mm512_mul_ps(gv, sigmoid), load_bf16(v + i, mask)), mask);
    }
  }
}

// Rows are the leading dimensions flattened; the last one must be contiguous.
void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() >= 2 && t.stride(-1) == 1, name, " must have a contiguous last axis");
}

// The stride between consecutive rows of t (..., width) when its leading axes flatten to one
// axis of rows with a single stride; -1 where they do not.
int64_t row_stride(const at::Tensor& t) {
  int64_t stride = t.stride(-2);
  int64_t expected = stride;
  for (int64_t axis = t.dim() - 2; axis >= 0; --axis) {
    if (t.size(axis) != 1 && t.stride(axis) != expected) return -1;
    expected *= t.size(axis);
  }
  return stride;
}


// One (head) vector of dh features times its factors: pairs (x0, x1) * (c, s) =
// (x0 c - x1 s, x0 s + x1 c), factors interleaved as (c, s) float32 pairs.
PALMLOOP_TARGET inline void rotate_vector(const at::BFloat16* x, const float* factor,
                                          at::BFloat16* out, int64_t dh) {
  for (int64_t i = 0; i < dh; i += 16) {
    const __mmask16 mask = tail_mask(dh - i);
    const __m512 xv = load_bf16(x + i, mask);
    const __m512 f = _mm512_maskz_loadu_ps(mask, factor + i);
    const __m512 cos = _mm512_permute_ps(f, 0xA0);        // (c, c) per pair
    const __m512 sin = _mm512_permute_ps(f, 0xF5);        // (s, s)
    const __m512 swapped = _mm512_permute_ps(xv, 0xB1);   // (x1, x0)
    // even lanes x0 c - x1 s, odd lanes x1 c + x0 s
    store_bf16(out + i, _mm512_fmaddsub_ps(xv, cos, _mm512_mul_ps(swapped, sin)), mask);
  }
}

PALMLOOP_TARGET void rotate_positions(const at::BFloat16* qk, const float* qf, const float* kf,
                                      at::BFloat16* q_out, at::BFloat16* k_out, int64_t heads,
                                      int64_t dh, int64_t positions, int64_t qk_b, int64_t qk_t,
                                      int64_t qk_h, int64_t qf_b, int64_t qf_t, int64_t kf_b,
                                      int64_t kf_t, int64_t begin, int64_t end) {
  for (int64_t index = begin; index < end; ++index) {
    const int64_t b = index / positions, t = index % positions;
    const at::BFloat16* x = qk + b * qk_b + t * qk_t;
    const float* q_factor = qf + b * qf_b + t * qf_t;
    for (int64_t h = 0; h < heads; ++h) {
      rotate_vector(x + h * qk_h, q_factor, q_out + (index * heads + h) * dh, dh);
    }
    rotate_vector(x + heads * qk_h, kf + b * kf_b + t * kf_t, k_out + index * dh, dh);
  }
}

}  // namespace

void swiglu_into(const at::Tensor& value, const at::Tensor& gate, const at::Tensor& out) {
  for (const at::Tensor* t : {&value, &gate, &out}) {
    TORCH_CHECK(t->scalar_type() == at::kBFloat16, "bf16 tensors only");
    check_rows(*t, "every tensor");
    TORCH_CHECK(t->sizes() == out.sizes(), "value, gate and out must have one shape");
  }
  const int64_t width = out.size(-1);
  const int64_t rows = out.numel() / std::max<int64_t>(1, width);
  const int64_t vs = row_stride(value), gs = row_stride(gate), os = row_stride(out);
  TORCH_CHECK(vs >= 0 && gs >= 0 && os >= 0, "rows must be evenly spaced");
  const auto* v = value.data_ptr<at::BFloat16>();
  const auto* g = gate.data_ptr<at::BFloat16>();
  auto* o = out.data_ptr<at::BFloat16>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    swiglu_rows(v, g, o, width, vs, gs, os, begin, end);
  });
}

// qk (B, T, H + 1, dh) bf16, the H query heads then the key, last axis contiguous;
// query_factors and key_factors (B or 1, T, dh) float32, (cos, sin) pairs interleaved.
// -> q (B, T, H, dh) and k (B, T, dh), contiguous bf16.
std::vector<at::Tensor> rotate_qk(const at::Tensor& qk, const at::Tensor& query_factors,
                                     const at::Tensor& key_factors) {
  TORCH_CHECK(qk.scalar_type() == at::kBFloat16 && qk.dim() == 4,
              "qk must be (B, T, H+1, dh) bf16");
  check_rows(qk, "qk");
  const int64_t batch = qk.size(0), positions = qk.size(1), heads = qk.size(2) - 1,
                dh = qk.size(3);
  TORCH_CHECK(heads >= 1 && dh % 2 == 0, "qk needs a query head and an even head size");
  for (const auto* f : {&query_factors, &key_factors}) {
    TORCH_CHECK(f->scalar_type() == at::kFloat && f->dim() == 3,
                "factors must be float32 (B, T, dh)");
    check_rows(*f, "factors");
    TORCH_CHECK((f->size(0) == batch || f->size(0) == 1) && f->size(1) == positions &&
                    f->size(2) == dh,
                "factors must be (B or 1, T, dh)");
  }
  auto q = at::empty({batch, positions, heads, dh}, qk.options());
  auto k = at::empty({batch, positions, dh}, qk.options());
  const auto fb = [&](const at::Tensor& f) { return f.size(0) == 1 ? 0 : f.stride(0); };
  const auto* x = qk.data_ptr<at::BFloat16>();
  const float* qf = query_factors.data_ptr<float>();
  const float* kf = key_factors.data_ptr<float>();
  auto* q_out = q.data_ptr<at::BFloat16>();
  auto* k_out = k.data_ptr<at::BFloat16>();
  const int64_t grain = std::max<int64_t>(1, 4096 / ((heads + 1) * dh));
  at::parallel_for(0, batch * positions, grain, [&](int64_t begin, int64_t end) {
    rotate_positions(x, qf, kf, q_out, k_out, heads, dh, positions, qk.stride(0), qk.stride(1),
                     qk.stride(2), fb(query_factors), query_factors.stride(1), fb(key_factors),
                     key_factors.stride(1), begin, end);
  });
  return {q, k};
}
