// SparseOpt's BN-skew correction on the CPU (torch-free; API in csrc/include/sparseopt/
// row_scale.h, math in sparseopt_kernels/reference/skew.py, ALGORITHMS.md §3).
//
// A tensor of rows · L elements is `rows` rows of L contiguous elements.
//
//   row_coefficients_cpu:  count_i = nnz(mask row i),  total = Σ_i count_i,
//                          c_i = float(sqrt(double(count_i) · rows / double(total)))  (0 if total = 0)
//   row_scale_cpu:         x[i, j] = x[i, j] · c_i  (float32 math, float64 for float64 tensors,
//                          rounded once to the storage type); exactly +0 where the mask is 0.
//
// Exactness. Every operation of the coefficient formula is a single IEEE operation on exact
// inputs (the counts and rows are integers below 2^53, so the multiply is exact; the divide and
// the square root are correctly rounded, vectorized or not), and the float32 rounding is the
// last step: the result is bit for bit the reference's on every ISA. row_scale_ is one multiply
// per element (no add, so no FMA contraction can change it) followed by the same rounding as
// Tensor.to(dtype): also bit for bit the reference's.
//
// Vectorization: the same scheme as mirror_step.cpp. Each loop body is an always_inline template
// instantiated inside functions compiled with target("avx512f,...") / target("avx2,...") / no
// target, and GCC's auto-vectorizer turns it into zmm / ymm / xmm code; the ISA comes from
// cpu_isa() (SPARSEOPT_CPU_ISA and the testing hook lower it). Counting the bytes of a bool mask
// is a widening sum (`s += m[i] != 0`, uint32 lanes, at most kChunk bytes per sum so it cannot
// overflow); row_scale_ is a multiply, a bit-and with the mask and a store, memory bound.
//
// Rows. row_scale_ calls its body once per row segment with the row's coefficient as a scalar
// when rows are long (L >= kShortRow); for short rows (1-D tensors have L = 1, depthwise convs
// L = 9) the per-call cost would dominate, so the coefficients are expanded into a block of one
// factor per element and a second body multiplies element by element.
//
// Parallelism: like run_items in mirror_step.cpp, every tensor is cut into work items of about
// kChunk elements and the flattened item list runs under an OpenMP dynamic loop (serially below
// kMinParallel elements in total). For the counts, items are whole rows (several short rows per
// item) or kChunk-element pieces of one long row, whose partial counts are added up afterwards.
#pragma GCC optimize("no-math-errno", "no-trapping-math")

#include "sparseopt/row_scale.h"

#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "fast_exp.h"

// sqrt without errno, so that the coefficient loop vectorizes (see mirror_step.cpp).
extern "C" double sqrt(double) noexcept __attribute__((const));

namespace sparseopt {
namespace cpu {

using detail::bf16_t;
using detail::f16_t;
using detail::store;
using detail::widen;
using detail::with_storage_type;

namespace {

// Work-item size and the serial threshold: the values of mirror_step.cpp (see the measurements
// there); an item of 32K elements is tens of µs of memory traffic, far above the per-item cost.
constexpr int64_t kChunk = 32768;
constexpr int64_t kMinParallel = 65536;
// row_scale_: rows shorter than this are scaled through a block of per-element factors
// (kBlock elements at a time, on the stack); longer ones by one call per row with a scalar
// factor, whose scalar loop epilogue (< 64 elements) is then small against the row. Measured,
// 2e7 fp32 elements, 2 threads, AVX-512, unmasked (masked): rows of 64 and more 2.5-2.8 ms
// (3.0-3.3), about the machine's copy bandwidth; rows of 63 2.9 (3.4), 9: 3.3 (4.3), 2: 5.8
// (7.5), 1: 5.6 (5.6, plus the 80 MB of coefficients).
constexpr int64_t kShortRow = 64;
constexpr int64_t kBlock = 2048;
static_assert(kChunk % kBlock == 0, "blocks must tile the items");

// ------------------------------------------------------------------------------------------
// Per-element bodies.

// Number of non-zero bytes of m[0, n), n <= kChunk (the uint32 sum cannot overflow).
SPARSEOPT_AI int64_t count_body(const uint8_t* __restrict__ m, int64_t n) {
  uint32_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += m[i] != 0 ? 1u : 0u;
  return static_cast<int64_t>(s);
}

// counts[r] = nnz of row r for the n_rows rows of 2 <= L < kChunk bytes at m; returns their sum.
SPARSEOPT_AI int64_t count_rows_body(const uint8_t* __restrict__ m, int64_t n_rows, int64_t L,
                                     int64_t* __restrict__ counts) {
  int64_t total = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t c = count_body(m + r * L, L);
    counts[r] = c;
    total += c;
  }
  return total;
}

// out[r] = float(sqrt(double(counts[r]) · rows / total)), in this order (total > 0).
SPARSEOPT_AI void coefficients_body(const int64_t* __restrict__ counts, int64_t n, double rows,
                                    double total, float* __restrict__ out) {
  for (int64_t r = 0; r < n; ++r)
    out[r] = static_cast<float>(::sqrt(static_cast<double>(counts[r]) * rows / total));
}

// Rows of one element (1-D masks): count_i is 0 or 1, so c_i is +0 or v = float(sqrt(1·rows /
// total)), the same operations as coefficients_body. No per-row counts are stored (a 2e7-element
// 1-D mask took 120 ms through them, 160 MB of int64 written and read back).
SPARSEOPT_AI void unit_rows_body(const uint8_t* __restrict__ m, int64_t n, float v,
                                 float* __restrict__ out) {
  for (int64_t r = 0; r < n; ++r) out[r] = m[r] != 0 ? v : 0.0f;
}

// v where on != 0, +0 elsewhere: a bit-and with an all-ones / all-zeros mask (branch-free, so
// the loop stays one vector loop; NaN · c becomes +0 too, as torch.where does).
template <class C>
SPARSEOPT_AI C zero_unless(uint8_t on, C v) {
  using U = detail::MaskT<C>;
  U u;
  std::memcpy(&u, &v, sizeof u);
  u &= static_cast<U>(U(0) - static_cast<U>(on != 0));
  C out;
  std::memcpy(&out, &u, sizeof out);
  return out;
}

// x[i] = x[i] · (EACH ? f[i] : c), +0 where MASKED and on[i] == 0.
template <class T, class C, bool EACH, bool MASKED>
SPARSEOPT_AI void scale_body(T* __restrict__ x, C c, const C* __restrict__ f,
                             const uint8_t* __restrict__ on, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    C v = static_cast<C>(widen(x[i])) * (EACH ? f[i] : c);
    if constexpr (MASKED) v = zero_unless(on[i], v);
    store(&x[i], v);
  }
}

// f[0, n) = the factor of each element of a block whose first `first` elements (1 <= first <= L)
// end the row of c[0], followed by rows of L < kShortRow elements with c[1], c[2], ... Each row
// is written as a fixed-width broadcast (16 or 64 elements: whole vector stores, no loop
// epilogue; the next row overwrites the overshoot, f has 64 elements of slack): an L-element
// loop per row costs ~20 cycles a row (row_len 2 ran at 16 GB/s instead of 60).
template <class C>
SPARSEOPT_AI void expand_body(C* __restrict__ f, const float* __restrict__ c, int64_t n,
                              int64_t L, int64_t first) {
  if (L == 1) {
    for (int64_t i = 0; i < n; ++i) f[i] = static_cast<C>(c[i]);
    return;
  }
  {
    const C v = static_cast<C>(c[0]);
    for (int j = 0; j < 64; ++j) f[j] = v;
  }
  int64_t r = 1;
  if (L <= 16) {
    for (int64_t e = first; e < n; e += L, ++r) {
      const C v = static_cast<C>(c[r]);
      for (int j = 0; j < 16; ++j) f[e + j] = v;
    }
  } else {
    for (int64_t e = first; e < n; e += L, ++r) {
      const C v = static_cast<C>(c[r]);
      for (int j = 0; j < 64; ++j) f[e + j] = v;
    }
  }
}

#define SPARSEOPT_ROW_SCALE_WRAPPERS(SUFFIX, ATTR)                                              \
  ATTR int64_t count_##SUFFIX(const uint8_t* m, int64_t n) { return count_body(m, n); }         \
  ATTR int64_t count_rows_##SUFFIX(const uint8_t* m, int64_t n_rows, int64_t L,                 \
                                   int64_t* counts) {                                           \
    return count_rows_body(m, n_rows, L, counts);                                               \
  }                                                                                             \
  ATTR void coefficients_##SUFFIX(const int64_t* counts, int64_t n, double rows, double total,  \
                                  float* out) {                                                 \
    coefficients_body(counts, n, rows, total, out);                                             \
  }                                                                                             \
  ATTR void unit_rows_##SUFFIX(const uint8_t* m, int64_t n, float v, float* out) {              \
    unit_rows_body(m, n, v, out);                                                               \
  }                                                                                             \
  template <class T, class C, bool EACH, bool MASKED>                                           \
  ATTR void scale_##SUFFIX(T* x, C c, const C* f, const uint8_t* on, int64_t n) {               \
    scale_body<T, C, EACH, MASKED>(x, c, f, on, n);                                             \
  }                                                                                             \
  template <class C>                                                                            \
  ATTR void expand_##SUFFIX(C* f, const float* c, int64_t n, int64_t L, int64_t first) {        \
    expand_body<C>(f, c, n, L, first);                                                          \
  }

SPARSEOPT_ROW_SCALE_WRAPPERS(avx512, __attribute__((target(
    "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,prefer-vector-width=512"))))
SPARSEOPT_ROW_SCALE_WRAPPERS(avx2, __attribute__((target("avx2,fma,f16c"))))
SPARSEOPT_ROW_SCALE_WRAPPERS(generic, )
#undef SPARSEOPT_ROW_SCALE_WRAPPERS

enum class Isa { Generic, Avx2, Avx512 };

Isa isa_now() {
  const char* name = cpu_isa();  // honours SPARSEOPT_CPU_ISA and the testing hook
  if (std::strcmp(name, "avx512") == 0) return Isa::Avx512;
  if (std::strcmp(name, "avx2") == 0) return Isa::Avx2;
  return Isa::Generic;
}

template <class T, class C, bool EACH, bool MASKED>
using ScaleFn = void (*)(T*, C, const C*, const uint8_t*, int64_t);

template <class T, class C, bool EACH, bool MASKED>
ScaleFn<T, C, EACH, MASKED> scale_fn(Isa isa) {
  if (isa == Isa::Avx512) return &scale_avx512<T, C, EACH, MASKED>;
  if (isa == Isa::Avx2) return &scale_avx2<T, C, EACH, MASKED>;
  return &scale_generic<T, C, EACH, MASKED>;
}

template <class C>
using ExpandFn = void (*)(C*, const float*, int64_t, int64_t, int64_t);

template <class C>
ExpandFn<C> expand_fn(Isa isa) {
  if (isa == Isa::Avx512) return &expand_avx512<C>;
  if (isa == Isa::Avx2) return &expand_avx2<C>;
  return &expand_generic<C>;
}

template <class Fn>
void parallel_for(int64_t n_items, bool parallel, Fn&& fn) {
  (void)parallel;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
#endif
  for (int64_t j = 0; j < n_items; ++j) fn(j);
}

// ------------------------------------------------------------------------------------------
// Row coefficients. An item is rows [row_begin, row_end) whole (short rows, several per item)
// or bytes [begin, end) of the single row row_begin (a piece of a row of L >= kChunk).
struct CountItem {
  int64_t tensor, row_begin, row_end, begin, end;
  bool piece;
  int64_t count;  // filled by the parallel pass: the item's number of non-zeros
};

}  // namespace

void row_coefficients_cpu(int64_t n_tensors, const uint8_t* const* masks, const int64_t* rows,
                          const int64_t* row_lens, float* const* coefficients) {
  if (n_tensors <= 0) return;
  const Isa isa = isa_now();
  using CountFn = int64_t (*)(const uint8_t*, int64_t);
  using CountRowsFn = int64_t (*)(const uint8_t*, int64_t, int64_t, int64_t*);
  using CoefFn = void (*)(const int64_t*, int64_t, double, double, float*);
  const CountFn count = isa == Isa::Avx512 ? &count_avx512
                        : isa == Isa::Avx2 ? &count_avx2 : &count_generic;
  const CountRowsFn count_rows = isa == Isa::Avx512 ? &count_rows_avx512
                                 : isa == Isa::Avx2 ? &count_rows_avx2 : &count_rows_generic;
  const CoefFn coefs = isa == Isa::Avx512 ? &coefficients_avx512
                       : isa == Isa::Avx2 ? &coefficients_avx2 : &coefficients_generic;
  using UnitFn = void (*)(const uint8_t*, int64_t, float, float*);
  const UnitFn unit_rows = isa == Isa::Avx512 ? &unit_rows_avx512
                           : isa == Isa::Avx2 ? &unit_rows_avx2 : &unit_rows_generic;

  std::vector<CountItem> items;
  std::vector<std::vector<int64_t>> counts(static_cast<size_t>(n_tensors));
  int64_t total_elems = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    const int64_t R = rows[t], L = row_lens[t];
    if (R <= 0) continue;
    if (L <= 0) {  // no elements: total = 0, every coefficient 0
      std::memset(coefficients[t], 0, static_cast<size_t>(R) * sizeof(float));
      continue;
    }
    if (L > 1) counts[t].assign(static_cast<size_t>(R), 0);
    total_elems += R * L;
    if (L >= kChunk) {
      for (int64_t r = 0; r < R; ++r)
        for (int64_t b = 0; b < L; b += kChunk)
          items.push_back({t, r, r + 1, b, b + kChunk < L ? b + kChunk : L, true, 0});
    } else {
      const int64_t per = kChunk / L;  // >= 1
      for (int64_t r = 0; r < R; r += per)
        items.push_back({t, r, r + per < R ? r + per : R, 0, L, false, 0});
    }
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
  const bool parallel = total_elems >= kMinParallel && n_items > 1;

  parallel_for(n_items, parallel, [&](int64_t j) {
    CountItem& it = items[static_cast<size_t>(j)];
    const int64_t L = row_lens[it.tensor];
    const uint8_t* m = masks[it.tensor] + it.row_begin * L;
    it.count = it.piece   ? count(m + it.begin, it.end - it.begin)
               : L == 1 ? count(m, it.row_end - it.row_begin)  // <= kChunk rows
                        : count_rows(m, it.row_end - it.row_begin, L,
                                     counts[it.tensor].data() + it.row_begin);
  });

  // Totals, and the pieces of long rows added into their row (few: one per kChunk elements).
  std::vector<int64_t> totals(static_cast<size_t>(n_tensors), 0);
  for (const CountItem& it : items) {
    totals[it.tensor] += it.count;
    if (it.piece) counts[it.tensor][it.row_begin] += it.count;
  }

  parallel_for(n_items, parallel, [&](int64_t j) {
    const CountItem& it = items[static_cast<size_t>(j)];
    if (it.piece && it.begin != 0) return;  // a long row is written by its first piece
    const int64_t t = it.tensor, n = it.row_end - it.row_begin;
    float* out = coefficients[t] + it.row_begin;
    if (totals[t] == 0) {
      std::memset(out, 0, static_cast<size_t>(n) * sizeof(float));
      return;
    }
    if (row_lens[t] == 1) {
      const double one = 1.0;  // count_i, multiplied first as in coefficients_body
      const float v = static_cast<float>(
          ::sqrt(one * static_cast<double>(rows[t]) / static_cast<double>(totals[t])));
      unit_rows(masks[t] + it.row_begin, n, v, out);
      return;
    }
    coefs(counts[t].data() + it.row_begin, n, static_cast<double>(rows[t]),
          static_cast<double>(totals[t]), out);
  });
}

void row_scale_cpu(ScalarType type, int64_t n_tensors, void* const* tensors,
                   const float* const* scales, const uint8_t* const* masks, const int64_t* rows,
                   const int64_t* row_lens) {
  if (n_tensors <= 0) return;
  const Isa isa = isa_now();
  struct Item {
    int64_t tensor, begin, end;
  };
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (rows[t] <= 0 || row_lens[t] <= 0) continue;
    const int64_t n = rows[t] * row_lens[t];
    total += n;
    for (int64_t b = 0; b < n; b += kChunk)
      items.push_back({t, b, b + kChunk < n ? b + kChunk : n});
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
  const bool parallel = total >= kMinParallel && n_items > 1;
  const bool masked = masks != nullptr;

  with_storage_type(type, "row_scale_cpu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
    const auto row_fn =
        masked ? scale_fn<T, C, false, true>(isa) : scale_fn<T, C, false, false>(isa);
    const auto each_fn =
        masked ? scale_fn<T, C, true, true>(isa) : scale_fn<T, C, true, false>(isa);
    const ExpandFn<C> expand = expand_fn<C>(isa);
    parallel_for(n_items, parallel, [&](int64_t j) {
      const Item& it = items[static_cast<size_t>(j)];
      const int64_t L = row_lens[it.tensor];
      const float* c = scales[it.tensor];
      T* x = static_cast<T*>(tensors[it.tensor]);
      const uint8_t* m = masked ? masks[it.tensor] : nullptr;
      // One division per item or block, not per row (it would cost more than a short row).
      int64_t row = it.begin / L;
      if (L >= kShortRow) {
        // One call per row segment with the row's coefficient.
        for (int64_t e = it.begin; e < it.end; ++row) {
          const int64_t end = (row + 1) * L < it.end ? (row + 1) * L : it.end;
          row_fn(x + e, static_cast<C>(c[row]), nullptr, m ? m + e : nullptr, end - e);
          e = end;
        }
        return;
      }
      // Short rows: a block of per-element factors, then one call per block.
      alignas(64) C f[kBlock + 64];
      for (int64_t b = it.begin; b < it.end; b += kBlock) {
        const int64_t n = it.end - b < kBlock ? it.end - b : kBlock;
        row = b / L;
        expand(f, c + row, n, L, (row + 1) * L - b);
        each_fn(x + b, C(0), f, m ? m + b : nullptr, n);
      }
    });
  });
}

}  // namespace cpu
}  // namespace sparseopt
