// Multi-tensor launcher: any number of tensors in a handful of kernel launches.
//
// A launch carries a TensorBatch in its kernel arguments: for each of up to kCapacity tensors its
// device pointers, its numel, the index of its first block and (Adam) its step. Every tensor is
// cut into chunks of kChunkElems elements and each block of the grid works on one chunk of one
// tensor. Tensors are numbered in block order, so block b belongs to the last tensor t with
// block_begin[t] <= b (a uniform binary search over the kernel-argument constant bank, at most
// 11 steps, once per block) and works on chunk b - block_begin[t] of it. No per-block table is
// stored, so the number of tensors per launch is limited by the argument size only and a tensor
// of any size fits in one launch: 509 tensors per Adam launch (64 B each), 906 per SGD launch,
// 1165 per mirror-step launch; 1000 tensors of 1e4 elements take 2 Adam launches.
//
// Kernel arguments may be up to 32764 bytes since CUDA 12.1 (driver r530+, Volta and newer),
// instead of the classic 4 KiB; every argument struct is static_asserted against that limit.
// The packing and the block -> (tensor, chunk) -> element mapping below are __host__ __device__
// so they can be checked exhaustively on the host without a GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define SPARSEOPT_HD __host__ __device__ __forceinline__
#else
#define SPARSEOPT_HD inline
#endif

namespace sparseopt {
namespace cuda {
namespace mt {

constexpr int kBlockThreads = 512;
// Elements per block. A multiple of every vector width (4 or 8 elements) so that chunk starts
// keep the 16-byte alignment of the tensor; small enough that the last wave of blocks is short.
constexpr int kChunkElems = 65536;
constexpr std::size_t kMaxKernelParamBytes = 32764;
constexpr int64_t kMaxBlocksPerLaunch = 0x7fffffff;  // gridDim.x limit

// Per-launch tensor metadata. kDepth pointer lists (param, grad, state...), numels, first block
// of each tensor, and for Adam the step of each tensor (a device pointer or a host value).
template <int kDepth, int kCap, bool kWithSteps>
struct TensorBatch {
  static constexpr int kCapacity = kCap;
  static constexpr int kDepthLists = kDepth;
  void* ptrs[kDepth][kCap];
  int64_t numels[kCap];
  const float* step_ptrs[kWithSteps ? kCap : 1];
  uint32_t block_begin[kCap];
  float host_steps[kWithSteps ? kCap : 1];
  int32_t n_tensors;
};

// How many tensors fit next to `header_bytes` of other kernel arguments (and kExtraPerTensor
// bytes of per-tensor arrays the caller keeps next to the batch).
template <int kDepth, bool kWithSteps, int kExtraPerTensor = 0>
constexpr int batch_capacity(std::size_t header_bytes) {
  // ptrs + numel + block_begin (+ step pointer + host step); 64 bytes of slack for padding.
  constexpr std::size_t per_tensor =
      kDepth * 8 + 8 + 4 + (kWithSteps ? 8 + 4 : 0) + kExtraPerTensor;
  return static_cast<int>((kMaxKernelParamBytes - header_bytes - 64) / per_tensor);
}

// Chunks (= blocks) of a tensor. chunk_elems is kChunkElems for the element-wise kernels; the
// selection kernel cuts tensors into chunks of the user's chunk size instead.
SPARSEOPT_HD int64_t num_chunks(int64_t numel, int64_t chunk_elems = kChunkElems) {
  return numel / chunk_elems + (numel % chunk_elems != 0 ? 1 : 0);
}

// The chunk a block works on: tensor slot in the batch, chunk number within the tensor, first
// element, number of elements.
struct ChunkRef {
  int tensor;
  uint32_t chunk;
  int64_t begin;
  int len;
};

// chunk_elems must be at most INT32_MAX (len is an int).
template <class Batch>
SPARSEOPT_HD ChunkRef locate_chunk(const Batch& batch, uint32_t block,
                                   int64_t chunk_elems = kChunkElems) {
  // Last slot with block_begin <= block; block_begin[0] == 0 and slots are in block order.
  int lo = 0;
  int hi = batch.n_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (batch.block_begin[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  ChunkRef ref;
  ref.tensor = lo;
  ref.chunk = block - batch.block_begin[lo];
  ref.begin = static_cast<int64_t>(ref.chunk) * chunk_elems;
  const int64_t rest = batch.numels[lo] - ref.begin;
  ref.len = static_cast<int>(rest < chunk_elems ? rest : chunk_elems);
  return ref;
}

// The elements of one chunk seen by thread `tid` of `n_threads`: whole vectors of kVec elements
// (vec_fn(offset)) while the chunk is vectorizable, single elements (scalar_fn(offset)) for the
// tail of the tensor or everything when some pointer of the tensor is not 16-byte aligned.
// Offsets are relative to the chunk start; a chunk has at most kChunkElems elements, so 32-bit.
#ifdef __CUDACC__
#pragma nv_exec_check_disable  // the host test instantiates it with host lambdas
#endif
template <int kVec, class VecFn, class ScalarFn>
SPARSEOPT_HD void for_each_in_chunk(int len, bool vectorized, int tid, int n_threads,
                                    VecFn&& vec_fn, ScalarFn&& scalar_fn) {
  int scalar_begin = 0;
  if (vectorized) {
    const int n_vec = len / kVec;
    for (int v = tid; v < n_vec; v += n_threads) vec_fn(v * kVec);
    scalar_begin = n_vec * kVec;
  }
  for (int i = scalar_begin + tid; i < len; i += n_threads) scalar_fn(i);
}

SPARSEOPT_HD bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Host side: fills args.batch with consecutive tensors of non-zero numel and calls
// launch(args, n_blocks) whenever the batch is full and once at the end. fill(slot, t) stores
// tensor t's pointers (and step) into slot `slot`. numels must be >= 0 and each tensor must have
// at most kMaxBlocks chunks of chunk_elems elements (the callers validate both before launching
// anything). kMaxBlocks is a parameter only so that the host test can exercise the grid-size
// split.
template <int64_t kMaxBlocks = kMaxBlocksPerLaunch, class Args, class Fill, class Launch>
cudaError_t pack_and_launch(Args& args, int64_t n_tensors, const int64_t* numels, Fill&& fill,
                            Launch&& launch, int64_t chunk_elems = kChunkElems) {
  using Batch = decltype(args.batch);
  args.batch.n_tensors = 0;
  int64_t blocks = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    const int64_t numel = numels[t];
    if (numel == 0) continue;  // no blocks; its pointers may be null
    const int64_t chunks = num_chunks(numel, chunk_elems);
    if (args.batch.n_tensors == Batch::kCapacity || blocks + chunks > kMaxBlocks) {
      const cudaError_t err = launch(args, static_cast<uint32_t>(blocks));
      if (err != cudaSuccess) return err;
      args.batch.n_tensors = 0;
      blocks = 0;
    }
    const int slot = args.batch.n_tensors++;
    args.batch.numels[slot] = numel;
    args.batch.block_begin[slot] = static_cast<uint32_t>(blocks);
    fill(slot, t);
    blocks += chunks;
  }
  if (args.batch.n_tensors > 0) return launch(args, static_cast<uint32_t>(blocks));
  return cudaSuccess;
}

}  // namespace mt
}  // namespace cuda
}  // namespace sparseopt
