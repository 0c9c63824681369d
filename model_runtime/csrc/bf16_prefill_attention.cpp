// Causal multi-query attention of a prefill on bf16 tensors, for x86 CPUs with AVX512-BF16:
//     out[b, t, h] = softmax(scale * q[b, t, h] . k[b, j] + mask[b, t*H + h, j], j <= S + t)
//                    @ v[b, j]
// for T new tokens after S held ones, H query heads sharing one key and one value head.
//
// Why: as batched matrix products (model_runtime/palm.py, _attention_by_products) a 256-token
// prefill with 12 heads took ~1 ms a layer on a 2-core Zen 4 for ~0.1 GFLOP: products with an
// inner size of 64 are bound by writing and re-reading their scores, every masked key is
// computed and thrown away, and softmax is a pass of its own. Here each query row computes the
// scores of the keys it may see only, in float32 registers and a row buffer that stays in L1,
// and multiplies by the values straight away. Keys are repacked once per call so that one
// VDPBF16PS gives one query's dot products with 16 keys, values so that one gives 16 output
// features over two keys. Scores and their softmax stay in float32; the probabilities are
// rounded to bf16 for the product with the values (as the batched products do) and the output
// once. Called by model_runtime/bf16_prefill_attention.py (built by model_runtime/cpu_kernels.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

constexpr int64_t kBlock = 16;  // keys per score vector

// keys (S+T, dh) -> blocks of 16 keys, each (dh/2 pairs) x (16 keys) x 2: the pair p of 16
// consecutive keys lies in one 512-bit vector, zeros past the last key.
void pack_keys(const uint16_t* keys, int64_t row_stride, int64_t count, int64_t dh,
               uint16_t* packed) {
  const int64_t blocks = (count + kBlock - 1) / kBlock;
  std::memset(packed, 0, sizeof(uint16_t) * blocks * kBlock * dh);
  for (int64_t j = 0; j < count; ++j) {
    uint16_t* block = packed + (j / kBlock) * kBlock * dh;
    const int64_t lane = j % kBlock;
    const uint16_t* key = keys + j * row_stride;
    for (int64_t p = 0; p < dh / 2; ++p) {
      block[(p * kBlock + lane) * 2] = key[2 * p];
      block[(p * kBlock + lane) * 2 + 1] = key[2 * p + 1];
    }
  }
}

// values (S+T, dh) -> pairs of keys, each (dh) x 2: features d of keys 2i and 2i + 1 adjacent,
// zeros for the missing partner of an odd last key.
void pack_values(const uint16_t* values, int64_t row_stride, int64_t count, int64_t dh,
                 uint16_t* packed) {
  const int64_t pairs = (count + 1) / 2;
  std::memset(packed, 0, sizeof(uint16_t) * pairs * dh * 2);
  for (int64_t j = 0; j < count; ++j) {
    uint16_t* pair = packed + (j / 2) * dh * 2;
    const uint16_t* value = values + j * row_stride;
    for (int64_t d = 0; d < dh; ++d) pair[d * 2 + (j % 2)] = value[d];
  }
}

struct Problem {
  const uint16_t* q;       // (T, H, dh) of one batch row
  const uint16_t* keys;    // packed keys of that row
  const uint16_t* values;  // packed values of that row
  const uint16_t* mask;    // (T*H, S+T) additive bf16 of that row
  int64_t mask_row_stride;
  at::BFloat16* out;  // (T, H, dh) with strides below
  int64_t out_token_stride, out_head_stride;
  int64_t heads, dh, held;
  float scale;
};

// Scores of one block of 16 keys from key ``block * 16`` on for G query rows (pairs ``q``),
// scaled, plus the mask, -inf past the last key the rows may see; stored in ``scores`` and
// folded into ``running_max``.
template <int G>
PALMLOOP_TARGET inline void score_block(const Problem& pb, const uint32_t (*q)[128],
                                        const uint16_t* const* mask, int64_t block, int64_t seen,
                                        float* scores, int64_t width, __m512* running_max) {
  const __m512 minus_infinity = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 scale = _mm512_set1_ps(pb.scale);
  __m512 acc[G];
  for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
  const uint16_t* keys = pb.keys + block * kBlock * pb.dh;
  for (int64_t p = 0; p < pb.dh / 2; ++p) {
    const __m512bh key_pairs = (__m512bh)_mm512_loadu_si512(keys + p * kBlock * 2);
    for (int g = 0; g < G; ++g) {
      acc[g] = _mm512_dpbf16_ps(acc[g], key_pairs, (__m512bh)_mm512_set1_epi32((int)q[g][p]));
    }
  }
  const int64_t first = block * kBlock;
  const __mmask16 valid = tail_mask(seen - first);
  for (int g = 0; g < G; ++g) {
    const auto* mask_row = reinterpret_cast<const at::BFloat16*>(mask[g]);
    __m512 s = _mm512_mul_ps(acc[g], scale);
    s = _mm512_add_ps(s, load_bf16(mask_row + first, valid));
    s = _mm512_mask_blend_ps(valid, minus_infinity, s);
    running_max[g] = _mm512_max_ps(running_max[g], s);
    _mm512_storeu_ps(scores + g * width + first, s);
  }
}

// G query rows of token t at once, heads h .. h + G - 1: each key and value vector read once
// serves G rows, whose G independent chains of VDPBF16PS keep the units busy (one row alone is
// bound by the instruction's latency). VEC = vectors of 16 features per head (dh <= 16 VEC).
// ``scores`` holds G rows of at least (S + t + 1) rounded up to 16 floats, ``probs`` as many
// bf16 (row strides ``width``).
template <int G, int VEC>
PALMLOOP_TARGET void attend_heads(const Problem& pb, int64_t t, int64_t h, float* scores,
                                  uint16_t* probs, int64_t width) {
  const int64_t dh = pb.dh, seen = pb.held + t + 1;
  const int64_t blocks = (seen + kBlock - 1) / kBlock;
  const __m512 minus_infinity = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  uint32_t q[G][128];  // each row's dh/2 feature pairs, broadcast to whole vectors below
  const uint16_t* mask[G];
  __m512 running_max[G];
  for (int g = 0; g < G; ++g) {
    std::memcpy(q[g], pb.q + (t * pb.heads + h + g) * dh, sizeof(uint16_t) * dh);
    mask[g] = pb.mask + (t * pb.heads + h + g) * pb.mask_row_stride;
    running_max[g] = minus_infinity;
  }
  for (int64_t block = 0; block < blocks; ++block) {
    score_block<G>(pb, q, mask, block, seen, scores, width, running_max);
  }
  for (int g = 0; g < G; ++g) {
    float* row = scores + g * width;
    // a query always sees its own key, so the row's maximum is finite
    const __m512 row_max = _mm512_set1_ps(_mm512_reduce_max_ps(running_max[g]));
    __m512 sums = _mm512_setzero_ps();
    for (int64_t block = 0; block < blocks; ++block) {
      const __m512 s = _mm512_loadu_ps(row + block * kBlock);
      const __mmask16 visible = _mm512_cmp_ps_mask(s, minus_infinity, _CMP_NEQ_OQ);
      // exactly 0 for a hidden key (exp_ps stops at e^-88)
      const __m512 e = _mm512_maskz_mov_ps(visible, exp_ps(_mm512_sub_ps(s, row_max)));
      sums = _mm512_add_ps(sums, e);
      _mm512_storeu_ps(row + block * kBlock, e);
    }
    const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sums));
    for (int64_t block = 0; block < blocks; ++block) {
      const __m512 prob = _mm512_mul_ps(_mm512_loadu_ps(row + block * kBlock), inverse);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(probs + g * width + block * kBlock),
                          (__m256i)_mm512_cvtneps_pbh(prob));
    }
  }
  // out (dh) = sum_j probs[j] v[j], two keys per VDPBF16PS, 16 features per vector
  __m512 acc[G][VEC];
  __mmask32 lanes[VEC];
  for (int i = 0; i < VEC; ++i) {
    lanes[i] = tail_mask32(2 * (dh - 16 * i));
    for (int g = 0; g < G; ++g) acc[g][i] = _mm512_setzero_ps();
  }
  const int64_t pairs = (seen + 1) / 2;
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const uint16_t* values = pb.values + pair * dh * 2;
    __m512bh weight[G];
    for (int g = 0; g < G; ++g) {
      uint32_t both;  // probabilities of keys 2 pair and 2 pair + 1
      std::memcpy(&both, probs + g * width + 2 * pair, sizeof(both));
      weight[g] = (__m512bh)_mm512_set1_epi32((int)both);
    }
    for (int i = 0; i < VEC; ++i) {
      const __m512bh v = (__m512bh)_mm512_maskz_loadu_epi16(lanes[i], values + i * 32);
      for (int g = 0; g < G; ++g) acc[g][i] = _mm512_dpbf16_ps(acc[g][i], v, weight[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    at::BFloat16* out = pb.out + t * pb.out_token_stride + (h + g) * pb.out_head_stride;
    for (int i = 0; i < VEC; ++i) store_bf16(out + 16 * i, acc[g][i], tail_mask(dh - 16 * i));
  }
}

// Every head of token t: groups of 4 heads, then one at a time.
template <int VEC>
void attend_token(const Problem& pb, int64_t t, float* scores, uint16_t* probs, int64_t width) {
  int64_t h = 0;
  for (; h + 4 <= pb.heads; h += 4) attend_heads<4, VEC>(pb, t, h, scores, probs, width);
  for (; h < pb.heads; ++h) attend_heads<1, VEC>(pb, t, h, scores, probs, width);
}

void attend(const Problem& pb, int64_t t, float* scores, uint16_t* probs, int64_t width) {
  if (pb.dh <= 64) {
    attend_token<4>(pb, t, scores, probs, width);
  } else {
    attend_token<16>(pb, t, scores, probs, width);
  }
}

}  // namespace

void prefill_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& mask, const at::Tensor& out) {
  TORCH_CHECK(q.dim() == 4 && q.is_contiguous() && q.scalar_type() == at::kBFloat16,
              "q must be contiguous bf16 (B, T, H, dh)");
  const int64_t batch = q.size(0), new_tokens = q.size(1), heads = q.size(2), dh = q.size(3);
  TORCH_CHECK(dh % 2 == 0 && dh <= 256, "head size must be even and at most 256");
  for (const at::Tensor* t : {&k, &v}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == batch && t->size(2) == dh &&
                    t->stride(2) == 1 && t->scalar_type() == at::kBFloat16,
                "k and v must be bf16 (B, S+T, dh) with contiguous rows");
  }
  const int64_t total = k.size(1), held = total - new_tokens;
  TORCH_CHECK(v.size(1) == total && held >= 0, "k and v must hold the S+T keys");
  TORCH_CHECK(mask.dim() == 3 && (mask.size(0) == 1 || mask.size(0) == batch) &&
                  mask.size(1) == new_tokens * heads && mask.size(2) == total &&
                  mask.stride(2) == 1 && mask.scalar_type() == at::kBFloat16,
              "mask must be bf16 (B or 1, T*H, S+T) with contiguous rows");
  TORCH_CHECK(out.dim() == 4 && out.sizes() == q.sizes() && out.stride(3) == 1 &&
                  out.scalar_type() == at::kBFloat16,
              "out must be bf16 (B, T, H, dh) with contiguous rows");
  const int64_t blocks = (total + kBlock - 1) / kBlock;
  const int64_t pairs = (total + 1) / 2;
  std::vector<uint16_t> packed_keys(batch * blocks * kBlock * dh);
  std::vector<uint16_t> packed_values(batch * pairs * dh * 2);
  for (int64_t b = 0; b < batch; ++b) {
    pack_keys(reinterpret_cast<const uint16_t*>(k.data_ptr()) + b * k.stride(0), k.stride(1),
              total, dh, packed_keys.data() + b * blocks * kBlock * dh);
    pack_values(reinterpret_cast<const uint16_t*>(v.data_ptr()) + b * v.stride(0), v.stride(1),
                total, dh, packed_values.data() + b * pairs * dh * 2);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  // Token t costs ~S + t: task i takes tokens i and T-1-i, so that the threads' shares of a
  // causal prefill are even.
  const int64_t tasks = batch * ((new_tokens + 1) / 2);
  const int64_t half = (new_tokens + 1) / 2;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const int64_t width = blocks * kBlock + 2;  // + 2: the pair read past an odd last key
    std::vector<float> scores(4 * width);
    std::vector<uint16_t> probs(4 * width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / half, i = task % half;
      const Problem pb{
          reinterpret_cast<const uint16_t*>(q.data_ptr()) + b * q.stride(0),
          packed_keys.data() + b * blocks * kBlock * dh,
          packed_values.data() + b * pairs * dh * 2,
          reinterpret_cast<const uint16_t*>(mask.data_ptr()) +
              (mask.size(0) == 1 ? 0 : b * mask.stride(0)),
          mask.stride(1),
          out.data_ptr<at::BFloat16>() + b * out.stride(0),
          out.stride(1),
          out.stride(2),
          heads,
          dh,
          held,
          scale,
      };
      const int64_t early = i, late = new_tokens - 1 - i;  // equal: the middle of an odd T
      attend(pb, early, scores.data(), probs.data(), width);
      if (late != early) attend(pb, late, scores.data(), probs.data(), width);
    }
  });
}
