// Building blocks of the block-sparse matmul kernels (block_sparse.cu): a CTA computes one
// BM × BN output tile C = Σ_s A_s · B_s, where every stage s contributes an A slice (BM × BK) and
// a B slice (BK × BN) that it copies from global memory into shared memory. The pieces:
//
//   Tiling        the CTA tile, its warps (tensor cores) or per-thread micro-tiles (SIMT).
//   SmemOperand   how an operand slice sits in shared memory: K-major (the M or N index selects
//                 a row of BK contiguous K elements) or MN-major (the K index selects a row of
//                 BM or BN contiguous elements). Either is the plain copy of a row-major global
//                 tile, so no operand is ever transposed on the way in; the math reads the
//                 layout it is given (wmma row_major / col_major).
//   copy_tile_async  16-byte cp.async copies of such a tile, zero-filling the rows past the end
//                 of the matrix (the last row tile of x / dy).
//   WmmaMath      nvcuda::wmma 16×16×16 (fp16/bf16) or 16×16×8 TF32 fragments, float32
//                 accumulators.
//   SimtMath      exact float32 FMA on TM × TN register micro-tiles (float32 without TF32).
//   mainloop      the kStages-deep cp.async pipeline over the stages.
//   store_output  accumulators → float32 tile in shared memory → rounded once to T, written
//                 with 16-byte stores (rows past the end of the matrix are skipped).
//
// Needs sm_80+ (cp.async, bf16 tensor cores). Every global pointer must be 16-byte aligned, and
// the row strides and column offsets are multiples of b ≥ 16 elements, so every 16-byte vector
// of a tile is aligned.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "element.cuh"

namespace sparseopt {
namespace cuda {
namespace bs {

namespace wmma = nvcuda::wmma;

// Three shared-memory buffers: while the math consumes one stage, the copies of the next two are
// in flight. The usual depth for cp.async GEMMs on A100/H100; unmeasured here.
constexpr int kStages = 3;

constexpr int round_up(int x, int to) { return (x + to - 1) / to * to; }

// ---------------------------------------------------------------------------------------------
// Tiling.

// A CTA computes a BM × BN output tile over K slices of BK per stage. Tensor cores: kWarpsM ×
// kWarpsN warps, each owning a (BM / kWarpsM) × (BN / kWarpsN) sub-tile of 16 × 16 fragments.
// SIMT: the same threads, each owning a TM × TN micro-tile whose rows are strided by BM / TM and
// columns by BN / TN (so neighbouring lanes read neighbouring shared-memory columns).
template <int BM, int BN, int BK, int WarpsM, int WarpsN, int TM, int TN>
struct Tiling {
  static constexpr int kBM = BM;
  static constexpr int kBN = BN;
  static constexpr int kBK = BK;
  static constexpr int kWarpsM = WarpsM;
  static constexpr int kWarpsN = WarpsN;
  static constexpr int kThreads = 32 * WarpsM * WarpsN;
  // __launch_bounds__ occupancy hint: 256-thread CTAs ask for 2 per SM, i.e. at most 128
  // registers per thread. Without it the b = 128 kernels took 130-190 registers (one CTA per
  // SM); with it they fit 128 without spilling (-Xptxas=-v). The same cap on the 128-thread
  // kernels (4 per SM) made the TF32 b = 64 ones spill, so they get no hint (they use <= 168).
  static constexpr int kMinBlocks = kThreads >= 256 ? 2 : 1;
  static constexpr int kWarpTileM = BM / WarpsM;
  static constexpr int kWarpTileN = BN / WarpsN;
  static constexpr int kTM = TM;
  static constexpr int kTN = TN;
  static constexpr int kThreadsM = BM / TM;  // SIMT: threads along M (micro-tile row stride)
  static constexpr int kThreadsN = BN / TN;  // SIMT: threads along N (micro-tile column stride)
  // Row stride of the float32 output tile in shared memory: +4 floats keeps rows 16-byte aligned
  // (float4 reads, wmma stores) and makes the stride an odd multiple of 4 words (see
  // SmemOperand).
  static constexpr int kLdC = BN + 4;

  static_assert(BM % 16 == 0 && BN % 16 == 0 && BK % 16 == 0, "tiles are made of 16 × 16 pieces");
  static_assert(kWarpTileM % 16 == 0 && kWarpTileN % 16 == 0, "warp tiles are whole fragments");
  static_assert(BM % TM == 0 && BN % TN == 0 && kThreadsM * kThreadsN == kThreads,
                "SIMT micro-tiles cover the CTA tile once");
};

// ---------------------------------------------------------------------------------------------
// Operand slices in shared memory.

// The MN × BK slice of an operand (MN: the BM rows of A, or the BN columns of B). K-major: MN rows
// of BK contiguous elements; MN-major: BK rows of MN contiguous elements. Either way it is a
// kRows × kCols row-major copy of a global tile, each row padded by 16 bytes. Every row stride is
// then an odd multiple of 16 bytes (12, 20, 36, 68 or 132 words), so 8 consecutive rows start in
// the 8 distinct groups of 4 banks: the 8 rows × 16 bytes that a wmma load phase reads at once
// are conflict-free.
template <typename T, int MN, int BK, bool KMajor>
struct SmemOperand {
  static constexpr bool kKMajor = KMajor;
  static constexpr int kPad = 16 / static_cast<int>(sizeof(T));
  static constexpr int kRows = KMajor ? MN : BK;
  static constexpr int kCols = KMajor ? BK : MN;
  static constexpr int kLd = kCols + kPad;
  static constexpr int kElems = kRows * kLd;
  // wmma needs 32-byte aligned fragment pointers: kRows is a multiple of 16 and a row is a
  // multiple of 16 bytes, so every operand (hence the next one after it) is 256-byte aligned.
  static_assert(kRows % 16 == 0 && (kLd * sizeof(T)) % 16 == 0, "alignment of operand slices");
  static_assert((kLd * sizeof(T) / 16) % 2 == 1, "row stride: an odd number of 16-byte units");

  // Element (mn, k) of the slice.
  __device__ __forceinline__ static int offset(int mn, int k) {
    return KMajor ? mn * kLd + k : k * kLd + mn;
  }
};

// The shared memory of one pipeline stage: the A slice, then the B slice.
template <typename T, class OpA, class OpB>
struct StageLayout {
  static constexpr int kBytes =
      round_up((OpA::kElems + OpB::kElems) * static_cast<int>(sizeof(T)), 128);
};

// Dynamic shared memory of a kernel: the pipeline's buffers, reused by the float32 output tile.
template <typename T, class Tile, class OpA, class OpB>
constexpr int smem_bytes() {
  constexpr int pipeline = kStages * StageLayout<T, OpA, OpB>::kBytes;
  constexpr int output = Tile::kBM * Tile::kLdC * static_cast<int>(sizeof(float));
  return pipeline > output ? pipeline : output;
}

// ---------------------------------------------------------------------------------------------
// cp.async.

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared memory, asynchronously (.cg: through L2 only, the tiles are
// reused from shared memory, not L1). !valid writes 16 zero bytes and reads nothing (src-size 0).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)),
               "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copy Op::kRows × Op::kCols elements of a row-major global matrix (row stride ld elements,
// starting at src) into the slice dst; rows >= valid_rows become zeros (src must still point
// into the matrix: row 0 is always valid). Thread t takes the 16-byte vectors t, t + kThreads,
// ...: consecutive threads read consecutive vectors of a row (coalesced).
template <class Op, int kThreads, typename T>
__device__ __forceinline__ void copy_tile_async(T* dst, const T* src, int64_t ld, int valid_rows) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  constexpr int kVecsPerRow = Op::kCols / kVec;
  constexpr int kVecs = Op::kRows * kVecsPerRow;
  static_assert(Op::kCols % kVec == 0, "rows are whole vectors");
#pragma unroll
  for (int i = 0; i < (kVecs + kThreads - 1) / kThreads; ++i) {
    const int v = i * kThreads + static_cast<int>(threadIdx.x);
    if (kVecs % kThreads == 0 || v < kVecs) {
      const int row = v / kVecsPerRow;
      const int col = (v % kVecsPerRow) * kVec;
      const bool valid = row < valid_rows;
      cp_async_16(dst + row * Op::kLd + col, valid ? src + row * ld + col : src, valid);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Math: tensor cores.

template <typename T>
struct WmmaTypes {  // fp16 / bf16: 16 × 16 × 16
  using Elem = T;
  static constexpr int kK = 16;
};
template <>
struct WmmaTypes<float> {  // float32 storage, TF32 products: 16 × 16 × 8
  using Elem = wmma::precision::tf32;
  static constexpr int kK = 8;
};

// The warp's (kWarpTileM × kWarpTileN) share of the CTA tile, as 16 × 16 float32 accumulators.
// Warp w owns rows (w / kWarpsN)·kWarpTileM … and columns (w % kWarpsN)·kWarpTileN ….
template <typename T, class Tile, class OpA, class OpB>
struct WmmaMath {
  using Types = WmmaTypes<T>;
  static constexpr int kK = Types::kK;
  static constexpr int kFragsM = Tile::kWarpTileM / 16;
  static constexpr int kFragsN = Tile::kWarpTileN / 16;
  // A K-major A slice is A row-major; a K-major B slice (B[n][k]) is B column-major.
  using LayoutA = std::conditional_t<OpA::kKMajor, wmma::row_major, wmma::col_major>;
  using LayoutB = std::conditional_t<OpB::kKMajor, wmma::col_major, wmma::row_major>;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, kK, typename Types::Elem, LayoutA>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, kK, typename Types::Elem, LayoutB>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, kK, float>;
  static_assert(Tile::kBK % kK == 0, "whole mma steps per stage");

  FragC acc[kFragsM][kFragsN];
  int warp_m;  // first row of the warp's sub-tile
  int warp_n;  // first column

  __device__ __forceinline__ WmmaMath() {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    warp_m = warp / Tile::kWarpsN * Tile::kWarpTileM;
    warp_n = warp % Tile::kWarpsN * Tile::kWarpTileN;
#pragma unroll
    for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    }
  }

  // TF32: the fragments hold float32 values; round them to TF32 (nearest) as the wmma API asks.
  template <class Frag>
  __device__ __forceinline__ static void to_tf32(Frag& f) {
    if constexpr (std::is_same_v<T, float>) {
#pragma unroll
      for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
    }
  }

  // acc += A slice · B slice (one stage).
  __device__ __forceinline__ void step(const T* as, const T* bs) {
#pragma unroll
    for (int k = 0; k < Tile::kBK; k += kK) {
      FragA a[kFragsM];
      FragB b[kFragsN];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        wmma::load_matrix_sync(a[i], as + OpA::offset(warp_m + 16 * i, k), OpA::kLd);
        to_tf32(a[i]);
      }
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) {
        wmma::load_matrix_sync(b[j], bs + OpB::offset(warp_n + 16 * j, k), OpB::kLd);
        to_tf32(b[j]);
      }
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
  }

  // The accumulators into the float32 tile cs (BM × BN, row stride Tile::kLdC).
  __device__ __forceinline__ void store(float* cs) const {
#pragma unroll
    for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) {
        wmma::store_matrix_sync(cs + (warp_m + 16 * i) * Tile::kLdC + warp_n + 16 * j, acc[i][j],
                                Tile::kLdC, wmma::mem_row_major);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Math: exact float32 FMA (SIMT).

// Thread t owns rows tm + i·kThreadsM (i < TM) and columns tn + j·kThreadsN (j < TN) of the CTA
// tile, tm = t / kThreadsN, tn = t % kThreadsN. Per K index it reads TM + TN values from shared
// memory and does TM·TN FMAs. Lanes of a warp share few rows (A reads are broadcasts) and take
// consecutive columns: conflict-free for MN-major B; a K-major B (dds) puts 16 lanes on rows
// 20 words apart when kThreadsN = 16, a 2-way bank conflict (accepted: this is the exact
// float32 path, not the fast one).
template <class Tile, class OpA, class OpB>
struct SimtMath {
  static constexpr int kTM = Tile::kTM;
  static constexpr int kTN = Tile::kTN;

  float acc[kTM][kTN];
  int tm;
  int tn;

  __device__ __forceinline__ SimtMath() {
    tm = static_cast<int>(threadIdx.x) / Tile::kThreadsN;
    tn = static_cast<int>(threadIdx.x) % Tile::kThreadsN;
#pragma unroll
    for (int i = 0; i < kTM; ++i) {
#pragma unroll
      for (int j = 0; j < kTN; ++j) acc[i][j] = 0.0f;
    }
  }

  __device__ __forceinline__ void step(const float* as, const float* bs) {
#pragma unroll 4
    for (int k = 0; k < Tile::kBK; ++k) {
      float a[kTM];
      float b[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) a[i] = as[OpA::offset(tm + i * Tile::kThreadsM, k)];
#pragma unroll
      for (int j = 0; j < kTN; ++j) b[j] = bs[OpB::offset(tn + j * Tile::kThreadsN, k)];
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] = __fmaf_rn(a[i], b[j], acc[i][j]);
      }
    }
  }

  __device__ __forceinline__ void store(float* cs) const {
#pragma unroll
    for (int i = 0; i < kTM; ++i) {
#pragma unroll
      for (int j = 0; j < kTN; ++j) {
        cs[(tm + i * Tile::kThreadsM) * Tile::kLdC + tn + j * Tile::kThreadsN] = acc[i][j];
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Main loop and output.

// acc += Σ_{s < n_stages} A_s · B_s, software-pipelined over kStages buffers. load(s, as, bs)
// issues (without waiting) the cp.async copies of stage s into the slices as, bs. Every thread
// commits one group per prologue step and per iteration (possibly empty), so at iteration s
// exactly s + kStages − 1 groups are committed and wait_group<kStages − 2> means stages 0 … s have
// landed; the barrier after it publishes them to all threads and also certifies that every warp
// finished the math of stage s − 1, whose buffer ((s − 1) mod kStages = (s + kStages − 1) mod
// kStages) is the one refilled next. Returns with no copy in flight and shared memory free.
template <typename T, class OpA, class OpB, class Math, class Load>
__device__ __forceinline__ void mainloop(unsigned char* smem, int n_stages, Math& math,
                                         Load&& load) {
  constexpr int kStageBytes = StageLayout<T, OpA, OpB>::kBytes;
  auto a_slice = [smem](int buf) { return reinterpret_cast<T*>(smem + buf * kStageBytes); };
  auto b_slice = [smem](int buf) {
    return reinterpret_cast<T*>(smem + buf * kStageBytes) + OpA::kElems;
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_stages) load(s, a_slice(s), b_slice(s));
    cp_async_commit();
  }
  for (int s = 0; s < n_stages; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = s + kStages - 1;
    if (next < n_stages) load(next, a_slice(next % kStages), b_slice(next % kStages));
    cp_async_commit();
    math.step(a_slice(s % kStages), b_slice(s % kStages));
  }
  cp_async_wait<0>();
  __syncthreads();
}

// The CTA's BM × BN result → dst (row-major, row stride ld), rows < valid_rows only. The
// accumulators go through a float32 tile in shared memory (the fragments' register layout is
// opaque), so that every thread then writes whole 16-byte vectors, rounded once to T.
template <typename T, class Tile, class Math>
__device__ __forceinline__ void store_output(unsigned char* smem, const Math& math, T* dst,
                                             int64_t ld, int valid_rows) {
  float* cs = reinterpret_cast<float*>(smem);
  math.store(cs);
  __syncthreads();
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // 8 (fp16/bf16) or 4 (float32)
  constexpr int kVecsPerRow = Tile::kBN / kVec;
  constexpr int kVecs = Tile::kBM * kVecsPerRow;
#pragma unroll
  for (int i = 0; i < (kVecs + Tile::kThreads - 1) / Tile::kThreads; ++i) {
    const int v = i * Tile::kThreads + static_cast<int>(threadIdx.x);
    if (kVecs % Tile::kThreads != 0 && v >= kVecs) break;
    const int row = v / kVecsPerRow;
    const int col = (v % kVecsPerRow) * kVec;
    if (row < valid_rows) {
      const float* c = cs + row * Tile::kLdC + col;
      alignas(16) T out[kVec];
#pragma unroll
      for (int q = 0; q < kVec; q += 4) {
        const float4 f = *reinterpret_cast<const float4*>(c + q);
        out[q + 0] = from_float<T>(f.x);
        out[q + 1] = from_float<T>(f.y);
        out[q + 2] = from_float<T>(f.z);
        out[q + 3] = from_float<T>(f.w);
      }
      *reinterpret_cast<uint4*>(dst + row * ld + col) = *reinterpret_cast<const uint4*>(out);
    }
  }
}

}  // namespace bs
}  // namespace cuda
}  // namespace sparseopt
