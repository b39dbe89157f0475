// Unit test of the masked Adam family on the CPU (csrc/cpu/masked_adam.cpp) and of the dense
// masks of the fused steps (csrc/cpu/mirror_step.cpp). No framework: prints "N passed, M failed"
// and exits non-zero on failure.
//
//  1. chunk_select_cpu against a stable-sort reference written here (the definition in
//     sparseopt_kernels/reference/masked.py): random values with many ties, ±0, ±inf, NaNs with
//     random payloads and signs, a short last chunk, tensors shorter than a chunk, empty
//     tensors, k rounding (density·L + 1/2 exactly on .5, k clamped to 1 and to L), int32 flat
//     indices and int16 chunk offsets, every value dtype.
//  2. compact_adam_cpu against a double-precision scalar implementation of compact_adam_ over
//     several steps (each step starts from the kernel's previous state, so the comparison is
//     per step): fp32/bf16 moments, int32/int16 indices, weight decay on/off, maximize, a grad
//     scale, every param dtype. Unselected entries must keep their bits.
//  3. Dense masks of ham_adam_cpu / ham_sgd_cpu / mirror_step_cpu, Bool and Bits: masked-out
//     elements (param and every state buffer) bit-identical to the input, the others bit-equal
//     to the unmasked kernel's output.
//  Every check runs under each ISA the machine has (forced with set_cpu_isa_for_testing, the
//  hook in mirror_step.cpp); AVX2 must equal AVX-512 bit for bit, generic is held to the
//  reference (1, 2) or to its own unmasked output (3).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "sparseopt/masked_adam.h"
#include "test_util.h"

using ST = ScalarType;

static std::vector<const char*> g_isas;  // the ISAs this machine can run, best first

using Buf = std::vector<uint8_t>;
template <class V>
static std::vector<const void*> cptrs(V& bufs) {
  std::vector<const void*> out;
  for (auto& b : bufs) out.push_back(b.data());
  return out;
}

// ---------------------------------------------------------------------------------------------
// 1. Selection

// The reference's sort key: bits of |float32(θ)| (NaN after +inf, ordered by payload).
static uint32_t ref_key(const Buf& b, ST t, size_t i) {
  if (t == ST::Float32) {
    uint32_t u;
    std::memcpy(&u, &b[i * 4], 4);
    return u & 0x7fffffffu;  // |x| keeps a NaN's payload
  }
  if (t == ST::Float64) {
    double d;
    std::memcpy(&d, &b[i * 8], 8);
    return f2u(static_cast<float>(std::fabs(d))) & 0x7fffffffu;
  }
  return f2u(static_cast<float>(get(b, t, i))) & 0x7fffffffu;  // 16-bit widening is exact
}

static std::vector<int64_t> ref_select(const Buf& b, ST t, int64_t n, double density, int64_t C) {
  std::vector<int64_t> out;
  for (int64_t begin = 0; begin < n; begin += C) {
    const int64_t L = std::min(C, n - begin);
    std::vector<int64_t> order(static_cast<size_t>(L));
    std::iota(order.begin(), order.end(), begin);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) {
      return ref_key(b, t, static_cast<size_t>(a)) < ref_key(b, t, static_cast<size_t>(c));
    });
    order.resize(static_cast<size_t>(chunk_k(density, L)));
    std::sort(order.begin(), order.end());
    out.insert(out.end(), order.begin(), order.end());
  }
  return out;
}

// Values with heavy ties (a few quantized levels), signed zeros, infinities and NaNs.
static Buf make_values(ST t, int64_t n, std::mt19937& rng, int flavour) {
  Buf b = make(t, static_cast<size_t>(n));
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_int_distribution<int> pick(0, 99);
  for (int64_t i = 0; i < n; ++i) {
    double x = nd(rng);
    if (flavour == 1) x = std::round(x * 4) / 4;  // ~20 distinct magnitudes: many ties
    if (flavour == 2) x = std::round(x);           // a handful of magnitudes, mostly 0 and 1
    const int r = pick(rng);
    if (r < 3) x = (r == 0) ? -0.0 : 0.0;
    else if (r < 5) x = (r == 3 ? -1 : 1) * std::numeric_limits<double>::infinity();
    put(b, t, static_cast<size_t>(i), x);
    if (r >= 5 && r < 8) {  // NaN with a random payload and sign (bit patterns, not put())
      const uint32_t payload = static_cast<uint32_t>(rng());
      switch (t) {
        case ST::Float32: { uint32_t u = 0x7f800001u | (payload & 0x807fffffu); std::memcpy(&b[i * 4], &u, 4); break; }
        case ST::Float64: { uint64_t u = 0x7ff0000000000001ull | (static_cast<uint64_t>(payload) << 20) | (static_cast<uint64_t>(payload & 1u) << 63); std::memcpy(&b[i * 8], &u, 8); break; }
        case ST::BFloat16: { uint16_t u = static_cast<uint16_t>(0x7f81u | (payload & 0x807fu)); std::memcpy(&b[i * 2], &u, 2); break; }
        default: { uint16_t u = static_cast<uint16_t>(0x7c01u | (payload & 0x83ffu)); std::memcpy(&b[i * 2], &u, 2); break; }
      }
    }
  }
  return b;
}

static void test_select() {
  struct Case { int64_t C; double density; };
  const std::vector<Case> cases = {{4096, 0.1}, {4096, 0.01}, {100, 0.25}, {64, 0.5},
                                   {1000, 1e-4}, {37, 1.0}, {32768, 0.05}, {6, 0.25},
                                   {10, 0.25}};
  const std::vector<ST> types = {ST::Float32, ST::Float64, ST::BFloat16, ST::Float16};
  std::mt19937 rng(1234);
  for (const Case& c : cases) {
    for (ST vt : types) {
      for (int flavour = 0; flavour < 3; ++flavour) {
        // Sizes: several full chunks plus a short one, shorter than a chunk, empty, exact.
        const std::vector<int64_t> sizes = {7 * c.C + c.C / 3 + 1, std::max<int64_t>(1, c.C / 2 - 1), 0,
                                            3 * c.C, 1};
        std::vector<Buf> vals;
        for (int64_t n : sizes) vals.push_back(make_values(vt, n, rng, flavour));
        for (bool offs : {false, true}) {
          std::vector<std::vector<int64_t>> want;
          for (size_t t = 0; t < sizes.size(); ++t)
            want.push_back(ref_select(vals[t], vt, sizes[t], c.density, c.C));
          SelectConfig cfg;
          cfg.density = c.density;
          cfg.chunk_size = c.C;
          cfg.chunk_offsets = offs;
          for (const char* isa : g_isas) {  // every ISA this machine has
            std::vector<Buf> outs;
            for (int64_t n : sizes) {
              const int64_t ns = num_selected(n, c.density, c.C);
              outs.emplace_back(static_cast<size_t>(ns) * (offs ? 2 : 4) + 1, uint8_t(0xAB));
            }
            auto vp = cptrs(vals);
            auto op = ptrs(outs);
            cpu::set_cpu_isa_for_testing(isa);
            cpu::chunk_select_cpu(cfg, vt, static_cast<int64_t>(sizes.size()), vp.data(),
                                  sizes.data(), op.data());
            cpu::set_cpu_isa_for_testing(nullptr);
            bool ok = true;
            std::string where;
            for (size_t t = 0; t < sizes.size() && ok; ++t) {
              const int64_t ns = num_selected(sizes[t], c.density, c.C);
              if (static_cast<int64_t>(want[t].size()) != ns) ok = false, where = "length";
              const int64_t kC = chunk_k(c.density, c.C);
              for (int64_t j = 0; j < ns && ok; ++j) {
                int64_t got;
                if (offs) {
                  int16_t o;
                  std::memcpy(&o, &outs[t][j * 2], 2);
                  got = (j / kC) * c.C + o;
                } else {
                  int32_t o;
                  std::memcpy(&o, &outs[t][j * 4], 4);
                  got = o;
                }
                if (got != want[t][static_cast<size_t>(j)]) {
                  ok = false;
                  where = "tensor " + std::to_string(t) + " position " + std::to_string(j) +
                          ": got " + std::to_string(got) + " want " +
                          std::to_string(want[t][static_cast<size_t>(j)]);
                }
              }
              if (outs[t].back() != 0xAB) ok = false, where = "wrote past the end";
            }
            check(ok, std::string("chunk_select_cpu ") + isa + " C=" + std::to_string(c.C) +
                          " density=" + std::to_string(c.density) + " " + tname(vt) +
                          " flavour " + std::to_string(flavour) + (offs ? " int16" : " int32") +
                          ": " + where);
          }
        }
      }
    }
  }
  // k rounding of the shared helper: floor(density·L + 1/2) clamped to [1, L].
  check(chunk_k(0.25, 6) == 2 && chunk_k(0.25, 10) == 3 && chunk_k(0.25, 2) == 1 &&
            chunk_k(1e-9, 4096) == 1 && chunk_k(1.0, 17) == 17 && chunk_k(0.1, 0) == 0 &&
            chunk_k(0.1, 4096) == 410 && chunk_k(0.1, 4095) == 410 && chunk_k(0.1, 4094) == 409,
        "chunk_k rounding");
  check(num_selected(4096 * 3, 0.1, 4096) == 3 * 410 &&
            num_selected(4096 * 3 + 5, 0.1, 4096) == 3 * 410 + 1,
        "num_selected");
}

// ---------------------------------------------------------------------------------------------
// 2. Compact Adam step

struct CompactProblem {
  ST pt, st;
  bool offs;
  std::vector<int64_t> numels;
  std::vector<Buf> p, g, idx, m, v;
};

static std::vector<int64_t> flat_indices(const CompactProblem& pr, size_t t, double density,
                                         int64_t C) {
  const int64_t ns = num_selected(pr.numels[t], density, C), kC = chunk_k(density, C);
  std::vector<int64_t> out(static_cast<size_t>(ns));
  for (int64_t j = 0; j < ns; ++j) {
    if (pr.offs) {
      int16_t o;
      std::memcpy(&o, &pr.idx[t][j * 2], 2);
      out[j] = (j / kC) * C + o;
    } else {
      int32_t o;
      std::memcpy(&o, &pr.idx[t][j * 4], 4);
      out[j] = o;
    }
  }
  return out;
}

// Absolute tolerances of one selected entry (param, m, v): float rounding of each cancelling sum
// against its magnitude, plus, for the param, the moments' storage rounding carried into u.
struct Tol3 {
  double p, m, v;
};

static void compact_reference(const CompactAdamConfig& c, double inv_scale, double step,
                              CompactProblem& pr, std::vector<std::vector<Tol3>>* err) {
  const double bc1 = 1 - std::pow(c.beta1, step), bc2s = std::sqrt(1 - std::pow(c.beta2, step));
  err->assign(pr.numels.size(), {});
  for (size_t t = 0; t < pr.numels.size(); ++t) {
    const auto where = flat_indices(pr, t, c.density, c.chunk_size);
    (*err)[t].assign(where.size(), Tol3{0, 0, 0});
    for (size_t j = 0; j < where.size(); ++j) {
      const size_t i = static_cast<size_t>(where[j]);
      double theta = get(pr.p[t], pr.pt, i);
      double g = get(pr.g[t], pr.pt, i) * inv_scale;
      if (c.maximize) g = -g;
      const double m = c.beta1 * get(pr.m[t], pr.st, j) + (1 - c.beta1) * g;
      const double v = c.beta2 * get(pr.v[t], pr.st, j) + (1 - c.beta2) * g * g;
      const double denom = std::sqrt(v) / bc2s + c.eps;
      const double u = (m / bc1) / denom;
      const double rs = std::max(tol(pr.st), 4e-6), rp = tol(pr.pt);
      const double mscale = std::fabs(c.beta1 * get(pr.m[t], pr.st, j)) + std::fabs((1 - c.beta1) * g);
      const double vscale = std::fabs(v);
      if (c.weight_decay != 0) theta *= 1 - c.lr * c.weight_decay;
      put(pr.m[t], pr.st, j, m);
      put(pr.v[t], pr.st, j, v);
      put(pr.p[t], pr.pt, i, theta - c.lr * u);
      (*err)[t][j] = Tol3{rp * (std::fabs(theta) + std::fabs(c.lr * u)) +
                              4 * rs * c.lr * (std::fabs(u) + mscale / bc1 / denom),
                          rs * mscale, rs * vscale};
    }
  }
}

static void compact_kernel(const CompactAdamConfig& c, double inv_scale, double step,
                           CompactProblem& pr) {
  auto p = ptrs(pr.p), m = ptrs(pr.m), v = ptrs(pr.v);
  auto g = cptrs(pr.g), idx = cptrs(pr.idx);
  std::vector<double> steps(pr.numels.size(), step);
  cpu::compact_adam_cpu(c, inv_scale, pr.pt, pr.st, static_cast<int64_t>(pr.numels.size()),
                        p.data(), g.data(), idx.data(), m.data(), v.data(), steps.data(),
                        pr.numels.data());
}


// got vs want: selected params / moments within tolerance, everything else bit-identical to
// `init`.
static bool compare_compact(const CompactProblem& got, const CompactProblem& want,
                            const CompactProblem& init, const std::vector<std::vector<Tol3>>& err,
                            const CompactAdamConfig& c, std::string* where) {
  for (size_t t = 0; t < got.numels.size(); ++t) {
    const auto sel = flat_indices(init, t, c.density, c.chunk_size);
    std::vector<char> on(static_cast<size_t>(got.numels[t]), 0);
    for (int64_t i : sel) on[static_cast<size_t>(i)] = 1;
    const size_t es = elt_size(got.pt);
    for (int64_t i = 0; i < got.numels[t]; ++i) {
      if (on[static_cast<size_t>(i)]) continue;
      if (std::memcmp(&got.p[t][i * es], &init.p[t][i * es], es) != 0) {
        *where = "tensor " + std::to_string(t) + " unselected elt " + std::to_string(i) + " changed";
        return false;
      }
    }
    for (size_t j = 0; j < sel.size(); ++j) {
      const size_t i = static_cast<size_t>(sel[j]);
      // A 16-bit moment may round to the neighbouring value (float32 vs double before the
      // rounding); that moves u by the moment's relative precision (see Tol3).
      const double rp = tol(got.pt), rs = tol(got.st);
      const double a = get(got.p[t], got.pt, i), b = get(want.p[t], want.pt, i);
      const double am = get(got.m[t], got.st, j), bm = get(want.m[t], want.st, j);
      const double av = get(got.v[t], got.st, j), bv = get(want.v[t], want.st, j);
      const Tol3& e = err[t][j];
      if (!close(a, b, rp, 1e-12 + e.p) || !close(am, bm, rs, 1e-30 + e.m) ||
          !close(av, bv, rs, 1e-30 + e.v)) {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "tensor %zu position %zu (elt %zu): p %.9g/%.9g m %.9g/%.9g v %.9g/%.9g", t,
                      j, i, a, b, am, bm, av, bv);
        *where = buf;
        return false;
      }
    }
  }
  return true;
}

static void test_compact() {
  const std::vector<std::pair<ST, ST>> type_pairs = {
      {ST::Float32, ST::Float32}, {ST::Float32, ST::BFloat16}, {ST::BFloat16, ST::Float32},
      {ST::BFloat16, ST::BFloat16}, {ST::Float16, ST::Float32}, {ST::Float64, ST::Float32},
      {ST::Float64, ST::BFloat16}};
  struct Case {
    const char* name;
    double wd;
    bool maximize;
    double inv_scale;
    double density;
    int64_t C;
  };
  const std::vector<Case> cases = {{"plain", 0.0, false, 1.0, 0.1, 4096},
                                   {"wd", 0.1, false, 1.0, 0.1, 512},
                                   {"wd maximize scale", 0.01, true, 1.0 / 256, 0.05, 1000},
                                   {"dense-ish", 0.0, true, 1.0, 0.6, 64},
                                   {"sparse (blocked loop)", 0.1, false, 1.0, 0.01, 4096},
                                   {"sparse short chunks", 0.0, true, 1.0, 0.02, 300}};
  std::mt19937 rng(99);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (const Case& cs : cases) {
    for (auto [pt, st] : type_pairs) {
      for (bool offs : {false, true}) {
        CompactAdamConfig c;
        c.lr = 1e-2;
        c.weight_decay = cs.wd;
        c.maximize = cs.maximize;
        c.density = cs.density;
        c.chunk_size = cs.C;
        c.chunk_offsets = offs;
        CompactProblem init;
        init.pt = pt;
        init.st = st;
        init.offs = offs;
        init.numels = {5 * cs.C + 17, cs.C / 2 + 1, 1, 3 * cs.C, 70001};
        for (int64_t n : init.numels) {
          Buf p = make(pt, n), g = make(pt, n);
          for (int64_t i = 0; i < n; ++i) {
            put(p, pt, i, 0.5 * nd(rng));
            put(g, pt, i, nd(rng) / cs.inv_scale);
          }
          const int64_t ns = num_selected(n, cs.density, cs.C);
          Buf idx(static_cast<size_t>(ns) * (offs ? 2 : 4));
          SelectConfig sc;
          sc.density = cs.density;
          sc.chunk_size = cs.C;
          sc.chunk_offsets = offs;
          const void* vp = p.data();
          void* op = idx.data();
          cpu::chunk_select_cpu(sc, pt, 1, &vp, &n, &op);
          Buf m = make(st, ns), v = make(st, ns);
          for (int64_t j = 0; j < ns; ++j) {
            put(m, st, j, 0.1 * nd(rng));
            put(v, st, j, 0.05 * std::fabs(nd(rng)));
          }
          init.p.push_back(p); init.g.push_back(g); init.idx.push_back(idx);
          init.m.push_back(m); init.v.push_back(v);
        }
        const std::string label = std::string("compact_adam_cpu ") + cs.name + " [" + tname(pt) +
                                  "/" + tname(st) + (offs ? "/int16" : "/int32") + "]";
        std::vector<CompactProblem> state(g_isas.size(), init);
        for (int step = 1; step <= 3; ++step) {
          for (size_t k = 0; k < g_isas.size(); ++k) {
            CompactProblem want = state[k];
            std::vector<std::vector<Tol3>> err;
            compact_reference(c, cs.inv_scale, step, want, &err);
            CompactProblem before = state[k];
            cpu::set_cpu_isa_for_testing(g_isas[k]);
            compact_kernel(c, cs.inv_scale, step, state[k]);
            cpu::set_cpu_isa_for_testing(nullptr);
            std::string where;
            const bool ok = compare_compact(state[k], want, before, err, c, &where);
            check(ok, label + " " + g_isas[k] + " step " + std::to_string(step) + ": " + where);
          }
          // AVX2 and AVX-512 contract the same FMAs: bit-identical.
          for (size_t k = 1; k < g_isas.size(); ++k) {
            if (std::strcmp(g_isas[k], "generic") == 0) continue;
            const bool same = state[k].p == state[0].p && state[k].m == state[0].m &&
                              state[k].v == state[0].v;
            check(same, label + " " + g_isas[k] + " == " + g_isas[0] + " step " +
                            std::to_string(step));
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Dense masks of the fused steps

struct Dense {
  ST pt, st;
  std::vector<int64_t> numels;
  std::vector<Buf> p, g, s1, s2, s3;
  std::vector<Buf> mask_bool, mask_bits;
};

static Dense make_dense(ST pt, ST st, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_int_distribution<int> coin(0, 1);
  Dense d;
  d.pt = pt;
  d.st = st;
  d.numels = {1, 7, 33, 1000, 70001, 65543};
  for (int64_t n : d.numels) {
    Buf p = make(pt, n), g = make(pt, n), s1 = make(st, n), s2 = make(st, n), s3 = make(st, n);
    Buf mb(static_cast<size_t>(n)), bits(static_cast<size_t>((n + 7) / 8), 0);
    for (int64_t i = 0; i < n; ++i) {
      put(p, pt, i, i % 5 == 0 ? 0.0 : 0.5 * nd(rng));
      put(g, pt, i, nd(rng));
      put(s1, st, i, 0.1 * nd(rng));
      const double v = 0.05 * std::fabs(nd(rng));
      put(s2, st, i, v);
      put(s3, st, i, v * (i % 2 ? 1.5 : 0.5));
      // Random bits, with long all-0 / all-1 stretches (whole mask bytes and blocks).
      const int64_t region = (i / 3000) % 3;
      const int on = region == 0 ? coin(rng) : (region == 1 ? 1 : 0);
      mb[i] = static_cast<uint8_t>(on);
      bits[i / 8] = static_cast<uint8_t>(bits[i / 8] | (on << (i % 8)));
    }
    // Padding bits of the last byte set: they must be ignored.
    if (n % 8) bits.back() = static_cast<uint8_t>(bits.back() | (0xff << (n % 8)));
    d.p.push_back(p); d.g.push_back(g); d.s1.push_back(s1); d.s2.push_back(s2); d.s3.push_back(s3);
    d.mask_bool.push_back(mb);
    d.mask_bits.push_back(bits);
  }
  return d;
}

// Per element: where on, `got` equals `full` (the unmasked run) bytewise; elsewhere `init`.
static bool compare_masked(const Dense& got, const Dense& full, const Dense& init, int n_states,
                           std::string* where) {
  for (size_t t = 0; t < got.numels.size(); ++t) {
    for (int k = 0; k <= n_states; ++k) {
      const Buf& a = k == 0 ? got.p[t] : k == 1 ? got.s1[t] : k == 2 ? got.s2[t] : got.s3[t];
      const Buf& f = k == 0 ? full.p[t] : k == 1 ? full.s1[t] : k == 2 ? full.s2[t] : full.s3[t];
      const Buf& i0 = k == 0 ? init.p[t] : k == 1 ? init.s1[t] : k == 2 ? init.s2[t] : init.s3[t];
      const size_t es = elt_size(k == 0 ? got.pt : got.st);
      for (int64_t i = 0; i < got.numels[t]; ++i) {
        const Buf& want = init.mask_bool[t][i] ? f : i0;
        if (std::memcmp(&a[i * es], &want[i * es], es) != 0) {
          *where = "tensor " + std::to_string(t) + " buffer " + std::to_string(k) + " elt " +
                   std::to_string(i) + (init.mask_bool[t][i] ? " (on)" : " (off)");
          return false;
        }
      }
    }
  }
  return true;
}

static Masks masks_of(Dense& d, MaskKind kind, std::vector<const void*>* store) {
  store->clear();
  for (size_t t = 0; t < d.numels.size(); ++t)
    store->push_back(kind == MaskKind::Bool ? d.mask_bool[t].data() : d.mask_bits[t].data());
  Masks m;
  m.kind = kind;
  m.data = kind == MaskKind::None ? nullptr : store->data();
  return m;
}

static void run_adam(const AdamConfig& cfg, Dense& d, MaskKind kind) {
  std::vector<const void*> mstore;
  const Masks masks = masks_of(d, kind, &mstore);
  auto p = ptrs(d.p), s1 = ptrs(d.s1), s2 = ptrs(d.s2), s3 = ptrs(d.s3);
  auto g = cptrs(d.g);
  std::vector<double> steps(d.numels.size(), 4.0);
  cpu::ham_adam_cpu(cfg, 0.5, d.pt, d.st, static_cast<int64_t>(d.numels.size()), p.data(),
                    g.data(), s1.data(), s2.data(), cfg.amsgrad ? s3.data() : nullptr,
                    steps.data(), d.numels.data(), masks);
}

static void run_sgd(const SgdConfig& cfg, Dense& d, MaskKind kind) {
  std::vector<const void*> mstore;
  const Masks masks = masks_of(d, kind, &mstore);
  auto p = ptrs(d.p), s1 = ptrs(d.s1);
  auto g = cptrs(d.g);
  cpu::ham_sgd_cpu(cfg, 1.0, d.pt, d.st, static_cast<int64_t>(d.numels.size()), p.data(),
                   g.data(), cfg.momentum != 0 ? s1.data() : nullptr, d.numels.data(), masks);
}

static void run_mirror(const MirrorStepConfig& cfg, Dense& d, MaskKind kind) {
  std::vector<const void*> mstore;
  const Masks masks = masks_of(d, kind, &mstore);
  auto p = ptrs(d.p);
  auto g = cptrs(d.g);
  cpu::mirror_step_cpu(cfg, 1.0, d.pt, static_cast<int64_t>(d.numels.size()), p.data(), g.data(),
                       d.numels.data(), masks);
}

template <class Run>
static void masked_case(const std::string& name, ST pt, ST st, uint32_t seed, int n_states,
                        Run&& run) {
  const Dense init = make_dense(pt, st, seed);
  std::vector<Dense> full_per_isa;
  for (const char* isa : g_isas) {
    cpu::set_cpu_isa_for_testing(isa);
    Dense full = init;
    run(full, MaskKind::None);
    full_per_isa.push_back(full);
    for (MaskKind kind : {MaskKind::Bool, MaskKind::Bits}) {
      Dense got = init;
      run(got, kind);
      std::string where;
      const bool ok = compare_masked(got, full, init, n_states, &where);
      check(ok, name + " [" + tname(pt) + "/" + tname(st) + "] " + isa +
                    (kind == MaskKind::Bool ? " bool" : " bits") + ": " + where);
    }
  }
  cpu::set_cpu_isa_for_testing(nullptr);
  for (size_t k = 1; k < g_isas.size(); ++k) {
    if (std::strcmp(g_isas[k], "generic") == 0) continue;
    const Dense& a = full_per_isa[k];
    const Dense& b = full_per_isa[0];
    check(a.p == b.p && a.s1 == b.s1 && a.s2 == b.s2 && a.s3 == b.s3,
          name + " [" + tname(pt) + "/" + tname(st) + "] unmasked " + g_isas[k] + " == " +
              g_isas[0]);
  }
}

static void test_masked_fused() {
  const std::vector<std::pair<ST, ST>> type_pairs = {
      {ST::Float32, ST::Float32}, {ST::Float64, ST::Float64}, {ST::Float64, ST::Float32},
      {ST::BFloat16, ST::Float32}, {ST::BFloat16, ST::BFloat16}, {ST::Float16, ST::Float32},
      {ST::Float16, ST::Float16}};
  MirrorConfig ham;
  ham.alpha = 200;
  ham.beta = 1e-3;
  ham.use_clamp = true;
  MirrorConfig hyp = ham;
  hyp.form = MirrorForm::Hypentropy;
  hyp.clamp = 0.05;
  hyp.gamma = 0.5;
  uint32_t seed = 500;
  for (auto [pt, st] : type_pairs) {
    {
      AdamConfig c;
      c.lr = 1e-3;
      c.weight_decay = 0.01;
      c.decoupled_weight_decay = true;
      masked_case("ham_adam_cpu adamw", pt, st, seed++, 2,
                  [&](Dense& d, MaskKind k) { run_adam(c, d, k); });
      c.mirror = ham;
      c.amsgrad = true;
      masked_case("ham_adam_cpu ham-adamw amsgrad", pt, st, seed++, 3,
                  [&](Dense& d, MaskKind k) { run_adam(c, d, k); });
      c.mirror = hyp;
      c.mirror.order = MirrorOrder::Before;
      c.amsgrad = false;
      c.maximize = true;
      masked_case("ham_adam_cpu hypentropy before maximize", pt, st, seed++, 2,
                  [&](Dense& d, MaskKind k) { run_adam(c, d, k); });
    }
    {
      SgdConfig c;
      c.lr = 1e-2;
      c.momentum = 0.9;
      c.nesterov = true;
      c.weight_decay = 1e-3;
      c.mirror = ham;
      masked_case("ham_sgd_cpu momentum nesterov", pt, st, seed++, 1,
                  [&](Dense& d, MaskKind k) { run_sgd(c, d, k); });
      c.momentum = 0.0;
      c.nesterov = false;
      masked_case("ham_sgd_cpu no momentum", pt, st, seed++, 0,
                  [&](Dense& d, MaskKind k) { run_sgd(c, d, k); });
    }
    if (pt == st) {
      MirrorStepConfig c;
      c.lr = 1e-3;
      c.mirror = ham;
      masked_case("mirror_step_cpu exp", pt, st, seed++, 0,
                  [&](Dense& d, MaskKind k) { run_mirror(c, d, k); });
      c.mirror = hyp;
      masked_case("mirror_step_cpu hypentropy", pt, st, seed++, 0,
                  [&](Dense& d, MaskKind k) { run_mirror(c, d, k); });
    }
  }
}

int main() {
  for (const char* isa : {"avx512", "avx2", "generic"})
    if (std::string(cpu::set_cpu_isa_for_testing(isa)) == isa) g_isas.push_back(isa);
  cpu::set_cpu_isa_for_testing(nullptr);
  std::printf("cpu_isa() = %s; testing ISAs:", cpu::cpu_isa());
  for (const char* isa : g_isas) std::printf(" %s", isa);
  std::printf("\n");

  test_select();
  test_compact();
  test_masked_fused();

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
