// Torch-free CUDA launchers of SparseOpt's BN-skew correction. Math: see row_scale.h.
// Pointer arrays are host arrays of device pointers; rows / row_lens are host arrays.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sparseopt/row_scale.h"

namespace sparseopt {
namespace cuda {

// Number of int64 elements of device scratch memory row_coefficients_cuda needs
// (the per-row counts and one total per tensor): Σ rows[i] + n_tensors.
int64_t row_coefficients_workspace(int64_t n_tensors, const int64_t* rows);

// Counts every row, reduces the totals and writes the coefficients on the device: no host
// synchronization, nothing allocated. workspace: device int64 scratch of the size above.
cudaError_t row_coefficients_cuda(int64_t n_tensors, const uint8_t* const* masks,
                                  const int64_t* rows, const int64_t* row_lens,
                                  float* const* coefficients, int64_t* workspace,
                                  cudaStream_t stream);

// masks may be null. type: Float32, BFloat16 or Float16 (no float64 on CUDA).
cudaError_t row_scale_cuda(ScalarType type, int64_t n_tensors, void* const* tensors,
                           const float* const* scales, const uint8_t* const* masks,
                           const int64_t* rows, const int64_t* row_lens, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparseopt
