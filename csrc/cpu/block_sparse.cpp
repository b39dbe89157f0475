// Block-sparse matmuls of a linear layer on the CPU (torch-free; API in csrc/include/sparseopt/
// block_sparse.h, math in sparseopt_kernels/reference/block_sparse.py).
//
//   dds: y[:, r]  = Σ_{k ∈ row r}  x[:, c_k] · V_kᵀ               (b-wide column blocks)
//   dsd: dx[:, c] = Σ_{j ∈ col c}  dy[:, r_j] · V_{t_block_ids[j]}
//   sdd: dW[k]    = dy[:, r_k]ᵀ · x[:, c_k]
//
// Every term is one small GEMM on the caller's BLAS (GemmFn), reading x / dy / values in place
// through their row strides: a b-wide column block of a row-major (m × K) matrix is a row-major
// matrix with row stride K, so nothing is gathered or transposed here.
//
// dds / dsd. A task is (m-tile, output block-column): its first term is written with beta = 0,
// the others accumulate with beta = 1 into the same (mt × b) tile of the output, which stays in
// L1/L2 while the block-row's terms run; an output block with no terms (empty block-row of W for
// dds, empty block-column for dsd) is zero-filled. Tasks own disjoint output tiles, so they run
// on all OpenMP threads with no synchronization, and each tile sums its terms in index order:
// the result does not depend on the number of threads. Tasks are numbered m-tile-major, so that
// the tasks a thread takes one after another read the same rows of x / dy (L2 reuse).
//
// sdd. A task is a block k (its whole m-long dot product in one GEMM, k = m is the GEMM's inner
// dimension, which BLAS handles best). When there are too few blocks to keep the threads busy
// and m is long, the m range is cut into a fixed number of pieces (a function of nnz and m only,
// never of the thread count) whose partial products are added in piece order afterwards: the
// result is deterministic too.
//
// The GEMMs run on one thread each (GemmFn's contract): the parallelism is over the tasks.
#include "sparseopt/block_sparse.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace sparseopt {
namespace cpu {

namespace {

// m-tile of dds / dsd (rows of x / dy per task). Measured on the 2-core AVX-512 dev machine
// (MKL sgemm from libtorch_cpu, 2 threads), fp32 2048 -> 2048, b = 64, 102 of 1024 blocks,
// M = 1024, medians of 9 runs, tiles interleaved, dds / dsd in ms on a quiet machine:
//   32: 5.95-6.26 / 5.70-6.04   64: 5.84 / 5.49-5.60   128: 5.76-5.78 / 5.51-5.59
//   256: 5.78-5.83 / 5.66-5.68  512: 6.00 / 5.85       1024: 6.41-6.55 / 6.39-6.42
// (dense sgemm of the same layer: 52 ms). 64-256 are within noise; under a competing load (one
// core mostly taken) 1024 falls further behind (its 32 tasks balance worse: dds 16-23 ms
// against 15-16 for 64-256). 128 keeps a (128 × b) output tile plus the x rows it reads
// (128 rows × b) in L1/L2, and gives enough tasks for dynamic scheduling at small M.
constexpr int64_t kTileRows = 128;

// sdd: pieces of m when there are fewer than kSddMinTasks blocks, so that a layer with a handful
// of blocks still spreads over the threads; a piece has at least kSddMinPieceRows rows (an
// inner dimension long enough to amortize the extra b × b write and reduction). Chosen, not
// tuned: a 2-core machine is busy with 2 blocks already; the split is for many-core machines.
constexpr int64_t kSddMinTasks = 16;
constexpr int64_t kSddMinPieceRows = 512;

template <class Fn>
void parallel_tasks(int64_t n_tasks, Fn&& fn) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (n_tasks > 1)
#endif
  for (int64_t t = 0; t < n_tasks; ++t) fn(t);
}

// Zero an (rows × cols) tile of a row-major matrix with row stride ld.
template <typename T>
void zero_tile(T* p, int64_t rows, int64_t cols, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) std::memset(p + i * ld, 0, sizeof(T) * cols);
}

// The shared shape of dds and dsd: out (m × n_out·b) = in (m × n_in·b) · op(W), one task per
// (m-tile, output block o); the terms of block o are entries [offsets[o], offsets[o+1]) of a
// compressed index, entry j pairing input block in_block[j] with block id block_of(j) of values.
template <typename T, bool TRANS_B, class InBlock, class BlockOf>
void compressed_matmul(GemmFn<T> gemm, int64_t m, int64_t n_in, int64_t n_out, int64_t b,
                       const T* in, const T* values, const int32_t* offsets, InBlock in_block,
                       BlockOf block_of, T* out) {
  if (m <= 0 || n_out <= 0) return;
  const int64_t ld_in = n_in * b, ld_out = n_out * b;
  const int64_t n_tiles = (m + kTileRows - 1) / kTileRows;
  parallel_tasks(n_tiles * n_out, [&](int64_t t) {
    const int64_t i0 = (t / n_out) * kTileRows, o = t % n_out;
    const int64_t mt = std::min(kTileRows, m - i0);
    T* c = out + i0 * ld_out + o * b;
    const int64_t begin = offsets[o], end = offsets[o + 1];
    if (begin == end) {
      zero_tile(c, mt, b, ld_out);
      return;
    }
    for (int64_t j = begin; j < end; ++j) {
      const T* a = in + i0 * ld_in + static_cast<int64_t>(in_block(j)) * b;
      const T* v = values + static_cast<int64_t>(block_of(j)) * b * b;
      gemm(false, TRANS_B, mt, b, b, T(1), a, ld_in, v, b, j == begin ? T(0) : T(1), c, ld_out);
    }
  });
}

}  // namespace

template <typename T>
void dds_cpu(GemmFn<T> gemm, const BlockSparseShape& s, const T* x, const T* values,
             const int32_t* row_offsets, const int32_t* col_indices, T* y) {
  // y[:, r] = Σ_k x[:, c_k] · V_kᵀ  (V_k row-major b × b, read transposed)
  compressed_matmul<T, true>(
      gemm, s.m, s.block_cols, s.block_rows, s.block, x, values, row_offsets,
      [col_indices](int64_t j) { return col_indices[j]; }, [](int64_t j) { return j; }, y);
}

template <typename T>
void dsd_cpu(GemmFn<T> gemm, const BlockSparseShape& s, const T* dy, const T* values,
             const int32_t* col_offsets, const int32_t* t_row_indices,
             const int32_t* t_block_ids, T* dx) {
  // dx[:, c] = Σ_j dy[:, r_j] · V_{t_block_ids[j]}
  compressed_matmul<T, false>(
      gemm, s.m, s.block_rows, s.block_cols, s.block, dy, values, col_offsets,
      [t_row_indices](int64_t j) { return t_row_indices[j]; },
      [t_block_ids](int64_t j) { return t_block_ids[j]; }, dx);
}

template <typename T>
void sdd_cpu(GemmFn<T> gemm, const BlockSparseShape& s, const T* dy, const T* x,
             const int32_t* row_indices, const int32_t* col_indices, T* dw) {
  const int64_t nnz = s.nnz, b = s.block, m = s.m, bb = b * b;
  if (nnz <= 0) return;
  if (m <= 0) {  // empty inner dimension: dW = 0
    std::memset(dw, 0, sizeof(T) * static_cast<size_t>(nnz * bb));
    return;
  }
  const int64_t ld_dy = s.block_rows * b, ld_x = s.block_cols * b;
  // Pieces of m per block (1 unless few blocks and a long m); a function of nnz and m only.
  int64_t pieces = 1;
  if (nnz < kSddMinTasks) {
    pieces = std::min((kSddMinTasks + nnz - 1) / nnz, m / kSddMinPieceRows);
    pieces = std::max<int64_t>(pieces, 1);
  }
  if (pieces == 1) {
    parallel_tasks(nnz, [&](int64_t k) {
      gemm(true, false, b, b, m, T(1), dy + static_cast<int64_t>(row_indices[k]) * b, ld_dy,
           x + static_cast<int64_t>(col_indices[k]) * b, ld_x, T(0), dw + k * bb, b);
    });
    return;
  }
  // Piece p of block k covers rows [p·step, min((p+1)·step, m)); piece 0 writes dw[k] itself,
  // the others a scratch block, added to dw[k] in piece order once all are done.
  const int64_t step = (m + pieces - 1) / pieces;
  std::vector<T> partial(static_cast<size_t>(nnz * (pieces - 1) * bb));
  parallel_tasks(nnz * pieces, [&](int64_t t) {
    const int64_t k = t / pieces, p = t % pieces;
    const int64_t i0 = p * step, rows = std::min(step, m - i0);
    T* c = p == 0 ? dw + k * bb : partial.data() + (k * (pieces - 1) + p - 1) * bb;
    if (rows <= 0) {
      std::memset(c, 0, sizeof(T) * static_cast<size_t>(bb));
      return;
    }
    gemm(true, false, b, b, rows, T(1),
         dy + i0 * ld_dy + static_cast<int64_t>(row_indices[k]) * b, ld_dy,
         x + i0 * ld_x + static_cast<int64_t>(col_indices[k]) * b, ld_x, T(0), c, b);
  });
  for (int64_t k = 0; k < nnz; ++k) {
    T* d = dw + k * bb;
    for (int64_t p = 1; p < pieces; ++p) {
      const T* q = partial.data() + (k * (pieces - 1) + p - 1) * bb;
      for (int64_t e = 0; e < bb; ++e) d[e] += q[e];
    }
  }
}

#define SPARSEOPT_BLOCK_SPARSE_INSTANTIATE(T)                                                   \
  template void dds_cpu<T>(GemmFn<T>, const BlockSparseShape&, const T*, const T*,              \
                           const int32_t*, const int32_t*, T*);                                 \
  template void dsd_cpu<T>(GemmFn<T>, const BlockSparseShape&, const T*, const T*,              \
                           const int32_t*, const int32_t*, const int32_t*, T*);                 \
  template void sdd_cpu<T>(GemmFn<T>, const BlockSparseShape&, const T*, const T*,              \
                           const int32_t*, const int32_t*, T*);
SPARSEOPT_BLOCK_SPARSE_INSTANTIATE(float)
SPARSEOPT_BLOCK_SPARSE_INSTANTIATE(double)
#undef SPARSEOPT_BLOCK_SPARSE_INSTANTIATE

}  // namespace cpu
}  // namespace sparseopt
