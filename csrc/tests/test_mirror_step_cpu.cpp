// Unit test of the torch-free CPU kernels (csrc/cpu): no framework, prints "N passed, M failed"
// and exits non-zero on failure.
//
//  1. fast_expf: ulp error against double-precision exp over a dense sweep of every float
//     exponent (incl. denormal results), plus ±inf, NaN, the overflow and underflow edges.
//  2. bf16/fp16 conversions: every 16-bit pattern round-trips; float -> half/bf16 rounding is
//     checked against an independent round-to-nearest-even implementation (and F16C hardware
//     when the CPU has it).
//  3. ham_adam_cpu / ham_sgd_cpu / mirror_step_cpu against a plain double-precision scalar
//     implementation of sparseopt_kernels/reference/mirror.py written here, for a spread of
//     configurations and every supported (param, state) dtype pair.
//  4. The exp mirror keeps exact zeros at zero.
//  5. The AVX-512 and AVX2 paths give bit-identical results (both use FMA); the generic path is
//     held to the double-precision reference. The ISA is forced through
//     sparseopt::cpu::set_cpu_isa_for_testing(), an internal hook defined in
//     csrc/cpu/mirror_step.cpp (declared below, not in the public header); it behaves like
//     SPARSEOPT_CPU_ISA=<name> and can only lower the detected ISA.
//  6. Row scales (SparseOpt's BN-skew correction) of ham_adam_cpu / ham_sgd_cpu: against the
//     double reference with the scaled gradient, bit for bit against the same step on a
//     pre-scaled gradient (float32/float64 without AMP), and with Bool/Bits masks (masked-out
//     entries keep their bits), over long, short and single rows.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif


// compare() fills *where; build the message only after it ran (argument order is unspecified).
#define CHECK_CMP(expr, label)       \
  do {                              \
    std::string where;              \
    const bool ok_ = (expr);        \
    check(ok_, (label) + where);    \
  } while (0)


// ---------------------------------------------------------------------------------------------
// 1. fast_expf

// Error of y in units of the float ulp at the exact value (denormal ulp = 2^-149).
static double ulp_error(float y, double exact) {
  if (exact >= static_cast<double>(std::numeric_limits<float>::max()) * (1 + 0x1p-25))
    return std::isinf(y) ? 0.0 : 1e30;  // exact result rounds to inf
  int e;
  std::frexp(exact, &e);  // exact = f·2^e, f in [0.5, 1)
  const double ulp = std::ldexp(1.0, std::max(e - 24, -149));
  return std::fabs(static_cast<double>(y) - exact) / ulp;
}

static void test_fast_expf() {
  double max_err = 0.0, max_err_x = 0.0;
  int64_t n = 0;
  // Every 61st bit pattern of the negative and positive floats in [-104, 89] (~55M values):
  // covers every exponent and, densely, the denormal-result range x in [-103.97, -87.34].
  for (int sign = 0; sign < 2; ++sign) {
    const uint32_t hi = sign ? f2u(104.0f) : f2u(89.0f);
    for (uint32_t b = 0; b <= hi; b += 61) {
      const float x = sign ? -u2f(b) : u2f(b);
      const double err = ulp_error(sparseopt::cpu::fast_expf(x), std::exp(static_cast<double>(x)));
      ++n;
      if (err > max_err) max_err = err, max_err_x = x;
    }
  }
  // Every float in the default clamp range [-5, 5] with exponent >= -10 (a few M).
  for (uint32_t b = f2u(0x1p-10f); b <= f2u(5.0f); ++b) {
    for (int s = 0; s < 2; ++s) {
      const float x = s ? -u2f(b) : u2f(b);
      const double err = ulp_error(sparseopt::cpu::fast_expf(x), std::exp(static_cast<double>(x)));
      ++n;
      if (err > max_err) max_err = err, max_err_x = x;
    }
  }
  std::printf("fast_expf: max error %.3f ulp at x = %.9g over %lld inputs\n", max_err, max_err_x,
              static_cast<long long>(n));
  check(max_err <= 2.0, "fast_expf max ulp error <= 2");

  using sparseopt::cpu::fast_expf;
  const float inf = std::numeric_limits<float>::infinity();
  check(fast_expf(0.0f) == 1.0f && fast_expf(-0.0f) == 1.0f, "exp(0) == 1");
  check(fast_expf(-inf) == 0.0f, "exp(-inf) == 0");
  check(fast_expf(inf) == inf, "exp(inf) == inf");
  check(std::isnan(fast_expf(std::numeric_limits<float>::quiet_NaN())), "exp(NaN) is NaN");
  check(std::isnan(fast_expf(-std::numeric_limits<float>::quiet_NaN())), "exp(-NaN) is NaN");
  check(fast_expf(88.72283f) == std::exp(88.72283f) && std::isfinite(fast_expf(88.72283f)),
        "exp just below overflow is finite");
  check(fast_expf(88.7229f) == inf && fast_expf(100.0f) == inf && fast_expf(1e30f) == inf,
        "exp overflows to inf");
  check(fast_expf(-103.972f) == 0x1p-149f, "exp(-103.972) is the smallest denormal");
  check(fast_expf(-104.0f) == 0.0f && fast_expf(-200.0f) == 0.0f && fast_expf(-1e30f) == 0.0f,
        "exp underflows to 0");
  check(fast_expf(-88.0f) > 0.0f && fast_expf(-88.0f) < 0x1p-126f, "exp(-88) is a denormal");
}

// ---------------------------------------------------------------------------------------------
// 2. bf16 / fp16 conversions

// Round-to-nearest-even of a finite float to `keep` mantissa bits, done in double arithmetic.
static uint16_t ref_to_bf16(float f) {
  if (std::isnan(f)) return 0x7fc0;
  const uint32_t u = f2u(f);
  const uint32_t lo = u & 0xffff0000u, rest = u & 0xffffu;
  uint32_t r = lo;
  if (rest > 0x8000u || (rest == 0x8000u && (lo & 0x10000u))) r = lo + 0x10000u;
  return static_cast<uint16_t>(r >> 16);
}

static void test_conversions() {
  int bad_bf = 0, bad_h = 0, bad_widen = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    bf16_t h{static_cast<uint16_t>(b)};
    const float f = cpu::detail::widen(h);
    if (f2u(f) != b << 16) ++bad_widen;
    const bf16_t back = cpu::detail::to_bf16(f);
    if (std::isnan(f) ? !std::isnan(cpu::detail::widen(back)) : back.x != b) ++bad_bf;
    f16_t hh{static_cast<uint16_t>(b)};
    const float g = cpu::detail::widen(hh);
    const f16_t back_h = cpu::detail::to_f16(g);
    if (std::isnan(g) ? !std::isnan(cpu::detail::widen(back_h)) : back_h.x != b) ++bad_h;
  }
  check(bad_widen == 0, "bf16 widen is a 16-bit shift");
  check(bad_bf == 0, "bf16 round trip of all 65536 patterns (" + std::to_string(bad_bf) + " bad)");
  check(bad_h == 0, "fp16 round trip of all 65536 patterns (" + std::to_string(bad_h) + " bad)");

  // fp16 values: exactness of widen against ldexp arithmetic.
  int bad_hv = 0;
  for (uint32_t b = 0; b < 0x7c00; ++b) {
    const int e = static_cast<int>(b >> 10), m = static_cast<int>(b & 0x3ff);
    const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
    if (cpu::detail::widen(f16_t{static_cast<uint16_t>(b)}) != static_cast<float>(v)) ++bad_hv;
    if (cpu::detail::widen(f16_t{static_cast<uint16_t>(b | 0x8000)}) != -static_cast<float>(v))
      ++bad_hv;
  }
  check(bad_hv == 0, "fp16 widen values");
  check(std::isinf(cpu::detail::widen(f16_t{0x7c00})) && cpu::detail::widen(f16_t{0xfc00}) < 0,
        "fp16 widen inf");

  // float -> bf16 / fp16 rounding over a dense sweep of all floats.
  int bad_bf_round = 0, bad_h_round = 0, checked_hw = 0;
  std::vector<float> xs;
  for (uint64_t b = 0; b <= 0xffffffffull; b += 4093) xs.push_back(u2f(static_cast<uint32_t>(b)));
  // Ties and near-ties around every fp16 value (incl. subnormals and the overflow edge).
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float a = cpu::detail::widen(f16_t{static_cast<uint16_t>(h)});
    const float nxt = cpu::detail::widen(f16_t{static_cast<uint16_t>(h + 1)});
    const float mid = static_cast<float>((static_cast<double>(a) + nxt) / 2);
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  xs.push_back(65519.996f);
  xs.push_back(65520.0f);
  for (float x : xs) {
    if (cpu::detail::to_bf16(x).x != ref_to_bf16(x) && !std::isnan(x)) ++bad_bf_round;
    if (std::isnan(x) && !std::isnan(cpu::detail::widen(cpu::detail::to_bf16(x)))) ++bad_bf_round;
    // fp16 reference: nearest of the two neighbouring halves in double, ties to even.
    const f16_t got = cpu::detail::to_f16(x);
    if (std::isnan(x)) {
      if (!std::isnan(cpu::detail::widen(got))) ++bad_h_round;
      continue;
    }
    const double ax = std::fabs(static_cast<double>(x));
    uint16_t want;
    if (ax >= 65520.0) {
      want = 0x7c00;
    } else {
      // Find the largest half <= ax by binary search over the monotone positive patterns.
      uint16_t lo = 0, hi = 0x7bff;
      while (lo < hi) {
        const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
        if (cpu::detail::widen(f16_t{mid}) <= ax) lo = mid;
        else hi = static_cast<uint16_t>(mid - 1);
      }
      want = lo;
      if (lo < 0x7c00) {
        const double a = cpu::detail::widen(f16_t{lo});
        const double b = cpu::detail::widen(f16_t{static_cast<uint16_t>(lo + 1)});
        if (ax - a > b - ax || (ax - a == b - ax && (lo & 1))) want = static_cast<uint16_t>(lo + 1);
      }
    }
    if (std::signbit(x)) want |= 0x8000;
    if (got.x != want) ++bad_h_round;
  }
  check(bad_bf_round == 0, "float -> bf16 round to nearest even (" + std::to_string(bad_bf_round) +
                               " bad of " + std::to_string(xs.size()) + ")");
  check(bad_h_round == 0, "float -> fp16 round to nearest even (" + std::to_string(bad_h_round) +
                              " bad of " + std::to_string(xs.size()) + ")");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("f16c")) {
    int bad_hw = 0;
    struct Hw {
      __attribute__((target("f16c"))) static uint16_t cvt(float x) {
        return static_cast<uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
      }
    };
    for (float x : xs) {
      if (std::isnan(x)) continue;
      ++checked_hw;
      if (Hw::cvt(x) != cpu::detail::to_f16(x).x) ++bad_hw;
    }
    check(bad_hw == 0, "float -> fp16 matches F16C vcvtps2ph (" + std::to_string(bad_hw) + " bad of " +
                           std::to_string(checked_hw) + ")");
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// 3. The optimizer kernels against a double-precision scalar implementation of the reference.

struct MirrorD {
  double alpha = 0, beta = 0, clamp = 5;
  bool use_clamp = false;
  double gamma = 1;
  bool hyp = false;
};

// Also returns in *err_scale a magnitude that bounds the float32 rounding error of the result in
// units of the float epsilon: `in_scale` is that of theta (e.g. |θ̃| + |η·u| when theta came out
// of a cancelling subtraction), scaled by the mirror factor, plus |result|·|z|-sized terms for
// the rounding of the exponent z itself.
static double mirror_ref(const MirrorD& m, double lr, double theta, double d,
                         double in_scale = 0.0, double* err_scale = nullptr) {
  double dummy;
  if (!err_scale) err_scale = &dummy;
  *err_scale = in_scale;
  if (m.alpha == 0 && m.beta == 0) return theta;
  if (!m.hyp) {
    const double sgn = theta > 0 ? 1.0 : (theta < 0 ? -1.0 : 0.0);
    double z = -lr * (m.alpha * sgn * d + m.beta);
    if (m.use_clamp) z = std::min(std::max(z, -m.clamp), m.clamp);
    const double out = theta * std::exp(z);
    *err_scale = in_scale * std::exp(z) + std::fabs(out) * lr * (m.alpha * std::fabs(d) + m.beta) * 4;
    return out;
  }
  double s = lr * m.alpha * d;
  if (m.use_clamp) s = std::min(std::max(s, -m.clamp), m.clamp);
  return m.gamma * std::sinh(std::asinh(theta / m.gamma) - s) * std::exp(-lr * m.beta);
}

static MirrorConfig to_cfg(const MirrorD& m) {
  MirrorConfig c;
  c.alpha = m.alpha;
  c.beta = m.beta;
  c.clamp = m.clamp;
  c.use_clamp = m.use_clamp;
  c.gamma = m.gamma;
  c.form = m.hyp ? MirrorForm::Hypentropy : MirrorForm::Exp;
  return c;
}




// Tensor sizes: tiny ones, one that is not a multiple of any vector width, and one large enough
// to be split into several chunks across threads.
static const std::vector<int64_t> kSizes = {1, 7, 33, 1000, 70001};

struct Problem {
  ScalarType pt, st;
  std::vector<std::vector<uint8_t>> p, g, s1, s2, s3;
  std::vector<std::vector<double>> err_scale;  // per param, filled by the references
  std::vector<int64_t> numels;
  // Optional row scales (RowScales): one float per row of row_len[t] elements, and optional
  // dense masks (one byte per element, and the same bit-packed) passed to the kernels.
  std::vector<std::vector<float>> row_c;
  std::vector<int64_t> row_len;
  std::vector<std::vector<uint8_t>> mask_bool, mask_bits;
};

// The gradient factor of element i of tensor t: c[i / row_len] with row scales, else 1.
static double row_factor(const Problem& pr, size_t t, int64_t i) {
  return pr.row_c.empty() ? 1.0 : static_cast<double>(pr.row_c[t][i / pr.row_len[t]]);
}

// What the kernels get for the optional arguments (the vectors must outlive the call).
struct Extras {
  std::vector<const float*> rc;
  std::vector<const void*> mp;
  RowScales rs;
  Masks masks;
};

static Extras extras_of(const Problem& pr, MaskKind kind) {
  Extras e;
  if (!pr.row_c.empty()) {
    for (const auto& c : pr.row_c) e.rc.push_back(c.data());
    e.rs.data = e.rc.data();
    e.rs.row_lens = pr.row_len.data();
  }
  if (kind != MaskKind::None) {
    for (size_t t = 0; t < pr.numels.size(); ++t)
      e.mp.push_back(kind == MaskKind::Bool ? pr.mask_bool[t].data() : pr.mask_bits[t].data());
    e.masks.kind = kind;
    e.masks.data = e.mp.data();
  }
  return e;
}

static Problem make_problem(ScalarType pt, ScalarType st, uint32_t seed, bool with_zeros,
                            const std::vector<int64_t>& sizes = kSizes) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  Problem pr;
  pr.pt = pt;
  pr.st = st;
  for (int64_t n : sizes) {
    pr.numels.push_back(n);
    auto p = make(pt, n), g = make(pt, n), s1 = make(st, n), s2 = make(st, n), s3 = make(st, n);
    for (int64_t i = 0; i < n; ++i) {
      const bool zero = with_zeros && i % 5 == 0;
      put(p, pt, i, zero ? 0.0 : 0.5 * nd(rng));
      put(g, pt, i, zero ? 0.0 : nd(rng));  // zero weight with zero grad stays put in θ' too
      put(s1, st, i, zero ? 0.0 : 0.1 * nd(rng));  // m = 0 too, so Adam's u = 0 there
      const double v = 0.05 * std::fabs(nd(rng));
      put(s2, st, i, v);
      put(s3, st, i, v * (i % 2 ? 1.5 : 0.5));
    }
    pr.p.push_back(p); pr.g.push_back(g); pr.s1.push_back(s1); pr.s2.push_back(s2); pr.s3.push_back(s3);
  }
  return pr;
}


struct AdamCase {
  std::string name;
  AdamConfig cfg;
  MirrorD mirror;
  double inv_scale = 1.0;
  double step = 3;
};

static void adam_reference(const AdamCase& c, Problem& pr) {
  const AdamConfig& a = c.cfg;
  pr.err_scale.assign(pr.numels.size(), {});
  for (size_t t = 0; t < pr.numels.size(); ++t) pr.err_scale[t].assign(pr.numels[t], 0.0);
  for (size_t t = 0; t < pr.numels.size(); ++t) {
    const double bc1 = 1 - std::pow(a.beta1, c.step), bc2s = std::sqrt(1 - std::pow(a.beta2, c.step));
    for (int64_t i = 0; i < pr.numels[t]; ++i) {
      double theta = get(pr.p[t], pr.pt, i);
      double g = get(pr.g[t], pr.pt, i) / (1.0 / c.inv_scale);
      if (a.maximize) g = -g;
      g *= row_factor(pr, t, i);
      const double gb = (a.weight_decay != 0 && !a.decoupled_weight_decay) ? g + a.weight_decay * theta : g;
      const double m = a.beta1 * get(pr.s1[t], pr.st, i) + (1 - a.beta1) * gb;
      const double v = a.beta2 * get(pr.s2[t], pr.st, i) + (1 - a.beta2) * gb * gb;
      double vd = v;
      if (a.amsgrad) {
        vd = std::max(get(pr.s3[t], pr.st, i), v);
        put(pr.s3[t], pr.st, i, vd);
      }
      const double u = (m / bc1) / (std::sqrt(vd) / bc2s + a.eps);
      const double d = a.mirror.direction == MirrorDirection::Update ? u : g;
      const bool before = a.mirror.order == MirrorOrder::Before;
      double scale = std::fabs(theta);
      if (before) theta = mirror_ref(c.mirror, a.lr, theta, d, scale, &scale);
      if (a.weight_decay != 0 && a.decoupled_weight_decay) theta *= 1 - a.lr * a.weight_decay;
      double theta1 = theta - a.lr * u;
      scale = scale + std::fabs(a.lr * u);
      if (!before) theta1 = mirror_ref(c.mirror, a.lr, theta1, d, scale, &scale);
      pr.err_scale[t][i] = scale;
      put(pr.s1[t], pr.st, i, m);
      put(pr.s2[t], pr.st, i, v);
      put(pr.p[t], pr.pt, i, theta1);
    }
  }
}

static void adam_kernel(const AdamCase& c, Problem& pr, MaskKind kind = MaskKind::None) {
  AdamConfig cfg = c.cfg;
  const MirrorDirection dir = cfg.mirror.direction;
  const MirrorOrder order = cfg.mirror.order;
  cfg.mirror = to_cfg(c.mirror);
  cfg.mirror.direction = dir;
  cfg.mirror.order = order;
  auto p = ptrs(pr.p), g = ptrs(pr.g), s1 = ptrs(pr.s1), s2 = ptrs(pr.s2), s3 = ptrs(pr.s3);
  std::vector<const void*> gc(g.begin(), g.end());
  std::vector<double> steps(pr.numels.size(), c.step);
  const Extras e = extras_of(pr, kind);
  cpu::ham_adam_cpu(cfg, c.inv_scale, pr.pt, pr.st, static_cast<int64_t>(pr.numels.size()),
                    p.data(), gc.data(), s1.data(), s2.data(), cfg.amsgrad ? s3.data() : nullptr,
                    steps.data(), pr.numels.data(), e.masks, e.rs);
}

struct SgdCase {
  std::string name;
  SgdConfig cfg;
  MirrorD mirror;
  double inv_scale = 1.0;
};

static void sgd_reference(const SgdCase& c, Problem& pr) {
  const SgdConfig& s = c.cfg;
  pr.err_scale.assign(pr.numels.size(), {});
  for (size_t t = 0; t < pr.numels.size(); ++t) pr.err_scale[t].assign(pr.numels[t], 0.0);
  for (size_t t = 0; t < pr.numels.size(); ++t) {
    for (int64_t i = 0; i < pr.numels[t]; ++i) {
      const double theta = get(pr.p[t], pr.pt, i);
      double g = get(pr.g[t], pr.pt, i) / (1.0 / c.inv_scale);
      if (s.maximize) g = -g;
      g *= row_factor(pr, t, i);
      const double gb = s.weight_decay != 0 ? g + s.weight_decay * theta : g;
      double d = gb;
      if (s.momentum != 0) {
        const double b = s.is_first_step ? gb : s.momentum * get(pr.s1[t], pr.st, i) + (1 - s.dampening) * gb;
        put(pr.s1[t], pr.st, i, b);
        d = s.nesterov ? gb + s.momentum * b : b;
      }
      double scale;
      put(pr.p[t], pr.pt, i,
          mirror_ref(c.mirror, s.lr, theta - s.lr * d, g, std::fabs(theta) + std::fabs(s.lr * d), &scale));
      pr.err_scale[t][i] = scale;
    }
  }
}

static void sgd_kernel(const SgdCase& c, Problem& pr, MaskKind kind = MaskKind::None) {
  SgdConfig cfg = c.cfg;
  cfg.mirror = to_cfg(c.mirror);
  auto p = ptrs(pr.p), g = ptrs(pr.g), s1 = ptrs(pr.s1);
  std::vector<const void*> gc(g.begin(), g.end());
  const Extras e = extras_of(pr, kind);
  cpu::ham_sgd_cpu(cfg, c.inv_scale, pr.pt, pr.st, static_cast<int64_t>(pr.numels.size()), p.data(),
                   gc.data(), cfg.momentum != 0 ? s1.data() : nullptr, pr.numels.data(), e.masks,
                   e.rs);
}

// Compares two problems element-wise: params and the first `n_states` state tensors.
static bool compare(const Problem& got, const Problem& want, int n_states, double rtol, bool exact,
                    std::string* where) {
  for (size_t t = 0; t < got.numels.size(); ++t) {
    for (int k = 0; k <= n_states; ++k) {
      const auto& gb = k == 0 ? got.p[t] : k == 1 ? got.s1[t] : k == 2 ? got.s2[t] : got.s3[t];
      const auto& wb = k == 0 ? want.p[t] : k == 1 ? want.s1[t] : k == 2 ? want.s2[t] : want.s3[t];
      const ScalarType ty = k == 0 ? got.pt : got.st;
      if (exact) {
        if (gb != wb) {
          *where = "tensor " + std::to_string(t) + " buffer " + std::to_string(k) + " differs";
          return false;
        }
        continue;
      }
      const double r = std::max(rtol, tol(ty));
      for (int64_t i = 0; i < got.numels[t]; ++i) {
        const double a = get(gb, ty, i), b = get(wb, ty, i);
        // Params: allow for float cancellation in θ − η·d (see mirror_ref's err_scale).
        const double scale = (k == 0 && !want.err_scale.empty()) ? want.err_scale[t][i] : 0.0;
        if (!close(a, b, r, 1e-7 + r * scale)) {
          char buf[200];
          std::snprintf(buf, sizeof buf, "tensor %zu buffer %d elt %lld: got %.9g want %.9g", t, k,
                        static_cast<long long>(i), a, b);
          *where = buf;
          return false;
        }
      }
    }
  }
  return true;
}

static std::vector<std::pair<ScalarType, ScalarType>> type_pairs() {
  using ST = ScalarType;
  return {{ST::Float32, ST::Float32}, {ST::Float64, ST::Float64}, {ST::Float64, ST::Float32},
          {ST::BFloat16, ST::Float32}, {ST::BFloat16, ST::BFloat16}, {ST::Float16, ST::Float32},
          {ST::Float16, ST::Float16}};
}

// The AVX-512 and AVX2 builds contract the same multiply-adds into FMAs, so they must agree to
// the bit; the generic build (no FMA) rounds differently and is held to the reference instead.
static bool same_or_close(const Problem& got, const char* isa, const Problem& best,
                          const Problem& want, int n_states, double rtol, std::string* where) {
  if (std::strcmp(isa, "generic") != 0) return compare(got, best, n_states, 0, true, where);
  return compare(got, want, n_states, rtol, false, where);
}

static std::vector<const char*> g_isas;  // the ISAs this machine can run, best first

static void test_adam() {
  std::vector<AdamCase> cases;
  MirrorD ham;  // HAM defaults: α = 200, β = 1e-3, clamp 5
  ham.alpha = 200; ham.beta = 1e-3; ham.use_clamp = true;
  MirrorD noclamp = ham;
  noclamp.use_clamp = false;
  noclamp.alpha = 20;
  MirrorD hyp = ham;
  hyp.hyp = true; hyp.gamma = 0.5; hyp.clamp = 0.05;
  MirrorD beta_only;
  beta_only.beta = 0.5;

  auto base = [](double lr) { AdamConfig c; c.lr = lr; return c; };
  { AdamCase c{"adam plain", base(1e-3), {}}; cases.push_back(c); }
  { AdamCase c{"adamw wd amsgrad", base(1e-3), {}}; c.cfg.weight_decay = 0.1; c.cfg.decoupled_weight_decay = true; c.cfg.amsgrad = true; cases.push_back(c); }
  { AdamCase c{"adam coupled wd maximize", base(1e-3), {}}; c.cfg.weight_decay = 0.05; c.cfg.maximize = true; c.step = 1; cases.push_back(c); }
  { AdamCase c{"ham-adamw exp clamp", base(1e-3), ham}; c.cfg.weight_decay = 0.01; c.cfg.decoupled_weight_decay = true; cases.push_back(c); }
  { AdamCase c{"ham-adam exp no clamp, grad scale", base(1e-2), noclamp}; c.inv_scale = 1.0 / 1024; cases.push_back(c); }
  { AdamCase c{"horst exp direction=adam order=before amsgrad", base(1e-3), ham}; c.cfg.mirror.direction = MirrorDirection::Update; c.cfg.mirror.order = MirrorOrder::Before; c.cfg.amsgrad = true; c.cfg.weight_decay = 0.1; c.cfg.decoupled_weight_decay = true; c.step = 1000; cases.push_back(c); }
  { AdamCase c{"horst exp direction=adam order=after maximize", base(1e-3), ham}; c.cfg.mirror.direction = MirrorDirection::Update; c.cfg.maximize = true; cases.push_back(c); }
  { AdamCase c{"ham-adam hypentropy", base(1e-3), hyp}; cases.push_back(c); }
  { AdamCase c{"ham-adamw hypentropy before, no clamp", base(1e-3), hyp}; c.mirror.use_clamp = false; c.cfg.mirror.order = MirrorOrder::Before; c.cfg.weight_decay = 0.1; c.cfg.decoupled_weight_decay = true; cases.push_back(c); }
  { AdamCase c{"adam beta-only mirror", base(1e-2), beta_only}; cases.push_back(c); }

  uint32_t seed = 1;
  for (const auto& c : cases) {
    for (auto [pt, st] : type_pairs()) {
      const std::string label = "ham_adam_cpu " + c.name + " [" + tname(pt) + "/" + tname(st) + "]";
      Problem init = make_problem(pt, st, seed++, /*with_zeros=*/true);
      Problem want = init;
      adam_reference(c, want);
      std::vector<Problem> per_isa;
      for (const char* isa : g_isas) {
        cpu::set_cpu_isa_for_testing(isa);
        Problem got = init;
        adam_kernel(c, got);
        per_isa.push_back(got);
      }
      cpu::set_cpu_isa_for_testing(nullptr);
      // The mirror's exp may differ from the exact one by 2 ulp; the hypentropy composes
      // sinh(asinh(.)) whose float rounding is amplified by the cancellation in asinh(θ)−s.
      const double rtol = c.mirror.hyp ? 3e-5 : 0.0;
      CHECK_CMP(compare(per_isa[0], want, c.cfg.amsgrad ? 3 : 2, rtol, false, &where), label + " vs double reference: ");
      for (size_t k = 1; k < per_isa.size(); ++k)
        CHECK_CMP(same_or_close(per_isa[k], g_isas[k], per_isa[0], want, c.cfg.amsgrad ? 3 : 2, rtol, &where),
                  label + " " + g_isas[k] + " vs " + g_isas[0] + ": ");
      // Exact zeros (θ = 0, g = 0) stay zero with the exp mirror.
      if (!c.mirror.hyp) {
        bool zeros_ok = true;
        for (size_t t = 0; t < init.numels.size(); ++t)
          for (int64_t i = 0; i < init.numels[t]; i += 5)
            zeros_ok = zeros_ok && get(per_isa[0].p[t], pt, i) == 0.0;
        check(zeros_ok, label + " exact zeros stay zero");
      }
    }
  }
}

static void test_sgd() {
  std::vector<SgdCase> cases;
  MirrorD ham;
  ham.alpha = 200; ham.beta = 1e-3; ham.use_clamp = true;
  MirrorD hyp = ham;
  hyp.hyp = true; hyp.clamp = 0.1;
  auto base = [](double lr) { SgdConfig c; c.lr = lr; return c; };
  { SgdCase c{"sgd plain", base(1e-2), {}}; cases.push_back(c); }
  { SgdCase c{"sgd momentum dampening wd", base(1e-2), {}}; c.cfg.momentum = 0.9; c.cfg.dampening = 0.1; c.cfg.weight_decay = 1e-2; cases.push_back(c); }
  { SgdCase c{"sgd nesterov first step maximize", base(1e-2), {}}; c.cfg.momentum = 0.9; c.cfg.nesterov = true; c.cfg.is_first_step = true; c.cfg.maximize = true; cases.push_back(c); }
  { SgdCase c{"ham-sgd exp momentum nesterov", base(1e-2), ham}; c.cfg.momentum = 0.9; c.cfg.nesterov = true; c.cfg.weight_decay = 1e-3; cases.push_back(c); }
  { SgdCase c{"ham-sgd exp no momentum no clamp, grad scale", base(1e-3), ham}; c.mirror.use_clamp = false; c.inv_scale = 0.5; cases.push_back(c); }
  { SgdCase c{"ham-sgd hypentropy momentum", base(1e-2), hyp}; c.cfg.momentum = 0.5; cases.push_back(c); }

  uint32_t seed = 1000;
  for (const auto& c : cases) {
    for (auto [pt, st] : type_pairs()) {
      const std::string label = "ham_sgd_cpu " + c.name + " [" + tname(pt) + "/" + tname(st) + "]";
      Problem init = make_problem(pt, st, seed++, true);
      Problem want = init;
      sgd_reference(c, want);
      std::vector<Problem> per_isa;
      for (const char* isa : g_isas) {
        cpu::set_cpu_isa_for_testing(isa);
        Problem got = init;
        sgd_kernel(c, got);
        per_isa.push_back(got);
      }
      cpu::set_cpu_isa_for_testing(nullptr);
      const double rtol = c.mirror.hyp ? 3e-5 : 0.0;
      CHECK_CMP(compare(per_isa[0], want, c.cfg.momentum != 0 ? 1 : 0, rtol, false, &where), label + " vs double reference: ");
      for (size_t k = 1; k < per_isa.size(); ++k)
        CHECK_CMP(same_or_close(per_isa[k], g_isas[k], per_isa[0], want, c.cfg.momentum != 0 ? 1 : 0, rtol, &where),
                  label + " " + g_isas[k] + " vs " + g_isas[0] + ": ");
    }
  }
}

static void test_mirror_step() {
  for (bool hyp : {false, true}) {
    for (auto [pt, st] : type_pairs()) {
      if (pt != st) continue;
      MirrorD m;
      m.alpha = 200; m.beta = 1e-3; m.use_clamp = !hyp; m.hyp = hyp;
      const double lr = 1e-3;
      const std::string label = std::string("mirror_step_cpu ") + (hyp ? "hypentropy" : "exp") +
                                " [" + tname(pt) + "]";
      Problem init = make_problem(pt, st, 77, true);
      Problem want = init;
      for (size_t t = 0; t < want.numels.size(); ++t)
        for (int64_t i = 0; i < want.numels[t]; ++i)
          put(want.p[t], pt, i, mirror_ref(m, lr, get(want.p[t], pt, i), -get(want.g[t], pt, i) * 2));
      std::vector<Problem> per_isa;
      for (const char* isa : g_isas) {
        cpu::set_cpu_isa_for_testing(isa);
        Problem got = init;
        MirrorStepConfig cfg;
        cfg.lr = lr;
        cfg.maximize = true;
        cfg.mirror = to_cfg(m);
        auto p = ptrs(got.p), g = ptrs(got.g);
        std::vector<const void*> gc(g.begin(), g.end());
        cpu::mirror_step_cpu(cfg, 2.0, pt, static_cast<int64_t>(got.numels.size()), p.data(),
                             gc.data(), got.numels.data());
        per_isa.push_back(got);
      }
      cpu::set_cpu_isa_for_testing(nullptr);
      CHECK_CMP(compare(per_isa[0], want, 0, hyp ? 3e-5 : 0.0, false, &where), label + ": ");
      for (size_t k = 1; k < per_isa.size(); ++k)
        CHECK_CMP(same_or_close(per_isa[k], g_isas[k], per_isa[0], want, 0, hyp ? 3e-5 : 0.0, &where),
                  label + " " + g_isas[k] + " vs " + g_isas[0] + ": ");
      if (!hyp) {
        bool zeros_ok = true;
        for (size_t t = 0; t < init.numels.size(); ++t)
          for (int64_t i = 0; i < init.numels[t]; i += 5)
            zeros_ok = zeros_ok && get(per_isa[0].p[t], pt, i) == 0.0;
        check(zeros_ok, label + " exact zeros stay zero");
      }
    }
  }
  // α = β = 0: nothing is touched.
  Problem init = make_problem(ScalarType::Float32, ScalarType::Float32, 5, false);
  Problem got = init;
  MirrorStepConfig cfg;
  cfg.lr = 1.0;
  auto p = ptrs(got.p), g = ptrs(got.g);
  std::vector<const void*> gc(g.begin(), g.end());
  cpu::mirror_step_cpu(cfg, 1.0, ScalarType::Float32, static_cast<int64_t>(got.numels.size()),
                       p.data(), gc.data(), got.numels.data());
  CHECK_CMP(compare(got, init, 0, 0, true, &where), std::string("mirror_step_cpu with alpha = beta = 0 is a no-op: "));
}

// ---------------------------------------------------------------------------------------------
// 6. Row scales (SparseOpt's BN-skew correction, RowScales) of ham_adam_cpu / ham_sgd_cpu:
//  (a) against the double reference with g̃ = c[row]·g, every dtype pair, every ISA;
//  (b) float32/float64 params without AMP: bit for bit the step run on the pre-scaled gradient
//      c·g rounded to the param dtype (the kernels multiply g by inv_scale·c = c, the same
//      rounding), on every ISA;
//  (c) with Bool and Bits masks: masked-out entries keep their bits, the others equal the
//      unmasked row-scaled run bit for bit;
// over long rows (one body call per row segment, segments cut by work items and mask blocks),
// short rows (< 64: the scaled-gradient buffer for float32/float64) and single-row tensors.

// Sizes and three row-length sets for them (each divides its size): 4032 = 63·64 gives both
// sides of the short-row threshold; 66000 (total > kMinParallel: threads) crosses work-item
// boundaries (multiples of 32768) mid-row.
static const std::vector<int64_t> kRowSizes = {1, 7, 33, 1000, 66000, 4032};
static const std::vector<std::vector<int64_t>> kRowLens = {
    {1, 7, 33, 200, 1200, 64},    // long rows (and a single 7- and 33-element row)
    {1, 1, 11, 8, 5, 63},         // short rows only; row_len 1 as for 1-D params
    {1, 7, 3, 1000, 66000, 4032}, // single rows, one longer than a work item
};

static void add_row_scales(Problem& pr, const std::vector<int64_t>& lens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.2, 3.0);
  std::uniform_int_distribution<int> coin(0, 2);
  pr.row_len = lens;
  pr.row_c.clear();
  pr.mask_bool.clear();
  pr.mask_bits.clear();
  for (size_t t = 0; t < pr.numels.size(); ++t) {
    const int64_t n = pr.numels[t], rows = n / lens[t];
    std::vector<float> c;
    for (int64_t r = 0; r < rows; ++r)  // empty rows (c = 0), unchanged rows (c = 1), others
      c.push_back(r % 5 == 1 ? 0.0f : r % 5 == 2 ? 1.0f : static_cast<float>(u(rng)));
    pr.row_c.push_back(c);
    std::vector<uint8_t> mb(static_cast<size_t>(n)), bits(static_cast<size_t>((n + 7) / 8), 0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t region = (i / 3000) % 3;  // random, all-on and all-off stretches
      const int on = region == 0 ? (coin(rng) != 0) : (region == 1 ? 1 : 0);
      mb[i] = static_cast<uint8_t>(on);
      bits[i / 8] = static_cast<uint8_t>(bits[i / 8] | (on << (i % 8)));
    }
    pr.mask_bool.push_back(mb);
    pr.mask_bits.push_back(bits);
  }
}

// Per element: where the mask is on, `got` equals `full` bytewise; elsewhere `init`.
static bool compare_masked(const Problem& got, const Problem& full, const Problem& init,
                           int n_states, std::string* where) {
  for (size_t t = 0; t < got.numels.size(); ++t) {
    for (int k = 0; k <= n_states; ++k) {
      const auto& a = k == 0 ? got.p[t] : k == 1 ? got.s1[t] : k == 2 ? got.s2[t] : got.s3[t];
      const auto& f = k == 0 ? full.p[t] : k == 1 ? full.s1[t] : k == 2 ? full.s2[t] : full.s3[t];
      const auto& i0 = k == 0 ? init.p[t] : k == 1 ? init.s1[t] : k == 2 ? init.s2[t] : init.s3[t];
      const size_t es = elt_size(k == 0 ? got.pt : got.st);
      for (int64_t i = 0; i < got.numels[t]; ++i) {
        const bool on = init.mask_bool[t][i] != 0;
        if (std::memcmp(&a[i * es], &(on ? f : i0)[i * es], es) != 0) {
          *where = "tensor " + std::to_string(t) + " buffer " + std::to_string(k) + " elt " +
                   std::to_string(i) + (on ? " (on)" : " (off)");
          return false;
        }
      }
    }
  }
  return true;
}

template <class Kernel, class Reference>
static void row_scaled_case(const std::string& name, ScalarType pt, ScalarType st, uint32_t seed,
                            int n_states, double rtol, bool prescale_exact, Kernel&& kernel,
                            Reference&& reference) {
  for (size_t set = 0; set < kRowLens.size(); ++set) {
    const std::string label = name + " [" + tname(pt) + "/" + tname(st) + "] rows set " +
                              std::to_string(set);
    Problem init = make_problem(pt, st, seed, true, kRowSizes);
    add_row_scales(init, kRowLens[set], seed + 7);
    Problem want = init;
    reference(want);
    // The gradient pre-scaled in the param dtype, and no row scales.
    Problem pre = init;
    for (size_t t = 0; t < pre.numels.size(); ++t)
      for (int64_t i = 0; i < pre.numels[t]; ++i) {
        const double gc = get(init.g[t], pt, i) * row_factor(init, t, i);  // exact in double
        put(pre.g[t], pt, i,
            pt == ScalarType::Float64 ? gc : static_cast<double>(static_cast<float>(gc)));
      }
    pre.row_c.clear();
    std::vector<Problem> per_isa;
    for (const char* isa : g_isas) {
      cpu::set_cpu_isa_for_testing(isa);
      Problem got = init;
      kernel(got, MaskKind::None);
      per_isa.push_back(got);
      if (prescale_exact) {
        Problem p2 = pre;
        kernel(p2, MaskKind::None);
        CHECK_CMP(compare(got, p2, n_states, 0, true, &where),
                  label + " " + isa + " == the step on the pre-scaled gradient: ");
      }
      for (MaskKind kind : {MaskKind::Bool, MaskKind::Bits}) {
        Problem m = init;
        kernel(m, kind);
        CHECK_CMP(compare_masked(m, got, init, n_states, &where),
                  label + " " + isa + (kind == MaskKind::Bool ? " bool" : " bits") +
                      " mask: ");
      }
    }
    cpu::set_cpu_isa_for_testing(nullptr);
    CHECK_CMP(compare(per_isa[0], want, n_states, rtol, false, &where),
              label + " vs double reference: ");
    for (size_t k = 1; k < per_isa.size(); ++k)
      CHECK_CMP(same_or_close(per_isa[k], g_isas[k], per_isa[0], want, n_states, rtol, &where),
                label + " " + g_isas[k] + " vs " + g_isas[0] + ": ");
  }
}

static void test_row_scaled() {
  MirrorD ham;
  ham.alpha = 200; ham.beta = 1e-3; ham.use_clamp = true;
  MirrorD hyp = ham;
  hyp.hyp = true; hyp.gamma = 0.5; hyp.clamp = 0.05;
  std::vector<AdamCase> adam;
  auto abase = [](double lr) { AdamConfig c; c.lr = lr; return c; };
  { AdamCase c{"adamw", abase(1e-3), {}}; c.cfg.weight_decay = 0.01; c.cfg.decoupled_weight_decay = true; adam.push_back(c); }
  { AdamCase c{"ham-adamw amsgrad, grad scale", abase(1e-3), ham}; c.cfg.weight_decay = 0.1; c.cfg.decoupled_weight_decay = true; c.cfg.amsgrad = true; c.inv_scale = 1.0 / 1024; adam.push_back(c); }
  { AdamCase c{"horst direction=adam order=before, coupled wd, maximize", abase(1e-3), ham}; c.cfg.mirror.direction = MirrorDirection::Update; c.cfg.mirror.order = MirrorOrder::Before; c.cfg.weight_decay = 0.05; c.cfg.maximize = true; adam.push_back(c); }
  { AdamCase c{"ham-adam hypentropy", abase(1e-3), hyp}; adam.push_back(c); }
  std::vector<SgdCase> sgd;
  auto sbase = [](double lr) { SgdConfig c; c.lr = lr; return c; };
  { SgdCase c{"ham-sgd momentum nesterov wd", sbase(1e-2), ham}; c.cfg.momentum = 0.9; c.cfg.nesterov = true; c.cfg.weight_decay = 1e-3; sgd.push_back(c); }
  { SgdCase c{"sgd maximize, grad scale", sbase(1e-2), {}}; c.cfg.maximize = true; c.inv_scale = 1.0 / 3; sgd.push_back(c); }
  { SgdCase c{"ham-sgd hypentropy momentum", sbase(1e-2), hyp}; c.cfg.momentum = 0.5; sgd.push_back(c); }

  // The row code differs by param type only (float32/float64: the buffer for short rows; 16-bit:
  // per-segment calls) and by the state type not at all: five of the seven pairs cover it.
  using ST = ScalarType;
  const std::vector<std::pair<ST, ST>> pairs = {
      {ST::Float32, ST::Float32}, {ST::Float64, ST::Float64}, {ST::Float64, ST::Float32},
      {ST::BFloat16, ST::Float32}, {ST::Float16, ST::Float16}};
  uint32_t seed = 3000;
  for (auto [pt, st] : pairs) {
    const bool wide = pt == ScalarType::Float32 || pt == ScalarType::Float64;
    for (const auto& c : adam) {
      row_scaled_case("ham_adam_cpu row scales " + c.name, pt, st, seed++, c.cfg.amsgrad ? 3 : 2,
                      c.mirror.hyp ? 3e-5 : 0.0, wide && c.inv_scale == 1.0,
                      [&](Problem& pr, MaskKind k) { adam_kernel(c, pr, k); },
                      [&](Problem& pr) { adam_reference(c, pr); });
    }
    for (const auto& c : sgd) {
      row_scaled_case("ham_sgd_cpu row scales " + c.name, pt, st, seed++,
                      c.cfg.momentum != 0 ? 1 : 0, c.mirror.hyp ? 3e-5 : 0.0,
                      wide && c.inv_scale == 1.0,
                      [&](Problem& pr, MaskKind k) { sgd_kernel(c, pr, k); },
                      [&](Problem& pr) { sgd_reference(c, pr); });
    }
  }

  // A row length below 1 is rejected before anything is touched.
  Problem pr = make_problem(ScalarType::Float32, ScalarType::Float32, 9, false);
  add_row_scales(pr, {1, 7, 33, 1000, 70001}, 9);
  pr.row_len[2] = 0;
  const Problem before = pr;
  bool threw = false;
  try {
    sgd_kernel(sgd[0], pr);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK_CMP(threw && compare(pr, before, 1, 0, true, &where),
            std::string("ham_sgd_cpu rejects row_len 0 and leaves everything untouched: "));
}

int main() {
  const std::string detected = cpu::cpu_isa();
  for (const char* isa : {"avx512", "avx2", "generic"})
    if (std::string(cpu::set_cpu_isa_for_testing(isa)) == isa) g_isas.push_back(isa);
  cpu::set_cpu_isa_for_testing(nullptr);
  std::printf("cpu_isa() = %s; testing ISAs:", detected.c_str());
  for (const char* isa : g_isas) std::printf(" %s", isa);
  std::printf("\n");
  check(detected == cpu::set_cpu_isa_for_testing(nullptr),
        "cpu_isa() reports the ISA SPARSEOPT_CPU_ISA and the CPU allow");

  test_fast_expf();
  test_conversions();
  test_adam();
  test_sgd();
  test_mirror_step();
  test_row_scaled();

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
