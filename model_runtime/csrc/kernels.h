// The kernels of palmloop's CPU extension (bf16_row_product.cpp, bf16_pointwise.cpp,
// bf16_prefill_attention.cpp, bf16_cross_entropy.cpp), bound to Python in module.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

// sum_i x_i @ W_i^T for bf16 rows x_i (M, K_i), M = 1 or 2, and bf16 weights W_i (N, K_i)
// -> (M, N) bf16, float32 accumulation, rounded once.
at::Tensor row_product_sum(const std::vector<at::Tensor>& inputs,
                           const std::vector<at::Tensor>& weights);

// out = silu(gate) * value over bf16 (..., F) tensors whose rows are evenly spaced.
void swiglu_into(const at::Tensor& value, const at::Tensor& gate, const at::Tensor& out);

// Causal multi-query attention of T new tokens after S held ones: q (B, T, H, dh) contiguous,
// k and v (B, S+T, dh), mask (B or 1, T*H, S+T) additive, all bf16 -> written into out
// (B, T, H, dh), rows contiguous.
void prefill_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& mask, const at::Tensor& out);

// Rotary + xPos of the fused projection's queries and key: qk (B, T, H + 1, dh) bf16,
// factors (B or 1, T, dh) float32 (cos, sin) pairs -> {q (B, T, H, dh), k (B, T, dh)}.
std::vector<at::Tensor> rotate_qk(const at::Tensor& qk, const at::Tensor& query_factors,
                                  const at::Tensor& key_factors);

// Per-row cross-entropy of bf16 logits (rows, V) against int64 labels (rows,) -> float32 losses
// (rows,), 0 where the label is ignore_index; with grad (rows, V) bf16, also writes
// softmax - onehot(label) there (zeros for ignored rows).
at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& labels,
                              const std::optional<at::Tensor>& grad, int64_t ignore_index);
