// Unit test of SparseOpt's BN-skew correction kernels on the CPU (csrc/cpu/row_scale.cpp). No
// framework: prints "N passed, M failed" and exits non-zero on failure.
//
//  1. row_coefficients_cpu against a scalar double implementation of
//     sparseopt_kernels/reference/skew.py, bit for bit: empty rows, full rows, an all-empty mask,
//     row_len 1 (1-D masks), odd sizes, rows split across work items (row_len >= 32768), many
//     short rows per item, rows = 0 and row_len = 0, plus hand-computed values.
//  2. row_scale_cpu, every dtype, with and without a mask, against x·c computed in double (the
//     product of two floats is exact in double, so rounding it to float and then to the storage
//     type is exactly the kernel's float32 arithmetic): bit for bit, NaN for NaN; masked-out
//     entries must be +0 (also where x is NaN or ±inf, and where c = 0).
//  3. Both on every ISA the machine has (set_cpu_isa_for_testing, see test_mirror_step_cpu.cpp).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "sparseopt/row_scale.h"
#include "test_util.h"

static std::vector<const char*> g_isas;  // the ISAs this machine can run, best first

// ---------------------------------------------------------------------------------------------
// 1. Row coefficients

struct MaskCase {
  std::string name;
  int64_t rows, row_len;
  std::vector<uint8_t> mask;  // rows · row_len bytes, 0 or 1
};

// The reference's formula in double: (count · rows) / total, then sqrt, then float.
static std::vector<float> coefficients_ref(const MaskCase& m) {
  std::vector<double> counts(static_cast<size_t>(m.rows), 0.0);
  double total = 0.0;
  for (int64_t r = 0; r < m.rows; ++r) {
    for (int64_t j = 0; j < m.row_len; ++j) counts[r] += m.mask[r * m.row_len + j] ? 1.0 : 0.0;
    total += counts[r];
  }
  std::vector<float> out(static_cast<size_t>(m.rows), 0.0f);
  if (total == 0.0) return out;
  for (int64_t r = 0; r < m.rows; ++r)
    out[r] = static_cast<float>(std::sqrt(counts[r] * static_cast<double>(m.rows) / total));
  return out;
}

static MaskCase random_mask(const std::string& name, int64_t rows, int64_t row_len, double p_on,
                            uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  MaskCase m{name, rows, row_len, std::vector<uint8_t>(static_cast<size_t>(rows * row_len))};
  for (int64_t r = 0; r < rows; ++r) {
    // Every 5th row empty, every 7th full, the others random with a per-row density.
    const double p = r % 5 == 3 ? 0.0 : r % 7 == 2 ? 1.0 : p_on * (0.2 + 1.6 * u(rng));
    for (int64_t j = 0; j < row_len; ++j) m.mask[r * row_len + j] = u(rng) < p ? 1 : 0;
  }
  return m;
}

static bool same_bits(float a, float b) { return f2u(a) == f2u(b); }

static void run_coefficients(const std::vector<MaskCase>& cases, const std::string& label) {
  const size_t n = cases.size();
  std::vector<const uint8_t*> masks;
  std::vector<int64_t> rows, lens;
  for (const auto& c : cases) {
    masks.push_back(c.mask.data());
    rows.push_back(c.rows);
    lens.push_back(c.row_len);
  }
  for (const char* isa : g_isas) {
    cpu::set_cpu_isa_for_testing(isa);
    // One sentinel float after each vector: nothing may be written past `rows` entries.
    std::vector<std::vector<float>> out(n);
    std::vector<float*> outp;
    for (size_t t = 0; t < n; ++t) {
      out[t].assign(static_cast<size_t>(cases[t].rows) + 1, -7.0f);
      outp.push_back(out[t].data());
    }
    cpu::row_coefficients_cpu(static_cast<int64_t>(n), masks.data(), rows.data(), lens.data(),
                              outp.data());
    for (size_t t = 0; t < n; ++t) {
      const std::vector<float> want = coefficients_ref(cases[t]);
      int64_t bad = -1;
      for (int64_t r = 0; r < cases[t].rows && bad < 0; ++r)
        if (!same_bits(out[t][r], want[r])) bad = r;
      std::string where;
      if (bad >= 0) {
        char buf[160];
        std::snprintf(buf, sizeof buf, " row %lld: got %.9g want %.9g", static_cast<long long>(bad),
                      out[t][bad], want[bad]);
        where = buf;
      }
      check(bad < 0, label + " " + cases[t].name + " [" + isa + "] bit for bit" + where);
      check(out[t][cases[t].rows] == -7.0f, label + " " + cases[t].name + " [" + isa +
                                                 "] writes nothing past its rows");
    }
  }
  cpu::set_cpu_isa_for_testing(nullptr);
}

static void test_coefficients() {
  // Hand-computed: counts 4, 2 of 4 elements, total 6 → sqrt(4·2/6), sqrt(2·2/6).
  {
    MaskCase m{"hand", 2, 4, {1, 1, 1, 1, 1, 1, 0, 0}};
    std::vector<float> out(2);
    const uint8_t* mp = m.mask.data();
    float* op = out.data();
    cpu::row_coefficients_cpu(1, &mp, &m.rows, &m.row_len, &op);
    check(out[0] == static_cast<float>(std::sqrt(8.0 / 6.0)) &&
              out[1] == static_cast<float>(std::sqrt(4.0 / 6.0)),
          "row_coefficients_cpu hand-computed values");
    // A uniformly sparse (or dense) mask gives c = 1 in every row.
    MaskCase u{"uniform", 3, 4, {1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0}};
    std::vector<float> o2(3);
    const uint8_t* up = u.mask.data();
    float* o2p = o2.data();
    cpu::row_coefficients_cpu(1, &up, &u.rows, &u.row_len, &o2p);
    check(o2[0] == 1.0f && o2[1] == 1.0f && o2[2] == 1.0f, "uniform sparsity gives c = 1");
  }

  std::vector<MaskCase> cases;
  cases.push_back(random_mask("small 7x5", 7, 5, 0.5, 1));
  cases.push_back(random_mask("1-D 1001 (row_len 1)", 1001, 1, 0.5, 2));
  cases.push_back(random_mask("1-D 70001 (row_len 1, several items)", 70001, 1, 0.3, 3));
  cases.push_back(random_mask("odd 33x97", 33, 97, 0.1, 4));
  cases.push_back(random_mask("conv 64x3x3x3 (row_len 27)", 64, 27, 0.2, 5));
  cases.push_back(random_mask("many short rows 40000x3", 40000, 3, 0.5, 6));
  cases.push_back(random_mask("long rows 3x70001 (pieces)", 3, 70001, 0.05, 7));
  cases.push_back(random_mask("one row 1x32768 (exactly one piece)", 1, 32768, 0.5, 8));
  cases.push_back(random_mask("rows of 32767 (just short)", 4, 32767, 0.5, 9));
  cases.push_back(random_mask("rows of 32769 (two pieces)", 5, 32769, 0.5, 10));
  cases.push_back(random_mask("dense 9x1000", 9, 1000, 2.0, 11));
  {
    MaskCase empty{"all empty 17x33", 17, 33, std::vector<uint8_t>(17 * 33, 0)};
    cases.push_back(empty);
    MaskCase full{"all full 5x7", 5, 7, std::vector<uint8_t>(35, 1)};
    cases.push_back(full);
    MaskCase one{"a single non-zero 50x40", 50, 40, std::vector<uint8_t>(2000, 0)};
    one.mask[1234] = 1;
    cases.push_back(one);
    MaskCase rows0{"rows = 0", 0, 5, {}};
    cases.push_back(rows0);
    MaskCase len0{"row_len = 0", 6, 0, {}};
    cases.push_back(len0);
    MaskCase big_empty{"all empty 3x70001", 3, 70001, std::vector<uint8_t>(3 * 70001, 0)};
    cases.push_back(big_empty);
    MaskCase empty_1d{"all empty 1-D 70001", 70001, 1, std::vector<uint8_t>(70001, 0)};
    cases.push_back(empty_1d);
    MaskCase one_1d{"a single non-zero 1-D 9", 9, 1, std::vector<uint8_t>(9, 0)};
    one_1d.mask[4] = 1;
    cases.push_back(one_1d);
  }
  // All in one call (items of different tensors interleave), then each tensor on its own
  // (the serial path below the parallel threshold).
  run_coefficients(cases, "row_coefficients_cpu (one call)");
  for (const auto& c : cases) run_coefficients({c}, "row_coefficients_cpu (alone)");
  // No tensors: nothing happens.
  cpu::row_coefficients_cpu(0, nullptr, nullptr, nullptr, nullptr);
}

// ---------------------------------------------------------------------------------------------
// 2. Row scale

struct ScaleTensor {
  int64_t rows, row_len;
  std::vector<uint8_t> x;     // storage of the ScalarType
  std::vector<float> c;       // one per row
  std::vector<uint8_t> mask;  // one byte per element
};

static ScaleTensor make_scale_tensor(ScalarType t, int64_t rows, int64_t row_len,
                                     uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_int_distribution<int> coin(0, 3);
  const int64_t n = rows * row_len;
  ScaleTensor s{rows, row_len, make(t, static_cast<size_t>(n)), {}, {}};
  const double inf = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    double v = nd(rng) * (i % 3 == 0 ? 1e3 : 1.0);
    if (i % 97 == 5) v = std::numeric_limits<double>::quiet_NaN();
    if (i % 101 == 7) v = (i % 2 ? inf : -inf);
    if (i % 11 == 0) v = (i % 2 ? 0.0 : -0.0);
    put(s.x, t, static_cast<size_t>(i), v);
    s.mask.push_back(coin(rng) != 0 ? 1 : 0);
  }
  for (int64_t r = 0; r < rows; ++r) {
    // Coefficients as row_coefficients makes them (0, exactly 1, others), plus a large one.
    const double v = r % 6 == 0   ? 0.0
                     : r % 6 == 1 ? 1.0
                     : r % 6 == 2 ? 31.0
                                  : 0.3 + 2 * std::fabs(nd(rng));
    s.c.push_back(static_cast<float>(v));
  }
  return s;
}

// The expected storage bits of element i: x·c in double, rounded once to float (exact for a
// float32 product) then to the storage type; float64: the double product. +0 where masked out.
static std::vector<uint8_t> scale_ref(ScalarType t, const ScaleTensor& s, bool masked) {
  std::vector<uint8_t> out = s.x;
  for (int64_t i = 0; i < s.rows * s.row_len; ++i) {
    const double c = s.c[i / s.row_len];
    const double x = get(s.x, t, static_cast<size_t>(i));
    double y = t == ScalarType::Float64 ? x * c : static_cast<double>(static_cast<float>(x * c));
    if (masked && !s.mask[i]) y = 0.0;
    put(out, t, static_cast<size_t>(i), y);
  }
  return out;
}

static std::string first_difference(ScalarType t, const std::vector<uint8_t>& got,
                                    const std::vector<uint8_t>& want, const ScaleTensor& s,
                                    bool masked) {
  const size_t es = elt_size(t);
  for (int64_t i = 0; i < s.rows * s.row_len; ++i) {
    const double a = get(got, t, static_cast<size_t>(i)), b = get(want, t, static_cast<size_t>(i));
    const bool nan_ok = std::isnan(a) && std::isnan(b);
    if (!nan_ok && std::memcmp(&got[i * es], &want[i * es], es) != 0) {
      char buf[200];
      std::snprintf(buf, sizeof buf, " elt %lld (row %lld%s): got %.9g want %.9g",
                    static_cast<long long>(i), static_cast<long long>(i / s.row_len),
                    masked ? (s.mask[i] ? ", on" : ", off") : "", a, b);
      return buf;
    }
  }
  return "";
}

static void test_row_scale() {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1},     {7, 1},      {1001, 1},  {5, 3},    {33, 9},   {64, 63},   {13, 64},
      {11, 65},   {70, 1000},  {3, 70001}, {1, 2048}, {40000, 2}, {9, 4097}, {0, 5},
      {4, 0}};
  const ScalarType types[] = {ScalarType::Float32, ScalarType::Float64, ScalarType::BFloat16,
                              ScalarType::Float16};
  uint32_t seed = 100;
  for (ScalarType t : types) {
    std::vector<ScaleTensor> init;
    for (auto [rows, len] : shapes) init.push_back(make_scale_tensor(t, rows, len, seed++));
    for (bool masked : {false, true}) {
      for (const char* isa : g_isas) {
        cpu::set_cpu_isa_for_testing(isa);
        // All shapes in one call, then the first few alone (serial path).
        for (int mode = 0; mode < 2; ++mode) {
          std::vector<ScaleTensor> got = init;
          const size_t n = mode == 0 ? got.size() : 1;
          for (size_t first = 0; first < (mode == 0 ? 1 : got.size()); ++first) {
            std::vector<void*> x;
            std::vector<const float*> c;
            std::vector<const uint8_t*> m;
            std::vector<int64_t> rows, lens;
            for (size_t k = first; k < first + n; ++k) {
              x.push_back(got[k].x.data());
              c.push_back(got[k].c.data());
              m.push_back(got[k].mask.data());
              rows.push_back(got[k].rows);
              lens.push_back(got[k].row_len);
            }
            cpu::row_scale_cpu(t, static_cast<int64_t>(n), x.data(), c.data(),
                               masked ? m.data() : nullptr, rows.data(), lens.data());
          }
          for (size_t k = 0; k < got.size(); ++k) {
            const std::string where =
                first_difference(t, got[k].x, scale_ref(t, init[k], masked), init[k], masked);
            check(where.empty(), std::string("row_scale_cpu [") + tname(t) + "] " + isa +
                                     (masked ? " masked" : "") + (mode ? " alone " : " ") +
                                     std::to_string(init[k].rows) + "x" +
                                     std::to_string(init[k].row_len) + where);
          }
        }
      }
      cpu::set_cpu_isa_for_testing(nullptr);
    }
    // Masked-out entries are +0 whatever x and c were (NaN, ±inf, c = 0): checked bitwise above
    // through scale_ref; here explicitly on one tensor.
    ScaleTensor s = init[8];
    void* xp = s.x.data();
    const float* cp = s.c.data();
    const uint8_t* mp = s.mask.data();
    cpu::row_scale_cpu(t, 1, &xp, &cp, &mp, &s.rows, &s.row_len);
    bool zeros = true;
    const size_t es = elt_size(t);
    const std::vector<uint8_t> zero(es, 0);
    for (int64_t i = 0; i < s.rows * s.row_len; ++i)
      if (!s.mask[i]) zeros = zeros && std::memcmp(&s.x[i * es], zero.data(), es) == 0;
    check(zeros, std::string("row_scale_cpu [") + tname(t) + "] masked-out entries are +0");
  }
  // An unknown dtype is rejected.
  bool threw = false;
  try {
    int64_t one = 1;
    float x = 1.0f, c = 1.0f;
    void* xp = &x;
    const float* cp = &c;
    cpu::row_scale_cpu(static_cast<ScalarType>(42), 1, &xp, &cp, nullptr, &one, &one);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, "row_scale_cpu rejects an unknown dtype");
}

int main() {
  for (const char* isa : {"avx512", "avx2", "generic"})
    if (std::string(cpu::set_cpu_isa_for_testing(isa)) == isa) g_isas.push_back(isa);
  cpu::set_cpu_isa_for_testing(nullptr);
  std::printf("cpu_isa() = %s; testing ISAs:", cpu::cpu_isa());
  for (const char* isa : g_isas) std::printf(" %s", isa);
  std::printf("\n");

  test_coefficients();
  test_row_scale();

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
