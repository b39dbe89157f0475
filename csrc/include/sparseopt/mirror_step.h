// Torch-free interface of the fused base step + hyperbolic mirror step (HAM, HORST).
//
// The update rule is specified in sparseopt_kernels/reference/mirror.py (and
// ALGORITHMS.md §1-2); every kernel behind this header must match it. Per element:
//
//   g   = grad * inv_grad_scale, negated when maximize           (raw gradient)
//   θ'  = BaseStep(θ, g, state)                                  (SGD or Adam/AdamW)
//   exp:        θ_new = θ' · exp(clamp(−η(α·sign(θ')·d + β), −c, c))
//   hypentropy: θ_new = γ·sinh(asinh(θ'/γ) − clamp(η·α·d, −c, c)) · exp(−η·β)
//
// with d = g (HAM) or d = the Adam direction u (HORST). The mirror step is skipped when
// α = β = 0 so the base optimizer is reproduced exactly.
//
// All entry points are multi-tensor: arrays of n_tensors raw pointers (host arrays holding
// host pointers for the CPU kernels, device pointers for the CUDA kernels) plus numels.
// Params and grads share a dtype; optimizer state is float32 or the param dtype. Arithmetic is
// float32, float64 for float64 params (CPU only).
#pragma once

#include <cstdint>

namespace sparseopt {

enum class ScalarType : int32_t { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

enum class MirrorForm : int32_t { Exp = 0, Hypentropy = 1 };
enum class MirrorDirection : int32_t { Grad = 0, Update = 1 };  // d = g, or d = Adam's u
enum class MirrorOrder : int32_t { After = 0, Before = 1 };      // mirror after/before AdamW

// Optional dense masks of the fused steps, one per tensor (host array of pointers): where the
// mask is 0 the param and all its state keep their bits. Bool: one byte per element (0 or 1);
// Bits: bit-packed, element e is bit (e % 8) of byte e / 8 (numpy.packbits bitorder="little").
enum class MaskKind : int32_t { None = 0, Bool = 1, Bits = 2 };

struct Masks {
  MaskKind kind = MaskKind::None;
  const void* const* data = nullptr;  // n_tensors pointers (uint8), null when kind == None
};

// Optional per-row gradient scales of the SGD and Adam steps (SparseOpt's BN-skew correction,
// ALGORITHMS.md §3; math in sparseopt_kernels/reference/skew.py), one vector per tensor:
// tensor i is viewed as rows of row_lens[i] contiguous elements (numel / shape[0]) and the
// gradient of element e becomes g̃ = c[e / row_lens[i]] · g, where g is the gradient after the
// AMP unscale and the maximize negation. g̃ replaces g everywhere (weight decay, moments, the
// mirror exponent). data == nullptr: no scaling, and the unscaled code runs unchanged.
struct RowScales {
  const float* const* data = nullptr;  // n_tensors float32 vectors (host or device pointers)
  const int64_t* row_lens = nullptr;   // n_tensors row lengths (host array), each >= 1
  bool enabled() const { return data != nullptr; }
};

struct MirrorConfig {
  double alpha = 0.0;
  double beta = 0.0;
  bool use_clamp = false;  // clamp the exponent (exp) or the asinh-space shift (hypentropy)
  double clamp = 5.0;
  double gamma = 1.0;  // hypentropy scale, > 0
  MirrorForm form = MirrorForm::Exp;
  MirrorDirection direction = MirrorDirection::Grad;
  MirrorOrder order = MirrorOrder::After;
  bool enabled() const { return alpha != 0.0 || beta != 0.0; }
};

struct SgdConfig {
  double lr = 0.0;
  double weight_decay = 0.0;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  bool maximize = false;
  bool is_first_step = false;  // momentum buffer := g_b instead of μ·b + (1 − τ)·g_b
  MirrorConfig mirror;
};

struct AdamConfig {
  double lr = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;
  bool maximize = false;
  bool decoupled_weight_decay = false;  // AdamW
  MirrorConfig mirror;                  // direction/order are honoured here only
};

struct MirrorStepConfig {
  double lr = 0.0;
  bool maximize = false;
  MirrorConfig mirror;  // direction is always Grad, order is meaningless
};

// ---------------------------------------------------------------------------------------------
// CPU kernels (csrc/cpu). The caller has already handled found_inf (a skipped step never calls
// them) and incremented the step counters; `steps[i]` is tensor i's step count after the
// increment. Vectorized for AVX-512 and AVX2 with a portable fallback, chosen at run time.
// Momentum buffers may be null when momentum == 0, max_exp_avg_sqs when !amsgrad.
namespace cpu {

void ham_sgd_cpu(const SgdConfig& cfg, double inv_grad_scale, ScalarType param_type,
                 ScalarType state_type, int64_t n_tensors, void* const* params,
                 const void* const* grads, void* const* momentum_buffers, const int64_t* numels,
                 Masks masks = {}, RowScales row_scales = {});

void ham_adam_cpu(const AdamConfig& cfg, double inv_grad_scale, ScalarType param_type,
                  ScalarType state_type, int64_t n_tensors, void* const* params,
                  const void* const* grads, void* const* exp_avgs, void* const* exp_avg_sqs,
                  void* const* max_exp_avg_sqs, const double* steps, const int64_t* numels,
                  Masks masks = {}, RowScales row_scales = {});

void mirror_step_cpu(const MirrorStepConfig& cfg, double inv_grad_scale, ScalarType param_type,
                     int64_t n_tensors, void* const* params, const void* const* grads,
                     const int64_t* numels, Masks masks = {});

// The instruction set the dispatcher picked on this machine: "avx512", "avx2" or "generic".
const char* cpu_isa();

// Vectorizable float32 exp used by the CPU kernels (exposed for unit tests): a few ulp over the
// whole float range, exp(-inf) = 0, exp(+inf) = inf, NaN propagates.
float fast_expf(float x);

}  // namespace cpu
}  // namespace sparseopt
