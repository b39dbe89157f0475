// Torch-free interface of SparseOpt's BN-skew correction kernels (ALGORITHMS.md §3). The math
// is specified in sparseopt_kernels/reference/skew.py; every kernel behind this header must
// match it (the coefficients bit for bit).
//
// A tensor of numel = rows · row_len elements is viewed as `rows` rows of `row_len` contiguous
// elements (row i = output neuron / channel i, shape[0] rows).
//
//   row coefficients (when a mask changes):
//     count_i = nnz(mask row i),  total = Σ_i count_i
//     c_i     = float32(sqrt(double(count_i) · rows / double(total)))    (0 when total == 0)
//     i.e. sqrt(1 − s_i) / sqrt(1 − s_avg) with s_i the sparsity of row i, s_avg its mean;
//     evaluated in double in this order (multiply, divide, sqrt), each step correctly rounded.
//   row scale (for optimizers whose step is not fused with the correction), in place:
//     x[i, j] = x[i, j] · c_i      where mask[i, j] != 0 (everywhere without masks)
//     x[i, j] = +0                 where mask[i, j] == 0
//     arithmetic in float32 (float64 for float64 tensors), rounded once to the storage type.
//
// Multi-tensor: arrays of n_tensors pointers plus rows / row_lens per tensor. Masks are bool
// (one byte per element, 0 or 1). Tensors with rows == 0 or row_len == 0 are skipped (their
// coefficient vectors have `rows` entries: nothing to write when rows == 0; all zeros when
// row_len == 0 since total == 0).
#pragma once

#include <cstdint>

#include "sparseopt/mirror_step.h"

namespace sparseopt {
namespace cpu {

void row_coefficients_cpu(int64_t n_tensors, const uint8_t* const* masks, const int64_t* rows,
                          const int64_t* row_lens, float* const* coefficients);

// masks may be null (no masking). type: Float32, Float64, BFloat16 or Float16.
void row_scale_cpu(ScalarType type, int64_t n_tensors, void* const* tensors,
                   const float* const* scales, const uint8_t* const* masks, const int64_t* rows,
                   const int64_t* row_lens);

}  // namespace cpu
}  // namespace sparseopt
