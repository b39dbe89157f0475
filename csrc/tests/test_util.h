// Helpers shared by the C++ unit tests of the CPU kernels (each test is its own executable):
// pass/fail counting, float bit views, and tensors stored as byte vectors of a ScalarType.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../cpu/fast_exp.h"
#include "sparseopt/mirror_step.h"

namespace sparseopt {
namespace cpu {
// Re-selects the ISA as if SPARSEOPT_CPU_ISA were `name` (csrc/cpu/mirror_step.cpp; not in the
// public header). nullptr restores the environment's choice.
const char* set_cpu_isa_for_testing(const char* name);
}  // namespace cpu
}  // namespace sparseopt

using namespace sparseopt;
using sparseopt::cpu::detail::bf16_t;
using sparseopt::cpu::detail::f16_t;

static int g_passed = 0, g_failed = 0;

static void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    if (g_failed <= 50) std::printf("FAIL: %s\n", what.c_str());
  }
}

static uint32_t f2u(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
static float u2f(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Storage helpers: a tensor is a std::vector<uint8_t> holding elements of a ScalarType.
static size_t elt_size(ScalarType t) {
  return t == ScalarType::Float64 ? 8 : t == ScalarType::Float32 ? 4 : 2;
}
static double get(const std::vector<uint8_t>& buf, ScalarType t, size_t i) {
  switch (t) {
    case ScalarType::Float32: { float v; std::memcpy(&v, &buf[i * 4], 4); return v; }
    case ScalarType::Float64: { double v; std::memcpy(&v, &buf[i * 8], 8); return v; }
    case ScalarType::BFloat16: { bf16_t v; std::memcpy(&v, &buf[i * 2], 2); return cpu::detail::widen(v); }
    default: { f16_t v; std::memcpy(&v, &buf[i * 2], 2); return cpu::detail::widen(v); }
  }
}
static void put(std::vector<uint8_t>& buf, ScalarType t, size_t i, double x) {
  switch (t) {
    case ScalarType::Float32: { float v = static_cast<float>(x); std::memcpy(&buf[i * 4], &v, 4); break; }
    case ScalarType::Float64: std::memcpy(&buf[i * 8], &x, 8); break;
    case ScalarType::BFloat16: { bf16_t v = cpu::detail::to_bf16(static_cast<float>(x)); std::memcpy(&buf[i * 2], &v, 2); break; }
    default: { f16_t v = cpu::detail::to_f16(static_cast<float>(x)); std::memcpy(&buf[i * 2], &v, 2); break; }
  }
}
static std::vector<uint8_t> make(ScalarType t, size_t n) { return std::vector<uint8_t>(n * elt_size(t)); }

static const char* tname(ScalarType t) {
  switch (t) {
    case ScalarType::Float32: return "f32";
    case ScalarType::Float64: return "f64";
    case ScalarType::BFloat16: return "bf16";
    default: return "f16";
  }
}

// Relative tolerance of a stored result: the storage precision dominates for 16-bit types; for
// float32 a few ulp of float arithmetic (plus the exp's 2 ulp) against exact double math.
static double tol(ScalarType t) {
  switch (t) {
    case ScalarType::Float64: return 1e-12;
    case ScalarType::Float32: return 4e-6;
    case ScalarType::BFloat16: return 1.0 / 128;
    default: return 1.0 / 1024;
  }
}

// |got − want| ≤ atol + rtol·|want|; a NaN expectation needs a NaN result.
static bool close(double got, double want, double rtol, double atol) {
  if (std::isnan(want)) return std::isnan(got);
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

template <class V>
static std::vector<void*> ptrs(V& bufs) {
  std::vector<void*> out;
  for (auto& b : bufs) out.push_back(b.data());
  return out;
}
