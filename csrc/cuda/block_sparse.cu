// CUDA kernels of the block-sparse matmuls of a linear layer y = x Wᵀ; the launchers of
// sparseopt/block_sparse_cuda.h. Math and index layout: sparseopt_kernels/reference/
// block_sparse.py (the spec). W is (R·b) × (C·b), stored as nnz b × b blocks V_k = values[k]
// (row-major) at block-row r_k, block-column c_k; dense matrices are row-major:
//
//   dds: y[:, r·b …]  = Σ_{k ∈ [row_offsets[r], row_offsets[r+1])}  x[:, c_k·b …] · V_kᵀ
//   dsd: dx[:, c·b …] = Σ_{j ∈ [col_offsets[c], col_offsets[c+1])}  dy[:, r_j·b …] · V_{k_j}
//                       (r_j = t_row_indices[j], k_j = t_block_ids[j])
//   sdd: dW[k]        = dy[:, r_k·b …]ᵀ · x[:, c_k·b …]
//                       (r_k = row_indices[k], c_k = col_indices[k])
//
// where x[:, c·b …] is the b-wide column block c. Products accumulate in float32 and are rounded
// once to the output type. fp16 / bf16 use tensor cores (wmma 16×16×16); float32 uses TF32
// tensor cores (wmma 16×16×8, operands rounded to TF32) when allow_tf32, exact float32 FMA
// otherwise. No atomics anywhere: every output element is written by one thread, after a fixed
// summation order, so results are deterministic.
//
// One kernel shape for all three (block_sparse_tiles.cuh): a CTA owns a BM × BN output tile and
// runs a 3-stage cp.async pipeline over "stages" that each bring a BM × BK slice of A and a
// BK × BN slice of B into shared memory, BK = 64 bytes of K (32 fp16/bf16 or 16 float32
// elements; 16 for b = 16 in dds / dsd).
//
//   dds  CTA = (row tile of BM rows of x, block-row r); BN = b. Stages: every block k of row r,
//        cut into b / BK slices: A = x[rows, c_k·b + k0 …] (K-major), B = V_kᵀ, i.e. the rows
//        of V_k (K-major: V_k[n][k0 + kk]). An empty block-row runs no stage: zeros.
//   dsd  CTA = (row tile, block-column c); BN = b. Stages: every CSC entry j of column c, cut
//        likewise: A = dy[rows, r_j·b + k0 …] (K-major), B = V_k[k0 + kk][n] (MN-major).
//   sdd  CTA = (block k, S × S sub-tile of it), S = min(b, 64). Stages: slices of BK rows of m:
//        A = dy[m0 …, r_k·b + i0 …] read as Aᵀ (MN-major), B = x[m0 …, c_k·b + j0 …]
//        (MN-major). One CTA reduces the whole m range of its sub-tile (deterministic, no
//        workspace); b = 128 blocks are cut in four 64 × 64 sub-tiles for parallelism.
//
// Row tiles: BM = 128 rows of x / dy (the last one zero-filled past m on the way in and not
// stored past m on the way out). CTAs are numbered with the block-row (block-column) fastest,
// so CTAs running at the same time share a row tile of x (dy), the large operand, in L2; the
// blocks of W are small (nnz·b² elements) and stay in L2 anyway.
//
// Tiling (every choice unmeasured: there was no GPU where this was written; they follow the
// usual shapes of cp.async + mma.sync GEMMs):
//
//   dds / dsd   b    CTA tile   warps   warp tile   SIMT micro-tile   threads
//               16   128 × 16   4 × 1    32 × 16       4 × 4            128
//               32   128 × 32   4 × 1    32 × 32       8 × 4            128
//               64   128 × 64   2 × 2    64 × 32       8 × 8            128
//              128   128 × 128  2 × 4    64 × 32       8 × 8            256
//   sdd         16   16 × 16    1 × 1    16 × 16       4 × 2             32
//               32   32 × 32    2 × 2    16 × 16       4 × 2            128
//           64, 128  64 × 64    2 × 2    32 × 32       8 × 4            128
//
// Warp tiles of 64 × 32 (8 accumulator fragments, 64 registers) give 4 + 2 fragment loads per 8
// mma. BM = 128 keeps a b = 128 CTA at 66 KiB of shared memory (3 × 20 KiB of stages, reused by
// the 128 × 132 float32 output tile: dynamic shared memory, opted in above 48 KiB) and at 128
// registers per thread: 2 CTAs (16 warps) per SM on A100 and H100. The b ≤ 64 CTAs take
// 7.5-45 KiB and up to 168 registers (3-4 CTAs per SM). Shared-memory rows are padded by 16
// bytes (conflict-free wmma loads and cp.async stores, see SmemOperand).
//
// Launchers: the grid is 1-D (CTA counts up to 2^31 − 1). Every tile moves as 16-byte vectors,
// so the dense operands, values and outputs must be 16-byte aligned (cudaErrorInvalidValue
// otherwise; fresh torch allocations are). Outputs of empty problems: nnz == 0 in dds / dsd is
// one cudaMemsetAsync of the output, m == 0 in sdd one of dW; nothing else is launched then.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "block_sparse_tiles.cuh"
#include "sparseopt/block_sparse_cuda.h"

namespace sparseopt {
namespace cuda {
namespace {

using bs::SmemOperand;
using bs::Tiling;

// Row tile of dds / dsd.
constexpr int kRowTile = 128;

// K slice per stage: 64 bytes of K, at most b.
template <typename T>
constexpr int kSddBK = 64 / static_cast<int>(sizeof(T));
template <typename T, int kBlock>
constexpr int kDenseBK = kBlock < kSddBK<T> ? kBlock : kSddBK<T>;

// dds / dsd: BM = 128 rows × BN = b columns (see the table at the top).
template <typename T, int kBlock>
struct DenseTilingOf;
template <typename T>
struct DenseTilingOf<T, 16> {
  using type = Tiling<kRowTile, 16, kDenseBK<T, 16>, 4, 1, 4, 4>;
};
template <typename T>
struct DenseTilingOf<T, 32> {
  using type = Tiling<kRowTile, 32, kDenseBK<T, 32>, 4, 1, 8, 4>;
};
template <typename T>
struct DenseTilingOf<T, 64> {
  using type = Tiling<kRowTile, 64, kDenseBK<T, 64>, 2, 2, 8, 8>;
};
template <typename T>
struct DenseTilingOf<T, 128> {
  using type = Tiling<kRowTile, 128, kDenseBK<T, 128>, 2, 4, 8, 8>;
};
template <typename T, int kBlock>
using DenseTile = typename DenseTilingOf<T, kBlock>::type;

// sdd: an S × S sub-tile of a block, S = min(b, 64).
template <typename T, int kBlock>
struct SddTilingOf {
  using type = Tiling<64, 64, kSddBK<T>, 2, 2, 8, 4>;  // b = 64, 128
};
template <typename T>
struct SddTilingOf<T, 16> {
  using type = Tiling<16, 16, kSddBK<T>, 1, 1, 4, 2>;
};
template <typename T>
struct SddTilingOf<T, 32> {
  using type = Tiling<32, 32, kSddBK<T>, 2, 2, 4, 2>;
};
template <typename T, int kBlock>
using SddTile = typename SddTilingOf<T, kBlock>::type;

// Tensor cores unless float32 without TF32 (kSimt).
template <typename T, bool kSimt, class Tile, class OpA, class OpB>
using MathOf = std::conditional_t<kSimt, bs::SimtMath<Tile, OpA, OpB>,
                                  bs::WmmaMath<T, Tile, OpA, OpB>>;

// Operand slices of each op (see the top of the file).
template <typename T, int kBlock>
struct DdsOperands {
  using Tile = DenseTile<T, kBlock>;
  using A = SmemOperand<T, Tile::kBM, Tile::kBK, true>;  // x[rows, c·b + k0 …]
  using B = SmemOperand<T, kBlock, Tile::kBK, true>;     // V_k[n][k0 …]: Bᵀ rows
};
template <typename T, int kBlock>
struct DsdOperands {
  using Tile = DenseTile<T, kBlock>;
  using A = SmemOperand<T, Tile::kBM, Tile::kBK, true>;  // dy[rows, r·b + k0 …]
  using B = SmemOperand<T, kBlock, Tile::kBK, false>;    // V_k[k0 …][n]: B rows
};
template <typename T, int kBlock>
struct SddOperands {
  using Tile = SddTile<T, kBlock>;
  using A = SmemOperand<T, Tile::kBM, Tile::kBK, false>;  // dy[m0 …, r·b + i0 …]: Aᵀ rows
  using B = SmemOperand<T, Tile::kBN, Tile::kBK, false>;  // x[m0 …, c·b + j0 …]: B rows
};

template <typename T>
struct DdsArgs {
  const T* x;                   // m × C·b
  const T* values;              // nnz × b × b
  const int32_t* row_offsets;   // R + 1
  const int32_t* col_indices;   // nnz
  T* y;                         // m × R·b
  int64_t m;
  int32_t block_rows;           // R
  int64_t ldx;                  // C·b
  int64_t ldy;                  // R·b
};

template <typename T>
struct DsdArgs {
  const T* dy;                  // m × R·b
  const T* values;              // nnz × b × b
  const int32_t* col_offsets;   // C + 1
  const int32_t* t_row_indices; // nnz
  const int32_t* t_block_ids;   // nnz
  T* dx;                        // m × C·b
  int64_t m;
  int32_t block_cols;           // C
  int64_t lddy;                 // R·b
  int64_t lddx;                 // C·b
};

template <typename T>
struct SddArgs {
  const T* dy;                  // m × R·b
  const T* x;                   // m × C·b
  const int32_t* row_indices;   // nnz
  const int32_t* col_indices;   // nnz
  T* dw;                        // nnz × b × b
  int64_t m;
  int64_t lddy;                 // R·b
  int64_t ldx;                  // C·b
};

// ---------------------------------------------------------------------------------------------
// Kernels.

// CTA i: block-row r = i mod R, rows [row0, row0 + 128) with row0 = (i / R)·128.
template <typename T, int kBlock, bool kSimt>
__global__ void __launch_bounds__(DdsOperands<T, kBlock>::Tile::kThreads,
                                  DdsOperands<T, kBlock>::Tile::kMinBlocks)
    dds_kernel(const DdsArgs<T> p) {
  using Ops = DdsOperands<T, kBlock>;
  using Tile = typename Ops::Tile;
  constexpr int kSlices = kBlock / Tile::kBK;  // stages per block
  extern __shared__ __align__(128) unsigned char smem[];

  const int r = static_cast<int>(blockIdx.x % static_cast<uint32_t>(p.block_rows));
  const int64_t row0 = static_cast<int64_t>(blockIdx.x / static_cast<uint32_t>(p.block_rows)) *
                       Tile::kBM;
  const int valid_rows = static_cast<int>(p.m - row0 < Tile::kBM ? p.m - row0 : Tile::kBM);
  const int begin = p.row_offsets[r];
  const int n_stages = (p.row_offsets[r + 1] - begin) * kSlices;
  const T* const x_rows = p.x + row0 * p.ldx;

  MathOf<T, kSimt, Tile, typename Ops::A, typename Ops::B> math;
  bs::mainloop<T, typename Ops::A, typename Ops::B>(
      smem, n_stages, math, [&](int s, T* as, T* bs_) {
        const int k = begin + s / kSlices;
        const int k0 = s % kSlices * Tile::kBK;
        const int64_t c = p.col_indices[k];
        bs::copy_tile_async<typename Ops::A, Tile::kThreads>(as, x_rows + c * kBlock + k0, p.ldx,
                                                             valid_rows);
        bs::copy_tile_async<typename Ops::B, Tile::kThreads>(
            bs_, p.values + static_cast<int64_t>(k) * kBlock * kBlock + k0, kBlock, kBlock);
      });
  bs::store_output<T, Tile>(smem, math, p.y + row0 * p.ldy + static_cast<int64_t>(r) * kBlock,
                            p.ldy, valid_rows);
}

// CTA i: block-column c = i mod C, rows [row0, row0 + 128) with row0 = (i / C)·128.
template <typename T, int kBlock, bool kSimt>
__global__ void __launch_bounds__(DsdOperands<T, kBlock>::Tile::kThreads,
                                  DsdOperands<T, kBlock>::Tile::kMinBlocks)
    dsd_kernel(const DsdArgs<T> p) {
  using Ops = DsdOperands<T, kBlock>;
  using Tile = typename Ops::Tile;
  constexpr int kSlices = kBlock / Tile::kBK;
  extern __shared__ __align__(128) unsigned char smem[];

  const int c = static_cast<int>(blockIdx.x % static_cast<uint32_t>(p.block_cols));
  const int64_t row0 = static_cast<int64_t>(blockIdx.x / static_cast<uint32_t>(p.block_cols)) *
                       Tile::kBM;
  const int valid_rows = static_cast<int>(p.m - row0 < Tile::kBM ? p.m - row0 : Tile::kBM);
  const int begin = p.col_offsets[c];
  const int n_stages = (p.col_offsets[c + 1] - begin) * kSlices;
  const T* const dy_rows = p.dy + row0 * p.lddy;

  MathOf<T, kSimt, Tile, typename Ops::A, typename Ops::B> math;
  bs::mainloop<T, typename Ops::A, typename Ops::B>(
      smem, n_stages, math, [&](int s, T* as, T* bs_) {
        const int j = begin + s / kSlices;
        const int k0 = s % kSlices * Tile::kBK;
        const int64_t r = p.t_row_indices[j];
        const int64_t k = p.t_block_ids[j];
        bs::copy_tile_async<typename Ops::A, Tile::kThreads>(as, dy_rows + r * kBlock + k0,
                                                             p.lddy, valid_rows);
        bs::copy_tile_async<typename Ops::B, Tile::kThreads>(
            bs_, p.values + k * kBlock * kBlock + static_cast<int64_t>(k0) * kBlock, kBlock,
            Tile::kBK);
      });
  bs::store_output<T, Tile>(smem, math, p.dx + row0 * p.lddx + static_cast<int64_t>(c) * kBlock,
                            p.lddx, valid_rows);
}

// CTA i: block k = i / (T²), sub-tile t = i mod T² with T = b / S sub-tiles per side: rows
// i0 = (t / T)·S and columns j0 = (t mod T)·S of dW[k].
template <typename T, int kBlock, bool kSimt>
__global__ void __launch_bounds__(SddOperands<T, kBlock>::Tile::kThreads,
                                  SddOperands<T, kBlock>::Tile::kMinBlocks)
    sdd_kernel(const SddArgs<T> p) {
  using Ops = SddOperands<T, kBlock>;
  using Tile = typename Ops::Tile;
  static_assert(Tile::kBM == Tile::kBN && kBlock % Tile::kBM == 0, "square sub-tiles of a block");
  constexpr int kSide = kBlock / Tile::kBM;  // sub-tiles per side
  extern __shared__ __align__(128) unsigned char smem[];

  const int64_t k = blockIdx.x / (kSide * kSide);
  const int t = static_cast<int>(blockIdx.x % (kSide * kSide));
  const int i0 = t / kSide * Tile::kBM;
  const int j0 = t % kSide * Tile::kBN;
  const int64_t r = p.row_indices[k];
  const int64_t c = p.col_indices[k];
  const T* const dy_cols = p.dy + r * kBlock + i0;
  const T* const x_cols = p.x + c * kBlock + j0;
  const int n_stages = static_cast<int>((p.m + Tile::kBK - 1) / Tile::kBK);

  MathOf<T, kSimt, Tile, typename Ops::A, typename Ops::B> math;
  bs::mainloop<T, typename Ops::A, typename Ops::B>(
      smem, n_stages, math, [&](int s, T* as, T* bs_) {
        const int64_t m0 = static_cast<int64_t>(s) * Tile::kBK;
        const int valid = static_cast<int>(p.m - m0 < Tile::kBK ? p.m - m0 : Tile::kBK);
        bs::copy_tile_async<typename Ops::A, Tile::kThreads>(as, dy_cols + m0 * p.lddy, p.lddy,
                                                             valid);
        bs::copy_tile_async<typename Ops::B, Tile::kThreads>(bs_, x_cols + m0 * p.ldx, p.ldx,
                                                             valid);
      });
  bs::store_output<T, Tile>(smem, math, p.dw + k * kBlock * kBlock + i0 * kBlock + j0, kBlock,
                            Tile::kBM);
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <typename T>
struct TypeTag {
  using type = T;
};
template <int B>
using BlockTag = std::integral_constant<int, B>;
template <bool S>
using SimtTag = std::integral_constant<bool, S>;

// f(TypeTag<T>, BlockTag<b>, SimtTag<simt>) for the storage type, the block size and the math:
// fp16 / bf16 → tensor cores; float32 → TF32 tensor cores when allow_tf32, SIMT otherwise.
// Float64 and block sizes other than 16, 32, 64, 128: cudaErrorInvalidValue.
template <class F>
cudaError_t dispatch(ScalarType type, int64_t block, bool allow_tf32, F&& f) {
  auto by_block = [&](auto type_tag, auto simt_tag) -> cudaError_t {
    switch (block) {
      case 16:
        return f(type_tag, BlockTag<16>{}, simt_tag);
      case 32:
        return f(type_tag, BlockTag<32>{}, simt_tag);
      case 64:
        return f(type_tag, BlockTag<64>{}, simt_tag);
      case 128:
        return f(type_tag, BlockTag<128>{}, simt_tag);
      default:
        return cudaErrorInvalidValue;
    }
  };
  switch (type) {
    case ScalarType::Float16:
      return by_block(TypeTag<__half>{}, SimtTag<false>{});
    case ScalarType::BFloat16:
      return by_block(TypeTag<__nv_bfloat16>{}, SimtTag<false>{});
    case ScalarType::Float32:
      return allow_tf32 ? by_block(TypeTag<float>{}, SimtTag<false>{})
                        : by_block(TypeTag<float>{}, SimtTag<true>{});
    default:
      return cudaErrorInvalidValue;
  }
}

int64_t element_size(ScalarType type) { return type == ScalarType::Float32 ? 4 : 2; }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

bool valid_shape(const BlockSparseShape& s) {
  return s.m >= 0 && s.block_rows >= 0 && s.block_cols >= 0 && s.nnz >= 0 &&
         s.block_rows <= INT32_MAX && s.block_cols <= INT32_MAX && s.nnz <= INT32_MAX;
}

// A launch of `ctas` CTAs of kernel with its dynamic shared memory. Above 48 KiB the kernel must
// opt in; the attribute belongs to the current device, so it is set on every such launch (a
// cheap driver call, no synchronization) rather than cached once per process.
template <class Args>
cudaError_t launch(void (*kernel)(Args), const Args& args, int64_t ctas, int threads, int smem,
                   cudaStream_t stream) {
  if (ctas > INT32_MAX) return cudaErrorInvalidValue;
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<uint32_t>(ctas), threads, smem, stream>>>(args);
  return cudaGetLastError();
}

int64_t row_tiles(int64_t m) { return (m + kRowTile - 1) / kRowTile; }

}  // namespace

cudaError_t dds_cuda(ScalarType type, const BlockSparseShape& s, const void* x,
                     const void* values, const int32_t* row_offsets,
                     const int32_t* col_indices, void* y, bool allow_tf32,
                     cudaStream_t stream) {
  if (!valid_shape(s)) return cudaErrorInvalidValue;
  auto go = [&](auto type_tag, auto block_tag, auto simt_tag) -> cudaError_t {
    using T = typename decltype(type_tag)::type;
    constexpr int kBlock = decltype(block_tag)::value;
    constexpr bool kSimt = decltype(simt_tag)::value;
    const int64_t ldy = s.block_rows * kBlock;
    if (s.m == 0 || ldy == 0) return cudaSuccess;  // y is empty
    if (y == nullptr || !aligned16(y)) return cudaErrorInvalidValue;
    if (s.nnz == 0) {  // W == 0
      return cudaMemsetAsync(y, 0, static_cast<size_t>(s.m * ldy * element_size(type)), stream);
    }
    if (x == nullptr || values == nullptr || row_offsets == nullptr || col_indices == nullptr ||
        !aligned16(x) || !aligned16(values)) {
      return cudaErrorInvalidValue;
    }
    using Ops = DdsOperands<T, kBlock>;
    using Tile = typename Ops::Tile;
    const DdsArgs<T> args{static_cast<const T*>(x), static_cast<const T*>(values), row_offsets,
                          col_indices, static_cast<T*>(y), s.m,
                          static_cast<int32_t>(s.block_rows), s.block_cols * kBlock, ldy};
    return launch(dds_kernel<T, kBlock, kSimt>, args, row_tiles(s.m) * s.block_rows,
                  Tile::kThreads, bs::smem_bytes<T, Tile, typename Ops::A, typename Ops::B>(),
                  stream);
  };
  return dispatch(type, s.block, allow_tf32, go);
}

cudaError_t dsd_cuda(ScalarType type, const BlockSparseShape& s, const void* dy,
                     const void* values, const int32_t* col_offsets,
                     const int32_t* t_row_indices, const int32_t* t_block_ids, void* dx,
                     bool allow_tf32, cudaStream_t stream) {
  if (!valid_shape(s)) return cudaErrorInvalidValue;
  auto go = [&](auto type_tag, auto block_tag, auto simt_tag) -> cudaError_t {
    using T = typename decltype(type_tag)::type;
    constexpr int kBlock = decltype(block_tag)::value;
    constexpr bool kSimt = decltype(simt_tag)::value;
    const int64_t lddx = s.block_cols * kBlock;
    if (s.m == 0 || lddx == 0) return cudaSuccess;  // dx is empty
    if (dx == nullptr || !aligned16(dx)) return cudaErrorInvalidValue;
    if (s.nnz == 0) {  // W == 0
      return cudaMemsetAsync(dx, 0, static_cast<size_t>(s.m * lddx * element_size(type)),
                             stream);
    }
    if (dy == nullptr || values == nullptr || col_offsets == nullptr ||
        t_row_indices == nullptr || t_block_ids == nullptr || !aligned16(dy) ||
        !aligned16(values)) {
      return cudaErrorInvalidValue;
    }
    using Ops = DsdOperands<T, kBlock>;
    using Tile = typename Ops::Tile;
    const DsdArgs<T> args{static_cast<const T*>(dy), static_cast<const T*>(values), col_offsets,
                          t_row_indices, t_block_ids, static_cast<T*>(dx), s.m,
                          static_cast<int32_t>(s.block_cols), s.block_rows * kBlock, lddx};
    return launch(dsd_kernel<T, kBlock, kSimt>, args, row_tiles(s.m) * s.block_cols,
                  Tile::kThreads, bs::smem_bytes<T, Tile, typename Ops::A, typename Ops::B>(),
                  stream);
  };
  return dispatch(type, s.block, allow_tf32, go);
}

cudaError_t sdd_cuda(ScalarType type, const BlockSparseShape& s, const void* dy, const void* x,
                     const int32_t* row_indices, const int32_t* col_indices, void* dw,
                     bool allow_tf32, cudaStream_t stream) {
  if (!valid_shape(s)) return cudaErrorInvalidValue;
  auto go = [&](auto type_tag, auto block_tag, auto simt_tag) -> cudaError_t {
    using T = typename decltype(type_tag)::type;
    constexpr int kBlock = decltype(block_tag)::value;
    constexpr bool kSimt = decltype(simt_tag)::value;
    if (s.nnz == 0) return cudaSuccess;  // dW is empty
    if (dw == nullptr || !aligned16(dw)) return cudaErrorInvalidValue;
    if (s.m == 0) {  // an empty reduction: dW = 0
      return cudaMemsetAsync(
          dw, 0, static_cast<size_t>(s.nnz * kBlock * kBlock * element_size(type)), stream);
    }
    if (dy == nullptr || x == nullptr || row_indices == nullptr || col_indices == nullptr ||
        !aligned16(dy) || !aligned16(x)) {
      return cudaErrorInvalidValue;
    }
    using Ops = SddOperands<T, kBlock>;
    using Tile = typename Ops::Tile;
    // Stages are counted in int: m up to 2^31 · BK rows.
    if ((s.m + Tile::kBK - 1) / Tile::kBK > INT32_MAX) return cudaErrorInvalidValue;
    constexpr int kSide = kBlock / Tile::kBM;
    const SddArgs<T> args{static_cast<const T*>(dy), static_cast<const T*>(x), row_indices,
                          col_indices, static_cast<T*>(dw), s.m, s.block_rows * kBlock,
                          s.block_cols * kBlock};
    return launch(sdd_kernel<T, kBlock, kSimt>, args, s.nnz * kSide * kSide, Tile::kThreads,
                  bs::smem_bytes<T, Tile, typename Ops::A, typename Ops::B>(), stream);
  };
  return dispatch(type, s.block, allow_tf32, go);
}

}  // namespace cuda
}  // namespace sparseopt
