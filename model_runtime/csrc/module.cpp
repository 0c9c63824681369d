// Python bindings of palmloop's CPU kernels (kernels.h), built and loaded by
// model_runtime/cpu_kernels.py.
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("row_product_sum", &row_product_sum,
        "sum_i x_i @ W_i^T for bf16 rows x_i (M, K_i), M = 1 or 2, and bf16 weights W_i (N, K_i) "
        "-> (M, N)");
  m.def("swiglu_into", &swiglu_into, "out = silu(gate) * value, bf16 (..., F), rounded once");
  m.def("prefill_attention", &prefill_attention,
        "causal multi-query attention: q (B, T, H, dh), k, v (B, S+T, dh), mask (B or 1, T*H, "
        "S+T), out (B, T, H, dh), bf16");
  m.def("rotate_qk", &rotate_qk,
        "rotary + xPos: qk (B, T, H+1, dh) bf16, factors (B or 1, T, dh) float32 -> (q, k)");
  m.def("cross_entropy_rows", &cross_entropy_rows,
        "per-row cross-entropy of bf16 logits (rows, V) against int64 labels -> float32 (rows,); "
        "optionally softmax - onehot into grad (rows, V) bf16",
        py::arg("logits"), py::arg("labels"), py::arg("grad") = py::none(),
        py::arg("ignore_index") = -100);
}
