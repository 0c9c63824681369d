// AVX512 helpers shared by palmloop's bf16 kernels: bf16 <-> float32 vectors, tail masks, exp.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstdint>

#define PALMLOOP_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

PALMLOOP_TARGET static inline __m512 load_bf16(const at::BFloat16* p, __mmask16 mask) {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

PALMLOOP_TARGET static inline void store_bf16(at::BFloat16* p, __m512 v, __mmask16 mask) {
  // round to nearest even, as torch does
  _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(v));
}

// The first ``left`` of 16 (or 32) lanes; every lane from 16 (32) on, none from 0 down.
static inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

static inline __mmask32 tail_mask32(int64_t left) {
  return left >= 32 ? (__mmask32)0xFFFFFFFFu
                    : left <= 0 ? (__mmask32)0 : (__mmask32)((1u << left) - 1);
}

// exp(x) in float32 to ~1 ulp: 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, p of degree 6.
// NaN stays NaN: VMINPS / VMAXPS return their second operand when either is NaN, so x goes
// second (with x first, a NaN became 88 and exp(NaN) about 1.65e38).
PALMLOOP_TARGET static inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-88.0f), _mm512_min_ps(_mm512_set1_ps(88.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 split in two
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

