// Fused base step + hyperbolic mirror step on the CPU (torch-free; API in
// csrc/include/sparseopt/mirror_step.h, math in sparseopt_kernels/reference/mirror.py).
//
// One pass per element, everything between the loads and the stores in registers:
//
//   g   = (grad / grad_scale), negated when maximize
//   SGD:  g_b = g + λθ;  b = g_b (first step) or μ·b + (1−τ)·g_b;  d = g_b + μ·b (nesterov) or b
//         θ' = θ − η·d                                             (mirror direction: g)
//   Adam: θ̃ = θ·(1 − ηλ) (AdamW) or θ;  g_b = g + λθ (Adam with λ ≠ 0) or g
//         m = β₁m + (1−β₁)g_b;  v = β₂v + ((1−β₂)g_b)g_b;  v̂ = max(v̂, v) (amsgrad)
//         u = (m·(1/bc1)) / (sqrt(v or v̂)·(1/sqrt(bc2)) + ε);  θ' = θ̃ − η·u  (direction: g or u)
//   exp mirror:        θ_new = θ'·exp(clamp(−η·(α·sign(θ')·d + β), −c, c))
//   hypentropy mirror: θ_new = γ·sinh(asinh(θ'/γ) − clamp(η·α·d, −c, c))·exp(−η·β)
//   order "before" (Adam only): the mirror step is applied to θ (with sign(θ)) before the AdamW
//   decay and update.
//
// Arithmetic follows the reference operation by operation in float32 (float64 for float64
// params), except that (1) the bias corrections and the AMP scale are applied as host-computed
// reciprocals (one division per element, not four) and (2) the translation unit is compiled with
// fp-contract=fast so multiply-adds become FMAs on the AVX2/AVX-512 paths (both builds, CMake's
// gnu++17 and setup.py's, get the same contraction through the pragma). Why: the fused
// HAM-AdamW step is compute-bound on Zen 4, whose AVX-512 is double-pumped: 10 × 2e6 fp32 params,
// 2 threads, torch fused AdamW 9.3 ms; ours without FMA 12.8 ms (1.41×), with FMA 9.35 ms (1.00×).
// Both differ from the reference only by rounding (checked against float64 in the tests). AVX2
// and AVX-512 give bit-identical results; the generic path (no FMA) rounds differently.
// bc1 = 1 − β₁^t and sqrt(1 − β₂^t) are computed per tensor in float64, as the reference does.
//
// Vectorization without ATen or -march: the per-element math is one always_inline template body
// (sgd_body / adam_body / mirror_body); a macro instantiates it inside three functions compiled
// with target("avx512f,...") / target("avx2,fma,f16c") / no target attribute, and GCC's
// auto-vectorizer turns each loop into zmm / ymm / xmm code (fast_exp.h holds the branch-free
// exp and bf16/fp16 conversions). The ISA is picked once with __builtin_cpu_supports; the
// environment variable SPARSEOPT_CPU_ISA=avx512|avx2|generic lowers it (never raises it).
// float64 params and the hypentropy form call libm (exp, sinh, asinh) per element and do not
// vectorize, so they are only instantiated for the generic ISA.
//
// Configuration that would need a branch per element is hoisted into template parameters where
// it changes which memory is touched or whether libm is called (momentum buffer or not, amsgrad,
// mirror form and order); cheap flags (maximize, weight decay on/off, nesterov, first step,
// direction) are loop-invariant bit-mask selects (see sel()), clamp on/off is c = inf.
//
// Dense masks (Masks, MaskKind::Bool or Bits): where the mask is 0 the param and every state
// buffer keep their bits. The bodies take a MASKED template flag; masked, each store becomes a
// bit select of the new and the old storage value (store_m), so the loop stays one vector loop,
// and MaskKind::None instantiates exactly the unmasked code. Both mask kinds are expanded to a
// 32-bit lane mask per element a 2048-element block at a time (for_mask_blocks, with the
// measurements).
//
// Row scales (RowScales, SGD and Adam; SparseOpt's BN-skew correction): g̃ = c[row]·g replaces g
// everywhere. The body's AMP factor becomes inv_scale·c per row run, see for_row_segments (with
// the measurements) for how rows are cut without scalar epilogues and how short rows are handled.
//
// Parallelism: every tensor is cut into chunks of kChunk elements and the flattened
// (tensor, chunk) list is run with an OpenMP dynamic loop, so one big tensor and a thousand small
// ones both keep all cores busy. Without OpenMP the pragmas are ignored and it runs serially.
#pragma GCC optimize("fp-contract=fast", "no-math-errno", "no-trapping-math")

#include "sparseopt/mirror_step.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "fast_exp.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

// sqrt without errno. std::sqrt is __builtin_sqrt, which GCC treats as writing errno unless the
// whole compilation has -fno-math-errno (the optimize pragma above does not reach builtins):
// every sqrt becomes "vsqrtss; if (x < 0) call sqrtf" and the loop no longer vectorizes.
// Redeclaring the libm functions `const` (they are, for our purposes: errno is never read) lets
// GCC emit vsqrtps/vsqrtpd inline. Results are the IEEE square root either way.
extern "C" float sqrtf(float) noexcept __attribute__((const));
extern "C" double sqrt(double) noexcept __attribute__((const));

namespace sparseopt {
namespace cpu {

using detail::bf16_t;
using detail::f16_t;
using detail::store;
using detail::widen;

float fast_expf(float x) { return detail::fast_expf_inline(x); }

namespace {

// ------------------------------------------------------------------------------------------
// ISA selection.
enum class Isa : int { Generic = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

Isa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return Isa::Avx2;
#endif
  return Isa::Generic;
}

// Lowers `best` to the ISA named by `name` (unknown names and higher ISAs are ignored).
Isa lowered(Isa best, const char* name) {
  if (name == nullptr) return best;
  Isa want = best;
  if (std::strcmp(name, "generic") == 0) want = Isa::Generic;
  else if (std::strcmp(name, "avx2") == 0) want = Isa::Avx2;
  else if (std::strcmp(name, "avx512") == 0) want = Isa::Avx512;
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

constexpr int kUnset = -1;
std::atomic<int> g_isa{kUnset};

Isa current_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v == kUnset) {
    v = static_cast<int>(lowered(detect_isa(), std::getenv("SPARSEOPT_CPU_ISA")));
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

// ------------------------------------------------------------------------------------------
// Per-element math.
enum class MirrorKind : int { None, ExpAfter, ExpBefore, HypAfter, HypBefore };

constexpr bool is_exp(MirrorKind k) { return k == MirrorKind::ExpAfter || k == MirrorKind::ExpBefore; }
constexpr bool is_hyp(MirrorKind k) { return k == MirrorKind::HypAfter || k == MirrorKind::HypBefore; }
constexpr bool is_before(MirrorKind k) { return k == MirrorKind::ExpBefore || k == MirrorKind::HypBefore; }
constexpr bool is_after(MirrorKind k) { return k == MirrorKind::ExpAfter || k == MirrorKind::HypAfter; }

SPARSEOPT_AI float exp_c(float x) { return detail::fast_expf_inline(x); }
SPARSEOPT_AI double exp_c(double x) { return std::exp(x); }

template <class C>
struct MirrorK {
  C neg_lr = 0, alpha = 0, beta = 0;  // exp:  z = −η·(α·sign(θ)·d + β)
  C lr_alpha = 0;                     // hyp:  s = η·α·d
  C lo = 0, hi = 0;                   // clamp bounds: ±c, or ±inf without a clamp
  C gamma = 1, decay = 1;             // hyp:  γ, exp(−η·β)
};

template <class C>
MirrorK<C> make_mirror(const MirrorConfig& m, double lr) {
  MirrorK<C> k;
  k.neg_lr = static_cast<C>(-lr);
  k.alpha = static_cast<C>(m.alpha);
  k.beta = static_cast<C>(m.beta);
  k.lr_alpha = static_cast<C>(lr * m.alpha);
  const C inf = std::numeric_limits<C>::infinity();
  k.lo = m.use_clamp ? static_cast<C>(-m.clamp) : -inf;
  k.hi = m.use_clamp ? static_cast<C>(m.clamp) : inf;
  k.gamma = static_cast<C>(m.gamma);
  k.decay = std::exp(static_cast<C>(-lr * m.beta));  // torch.exp of a 0-dim tensor
  return k;
}

// clamp with torch semantics for NaN (a NaN z fails both compares and stays NaN).
template <class C>
SPARSEOPT_AI C clamp_c(C z, C lo, C hi) {
  z = z < lo ? lo : z;
  return z > hi ? hi : z;
}

template <MirrorKind MK, class C>
SPARSEOPT_AI C mirror_apply(const MirrorK<C>& k, C theta, C d) {
  if constexpr (is_exp(MK)) {
    const C sgn = theta > C(0) ? C(1) : (theta < C(0) ? C(-1) : C(0));  // sign(NaN) = 0 as torch
    const C z = clamp_c(k.neg_lr * (k.alpha * sgn * d + k.beta), k.lo, k.hi);
    return theta * exp_c(z);
  } else if constexpr (is_hyp(MK)) {
    const C s = clamp_c(k.lr_alpha * d, k.lo, k.hi);
    return k.gamma * std::sinh(std::asinh(theta / k.gamma) - s) * k.decay;
  } else {
    return theta;
  }
}

// torch.maximum: NaN if either operand is NaN.
SPARSEOPT_AI float sqrt_c(float x) { return ::sqrtf(x); }
SPARSEOPT_AI double sqrt_c(double x) { return ::sqrt(x); }

template <class C>
SPARSEOPT_AI C nan_max(C a, C b) {
  C r = a > b ? a : b;
  r = a != a ? a : r;
  return b != b ? b : r;
}

// Loop-invariant flags are bit masks (detail::MaskT, mask_of, sel in fast_exp.h).
using detail::mask_of;
using detail::MaskT;
using detail::sel;

// Dense masks. Where the mask is 0 the element's param and state keep their bits: every store
// becomes "new value where on, old value elsewhere", a branch-free bit select on the storage
// representation (the old value is what the loop loaded anyway), so the loop stays one straight
// vector loop. Conditional stores would not vectorize for SSE/AVX2 (no masked byte/word stores
// GCC uses there) and rewriting the unchanged bits is unobservable: a chunk belongs to one thread.
template <class T>
using RawT = typename std::conditional<
    sizeof(T) == 8, uint64_t, typename std::conditional<sizeof(T) == 4, uint32_t, uint16_t>::type>::type;

// Masks reach the bodies as one 32-bit word per element: all ones where the element is updated,
// zero where it keeps its bits (for_mask_blocks expands bool and bit-packed masks into it). A
// word as wide as a float32 lane is what lets the select be one vpternlogd (vpand/vpandn/vpor on
// AVX2) per stored stream with no widening: with a byte per element GCC widened every 64 mask
// bytes through ~20 shuffles and spilled registers (measured below, in for_mask_blocks).
using LaneMask = uint32_t;
constexpr LaneMask kAllOn = ~LaneMask(0);

// `on ? a : b` on the bits (exact for NaN payloads and signed zeros). Only locals go through
// memcpy: a memcpy on the tensor memory itself is a char-typed access that defeats __restrict__,
// and GCC then gives up on the alias checks and does not vectorize the loop at all.
template <class T>
SPARSEOPT_AI T keep_sel(LaneMask on, T a, T b) {
  using U = RawT<T>;
  U ua, ub;
  std::memcpy(&ua, &a, sizeof ua);
  std::memcpy(&ub, &b, sizeof ub);
  // 0 or all ones at U's width: sign-extended for 64-bit storage, truncated for 16-bit.
  const U m = static_cast<U>(static_cast<int64_t>(static_cast<int32_t>(on)));
  const U r = static_cast<U>((ua & m) | (ub & static_cast<U>(~m)));
  T out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

template <bool MASKED, class T, class C>
SPARSEOPT_AI void store_m(T* dst, C x, LaneMask on) {
  if constexpr (!MASKED) {
    (void)on;
    store(dst, x);
  } else {
    T nv;
    store(&nv, x);
    const T old = *dst;
    *dst = keep_sel(on, nv, old);
  }
}

template <class C>
SPARSEOPT_AI C unscale(C g, C inv_scale, MaskT<C> maximize) {
  g = g * inv_scale;  // as GradScaler unscales (by the reciprocal); exact without AMP (1.0)
  return sel(maximize, -g, g);
}

template <class C>
struct SgdK {
  C inv_scale, lr, wd, mu, one_minus_damp;
  MaskT<C> maximize, wd_on, nesterov, first_step;
  MirrorK<C> m;
};

template <class C>
struct AdamK {
  C inv_scale, lr, wd, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_bc1,
    inv_bc2_sqrt, wd_decay;
  MaskT<C> maximize, coupled, decoupled, dir_update;
  MirrorK<C> m;
};

template <class C>
struct MirrorOnlyK {
  C inv_scale;
  MaskT<C> maximize;
  MirrorK<C> m;
};

template <class P, class S, class C, bool MOM, MirrorKind MK, bool MASKED>
SPARSEOPT_AI void sgd_body(const SgdK<C> k, P* __restrict__ p, const P* __restrict__ g,
                           S* __restrict__ buf, const LaneMask* __restrict__ on, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const LaneMask o = MASKED ? on[i] : kAllOn;
    const C theta = static_cast<C>(widen(p[i]));
    const C gr = unscale(static_cast<C>(widen(g[i])), k.inv_scale, k.maximize);
    const C gb = sel(k.wd_on, gr + k.wd * theta, gr);
    C d = gb;
    if constexpr (MOM) {
      const C b = static_cast<C>(widen(buf[i]));
      const C nb = sel(k.first_step, gb, k.mu * b + k.one_minus_damp * gb);
      store_m<MASKED>(&buf[i], nb, o);
      d = sel(k.nesterov, gb + k.mu * nb, nb);
    }
    const C theta1 = theta - k.lr * d;
    store_m<MASKED>(&p[i], mirror_apply<MK>(k.m, theta1, gr), o);
  }
}

template <class P, class S, class C, bool AMS, MirrorKind MK, bool MASKED>
SPARSEOPT_AI void adam_body(const AdamK<C> k, P* __restrict__ p, const P* __restrict__ g,
                            S* __restrict__ m_, S* __restrict__ v_, S* __restrict__ vmax_,
                            const LaneMask* __restrict__ on, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const LaneMask o = MASKED ? on[i] : kAllOn;
    C theta = static_cast<C>(widen(p[i]));
    const C gr = unscale(static_cast<C>(widen(g[i])), k.inv_scale, k.maximize);
    const C gb = sel(k.coupled, gr + k.wd * theta, gr);
    const C m = k.beta1 * static_cast<C>(widen(m_[i])) + k.one_minus_beta1 * gb;
    const C v = k.beta2 * static_cast<C>(widen(v_[i])) + k.one_minus_beta2 * gb * gb;
    store_m<MASKED>(&m_[i], m, o);
    store_m<MASKED>(&v_[i], v, o);
    C vd = v;
    if constexpr (AMS) {
      vd = nan_max(static_cast<C>(widen(vmax_[i])), v);
      store_m<MASKED>(&vmax_[i], vd, o);
    }
    // One division per element: the bias corrections are multiplied as host reciprocals.
    const C denom = sqrt_c(vd) * k.inv_bc2_sqrt + k.eps;
    const C u = (m * k.inv_bc1) / denom;
    const C d = sel(k.dir_update, u, gr);
    if constexpr (is_before(MK)) theta = mirror_apply<MK>(k.m, theta, d);
    theta = sel(k.decoupled, theta * k.wd_decay, theta);
    C theta1 = theta - k.lr * u;
    if constexpr (is_after(MK)) theta1 = mirror_apply<MK>(k.m, theta1, d);
    store_m<MASKED>(&p[i], theta1, o);
  }
}

template <class P, class C, MirrorKind MK, bool MASKED>
SPARSEOPT_AI void mirror_body(const MirrorOnlyK<C> k, P* __restrict__ p, const P* __restrict__ g,
                              const LaneMask* __restrict__ on, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const LaneMask o = MASKED ? on[i] : kAllOn;
    const C theta = static_cast<C>(widen(p[i]));
    const C gr = unscale(static_cast<C>(widen(g[i])), k.inv_scale, k.maximize);
    store_m<MASKED>(&p[i], mirror_apply<MK>(k.m, theta, gr), o);
  }
}

// Elements per block of the row-scale buffers (= kMaskBlock, checked below).
constexpr int64_t kFillBlock = 2048;

// Row scales with short rows (see for_row_segments): gs[i] = g[i]·(inv·c[row of i]) for a block of
// n <= kMaskBlock elements whose first `first` elements (1 <= first <= L) are the end of the row
// of c[0], the following rows of L elements each having c[1], c[2], ... The per-element factors
// are written one row at a time as a fixed-width broadcast (16 or 64 elements, one or four
// vector stores, no loop epilogue; the next row overwrites the overshoot), then multiplied in
// one vector loop: per-row loops with L-element trip counts cost ~20 cycles a row, +130% on the
// whole AdamW step at L = 2. Rows must be at most 64 long unless n - first <= 64 (the one-row-
// boundary windows of long rows). The products are the per-segment path's, bit for bit.
template <class C>
SPARSEOPT_AI void fill_body(C* __restrict__ gs, const C* __restrict__ g,
                            const float* __restrict__ c, C inv, int64_t n, int64_t L,
                            int64_t first) {
  if (L == 1) {
    for (int64_t i = 0; i < n; ++i) gs[i] = g[i] * (inv * static_cast<C>(c[i]));
    return;
  }
  alignas(64) C fac[kFillBlock + 64];
  {
    const C f = inv * static_cast<C>(c[0]);
    for (int j = 0; j < 64; ++j) fac[j] = f;
  }
  int64_t r = 1;
  if (L <= 16) {
    for (int64_t e = first; e < n; e += L, ++r) {
      const C f = inv * static_cast<C>(c[r]);
      for (int j = 0; j < 16; ++j) fac[e + j] = f;
    }
  } else {
    for (int64_t e = first; e < n; e += L, ++r) {
      const C f = inv * static_cast<C>(c[r]);
      for (int j = 0; j < 64; ++j) fac[e + j] = f;
    }
  }
  for (int64_t i = 0; i < n; ++i) gs[i] = g[i] * fac[i];
}

// ------------------------------------------------------------------------------------------
// The bodies instantiated once per ISA. GCC inlines the (target-less) always_inline body into
// the target-attributed wrapper before vectorizing, so the loop is vectorized for that ISA.
#define SPARSEOPT_ISA_WRAPPERS(SUFFIX, ATTR)                                                   \
  template <class P, class S, class C, bool MOM, MirrorKind MK, bool MASKED>                   \
  ATTR void sgd_##SUFFIX(const SgdK<C>& k, P* p, const P* g, S* buf, const LaneMask* on,        \
                         int64_t n) {                                                          \
    sgd_body<P, S, C, MOM, MK, MASKED>(k, p, g, buf, on, n);                                   \
  }                                                                                            \
  template <class P, class S, class C, bool AMS, MirrorKind MK, bool MASKED>                   \
  ATTR void adam_##SUFFIX(const AdamK<C>& k, P* p, const P* g, S* m, S* v, S* vmax,           \
                          const LaneMask* on, int64_t n) {                                      \
    adam_body<P, S, C, AMS, MK, MASKED>(k, p, g, m, v, vmax, on, n);                           \
  }                                                                                            \
  template <class P, class C, MirrorKind MK, bool MASKED>                                      \
  ATTR void mirror_##SUFFIX(const MirrorOnlyK<C>& k, P* p, const P* g, const LaneMask* on,      \
                            int64_t n) {                                                       \
    mirror_body<P, C, MK, MASKED>(k, p, g, on, n);                                             \
  }                                                                                            \
  template <class C>                                                                           \
  ATTR void fill_##SUFFIX(C* gs, const C* g, const float* c, C inv, int64_t n, int64_t L,      \
                          int64_t first) {                                                     \
    fill_body<C>(gs, g, c, inv, n, L, first);                                                  \
  }

// prefer-vector-width=512: GCC's generic tuning would otherwise settle for ymm under AVX-512.
SPARSEOPT_ISA_WRAPPERS(avx512, __attribute__((target(
    "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,prefer-vector-width=512"))))
SPARSEOPT_ISA_WRAPPERS(avx2, __attribute__((target("avx2,fma,f16c"))))
SPARSEOPT_ISA_WRAPPERS(generic, )
#undef SPARSEOPT_ISA_WRAPPERS

template <class P, class S, class C>
using SgdFn = void (*)(const SgdK<C>&, P*, const P*, S*, const LaneMask*, int64_t);
template <class P, class S, class C>
using AdamFn = void (*)(const AdamK<C>&, P*, const P*, S*, S*, S*, const LaneMask*, int64_t);
template <class P, class C>
using MirrorFn = void (*)(const MirrorOnlyK<C>&, P*, const P*, const LaneMask*, int64_t);

// libm-bound variants (float64, hypentropy) exist for the generic ISA only.
template <class C, MirrorKind MK>
constexpr bool vectorizable() { return std::is_same<C, float>::value && !is_hyp(MK); }

template <class P, class S, class C, bool MOM, MirrorKind MK, bool MASKED>
SgdFn<P, S, C> sgd_fn(Isa isa) {
  if constexpr (vectorizable<C, MK>()) {
    if (isa == Isa::Avx512) return &sgd_avx512<P, S, C, MOM, MK, MASKED>;
    if (isa == Isa::Avx2) return &sgd_avx2<P, S, C, MOM, MK, MASKED>;
  }
  return &sgd_generic<P, S, C, MOM, MK, MASKED>;
}

template <class P, class S, class C, bool AMS, MirrorKind MK, bool MASKED>
AdamFn<P, S, C> adam_fn(Isa isa) {
  if constexpr (vectorizable<C, MK>()) {
    if (isa == Isa::Avx512) return &adam_avx512<P, S, C, AMS, MK, MASKED>;
    if (isa == Isa::Avx2) return &adam_avx2<P, S, C, AMS, MK, MASKED>;
  }
  return &adam_generic<P, S, C, AMS, MK, MASKED>;
}

template <class C>
using FillFn = void (*)(C*, const C*, const float*, C, int64_t, int64_t, int64_t);

template <class C>
FillFn<C> fill_fn(Isa isa) {
  if (isa == Isa::Avx512) return &fill_avx512<C>;
  if (isa == Isa::Avx2) return &fill_avx2<C>;
  return &fill_generic<C>;
}

// Lane masks of the elements [0, n) of a block from its bit-packed (element e = bit e % 8 of
// byte e / 8) or bool mask. Written with intrinsics: GCC's vectorization of the scalar loops
// (per-byte shifts, or a byte-to-word compare) took ~100 instructions per 64 elements and cost
// as much as the rest of the masked step's overhead (see for_mask_blocks); a 16-bit mask word
// is one AVX-512 mask register (kmov + vpmovm2d per 16 elements).
void expand_bits_generic(const uint8_t* bits, LaneMask* on, int64_t n) {
  for (int64_t e = 0; e < n; ++e)
    on[e] = LaneMask(0) - ((static_cast<LaneMask>(bits[e >> 3]) >> (e & 7)) & 1u);
}

void expand_bools_generic(const uint8_t* b, LaneMask* on, int64_t n) {
  for (int64_t e = 0; e < n; ++e) on[e] = LaneMask(0) - static_cast<LaneMask>(b[e] != 0);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
void expand_bits_avx512(const uint8_t* bits, LaneMask* on, int64_t n) {
  int64_t e = 0;
  for (; e + 16 <= n; e += 16) {
    uint16_t w;
    std::memcpy(&w, bits + e / 8, 2);
    _mm512_storeu_si512(on + e, _mm512_movm_epi32(static_cast<__mmask16>(w)));
  }
  expand_bits_generic(bits + e / 8, on + e, n - e);  // e is a multiple of 8
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
void expand_bools_avx512(const uint8_t* b, LaneMask* on, int64_t n) {
  int64_t e = 0;
  for (; e + 16 <= n; e += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + e));
    _mm512_storeu_si512(on + e, _mm512_movm_epi32(_mm_test_epi8_mask(x, x)));
  }
  expand_bools_generic(b + e, on + e, n - e);
}

__attribute__((target("avx2"))) void expand_bits_avx2(const uint8_t* bits, LaneMask* on,
                                                      int64_t n) {
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  int64_t e = 0;
  for (; e + 8 <= n; e += 8) {
    const __m256i x = _mm256_and_si256(_mm256_set1_epi32(bits[e / 8]), lane_bit);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(on + e), _mm256_cmpeq_epi32(x, lane_bit));
  }
  expand_bits_generic(bits + e / 8, on + e, n - e);
}

__attribute__((target("avx2"))) void expand_bools_avx2(const uint8_t* b, LaneMask* on,
                                                       int64_t n) {
  const __m256i zero = _mm256_setzero_si256();
  int64_t e = 0;
  for (; e + 8 <= n; e += 8) {
    int64_t w;
    std::memcpy(&w, b + e, 8);
    const __m256i x = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(w));  // 0..255 per lane
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(on + e), _mm256_cmpgt_epi32(x, zero));
  }
  expand_bools_generic(b + e, on + e, n - e);
}
#endif

using ExpandFn = void (*)(const uint8_t*, LaneMask*, int64_t);

ExpandFn expand_fn(MaskKind kind, Isa isa) {
  const bool bits = kind == MaskKind::Bits;
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Isa::Avx512) return bits ? &expand_bits_avx512 : &expand_bools_avx512;
  if (isa == Isa::Avx2) return bits ? &expand_bits_avx2 : &expand_bools_avx2;
#else
  (void)isa;
#endif
  return bits ? &expand_bits_generic : &expand_bools_generic;
}

template <class P, class C, MirrorKind MK, bool MASKED>
MirrorFn<P, C> mirror_fn(Isa isa) {
  if constexpr (vectorizable<C, MK>()) {
    if (isa == Isa::Avx512) return &mirror_avx512<P, C, MK, MASKED>;
    if (isa == Isa::Avx2) return &mirror_avx2<P, C, MK, MASKED>;
  }
  return &mirror_generic<P, C, MK, MASKED>;
}

// Runtime MirrorKind -> template argument.
template <class F>
auto with_mirror_kind(MirrorKind mk, F&& f) {
  using K = MirrorKind;
  switch (mk) {
    case K::ExpAfter: return f(std::integral_constant<K, K::ExpAfter>{});
    case K::ExpBefore: return f(std::integral_constant<K, K::ExpBefore>{});
    case K::HypAfter: return f(std::integral_constant<K, K::HypAfter>{});
    case K::HypBefore: return f(std::integral_constant<K, K::HypBefore>{});
    default: return f(std::integral_constant<K, K::None>{});
  }
}

MirrorKind mirror_kind(const MirrorConfig& m, bool honour_order) {
  if (!m.enabled()) return MirrorKind::None;
  const bool before = honour_order && m.order == MirrorOrder::Before;
  if (m.form == MirrorForm::Exp) return before ? MirrorKind::ExpBefore : MirrorKind::ExpAfter;
  return before ? MirrorKind::HypBefore : MirrorKind::HypAfter;
}

using detail::Tag;

// Calls f(Tag<P>, Tag<S>) for the supported (param, state) storage types.
template <class F>
void with_types(ScalarType pt, ScalarType st, F&& f) {
  using ST = ScalarType;
  switch (pt) {
    case ST::Float32:
      if (st == ST::Float32) return f(Tag<float>{}, Tag<float>{});
      break;
    case ST::Float64:
      if (st == ST::Float64) return f(Tag<double>{}, Tag<double>{});
      if (st == ST::Float32) return f(Tag<double>{}, Tag<float>{});
      break;
    case ST::BFloat16:
      if (st == ST::BFloat16) return f(Tag<bf16_t>{}, Tag<bf16_t>{});
      if (st == ST::Float32) return f(Tag<bf16_t>{}, Tag<float>{});
      break;
    case ST::Float16:
      if (st == ST::Float16) return f(Tag<f16_t>{}, Tag<f16_t>{});
      if (st == ST::Float32) return f(Tag<f16_t>{}, Tag<float>{});
      break;
  }
  throw std::invalid_argument(
      "sparseopt CPU kernels: params must be float32/float64/bfloat16/float16 and the state "
      "float32 or the param dtype");
}

template <class P>
using ComputeT = typename std::conditional<std::is_same<P, double>::value, double, float>::type;

// ------------------------------------------------------------------------------------------
// Work list. Chunk size: a chunk must be big enough that the per-chunk overhead (an OpenMP
// dynamic-schedule fetch, an indirect call, the vector loop's prologue/epilogue: well under a
// microsecond) is noise, and small enough that many small and few large tensors both split
// evenly over the cores. 32K elements of fp32 AdamW touch ~900 KB, tens of µs of work. Not tuned
// further: with it, 10 × 2e6 fp32 HAM-AdamW (exp, clamp 5) took 42 ms vs 61 ms for
// torch.optim.AdamW(fused=True) on the 2-core AVX-512 development machine (plain AdamW: 26 ms).
constexpr int64_t kChunk = 32768;
// Below this many elements in total the whole call runs on the calling thread: waking the
// OpenMP team costs a few microseconds, about as much as the work itself.
constexpr int64_t kMinParallel = 65536;

struct Item {
  int64_t tensor, begin, end;
};

template <class Fn>
void run_items(int64_t n_tensors, const int64_t* numels, Fn&& fn) {
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    const int64_t n = numels[t];
    total += n;
    for (int64_t b = 0; b < n; b += kChunk) items.push_back({t, b, b + kChunk < n ? b + kChunk : n});
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
  const bool parallel = total >= kMinParallel && n_items > 1;
  (void)parallel;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
#endif
  for (int64_t j = 0; j < n_items; ++j) fn(items[static_cast<size_t>(j)]);
}

template <class T>
T* at(void* const* ptrs, const Item& it) {
  return static_cast<T*>(ptrs[it.tensor]) + it.begin;
}
template <class T>
const T* at(const void* const* ptrs, const Item& it) {
  return static_cast<const T*>(ptrs[it.tensor]) + it.begin;
}

// Both mask kinds are expanded into lane masks (LaneMask, one word per element) a block at a
// time, and the masked body runs on the words: its per-element mask read stays a contiguous
// vector load of the lane width, which `bits[i >> 3] >> (i & 7)` or a byte per element is not.
// Bits go through a 256-entry table of 8 words (8 KB), one 32-byte copy per 8 elements; bools
// through a byte-to-word loop GCC vectorizes. A 2048-element block is 8 KB of stack,
// L1-resident, and long enough that the body's call and prologue cost nothing. Item boundaries
// are multiples of kChunk (and blocks of kMaskBlock), both multiples of 8, so a mask byte never
// straddles two items.
// Measured with a C++ harness (AdamW wd 0.01, half of each tensor masked, AVX-512, the shared
// 2-core machine, medians of 9 rounds of 3-5 steps):
// masked step time / unmasked step time     byte masks (before)    lane masks (now)
//   1 × 32768 fp32, 1 thread (L2)           Bits 1.47-1.49        Bits 1.27-1.35
//                                           Bool 1.26-1.27        Bool 1.27-1.30
//   10 × 2e6 fp32, 1 thread (DRAM)          Bits 1.44-1.55        Bits 1.11-1.15
//                                           Bool 1.25-1.40        Bool 1.21-1.24
//   10 × 2e6 fp32, 2 threads (DRAM)         Bits 1.05-1.24        Bits 1.02-1.08
//                                           Bool 1.09-1.13        Bool 1.05-1.12
// (two threads saturate DRAM, so the masked step's extra work mostly hides there; the
// single-thread rows show it). Skipping both the expansion and the selects gave 1.00, and most
// of the bits' old cost was the table-driven expansion. The bool masks' remaining cost is
// reading their byte per element (20 MB here).
constexpr int64_t kMaskBlock = 2048;
static_assert(kChunk % 8 == 0 && kMaskBlock % 8 == 0 && kChunk % kMaskBlock == 0,
              "mask bytes must not straddle work items");

// Runs f(on, offset, length) over the item: on = nullptr without a mask, else lane masks of the
// block of elements [offset, offset + length) (offsets relative to it.begin).
template <class F>
void for_mask_blocks(const Masks& masks, const Item& it, F&& f) {
  const int64_t n = it.end - it.begin;
  if (masks.kind == MaskKind::None) return f(static_cast<const LaneMask*>(nullptr), int64_t(0), n);
  const uint8_t* m = static_cast<const uint8_t*>(masks.data[it.tensor]);
  const bool bits = masks.kind == MaskKind::Bits;
  const ExpandFn expand = expand_fn(masks.kind, current_isa());
  alignas(64) LaneMask on[kMaskBlock];
  for (int64_t off = 0; off < n; off += kMaskBlock) {
    const int64_t len = n - off < kMaskBlock ? n - off : kMaskBlock;
    expand(bits ? m + (it.begin + off) / 8 : m + it.begin + off, on, len);
    f(static_cast<const LaneMask*>(on), off, len);
  }
}

void check_masks(const Masks& masks) {
  if (masks.kind != MaskKind::None && masks.kind != MaskKind::Bool &&
      masks.kind != MaskKind::Bits)
    throw std::invalid_argument("sparseopt CPU kernels: unknown mask kind");
  if (masks.kind != MaskKind::None && masks.data == nullptr)
    throw std::invalid_argument("sparseopt CPU kernels: masks.data is null");
}

// Row scales (SparseOpt, RowScales): the bodies multiply the gradient by k.inv_scale right after
// loading it, so a run of elements of one row with coefficient c runs the unchanged body with a
// copy of k whose inv_scale is inv_scale·c: one multiply per row, no new instantiation, and with
// RowScales disabled the code that ran before runs unchanged. The product rounds like the
// reference's (g·inv_scale)·c up to one rounding, and is exactly c·g without AMP.
// Cutting the vector loop at every row end leaves a scalar epilogue per row when the row length
// is not a multiple of the loop's 64 elements (+4% on the step at row_len 784 = 12·64 + 16, +11%
// at 147, +155% at 63), and one call per row is all overhead for short rows (+430% at 16, +1250%
// at 1). So for float32/float64 params, where the scaled gradient g·(inv_scale·c) stored in the
// param dtype is exactly what the body computes from it with inv_scale = 1:
//  - rows of kShortRow elements or more: the whole 64-multiples of a row run in place, the rest
//    of the row and the start of the next one as one kVec-element window whose scaled gradient
//    is first written to a stack buffer (fill_body);
//  - shorter rows: whole kMaskBlock blocks through the buffer.
// bf16/fp16 gradients would need a float buffer, i.e. a second instantiation of every body
// (compile time +~50%): they run one call per row at every row length (epilogues included).
// Measured, 10 × 2e6 fp32 AdamW (wd 0.01), Bool masks, 2 threads, AVX-512 (Zen 4), on the shared
// 2-core machine, as the median of per-pair ratios of alternated A/B calls (C++ loop, 40 pairs
// per process, several processes): rows of 2048 +1.6% to +4.2% (+8% in one noisy process), and
// splitting the unscaled loop into the same 2048-element calls without any row scale costs
// +0.9% to +4.5% there, i.e. the cost is the cut, not the row logic; 784: +2% to +5%; 256: 0 to
// +2%; 147: -12% to +2%. torch.utils.benchmark, rows of 2048, 9-15 interleaved rounds: paired
// medians -1.1%, +0.3%, +4.3%. Short rows through the buffer: 63 +35%, 32 +31%, 9 +34%, 2 +52%,
// 1 +38% (the fill pass reads g on its own, then the body runs on the buffer).
constexpr int64_t kShortRow = 64;
// Body calls whose length is a multiple of kVec leave no scalar epilogue on any ISA: the widest
// vector loop handles at most 64 elements per iteration.
constexpr int64_t kVec = 64;
static_assert(kShortRow >= kVec, "a kVec window must cross at most one row boundary");
static_assert(kMaskBlock % kVec == 0, "mask blocks must be whole windows");
static_assert(kFillBlock == kMaskBlock, "the fill buffer holds one mask block");

void check_row_scales(const RowScales& rs, int64_t n_tensors) {
  if (!rs.enabled()) return;
  if (rs.row_lens == nullptr)
    throw std::invalid_argument("sparseopt CPU kernels: row_scales.row_lens is null");
  for (int64_t t = 0; t < n_tensors; ++t)
    if (rs.row_lens[t] < 1 || rs.data[t] == nullptr)
      throw std::invalid_argument(
          "sparseopt CPU kernels: row_scales needs a vector and a row length >= 1 per tensor");
}

// Runs body(k', g', o, l) over the row segments of the elements [off, off + len) of item `it`
// (offsets relative to it.begin): k' = k with the row's inv_scale, g' the gradient of element o
// (g = the item's gradient), or both from the short-row buffer described above.
template <class C, class K, class P, class Body>
void for_row_segments(const RowScales& rs, const K& k, const Item& it, const P* g, int64_t off,
                      int64_t len, FillFn<C> fill_rows, Body&& body) {
  const float* c = rs.data[it.tensor];
  const int64_t L = rs.row_lens[it.tensor];
  const int64_t stop = off + len;
  // The row of the current element and its end, item-relative. One division per call: an int64
  // division costs more than the update of a 9-element row.
  int64_t row = (it.begin + off) / L;
  int64_t row_end = (row + 1) * L - it.begin;
  auto advance = [&](int64_t e) {  // to the row of element e (>= the current one)
    if (e < row_end) return;
    if (e - row_end < L) {
      ++row, row_end += L;
    } else {
      row = (it.begin + e) / L;
      row_end = (row + 1) * L - it.begin;
    }
  };
  K kr = k;  // k with the current row's factor (one object, updated per row)
  auto row_k = [&]() -> const K& {
    kr.inv_scale = k.inv_scale * static_cast<C>(c[row]);
    return kr;
  };
  if constexpr (std::is_same<P, C>::value) {
    K k1 = k;
    k1.inv_scale = C(1);
    // gs[0, n) = the scaled gradient of the elements [b, b + n).
    auto fill = [&](P* gs, int64_t b, int64_t n) {
      advance(b);
      fill_rows(gs, g + b, c + row, k.inv_scale, n, L, row_end - b);
    };
    if (L < kShortRow) {  // whole blocks through the buffer
      alignas(64) P gs[kMaskBlock];
      for (int64_t b = off; b < stop; b += kMaskBlock) {
        const int64_t n = stop - b < kMaskBlock ? stop - b : kMaskBlock;
        fill(gs, b, n);
        body(static_cast<const K&>(k1), static_cast<const P*>(gs), b, n);
      }
      return;
    }
    alignas(64) P gw[kVec];
    // Long rows: the whole kVec-multiples of a row in place, the (< kVec) rest of the row and
    // the start of the next one as one kVec-element window through the buffer. So no body call
    // but the item's last one has a length that leaves a scalar epilogue: at row_len 784 (12·64
    // + 16) the per-row calls of the simple split cost +4%, at 147 +11%.
    for (int64_t pos = off; pos < stop;) {
      advance(pos);
      const int64_t lim = row_end < stop ? row_end : stop;
      const int64_t n_in = (lim - pos) / kVec * kVec;
      if (n_in > 0) {
        body(row_k(), g + pos, pos, n_in);
        pos += n_in;
        if (pos >= stop) break;
      }
      const int64_t w = stop - pos < kVec ? stop - pos : kVec;
      fill(gw, pos, w);
      body(static_cast<const K&>(k1), static_cast<const P*>(gw), pos, w);
      pos += w;
    }
    return;
  }
  // bf16/fp16 params: one call per row segment.
  for (int64_t e = off; e < stop;) {
    advance(e);
    const int64_t end = row_end < stop ? row_end : stop;
    body(row_k(), g + e, e, end - e);
    e = end;
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Entry points.

const char* cpu_isa() { return isa_name(current_isa()); }

// Testing hook (not in the public header; declared by csrc/tests/test_mirror_step_cpu.cpp):
// re-selects the ISA as if SPARSEOPT_CPU_ISA were `name` (nullptr: the environment's value).
// It can only lower the detected ISA. Not meant to race with running kernels. Returns cpu_isa().
const char* set_cpu_isa_for_testing(const char* name) {
  const Isa isa = lowered(detect_isa(), name ? name : std::getenv("SPARSEOPT_CPU_ISA"));
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
  return isa_name(isa);
}

void ham_sgd_cpu(const SgdConfig& cfg, double inv_grad_scale, ScalarType param_type,
                 ScalarType state_type, int64_t n_tensors, void* const* params,
                 const void* const* grads, void* const* momentum_buffers, const int64_t* numels,
                 Masks masks, RowScales row_scales) {
  if (n_tensors <= 0) return;
  check_masks(masks);
  check_row_scales(row_scales, n_tensors);
  const bool masked = masks.kind != MaskKind::None;
  const Isa isa = current_isa();
  with_types(param_type, state_type, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using C = ComputeT<P>;
    SgdK<C> k;
    k.inv_scale = static_cast<C>(inv_grad_scale);
    k.lr = static_cast<C>(cfg.lr);
    k.wd = static_cast<C>(cfg.weight_decay);
    k.mu = static_cast<C>(cfg.momentum);
    k.one_minus_damp = static_cast<C>(1.0 - cfg.dampening);
    k.maximize = mask_of<C>(cfg.maximize);
    k.wd_on = mask_of<C>(cfg.weight_decay != 0.0);
    k.nesterov = mask_of<C>(cfg.nesterov);
    k.first_step = mask_of<C>(cfg.is_first_step);
    k.m = make_mirror<C>(cfg.mirror, cfg.lr);
    const bool mom = cfg.momentum != 0.0;
    with_mirror_kind(mirror_kind(cfg.mirror, false), [&](auto mk) {
      constexpr MirrorKind MK = decltype(mk)::value;
      if constexpr (!is_before(MK)) {  // SGD has no "before" order
        const SgdFn<P, S, C> fn =
            masked ? (mom ? sgd_fn<P, S, C, true, MK, true>(isa)
                          : sgd_fn<P, S, C, false, MK, true>(isa))
                   : (mom ? sgd_fn<P, S, C, true, MK, false>(isa)
                          : sgd_fn<P, S, C, false, MK, false>(isa));
        if (!row_scales.enabled()) {
          run_items(n_tensors, numels, [&](const Item& it) {
            for_mask_blocks(masks, it, [&](const LaneMask* on, int64_t off, int64_t len) {
              fn(k, at<P>(params, it) + off, at<P>(grads, it) + off,
                 mom ? at<S>(momentum_buffers, it) + off : nullptr, on, len);
            });
          });
          return;
        }
        const FillFn<C> fill = fill_fn<C>(isa);
        run_items(n_tensors, numels, [&](const Item& it) {
          for_mask_blocks(masks, it, [&](const LaneMask* on, int64_t off, int64_t len) {
            for_row_segments<C>(row_scales, k, it, at<P>(grads, it), off, len, fill,
                                [&](const SgdK<C>& kr, const P* g, int64_t o, int64_t n) {
                                  fn(kr, at<P>(params, it) + o, g,
                                     mom ? at<S>(momentum_buffers, it) + o : nullptr,
                                     on ? on + (o - off) : nullptr, n);
                                });
          });
        });
      }
    });
  });
}

void ham_adam_cpu(const AdamConfig& cfg, double inv_grad_scale, ScalarType param_type,
                  ScalarType state_type, int64_t n_tensors, void* const* params,
                  const void* const* grads, void* const* exp_avgs, void* const* exp_avg_sqs,
                  void* const* max_exp_avg_sqs, const double* steps, const int64_t* numels,
                  Masks masks, RowScales row_scales) {
  if (n_tensors <= 0) return;
  check_masks(masks);
  check_row_scales(row_scales, n_tensors);
  const bool masked = masks.kind != MaskKind::None;
  const Isa isa = current_isa();
  with_types(param_type, state_type, [&](auto ptag, auto stag) {
    using P = typename decltype(ptag)::type;
    using S = typename decltype(stag)::type;
    using C = ComputeT<P>;
    AdamK<C> base;
    base.inv_scale = static_cast<C>(inv_grad_scale);
    base.lr = static_cast<C>(cfg.lr);
    base.wd = static_cast<C>(cfg.weight_decay);
    base.beta1 = static_cast<C>(cfg.beta1);
    base.one_minus_beta1 = static_cast<C>(1.0 - cfg.beta1);
    base.beta2 = static_cast<C>(cfg.beta2);
    base.one_minus_beta2 = static_cast<C>(1.0 - cfg.beta2);
    base.eps = static_cast<C>(cfg.eps);
    base.wd_decay = static_cast<C>(1.0 - cfg.lr * cfg.weight_decay);
    base.maximize = mask_of<C>(cfg.maximize);
    base.coupled = mask_of<C>(cfg.weight_decay != 0.0 && !cfg.decoupled_weight_decay);
    base.decoupled = mask_of<C>(cfg.weight_decay != 0.0 && cfg.decoupled_weight_decay);
    base.dir_update = mask_of<C>(cfg.mirror.direction == MirrorDirection::Update);
    base.m = make_mirror<C>(cfg.mirror, cfg.lr);
    base.inv_bc1 = base.inv_bc2_sqrt = C(1);
    // Bias corrections per tensor in float64 (1 − β₂ᵗ cancels badly in float32), only the
    // results rounded to the compute type, as the reference and torch.optim do.
    std::vector<AdamK<C>> ks(static_cast<size_t>(n_tensors), base);
    for (int64_t t = 0; t < n_tensors; ++t) {
      ks[t].inv_bc1 = static_cast<C>(1.0 / (1.0 - std::pow(cfg.beta1, steps[t])));
      ks[t].inv_bc2_sqrt = static_cast<C>(1.0 / std::sqrt(1.0 - std::pow(cfg.beta2, steps[t])));
    }
    with_mirror_kind(mirror_kind(cfg.mirror, true), [&](auto mk) {
      constexpr MirrorKind MK = decltype(mk)::value;
      const AdamFn<P, S, C> fn =
          masked ? (cfg.amsgrad ? adam_fn<P, S, C, true, MK, true>(isa)
                                : adam_fn<P, S, C, false, MK, true>(isa))
                 : (cfg.amsgrad ? adam_fn<P, S, C, true, MK, false>(isa)
                                : adam_fn<P, S, C, false, MK, false>(isa));
      if (!row_scales.enabled()) {
        run_items(n_tensors, numels, [&](const Item& it) {
          for_mask_blocks(masks, it, [&](const LaneMask* on, int64_t off, int64_t len) {
            fn(ks[it.tensor], at<P>(params, it) + off, at<P>(grads, it) + off,
               at<S>(exp_avgs, it) + off, at<S>(exp_avg_sqs, it) + off,
               cfg.amsgrad ? at<S>(max_exp_avg_sqs, it) + off : nullptr, on, len);
          });
        });
        return;
      }
      const FillFn<C> fill = fill_fn<C>(isa);
      run_items(n_tensors, numels, [&](const Item& it) {
        for_mask_blocks(masks, it, [&](const LaneMask* on, int64_t off, int64_t len) {
          for_row_segments<C>(row_scales, ks[it.tensor], it, at<P>(grads, it), off, len, fill,
                              [&](const AdamK<C>& kr, const P* g, int64_t o, int64_t n) {
                                fn(kr, at<P>(params, it) + o, g, at<S>(exp_avgs, it) + o,
                                   at<S>(exp_avg_sqs, it) + o,
                                   cfg.amsgrad ? at<S>(max_exp_avg_sqs, it) + o : nullptr,
                                   on ? on + (o - off) : nullptr, n);
                              });
        });
      });
    });
  });
}

void mirror_step_cpu(const MirrorStepConfig& cfg, double inv_grad_scale, ScalarType param_type,
                     int64_t n_tensors, void* const* params, const void* const* grads,
                     const int64_t* numels, Masks masks) {
  if (n_tensors <= 0 || !cfg.mirror.enabled()) return;  // α = β = 0: θ is left untouched
  check_masks(masks);
  const bool masked = masks.kind != MaskKind::None;
  const Isa isa = current_isa();
  with_types(param_type, param_type, [&](auto ptag, auto) {
    using P = typename decltype(ptag)::type;
    using C = ComputeT<P>;
    MirrorOnlyK<C> k;
    k.inv_scale = static_cast<C>(inv_grad_scale);
    k.maximize = mask_of<C>(cfg.maximize);
    k.m = make_mirror<C>(cfg.mirror, cfg.lr);
    const MirrorKind kind =
        cfg.mirror.form == MirrorForm::Exp ? MirrorKind::ExpAfter : MirrorKind::HypAfter;
    with_mirror_kind(kind, [&](auto mk) {
      constexpr MirrorKind MK = decltype(mk)::value;
      if constexpr (MK == MirrorKind::ExpAfter || MK == MirrorKind::HypAfter) {
        const MirrorFn<P, C> fn =
            masked ? mirror_fn<P, C, MK, true>(isa) : mirror_fn<P, C, MK, false>(isa);
        run_items(n_tensors, numels, [&](const Item& it) {
          for_mask_blocks(masks, it, [&](const LaneMask* on, int64_t off, int64_t len) {
            fn(k, at<P>(params, it) + off, at<P>(grads, it) + off, on, len);
          });
        });
      }
    });
  });
}

}  // namespace cpu
}  // namespace sparseopt
