// Scalar-looking float32 helpers that GCC auto-vectorizes inside loops: exp, and the bf16/fp16
// <-> float conversions. Everything here is branch-free (selects only, no libm, no calls), so a
// loop over them compiles to straight zmm/ymm code under whatever `target` attribute the
// enclosing function carries. All functions are always_inline for that reason: a call that is
// not inlined into the target-attributed loop would stop the vectorizer.
//
// exp(x), float32:
//   x is clamped to [-104, 89] (exp(-104) < 2^-150 rounds to 0, exp(89) > FLT_MAX is inf, so
//   ±inf come out right without a special case), then
//     n = rint(x·log2 e)             (magic-number rounding: t = x·log2e + 1.5·2^23)
//     r = (x − n·ln2_hi) − n·ln2_lo  (Cody-Waite: ln2_hi has 9 significant bits, so n·ln2_hi is
//                                     exact for |n| <= 150 and the subtraction is exact)
//     exp(r) ≈ 1 + (r + r²·P(r)),     |r| <= ln2/2, P the degree-5 Cephes expf minimax
//                                     polynomial (total degree 7 in r)
//     exp(x) = exp(r) · 2^n1 · 2^n2,  n1 = n >> 1, n2 = n − n1
//   Splitting 2^n into two factors that are each normal floats (n ∈ [−150, 128] → n1, n2 ∈
//   [−75, 64]) handles both overflow (n = 128 is reached for x just below ln(FLT_MAX)) and
//   gradual underflow: p·2^n1 is exact and the final multiply rounds once into the denormal
//   range, so denormal results are correctly rounded up to the ≤ 1-ulp error of p.
//   NaN is passed through by a final select. Measured max error 0.964 ulp (at x = 4.5276) over
//   every 61st float in [−104, 89] plus every float in ±[2^-10, 5], 242M inputs
//   (csrc/tests/test_mirror_step_cpu.cpp asserts ≤ 2 ulp).
//
//   The code deliberately uses no FMA (the translation unit that includes it is compiled with
//   fp-contract=off) so that the AVX-512, AVX2 and generic builds give bit-identical results.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "sparseopt/mirror_step.h"

#define SPARSEOPT_AI inline __attribute__((always_inline))

namespace sparseopt {
namespace cpu {
namespace detail {

SPARSEOPT_AI uint32_t f2u(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
SPARSEOPT_AI float u2f(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

SPARSEOPT_AI float fast_expf_inline(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;        // 0x3f318000: 9 significant bits
  const float kLn2Lo = -2.12194440e-4f;     // ln2 − kLn2Hi
  const float kRound = 12582912.0f;         // 1.5·2^23: adding it rounds to an integer
  float xc = x < -104.0f ? -104.0f : x;     // NaN fails both compares and stays NaN
  xc = xc > 89.0f ? 89.0f : xc;
  const float t = xc * kLog2e + kRound;
  const float n = t - kRound;
  // |xc·log2e| < 2^22, so the integer n sits in the low mantissa bits of t.
  const int32_t ni = static_cast<int32_t>(f2u(t)) - static_cast<int32_t>(f2u(kRound));
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = 1.0f + (r + (r * r) * p);
  const int32_t n1 = ni >> 1;  // arithmetic shift (floor), n2 = n − n1 >= n1
  const int32_t n2 = ni - n1;
  const float s1 = u2f(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = u2f(static_cast<uint32_t>(n2 + 127) << 23);
  const float y = (p * s1) * s2;
  return x != x ? x : y;  // NaN: the integer path above produced garbage, return x
}

// ---- bfloat16: the upper half of a float32; float -> bf16 rounds to nearest even. ----------
struct bf16_t {
  uint16_t x;
};
// ---- float16 (IEEE binary16). ----------------------------------------------------------------
struct f16_t {
  uint16_t x;
};

SPARSEOPT_AI float widen(bf16_t h) { return u2f(static_cast<uint32_t>(h.x) << 16); }

SPARSEOPT_AI bf16_t to_bf16(float f) {
  const uint32_t u = f2u(f);
  // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate. Overflow into the
  // exponent gives inf, as it should. NaN would round into inf, so it is kept (quieted) instead.
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x0040u;
  bf16_t h;
  h.x = static_cast<uint16_t>(f != f ? nan : rounded);
  return h;
}

SPARSEOPT_AI float widen(f16_t h) {
  // Shift exponent+mantissa into float position and rescale by 2^(127−15): exact for normal and
  // subnormal halves (the subnormal case is a float denormal times a power of two). inf/NaN
  // (exponent 31) get the float exponent 255 and keep their payload.
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000u) << 16;
  const uint32_t em = static_cast<uint32_t>(h.x & 0x7fffu);
  const float scaled = u2f(em << 13) * 0x1p112f;
  const uint32_t special = (em << 13) | 0x7f800000u;
  const uint32_t mag = em >= 0x7c00u ? special : f2u(scaled);
  return u2f(mag | sign);
}

SPARSEOPT_AI f16_t to_f16(float f) {
  // Branch-free round-to-nearest-even (F. Giesen's float_to_half_fast3_rtne):
  //  - |f| >= 65536 (or inf/NaN): inf, or quiet NaN 0x7e00 with the sign kept (as c10::Half);
  //  - |f| < 2^-14 (half subnormal/zero): add a magic 2^-1 so that the FPU's own RNE aligns the
  //    10 kept bits at the bottom of the mantissa, then subtract the magic's bits;
  //  - normal: rebias the exponent and add 0xfff + lowest kept bit (RNE), take bits >> 13.
  //    Values in [65520, 65536) carry into exponent 31 = inf, as they should.
  const uint32_t u = f2u(f);
  const uint32_t sign = u & 0x80000000u;
  const uint32_t a = u ^ sign;
  const uint32_t kInf = 255u << 23, kF16Max = (127u + 16u) << 23;
  const uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t special = a > kInf ? 0x7e00u : 0x7c00u;
  const uint32_t sub = f2u(u2f(a) + u2f(kDenormMagic)) - kDenormMagic;
  const uint32_t mant_odd = (a >> 13) & 1u;
  const uint32_t normal = (a + ((15u - 127u) << 23) + 0xfffu + mant_odd) >> 13;
  uint32_t o = a < (113u << 23) ? sub : normal;
  o = a >= kF16Max ? special : o;
  f16_t h;
  h.x = static_cast<uint16_t>(o | (sign >> 16));
  return h;
}

SPARSEOPT_AI float widen(float x) { return x; }
SPARSEOPT_AI double widen(double x) { return x; }

// Store a compute value into a storage type (rounding once, like Tensor.to(dtype)).
SPARSEOPT_AI void store(float* p, float x) { *p = x; }
SPARSEOPT_AI void store(float* p, double x) { *p = static_cast<float>(x); }
SPARSEOPT_AI void store(double* p, double x) { *p = x; }
SPARSEOPT_AI void store(bf16_t* p, float x) { *p = to_bf16(x); }
SPARSEOPT_AI void store(f16_t* p, float x) { *p = to_f16(x); }

// Loop-invariant flags as all-ones/all-zeros bit masks applied with and/or, not bools: GCC 12
// cannot vectorize `flag ? a : b` with a loop-invariant scalar bool ("relevant stmt not
// supported"), and unswitching every flag would multiply the instantiations. The bit select is
// exact (it returns a or b unchanged) and costs three vector logic ops.
template <class C>
using MaskT = typename std::conditional<std::is_same<C, float>::value, uint32_t, uint64_t>::type;

template <class C>
MaskT<C> mask_of(bool b) {
  return b ? ~MaskT<C>(0) : MaskT<C>(0);
}

template <class C>
SPARSEOPT_AI C sel(MaskT<C> m, C a, C b) {
  MaskT<C> ua, ub;
  std::memcpy(&ua, &a, sizeof a);
  std::memcpy(&ub, &b, sizeof b);
  const MaskT<C> r = (ua & m) | (ub & ~m);
  C out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

// A type as a value, for generic lambdas: f(Tag<float>{}) and `typename decltype(tag)::type`.
template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>) with T the storage type of `t`; `what` names the kernel in the error.
template <class F>
void with_storage_type(ScalarType t, const char* what, F&& f) {
  switch (t) {
    case ScalarType::Float32: return f(Tag<float>{});
    case ScalarType::Float64: return f(Tag<double>{});
    case ScalarType::BFloat16: return f(Tag<bf16_t>{});
    case ScalarType::Float16: return f(Tag<f16_t>{});
  }
  throw std::invalid_argument(std::string("sparseopt ") + what +
                              ": tensors must be float32, float64, bfloat16 or float16");
}

}  // namespace detail
}  // namespace cpu
}  // namespace sparseopt
