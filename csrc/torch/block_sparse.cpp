// Binding of the block-sparse matmuls of a linear layer (dds / dsd / sdd); see
// csrc/include/sparseopt/block_sparse.h and sparseopt_kernels/reference/block_sparse.py.
// The Python dispatcher validates dtypes and shapes first; the checks here are a second line of
// defence, plus one the dispatcher does not do: on the CPU the index tensors are checked to be
// in range (offsets from 0 to nnz, non-decreasing; block indices inside the matrix), because
// the CPU kernels index memory with them directly and must never read out of bounds.
//
// CPU: float32 and float64 run natively; float16 / bfloat16 are upcast to float32, computed and
// rounded once to their dtype (the spec's accumulation rule). The per-block GEMMs go to the BLAS
// that torch links (the Fortran sgemm_ / dgemm_ that libtorch_cpu exports: MKL in the x86 CPU
// wheels), looked up at run time; without it, to at::mm_out / addmm_ on tensors viewing the
// same memory (correct, slower: about a µs of tensor bookkeeping per block).
//
// Threads. The core runs the GEMMs inside an OpenMP parallel region, one per thread. MKL's
// OpenMP threading layer runs single-threaded when called inside an active parallel region
// (checked with MKL_VERBOSE=1: NThr:1 for every block GEMM, NThr:2 for a dense GEMM outside;
// and 1 -> 2 threads halves the time of dds / dsd / sdd), as do ATen's mm and an OpenMP-built
// OpenBLAS.
#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>

#include "common.h"
#include "sparseopt/block_sparse.h"

#ifdef SPARSEOPT_WITH_CUDA
#include "sparseopt/block_sparse_cuda.h"
#endif

namespace sparseopt {
namespace binding {
namespace {

// ------------------------------------------------------------------------------------------
// GEMM callbacks of the CPU core (GemmFn: row-major C = alpha·op(A)·op(B) + beta·C).

// Fortran BLAS ?gemm_. Integers are passed by pointer to int64 slots holding values below 2^31:
// on a little-endian machine an LP64 BLAS reads the low 32 bits and an ILP64 one all 64, the
// same value either way. The two trailing lengths are gfortran's hidden CHARACTER lengths (an
// MKL or C-implemented BLAS ignores them).
template <typename T>
using FortranGemm = void (*)(const char* transa, const char* transb, const int64_t* m,
                             const int64_t* n, const int64_t* k, const T* alpha, const T* a,
                             const int64_t* lda, const T* b, const int64_t* ldb, const T* beta,
                             T* c, const int64_t* ldc, size_t transa_len, size_t transb_len);

std::atomic<FortranGemm<float>> g_sgemm{nullptr};
std::atomic<FortranGemm<double>> g_dgemm{nullptr};

template <typename T>
FortranGemm<T> fortran_gemm();
template <>
FortranGemm<float> fortran_gemm<float>() { return g_sgemm.load(std::memory_order_relaxed); }
template <>
FortranGemm<double> fortran_gemm<double>() { return g_dgemm.load(std::memory_order_relaxed); }

// The ATen path: tensors viewing the raw memory (row stride ld, unit column stride), op(X) as a
// transposed view. Used when no Fortran BLAS is found, or for a dimension past the BLAS's int.
template <typename T>
void aten_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  // from_blob needs a non-const pointer; A and B are only read.
  at::Tensor A = trans_a ? at::from_blob(const_cast<T*>(a), {k, m}, {lda, 1}, opts).t()
                         : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
  at::Tensor B = trans_b ? at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opts).t()
                         : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(C, A, B);  // C is overwritten (beta = 0 must not read it: it may be garbage)
    if (alpha != T(1)) C.mul_(alpha);
  } else {
    C.addmm_(A, B, beta, alpha);
  }
}

// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, and a row-major X with row
// stride ld is, read column-major with leading dimension ld, Xᵀ: so the column-major call is
// gemm(op_B, op_A, n, m, k, B, ldb, A, lda, C, ldc) with the same transpose flags.
template <typename T>
void blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const FortranGemm<T> f = fortran_gemm<T>();
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (f == nullptr || m > kIntMax || n > kIntMax || k > kIntMax || lda > kIntMax ||
      ldb > kIntMax || ldc > kIntMax) {
    aten_gemm<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (m == 0 || n == 0) return;
  // BLAS requires ld >= the stored row length even when that dimension is unused; ours always
  // are (a column block of a wider matrix), but k = 0 (m = 0 rows in sdd) never reaches here.
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  f(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc, 1, 1);
}

// Which GEMM the CPU kernels use: "blas" (the Fortran symbols were found), "aten", or forced.
enum class GemmChoice { Auto, Blas, Aten };
std::atomic<GemmChoice> g_choice{GemmChoice::Auto};
std::atomic<bool> g_resolved{false};

void* find_symbol(const char* name) {
  // RTLD_DEFAULT searches the global scope and this library's own dependencies (libtorch_cpu,
  // which this extension links); libtorch_cpu by name covers a torch loaded RTLD_LOCAL.
  void* p = dlsym(RTLD_DEFAULT, name);
  if (p != nullptr) return p;
  void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return nullptr;
  p = dlsym(lib, name);
  dlclose(lib);  // RTLD_NOLOAD took a reference; the library stays loaded (torch holds it)
  return p;
}

// Resolves the Fortran GEMMs once and checks them on a small product whose transposes,
// strides and beta would all show a wrong calling convention; a BLAS that fails the check is
// not used (the ATen path is).
template <typename T>
bool self_test(FortranGemm<T> f) {
  if (f == nullptr) return false;
  // Row-major A (2 × 3, lda 4) read transposed, B (2 × 2, ldb 3): C (3 × 2, ldc 3) =
  // Aᵀ·B + 1·C.
  const T a[8] = {1, 2, 3, -1, 4, 5, 6, -1};
  const T b[6] = {1, 2, -1, 3, 4, -1};
  T c[9] = {1, 1, -7, 1, 1, -7, 1, 1, -7};
  const int64_t m = 3, n = 2, k = 2, lda = 4, ldb = 3, ldc = 3;
  const T one = 1;
  const char ta = 'T', tb = 'N';
  f(&tb, &ta, &n, &m, &k, &one, b, &ldb, a, &lda, &one, c, &ldc, 1, 1);
  // Aᵀ = [[1,4],[2,5],[3,6]], B = [[1,2],[3,4]]: Aᵀ·B = [[13,18],[17,24],[21,30]], plus 1.
  const T want[9] = {14, 19, -7, 18, 25, -7, 22, 31, -7};
  for (int i = 0; i < 9; ++i)
    if (c[i] != want[i]) return false;
  return true;
}

void resolve_blas() {
  if (g_resolved.load(std::memory_order_acquire)) return;
  static std::once_flag once;
  std::call_once(once, [] {
    auto s = reinterpret_cast<FortranGemm<float>>(find_symbol("sgemm_"));
    auto d = reinterpret_cast<FortranGemm<double>>(find_symbol("dgemm_"));
    g_sgemm.store(self_test<float>(s) ? s : nullptr);
    g_dgemm.store(self_test<double>(d) ? d : nullptr);
    g_resolved.store(true, std::memory_order_release);
  });
}

template <typename T>
GemmFn<T> gemm_for() {
  resolve_blas();
  const GemmChoice choice = g_choice.load(std::memory_order_relaxed);
  if (choice == GemmChoice::Aten || (choice == GemmChoice::Auto && fortran_gemm<T>() == nullptr))
    return &aten_gemm<T>;
  TORCH_CHECK(fortran_gemm<T>() != nullptr,
              "sparseopt: no usable Fortran BLAS gemm was found (forced with block_sparse_gemm)");
  return &blas_gemm<T>;
}

// block_sparse_gemm(force=None) -> str: the GEMM the CPU kernels use, "blas" or "aten";
// force = "blas" / "aten" / "auto" changes it (for tests and benchmarks).
std::string block_sparse_gemm(c10::optional<std::string> force) {
  resolve_blas();
  if (force.has_value()) {
    if (*force == "auto") {
      g_choice.store(GemmChoice::Auto);
    } else if (*force == "blas") {
      TORCH_CHECK(g_sgemm.load() != nullptr && g_dgemm.load() != nullptr,
                  "sparseopt: no usable Fortran BLAS sgemm_/dgemm_ in this process");
      g_choice.store(GemmChoice::Blas);
    } else if (*force == "aten") {
      g_choice.store(GemmChoice::Aten);
    } else {
      TORCH_CHECK(false, "sparseopt: block_sparse_gemm takes 'auto', 'blas' or 'aten', got '",
                  *force, "'");
    }
  }
  const GemmChoice c = g_choice.load();
  if (c == GemmChoice::Aten) return "aten";
  if (c == GemmChoice::Blas) return "blas";
  return g_sgemm.load() != nullptr && g_dgemm.load() != nullptr ? "blas" : "aten";
}

// ------------------------------------------------------------------------------------------
// Argument checks shared by the CPU and CUDA entry points.

void check_dense(const at::Tensor& t, const char* name, const at::Tensor& values) {
  TORCH_CHECK(t.dim() == 2, "sparseopt: ", name, " must be 2-D, got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == values.scalar_type(), "sparseopt: ", name, " has dtype ",
              t.scalar_type(), ", expected ", values.scalar_type());
  TORCH_CHECK(t.device() == values.device(), "sparseopt: ", name, " is on ", t.device(),
              ", expected ", values.device());
}

void check_index(const at::Tensor& t, const char* name, const at::Device& device,
                 int64_t numel = -1) {
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == at::kInt, "sparseopt: ", name,
              " must be a 1-D int32 tensor");
  TORCH_CHECK(t.device() == device, "sparseopt: ", name, " is on ", t.device(), ", expected ",
              device);
  TORCH_CHECK(numel < 0 || t.numel() == numel, "sparseopt: ", name, " has ", t.numel(),
              " entries, expected ", numel);
}

int64_t block_of(const at::Tensor& values) {
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2) && values.size(1) > 0,
              "sparseopt: values must be (nnz × block × block)");
  return values.size(1);
}

int64_t blocks_in(const at::Tensor& t, int64_t b, const char* name) {
  TORCH_CHECK(t.size(1) % b == 0, "sparseopt: ", name, " has ", t.size(1),
              " columns, not a multiple of the block size ", b);
  return t.size(1) / b;
}

// dds: checks the arguments, returns the block-columns C of x.
int64_t check_dds_args(const at::Tensor& x, const at::Tensor& values,
                       const at::Tensor& row_offsets, const at::Tensor& col_indices) {
  const int64_t b = block_of(values), nnz = values.size(0);
  check_dense(x, "x", values);
  check_index(row_offsets, "row_offsets", values.device());
  check_index(col_indices, "col_indices", values.device(), nnz);
  TORCH_CHECK(row_offsets.numel() >= 2, "sparseopt: row_offsets needs block-rows + 1 >= 2 "
              "entries");
  return blocks_in(x, b, "x");
}

// dsd: checks the arguments, returns the block-rows R of dy.
int64_t check_dsd_args(const at::Tensor& dy, const at::Tensor& values,
                       const at::Tensor& col_offsets, const at::Tensor& t_row_indices,
                       const at::Tensor& t_block_ids) {
  const int64_t b = block_of(values), nnz = values.size(0);
  check_dense(dy, "dy", values);
  check_index(col_offsets, "col_offsets", values.device());
  check_index(t_row_indices, "t_row_indices", values.device(), nnz);
  check_index(t_block_ids, "t_block_ids", values.device(), nnz);
  TORCH_CHECK(col_offsets.numel() >= 2, "sparseopt: col_offsets needs block-columns + 1 >= 2 "
              "entries");
  return blocks_in(dy, b, "dy");
}

// CPU range checks (contiguous int32 CPU tensors). Offsets: n + 1 entries from 0 to nnz,
// non-decreasing. Indices: every entry in [0, limit).
void check_offsets_cpu(const at::Tensor& offsets, int64_t nnz, const char* name) {
  const int32_t* p = offsets.data_ptr<int32_t>();
  const int64_t n = offsets.numel();
  TORCH_CHECK(n >= 1 && p[0] == 0 && p[n - 1] == nnz, "sparseopt: ", name,
              " must start at 0 and end at nnz = ", nnz, " (got ", n >= 1 ? p[0] : 0, " … ",
              n >= 1 ? p[n - 1] : 0, ")");
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK(p[i] >= p[i - 1], "sparseopt: ", name, " must be non-decreasing (entry ", i,
                " is ", p[i], " after ", p[i - 1], ")");
}

void check_range_cpu(const at::Tensor& idx, int64_t limit, const char* name, const char* what) {
  const int32_t* p = idx.data_ptr<int32_t>();
  const int64_t n = idx.numel();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < limit, "sparseopt: ", name, "[", i, "] = ", p[i],
                " is out of range [0, ", limit, "): ", what);
}

// ------------------------------------------------------------------------------------------
// CPU

// The tensor the CPU core computes in: contiguous, float32 for the half types.
at::Tensor compute_view(const at::Tensor& t) {
  const auto st = t.scalar_type();
  if (st == at::kHalf || st == at::kBFloat16)
    return t.to(at::kFloat, /*non_blocking=*/false, /*copy=*/false, at::MemoryFormat::Contiguous);
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "sparseopt: unsupported dtype ", st);
  return t.contiguous();
}

// The result in the input's dtype (one rounding for the half types).
// Runs f(T{}) with T = double for float64 compute views, float otherwise (see compute_view).
template <typename F>
void with_compute_type(const at::Tensor& t, F&& f) {
  if (t.scalar_type() == at::kDouble) {
    f(double{});
  } else {
    f(float{});
  }
}

at::Tensor to_input_dtype(const at::Tensor& out, at::ScalarType dtype) {
  return out.scalar_type() == dtype ? out : out.to(dtype);
}

at::Tensor dds_cpu(const at::Tensor& x_, const at::Tensor& values_,
                   const at::Tensor& row_offsets_, const at::Tensor& col_indices_) {
  TORCH_CHECK(values_.device().is_cpu(), "sparseopt: dds_cpu needs CPU tensors");
  const int64_t C = check_dds_args(x_, values_, row_offsets_, col_indices_);
  const int64_t b = values_.size(1), nnz = values_.size(0);
  const at::Tensor row_offsets = row_offsets_.contiguous(), col_indices = col_indices_.contiguous();
  check_offsets_cpu(row_offsets, nnz, "row_offsets");
  check_range_cpu(col_indices, C, "col_indices", "the block-columns of x");
  const int64_t R = row_offsets.numel() - 1, m = x_.size(0);

  const at::Tensor x = compute_view(x_), values = compute_view(values_);
  at::Tensor y = at::empty({m, R * b}, x.options());
  const BlockSparseShape s{m, R, C, nnz, b};
  with_compute_type(x, [&](auto zero) {
    using T = decltype(zero);
    cpu::dds_cpu<T>(gemm_for<T>(), s, x.data_ptr<T>(), values.data_ptr<T>(),
                    row_offsets.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(),
                    y.data_ptr<T>());
  });
  return to_input_dtype(y, x_.scalar_type());
}

at::Tensor dsd_cpu(const at::Tensor& dy_, const at::Tensor& values_,
                   const at::Tensor& col_offsets_, const at::Tensor& t_row_indices_,
                   const at::Tensor& t_block_ids_) {
  TORCH_CHECK(values_.device().is_cpu(), "sparseopt: dsd_cpu needs CPU tensors");
  const int64_t R = check_dsd_args(dy_, values_, col_offsets_, t_row_indices_, t_block_ids_);
  const int64_t b = values_.size(1), nnz = values_.size(0);
  const at::Tensor col_offsets = col_offsets_.contiguous(),
                   t_row_indices = t_row_indices_.contiguous(),
                   t_block_ids = t_block_ids_.contiguous();
  check_offsets_cpu(col_offsets, nnz, "col_offsets");
  check_range_cpu(t_row_indices, R, "t_row_indices", "the block-columns of dy");
  check_range_cpu(t_block_ids, nnz, "t_block_ids", "the blocks of values");
  const int64_t C = col_offsets.numel() - 1, m = dy_.size(0);

  const at::Tensor dy = compute_view(dy_), values = compute_view(values_);
  at::Tensor dx = at::empty({m, C * b}, dy.options());
  const BlockSparseShape s{m, R, C, nnz, b};
  with_compute_type(dy, [&](auto zero) {
    using T = decltype(zero);
    cpu::dsd_cpu<T>(gemm_for<T>(), s, dy.data_ptr<T>(), values.data_ptr<T>(),
                    col_offsets.data_ptr<int32_t>(), t_row_indices.data_ptr<int32_t>(),
                    t_block_ids.data_ptr<int32_t>(), dx.data_ptr<T>());
  });
  return to_input_dtype(dx, dy_.scalar_type());
}

void check_sdd_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_indices,
                    const at::Tensor& col_indices, int64_t b) {
  TORCH_CHECK(b > 0, "sparseopt: block_size must be positive, got ", b);
  TORCH_CHECK(dy.dim() == 2 && x.dim() == 2, "sparseopt: dy and x must be 2-D");
  TORCH_CHECK(x.scalar_type() == dy.scalar_type() && x.device() == dy.device(),
              "sparseopt: dy and x must share one dtype and device");
  TORCH_CHECK(dy.size(0) == x.size(0), "sparseopt: dy has ", dy.size(0), " rows but x has ",
              x.size(0));
  check_index(row_indices, "row_indices", dy.device());
  check_index(col_indices, "col_indices", dy.device(), row_indices.numel());
}

at::Tensor sdd_cpu(const at::Tensor& dy_, const at::Tensor& x_, const at::Tensor& row_indices_,
                   const at::Tensor& col_indices_, int64_t b) {
  TORCH_CHECK(dy_.device().is_cpu(), "sparseopt: sdd_cpu needs CPU tensors");
  check_sdd_args(dy_, x_, row_indices_, col_indices_, b);
  const int64_t R = blocks_in(dy_, b, "dy"), C = blocks_in(x_, b, "x");
  const at::Tensor row_indices = row_indices_.contiguous(), col_indices = col_indices_.contiguous();
  check_range_cpu(row_indices, R, "row_indices", "the block-columns of dy");
  check_range_cpu(col_indices, C, "col_indices", "the block-columns of x");
  const int64_t nnz = row_indices.numel(), m = dy_.size(0);

  const at::Tensor dy = compute_view(dy_), x = compute_view(x_);
  at::Tensor dw = at::empty({nnz, b, b}, dy.options());
  const BlockSparseShape s{m, R, C, nnz, b};
  with_compute_type(dy, [&](auto zero) {
    using T = decltype(zero);
    cpu::sdd_cpu<T>(gemm_for<T>(), s, dy.data_ptr<T>(), x.data_ptr<T>(),
                    row_indices.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(),
                    dw.data_ptr<T>());
  });
  return to_input_dtype(dw, dy_.scalar_type());
}

#ifdef SPARSEOPT_WITH_CUDA
// ------------------------------------------------------------------------------------------
// CUDA: asynchronous on the current stream. The index tensors stay on the device, so only their
// shapes are checked here (reading their values would synchronize with the host); the layout
// builder makes them consistent.

// The kernels load 16-byte vectors (cp.async): a contiguous view at an odd storage offset is
// copied to fresh (aligned) memory first.
at::Tensor contiguous_aligned(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

void check_cuda_args(const at::Tensor& values, const char* op) {
  TORCH_CHECK(values.is_cuda(), "sparseopt: ", op, " needs CUDA tensors");
  TORCH_CHECK(values.scalar_type() != at::kDouble, "sparseopt: ", op,
              " does not support float64 (use the cpp or reference backend)");
}

at::Tensor dds_cuda(const at::Tensor& x_, const at::Tensor& values_,
                    const at::Tensor& row_offsets_, const at::Tensor& col_indices_,
                    bool allow_tf32) {
  check_cuda_args(values_, "dds_cuda");
  const c10::cuda::CUDAGuard guard(values_.device());
  const int64_t C = check_dds_args(x_, values_, row_offsets_, col_indices_);
  const int64_t b = values_.size(1), nnz = values_.size(0);
  const at::Tensor x = contiguous_aligned(x_), values = contiguous_aligned(values_),
                   row_offsets = row_offsets_.contiguous(),
                   col_indices = col_indices_.contiguous();
  const int64_t R = row_offsets.numel() - 1, m = x.size(0);
  at::Tensor y = at::empty({m, R * b}, x.options());
  const BlockSparseShape s{m, R, C, nnz, b};
  check_cuda(cuda::dds_cuda(to_scalar_type(x), s, x.data_ptr(), values.data_ptr(),
                            row_offsets.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(),
                            y.data_ptr(), allow_tf32, current_stream(x)));
  return y;
}

at::Tensor dsd_cuda(const at::Tensor& dy_, const at::Tensor& values_,
                    const at::Tensor& col_offsets_, const at::Tensor& t_row_indices_,
                    const at::Tensor& t_block_ids_, bool allow_tf32) {
  check_cuda_args(values_, "dsd_cuda");
  const c10::cuda::CUDAGuard guard(values_.device());
  const int64_t R = check_dsd_args(dy_, values_, col_offsets_, t_row_indices_, t_block_ids_);
  const int64_t b = values_.size(1), nnz = values_.size(0);
  const at::Tensor dy = contiguous_aligned(dy_), values = contiguous_aligned(values_),
                   col_offsets = col_offsets_.contiguous(),
                   t_row_indices = t_row_indices_.contiguous(),
                   t_block_ids = t_block_ids_.contiguous();
  const int64_t C = col_offsets.numel() - 1, m = dy.size(0);
  at::Tensor dx = at::empty({m, C * b}, dy.options());
  const BlockSparseShape s{m, R, C, nnz, b};
  check_cuda(cuda::dsd_cuda(to_scalar_type(dy), s, dy.data_ptr(), values.data_ptr(),
                            col_offsets.data_ptr<int32_t>(), t_row_indices.data_ptr<int32_t>(),
                            t_block_ids.data_ptr<int32_t>(), dx.data_ptr(), allow_tf32,
                            current_stream(dy)));
  return dx;
}

at::Tensor sdd_cuda(const at::Tensor& dy_, const at::Tensor& x_, const at::Tensor& row_indices_,
                    const at::Tensor& col_indices_, int64_t b, bool allow_tf32) {
  check_cuda_args(dy_, "sdd_cuda");
  const c10::cuda::CUDAGuard guard(dy_.device());
  check_sdd_args(dy_, x_, row_indices_, col_indices_, b);
  const int64_t R = blocks_in(dy_, b, "dy"), C = blocks_in(x_, b, "x");
  const at::Tensor dy = contiguous_aligned(dy_), x = contiguous_aligned(x_),
                   row_indices = row_indices_.contiguous(),
                   col_indices = col_indices_.contiguous();
  const int64_t nnz = row_indices.numel(), m = dy.size(0);
  at::Tensor dw = at::empty({nnz, b, b}, dy.options());
  const BlockSparseShape s{m, R, C, nnz, b};
  check_cuda(cuda::sdd_cuda(to_scalar_type(dy), s, dy.data_ptr(), x.data_ptr(),
                            row_indices.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(),
                            dw.data_ptr(), allow_tf32, current_stream(dy)));
  return dw;
}
#endif  // SPARSEOPT_WITH_CUDA

}  // namespace

void register_block_sparse(py::module_& m) {
  namespace b = sparseopt::binding;
  using py::arg;
  m.def("dds_cpu", &b::dds_cpu, arg("x"), arg("values"), arg("row_offsets"),
        arg("col_indices"));
  m.def("dsd_cpu", &b::dsd_cpu, arg("dy"), arg("values"), arg("col_offsets"),
        arg("t_row_indices"), arg("t_block_ids"));
  m.def("sdd_cpu", &b::sdd_cpu, arg("dy"), arg("x"), arg("row_indices"), arg("col_indices"),
        arg("block_size"));
  m.def("block_sparse_gemm", &b::block_sparse_gemm, arg("force") = py::none(),
        "The GEMM of the block-sparse CPU kernels ('blas' or 'aten'); force='blas'/'aten'/"
        "'auto' changes it (tests, benchmarks)");
#ifdef SPARSEOPT_WITH_CUDA
  m.def("dds_cuda", &b::dds_cuda, arg("x"), arg("values"), arg("row_offsets"),
        arg("col_indices"), arg("allow_tf32"));
  m.def("dsd_cuda", &b::dsd_cuda, arg("dy"), arg("values"), arg("col_offsets"),
        arg("t_row_indices"), arg("t_block_ids"), arg("allow_tf32"));
  m.def("sdd_cuda", &b::sdd_cuda, arg("dy"), arg("x"), arg("row_indices"), arg("col_indices"),
        arg("block_size"), arg("allow_tf32"));
#endif
}

}  // namespace binding
}  // namespace sparseopt
