// Torch-free block-sparse matmuls of a linear layer y = x Wᵀ, W block-sparse (CPU kernels).
// Math and index layout: sparseopt_kernels/reference/block_sparse.py (the spec). In short, W is
// (R·b) × (C·b) with nnz stored b × b blocks `values` (nnz × b × b, row-major), CSR indexed by
// row_offsets (R+1) / col_indices (nnz) / row_indices (nnz), and CSC indexed by col_offsets
// (C+1) / t_row_indices (nnz) / t_block_ids (nnz, the CSR position of each CSC entry). All index
// arrays are int32; every dense matrix is row-major and contiguous.
//
//   dds: y  (m × R·b)  = x  (m × C·b) · Wᵀ
//   dsd: dx (m × C·b)  = dy (m × R·b) · W
//   sdd: dW[k] (b × b) = dy[:, r_k·b …]ᵀ · x[:, c_k·b …]       (k = 0 … nnz−1)
//
// The CPU kernels are per-block GEMMs on the caller's BLAS: they take a row-major GEMM callback
// (the torch binding passes the Fortran BLAS sgemm_/dgemm_ that torch links, found at run time,
// with an ATen fallback; the C++ tests pass a plain loop), so this
// core links no BLAS itself. They run the tasks on all OpenMP threads, each GEMM on one thread.
#pragma once

#include <cstdint>

#include "sparseopt/mirror_step.h"  // ScalarType

namespace sparseopt {

// Row-major C (m × n) = alpha · op(A) · op(B) + beta · C, op(X) = Xᵀ when trans_X. lda/ldb/ldc
// are the row strides of A, B and C as stored. Must be safe to call from several threads at once
// and must run on the calling thread only (no nested threading).
template <typename T>
using GemmFn = void (*)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                        const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                        int64_t ldc);

struct BlockSparseShape {
  int64_t m;             // rows of x / dy (the batch)
  int64_t block_rows;    // R = out_features / b
  int64_t block_cols;    // C = in_features / b
  int64_t nnz;           // stored blocks
  int64_t block;         // b ∈ {16, 32, 64, 128}
};

namespace cpu {

// Indices are trusted to be in range and consistent (the layout builder makes them so).
template <typename T>
void dds_cpu(GemmFn<T> gemm, const BlockSparseShape& s, const T* x, const T* values,
             const int32_t* row_offsets, const int32_t* col_indices, T* y);
template <typename T>
void dsd_cpu(GemmFn<T> gemm, const BlockSparseShape& s, const T* dy, const T* values,
             const int32_t* col_offsets, const int32_t* t_row_indices,
             const int32_t* t_block_ids, T* dx);
template <typename T>
void sdd_cpu(GemmFn<T> gemm, const BlockSparseShape& s, const T* dy, const T* x,
             const int32_t* row_indices, const int32_t* col_indices, T* dw);

}  // namespace cpu
}  // namespace sparseopt
