// Torch-free CUDA launchers of the fused base step + hyperbolic mirror step.
// Math: see mirror_step.h. Only the CUDA runtime is needed to compile the kernels.
//
// Pointer arrays are host arrays of device pointers; the launcher packs them into kernel
// arguments (a multi-tensor launcher: a handful of launches for any number of tensors, each
// block working on one chunk of one tensor). 16-byte vector accesses where all pointers of a
// tensor are 16-byte aligned, scalar code otherwise; 64-bit element indexing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sparseopt/mirror_step.h"

namespace sparseopt {
namespace cuda {

// Scalars that may live on the device so a step can be captured in a CUDA graph and run
// under AMP without a host synchronization. Each pointer is nullable (float32 device scalar).
struct DeviceScalars {
  const float* lr = nullptr;          // overrides cfg.lr when set
  const float* grad_scale = nullptr;  // g = grad / *grad_scale
  const float* found_inf = nullptr;   // when *found_inf != 0 the kernel writes nothing
};

// Step counts for the bias correction, per tensor: device float32 scalars (already incremented
// by the caller, as torch.optim does), or host values when step_ptrs is null.
struct StepCounts {
  const float* const* step_ptrs = nullptr;  // host array of n_tensors device pointers
  const double* host_steps = nullptr;       // host array of n_tensors values
};

// Each returns cudaSuccess or the launch error. param_type is Float32, BFloat16 or Float16;
// state_type is Float32 or the param type.
cudaError_t ham_sgd_cuda(const SgdConfig& cfg, DeviceScalars scalars, ScalarType param_type,
                         ScalarType state_type, int64_t n_tensors, void* const* params,
                         const void* const* grads, void* const* momentum_buffers,
                         const int64_t* numels, cudaStream_t stream, Masks masks = {},
                         RowScales row_scales = {});

cudaError_t ham_adam_cuda(const AdamConfig& cfg, DeviceScalars scalars, StepCounts steps,
                          ScalarType param_type, ScalarType state_type, int64_t n_tensors,
                          void* const* params, const void* const* grads, void* const* exp_avgs,
                          void* const* exp_avg_sqs, void* const* max_exp_avg_sqs,
                          const int64_t* numels, cudaStream_t stream, Masks masks = {},
                          RowScales row_scales = {});

cudaError_t mirror_step_cuda(const MirrorStepConfig& cfg, DeviceScalars scalars,
                             ScalarType param_type, int64_t n_tensors, void* const* params,
                             const void* const* grads, const int64_t* numels,
                             cudaStream_t stream, Masks masks = {});

}  // namespace cuda
}  // namespace sparseopt
