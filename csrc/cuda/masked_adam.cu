// CUDA kernels of the masked Adam family (NanoAdam, ALGORITHMS.md §6); the launchers of
// sparseopt/masked_adam_cuda.h. The math is that of sparseopt_kernels/reference/masked.py.
//
// Chunked bottom-k selection (chunk_select_cuda). Per chunk of C consecutive elements (the last
// may be shorter, L elements) the k = k(L) entries of smallest |θ| are listed in ascending index
// order, with the keys of the reference: key = bits of float32(|θ|) (non-negative floats order
// like their bits, NaN above +inf, NaNs by payload), ties to the lower index. No sort: one block
// per chunk runs a radix select on the 31-bit keys, then an ordered compaction.
//
//   radix select: 3 digit passes of 11, 11 and 9 bits (key bits 30-20, 19-9, 8-0). Pass p builds
//     a 2048-bin histogram in shared memory of the digits of the keys whose higher bits equal
//     the prefix found so far, and a block scan over the bins finds the bin holding the k-th
//     smallest key. The select stops early once that bin's keys are all taken (typical data:
//     after 2 passes). Result: threshold T and take_eq such that the selection is
//       { key < T } ∪ { the first take_eq entries (in index order) with key == T }.
//   compaction: tiles of 2048 elements in index order; per tile, warp ballots of (key < T) and
//     (key == T), a 64-entry scan of the per-(item, warp) counts, and for each entry
//       pos = (# key < T before it) + min(# key == T before it, take_eq),
//     which is its list position when it is selected. Stops at the tile holding the k-th entry.
//
//   Traffic: every pass re-reads the chunk's values (4 B/element for float32); the first pass
//   comes from DRAM, the others from L1/L2 (a block's 16 KB chunk of the default C = 4096 is
//   still there); the output is 4 B (int32) or 2 B (int16) per selected entry. For 1e8 float32
//   elements at density 0.1 that is 400 MB + 40 MB of DRAM traffic (~0.13 ms on H100) and ~3-4
//   on-chip reads per element. Histogram atomics are aggregated per warp (__match_any_sync), so
//   clustered keys (all of a chunk's |θ| within one exponent, or pruned exact zeros) do not
//   serialize on one shared-memory address.
//   Launch: 256 threads per block, one block per chunk of every tensor (the multi-tensor
//   launcher of multi_tensor.cuh with the user's chunk size); 8.5 KB of static shared memory.
//   C may be up to 2^30 (larger: cudaErrorInvalidValue); large chunks are correct but run one
//   block per chunk, so C ≲ 1e5 keeps the GPU busy for typical tensor sizes.
//
// Compact masked Adam step (compact_adam_cuda), for list position j with i = index[j] (an int32
// flat index, or (j / k(C))·C + offset for int16 offsets):
//   g = grad[i] / grad_scale (negated when maximize)
//   m[j] = β₁m[j] + (1 − β₁)g;  v[j] = β₂v[j] + (1 − β₂)g²
//   u = (m[j] / bc₁) / (sqrt(v[j]) / sqrt(bc₂) + ε),   bc_i = 1 − β_iᵗ in double (Python β_i)
//   θ[i] = θ[i]·(1 − ηλ) − η·u                        (decay only when λ ≠ 0)
// Moments float32 or bfloat16 (RNE), params/grads float32, bfloat16 or float16; arithmetic in
// float32. One block per 65536 list positions of one tensor, 512 threads, each thread 4
// positions per iteration (striped, so a warp's m/v accesses are contiguous and its gathers hit
// nearby, ascending indices). With found_inf set nothing is written.
//
//   Traffic per selected entry (float32): m, v read + written (16 B), index (4 B or 2 B), and the
//   gathered θ (read + write) and g (read). The gathers set the floor: DRAM moves whole 32-byte
//   sectors, so the cost is the number of distinct sectors of θ and g holding a selected entry,
//   not 4 B per entry. At density d an 8-element float32 sector is touched with probability
//   1 − (1 − d)⁸, ≈ 57% at d = 0.1 (uniform selection; clustered selections touch fewer): about
//   0.57·(4 + 4 + 4) = 6.9 B per element of θ for θ read + write and g read, plus d·(16 + 4) = 2 B
//   of compact state and index, against 28 B per element for a dense AdamW step.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "element.cuh"
#include "multi_tensor.cuh"
#include "sparseopt/masked_adam_cuda.h"

namespace sparseopt {
namespace cuda {
namespace {

using mt::ChunkRef;

// ---------------------------------------------------------------------------------------------
// Selection: the per-chunk decision logic, __host__ __device__ so that it can be checked on the
// host against a sort (the block-level parts are thin wrappers around it).

constexpr int kSelThreads = 256;
constexpr int kSelWarps = kSelThreads / 32;
constexpr int kSelItems = 8;                          // keys per thread per tile
constexpr int kSelTile = kSelThreads * kSelItems;     // 2048 elements
constexpr int kSelBins = 2048;                        // 11-bit digits
constexpr int kBinsPerThread = kSelBins / kSelThreads;
constexpr int kSelPasses = 3;
constexpr int64_t kMaxSelectChunk = int64_t{1} << 30;  // int offsets with room for a tile
constexpr uint32_t kNoKey = 0xffffffffu;               // past the end (real keys < 2^31)
// Histogram updates: one atomic per distinct digit in the warp (__match_any_sync), or one per
// key. Aggregation bounds the cost of clustered keys (pruned zeros: 32 lanes on one address);
// plain atomics avoid MATCH where keys are spread. Not measured yet: A/B on the GPU.
constexpr bool kAggregateAtomics = true;
static_assert(kSelItems * kSelWarps == 64, "the tile scan gives each lane of a warp 2 entries");
static_assert(kSelTile < 65536, "per-tile counts are packed in 16 bits");

// Digit p covers key bits [shift, shift + bits): 30-20, 19-9, 8-0.
SPARSEOPT_HD int pass_shift(int pass) { return pass == 0 ? 20 : (pass == 1 ? 9 : 0); }
SPARSEOPT_HD int pass_bits(int pass) { return pass == 2 ? 9 : 11; }

SPARSEOPT_HD uint32_t digit_of(uint32_t key, int pass) {
  return (key >> pass_shift(pass)) & ((1u << pass_bits(pass)) - 1u);
}

struct SelectState {
  uint32_t prefix;     // the digits found so far
  int match_shift;     // keys with key >> match_shift == prefix are still candidates
  uint32_t needed;     // rank (1-based) of the k-th smallest key among the candidates
  uint32_t threshold;  // when done: select key < threshold ...
  uint32_t take_eq;    // ... and the first take_eq entries with key == threshold
  bool done;
};

SPARSEOPT_HD SelectState select_begin(uint32_t k, uint32_t len) {
  SelectState s;
  s.prefix = 0;
  s.match_shift = 31;  // every key (< 2^31) is a candidate
  s.needed = k;
  s.threshold = kNoKey;  // k == len: everything (every real key is < kNoKey)
  s.take_eq = 0;
  s.done = k >= len;
  return s;
}

SPARSEOPT_HD bool is_candidate(const SelectState& s, uint32_t key) {
  return key != kNoKey && (key >> s.match_shift) == s.prefix;
}

// After pass `pass`: the k-th smallest candidate has digit `bucket`, `below` candidates have a
// smaller digit and `count` have this one.
SPARSEOPT_HD void select_advance(SelectState& s, int pass, uint32_t bucket, uint32_t below,
                                 uint32_t count) {
  const int shift = pass_shift(pass);
  s.needed -= below;
  s.prefix = (s.prefix << pass_bits(pass)) | bucket;
  s.match_shift = shift;
  if (count == s.needed) {
    // The whole bin is taken: every key below the next prefix. At most 2^31, no overflow.
    s.threshold = (s.prefix + 1u) << shift;
    s.take_eq = 0;
    s.done = true;
  } else if (shift == 0) {
    s.threshold = s.prefix;  // the k-th smallest key itself
    s.take_eq = s.needed;
    s.done = true;
  }
}

// The thread owning bins [first, first + kBinsPerThread) with `before` candidates in lower bins:
// finds the bin of rank `needed` if it is one of its own. Exactly one thread succeeds (the one
// with before < needed <= before + its total).
struct Bucket {
  uint32_t bin;
  uint32_t below;
  uint32_t count;
};

SPARSEOPT_HD bool find_bucket_in(const uint32_t (&bins)[kBinsPerThread], uint32_t first,
                                 uint32_t before, uint32_t needed, Bucket& out) {
  uint32_t total = 0;
  for (int b = 0; b < kBinsPerThread; ++b) total += bins[b];
  if (!(before < needed && needed <= before + total)) return false;
  uint32_t cum = before;
  for (int b = 0; b < kBinsPerThread; ++b) {
    if (needed <= cum + bins[b]) {
      out.bin = first + static_cast<uint32_t>(b);
      out.below = cum;
      out.count = bins[b];
      return true;
    }
    cum += bins[b];
  }
  return false;  // unreachable
}

// List position of an entry, given the entries before it in index order that are < T (lt_before)
// and == T (eq_before); false when it is not selected.
SPARSEOPT_HD bool selected_position(uint32_t key, uint32_t threshold, uint32_t take_eq,
                                    uint32_t lt_before, uint32_t eq_before, uint32_t& pos) {
  if (key == kNoKey) return false;
  if (key < threshold) {
    pos = lt_before + (eq_before < take_eq ? eq_before : take_eq);
    return true;
  }
  if (key == threshold && eq_before < take_eq) {
    pos = lt_before + eq_before;
    return true;
  }
  return false;
}

// Keys: the bits of float32(|x|), exactly the reference's |θ|.float().view(int32).
__device__ __forceinline__ uint32_t key_of(float x) { return __float_as_uint(x) & 0x7fffffffu; }
__device__ __forceinline__ uint32_t key_of(__nv_bfloat16 x) {
  return (static_cast<uint32_t>(__bfloat16_as_ushort(x)) << 16) & 0x7fffffffu;
}
__device__ __forceinline__ uint32_t key_of(__half x) {
  return __float_as_uint(__half2float(x)) & 0x7fffffffu;
}
__device__ __forceinline__ uint32_t key_of(double x) {
  return __float_as_uint(__double2float_rn(x)) & 0x7fffffffu;  // RNE like Tensor.float()
}

struct SelectParams {
  int64_t chunk_size;
  int32_t k_full;  // k(C)
};

// Selection pointer lists {values, out}, plus k of each tensor's last chunk.
constexpr int kSelectCap = mt::batch_capacity<2, false, 4>(sizeof(SelectParams));
struct SelectArgs {
  SelectParams p;
  mt::TensorBatch<2, kSelectCap, false> batch;
  int32_t k_last[kSelectCap];
};
static_assert(sizeof(SelectArgs) <= mt::kMaxKernelParamBytes, "select arguments too large");

// Exclusive block-wide sum of one value per thread. warp_sums is reused only after a barrier.
__device__ __forceinline__ uint32_t block_exclusive_sum(uint32_t x, uint32_t* warp_sums) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  uint32_t incl = x;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += y;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  uint32_t before = 0;
#pragma unroll
  for (int w = 0; w < kSelWarps; ++w) before += w < warp ? warp_sums[w] : 0u;
  return before + incl - x;
}

// The keys of one tile: element base + r·kSelThreads + tid for item r (coalesced loads, all
// issued before any use); kNoKey past the end.
template <typename V>
__device__ __forceinline__ void load_tile(const V* x, int len, int base,
                                          uint32_t (&key)[kSelItems]) {
#pragma unroll
  for (int r = 0; r < kSelItems; ++r) {
    const int i = base + r * kSelThreads + static_cast<int>(threadIdx.x);
    key[r] = i < len ? key_of(x[i]) : kNoKey;
  }
}

template <typename V, typename I>
__global__ void __launch_bounds__(kSelThreads) chunk_select_kernel(
    const __grid_constant__ SelectArgs args) {
  __shared__ uint32_t hist[kSelBins];
  __shared__ uint32_t tile_counts[kSelItems * kSelWarps];
  __shared__ uint32_t warp_sums[kSelWarps];
  __shared__ Bucket found;
  __shared__ uint32_t tile_total;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const ChunkRef ref = mt::locate_chunk(args.batch, blockIdx.x, args.p.chunk_size);
  const int t = ref.tensor;
  const V* const x = static_cast<const V*>(args.batch.ptrs[0][t]) + ref.begin;
  const int len = ref.len;
  const bool last = ref.begin + len == args.batch.numels[t];
  const uint32_t k = static_cast<uint32_t>(last ? args.k_last[t] : args.p.k_full);
  I* const out = static_cast<I*>(args.batch.ptrs[1][t]) +
                 static_cast<int64_t>(ref.chunk) * args.p.k_full;

  // Radix select. Block-uniform state: every thread runs select_advance on the same values.
  SelectState st = select_begin(k, static_cast<uint32_t>(len));
  if (!st.done) {
#pragma unroll
    for (int b = 0; b < kBinsPerThread; ++b) hist[tid * kBinsPerThread + b] = 0;
    __syncthreads();
  }
  for (int pass = 0; pass < kSelPasses && !st.done; ++pass) {
    for (int base = 0; base < len; base += kSelTile) {
      uint32_t key[kSelItems];
      load_tile(x, len, base, key);
#pragma unroll
      for (int r = 0; r < kSelItems; ++r) {
        const bool cand = is_candidate(st, key[r]);
        if (!__any_sync(0xffffffffu, cand)) continue;  // warp-uniform: later passes are sparse
        const uint32_t digit = cand ? digit_of(key[r], pass) : kNoKey;
        if constexpr (kAggregateAtomics) {
          const uint32_t peers = __match_any_sync(0xffffffffu, digit);
          if (cand && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
        } else if (cand) {
          atomicAdd(&hist[digit], 1u);
        }
      }
    }
    __syncthreads();
    uint32_t bins[kBinsPerThread];
    uint32_t total = 0;
#pragma unroll
    for (int b = 0; b < kBinsPerThread; ++b) {
      bins[b] = hist[tid * kBinsPerThread + b];
      hist[tid * kBinsPerThread + b] = 0;  // ready for the next pass (own bins only)
      total += bins[b];
    }
    const uint32_t before = block_exclusive_sum(total, warp_sums);
    Bucket bucket;
    if (find_bucket_in(bins, static_cast<uint32_t>(tid * kBinsPerThread), before, st.needed,
                       bucket)) {
      found = bucket;
    }
    __syncthreads();
    select_advance(st, pass, found.bin, found.below, found.count);
  }

  // Ordered compaction.
  const uint32_t threshold = st.threshold;
  const uint32_t take_eq = st.take_eq;
  const uint32_t want_lt = k - take_eq;  // entries with key < threshold
  const uint32_t lanes_below = (1u << lane) - 1u;
  uint32_t run_lt = 0;
  uint32_t run_eq = 0;
  for (int base = 0; base < len; base += kSelTile) {
    uint32_t key[kSelItems];
    load_tile(x, len, base, key);
    uint32_t lt[kSelItems];
    uint32_t eq[kSelItems];
#pragma unroll
    for (int r = 0; r < kSelItems; ++r) {
      lt[r] = __ballot_sync(0xffffffffu, key[r] != kNoKey && key[r] < threshold);
      eq[r] = __ballot_sync(0xffffffffu, key[r] != kNoKey && key[r] == threshold);
      if (lane == 0) tile_counts[r * kSelWarps + warp] = __popc(lt[r]) | (__popc(eq[r]) << 16);
    }
    __syncthreads();
    if (warp == 0) {
      // Exclusive scan of the 64 (item, warp) counts, in index order; 2 per lane.
      const uint32_t a = tile_counts[2 * lane];
      const uint32_t b = tile_counts[2 * lane + 1];
      uint32_t incl = a + b;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const uint32_t y = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += y;
      }
      const uint32_t excl = incl - a - b;
      tile_counts[2 * lane] = excl;
      tile_counts[2 * lane + 1] = excl + a;
      if (lane == 31) tile_total = incl;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kSelItems; ++r) {
      const uint32_t excl = tile_counts[r * kSelWarps + warp];
      const uint32_t lt_before = run_lt + (excl & 0xffffu) + __popc(lt[r] & lanes_below);
      const uint32_t eq_before = run_eq + (excl >> 16) + __popc(eq[r] & lanes_below);
      uint32_t pos;
      if (selected_position(key[r], threshold, take_eq, lt_before, eq_before, pos)) {
        const int i = base + r * kSelThreads + tid;
        if constexpr (sizeof(I) == 2) {
          out[pos] = static_cast<I>(i);
        } else {
          out[pos] = static_cast<I>(ref.begin + i);
        }
      }
    }
    const uint32_t total = tile_total;
    run_lt += total & 0xffffu;
    run_eq += total >> 16;
    __syncthreads();  // tile_counts and tile_total are rewritten by the next tile
    if (run_lt == want_lt && run_eq >= take_eq) break;  // the rest of the chunk is not selected
  }
}

// ---------------------------------------------------------------------------------------------
// Compact Adam step.

constexpr int kCompactItems = 4;  // list positions per thread per iteration

struct CompactParams {
  DeviceScalars scalars;
  double beta1;  // the Python floats, for the bias corrections in double
  double beta2;
  float beta1_f;
  float beta2_f;
  float one_minus_beta1;
  float one_minus_beta2;
  float eps;
  float weight_decay;
  float lr;                 // used when scalars.lr is null
  float host_decay_factor;  // float(1 − lr·λ) formed in double, for a host lr
  int64_t chunk_size;       // decoding of int16 offsets
  uint32_t k_full;
  bool has_weight_decay;
  bool maximize;
  bool device_steps;
};

// Pointer lists {θ, g, index, m, v}; batch.numels hold the list lengths.
constexpr int kCompactCap = mt::batch_capacity<5, true>(sizeof(CompactParams));
struct CompactArgs {
  CompactParams p;
  mt::TensorBatch<5, kCompactCap, true> batch;
};
static_assert(sizeof(CompactArgs) <= mt::kMaxKernelParamBytes, "compact arguments too large");

// int16 offsets: list position j lies in chunk j / k(C), so its flat index is
// (j / k(C))·C + offset. A block splits its first position `begin` once in 64 bits
// (q0 = begin / k(C), r0 = begin mod k(C)); its own positions begin + off (off < 65536) then
// need only the 32-bit division (r0 + off) / k(C), since r0 + off < 32768 + 65536.
struct PositionSplit {
  int64_t q0;
  uint32_t r0;
};

SPARSEOPT_HD PositionSplit split_position(int64_t begin, uint32_t k_full) {
  PositionSplit s;
  s.q0 = begin / k_full;
  s.r0 = static_cast<uint32_t>(begin - s.q0 * k_full);
  return s;
}

SPARSEOPT_HD int64_t offset_to_index(const PositionSplit& s, int off, uint32_t k_full,
                                     int64_t chunk_size, int16_t offset) {
  const uint32_t rel = s.r0 + static_cast<uint32_t>(off);
  const int64_t chunk = s.q0 + static_cast<int64_t>(rel / k_full);
  return chunk * chunk_size + static_cast<int64_t>(offset);
}


template <typename P, typename S, typename I>
__global__ void __launch_bounds__(mt::kBlockThreads, 2)
    compact_adam_kernel(const __grid_constant__ CompactArgs args) {
  const CompactParams& cp = args.p;
  const DeviceScalars& sc = cp.scalars;
  if (sc.found_inf != nullptr && *sc.found_inf != 0.0f) return;  // AMP: skip, no host sync
  const bool device_lr = sc.lr != nullptr;
  const float eta = device_lr ? *sc.lr : cp.lr;
  const bool has_grad_scale = sc.grad_scale != nullptr;
  const float grad_scale = has_grad_scale ? *sc.grad_scale : 1.0f;

  const ChunkRef ref = mt::locate_chunk(args.batch, blockIdx.x);
  const int t = ref.tensor;
  P* const param = static_cast<P*>(args.batch.ptrs[0][t]);
  const P* const grad = static_cast<const P*>(args.batch.ptrs[1][t]);
  const I* const index = static_cast<const I*>(args.batch.ptrs[2][t]) + ref.begin;
  S* const exp_avg = static_cast<S*>(args.batch.ptrs[3][t]) + ref.begin;
  S* const exp_avg_sq = static_cast<S*>(args.batch.ptrs[4][t]) + ref.begin;

  // Bias corrections once per block, in double like the reference ((1 − β^step) with the
  // Python float β and the float64 step), then rounded to float32.
  const double step = cp.device_steps ? static_cast<double>(*args.batch.step_ptrs[t])
                                      : static_cast<double>(args.batch.host_steps[t]);
  const float bc1 = static_cast<float>(1.0 - pow(cp.beta1, step));
  const float bc2_sqrt = static_cast<float>(sqrt(1.0 - pow(cp.beta2, step)));
  const float decay = device_lr ? 1.0f - eta * cp.weight_decay : cp.host_decay_factor;

  [[maybe_unused]] const PositionSplit split =
      sizeof(I) == 2 ? split_position(ref.begin, cp.k_full) : PositionSplit{0, 0};

  for (int base = 0; base < ref.len; base += mt::kBlockThreads * kCompactItems) {
    int64_t where[kCompactItems];
    bool valid[kCompactItems];
    float th[kCompactItems], g[kCompactItems], m[kCompactItems], v[kCompactItems];
    // All loads first (indices, then the gathers and the moments) for memory-level parallelism.
#pragma unroll
    for (int u = 0; u < kCompactItems; ++u) {
      const int off = base + u * mt::kBlockThreads + static_cast<int>(threadIdx.x);
      valid[u] = off < ref.len;
      where[u] = 0;
      if (valid[u]) {
        if constexpr (sizeof(I) == 2) {
          where[u] = offset_to_index(split, off, cp.k_full, cp.chunk_size, index[off]);
        } else {
          where[u] = static_cast<int64_t>(index[off]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kCompactItems; ++u) {
      const int off = base + u * mt::kBlockThreads + static_cast<int>(threadIdx.x);
      if (valid[u]) {
        th[u] = to_float(param[where[u]]);
        g[u] = to_float(grad[where[u]]);
        m[u] = to_float(exp_avg[off]);
        v[u] = to_float(exp_avg_sq[off]);
      }
    }
#pragma unroll
    for (int u = 0; u < kCompactItems; ++u) {
      if (!valid[u]) continue;
      const int off = base + u * mt::kBlockThreads + static_cast<int>(threadIdx.x);
      float gk = g[u];
      if (has_grad_scale) gk = gk / grad_scale;
      if (cp.maximize) gk = -gk;
      const float mk = cp.beta1_f * m[u] + cp.one_minus_beta1 * gk;
      const float vk = cp.beta2_f * v[u] + cp.one_minus_beta2 * gk * gk;
      const float upd = (mk / bc1) / (sqrtf(vk) / bc2_sqrt + cp.eps);
      float x = th[u];
      if (cp.has_weight_decay) x = x * decay;
      x = x - eta * upd;
      exp_avg[off] = from_float<S>(mk);
      exp_avg_sq[off] = from_float<S>(vk);
      param[where[u]] = from_float<P>(x);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<T>) for float32, bfloat16, float16 and, for the selection only, float64 values.
template <bool kAllowDouble, class F>
cudaError_t dispatch_value(ScalarType type, F&& f) {
  switch (type) {
    case ScalarType::Float32:
      return f(TypeTag<float>{});
    case ScalarType::BFloat16:
      return f(TypeTag<__nv_bfloat16>{});
    case ScalarType::Float16:
      return f(TypeTag<__half>{});
    case ScalarType::Float64:
      if constexpr (kAllowDouble) return f(TypeTag<double>{});
      break;
  }
  return cudaErrorInvalidValue;
}

bool valid_density(double density) { return density > 0.0 && density <= 1.0; }

bool valid_chunk_size(int64_t chunk_size, bool offsets) {
  return chunk_size >= 1 && chunk_size <= kMaxSelectChunk && (!offsets || chunk_size <= 32768);
}

// Non-negative numels; non-null pointers for every tensor with elements; int32 flat indices
// need numel <= 2^31.
bool valid_lists(int64_t n_tensors, const int64_t* numels, bool int32_indices,
                 std::initializer_list<const void* const*> lists) {
  if (n_tensors < 0) return false;
  if (n_tensors == 0) return true;
  if (numels == nullptr) return false;
  for (const void* const* list : lists) {
    if (list == nullptr) return false;
  }
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (numels[t] < 0) return false;
    if (int32_indices && numels[t] > (int64_t{1} << 31)) return false;
    if (numels[t] == 0) continue;
    for (const void* const* list : lists) {
      if (list[t] == nullptr) return false;
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

}  // namespace

cudaError_t chunk_select_cuda(const SelectConfig& cfg, ScalarType value_type, int64_t n_tensors,
                              const void* const* values, const int64_t* numels, void* const* out,
                              cudaStream_t stream) {
  const int64_t C = cfg.chunk_size;
  if (!valid_density(cfg.density) || !valid_chunk_size(C, cfg.chunk_offsets) ||
      !valid_lists(n_tensors, numels, !cfg.chunk_offsets,
                   {values, const_cast<const void* const*>(out)})) {
    return cudaErrorInvalidValue;
  }
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (mt::num_chunks(numels[t], C) > mt::kMaxBlocksPerLaunch) return cudaErrorInvalidValue;
  }

  SelectArgs args;
  args.p.chunk_size = C;
  args.p.k_full = static_cast<int32_t>(chunk_k(cfg.density, C));
  auto fill = [&](int slot, int64_t t) {
    args.batch.ptrs[0][slot] = const_cast<void*>(values[t]);
    args.batch.ptrs[1][slot] = out[t];
    const int64_t last_len = numels[t] - (mt::num_chunks(numels[t], C) - 1) * C;
    args.k_last[slot] = static_cast<int32_t>(chunk_k(cfg.density, last_len));
  };
  return dispatch_value<true>(value_type, [&](auto v_tag) {
    using V = typename decltype(v_tag)::type;
    auto go = [&](auto kernel) {
      return mt::pack_and_launch(
          args, n_tensors, numels, fill,
          [&](const SelectArgs& a, uint32_t blocks) {
            return launch(kernel, a, blocks, kSelThreads, stream);
          },
          C);
    };
    return cfg.chunk_offsets ? go(chunk_select_kernel<V, int16_t>)
                             : go(chunk_select_kernel<V, int32_t>);
  });
}

cudaError_t compact_adam_cuda(const CompactAdamConfig& cfg, DeviceScalars scalars,
                              StepCounts steps, ScalarType param_type, ScalarType state_type,
                              int64_t n_tensors, void* const* params, const void* const* grads,
                              const void* const* indices, void* const* exp_avgs,
                              void* const* exp_avg_sqs, const int64_t* numels,
                              cudaStream_t stream) {
  const int64_t C = cfg.chunk_size;
  if (!valid_density(cfg.density) || !valid_chunk_size(C, cfg.chunk_offsets) ||
      !valid_lists(n_tensors, numels, !cfg.chunk_offsets,
                   {const_cast<const void* const*>(params), grads, indices,
                    const_cast<const void* const*>(exp_avgs),
                    const_cast<const void* const*>(exp_avg_sqs)})) {
    return cudaErrorInvalidValue;
  }
  if (state_type != ScalarType::Float32 && state_type != ScalarType::BFloat16) {
    return cudaErrorInvalidValue;
  }
  const bool device_steps = steps.step_ptrs != nullptr;
  if (n_tensors > 0 && !device_steps && steps.host_steps == nullptr) return cudaErrorInvalidValue;
  if (device_steps) {
    for (int64_t t = 0; t < n_tensors; ++t) {
      if (numels[t] > 0 && steps.step_ptrs[t] == nullptr) return cudaErrorInvalidValue;
    }
  }
  // The launcher cuts the compact lists, not the params, into blocks.
  std::vector<int64_t> list_lengths(static_cast<size_t>(n_tensors));
  for (int64_t t = 0; t < n_tensors; ++t) {
    list_lengths[t] = numels[t] == 0 ? 0 : num_selected(numels[t], cfg.density, C);
  }

  CompactArgs args;
  CompactParams& p = args.p;
  p.scalars = scalars;
  p.beta1 = cfg.beta1;
  p.beta2 = cfg.beta2;
  p.beta1_f = static_cast<float>(cfg.beta1);
  p.beta2_f = static_cast<float>(cfg.beta2);
  p.one_minus_beta1 = static_cast<float>(1.0 - cfg.beta1);
  p.one_minus_beta2 = static_cast<float>(1.0 - cfg.beta2);
  p.eps = static_cast<float>(cfg.eps);
  p.weight_decay = static_cast<float>(cfg.weight_decay);
  p.lr = static_cast<float>(cfg.lr);
  p.host_decay_factor = static_cast<float>(1.0 - cfg.lr * cfg.weight_decay);
  p.chunk_size = C;
  p.k_full = static_cast<uint32_t>(chunk_k(cfg.density, C));
  p.has_weight_decay = cfg.weight_decay != 0.0;
  p.maximize = cfg.maximize;
  p.device_steps = device_steps;

  auto fill = [&](int slot, int64_t t) {
    args.batch.ptrs[0][slot] = params[t];
    args.batch.ptrs[1][slot] = const_cast<void*>(grads[t]);
    args.batch.ptrs[2][slot] = const_cast<void*>(indices[t]);
    args.batch.ptrs[3][slot] = exp_avgs[t];
    args.batch.ptrs[4][slot] = exp_avg_sqs[t];
    args.batch.step_ptrs[slot] = device_steps ? steps.step_ptrs[t] : nullptr;
    args.batch.host_steps[slot] = device_steps ? 0.0f : static_cast<float>(steps.host_steps[t]);
  };
  return dispatch_value<false>(param_type, [&](auto p_tag) {
    using P = typename decltype(p_tag)::type;
    auto with_state = [&](auto s_tag) {
      using S = typename decltype(s_tag)::type;
      auto go = [&](auto kernel) {
        return mt::pack_and_launch(args, n_tensors, list_lengths.data(), fill,
                                   [&](const CompactArgs& a, uint32_t blocks) {
                                     return launch(kernel, a, blocks, mt::kBlockThreads, stream);
                                   });
      };
      return cfg.chunk_offsets ? go(compact_adam_kernel<P, S, int16_t>)
                               : go(compact_adam_kernel<P, S, int32_t>);
    };
    return state_type == ScalarType::Float32 ? with_state(TypeTag<float>{})
                                             : with_state(TypeTag<__nv_bfloat16>{});
  });
}

}  // namespace cuda
}  // namespace sparseopt
