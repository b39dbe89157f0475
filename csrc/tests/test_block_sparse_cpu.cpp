// Unit test of the block-sparse matmul kernels on the CPU (csrc/cpu/block_sparse.cpp). No
// framework: prints "N passed, M failed" and exits non-zero on failure.
//
// The kernels get a naive row-major GEMM callback (a triple loop; beta = 0 never reads C) and
// are compared with the dense products of sparseopt_kernels/reference/block_sparse.py computed
// in double from the dense weight W (zero outside the blocks):
//   dds  y = x·Wᵀ,   dsd  dx = dy·W,   sdd  dW[k] = the (r_k, c_k) block of dyᵀ·x,
// each element within tol·Σ|terms| (float: 1e-5, double: 1e-13). Outputs are filled with NaN
// before the call (every element must be written: empty block-rows / block-columns must come
// out as zeros, the first term of a tile must not read it) and carry a NaN-filled guard zone
// after the end that must stay untouched.
//
// Layouts: random ones with empty block-rows and block-columns, one full block-row, a single
// block, no block at all (nnz = 0), m = 0, m not a multiple of the m-tile (several tiles), and
// sdd with few blocks and a long m (the m range is split and reduced); float and double; b of
// 16, 32 and 64. The results must not depend on the number of OpenMP threads (bit for bit).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "sparseopt/block_sparse.h"
#include "test_util.h"

namespace {

// Row-major C = alpha·op(A)·op(B) + beta·C (GemmFn's contract), summing in T like a BLAS.
template <typename T>
void naive_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T s = 0;
      for (int64_t p = 0; p < k; ++p)
        s += (trans_a ? a[p * lda + i] : a[i * lda + p]) * (trans_b ? b[j * ldb + p] : b[p * ldb + j]);
      T& out = c[i * ldc + j];
      out = beta == T(0) ? alpha * s : alpha * s + beta * out;
    }
}

struct Layout {
  int64_t R, C, b;
  std::vector<int32_t> row_offsets, col_indices, row_indices;
  std::vector<int32_t> col_offsets, t_row_indices, t_block_ids;
  int64_t nnz() const { return static_cast<int64_t>(col_indices.size()); }
};

// The CSR / CSC indices of the kept blocks with flat ids r·C + c (any order, unique).
Layout make_layout(int64_t R, int64_t C, int64_t b, std::vector<int64_t> ids) {
  std::sort(ids.begin(), ids.end());
  Layout L{R, C, b, std::vector<int32_t>(R + 1, 0), {}, {}, std::vector<int32_t>(C + 1, 0),
           {}, {}};
  for (int64_t id : ids) {
    L.row_indices.push_back(static_cast<int32_t>(id / C));
    L.col_indices.push_back(static_cast<int32_t>(id % C));
    L.row_offsets[id / C + 1]++;
    L.col_offsets[id % C + 1]++;
  }
  for (int64_t r = 0; r < R; ++r) L.row_offsets[r + 1] += L.row_offsets[r];
  for (int64_t c = 0; c < C; ++c) L.col_offsets[c + 1] += L.col_offsets[c];
  for (int64_t c = 0; c < C; ++c)  // column-major order, rows ascending within a column
    for (int64_t k = 0; k < L.nnz(); ++k)
      if (L.col_indices[k] == c) {
        L.t_row_indices.push_back(L.row_indices[k]);
        L.t_block_ids.push_back(static_cast<int32_t>(k));
      }
  return L;
}

// nnz random blocks of R × C, never in block-row `empty_row` or block-column `empty_col`
// (pass -1 for none).
Layout random_layout(int64_t R, int64_t C, int64_t b, int64_t nnz, int64_t empty_row,
                     int64_t empty_col, std::mt19937& rng) {
  std::vector<int64_t> pool;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      if (r != empty_row && c != empty_col) pool.push_back(r * C + c);
  std::shuffle(pool.begin(), pool.end(), rng);
  pool.resize(static_cast<size_t>(std::min<int64_t>(nnz, static_cast<int64_t>(pool.size()))));
  return make_layout(R, C, b, pool);
}

constexpr int64_t kGuard = 64;  // NaN elements after every output

template <typename T>
std::vector<T> nan_buffer(int64_t n) {
  return std::vector<T>(static_cast<size_t>(n + kGuard), std::numeric_limits<T>::quiet_NaN());
}

template <typename T>
bool guard_intact(const std::vector<T>& v, int64_t n) {
  for (int64_t i = n; i < n + kGuard; ++i)
    if (!std::isnan(v[static_cast<size_t>(i)])) return false;
  return true;
}

template <typename T>
double rel_tol() {
  return sizeof(T) == 4 ? 1e-5 : 1e-13;
}

struct Outputs {
  std::vector<double> y, dx, dw;  // for the thread-count comparison
};

template <typename T>
Outputs run_case(const std::string& name, const Layout& L, int64_t m, std::mt19937& rng,
                 bool verify = true) {
  const int64_t R = L.R, C = L.C, b = L.b, nnz = L.nnz(), N = R * b, K = C * b;
  std::normal_distribution<double> nd;
  std::vector<T> x(static_cast<size_t>(m * K)), dy(static_cast<size_t>(m * N)),
      values(static_cast<size_t>(nnz * b * b));
  for (auto& e : x) e = static_cast<T>(nd(rng));
  for (auto& e : dy) e = static_cast<T>(nd(rng));
  for (auto& e : values) e = static_cast<T>(nd(rng));
  std::vector<double> W(static_cast<size_t>(N * K), 0.0);  // the dense weight
  for (int64_t k = 0; k < nnz; ++k)
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < b; ++j)
        W[(L.row_indices[k] * b + i) * K + L.col_indices[k] * b + j] = values[(k * b + i) * b + j];

  const BlockSparseShape s{m, R, C, nnz, b};
  auto y = nan_buffer<T>(m * N), dx = nan_buffer<T>(m * K), dw = nan_buffer<T>(nnz * b * b);
  cpu::dds_cpu<T>(&naive_gemm<T>, s, x.data(), values.data(), L.row_offsets.data(),
                  L.col_indices.data(), y.data());
  cpu::dsd_cpu<T>(&naive_gemm<T>, s, dy.data(), values.data(), L.col_offsets.data(),
                  L.t_row_indices.data(), L.t_block_ids.data(), dx.data());
  cpu::sdd_cpu<T>(&naive_gemm<T>, s, dy.data(), x.data(), L.row_indices.data(),
                  L.col_indices.data(), dw.data());
  Outputs out{std::vector<double>(y.begin(), y.begin() + m * N),
              std::vector<double>(dx.begin(), dx.begin() + m * K),
              std::vector<double>(dw.begin(), dw.begin() + nnz * b * b)};
  if (!verify) return out;

  const std::string tag = name + " (" + (sizeof(T) == 4 ? "f32" : "f64") + ")";
  check(guard_intact(y, m * N), tag + ": dds wrote past the output");
  check(guard_intact(dx, m * K), tag + ": dsd wrote past the output");
  check(guard_intact(dw, nnz * b * b), tag + ": sdd wrote past the output");
  const double tol = rel_tol<T>();
  int64_t bad_y = 0, bad_dx = 0, bad_dw = 0;
  // dds: y[i, o] = Σ_f x[i, f] · W[o, f]
  for (int64_t i = 0; i < m; ++i)
    for (int64_t o = 0; o < N; ++o) {
      double want = 0, mag = 0;
      for (int64_t f = 0; f < K; ++f) {
        want += static_cast<double>(x[i * K + f]) * W[o * K + f];
        mag += std::fabs(static_cast<double>(x[i * K + f]) * W[o * K + f]);
      }
      if (!close(y[i * N + o], want, 0.0, tol * mag + 1e-300)) ++bad_y;
    }
  // dsd: dx[i, f] = Σ_o dy[i, o] · W[o, f]
  for (int64_t i = 0; i < m; ++i)
    for (int64_t f = 0; f < K; ++f) {
      double want = 0, mag = 0;
      for (int64_t o = 0; o < N; ++o) {
        want += static_cast<double>(dy[i * N + o]) * W[o * K + f];
        mag += std::fabs(static_cast<double>(dy[i * N + o]) * W[o * K + f]);
      }
      if (!close(dx[i * K + f], want, 0.0, tol * mag + 1e-300)) ++bad_dx;
    }
  // sdd: dw[k, p, q] = Σ_i dy[i, r_k·b + p] · x[i, c_k·b + q]
  for (int64_t k = 0; k < nnz; ++k)
    for (int64_t p = 0; p < b; ++p)
      for (int64_t q = 0; q < b; ++q) {
        double want = 0, mag = 0;
        for (int64_t i = 0; i < m; ++i) {
          const double t = static_cast<double>(dy[i * N + L.row_indices[k] * b + p]) *
                           static_cast<double>(x[i * K + L.col_indices[k] * b + q]);
          want += t;
          mag += std::fabs(t);
        }
        if (!close(dw[(k * b + p) * b + q], want, 0.0, tol * mag + 1e-300)) ++bad_dw;
      }
  check(bad_y == 0, tag + ": dds has " + std::to_string(bad_y) + " wrong elements");
  check(bad_dx == 0, tag + ": dsd has " + std::to_string(bad_dx) + " wrong elements");
  check(bad_dw == 0, tag + ": sdd has " + std::to_string(bad_dw) + " wrong elements");
  return out;
}

template <typename T>
void test_all() {
  std::mt19937 rng(sizeof(T) == 4 ? 1234 : 4321);
  // Random layouts; block-row 1 and block-column 2 are empty.
  for (int64_t b : {16, 32, 64}) {
    run_case<T>("random b=" + std::to_string(b) + " m=37", random_layout(5, 7, b, 9, 1, 2, rng),
                37, rng);
  }
  // m spanning several m-tiles with a ragged last one (the tile is at most a few hundred rows).
  run_case<T>("random m=601", random_layout(4, 6, 16, 10, 3, 0, rng), 601, rng);
  run_case<T>("random m=1", random_layout(3, 3, 32, 4, -1, -1, rng), 1, rng);
  // One full block-row (the others empty), a single block, a dense weight.
  {
    std::vector<int64_t> ids;
    for (int64_t c = 0; c < 5; ++c) ids.push_back(2 * 5 + c);
    run_case<T>("one full block-row", make_layout(4, 5, 16, ids), 50, rng);
  }
  run_case<T>("single block", make_layout(3, 4, 32, {7}), 20, rng);
  run_case<T>("dense", random_layout(2, 3, 16, 6, -1, -1, rng), 33, rng);
  // nnz = 0: dds and dsd write zeros, sdd writes nothing. m = 0: nothing to write, no GEMM.
  run_case<T>("nnz=0", make_layout(3, 2, 16, {}), 17, rng);
  run_case<T>("m=0", random_layout(3, 4, 16, 5, -1, -1, rng), 0, rng);
  // sdd with few blocks and a long m: the m range is split into pieces that are then reduced
  // (ragged last piece with m = 2601).
  run_case<T>("sdd split, 1 block", make_layout(2, 2, 16, {3}), 2601, rng);
  run_case<T>("sdd split, 3 blocks", make_layout(3, 3, 16, {0, 4, 8}), 1100, rng);

  // The results do not depend on the number of threads (bit for bit).
#if defined(_OPENMP)
  const int threads = omp_get_max_threads();
  const Layout L1 = random_layout(6, 5, 16, 12, 0, 4, rng);
  const Layout L2 = make_layout(2, 3, 16, {1, 5});  // sdd split path
  for (const Layout* L : {&L1, &L2}) {
    const int64_t m = L == &L1 ? 700 : 1500;
    std::mt19937 r1(7), r2(7);
    omp_set_num_threads(1);
    const Outputs one = run_case<T>("threads", *L, m, r1, false);
    omp_set_num_threads(std::max(threads, 3));
    const Outputs many = run_case<T>("threads", *L, m, r2, false);
    omp_set_num_threads(threads);
    auto same = [](const std::vector<double>& a, const std::vector<double>& b) {
      if (a.size() != b.size()) return false;
      for (size_t i = 0; i < a.size(); ++i)
        if (std::memcmp(&a[i], &b[i], sizeof(double)) != 0) return false;
      return true;
    };
    const std::string tag = std::string(sizeof(T) == 4 ? "f32" : "f64") +
                            (L == &L1 ? " dds/dsd tiles" : " sdd pieces");
    check(same(one.y, many.y), tag + ": dds depends on the thread count");
    check(same(one.dx, many.dx), tag + ": dsd depends on the thread count");
    check(same(one.dw, many.dw), tag + ": sdd depends on the thread count");
  }
#endif
}

}  // namespace

int main() {
  test_all<float>();
  test_all<double>();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
