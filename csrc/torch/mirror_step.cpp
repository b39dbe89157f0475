// Binding of the fused base step + mirror step (HAM, HORST): see csrc/include/sparseopt/
// mirror_step.h. The Python backends validate every argument first; the TORCH_CHECKs here are a
// second line of defence.
#include <string>

#include "common.h"

#ifdef SPARSEOPT_WITH_CUDA
#include "sparseopt/mirror_step_cuda.h"
#endif

namespace sparseopt {
namespace binding {
namespace {

MirrorConfig mirror_config(double alpha, double beta, c10::optional<double> clamp,
                           const std::string& form, double gamma, const std::string& direction,
                           const std::string& order) {
  MirrorConfig m;
  m.alpha = alpha;
  m.beta = beta;
  m.use_clamp = clamp.has_value();
  m.clamp = clamp.value_or(0.0);
  m.gamma = gamma;
  TORCH_CHECK(form == "exp" || form == "hypentropy", "sparseopt: unknown mirror ", form);
  m.form = form == "exp" ? MirrorForm::Exp : MirrorForm::Hypentropy;
  m.direction = direction == "adam" ? MirrorDirection::Update : MirrorDirection::Grad;
  m.order = order == "before" ? MirrorOrder::Before : MirrorOrder::After;
  return m;
}


// Row scales of the SGD and Adam steps (None, or one float32 vector of shape[0] entries per
// param on the params' device): the data pointers and the row lengths numel / shape[0].
struct RowScalePointers {
  std::vector<const float*> data;
  std::vector<int64_t> row_lens;
  RowScales row_scales;
};

RowScalePointers row_scale_pointers(const c10::optional<TensorList>& row_scales,
                                    const TensorList& params) {
  RowScalePointers out;
  if (!row_scales.has_value()) return out;
  TORCH_CHECK(row_scales->size() == params.size(), "sparseopt: row_scales has ",
              row_scales->size(), " tensors, expected ", params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& c = (*row_scales)[i];
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.dim() >= 1, "sparseopt: params[", i, "] is 0-d and has no rows to scale");
    TORCH_CHECK(c.scalar_type() == at::kFloat && c.dim() == 1 && c.numel() == p.size(0) &&
                    c.is_contiguous() && c.device() == p.device(),
                "sparseopt: row_scales[", i, "] must be a contiguous float32 vector of ",
                p.size(0), " entries on ", p.device());
    out.data.push_back(c.data_ptr<float>());
    // A param without elements has no rows to walk; any length >= 1 will do.
    out.row_lens.push_back(p.numel() > 0 ? p.numel() / p.size(0) : 1);
  }
  out.row_scales.data = out.data.data();
  out.row_scales.row_lens = out.row_lens.data();
  return out;
}

// The configs of the three ops, shared by the CPU and CUDA entry points.
SgdConfig sgd_config(double lr, double weight_decay, double momentum, double dampening,
                     bool nesterov, bool maximize, bool is_first_step, double alpha, double beta,
                     c10::optional<double> clamp, const std::string& mirror, double gamma) {
  SgdConfig cfg;
  cfg.lr = lr;
  cfg.weight_decay = weight_decay;
  cfg.momentum = momentum;
  cfg.dampening = dampening;
  cfg.nesterov = nesterov;
  cfg.maximize = maximize;
  cfg.is_first_step = is_first_step;
  cfg.mirror = mirror_config(alpha, beta, clamp, mirror, gamma, "grad", "after");
  return cfg;
}

AdamConfig adam_config(double lr, double beta1, double beta2, double eps, double weight_decay,
                       bool amsgrad, bool maximize, bool decoupled_weight_decay, double alpha,
                       double beta, c10::optional<double> clamp, const std::string& mirror,
                       double gamma, const std::string& direction, const std::string& order) {
  AdamConfig cfg;
  cfg.lr = lr;
  cfg.beta1 = beta1;
  cfg.beta2 = beta2;
  cfg.eps = eps;
  cfg.weight_decay = weight_decay;
  cfg.amsgrad = amsgrad;
  cfg.maximize = maximize;
  cfg.decoupled_weight_decay = decoupled_weight_decay;
  cfg.mirror = mirror_config(alpha, beta, clamp, mirror, gamma, direction, order);
  return cfg;
}

MirrorStepConfig mirror_step_config(double lr, bool maximize, double alpha, double beta,
                                    c10::optional<double> clamp, const std::string& mirror,
                                    double gamma) {
  MirrorStepConfig cfg;
  cfg.lr = lr;
  cfg.maximize = maximize;
  cfg.mirror = mirror_config(alpha, beta, clamp, mirror, gamma, "grad", "after");
  return cfg;
}


// ------------------------------------------------------------------------------------------
// CPU: every scalar lives on the host already; found_inf has been handled by the caller.

void ham_sgd_cpu(TensorList params, TensorList grads, TensorList momentum_buffers, double lr,
                 double weight_decay, double momentum, double dampening, bool nesterov,
                 bool maximize, bool is_first_step, double alpha, double beta,
                 c10::optional<double> clamp, std::string mirror, double gamma,
                 double inv_grad_scale, c10::optional<TensorList> masks,
                 c10::optional<TensorList> row_scales) {
  if (params.empty()) return;
  const size_t n = params.size();
  const MaskPointers mp = mask_pointers(masks, n);
  const RowScalePointers rs = row_scale_pointers(row_scales, params);
  const SgdConfig cfg = sgd_config(lr, weight_decay, momentum, dampening, nesterov, maximize,
                                   is_first_step, alpha, beta, clamp, mirror, gamma);
  auto p = pointers(params, "params", n);
  auto g = pointers(grads, "grads", n);
  auto b = momentum != 0.0 ? pointers(momentum_buffers, "momentum_buffers", n)
                           : std::vector<void*>{};
  auto numels = numels_of(params);
  TORCH_CHECK(momentum == 0.0 || !b.empty(), "sparseopt: momentum_buffers are required");
  cpu::ham_sgd_cpu(cfg, inv_grad_scale, to_scalar_type(params[0]),
                   state_type_of(params, momentum != 0.0 ? momentum_buffers : TensorList{}),
                   static_cast<int64_t>(n), p.data(), const_ptrs(g), or_null(b), numels.data(),
                   mp.masks, rs.row_scales);
}

void ham_adam_cpu(TensorList params, TensorList grads, TensorList exp_avgs,
                  TensorList exp_avg_sqs, TensorList max_exp_avg_sqs, TensorList state_steps,
                  double lr, double beta1, double beta2, double weight_decay, double eps,
                  bool amsgrad, bool maximize, bool decoupled_weight_decay, double alpha,
                  double beta, c10::optional<double> clamp, std::string mirror, double gamma,
                  std::string direction, std::string order, double inv_grad_scale,
                  c10::optional<TensorList> masks, c10::optional<TensorList> row_scales) {
  if (params.empty()) return;
  const size_t n = params.size();
  const MaskPointers mp = mask_pointers(masks, n);
  const RowScalePointers rs = row_scale_pointers(row_scales, params);
  const AdamConfig cfg =
      adam_config(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                  decoupled_weight_decay, alpha, beta, clamp, mirror, gamma, direction, order);
  auto p = pointers(params, "params", n);
  auto g = pointers(grads, "grads", n);
  auto m = pointers(exp_avgs, "exp_avgs", n);
  auto v = pointers(exp_avg_sqs, "exp_avg_sqs", n);
  auto vmax = amsgrad ? pointers(max_exp_avg_sqs, "max_exp_avg_sqs", n) : std::vector<void*>{};
  TORCH_CHECK(!amsgrad || !vmax.empty(), "sparseopt: max_exp_avg_sqs are required");
  const std::vector<double> steps = advance_host_steps(state_steps, n);
  auto numels = numels_of(params);
  cpu::ham_adam_cpu(cfg, inv_grad_scale, to_scalar_type(params[0]),
                    state_type_of(params, exp_avgs), static_cast<int64_t>(n), p.data(),
                    const_ptrs(g), m.data(), v.data(), or_null(vmax), steps.data(), numels.data(),
                    mp.masks, rs.row_scales);
}

void mirror_step_cpu(TensorList params, TensorList grads, double lr, double alpha, double beta,
                     c10::optional<double> clamp, std::string mirror, double gamma,
                     bool maximize, double inv_grad_scale, c10::optional<TensorList> masks) {
  if (params.empty()) return;
  const size_t n = params.size();
  const MaskPointers mp = mask_pointers(masks, n);
  const MirrorStepConfig cfg = mirror_step_config(lr, maximize, alpha, beta, clamp, mirror, gamma);
  auto p = pointers(params, "params", n);
  auto g = pointers(grads, "grads", n);
  auto numels = numels_of(params);
  cpu::mirror_step_cpu(cfg, inv_grad_scale, to_scalar_type(params[0]),
                       static_cast<int64_t>(n), p.data(), const_ptrs(g), numels.data(), mp.masks);
}

#ifdef SPARSEOPT_WITH_CUDA
// ------------------------------------------------------------------------------------------
// CUDA: lr_tensor, grad_scale and found_inf are float32 device scalars (or absent); the step
// counters were already advanced on the device by the caller (unless found_inf).

cuda::DeviceScalars device_scalars(const c10::optional<at::Tensor>& lr_tensor,
                                   const c10::optional<at::Tensor>& grad_scale,
                                   const c10::optional<at::Tensor>& found_inf) {
  cuda::DeviceScalars s;
  s.lr = device_scalar_ptr(lr_tensor, "lr_tensor");
  s.grad_scale = device_scalar_ptr(grad_scale, "grad_scale");
  s.found_inf = device_scalar_ptr(found_inf, "found_inf");
  return s;
}

void ham_sgd_cuda(TensorList params, TensorList grads, TensorList momentum_buffers, double lr,
                  c10::optional<at::Tensor> lr_tensor, double weight_decay, double momentum,
                  double dampening, bool nesterov, bool maximize, bool is_first_step,
                  double alpha, double beta, c10::optional<double> clamp, std::string mirror,
                  double gamma, c10::optional<at::Tensor> grad_scale,
                  c10::optional<at::Tensor> found_inf, c10::optional<TensorList> masks,
                  c10::optional<TensorList> row_scales) {
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const size_t n = params.size();
  const MaskPointers mp = mask_pointers(masks, n);
  const RowScalePointers rs = row_scale_pointers(row_scales, params);
  const SgdConfig cfg = sgd_config(lr, weight_decay, momentum, dampening, nesterov, maximize,
                                   is_first_step, alpha, beta, clamp, mirror, gamma);
  auto p = pointers(params, "params", n);
  auto g = pointers(grads, "grads", n);
  auto b = momentum != 0.0 ? pointers(momentum_buffers, "momentum_buffers", n)
                           : std::vector<void*>{};
  auto numels = numels_of(params);
  check_cuda(cuda::ham_sgd_cuda(
      cfg, device_scalars(lr_tensor, grad_scale, found_inf), to_scalar_type(params[0]),
      state_type_of(params, momentum != 0.0 ? momentum_buffers : TensorList{}),
      static_cast<int64_t>(n), p.data(), const_ptrs(g), or_null(b), numels.data(),
      current_stream(params[0]), mp.masks, rs.row_scales));
}

void ham_adam_cuda(TensorList params, TensorList grads, TensorList exp_avgs,
                   TensorList exp_avg_sqs, TensorList max_exp_avg_sqs, TensorList state_steps,
                   double lr, c10::optional<at::Tensor> lr_tensor, double beta1, double beta2,
                   double weight_decay, double eps, bool amsgrad, bool maximize,
                   bool decoupled_weight_decay, double alpha, double beta,
                   c10::optional<double> clamp, std::string mirror, double gamma,
                   std::string direction, std::string order,
                   c10::optional<at::Tensor> grad_scale, c10::optional<at::Tensor> found_inf,
                   c10::optional<TensorList> masks, c10::optional<TensorList> row_scales) {
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const size_t n = params.size();
  const MaskPointers mp = mask_pointers(masks, n);
  const RowScalePointers rs = row_scale_pointers(row_scales, params);
  const AdamConfig cfg =
      adam_config(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                  decoupled_weight_decay, alpha, beta, clamp, mirror, gamma, direction, order);
  auto p = pointers(params, "params", n);
  auto g = pointers(grads, "grads", n);
  auto m = pointers(exp_avgs, "exp_avgs", n);
  auto v = pointers(exp_avg_sqs, "exp_avg_sqs", n);
  auto vmax = amsgrad ? pointers(max_exp_avg_sqs, "max_exp_avg_sqs", n) : std::vector<void*>{};
  TORCH_CHECK(state_steps.size() == n, "sparseopt: state_steps must match params");
  // Steps on the device (float32) are read by the kernel; steps on the host are passed by value.
  std::vector<const float*> step_ptrs;
  std::vector<double> host_steps;
  if (state_steps[0].is_cuda()) {
    for (const auto& s : state_steps) {
      TORCH_CHECK(s.is_cuda() && s.scalar_type() == at::kFloat,
                  "sparseopt: device state_steps must all be float32 CUDA scalars");
      step_ptrs.push_back(s.data_ptr<float>());
    }
  } else {
    for (const auto& s : state_steps) {
      TORCH_CHECK(s.device().is_cpu(), "sparseopt: state_steps must not mix devices");
      host_steps.push_back(s.item<double>());
    }
  }
  cuda::StepCounts steps;
  steps.step_ptrs = step_ptrs.empty() ? nullptr : step_ptrs.data();
  steps.host_steps = host_steps.empty() ? nullptr : host_steps.data();
  auto numels = numels_of(params);
  check_cuda(cuda::ham_adam_cuda(
      cfg, device_scalars(lr_tensor, grad_scale, found_inf), steps, to_scalar_type(params[0]),
      state_type_of(params, exp_avgs), static_cast<int64_t>(n), p.data(), const_ptrs(g),
      m.data(), v.data(), or_null(vmax), numels.data(), current_stream(params[0]), mp.masks,
      rs.row_scales));
}

void mirror_step_cuda(TensorList params, TensorList grads, double lr,
                      c10::optional<at::Tensor> lr_tensor, double alpha, double beta,
                      c10::optional<double> clamp, std::string mirror, double gamma,
                      bool maximize, c10::optional<at::Tensor> grad_scale,
                      c10::optional<at::Tensor> found_inf, c10::optional<TensorList> masks) {
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const size_t n = params.size();
  const MaskPointers mp = mask_pointers(masks, n);
  const MirrorStepConfig cfg = mirror_step_config(lr, maximize, alpha, beta, clamp, mirror, gamma);
  auto p = pointers(params, "params", n);
  auto g = pointers(grads, "grads", n);
  auto numels = numels_of(params);
  check_cuda(cuda::mirror_step_cuda(cfg, device_scalars(lr_tensor, grad_scale, found_inf),
                                    to_scalar_type(params[0]), static_cast<int64_t>(n),
                                    p.data(), const_ptrs(g), numels.data(),
                                    current_stream(params[0]), mp.masks));
}
#endif  // SPARSEOPT_WITH_CUDA


}  // namespace

void register_mirror_step(py::module_& m) {
  namespace b = sparseopt::binding;
  using py::arg;
  m.def("ham_sgd_cpu", &b::ham_sgd_cpu, arg("params"), arg("grads"), arg("momentum_buffers"),
        arg("lr"), arg("weight_decay"), arg("momentum"), arg("dampening"), arg("nesterov"),
        arg("maximize"), arg("is_first_step"), arg("alpha"), arg("beta"), arg("clamp"),
        arg("mirror"), arg("gamma"), arg("inv_grad_scale"), arg("masks"), arg("row_scales"));
  m.def("ham_adam_cpu", &b::ham_adam_cpu, arg("params"), arg("grads"), arg("exp_avgs"),
        arg("exp_avg_sqs"), arg("max_exp_avg_sqs"), arg("state_steps"), arg("lr"),
        arg("beta1"), arg("beta2"), arg("weight_decay"), arg("eps"), arg("amsgrad"),
        arg("maximize"), arg("decoupled_weight_decay"), arg("alpha"), arg("beta"),
        arg("clamp"), arg("mirror"), arg("gamma"), arg("direction"), arg("order"),
        arg("inv_grad_scale"), arg("masks"), arg("row_scales"));
  m.def("mirror_step_cpu", &b::mirror_step_cpu, arg("params"), arg("grads"), arg("lr"),
        arg("alpha"), arg("beta"), arg("clamp"), arg("mirror"), arg("gamma"), arg("maximize"),
        arg("inv_grad_scale"), arg("masks"));
#ifdef SPARSEOPT_WITH_CUDA
  m.def("ham_sgd_cuda", &b::ham_sgd_cuda, arg("params"), arg("grads"), arg("momentum_buffers"),
        arg("lr"), arg("lr_tensor"), arg("weight_decay"), arg("momentum"), arg("dampening"),
        arg("nesterov"), arg("maximize"), arg("is_first_step"), arg("alpha"), arg("beta"),
        arg("clamp"), arg("mirror"), arg("gamma"), arg("grad_scale"), arg("found_inf"),
        arg("masks"), arg("row_scales"));
  m.def("ham_adam_cuda", &b::ham_adam_cuda, arg("params"), arg("grads"), arg("exp_avgs"),
        arg("exp_avg_sqs"), arg("max_exp_avg_sqs"), arg("state_steps"), arg("lr"),
        arg("lr_tensor"), arg("beta1"), arg("beta2"), arg("weight_decay"), arg("eps"),
        arg("amsgrad"), arg("maximize"), arg("decoupled_weight_decay"), arg("alpha"),
        arg("beta"), arg("clamp"), arg("mirror"), arg("gamma"), arg("direction"), arg("order"),
        arg("grad_scale"), arg("found_inf"), arg("masks"), arg("row_scales"));
  m.def("mirror_step_cuda", &b::mirror_step_cuda, arg("params"), arg("grads"), arg("lr"),
        arg("lr_tensor"), arg("alpha"), arg("beta"), arg("clamp"), arg("mirror"), arg("gamma"),
        arg("maximize"), arg("grad_scale"), arg("found_inf"), arg("masks"));
#endif
}

}  // namespace binding
}  // namespace sparseopt
