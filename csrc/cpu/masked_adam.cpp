// Masked Adam family on the CPU (torch-free; API in csrc/include/sparseopt/masked_adam.h, math in
// sparseopt_kernels/reference/masked.py): chunked bottom-k selection and the compact Adam step.
//
// Selection, per chunk of L ≤ C elements, k = k(L):
//   key[i] = bits(|float(θ[i])|) as uint32. Non-negative floats order like their bit patterns,
//   and NaN (|NaN| has exponent 255 and a non-zero mantissa) sorts after +inf, exactly as the
//   reference's int64 sort keys (which also order NaNs among themselves by payload).
//   T = the k-th smallest key; n_lt = #{key < T}. The selected set is {key < T} plus the first
//   k − n_lt indices with key == T: what a stable sort by key keeps (ties to the lower index),
//   emitted in one ascending pass.
//   T is found by a radix step instead of a sort: a 2048-bucket histogram of key >> 20 (exponent
//   plus 3 mantissa bits) locates the bucket holding the k-th key, the keys of that bucket alone
//   (typically a few percent of the chunk) are copied out and std::nth_element finishes.
//   Measured: see chunk_select_cpu below.
//
// Compact step, for list position j with i = index[j] (int32 flat index, or chunk·C + int16
// offset):
//   g = grad[i]·inv_grad_scale, negated when maximize
//   m[j] = β₁m[j] + (1−β₁)g;  v[j] = β₂v[j] + ((1−β₂)g)g
//   u = (m[j]·(1/bc1)) / (sqrt(v[j])·(1/sqrt(bc2)) + ε)     (reciprocals computed per tensor in
//                                                             float64 on the host, as in the fused
//                                                             Adam kernel of mirror_step.cpp)
//   θ[i] = θ[i]·(1 − ηλ) (only when λ ≠ 0) − η·u
// Arithmetic is float32 (float64 for float64 params) with FMA contraction, like mirror_step.cpp:
// the AVX-512 and AVX2 builds agree to the bit, the generic build (no FMA) rounds differently.
// Loop shape (one fused scalar loop, or gather / dense vector math / scatter per block) is
// picked by density, see compact_body for why and the measurements. The memory floor is the
// cache lines touched: at density 0.1 with uniformly spread indices ~81% of the lines of θ and
// g (1 − 0.9^16) are read and θ's written back, ~11 bytes per param against dense Adam's 28, so
// ~2.5× over torch's fused Adam is the ceiling there.
#pragma GCC optimize("fp-contract=fast", "no-math-errno", "no-trapping-math")

#include "sparseopt/masked_adam.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "fast_exp.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

extern "C" float sqrtf(float) noexcept __attribute__((const));  // see mirror_step.cpp
extern "C" double sqrt(double) noexcept __attribute__((const));

namespace sparseopt {
namespace cpu {

using detail::bf16_t;
using detail::f16_t;
using detail::Tag;
using detail::widen;
using detail::with_storage_type;

namespace {

// ------------------------------------------------------------------------------------------
// Selection.

// |θ| in float32 as an order-preserving uint32 (see the header comment).
template <class P>
inline uint32_t select_key(P x) {
  const float f = static_cast<float>(widen(x));  // float64 rounds to float first, as .float()
  return detail::f2u(f) & 0x7fffffffu;
}

constexpr int kHistShift = 20;                       // keys < 2^31: 11 bits of buckets
constexpr int kHistBuckets = 1 << (31 - kHistShift);  // 2048, 8 KB of counts

// cand and pos have 16 slots of slack: the vector passes store whole 16-lane vectors.
struct SelectScratch {
  std::vector<uint32_t> key, cand, hist;
  std::vector<int32_t> pos;
  explicit SelectScratch(int64_t c)
      : key(static_cast<size_t>(c)), cand(static_cast<size_t>(c) + 16),
        hist(static_cast<size_t>(kHistBuckets)), pos(static_cast<size_t>(c) + 16) {}
};

// The two passes over a chunk's keys after the histogram, as plain loops and as AVX-512 loops
// (vpcompressd into a register, then a full unmasked store: masked stores are slow on Zen 4);
// AVX2 packs with a permutation table.
// Measured on 1e7 N(0, 0.05²) floats, chunk 4096, one thread of the 2-core Zen 4 machine:
// keys 1.7 ms, histogram 4.2 ms, candidate pass + nth_element 5.7 ms, final pass 8.6 ms (20 ms in
// all; the loop-carried count of the branch-free scalar loops bounds them); with the AVX-512
// passes 8.0 ms in all (d = 0.1; 7.5 ms at d = 0.01). Four interleaved histograms (against
// store-forwarding stalls on repeated buckets) did not help (6.0 vs 5.9 ms).
//
// bucket_keys: the keys whose bucket (key >> kHistShift) is b, in order; returns their count.
int64_t bucket_keys_generic(const uint32_t* __restrict__ key, int64_t L, uint32_t b,
                            uint32_t* __restrict__ cand) {
  int64_t nc = 0;
  for (int64_t i = 0; i < L; ++i) {  // branch-free copy
    cand[nc] = key[i];
    nc += (key[i] >> kHistShift) == b;
  }
  return nc;
}

// selected_positions: ascending positions in [begin, L) of the keys < T and of the first
// need_eq keys == T.
void selected_positions_generic(const uint32_t* __restrict__ key, int64_t begin, int64_t L,
                                uint32_t T, int64_t need_eq, int32_t* __restrict__ pos) {
  int64_t c = 0, eq = 0;
  for (int64_t i = begin; i < L; ++i) {
    const bool is_eq = key[i] == T;
    pos[c] = static_cast<int32_t>(i);  // pos has slack: the write after the last is safe
    c += (key[i] < T) | (is_eq & (eq < need_eq));
    eq += is_eq;
  }
}

#if defined(__x86_64__) || defined(__i386__)
#define SPARSEOPT_SELECT_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,popcnt")))

SPARSEOPT_SELECT_AVX512 int64_t bucket_keys_avx512(const uint32_t* __restrict__ key, int64_t L,
                                                   uint32_t b, uint32_t* __restrict__ cand) {
  // bucket b holds the keys in [b << kHistShift, (b + 1) << kHistShift) (b + 1 ≤ 2^11: no wrap)
  const __m512i lo = _mm512_set1_epi32(static_cast<int>(b << kHistShift));
  const __m512i hi = _mm512_set1_epi32(static_cast<int>((b + 1) << kHistShift));
  int64_t nc = 0, i = 0;
  for (; i + 16 <= L; i += 16) {
    const __m512i k = _mm512_loadu_si512(key + i);
    const __mmask16 m = _mm512_mask_cmplt_epu32_mask(_mm512_cmpge_epu32_mask(k, lo), k, hi);
    _mm512_storeu_si512(cand + nc, _mm512_maskz_compress_epi32(m, k));
    nc += __builtin_popcount(m);
  }
  return nc + bucket_keys_generic(key + i, L - i, b, cand + nc);
}

SPARSEOPT_SELECT_AVX512 void selected_positions_avx512(const uint32_t* __restrict__ key,
                                                       int64_t begin, int64_t L, uint32_t T,
                                                       int64_t need_eq,
                                                       int32_t* __restrict__ pos) {
  const __m512i vt = _mm512_set1_epi32(static_cast<int>(T));
  __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(begin)),
                                 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                   14, 15));
  int64_t c = 0, i = begin;
  for (; i + 16 <= L; i += 16) {
    const __m512i k = _mm512_loadu_si512(key + i);
    __mmask16 m = _mm512_cmplt_epu32_mask(k, vt);
    __mmask16 eq = _mm512_cmpeq_epu32_mask(k, vt);
    for (; eq != 0 && need_eq > 0; --need_eq) {  // ties at T: the lowest positions first
      m |= eq & static_cast<__mmask16>(-eq);
      eq &= static_cast<__mmask16>(eq - 1);
    }
    _mm512_storeu_si512(pos + c, _mm512_maskz_compress_epi32(m, idx));
    c += __builtin_popcount(m);
    idx = _mm512_add_epi32(idx, _mm512_set1_epi32(16));
  }
  selected_positions_generic(key, i, L, T, need_eq, pos + c);
}
#undef SPARSEOPT_SELECT_AVX512

// AVX2 has no compress: a 256-entry table gives, per 8-bit lane mask, the permutation that packs
// the selected lanes first (vpermd), then a full unmasked store as above. Keys and T are below
// 2^31, so signed compares order them.
#define SPARSEOPT_SELECT_AVX2 __attribute__((target("avx2,popcnt")))

struct PackTable {
  alignas(32) int32_t lanes[256][8];
  PackTable() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int l = 0; l < 8; ++l)
        if (m >> l & 1) lanes[m][n++] = l;
      while (n < 8) lanes[m][n++] = 0;
    }
  }
};
const PackTable& pack_table() {
  static const PackTable table;
  return table;
}

SPARSEOPT_SELECT_AVX2 int64_t bucket_keys_avx2(const uint32_t* __restrict__ key, int64_t L,
                                               uint32_t b, uint32_t* __restrict__ cand) {
  const PackTable& pack = pack_table();
  const __m256i vb = _mm256_set1_epi32(static_cast<int>(b));
  int64_t nc = 0, i = 0;
  for (; i + 8 <= L; i += 8) {
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + i));
    const __m256i hit = _mm256_cmpeq_epi32(_mm256_srli_epi32(k, kHistShift), vb);
    const int m = _mm256_movemask_ps(_mm256_castsi256_ps(hit));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(pack.lanes[m]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(cand + nc),
                        _mm256_permutevar8x32_epi32(k, perm));
    nc += __builtin_popcount(static_cast<unsigned>(m));
  }
  return nc + bucket_keys_generic(key + i, L - i, b, cand + nc);
}

SPARSEOPT_SELECT_AVX2 void selected_positions_avx2(const uint32_t* __restrict__ key,
                                                   int64_t begin, int64_t L, uint32_t T,
                                                   int64_t need_eq, int32_t* __restrict__ pos) {
  const PackTable& pack = pack_table();
  const __m256i vt = _mm256_set1_epi32(static_cast<int>(T));
  __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(begin)),
                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  int64_t c = 0, i = begin;
  for (; i + 8 <= L; i += 8) {
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + i));
    int m = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(vt, k)));
    int eq = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(k, vt)));
    for (; eq != 0 && need_eq > 0; --need_eq) {  // ties at T: the lowest positions first
      m |= eq & -eq;
      eq &= eq - 1;
    }
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(pack.lanes[m]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pos + c),
                        _mm256_permutevar8x32_epi32(idx, perm));
    c += __builtin_popcount(static_cast<unsigned>(m));
    idx = _mm256_add_epi32(idx, _mm256_set1_epi32(8));
  }
  selected_positions_generic(key, i, L, T, need_eq, pos + c);
}
#undef SPARSEOPT_SELECT_AVX2
#endif

struct SelectPasses {
  int64_t (*bucket_keys)(const uint32_t*, int64_t, uint32_t, uint32_t*);
  void (*selected_positions)(const uint32_t*, int64_t, int64_t, uint32_t, int64_t, int32_t*);
};

SelectPasses select_passes() {
#if defined(__x86_64__) || defined(__i386__)
  const char* isa = cpu_isa();  // honours SPARSEOPT_CPU_ISA and the testing hook
  if (std::strcmp(isa, "avx512") == 0) return {&bucket_keys_avx512, &selected_positions_avx512};
  if (std::strcmp(isa, "avx2") == 0) return {&bucket_keys_avx2, &selected_positions_avx2};
#endif
  return {&bucket_keys_generic, &selected_positions_generic};
}

// Bottom-k of one chunk of L elements; writes k entries out[j] = base + position (ascending).
template <class P, class O>
void select_chunk(const P* __restrict__ x, int64_t L, int64_t k, const SelectPasses& passes,
                  SelectScratch& s, O* __restrict__ out, int64_t base) {
  if (k >= L) {
    for (int64_t i = 0; i < L; ++i) out[i] = static_cast<O>(base + i);
    return;
  }
  uint32_t* __restrict__ key = s.key.data();
  for (int64_t i = 0; i < L; ++i) key[i] = select_key(x[i]);

  // 1. Bucket of the k-th smallest key.
  uint32_t* __restrict__ hist = s.hist.data();
  std::memset(hist, 0, sizeof(uint32_t) * kHistBuckets);
  for (int64_t i = 0; i < L; ++i) ++hist[key[i] >> kHistShift];
  int64_t below = 0;  // keys in buckets before b
  uint32_t b = 0;
  while (below + static_cast<int64_t>(hist[b]) < k) below += hist[b++];

  // 2. k-th smallest key T: nth_element over that bucket's keys.
  uint32_t* __restrict__ cand = s.cand.data();
  const int64_t nc = passes.bucket_keys(key, L, b, cand);
  const int64_t r = k - below - 1;  // 0-based rank of T within the bucket
  std::nth_element(cand, cand + r, cand + nc);
  const uint32_t T = cand[r];
  int64_t n_lt = below;
  for (int64_t i = 0; i < nc; ++i) n_lt += cand[i] < T;
  const int64_t need_eq = k - n_lt;  // ≥ 1: T itself is among the selected

  // 3. One ascending pass: key < T, or key == T among the first need_eq such.
  int32_t* __restrict__ pos = s.pos.data();
  passes.selected_positions(key, 0, L, T, need_eq, pos);
  for (int64_t j = 0; j < k; ++j) out[j] = static_cast<O>(base + pos[j]);
}

struct SelectItem {
  int64_t tensor, chunk_begin, chunk_end;
};

// ------------------------------------------------------------------------------------------
// Compact step.

using detail::mask_of;
using detail::MaskT;
using detail::sel;

SPARSEOPT_AI float sqrt_c(float x) { return ::sqrtf(x); }
SPARSEOPT_AI double sqrt_c(double x) { return ::sqrt(x); }

// Storage of a compute value; float64 → bfloat16 goes through float32, as c10::BFloat16 does.
SPARSEOPT_AI void store_v(float* p, float x) { *p = x; }
SPARSEOPT_AI void store_v(float* p, double x) { *p = static_cast<float>(x); }
SPARSEOPT_AI void store_v(double* p, double x) { *p = x; }
SPARSEOPT_AI void store_v(bf16_t* p, float x) { *p = detail::to_bf16(x); }
SPARSEOPT_AI void store_v(bf16_t* p, double x) { *p = detail::to_bf16(static_cast<float>(x)); }
SPARSEOPT_AI void store_v(f16_t* p, float x) { *p = detail::to_f16(x); }

template <class C>
struct CompactK {
  C inv_scale, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_bc1, inv_bc2_sqrt,
      wd_decay;
  MaskT<C> maximize, decay_on;
};

// p and g point at the chunk's (or the tensor's) first element, idx/m/v at its first position.
// Two loop shapes, picked by density (kBlockedBelow), both the same operations in the same order
// (so the AVX2 and AVX-512 builds stay bit-identical to each other):
//  - fused: one scalar loop gathering θ[i], g[i], updating and storing θ[i]. GCC keeps it scalar
//    (it cannot prove the scattered stores distinct from later gathers);
//  - blocked: per kBlock positions, gather θ and g into contiguous buffers (vgatherdps for fp32
//    params), run the Adam math as a dense vector loop, scatter θ back (vpscatterdd for fp32
//    params under AVX-512: its lanes are written in order, so it is the sequential loop).
// Measured, 10 × 2e6 fp32 params, chunk 4096, 2 threads, best of 5 rounds on the shared 2-core
// Zen 4 machine (±10% noise), torch.optim.Adam(fused=True) 8.6-9.3 ms:
//                                        density 0.1      density 0.01
//   one loop vectorized (ivdep: vgatherdps + vpscatterdd)   5.5-6.7 ms       0.8-1.1 ms
//   fused scalar loop                                         4.1-4.4 ms       1.7-1.8 ms
//   blocked, vector gathers + scatter                         5.6-5.8 ms       0.57 ms
//   blocked, scalar gathers, vector scatter                   4.5-4.8 ms       0.64-0.69 ms
// At 0.1 the scattered lines of θ and g are dense (81% of them are touched) and the scalar loop
// overlaps its loads with the math best; at 0.01 nearly every selected entry is its own cache
// line and the vector gathers keep more misses in flight. The crossover was not measured
// finely; 0.05 lies between the two measured densities.
// At 0.1 the fused loop is at the memory floor of its access pattern on that machine: a loop
// touching exactly the same memory (gather θ[i] and g[i], read and write m[j] and v[j], write
// θ[i]) with two multiply-adds per entry instead of Adam took 5.1 ms when the fused loop took
// 5.0-5.2 ms and our dense Adam 9.2-9.3 ms (same process, medians of 25 rounds), i.e. 1.8-1.9×
// dense Adam, short of the 2.4× that the line count predicts: the untouched 19% of the lines are
// fetched anyway. A loop touching one float in every line of θ and g (and the same compact
// moments) took as long as the loop touching only the selected entries (4.5-4.8 ms each, 3
// runs): with most lines touched the hardware prefetchers stream the whole arrays, so the floor
// is θ and g read in full plus θ's touched lines written back, ~12-13 B/param (~2.2× dense).
// Likewise a dense pass θ ← θ − c·g over every element plus the same compact moments took
// 4.9-5.2 ms against the compact step's 4.8-5.3 ms (3 runs, same process; dense Adam 9.4-9.9).
// Software prefetch 16-128 positions ahead (prefetchw for θ) changed nothing (5.1-5.6 ms).
// Visiting each chunk's entries in a scrambled order (j·97 mod n), so that the stream
// prefetchers cannot run ahead and fetch the unselected lines, made the same minimal loop
// slower, not faster: 18.9 ms, and 8.4-12.2 ms with software prefetch 16-256 entries ahead,
// against 5.3 ms in order (the loop is then bound by miss latency, not bandwidth). A dense
// AVX-512 scan instead (per 16-element group a mask word from the indices, vcompressps /
// vexpandps into a buffer, the Adam math on the buffer) took 8-12 ms: masked loads and masked
// stores are slow on this core, and with plain loads and blends it still reads every line.
constexpr int64_t kBlock = 256;
constexpr double kBlockedBelow = 0.05;

template <class P, class S, class C>
SPARSEOPT_AI C compact_theta(const CompactK<C>& k, C theta, C g, S* __restrict__ m_,
                             S* __restrict__ v_) {
  C gr = g * k.inv_scale;
  gr = sel(k.maximize, -gr, gr);
  const C m = k.beta1 * static_cast<C>(widen(*m_)) + k.one_minus_beta1 * gr;
  const C v = k.beta2 * static_cast<C>(widen(*v_)) + k.one_minus_beta2 * gr * gr;
  store_v(m_, m);
  store_v(v_, v);
  const C denom = sqrt_c(v) * k.inv_bc2_sqrt + k.eps;
  const C u = (m * k.inv_bc1) / denom;
  theta = sel(k.decay_on, theta * k.wd_decay, theta);
  return theta - k.lr * u;
}

template <class P, class S, class I, class C, bool BLOCKED>
SPARSEOPT_AI void compact_body(const CompactK<C> k, P* __restrict__ p, const P* __restrict__ g,
                               const I* __restrict__ idx, S* __restrict__ m_,
                               S* __restrict__ v_, int64_t n) {
  if constexpr (!BLOCKED) {
    for (int64_t j = 0; j < n; ++j) {
      const int32_t i = static_cast<int32_t>(idx[j]);
      const C theta = static_cast<C>(widen(p[i]));
      store_v(&p[i], compact_theta<P, S, C>(k, theta, static_cast<C>(widen(g[i])), &m_[j], &v_[j]));
    }
  } else {
    alignas(64) C tb[kBlock];
    alignas(64) C gb[kBlock];
    for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
      const int64_t len = n - j0 < kBlock ? n - j0 : kBlock;
      const I* __restrict__ ix = idx + j0;
      S* __restrict__ mb = m_ + j0;
      S* __restrict__ vb = v_ + j0;
      for (int64_t j = 0; j < len; ++j) {  // gathers into L1-resident buffers
        const int32_t i = static_cast<int32_t>(ix[j]);
        tb[j] = static_cast<C>(widen(p[i]));
        gb[j] = static_cast<C>(widen(g[i]));
      }
      for (int64_t j = 0; j < len; ++j)  // dense, vectorized like the fused Adam body
        tb[j] = compact_theta<P, S, C>(k, tb[j], gb[j], &mb[j], &vb[j]);
      for (int64_t j = 0; j < len; ++j) store_v(&p[static_cast<int32_t>(ix[j])], tb[j]);
    }
  }
}

#define SPARSEOPT_COMPACT_WRAPPER(SUFFIX, ATTR)                                               \
  template <class P, class S, class I, class C, bool BLOCKED>                                 \
  ATTR void compact_##SUFFIX(const CompactK<C>& k, P* p, const P* g, const I* idx, S* m,      \
                             S* v, int64_t n) {                                               \
    compact_body<P, S, I, C, BLOCKED>(k, p, g, idx, m, v, n);                                 \
  }
SPARSEOPT_COMPACT_WRAPPER(avx512, __attribute__((target(
    "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,prefer-vector-width=512"))))
SPARSEOPT_COMPACT_WRAPPER(avx2, __attribute__((target("avx2,fma,f16c"))))
SPARSEOPT_COMPACT_WRAPPER(generic, )
#undef SPARSEOPT_COMPACT_WRAPPER

template <class P, class S, class I, class C>
using CompactFn = void (*)(const CompactK<C>&, P*, const P*, const I*, S*, S*, int64_t);

template <class P, class S, class I, class C, bool BLOCKED>
CompactFn<P, S, I, C> compact_fn_b() {
  if constexpr (std::is_same<C, float>::value) {
    const char* isa = cpu_isa();  // honours SPARSEOPT_CPU_ISA and the testing hook
    if (std::strcmp(isa, "avx512") == 0) return &compact_avx512<P, S, I, C, BLOCKED>;
    if (std::strcmp(isa, "avx2") == 0) return &compact_avx2<P, S, I, C, BLOCKED>;
  }
  return &compact_generic<P, S, I, C, BLOCKED>;
}

template <class P, class S, class I, class C>
CompactFn<P, S, I, C> compact_fn(double density) {
  return density < kBlockedBelow ? compact_fn_b<P, S, I, C, true>()
                                 : compact_fn_b<P, S, I, C, false>();
}

template <class P>
using ComputeT = typename std::conditional<std::is_same<P, double>::value, double, float>::type;

// Work items of whole chunks (list positions [chunk_begin·k(C), ...)); ~kItemPositions list
// entries each, so that the OpenMP dynamic fetch is noise and 10 tensors of 2e6 params still
// give ~120 items for 2 threads.
constexpr int64_t kItemPositions = 16384;
constexpr int64_t kMinParallel = 16384;  // below this many positions in total: calling thread

struct CompactItem {
  int64_t tensor, chunk_begin, chunk_end;
};

void check_chunking(double density, int64_t chunk_size, bool chunk_offsets) {
  if (chunk_size <= 0) throw std::invalid_argument("sparseopt masked kernels: chunk_size <= 0");
  if (chunk_offsets && chunk_size > 32768)
    throw std::invalid_argument(
        "sparseopt masked kernels: int16 chunk offsets need chunk_size <= 32768");
  if (!(density > 0.0 && density <= 1.0))
    throw std::invalid_argument("sparseopt masked kernels: density must be in (0, 1]");
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Entry points.

// Timing, 10 × 2e6 fp32 N(0, 0.05²) values, chunk 4096, 2 threads, shared 2-core Zen 4 machine
// (C++ harness, medians of 15): 27 ms at density 0.1 and 25 ms at 0.01 with the scalar passes,
// 10.5 / 8.5 ms with the AVX-512 passes (select_passes), about one Adam step on the same params;
// forced to AVX2, 11-16 ms against 23-26 ms generic in the same runs.
void chunk_select_cpu(const SelectConfig& cfg, ScalarType value_type, int64_t n_tensors,
                      const void* const* values, const int64_t* numels, void* const* out) {
  if (n_tensors <= 0) return;
  check_chunking(cfg.density, cfg.chunk_size, cfg.chunk_offsets);
  const int64_t C = cfg.chunk_size;
  const int64_t kC = chunk_k(cfg.density, C);
  const int64_t group = std::max<int64_t>(1, 32768 / C);  // chunks per work item
  std::vector<SelectItem> items;
  int64_t total = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    const int64_t n_chunks = (numels[t] + C - 1) / C;
    total += numels[t];
    for (int64_t c = 0; c < n_chunks; c += group)
      items.push_back({t, c, std::min(n_chunks, c + group)});
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
  const bool parallel = total >= 65536 && n_items > 1;
  (void)parallel;
  const SelectPasses passes = select_passes();
  with_storage_type(value_type, "chunk_select_cpu", [&](auto vtag) {
    using P = typename decltype(vtag)::type;
#if defined(_OPENMP)
#pragma omp parallel if (parallel)
#endif
    {
      SelectScratch scratch(C);
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (int64_t w = 0; w < n_items; ++w) {
        const SelectItem& it = items[static_cast<size_t>(w)];
        const P* x = static_cast<const P*>(values[it.tensor]);
        const int64_t n = numels[it.tensor];
        for (int64_t c = it.chunk_begin; c < it.chunk_end; ++c) {
          const int64_t begin = c * C, L = std::min(C, n - begin);
          const int64_t k = chunk_k(cfg.density, L);
          if (cfg.chunk_offsets)
            select_chunk(x + begin, L, k, passes, scratch,
                         static_cast<int16_t*>(out[it.tensor]) + c * kC, 0);
          else
            select_chunk(x + begin, L, k, passes, scratch,
                         static_cast<int32_t*>(out[it.tensor]) + c * kC,
                         begin);
        }
      }
    }
  });
}

void compact_adam_cpu(const CompactAdamConfig& cfg, double inv_grad_scale, ScalarType param_type,
                      ScalarType state_type, int64_t n_tensors, void* const* params,
                      const void* const* grads, const void* const* indices,
                      void* const* exp_avgs, void* const* exp_avg_sqs, const double* steps,
                      const int64_t* numels) {
  if (n_tensors <= 0) return;
  check_chunking(cfg.density, cfg.chunk_size, cfg.chunk_offsets);
  if (state_type != ScalarType::Float32 && state_type != ScalarType::BFloat16)
    throw std::invalid_argument("sparseopt compact_adam_cpu: state must be float32 or bfloat16");
  const int64_t C = cfg.chunk_size;
  const int64_t kC = chunk_k(cfg.density, C);
  const int64_t group = std::max<int64_t>(1, kItemPositions / kC);
  std::vector<CompactItem> items;
  int64_t total = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    const int64_t n_chunks = (numels[t] + C - 1) / C;
    total += num_selected(numels[t], cfg.density, C);
    for (int64_t c = 0; c < n_chunks; c += group)
      items.push_back({t, c, std::min(n_chunks, c + group)});
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
  const bool parallel = total >= kMinParallel && n_items > 1;
  (void)parallel;

  with_storage_type(param_type, "compact_adam_cpu", [&](auto ptag) {
    using P = typename decltype(ptag)::type;
    using C_ = ComputeT<P>;
    auto run = [&](auto stag, auto itag) {
      using S = typename decltype(stag)::type;
      using I = typename decltype(itag)::type;
      CompactK<C_> base;
      base.inv_scale = static_cast<C_>(inv_grad_scale);
      base.lr = static_cast<C_>(cfg.lr);
      base.beta1 = static_cast<C_>(cfg.beta1);
      base.one_minus_beta1 = static_cast<C_>(1.0 - cfg.beta1);
      base.beta2 = static_cast<C_>(cfg.beta2);
      base.one_minus_beta2 = static_cast<C_>(1.0 - cfg.beta2);
      base.eps = static_cast<C_>(cfg.eps);
      base.wd_decay = static_cast<C_>(1.0 - cfg.lr * cfg.weight_decay);
      base.maximize = mask_of<C_>(cfg.maximize);
      base.decay_on = mask_of<C_>(cfg.weight_decay != 0.0);
      base.inv_bc1 = base.inv_bc2_sqrt = C_(1);
      std::vector<CompactK<C_>> ks(static_cast<size_t>(n_tensors), base);
      for (int64_t t = 0; t < n_tensors; ++t) {
        ks[t].inv_bc1 = static_cast<C_>(1.0 / (1.0 - std::pow(cfg.beta1, steps[t])));
        ks[t].inv_bc2_sqrt =
            static_cast<C_>(1.0 / std::sqrt(1.0 - std::pow(cfg.beta2, steps[t])));
      }
      const CompactFn<P, S, I, C_> fn = compact_fn<P, S, I, C_>(cfg.density);
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
#endif
      for (int64_t w = 0; w < n_items; ++w) {
        const CompactItem& it = items[static_cast<size_t>(w)];
        const int64_t t = it.tensor;
        const int64_t n_sel = num_selected(numels[t], cfg.density, C);
        P* p = static_cast<P*>(params[t]);
        const P* g = static_cast<const P*>(grads[t]);
        const I* idx = static_cast<const I*>(indices[t]);
        S* m = static_cast<S*>(exp_avgs[t]);
        S* v = static_cast<S*>(exp_avg_sqs[t]);
        const int64_t j0 = it.chunk_begin * kC, j1 = std::min(n_sel, it.chunk_end * kC);
        if constexpr (std::is_same<I, int16_t>::value) {
          for (int64_t c = it.chunk_begin; c < it.chunk_end; ++c) {
            const int64_t a = c * kC, b = std::min(n_sel, a + kC);
            fn(ks[t], p + c * C, g + c * C, idx + a, m + a, v + a, b - a);
          }
        } else {
          fn(ks[t], p, g, idx + j0, m + j0, v + j0, j1 - j0);
        }
      }
    };
    const bool bf16_state = state_type == ScalarType::BFloat16;
    if (cfg.chunk_offsets) {
      if (bf16_state) run(Tag<bf16_t>{}, Tag<int16_t>{});
      else run(Tag<float>{}, Tag<int16_t>{});
    } else {
      if (bf16_state) run(Tag<bf16_t>{}, Tag<int32_t>{});
      else run(Tag<float>{}, Tag<int32_t>{});
    }
  });
}

}  // namespace cpu
}  // namespace sparseopt
