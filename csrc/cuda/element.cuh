// Element access shared by the CUDA kernels: float32 arithmetic on float32 / bf16 / fp16 storage.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace sparseopt {
namespace cuda {

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }

// Round to nearest even, like Tensor.to(dtype).
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// N consecutive bool mask bytes at off as bits (bit k: mask[off + k] != 0), N in {1, 4, 8}: one
// 4- or 8-byte load for a vector (the caller checks the alignment).
template <int N>
__device__ __forceinline__ uint32_t bool_mask_bits(const uint8_t* mask, int off) {
  static_assert(N == 1 || N == 4 || N == 8, "vector widths are 1, 4 or 8 elements");
  if constexpr (N == 1) {
    return mask[off] != 0 ? 1u : 0u;
  } else {
    uint32_t words[N / 4];
    if constexpr (N == 4) {
      words[0] = *reinterpret_cast<const uint32_t*>(mask + off);
    } else {
      const uint2 w = *reinterpret_cast<const uint2*>(mask + off);
      words[0] = w.x;
      words[1] = w.y;
    }
    uint32_t bits = 0;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      bits |= (((words[k / 4] >> (8 * (k % 4))) & 0xffu) != 0 ? 1u : 0u) << k;
    }
    return bits;
  }
}

}  // namespace cuda
}  // namespace sparseopt
