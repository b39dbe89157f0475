// CUDA kernels of SparseOpt's BN-skew correction (ALGORITHMS.md §3); the launchers of
// sparseopt/row_scale_cuda.h. The math is that of sparseopt_kernels/reference/skew.py. A tensor
// of rows · L elements is viewed as `rows` rows of L = row_len contiguous elements:
//
//   row coefficients of a bool mask (one byte per element):
//     count_i = #{j : mask[i, j] != 0},   total = Σ_i count_i
//     c_i     = float32(sqrt(double(count_i) · rows / double(total)))    (0 when total == 0)
//   row scale, in place, for x (float32, bf16 or fp16) and an optional bool mask:
//     x[i, j] = x[i, j] · c_i      (float32 product, rounded once to the storage type)
//     x[i, j] = +0                 where mask[i, j] == 0
//
// Row coefficients: three stream-ordered steps on the caller's int64 workspace (one total per
// tensor, then the count of every row of every tensor), no host synchronization, nothing
// allocated:
//   1. cudaMemsetAsync of the workspace: counts and totals are accumulated with atomics.
//   2. row_count_kernel (one launch per ~540 tensors, 256 threads). Rows of L <= 16384 bytes:
//      a group of G = 2^k threads per row with about 64 bytes per thread (G = 1 for L <= 64,
//      256 for L > 8192), 256 / G whole rows per block; the group's count is a plain store.
//      Longer rows: pieces of 64 KiB, one per block, added to the row's count with one atomic.
//      Every block adds its sum to the tensor's total with one atomic. Each range of bytes is
//      read as its 16-byte aligned interior (LDG.128) plus at most 15 + 15 single bytes, whatever
//      the alignment of the tensor and of L; a 32-bit word's non-zero bytes are counted with
//      three integer ops and a popc. Per block at most 64 KiB, so the block's sums fit 32 bits.
//   3. row_coefficient_kernel (multi-tensor over rows): c_i from count_i, rows and total in
//      double with explicitly IEEE-rounded operations (__dmul_rn, __ddiv_rn, __dsqrt_rn, then
//      __double2float_rn): the same correctly rounded steps as the float64 reference, so the
//      coefficients agree bit for bit. Counts are exact integers (< 2^53) in every backend.
//   Traffic: the masks once (1 B/element) plus 16 B per row; the mask update is rare anyway.
//
// Row scale: the multi-tensor launcher of multi_tensor.cuh (chunks of 65536 elements, 512
// threads). Each thread moves 16 bytes of x per iteration (4 float32 or 8 bf16/fp16 elements,
// LDG.128/STG.128 when x is 16-byte aligned and the mask is aligned to the vector's bytes;
// scalar accesses otherwise and for the tail). Traffic: x read + written (+ 1 B/element of
// mask); vectors that are entirely masked out are not read, only zeroed. The row of element e
// is e / L: each block divides its first element once in 64 bits; a vector at chunk offset
// `off` then needs one 32-bit multiply-shift by a per-block magic number (see RowSplit), and
// its scales are one float32 load (two when a row ends inside the vector; one per element for
// rows shorter than the vector) that hits L1: a warp's vectors span 128-256 elements, i.e. one
// or a few rows.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "element.cuh"
#include "multi_tensor.cuh"
#include "row_split.cuh"
#include "sparseopt/row_scale_cuda.h"

namespace sparseopt {
namespace cuda {
namespace {

using mt::ChunkRef;
using mt::kBlockThreads;

// ---------------------------------------------------------------------------------------------
// Row coefficients: per-row counts.

constexpr int kCountThreads = 256;
constexpr int kCountWarps = kCountThreads / 32;
constexpr int kCountLog2 = 8;                 // log2(kCountThreads)
constexpr int64_t kBytesPerThread = 64;       // short rows: ~4 16-byte loads per thread
constexpr int64_t kLongRow = kCountThreads * kBytesPerThread;  // longer rows are cut in pieces
constexpr int64_t kPieceBytes = 65536;        // one block per piece of a long row
static_assert(kCountThreads == 1 << kCountLog2, "kCountLog2");

// How a tensor is cut into count blocks: short rows (pieces == 0) give groups of 2^group_log2
// threads per row and 256 >> group_log2 rows per block; long rows give `pieces` blocks per row.
struct CountLayout {
  int32_t group_log2;
  uint32_t pieces;
  int64_t blocks;  // -1: too many blocks for one launch
};

SPARSEOPT_HD CountLayout count_layout(int64_t rows, int64_t row_len) {
  CountLayout l{0, 0, 0};
  if (rows == 0 || row_len == 0) return l;  // nothing to count: the memset wrote the zeros
  if (row_len > kLongRow) {
    const int64_t pieces = mt::num_chunks(row_len, kPieceBytes);
    if (pieces > mt::kMaxBlocksPerLaunch / rows) {
      l.blocks = -1;
      return l;
    }
    l.group_log2 = kCountLog2;
    l.pieces = static_cast<uint32_t>(pieces);  // >= 1, < 2^31
    l.blocks = rows * pieces;
    return l;
  }
  const int64_t need = mt::num_chunks(row_len, kBytesPerThread);  // 1..256 threads
  while ((int64_t{1} << l.group_log2) < need) ++l.group_log2;
  const int64_t blocks = mt::num_chunks(rows, kCountThreads >> l.group_log2);
  l.blocks = blocks <= mt::kMaxBlocksPerLaunch ? blocks : -1;
  return l;
}

// Pointer lists {mask, counts, total}; batch.numels holds each tensor's number of count blocks
// (the launcher runs with chunks of one "element", i.e. one block each).
constexpr int kCountCap = mt::batch_capacity<3, false, 24>(0);
struct CountArgs {
  mt::TensorBatch<3, kCountCap, false> batch;
  int64_t rows[kCountCap];
  int64_t row_lens[kCountCap];
  uint32_t pieces[kCountCap];
  int32_t group_log2[kCountCap];
};
static_assert(sizeof(CountArgs) <= mt::kMaxKernelParamBytes, "count arguments too large");
static_assert(kCountCap >= 500, "unexpected capacity");

// Number of non-zero bytes of a 32-bit word: bit 7 of ((b & 0x7f) + 0x7f) | b is set iff b != 0
// (no carry leaves a byte: 0x7f + 0x7f < 0x100).
SPARSEOPT_HD uint32_t nonzero_bytes(uint32_t w) {
  const uint32_t high = (((w & 0x7f7f7f7fu) + 0x7f7f7f7fu) | w) & 0x80808080u;
#ifdef __CUDA_ARCH__
  return static_cast<uint32_t>(__popc(high));
#else
  return static_cast<uint32_t>(__builtin_popcount(high));
#endif
}

// Non-zero bytes among p[0, len) seen by thread j of a group of g: the 16-byte aligned interior
// as uint4 loads (consecutive threads on consecutive vectors), the unaligned head and tail
// (< 16 bytes each) as single bytes. len <= 65536, so 32-bit counts and offsets.
SPARSEOPT_HD uint32_t count_nonzero(const uint8_t* p, int len, int j, int g) {
  const int to_aligned = static_cast<int>((16u - (reinterpret_cast<uintptr_t>(p) & 15u)) & 15u);
  const int head = len < to_aligned ? len : to_aligned;
  const int n_vec = (len - head) >> 4;
  uint32_t count = 0;
  for (int i = j; i < head; i += g) count += p[i] != 0 ? 1u : 0u;
  const uint4* v = reinterpret_cast<const uint4*>(p + head);
#ifdef __CUDA_ARCH__
#pragma unroll 4
#endif
  for (int i = j; i < n_vec; i += g) {
    const uint4 w = v[i];
    count += nonzero_bytes(w.x) + nonzero_bytes(w.y) + nonzero_bytes(w.z) + nonzero_bytes(w.w);
  }
  for (int i = head + (n_vec << 4) + j; i < len; i += g) count += p[i] != 0 ? 1u : 0u;
  return count;
}

// What thread tid of count block `chunk` (of its tensor) counts: bytes [begin, begin + len) of
// row `row`, as lane j = tid mod 2^group_log2 of its group. Short rows: group tid >> group_log2
// of the block owns row chunk · (256 >> group_log2) + group (none past the last row: inactive,
// len 0). Long rows: block chunk is piece chunk mod pieces of row chunk / pieces.
struct CountRange {
  int64_t row;
  int64_t begin;
  int len;
  int group_log2;
  bool active;
};

SPARSEOPT_HD CountRange count_range(uint32_t chunk, int tid, int64_t rows, int64_t row_len,
                                    uint32_t pieces, int32_t group_log2) {
  CountRange r;
  r.begin = 0;
  if (pieces == 0) {
    r.group_log2 = group_log2;
    r.row = static_cast<int64_t>(chunk) * (kCountThreads >> group_log2) + (tid >> group_log2);
    r.active = r.row < rows;
    r.len = r.active ? static_cast<int>(row_len) : 0;  // short rows: L <= 16384
  } else {
    const uint32_t row = chunk / pieces;
    r.group_log2 = kCountLog2;
    r.row = row;
    r.begin = static_cast<int64_t>(chunk - row * pieces) * kPieceBytes;
    const int64_t rest = row_len - r.begin;
    r.len = static_cast<int>(rest < kPieceBytes ? rest : kPieceBytes);
    r.active = true;
  }
  return r;
}

__global__ void __launch_bounds__(kCountThreads) row_count_kernel(
    const __grid_constant__ CountArgs args) {
  __shared__ uint32_t warp_sums[kCountWarps];
  const ChunkRef ref = mt::locate_chunk(args.batch, blockIdx.x, 1);
  const int t = ref.tensor;
  const uint8_t* const mask = static_cast<const uint8_t*>(args.batch.ptrs[0][t]);
  unsigned long long* const counts = static_cast<unsigned long long*>(args.batch.ptrs[1][t]);
  unsigned long long* const total = static_cast<unsigned long long*>(args.batch.ptrs[2][t]);
  const int64_t row_len = args.row_lens[t];
  const uint32_t pieces = args.pieces[t];
  const int tid = static_cast<int>(threadIdx.x);
  const CountRange r =
      count_range(ref.chunk, tid, args.rows[t], row_len, pieces, args.group_log2[t]);
  const int64_t row = r.row;
  const bool active = r.active;
  const int group = 1 << r.group_log2;
  const int j = tid & (group - 1);
  const uint8_t* const p = active ? mask + row * row_len + r.begin : mask;
  const uint32_t count = count_nonzero(p, r.len, j, group);

  // The group's sum (lanes of one group share a warp when group <= 32), then the warp's sum.
  // Every lane of every warp takes part (inactive lanes with 0), so the shuffles are converged.
  const int lanes = group < 32 ? group : 32;
  uint32_t group_sum = count;
  for (int d = 1; d < lanes; d <<= 1) group_sum += __shfl_xor_sync(0xffffffffu, group_sum, d);
  uint32_t warp_sum = group_sum;
  for (int d = lanes; d < 32; d <<= 1) warp_sum += __shfl_xor_sync(0xffffffffu, warp_sum, d);
  if ((tid & 31) == 0) warp_sums[tid >> 5] = warp_sum;
  // A short row belongs to one group: its count is stored, not added (the memset zeroed it).
  if (pieces == 0 && group <= 32 && j == 0 && active) counts[row] = group_sum;
  __syncthreads();
  if (pieces == 0 && group > 32 && j == 0 && active) {
    uint32_t row_sum = 0;
    for (int w = tid >> 5; w < (tid + group) >> 5; ++w) row_sum += warp_sums[w];
    counts[row] = row_sum;
  }
  if (tid == 0) {
    uint32_t block_sum = 0;
#pragma unroll
    for (int w = 0; w < kCountWarps; ++w) block_sum += warp_sums[w];
    if (block_sum != 0) {
      if (pieces != 0) atomicAdd(counts + row, static_cast<unsigned long long>(block_sum));
      atomicAdd(total, static_cast<unsigned long long>(block_sum));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Row coefficients: c_i from the counts. Pointer lists {counts, total, coefficients};
// batch.numels holds the rows.

constexpr int kCoefCap = mt::batch_capacity<3, false>(0);
struct CoefArgs {
  mt::TensorBatch<3, kCoefCap, false> batch;
};
static_assert(sizeof(CoefArgs) <= mt::kMaxKernelParamBytes, "coefficient arguments too large");

__global__ void __launch_bounds__(kBlockThreads) row_coefficient_kernel(
    const __grid_constant__ CoefArgs args) {
  const ChunkRef ref = mt::locate_chunk(args.batch, blockIdx.x);
  const int t = ref.tensor;
  const int64_t* const counts = static_cast<const int64_t*>(args.batch.ptrs[0][t]) + ref.begin;
  const int64_t total = *static_cast<const int64_t*>(args.batch.ptrs[1][t]);
  float* const out = static_cast<float*>(args.batch.ptrs[2][t]) + ref.begin;
  // The reference: sqrt(counts * rows / total) in float64 (rows a Python int, exact in double).
  const double rows = static_cast<double>(args.batch.numels[t]);
  const double total_d = static_cast<double>(total);
  for (int i = static_cast<int>(threadIdx.x); i < ref.len; i += kBlockThreads) {
    float c = 0.0f;
    if (total > 0) {
      const double q = __ddiv_rn(__dmul_rn(static_cast<double>(counts[i]), rows), total_d);
      c = __double2float_rn(__dsqrt_rn(q));
    }
    out[i] = c;
  }
}

// ---------------------------------------------------------------------------------------------
// Row scale.

// Rows of a chunk: see row_split.cuh.


template <int N, typename T>
__device__ __forceinline__ void load_raw(const T* p, T (&raw)[N]) {
  if constexpr (N == 1) {
    raw[0] = *p;
  } else {
    static_assert(N * sizeof(T) == 16, "vector accesses are 16 bytes");
    *reinterpret_cast<uint4*>(raw) = *reinterpret_cast<const uint4*>(p);
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_raw(T* p, const T (&raw)[N]) {
  if constexpr (N == 1) {
    *p = raw[0];
  } else {
    static_assert(N * sizeof(T) == 16, "vector accesses are 16 bytes");
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(raw);
  }
}

template <int N>
using Width = std::integral_constant<int, N>;

// Pointer lists {x, scales} (+ masks); the row length of every tensor next to the table.
template <bool kMasked>
constexpr int kScaleCap = mt::batch_capacity<2 + kMasked, false, 8>(0);
template <bool kMasked>
struct ScaleArgsT {
  mt::TensorBatch<2 + kMasked, kScaleCap<kMasked>, false> batch;
  int64_t row_lens[kScaleCap<kMasked>];
};
static_assert(sizeof(ScaleArgsT<false>) <= mt::kMaxKernelParamBytes, "scale arguments too large");
static_assert(sizeof(ScaleArgsT<true>) <= mt::kMaxKernelParamBytes, "scale arguments too large");

template <typename T, bool kMasked>
__global__ void __launch_bounds__(kBlockThreads) row_scale_kernel(
    const __grid_constant__ ScaleArgsT<kMasked> args) {
  const ChunkRef ref = mt::locate_chunk(args.batch, blockIdx.x);
  const int t = ref.tensor;
  T* const x = static_cast<T*>(args.batch.ptrs[0][t]) + ref.begin;
  const float* const c = static_cast<const float*>(args.batch.ptrs[1][t]);
  const RowSplit split = row_split(c, ref.begin, args.row_lens[t]);
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  bool vectorized = mt::aligned16(x);
  [[maybe_unused]] const uint8_t* mask = nullptr;
  if constexpr (kMasked) {
    mask = static_cast<const uint8_t*>(args.batch.ptrs[2][t]) + ref.begin;
    vectorized = vectorized && (reinterpret_cast<uintptr_t>(mask) % kVec) == 0;
  }
  auto apply = [&](auto width, int off) {
    constexpr int N = decltype(width)::value;
    alignas(16) T v[N];
    uint32_t bits = (1u << N) - 1u;
    if constexpr (kMasked) {
      bits = bool_mask_bits<N>(mask, off);
      if (bits == 0) {  // all masked out: +0 everywhere, x need not be read
#pragma unroll
        for (int k = 0; k < N; ++k) v[k] = from_float<T>(0.0f);
        store_raw<N>(x + off, v);
        return;
      }
    }
    load_raw<N>(x + off, v);
    float sc[N];
    row_scales_of<N>(split, off, sc);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float y = __fmul_rn(to_float(v[k]), sc[k]);
      v[k] = from_float<T>(((bits >> k) & 1u) != 0 ? y : 0.0f);
    }
    store_raw<N>(x + off, v);
  };
  mt::for_each_in_chunk<kVec>(
      ref.len, vectorized, threadIdx.x, kBlockThreads,
      [&](int off) { apply(Width<kVec>{}, off); }, [&](int off) { apply(Width<1>{}, off); });
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <typename T>
struct TypeTag {
  using type = T;
};

// rows, row lengths and their product (numels), checked: non-negative, no overflow, every
// tensor within one launch's grid (chunks of kChunkElems). n_tensors > 0.
bool row_shapes(int64_t n_tensors, const int64_t* rows, const int64_t* row_lens,
                std::vector<int64_t>& numels) {
  if (rows == nullptr || row_lens == nullptr) return false;
  numels.resize(static_cast<size_t>(n_tensors));
  for (int64_t t = 0; t < n_tensors; ++t) {
    const int64_t r = rows[t];
    const int64_t l = row_lens[t];
    if (r < 0 || l < 0) return false;
    if (r > 0 && l > INT64_MAX / r) return false;
    numels[t] = r * l;
    if (mt::num_chunks(numels[t]) > mt::kMaxBlocksPerLaunch ||
        mt::num_chunks(r) > mt::kMaxBlocksPerLaunch) {
      return false;
    }
  }
  return true;
}

template <class Args>
cudaError_t launch(void (*kernel)(Args), const Args& args, uint32_t blocks, int threads,
                   cudaStream_t stream) {
  kernel<<<blocks, threads, 0, stream>>>(args);
  return cudaGetLastError();
}

template <typename T, bool kMasked>
cudaError_t launch_row_scale(int64_t n_tensors, void* const* tensors, const float* const* scales,
                             const uint8_t* const* masks, const int64_t* row_lens,
                             const int64_t* numels, cudaStream_t stream) {
  using Args = ScaleArgsT<kMasked>;
  Args args;
  auto fill = [&](int slot, int64_t t) {
    args.batch.ptrs[0][slot] = tensors[t];
    args.batch.ptrs[1][slot] = const_cast<float*>(scales[t]);
    if constexpr (kMasked) args.batch.ptrs[2][slot] = const_cast<uint8_t*>(masks[t]);
    args.row_lens[slot] = row_lens[t];
  };
  return mt::pack_and_launch(args, n_tensors, numels, fill, [&](const Args& a, uint32_t blocks) {
    return launch(row_scale_kernel<T, kMasked>, a, blocks, kBlockThreads, stream);
  });
}

}  // namespace

int64_t row_coefficients_workspace(int64_t n_tensors, const int64_t* rows) {
  if (n_tensors <= 0 || rows == nullptr) return 0;
  int64_t size = n_tensors;
  for (int64_t t = 0; t < n_tensors; ++t) size += rows[t] > 0 ? rows[t] : 0;
  return size;
}

cudaError_t row_coefficients_cuda(int64_t n_tensors, const uint8_t* const* masks,
                                  const int64_t* rows, const int64_t* row_lens,
                                  float* const* coefficients, int64_t* workspace,
                                  cudaStream_t stream) {
  if (n_tensors < 0) return cudaErrorInvalidValue;
  if (n_tensors == 0) return cudaSuccess;
  std::vector<int64_t> numels;
  if (masks == nullptr || coefficients == nullptr || workspace == nullptr ||
      !row_shapes(n_tensors, rows, row_lens, numels)) {
    return cudaErrorInvalidValue;
  }
  std::vector<int64_t> count_blocks(static_cast<size_t>(n_tensors));
  std::vector<CountLayout> layouts(static_cast<size_t>(n_tensors));
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (numels[t] > 0 && masks[t] == nullptr) return cudaErrorInvalidValue;
    if (rows[t] > 0 && coefficients[t] == nullptr) return cudaErrorInvalidValue;
    layouts[t] = count_layout(rows[t], row_lens[t]);
    if (layouts[t].blocks < 0) return cudaErrorInvalidValue;
    count_blocks[t] = layouts[t].blocks;
  }
  // Workspace: totals[n_tensors], then the counts of tensor 0, 1, ...
  const int64_t ws = row_coefficients_workspace(n_tensors, rows);
  cudaError_t err = cudaMemsetAsync(workspace, 0, static_cast<size_t>(ws) * sizeof(int64_t),
                                    stream);
  if (err != cudaSuccess) return err;
  std::vector<int64_t> count_offset(static_cast<size_t>(n_tensors));
  int64_t offset = n_tensors;
  for (int64_t t = 0; t < n_tensors; ++t) {
    count_offset[t] = offset;
    offset += rows[t];
  }

  CountArgs cargs;
  auto fill_count = [&](int slot, int64_t t) {
    cargs.batch.ptrs[0][slot] = const_cast<uint8_t*>(masks[t]);
    cargs.batch.ptrs[1][slot] = workspace + count_offset[t];
    cargs.batch.ptrs[2][slot] = workspace + t;
    cargs.rows[slot] = rows[t];
    cargs.row_lens[slot] = row_lens[t];
    cargs.pieces[slot] = layouts[t].pieces;
    cargs.group_log2[slot] = layouts[t].group_log2;
  };
  err = mt::pack_and_launch(
      cargs, n_tensors, count_blocks.data(), fill_count,
      [&](const CountArgs& a, uint32_t blocks) {
        return launch(row_count_kernel, a, blocks, kCountThreads, stream);
      },
      1);
  if (err != cudaSuccess) return err;

  CoefArgs fargs;
  auto fill_coef = [&](int slot, int64_t t) {
    fargs.batch.ptrs[0][slot] = workspace + count_offset[t];
    fargs.batch.ptrs[1][slot] = workspace + t;
    fargs.batch.ptrs[2][slot] = coefficients[t];
  };
  return mt::pack_and_launch(fargs, n_tensors, rows, fill_coef,
                             [&](const CoefArgs& a, uint32_t blocks) {
                               return launch(row_coefficient_kernel, a, blocks, kBlockThreads,
                                             stream);
                             });
}

cudaError_t row_scale_cuda(ScalarType type, int64_t n_tensors, void* const* tensors,
                           const float* const* scales, const uint8_t* const* masks,
                           const int64_t* rows, const int64_t* row_lens, cudaStream_t stream) {
  if (n_tensors < 0) return cudaErrorInvalidValue;
  if (type != ScalarType::Float32 && type != ScalarType::BFloat16 &&
      type != ScalarType::Float16) {
    return cudaErrorInvalidValue;
  }
  if (n_tensors == 0) return cudaSuccess;
  std::vector<int64_t> numels;
  if (tensors == nullptr || scales == nullptr ||
      !row_shapes(n_tensors, rows, row_lens, numels)) {
    return cudaErrorInvalidValue;
  }
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (numels[t] == 0) continue;
    if (tensors[t] == nullptr || scales[t] == nullptr ||
        (masks != nullptr && masks[t] == nullptr)) {
      return cudaErrorInvalidValue;
    }
  }
  auto go = [&](auto tag) {
    using T = typename decltype(tag)::type;
    return masks != nullptr
               ? launch_row_scale<T, true>(n_tensors, tensors, scales, masks, row_lens,
                                           numels.data(), stream)
               : launch_row_scale<T, false>(n_tensors, tensors, scales, masks, row_lens,
                                            numels.data(), stream);
  };
  switch (type) {
    case ScalarType::Float32:
      return go(TypeTag<float>{});
    case ScalarType::BFloat16:
      return go(TypeTag<__nv_bfloat16>{});
    case ScalarType::Float16:
      return go(TypeTag<__half>{});
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace sparseopt
