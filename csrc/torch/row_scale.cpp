// Binding of SparseOpt's BN-skew correction: the per-row coefficients of a mask and the
// standalone in-place row scale; see csrc/include/sparseopt/row_scale.h. The Python backends
// validate every argument first; the TORCH_CHECKs here are a second line of defence.
#include <vector>

#include "common.h"
#include "sparseopt/row_scale.h"

#ifdef SPARSEOPT_WITH_CUDA
#include "sparseopt/row_scale_cuda.h"
#endif

namespace sparseopt {
namespace binding {
namespace {

// Raw pointers and (rows, row_len) of the tensors, with the per-tensor checks every entry point
// shares: contiguous, on one device, one float32 vector of shape[0] entries per tensor.
struct RowViews {
  std::vector<int64_t> rows, row_lens;
};

RowViews row_views(const TensorList& tensors, const char* name) {
  RowViews v;
  for (const auto& t : tensors) {
    TORCH_CHECK(t.dim() >= 1, "sparseopt: ", name, " must have at least one dimension (rows)");
    TORCH_CHECK(t.is_contiguous(), "sparseopt: ", name, " must be contiguous");
    const int64_t rows = t.size(0);
    v.rows.push_back(rows);
    v.row_lens.push_back(rows > 0 ? t.numel() / rows : 0);
  }
  return v;
}

std::vector<float*> vector_pointers(const TensorList& vectors, const TensorList& like,
                                    const char* name, const at::Device& device) {
  TORCH_CHECK(vectors.size() == like.size(), "sparseopt: ", name, " has ", vectors.size(),
              " tensors, expected ", like.size());
  std::vector<float*> out;
  out.reserve(vectors.size());
  for (size_t i = 0; i < vectors.size(); ++i) {
    const auto& c = vectors[i];
    TORCH_CHECK(c.scalar_type() == at::kFloat && c.dim() == 1 && c.numel() == like[i].size(0) &&
                    c.is_contiguous() && c.device() == device,
                "sparseopt: ", name, "[", i, "] must be a contiguous float32 vector of ",
                like[i].size(0), " entries on ", device);
    out.push_back(c.data_ptr<float>());
  }
  return out;
}

std::vector<const uint8_t*> bool_mask_pointers(const TensorList& masks, const TensorList& like,
                                               const at::Device& device) {
  TORCH_CHECK(masks.size() == like.size(), "sparseopt: masks has ", masks.size(),
              " tensors, expected ", like.size());
  std::vector<const uint8_t*> out;
  out.reserve(masks.size());
  for (size_t i = 0; i < masks.size(); ++i) {
    const auto& m = masks[i];
    TORCH_CHECK(m.scalar_type() == at::kBool && m.sizes() == like[i].sizes() &&
                    m.is_contiguous() && m.device() == device,
                "sparseopt: masks[", i, "] must be a contiguous bool tensor shaped like ",
                "tensors[", i, "] on ", device);
    out.push_back(static_cast<const uint8_t*>(m.data_ptr()));
  }
  return out;
}

void check_one_device(const TensorList& tensors, const at::Device& device, const char* name) {
  for (const auto& t : tensors)
    TORCH_CHECK(t.device() == device, "sparseopt: every tensor of ", name, " must be on ",
                device);
}

// The pointers of row_scale_'s arguments, shared by the CPU and CUDA entry points.
struct RowScaleArgs {
  RowViews views;
  std::vector<void*> x;
  std::vector<float*> scales;
  std::vector<const uint8_t*> masks;
};

RowScaleArgs row_scale_args(const TensorList& tensors, const TensorList& scales,
                            const c10::optional<TensorList>& masks) {
  const at::Device device = tensors[0].device();
  check_one_device(tensors, device, "tensors");
  RowScaleArgs a;
  a.views = row_views(tensors, "tensors");
  a.x = pointers(tensors, "tensors", tensors.size());
  for (const auto& t : tensors)
    TORCH_CHECK(t.scalar_type() == tensors[0].scalar_type(),
                "sparseopt: tensors must share one dtype");
  a.scales = vector_pointers(scales, tensors, "scales", device);
  if (masks.has_value()) a.masks = bool_mask_pointers(*masks, tensors, device);
  return a;
}

std::vector<const float*> as_const(const std::vector<float*>& v) {
  return std::vector<const float*>(v.begin(), v.end());
}

// ------------------------------------------------------------------------------------------
// CPU

void row_coefficients_cpu(TensorList masks, TensorList coefficients) {
  if (masks.empty()) return;
  const at::Device device = masks[0].device();
  TORCH_CHECK(device.is_cpu(), "sparseopt: row_coefficients_cpu needs CPU tensors");
  check_one_device(masks, device, "masks");
  for (const auto& m : masks)
    TORCH_CHECK(m.scalar_type() == at::kBool, "sparseopt: masks must be bool tensors");
  const RowViews v = row_views(masks, "masks");
  auto out = vector_pointers(coefficients, masks, "coefficients", device);
  std::vector<const uint8_t*> m;
  for (const auto& t : masks) m.push_back(static_cast<const uint8_t*>(t.data_ptr()));
  cpu::row_coefficients_cpu(static_cast<int64_t>(masks.size()), m.data(), v.rows.data(),
                            v.row_lens.data(), out.data());
}

void row_scale_cpu(TensorList tensors, TensorList scales, c10::optional<TensorList> masks) {
  if (tensors.empty()) return;
  TORCH_CHECK(tensors[0].device().is_cpu(), "sparseopt: row_scale_cpu needs CPU tensors");
  const RowScaleArgs a = row_scale_args(tensors, scales, masks);
  const auto c = as_const(a.scales);
  cpu::row_scale_cpu(to_scalar_type(tensors[0]), static_cast<int64_t>(tensors.size()),
                     a.x.data(), c.data(), a.masks.empty() ? nullptr : a.masks.data(),
                     a.views.rows.data(), a.views.row_lens.data());
}

#ifdef SPARSEOPT_WITH_CUDA
// ------------------------------------------------------------------------------------------
// CUDA: asynchronous on the current stream; the int64 scratch of the counts is allocated here
// (through the caching allocator, freed when the stream is done with it).

void row_coefficients_cuda(TensorList masks, TensorList coefficients) {
  if (masks.empty()) return;
  const at::Device device = masks[0].device();
  TORCH_CHECK(device.is_cuda(), "sparseopt: row_coefficients_cuda needs CUDA tensors");
  const c10::cuda::CUDAGuard guard(device);
  check_one_device(masks, device, "masks");
  for (const auto& m : masks)
    TORCH_CHECK(m.scalar_type() == at::kBool, "sparseopt: masks must be bool tensors");
  const RowViews v = row_views(masks, "masks");
  auto out = vector_pointers(coefficients, masks, "coefficients", device);
  std::vector<const uint8_t*> m;
  for (const auto& t : masks) m.push_back(static_cast<const uint8_t*>(t.data_ptr()));
  const int64_t n = static_cast<int64_t>(masks.size());
  const int64_t ws = cuda::row_coefficients_workspace(n, v.rows.data());
  at::Tensor workspace = at::empty({ws > 0 ? ws : 1}, masks[0].options().dtype(at::kLong));
  check_cuda(cuda::row_coefficients_cuda(n, m.data(), v.rows.data(), v.row_lens.data(),
                                         out.data(), workspace.data_ptr<int64_t>(),
                                         current_stream(masks[0])));
}

void row_scale_cuda(TensorList tensors, TensorList scales, c10::optional<TensorList> masks) {
  if (tensors.empty()) return;
  TORCH_CHECK(tensors[0].is_cuda(), "sparseopt: row_scale_cuda needs CUDA tensors");
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  const RowScaleArgs a = row_scale_args(tensors, scales, masks);
  const auto c = as_const(a.scales);
  check_cuda(cuda::row_scale_cuda(to_scalar_type(tensors[0]),
                                  static_cast<int64_t>(tensors.size()), a.x.data(), c.data(),
                                  a.masks.empty() ? nullptr : a.masks.data(),
                                  a.views.rows.data(), a.views.row_lens.data(),
                                  current_stream(tensors[0])));
}
#endif  // SPARSEOPT_WITH_CUDA

}  // namespace

void register_row_scale(py::module_& m) {
  namespace b = sparseopt::binding;
  using py::arg;
  m.def("row_coefficients_cpu", &b::row_coefficients_cpu, arg("masks"), arg("coefficients"));
  m.def("row_scale_cpu", &b::row_scale_cpu, arg("tensors"), arg("scales"), arg("masks"));
#ifdef SPARSEOPT_WITH_CUDA
  m.def("row_coefficients_cuda", &b::row_coefficients_cuda, arg("masks"), arg("coefficients"));
  m.def("row_scale_cuda", &b::row_scale_cuda, arg("tensors"), arg("scales"), arg("masks"));
#endif
}

}  // namespace binding
}  // namespace sparseopt
