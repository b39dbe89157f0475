// Torch-free CUDA launchers of the block-sparse matmuls of a linear layer. Math, index layout and
// shapes: see block_sparse.h (and sparseopt_kernels/reference/block_sparse.py, the spec).
//
// type: Float32, BFloat16 or Float16 (no float64 on CUDA). Half types use tensor cores with
// float32 accumulation; float32 uses TF32 tensor cores when allow_tf32, exact float32 FMA
// otherwise. Outputs are written (not accumulated); empty block-rows (dds) and block-columns
// (dsd) come out as zeros. All pointers are device pointers; nothing is allocated and nothing
// synchronizes with the host. Returns the launch error, if any.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sparseopt/block_sparse.h"

namespace sparseopt {
namespace cuda {

cudaError_t dds_cuda(ScalarType type, const BlockSparseShape& s, const void* x,
                     const void* values, const int32_t* row_offsets,
                     const int32_t* col_indices, void* y, bool allow_tf32, cudaStream_t stream);
cudaError_t dsd_cuda(ScalarType type, const BlockSparseShape& s, const void* dy,
                     const void* values, const int32_t* col_offsets,
                     const int32_t* t_row_indices, const int32_t* t_block_ids, void* dx,
                     bool allow_tf32, cudaStream_t stream);
cudaError_t sdd_cuda(ScalarType type, const BlockSparseShape& s, const void* dy, const void* x,
                     const int32_t* row_indices, const int32_t* col_indices, void* dw,
                     bool allow_tf32, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparseopt
