// Torch-free interface of the masked Adam family (NanoAdam, ALGORITHMS.md §6): chunked bottom-k
// selection and the compact masked Adam step. The math is specified in
// sparseopt_kernels/reference/masked.py; every kernel behind this header must match it.
//
//   selection:  per chunk of C consecutive elements (the last may be shorter, length L), the
//               k(L) = clamp(floor(density·L + 1/2), 1, L) entries of smallest |θ| (|θ| taken in
//               float32; NaN after every number; ties to the lower index), listed in ascending
//               order: chunk c owns list positions [c·k(C), (c+1)·k(C)). Entries are int32 flat
//               indices or int16 offsets within the chunk (C ≤ 32768).
//   compact step, for list position j with i = index[j]:
//               m[j] = β₁m[j] + (1−β₁)g;  v[j] = β₂v[j] + (1−β₂)g²
//               u = (m[j]/(1−β₁ᵗ)) / (sqrt(v[j])/sqrt(1−β₂ᵗ) + ε)   (bias corrections in double)
//               θ[i] = θ[i]·(1 − ηλ) − η·u
//   with g = grad[i] · inv_grad_scale (CPU) or / *grad_scale (CUDA), negated when maximize.
//   Moments are float32 or bfloat16; params/grads float32, bfloat16 or float16 (float64 on CPU).
#pragma once

#include <cstdint>

#include "sparseopt/mirror_step.h"

namespace sparseopt {

// The rounding rule every backend shares (host side).
inline int64_t chunk_k(double density, int64_t length) {
  if (length <= 0) return 0;
  int64_t k = static_cast<int64_t>(density * static_cast<double>(length) + 0.5);
  if (k < 1) k = 1;
  return k > length ? length : k;
}

inline int64_t num_selected(int64_t numel, double density, int64_t chunk_size) {
  return (numel / chunk_size) * chunk_k(density, chunk_size) +
         chunk_k(density, numel % chunk_size);
}

struct SelectConfig {
  double density = 0.1;
  int64_t chunk_size = 4096;
  bool chunk_offsets = false;  // int16 offsets within the chunk instead of int32 flat indices
};

struct CompactAdamConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled, selected entries only
  bool maximize = false;
  double density = 0.1;       // with chunk_size, decodes int16 chunk offsets
  int64_t chunk_size = 4096;
  bool chunk_offsets = false;
};

namespace cpu {

// out[i] receives num_selected(numels[i], density, chunk_size) int32 (or int16) entries.
void chunk_select_cpu(const SelectConfig& cfg, ScalarType value_type, int64_t n_tensors,
                      const void* const* values, const int64_t* numels, void* const* out);

// state_type: Float32 or BFloat16. steps[i] is tensor i's step count after the increment; the
// caller has handled found_inf.
void compact_adam_cpu(const CompactAdamConfig& cfg, double inv_grad_scale, ScalarType param_type,
                      ScalarType state_type, int64_t n_tensors, void* const* params,
                      const void* const* grads, const void* const* indices,
                      void* const* exp_avgs, void* const* exp_avg_sqs, const double* steps,
                      const int64_t* numels);

}  // namespace cpu
}  // namespace sparseopt
