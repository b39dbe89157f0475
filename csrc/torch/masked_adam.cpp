// Binding of the masked Adam family (NanoAdam): chunked bottom-k selection and the compact
// masked Adam step; see csrc/include/sparseopt/masked_adam.h. The Python backends validate every
// argument first; the TORCH_CHECKs here are a second line of defence.
#include <vector>

#include "common.h"
#include "sparseopt/masked_adam.h"

#ifdef SPARSEOPT_WITH_CUDA
#include "sparseopt/masked_adam_cuda.h"
#endif

namespace sparseopt {
namespace binding {
namespace {

SelectConfig select_config(double density, int64_t chunk_size, bool chunk_offsets) {
  SelectConfig cfg;
  cfg.density = density;
  cfg.chunk_size = chunk_size;
  cfg.chunk_offsets = chunk_offsets;
  return cfg;
}

// Output index tensors of the sizes the host already knows (no device synchronization).
TensorList selection_outputs(const TensorList& values, const SelectConfig& cfg,
                             std::vector<void*>* out_ptrs) {
  TensorList out;
  for (const auto& v : values) {
    const int64_t n_sel = num_selected(v.numel(), cfg.density, cfg.chunk_size);
    out.push_back(at::empty({n_sel}, v.options().dtype(cfg.chunk_offsets ? at::kShort
                                                                         : at::kInt)));
    out_ptrs->push_back(out.back().data_ptr());
  }
  return out;
}

CompactAdamConfig compact_config(double density, int64_t chunk_size, bool chunk_offsets,
                                 double lr, double beta1, double beta2, double eps,
                                 double weight_decay, bool maximize) {
  CompactAdamConfig cfg;
  cfg.density = density;
  cfg.chunk_size = chunk_size;
  cfg.chunk_offsets = chunk_offsets;
  cfg.lr = lr;
  cfg.beta1 = beta1;
  cfg.beta2 = beta2;
  cfg.eps = eps;
  cfg.weight_decay = weight_decay;
  cfg.maximize = maximize;
  return cfg;
}

TensorList chunk_select_cpu(TensorList values, double density, int64_t chunk_size,
                            bool chunk_offsets) {
  const SelectConfig cfg = select_config(density, chunk_size, chunk_offsets);
  std::vector<void*> out_ptrs;
  TensorList out = selection_outputs(values, cfg, &out_ptrs);
  if (values.empty()) return out;
  auto v = pointers(values, "values", values.size());
  auto numels = numels_of(values);
  cpu::chunk_select_cpu(cfg, to_scalar_type(values[0]), static_cast<int64_t>(values.size()),
                        const_ptrs(v), numels.data(), out_ptrs.data());
  return out;
}

void compact_adam_cpu(TensorList params, TensorList grads, TensorList indices,
                      TensorList exp_avgs, TensorList exp_avg_sqs, TensorList state_steps,
                      double density, int64_t chunk_size, double lr, double beta1, double beta2,
                      double eps, double weight_decay, bool maximize, double inv_grad_scale) {
  if (params.empty()) return;
  const size_t n = params.size();
  const CompactAdamConfig cfg =
      compact_config(density, chunk_size, indices[0].scalar_type() == at::kShort, lr, beta1,
                     beta2, eps, weight_decay, maximize);
  auto p = pointers(params, "params", n);
  auto g = pointers(grads, "grads", n);
  auto idx = pointers(indices, "indices", n);
  auto m = pointers(exp_avgs, "exp_avgs", n);
  auto v = pointers(exp_avg_sqs, "exp_avg_sqs", n);
  const std::vector<double> steps = advance_host_steps(state_steps, n);
  auto numels = numels_of(params);
  cpu::compact_adam_cpu(cfg, inv_grad_scale, to_scalar_type(params[0]),
                        to_scalar_type(exp_avgs[0]), static_cast<int64_t>(n), p.data(),
                        const_ptrs(g), const_ptrs(idx), m.data(), v.data(), steps.data(),
                        numels.data());
}

#ifdef SPARSEOPT_WITH_CUDA
TensorList chunk_select_cuda(TensorList values, double density, int64_t chunk_size,
                             bool chunk_offsets) {
  const SelectConfig cfg = select_config(density, chunk_size, chunk_offsets);
  std::vector<void*> out_ptrs;
  TensorList out = selection_outputs(values, cfg, &out_ptrs);
  if (values.empty()) return out;
  const c10::cuda::CUDAGuard guard(values[0].device());
  auto v = pointers(values, "values", values.size());
  auto numels = numels_of(values);
  check_cuda(cuda::chunk_select_cuda(cfg, to_scalar_type(values[0]),
                                     static_cast<int64_t>(values.size()), const_ptrs(v),
                                     numels.data(), out_ptrs.data(), current_stream(values[0])));
  return out;
}

void compact_adam_cuda(TensorList params, TensorList grads, TensorList indices,
                       TensorList exp_avgs, TensorList exp_avg_sqs, TensorList state_steps,
                       double density, int64_t chunk_size, double lr,
                       c10::optional<at::Tensor> lr_tensor, double beta1, double beta2,
                       double eps, double weight_decay, bool maximize,
                       c10::optional<at::Tensor> grad_scale,
                       c10::optional<at::Tensor> found_inf) {
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const size_t n = params.size();
  const CompactAdamConfig cfg =
      compact_config(density, chunk_size, indices[0].scalar_type() == at::kShort, lr, beta1,
                     beta2, eps, weight_decay, maximize);
  auto p = pointers(params, "params", n);
  auto g = pointers(grads, "grads", n);
  auto idx = pointers(indices, "indices", n);
  auto m = pointers(exp_avgs, "exp_avgs", n);
  auto v = pointers(exp_avg_sqs, "exp_avg_sqs", n);
  std::vector<const float*> step_ptrs;
  std::vector<double> host_steps;
  for (const auto& s : state_steps) {
    if (s.is_cuda()) {
      TORCH_CHECK(s.scalar_type() == at::kFloat, "sparseopt: device steps must be float32");
      step_ptrs.push_back(s.data_ptr<float>());
    } else {
      host_steps.push_back(s.item<double>());
    }
  }
  TORCH_CHECK(step_ptrs.empty() || host_steps.empty(),
              "sparseopt: state_steps must not mix devices");
  cuda::StepCounts steps;
  steps.step_ptrs = step_ptrs.empty() ? nullptr : step_ptrs.data();
  steps.host_steps = host_steps.empty() ? nullptr : host_steps.data();
  cuda::DeviceScalars scalars;
  scalars.lr = device_scalar_ptr(lr_tensor, "lr_tensor");
  scalars.grad_scale = device_scalar_ptr(grad_scale, "grad_scale");
  scalars.found_inf = device_scalar_ptr(found_inf, "found_inf");
  auto numels = numels_of(params);
  check_cuda(cuda::compact_adam_cuda(cfg, scalars, steps, to_scalar_type(params[0]),
                                     to_scalar_type(exp_avgs[0]), static_cast<int64_t>(n),
                                     p.data(), const_ptrs(g), const_ptrs(idx), m.data(),
                                     v.data(), numels.data(), current_stream(params[0])));
}
#endif  // SPARSEOPT_WITH_CUDA

}  // namespace

void register_masked_adam(py::module_& m) {
  namespace b = sparseopt::binding;
  using py::arg;
  m.def("chunk_select_cpu", &b::chunk_select_cpu, arg("values"), arg("density"),
        arg("chunk_size"), arg("chunk_offsets"));
  m.def("compact_adam_cpu", &b::compact_adam_cpu, arg("params"), arg("grads"), arg("indices"),
        arg("exp_avgs"), arg("exp_avg_sqs"), arg("state_steps"), arg("density"),
        arg("chunk_size"), arg("lr"), arg("beta1"), arg("beta2"), arg("eps"),
        arg("weight_decay"), arg("maximize"), arg("inv_grad_scale"));
#ifdef SPARSEOPT_WITH_CUDA
  m.def("chunk_select_cuda", &b::chunk_select_cuda, arg("values"), arg("density"),
        arg("chunk_size"), arg("chunk_offsets"));
  m.def("compact_adam_cuda", &b::compact_adam_cuda, arg("params"), arg("grads"),
        arg("indices"), arg("exp_avgs"), arg("exp_avg_sqs"), arg("state_steps"),
        arg("density"), arg("chunk_size"), arg("lr"), arg("lr_tensor"), arg("beta1"),
        arg("beta2"), arg("eps"), arg("weight_decay"), arg("maximize"), arg("grad_scale"),
        arg("found_inf"));
#endif
}

}  // namespace binding
}  // namespace sparseopt
