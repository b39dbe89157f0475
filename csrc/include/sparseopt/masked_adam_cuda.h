// Torch-free CUDA launchers of the masked Adam family. Math: see masked_adam.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sparseopt/masked_adam.h"
#include "sparseopt/mirror_step_cuda.h"

namespace sparseopt {
namespace cuda {

// Selection on the device without a full sort (per-chunk radix select); one launch for all
// tensors. out[i] holds num_selected(numels[i], ...) entries (device pointers).
cudaError_t chunk_select_cuda(const SelectConfig& cfg, ScalarType value_type, int64_t n_tensors,
                              const void* const* values, const int64_t* numels, void* const* out,
                              cudaStream_t stream);

// Multi-tensor compact step; lr/grad_scale/found_inf/steps may live on the device.
cudaError_t compact_adam_cuda(const CompactAdamConfig& cfg, DeviceScalars scalars,
                              StepCounts steps, ScalarType param_type, ScalarType state_type,
                              int64_t n_tensors, void* const* params, const void* const* grads,
                              const void* const* indices, void* const* exp_avgs,
                              void* const* exp_avg_sqs, const int64_t* numels,
                              cudaStream_t stream);

}  // namespace cuda
}  // namespace sparseopt
