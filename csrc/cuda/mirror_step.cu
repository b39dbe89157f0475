// CUDA kernels of the fused base step + hyperbolic mirror step (HAM, HORST); the launchers of
// sparseopt/mirror_step_cuda.h. Per element, in float32 and in the formula order of
// sparseopt_kernels/reference/mirror.py:
//
//   g   = grad / grad_scale, negated when maximize
//   SGD:   g_b = g + λθ;  b = g_b (first step) or μ·b + (1 − τ)·g_b;  d_b = g_b + μ·b (nesterov)
//          or b (d_b = g_b when μ = 0);  θ' = θ − η·d_b;  mirror along g
//   Adam:  g_b = g + λθ (not decoupled);  m = β₁m + (1 − β₁)g_b;  v = β₂v + (1 − β₂)g_b·g_b;
//          v̂ = max(v̂, v) (amsgrad);  u = (m / bc₁) / (sqrt(v or v̂) / sqrt(bc₂) + ε),
//          bc_i = 1 − β_iᵗ;  θ' = θ·(1 − ηλ) (decoupled) − η·u;  mirror along d = g or u,
//          after the update (on θ') or before it (on θ)
//   exp:        θ_new = θ'·exp(clamp(−η(α·sign(θ')·d + β), −c, c))      (zeros stay zero)
//   hypentropy: θ_new = γ·sinh(asinh(θ'/γ) − clamp(η·α·d, −c, c))·exp(−η·β)
//
// The mirror step is compiled out when α = β = 0, so the base optimizer is reproduced exactly.
// Scalars are converted to float32 on the host the way PyTorch converts Python scalars (e.g.
// 1 − β₁ is formed in double, then rounded), and from the device lr in float32 when one is given.
//
// Memory traffic, the only cost that matters (all kernels are bandwidth bound): each element is
// read once and written once, nothing else touches global memory (tensor metadata lives in the
// kernel-argument constant bank; lr/grad_scale/found_inf/step are per-block L2 hits). For float32
// params and state an HAM-AdamW step moves exactly the bytes of AdamW:
//   read θ, g, m, v (16 B) + write θ, m, v (12 B) = 28 B/element   (+8 B with amsgrad)
//   SGD with momentum: 20 B/element (16 B on the first step, whose buffer is not read),
//   SGD without momentum and the standalone mirror step: 12 B/element.
// 16-bit params/grads (bf16, fp16) halve their share; 16-bit state halves the state's.
//
// Dense masks (optional, one uint8 tensor per param): Bool, one byte per element, or Bits,
// element e is bit e % 8 of byte e / 8. Where the mask is 0 the param and all its state keep
// their bits. The masked kernels are separate instantiations (the unmasked ones are unchanged):
// a vector first reads its mask bits (Bits: one byte covers 8 elements, so a 4-element float32
// vector takes a nibble of one byte; chunk starts are multiples of 65536, so a chunk's mask
// starts on a byte), skips everything when they are all 0, and otherwise merges old and new
// values per element in the storage type (raw bits, no float round trip) before its full-width
// stores. Extra traffic: 1/8 B/element (Bits) or 1 B/element (Bool) over the 28 B of AdamW, and
// vectors that are entirely masked out cost nothing but their mask. One exception: SGD's first
// step must read the momentum buffer of partially masked vectors to keep the masked-out bits.
//
// Vector width: every thread moves 16 bytes of the narrowest stream per iteration (4 float32 or
// 8 bf16/fp16 elements; a float32 state stream then takes two 16-byte accesses), which gives
// 128-bit LDG/STG when all pointers of a tensor are 16-byte aligned; otherwise, and for the last
// numel % width elements, scalar accesses. Arithmetic uses IEEE division and sqrt (no fast math);
// exp is expf, whose range reduction costs a handful of FFMA around the MUFU.EX2 of __expf but
// keeps 2 ulp over the whole range (__expf loses ~1 ulp per unit of |z|, i.e. up to ~8 ulp at
// the default clamp of 5 and unboundedly without a clamp).
//
// Row scales (SGD and Adam, optional; SparseOpt's BN-skew correction, reference/skew.py): one
// float32 vector c per tensor, one entry per row of L = row_len elements, and g̃ = c[e / L]·g for
// element e, right after the unscale and the maximize negation; g̃ replaces g everywhere (weight
// decay term, moments, mirror exponent). The product is __fmul_rn, never contracted into the
// FMA of a later g̃ + λθ, so g̃ is rounded once like the reference's separate multiply. The
// scaled kernels are separate instantiations (the unscaled ones are unchanged): the vectors are
// one more pointer list of the tensor table and the row lengths a column next to it. The row of
// a vector: each block divides its first element by L once in 64 bits; a vector at chunk
// offset `off` then needs one 32-bit multiply-shift by a per-block magic number (see RowSplit),
// and its scales are one float32 load (two when a row ends inside the vector; one per element
// for rows shorter than the vector) that hits L1: a warp's vectors span one or a few rows. No
// extra DRAM traffic beyond 4 bytes per row.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "element.cuh"
#include "multi_tensor.cuh"
#include "row_split.cuh"
#include "sparseopt/mirror_step_cuda.h"

namespace sparseopt {
namespace cuda {
namespace {

using mt::ChunkRef;
using mt::kBlockThreads;

// Two resident blocks (1024 threads) per SM at least, i.e. at most 64 registers per thread: with
// one 16-byte access per stream in flight per thread that is 64-96 KB of loads in flight per SM,
// ~2.5x what H100 needs to saturate HBM (3.35 TB/s x ~1 us / 132 SMs). The exception: 16-bit
// params with amsgrad (five streams of 8 elements per thread) spill a few bytes under 64
// registers; they take what they need (one 512-thread block per SM if over 64, which still keeps
// ~64 KB of loads in flight per SM).
constexpr int kMinBlocksPerSm = 2;
template <typename P, bool kAmsgrad>
constexpr int kAdamMinBlocksPerSm = (sizeof(P) == 2 && kAmsgrad) ? 1 : kMinBlocksPerSm;

// ---------------------------------------------------------------------------------------------
// Element access: float32 arithmetic on float32 / bf16 / fp16 storage.


// N consecutive elements at p: one scalar access (N == 1) or N * sizeof(T) / 16 accesses of 16
// bytes (p must then be 16-byte aligned).
template <int N, typename T>
__device__ __forceinline__ void load(const T* p, float (&out)[N]) {
  if constexpr (N == 1) {
    out[0] = to_float(*p);
  } else {
    static_assert((N * sizeof(T)) % 16 == 0, "vector accesses are 16 bytes");
    constexpr int kWords = static_cast<int>(N * sizeof(T) / 16);
    alignas(16) T raw[N];
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      reinterpret_cast<uint4*>(raw)[w] = reinterpret_cast<const uint4*>(p)[w];
    }
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = to_float(raw[k]);
  }
}

template <int N, typename T>
__device__ __forceinline__ void store(T* p, const float (&in)[N]) {
  if constexpr (N == 1) {
    *p = from_float<T>(in[0]);
  } else {
    static_assert((N * sizeof(T)) % 16 == 0, "vector accesses are 16 bytes");
    constexpr int kWords = static_cast<int>(N * sizeof(T) / 16);
    alignas(16) T raw[N];
#pragma unroll
    for (int k = 0; k < N; ++k) raw[k] = from_float<T>(in[k]);
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      reinterpret_cast<uint4*>(p)[w] = reinterpret_cast<const uint4*>(raw)[w];
    }
  }
}

// Raw storage values, for the masked kernels: masked-out elements are stored back with exactly
// the bits that were loaded (a float round trip of a 16-bit NaN need not keep its payload).
template <int N, typename T>
__device__ __forceinline__ void load_raw(const T* p, T (&raw)[N]) {
  if constexpr (N == 1) {
    raw[0] = *p;
  } else {
    static_assert((N * sizeof(T)) % 16 == 0, "vector accesses are 16 bytes");
#pragma unroll
    for (int w = 0; w < static_cast<int>(N * sizeof(T) / 16); ++w) {
      reinterpret_cast<uint4*>(raw)[w] = reinterpret_cast<const uint4*>(p)[w];
    }
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_raw(T* p, const T (&raw)[N]) {
  if constexpr (N == 1) {
    *p = raw[0];
  } else {
    static_assert((N * sizeof(T)) % 16 == 0, "vector accesses are 16 bytes");
#pragma unroll
    for (int w = 0; w < static_cast<int>(N * sizeof(T) / 16); ++w) {
      reinterpret_cast<uint4*>(p)[w] = reinterpret_cast<const uint4*>(raw)[w];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Dense masks.

enum MaskMode : int { kMaskNone = 0, kMaskBool = 1, kMaskBits = 2 };

// Mask bits of the N elements at chunk offset `off` (bit k = element off + k), N in {1, 4, 8}.
// `mask` points at the chunk's first mask byte (Bool) or at the byte of its first element
// (Bits; chunk starts are multiples of 8). Vectors start at multiples of N, so a Bits vector
// never straddles a byte; a Bool vector is one 4- or 8-byte load (the caller checks alignment).
template <int kMask, int N>
__device__ __forceinline__ uint32_t mask_bits(const uint8_t* mask, int off) {
  static_assert(N == 1 || N == 4 || N == 8, "vector widths are 1, 4 or 8 elements");
  if constexpr (kMask == kMaskBits) {
    const uint32_t byte = mask[off >> 3];
    return (byte >> (off & 7)) & ((1u << N) - 1u);
  } else {
    static_assert(kMask == kMaskBool, "no bits without a mask");
    return bool_mask_bits<N>(mask, off);
  }
}

// The masked kernels' vectorization needs a Bool mask aligned like its vector (N bytes).
template <int kMask, int N>
__device__ __forceinline__ bool mask_aligned(const uint8_t* mask) {
  return kMask != kMaskBool || (reinterpret_cast<uintptr_t>(mask) % N) == 0;
}

// Chunk's first mask byte.
template <int kMask>
__device__ __forceinline__ const uint8_t* chunk_mask(const void* mask, int64_t chunk_begin) {
  const uint8_t* m = static_cast<const uint8_t*>(mask);
  return kMask == kMaskBits ? m + chunk_begin / 8 : m + chunk_begin;
}

// ---------------------------------------------------------------------------------------------
// Row scales (row arithmetic in row_split.cuh).


// The row split of a block's chunk; the scale vectors are pointer list kList.
template <int kList, class Args>
__device__ __forceinline__ RowSplit block_row_split(const Args& args, const ChunkRef& ref) {
  return row_split(static_cast<const float*>(args.batch.ptrs[kList][ref.tensor]), ref.begin,
                   args.row_lens[ref.tensor]);
}

// Elements per vector iteration: 16 bytes of the param dtype (state is as wide or wider).
template <typename P>
constexpr int kVecOf = static_cast<int>(16 / sizeof(P));

// ---------------------------------------------------------------------------------------------
// Mirror step.

enum MirrorKind : int { kMirrorNone = 0, kMirrorExp = 1, kMirrorHyp = 2 };

// Host-converted mirror scalars (float32, as PyTorch rounds Python scalars).
struct MirrorParams {
  float alpha;
  float beta;
  float clamp;     // +inf when the clamp is disabled: then the clamp is the identity
  float gamma;
  float lr_alpha;  // float(lr·α) and float(lr·β) formed in double, for a host lr
  float lr_beta;
};

// Per-block mirror coefficients for the block's learning rate η.
struct MirrorCoeffs {
  float neg_eta;
  float alpha;
  float beta;
  float clamp;
  float eta_alpha;
  float gamma;
  float decay;  // exp(−η·β)
};

__device__ __forceinline__ MirrorCoeffs mirror_coeffs(const MirrorParams& mp, float eta,
                                                      bool device_lr) {
  MirrorCoeffs c;
  c.neg_eta = -eta;
  c.alpha = mp.alpha;
  c.beta = mp.beta;
  c.clamp = mp.clamp;
  c.gamma = mp.gamma;
  // The reference multiplies a tensor lr in float32 and a Python lr in double.
  c.eta_alpha = device_lr ? eta * mp.alpha : mp.lr_alpha;
  const float lr_beta = device_lr ? eta * mp.beta : mp.lr_beta;
  c.decay = expf(-lr_beta);
  return c;
}

// torch.clamp: NaN stays NaN (fminf/fmaxf would replace it by a bound and hide a NaN gradient).
__device__ __forceinline__ float clamp_sym(float x, float c) {
  return x < -c ? -c : (x > c ? c : x);
}

// torch.sign: ±1, zero for zero, NaN for NaN.
__device__ __forceinline__ float sign_of(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
}

// torch.maximum: NaN if either operand is NaN.
__device__ __forceinline__ float max_nan(float a, float b) {
  return (a > b || a != a) ? a : b;
}

template <int kMirror>
__device__ __forceinline__ float mirror(float theta, float d, const MirrorCoeffs& c) {
  if constexpr (kMirror == kMirrorExp) {
    const float z = clamp_sym(c.neg_eta * (c.alpha * sign_of(theta) * d + c.beta), c.clamp);
    return theta * expf(z);
  } else if constexpr (kMirror == kMirrorHyp) {
    const float shift = clamp_sym(c.eta_alpha * d, c.clamp);
    return c.gamma * sinhf(asinhf(theta / c.gamma) - shift) * c.decay;
  } else {
    return theta;
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel arguments. Everything is float32 already; flags are uniform over the launch.

struct Common {
  DeviceScalars scalars;
  float lr;  // used when scalars.lr is null
  bool maximize;
  MirrorParams mirror;
};

struct SgdParams {
  Common common;
  float weight_decay;
  float momentum;
  float one_minus_dampening;
  bool has_weight_decay;
  bool has_momentum;
  bool first_step;  // buffer := g_b, the old buffer is not read
  bool nesterov;
};

struct AdamParams {
  Common common;
  float beta1;
  float beta2;
  float one_minus_beta1;
  float one_minus_beta2;
  float eps;
  float weight_decay;
  float host_decay_factor;  // float(1 − lr·λ) formed in double, for a host lr
  bool coupled_weight_decay;    // g_b = g + λθ
  bool decoupled_weight_decay;  // θ·(1 − ηλ)
  bool direction_update;        // d = u
  bool order_before;            // mirror θ, then the AdamW update
  bool device_steps;            // batch.step_ptrs, else batch.host_steps
};

struct MirrorOnlyParams {
  Common common;
};

// Pointer lists per kernel: SGD {θ, g, b}, Adam {θ, g, m, v, v̂}, mirror step {θ, g}; the masked
// kernels append the mask pointer as the next list and the row-scaled ones the scale vectors as
// the last, with the row lengths in a column of their own (so their launches hold fewer tensors).
constexpr int kSgdDepth = 3;
constexpr int kAdamDepth = 5;
constexpr int kMirrorDepth = 2;
constexpr int kRowLenBytes = 8;  // the row-length column, per tensor
template <bool kMasked, bool kScaled = false>
constexpr int kSgdCap = mt::batch_capacity<kSgdDepth + kMasked + kScaled, false,
                                           kScaled ? kRowLenBytes : 0>(sizeof(SgdParams));
template <bool kMasked, bool kScaled = false>
constexpr int kAdamCap = mt::batch_capacity<kAdamDepth + kMasked + kScaled, true,
                                            kScaled ? kRowLenBytes : 0>(sizeof(AdamParams));
template <bool kMasked>
constexpr int kMirrorCap =
    mt::batch_capacity<kMirrorDepth + kMasked, false>(sizeof(MirrorOnlyParams));

template <bool kMasked, bool kScaled = false>
struct SgdArgsT {
  SgdParams p;
  mt::TensorBatch<kSgdDepth + kMasked, kSgdCap<kMasked>, false> batch;
};
template <bool kMasked>
struct SgdArgsT<kMasked, true> {
  SgdParams p;
  mt::TensorBatch<kSgdDepth + kMasked + 1, kSgdCap<kMasked, true>, false> batch;
  int64_t row_lens[kSgdCap<kMasked, true>];
};
template <bool kMasked, bool kScaled = false>
struct AdamArgsT {
  AdamParams p;
  mt::TensorBatch<kAdamDepth + kMasked, kAdamCap<kMasked>, true> batch;
};
template <bool kMasked>
struct AdamArgsT<kMasked, true> {
  AdamParams p;
  mt::TensorBatch<kAdamDepth + kMasked + 1, kAdamCap<kMasked, true>, true> batch;
  int64_t row_lens[kAdamCap<kMasked, true>];
};
template <bool kMasked>
struct MirrorArgsT {
  MirrorOnlyParams p;
  mt::TensorBatch<kMirrorDepth + kMasked, kMirrorCap<kMasked>, false> batch;
};
using SgdArgs = SgdArgsT<false>;
using AdamArgs = AdamArgsT<false>;
using MirrorArgs = MirrorArgsT<false>;
static_assert(sizeof(SgdArgs) <= mt::kMaxKernelParamBytes, "SGD kernel arguments too large");
static_assert(sizeof(AdamArgs) <= mt::kMaxKernelParamBytes, "Adam kernel arguments too large");
static_assert(sizeof(MirrorArgs) <= mt::kMaxKernelParamBytes, "mirror kernel arguments too large");
static_assert(sizeof(SgdArgsT<true>) <= mt::kMaxKernelParamBytes, "SGD kernel arguments too large");
static_assert(sizeof(AdamArgsT<true>) <= mt::kMaxKernelParamBytes,
              "Adam kernel arguments too large");
static_assert(sizeof(MirrorArgsT<true>) <= mt::kMaxKernelParamBytes,
              "mirror kernel arguments too large");
static_assert(kAdamCap<false> >= 500 && kSgdCap<false> >= 850 && kMirrorCap<false> >= 1100,
              "unexpected capacities");
static_assert(kAdamCap<true> >= 440 && kSgdCap<true> >= 720 && kMirrorCap<true> >= 900,
              "unexpected capacities");
static_assert(sizeof(SgdArgsT<false, true>) <= mt::kMaxKernelParamBytes &&
                  sizeof(SgdArgsT<true, true>) <= mt::kMaxKernelParamBytes,
              "SGD kernel arguments too large");
static_assert(sizeof(AdamArgsT<false, true>) <= mt::kMaxKernelParamBytes &&
                  sizeof(AdamArgsT<true, true>) <= mt::kMaxKernelParamBytes,
              "Adam kernel arguments too large");
static_assert(kSgdCap<false, true> >= 600 && kSgdCap<true, true> >= 530 &&
                  kAdamCap<false, true> >= 400 && kAdamCap<true, true> >= 360,
              "unexpected capacities");

// Per-block values common to all kernels. Returns false when found_inf is set: the block then
// writes nothing (AMP skips the step without a host synchronization).
struct BlockCommon {
  float eta;
  float grad_scale;
  bool has_grad_scale;
  MirrorCoeffs mc;
};

__device__ __forceinline__ bool block_common(const Common& c, BlockCommon& out) {
  if (c.scalars.found_inf != nullptr && *c.scalars.found_inf != 0.0f) return false;
  const bool device_lr = c.scalars.lr != nullptr;
  out.eta = device_lr ? *c.scalars.lr : c.lr;
  out.has_grad_scale = c.scalars.grad_scale != nullptr;
  out.grad_scale = out.has_grad_scale ? *c.scalars.grad_scale : 1.0f;
  out.mc = mirror_coeffs(c.mirror, out.eta, device_lr);
  return true;
}

__device__ __forceinline__ float unscale(float grad, const BlockCommon& bc, bool maximize) {
  float g = grad;
  if (bc.has_grad_scale) g = g / bc.grad_scale;
  return maximize ? -g : g;
}

template <int N>
using Width = std::integral_constant<int, N>;

// ---------------------------------------------------------------------------------------------
// Kernels. One block = one chunk of one tensor; see multi_tensor.cuh. Each kernel has an
// unmasked body (kMask == kMaskNone) and a masked one. The masked bodies take the per-element
// math from sgd_element / adam_element, which repeat the unmasked bodies' formulas verbatim; the
// unmasked bodies keep them inline so that they compile to exactly the code they had before
// masks existed (factoring them out reorders flag loads and FMA operands in the PTX).

template <int kMirror, bool kScaled>
__device__ __forceinline__ float sgd_element(const SgdParams& sp, const BlockCommon& bc,
                                             float th, float grad, float row_scale, float& b) {
  float gk = unscale(grad, bc, sp.common.maximize);
  if constexpr (kScaled) gk = __fmul_rn(gk, row_scale);
  const float gb = sp.has_weight_decay ? gk + sp.weight_decay * th : gk;
  float d = gb;
  if (sp.has_momentum) {
    b = sp.first_step ? gb : sp.momentum * b + sp.one_minus_dampening * gb;
    d = sp.nesterov ? gb + sp.momentum * b : b;
  }
  return mirror<kMirror>(th - bc.eta * d, gk, bc.mc);
}

// Per-block Adam values: bias corrections and the decoupled decay factor.
struct AdamBlock {
  float bc1;
  float bc2_sqrt;
  float decay_factor;
};

template <int kMirror, bool kAmsgrad, bool kScaled>
__device__ __forceinline__ float adam_element(const AdamParams& ap, const BlockCommon& bc,
                                              const AdamBlock& ab, float th, float grad,
                                              float row_scale, float& m, float& v, float& vmax) {
  float gk = unscale(grad, bc, ap.common.maximize);
  if constexpr (kScaled) gk = __fmul_rn(gk, row_scale);
  const float gb = ap.coupled_weight_decay ? gk + ap.weight_decay * th : gk;
  m = ap.beta1 * m + ap.one_minus_beta1 * gb;
  v = ap.beta2 * v + ap.one_minus_beta2 * gb * gb;
  float second = v;
  if constexpr (kAmsgrad) {
    vmax = max_nan(vmax, v);
    second = vmax;
  }
  const float denom = sqrtf(second) / ab.bc2_sqrt + ap.eps;
  const float u = (m / ab.bc1) / denom;
  const float d = ap.direction_update ? u : gk;
  // One mirror call for both orders (keeps the unrolled body small).
  float x = th;
  if (!ap.order_before) {
    if (ap.decoupled_weight_decay) x = x * ab.decay_factor;
    x = x - bc.eta * u;
  }
  x = mirror<kMirror>(x, d, bc.mc);
  if (ap.order_before) {
    if (ap.decoupled_weight_decay) x = x * ab.decay_factor;
    x = x - bc.eta * u;
  }
  return x;
}

template <typename P, typename S, int kMirror, int kMask, bool kScaled>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    ham_sgd_kernel(const __grid_constant__ SgdArgsT<kMask != kMaskNone, kScaled> args) {
  const SgdParams& sp = args.p;
  BlockCommon bc;
  if (!block_common(sp.common, bc)) return;
  const ChunkRef ref = mt::locate_chunk(args.batch, blockIdx.x);
  P* const param = static_cast<P*>(args.batch.ptrs[0][ref.tensor]) + ref.begin;
  const P* const grad = static_cast<const P*>(args.batch.ptrs[1][ref.tensor]) + ref.begin;
  S* const buf = sp.has_momentum ? static_cast<S*>(args.batch.ptrs[2][ref.tensor]) + ref.begin
                                 : nullptr;
  const bool read_buf = sp.has_momentum && !sp.first_step;
  constexpr int kVec = kVecOf<P>;
  bool vectorized =
      mt::aligned16(param) && mt::aligned16(grad) && (!sp.has_momentum || mt::aligned16(buf));
  [[maybe_unused]] RowSplit rs;
  if constexpr (kScaled) rs = block_row_split<kSgdDepth + (kMask != kMaskNone)>(args, ref);

  if constexpr (kMask == kMaskNone) {
    auto apply = [&](auto width, int off) {
      constexpr int N = decltype(width)::value;
      float th[N], g[N], b[N];
      [[maybe_unused]] float sc[N];
      load<N>(param + off, th);
      load<N>(grad + off, g);
      if (read_buf) load<N>(buf + off, b);
      if constexpr (kScaled) row_scales_of<N>(rs, off, sc);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        float gk = unscale(g[k], bc, sp.common.maximize);
        if constexpr (kScaled) gk = __fmul_rn(gk, sc[k]);
        const float gb = sp.has_weight_decay ? gk + sp.weight_decay * th[k] : gk;
        float d = gb;
        if (sp.has_momentum) {
          b[k] = sp.first_step ? gb : sp.momentum * b[k] + sp.one_minus_dampening * gb;
          d = sp.nesterov ? gb + sp.momentum * b[k] : b[k];
        }
        th[k] = mirror<kMirror>(th[k] - bc.eta * d, gk, bc.mc);
      }
      if (sp.has_momentum) store<N>(buf + off, b);
      store<N>(param + off, th);
    };
    mt::for_each_in_chunk<kVec>(
        ref.len, vectorized, threadIdx.x, kBlockThreads,
        [&](int off) { apply(Width<kVec>{}, off); }, [&](int off) { apply(Width<1>{}, off); });
  } else {
    const uint8_t* const mask = chunk_mask<kMask>(args.batch.ptrs[kSgdDepth][ref.tensor],
                                                  ref.begin);
    vectorized = vectorized && mask_aligned<kMask, kVec>(mask);
    auto apply = [&](auto width, int off) {
      constexpr int N = decltype(width)::value;
      const uint32_t bits = mask_bits<kMask, N>(mask, off);
      if (bits == 0) return;  // all masked out: nothing to read or write
      alignas(16) P th[N];
      alignas(16) P g[N];
      alignas(16) S b[N] = {};
      load_raw<N>(param + off, th);
      load_raw<N>(grad + off, g);
      // The first step does not read the buffer, except to keep its masked-out bits.
      if (read_buf || (sp.has_momentum && bits != (1u << N) - 1u)) load_raw<N>(buf + off, b);
      [[maybe_unused]] float sc[N];
      if constexpr (kScaled) row_scales_of<N>(rs, off, sc);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        float bk = to_float(b[k]);
        const float x = sgd_element<kMirror, kScaled>(sp, bc, to_float(th[k]), to_float(g[k]),
                                                      kScaled ? sc[k] : 1.0f, bk);
        if ((bits >> k) & 1u) {
          th[k] = from_float<P>(x);
          b[k] = from_float<S>(bk);
        }
      }
      if (sp.has_momentum) store_raw<N>(buf + off, b);
      store_raw<N>(param + off, th);
    };
    mt::for_each_in_chunk<kVec>(
        ref.len, vectorized, threadIdx.x, kBlockThreads,
        [&](int off) { apply(Width<kVec>{}, off); }, [&](int off) { apply(Width<1>{}, off); });
  }
}

template <typename P, typename S, int kMirror, bool kAmsgrad, int kMask, bool kScaled>
__global__ void __launch_bounds__(kBlockThreads, (kAdamMinBlocksPerSm<P, kAmsgrad>))
    ham_adam_kernel(const __grid_constant__ AdamArgsT<kMask != kMaskNone, kScaled> args) {
  const AdamParams& ap = args.p;
  BlockCommon bc;
  if (!block_common(ap.common, bc)) return;
  const ChunkRef ref = mt::locate_chunk(args.batch, blockIdx.x);
  const int t = ref.tensor;
  P* const param = static_cast<P*>(args.batch.ptrs[0][t]) + ref.begin;
  const P* const grad = static_cast<const P*>(args.batch.ptrs[1][t]) + ref.begin;
  S* const exp_avg = static_cast<S*>(args.batch.ptrs[2][t]) + ref.begin;
  S* const exp_avg_sq = static_cast<S*>(args.batch.ptrs[3][t]) + ref.begin;
  S* const max_exp_avg_sq = kAmsgrad ? static_cast<S*>(args.batch.ptrs[4][t]) + ref.begin : nullptr;
  constexpr int kVec = kVecOf<P>;
  bool vectorized = mt::aligned16(param) && mt::aligned16(grad) &&
                    mt::aligned16(exp_avg) && mt::aligned16(exp_avg_sq) &&
                    (!kAmsgrad || mt::aligned16(max_exp_avg_sq));
  [[maybe_unused]] RowSplit rs;
  if constexpr (kScaled) rs = block_row_split<kAdamDepth + (kMask != kMaskNone)>(args, ref);

  // Bias corrections, once per block: the reference computes float(β)^step in float32; the
  // double pow of the same float32 operands rounds to (nearly always) the correctly rounded value.
  const float step = ap.device_steps ? *args.batch.step_ptrs[t] : args.batch.host_steps[t];
  const float bc1 = 1.0f - static_cast<float>(pow(static_cast<double>(ap.beta1), double(step)));
  const float bc2_sqrt =
      sqrtf(1.0f - static_cast<float>(pow(static_cast<double>(ap.beta2), double(step))));
  const float decay_factor =
      ap.common.scalars.lr != nullptr ? 1.0f - bc.eta * ap.weight_decay : ap.host_decay_factor;

  if constexpr (kMask == kMaskNone) {
    auto apply = [&](auto width, int off) {
      constexpr int N = decltype(width)::value;
      float th[N], g[N], m[N], v[N];
      [[maybe_unused]] float vmax[N];
      [[maybe_unused]] float sc[N];
      load<N>(param + off, th);
      load<N>(grad + off, g);
      load<N>(exp_avg + off, m);
      load<N>(exp_avg_sq + off, v);
      if constexpr (kAmsgrad) load<N>(max_exp_avg_sq + off, vmax);
      if constexpr (kScaled) row_scales_of<N>(rs, off, sc);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        float gk = unscale(g[k], bc, ap.common.maximize);
        if constexpr (kScaled) gk = __fmul_rn(gk, sc[k]);
        const float gb = ap.coupled_weight_decay ? gk + ap.weight_decay * th[k] : gk;
        m[k] = ap.beta1 * m[k] + ap.one_minus_beta1 * gb;
        v[k] = ap.beta2 * v[k] + ap.one_minus_beta2 * gb * gb;
        float second = v[k];
        if constexpr (kAmsgrad) {
          vmax[k] = max_nan(vmax[k], v[k]);
          second = vmax[k];
        }
        const float denom = sqrtf(second) / bc2_sqrt + ap.eps;
        const float u = (m[k] / bc1) / denom;
        const float d = ap.direction_update ? u : gk;
        // One mirror call for both orders (keeps the unrolled body small).
        float x = th[k];
        if (!ap.order_before) {
          if (ap.decoupled_weight_decay) x = x * decay_factor;
          x = x - bc.eta * u;
        }
        x = mirror<kMirror>(x, d, bc.mc);
        if (ap.order_before) {
          if (ap.decoupled_weight_decay) x = x * decay_factor;
          x = x - bc.eta * u;
        }
        th[k] = x;
      }
      store<N>(exp_avg + off, m);
      store<N>(exp_avg_sq + off, v);
      if constexpr (kAmsgrad) store<N>(max_exp_avg_sq + off, vmax);
      store<N>(param + off, th);
    };
    mt::for_each_in_chunk<kVec>(
        ref.len, vectorized, threadIdx.x, kBlockThreads,
        [&](int off) { apply(Width<kVec>{}, off); }, [&](int off) { apply(Width<1>{}, off); });
  } else {
    const uint8_t* const mask = chunk_mask<kMask>(args.batch.ptrs[kAdamDepth][t], ref.begin);
    vectorized = vectorized && mask_aligned<kMask, kVec>(mask);
    const AdamBlock ab = {bc1, bc2_sqrt, decay_factor};
    auto apply = [&](auto width, int off) {
      constexpr int N = decltype(width)::value;
      const uint32_t bits = mask_bits<kMask, N>(mask, off);
      if (bits == 0) return;  // all masked out: nothing to read or write
      alignas(16) P th[N];
      alignas(16) P g[N];
      alignas(16) S m[N];
      alignas(16) S v[N];
      [[maybe_unused]] alignas(16) S vmax[N];
      load_raw<N>(param + off, th);
      load_raw<N>(grad + off, g);
      load_raw<N>(exp_avg + off, m);
      load_raw<N>(exp_avg_sq + off, v);
      if constexpr (kAmsgrad) load_raw<N>(max_exp_avg_sq + off, vmax);
      [[maybe_unused]] float sc[N];
      if constexpr (kScaled) row_scales_of<N>(rs, off, sc);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        float mk = to_float(m[k]);
        float vk = to_float(v[k]);
        float vmaxk = 0.0f;
        if constexpr (kAmsgrad) vmaxk = to_float(vmax[k]);
        const float x = adam_element<kMirror, kAmsgrad, kScaled>(
            ap, bc, ab, to_float(th[k]), to_float(g[k]), kScaled ? sc[k] : 1.0f, mk, vk, vmaxk);
        if ((bits >> k) & 1u) {
          th[k] = from_float<P>(x);
          m[k] = from_float<S>(mk);
          v[k] = from_float<S>(vk);
          if constexpr (kAmsgrad) vmax[k] = from_float<S>(vmaxk);
        }
      }
      store_raw<N>(exp_avg + off, m);
      store_raw<N>(exp_avg_sq + off, v);
      if constexpr (kAmsgrad) store_raw<N>(max_exp_avg_sq + off, vmax);
      store_raw<N>(param + off, th);
    };
    mt::for_each_in_chunk<kVec>(
        ref.len, vectorized, threadIdx.x, kBlockThreads,
        [&](int off) { apply(Width<kVec>{}, off); }, [&](int off) { apply(Width<1>{}, off); });
  }
}

template <typename P, int kMirror, int kMask>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    mirror_step_kernel(const __grid_constant__ MirrorArgsT<kMask != kMaskNone> args) {
  const Common& cp = args.p.common;
  BlockCommon bc;
  if (!block_common(cp, bc)) return;
  const ChunkRef ref = mt::locate_chunk(args.batch, blockIdx.x);
  P* const param = static_cast<P*>(args.batch.ptrs[0][ref.tensor]) + ref.begin;
  const P* const grad = static_cast<const P*>(args.batch.ptrs[1][ref.tensor]) + ref.begin;
  constexpr int kVec = kVecOf<P>;
  bool vectorized = mt::aligned16(param) && mt::aligned16(grad);

  if constexpr (kMask == kMaskNone) {
    auto apply = [&](auto width, int off) {
      constexpr int N = decltype(width)::value;
      float th[N], g[N];
      load<N>(param + off, th);
      load<N>(grad + off, g);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        th[k] = mirror<kMirror>(th[k], unscale(g[k], bc, cp.maximize), bc.mc);
      }
      store<N>(param + off, th);
    };
    mt::for_each_in_chunk<kVec>(
        ref.len, vectorized, threadIdx.x, kBlockThreads,
        [&](int off) { apply(Width<kVec>{}, off); }, [&](int off) { apply(Width<1>{}, off); });
  } else {
    const uint8_t* const mask = chunk_mask<kMask>(args.batch.ptrs[kMirrorDepth][ref.tensor],
                                                  ref.begin);
    vectorized = vectorized && mask_aligned<kMask, kVec>(mask);
    auto apply = [&](auto width, int off) {
      constexpr int N = decltype(width)::value;
      const uint32_t bits = mask_bits<kMask, N>(mask, off);
      if (bits == 0) return;  // all masked out: nothing to read or write
      alignas(16) P th[N];
      alignas(16) P g[N];
      load_raw<N>(param + off, th);
      load_raw<N>(grad + off, g);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float x =
            mirror<kMirror>(to_float(th[k]), unscale(to_float(g[k]), bc, cp.maximize), bc.mc);
        if ((bits >> k) & 1u) th[k] = from_float<P>(x);
      }
      store_raw<N>(param + off, th);
    };
    mt::for_each_in_chunk<kVec>(
        ref.len, vectorized, threadIdx.x, kBlockThreads,
        [&](int off) { apply(Width<kVec>{}, off); }, [&](int off) { apply(Width<1>{}, off); });
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: validation, scalar conversion, dispatch.

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<P>, TypeTag<S>) for the supported (param, state) pairs: state is float32 or the
// param dtype; float64 is CPU-only.
template <class F>
cudaError_t dispatch_types(ScalarType param_type, ScalarType state_type, F&& f) {
  const bool f32_state = state_type == ScalarType::Float32;
  switch (param_type) {
    case ScalarType::Float32:
      if (f32_state) return f(TypeTag<float>{}, TypeTag<float>{});
      break;
    case ScalarType::BFloat16:
      if (f32_state) return f(TypeTag<__nv_bfloat16>{}, TypeTag<float>{});
      if (state_type == ScalarType::BFloat16) {
        return f(TypeTag<__nv_bfloat16>{}, TypeTag<__nv_bfloat16>{});
      }
      break;
    case ScalarType::Float16:
      if (f32_state) return f(TypeTag<__half>{}, TypeTag<float>{});
      if (state_type == ScalarType::Float16) return f(TypeTag<__half>{}, TypeTag<__half>{});
      break;
    default:
      break;
  }
  return cudaErrorInvalidValue;
}

// f(Width<kMirror>) for the configured mirror form (kMirrorNone when α = β = 0).
template <class F>
cudaError_t dispatch_mirror(const MirrorConfig& m, F&& f) {
  if (!m.enabled()) return f(Width<kMirrorNone>{});
  switch (m.form) {
    case MirrorForm::Exp:
      return f(Width<kMirrorExp>{});
    case MirrorForm::Hypentropy:
      return f(Width<kMirrorHyp>{});
  }
  return cudaErrorInvalidValue;
}

Common make_common(double lr, bool maximize, const MirrorConfig& m, DeviceScalars scalars) {
  Common c;
  c.scalars = scalars;
  c.lr = static_cast<float>(lr);
  c.maximize = maximize;
  c.mirror.alpha = static_cast<float>(m.alpha);
  c.mirror.beta = static_cast<float>(m.beta);
  c.mirror.clamp = m.use_clamp ? static_cast<float>(m.clamp) : std::numeric_limits<float>::infinity();
  c.mirror.gamma = static_cast<float>(m.gamma);
  c.mirror.lr_alpha = static_cast<float>(lr * m.alpha);
  c.mirror.lr_beta = static_cast<float>(lr * m.beta);
  return c;
}

// Checks every tensor before anything is launched, so an invalid call modifies nothing. Lists
// may be null only when unused; tensors with numel 0 may have null pointers.
bool valid_tensors(int64_t n_tensors, const int64_t* numels,
                   std::initializer_list<const void* const*> lists) {
  if (n_tensors < 0) return false;
  if (n_tensors == 0) return true;
  if (numels == nullptr) return false;
  for (const void* const* list : lists) {
    if (list == nullptr) return false;
  }
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (numels[t] < 0 || mt::num_chunks(numels[t]) > mt::kMaxBlocksPerLaunch) return false;
    if (numels[t] == 0) continue;
    for (const void* const* list : lists) {
      if (list[t] == nullptr) return false;
    }
  }
  return true;
}

bool valid_mirror(const MirrorConfig& m) {
  return !m.enabled() || m.form == MirrorForm::Exp ||
         (m.form == MirrorForm::Hypentropy && m.gamma > 0.0);
}

template <class Args>
cudaError_t launch(void (*kernel)(Args), const Args& args, uint32_t blocks,
                   cudaStream_t stream) {
  kernel<<<blocks, kBlockThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

// f(Width<kMask>) for the mask kind. Invalid kinds were rejected by valid_masks.
template <class F>
cudaError_t dispatch_mask(MaskKind kind, F&& f) {
  switch (kind) {
    case MaskKind::None:
      return f(Width<kMaskNone>{});
    case MaskKind::Bool:
      return f(Width<kMaskBool>{});
    case MaskKind::Bits:
      return f(Width<kMaskBits>{});
  }
  return cudaErrorInvalidValue;
}

// A known kind, and with a mask a non-null pointer for every tensor with elements.
bool valid_masks(const Masks& masks, int64_t n_tensors, const int64_t* numels) {
  if (masks.kind == MaskKind::None) return true;
  if (masks.kind != MaskKind::Bool && masks.kind != MaskKind::Bits) return false;
  return valid_tensors(n_tensors, numels, {masks.data});
}

// With row scales: a vector and a row length L >= 1 dividing numel for every tensor with
// elements (so that every row index e / L is below numel / L, the vector's length).
bool valid_row_scales(const RowScales& rs, int64_t n_tensors, const int64_t* numels) {
  if (!rs.enabled() || n_tensors == 0) return true;
  if (rs.row_lens == nullptr ||
      !valid_tensors(n_tensors, numels, {reinterpret_cast<const void* const*>(rs.data)})) {
    return false;
  }
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (numels[t] == 0) continue;
    if (rs.row_lens[t] < 1 || numels[t] % rs.row_lens[t] != 0) return false;
  }
  return true;
}

// f(std::bool_constant<kScaled>) for row scales on or off.
template <class F>
cudaError_t dispatch_row_scales(const RowScales& rs, F&& f) {
  return rs.enabled() ? f(std::true_type{}) : f(std::false_type{});
}

}  // namespace

cudaError_t ham_sgd_cuda(const SgdConfig& cfg, DeviceScalars scalars, ScalarType param_type,
                         ScalarType state_type, int64_t n_tensors, void* const* params,
                         const void* const* grads, void* const* momentum_buffers,
                         const int64_t* numels, cudaStream_t stream, Masks masks,
                         RowScales row_scales) {
  const bool has_momentum = cfg.momentum != 0.0;
  const bool ok = has_momentum ? valid_tensors(n_tensors, numels,
                                               {params, grads, momentum_buffers})
                               : valid_tensors(n_tensors, numels, {params, grads});
  if (!ok || !valid_mirror(cfg.mirror) || !valid_masks(masks, n_tensors, numels) ||
      !valid_row_scales(row_scales, n_tensors, numels)) {
    return cudaErrorInvalidValue;
  }

  SgdParams p;
  p.common = make_common(cfg.lr, cfg.maximize, cfg.mirror, scalars);
  p.weight_decay = static_cast<float>(cfg.weight_decay);
  p.momentum = static_cast<float>(cfg.momentum);
  p.one_minus_dampening = static_cast<float>(1.0 - cfg.dampening);
  p.has_weight_decay = cfg.weight_decay != 0.0;
  p.has_momentum = has_momentum;
  p.first_step = cfg.is_first_step;
  p.nesterov = cfg.nesterov;

  return dispatch_types(param_type, state_type, [&](auto p_tag, auto s_tag) {
    using P = typename decltype(p_tag)::type;
    using S = typename decltype(s_tag)::type;
    return dispatch_mirror(cfg.mirror, [&](auto mirror_tag) {
      constexpr int kMirror = decltype(mirror_tag)::value;
      return dispatch_mask(masks.kind, [&](auto mask_tag) {
        constexpr int kMask = decltype(mask_tag)::value;
        return dispatch_row_scales(row_scales, [&](auto scaled_tag) {
          constexpr bool kScaled = decltype(scaled_tag)::value;
          using Args = SgdArgsT<kMask != kMaskNone, kScaled>;
          Args args;
          args.p = p;
          auto fill = [&](int slot, int64_t t) {
            args.batch.ptrs[0][slot] = params[t];
            args.batch.ptrs[1][slot] = const_cast<void*>(grads[t]);
            args.batch.ptrs[2][slot] = has_momentum ? momentum_buffers[t] : nullptr;
            if constexpr (kMask != kMaskNone) {
              args.batch.ptrs[kSgdDepth][slot] = const_cast<void*>(masks.data[t]);
            }
            if constexpr (kScaled) {
              args.batch.ptrs[kSgdDepth + (kMask != kMaskNone)][slot] =
                  const_cast<float*>(row_scales.data[t]);
              args.row_lens[slot] = row_scales.row_lens[t];
            }
          };
          return mt::pack_and_launch(args, n_tensors, numels, fill,
                                     [&](const Args& a, uint32_t blocks) {
                                       return launch(
                                           ham_sgd_kernel<P, S, kMirror, kMask, kScaled>, a,
                                           blocks, stream);
                                     });
        });
      });
    });
  });
}

cudaError_t ham_adam_cuda(const AdamConfig& cfg, DeviceScalars scalars, StepCounts steps,
                          ScalarType param_type, ScalarType state_type, int64_t n_tensors,
                          void* const* params, const void* const* grads, void* const* exp_avgs,
                          void* const* exp_avg_sqs, void* const* max_exp_avg_sqs,
                          const int64_t* numels, cudaStream_t stream, Masks masks,
                          RowScales row_scales) {
  const bool ok =
      cfg.amsgrad
          ? valid_tensors(n_tensors, numels,
                          {params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs})
          : valid_tensors(n_tensors, numels, {params, grads, exp_avgs, exp_avg_sqs});
  if (!ok || !valid_mirror(cfg.mirror) || !valid_masks(masks, n_tensors, numels) ||
      !valid_row_scales(row_scales, n_tensors, numels)) {
    return cudaErrorInvalidValue;
  }
  const bool device_steps = steps.step_ptrs != nullptr;
  if (n_tensors > 0 && !device_steps && steps.host_steps == nullptr) return cudaErrorInvalidValue;
  if (device_steps) {
    for (int64_t t = 0; t < n_tensors; ++t) {
      if (numels[t] > 0 && steps.step_ptrs[t] == nullptr) return cudaErrorInvalidValue;
    }
  }

  AdamParams p;
  p.common = make_common(cfg.lr, cfg.maximize, cfg.mirror, scalars);
  p.beta1 = static_cast<float>(cfg.beta1);
  p.beta2 = static_cast<float>(cfg.beta2);
  p.one_minus_beta1 = static_cast<float>(1.0 - cfg.beta1);
  p.one_minus_beta2 = static_cast<float>(1.0 - cfg.beta2);
  p.eps = static_cast<float>(cfg.eps);
  p.weight_decay = static_cast<float>(cfg.weight_decay);
  p.host_decay_factor = static_cast<float>(1.0 - cfg.lr * cfg.weight_decay);
  p.coupled_weight_decay = cfg.weight_decay != 0.0 && !cfg.decoupled_weight_decay;
  p.decoupled_weight_decay = cfg.weight_decay != 0.0 && cfg.decoupled_weight_decay;
  p.direction_update = cfg.mirror.direction == MirrorDirection::Update;
  p.order_before = cfg.mirror.order == MirrorOrder::Before;
  p.device_steps = device_steps;

  return dispatch_types(param_type, state_type, [&](auto p_tag, auto s_tag) {
    using P = typename decltype(p_tag)::type;
    using S = typename decltype(s_tag)::type;
    return dispatch_mirror(cfg.mirror, [&](auto mirror_tag) {
      constexpr int kMirror = decltype(mirror_tag)::value;
      return dispatch_mask(masks.kind, [&](auto mask_tag) {
        constexpr int kMask = decltype(mask_tag)::value;
        return dispatch_row_scales(row_scales, [&](auto scaled_tag) {
          constexpr bool kScaled = decltype(scaled_tag)::value;
          using Args = AdamArgsT<kMask != kMaskNone, kScaled>;
          Args args;
          args.p = p;
          auto fill = [&](int slot, int64_t t) {
            args.batch.ptrs[0][slot] = params[t];
            args.batch.ptrs[1][slot] = const_cast<void*>(grads[t]);
            args.batch.ptrs[2][slot] = exp_avgs[t];
            args.batch.ptrs[3][slot] = exp_avg_sqs[t];
            args.batch.ptrs[4][slot] = cfg.amsgrad ? max_exp_avg_sqs[t] : nullptr;
            if constexpr (kMask != kMaskNone) {
              args.batch.ptrs[kAdamDepth][slot] = const_cast<void*>(masks.data[t]);
            }
            if constexpr (kScaled) {
              args.batch.ptrs[kAdamDepth + (kMask != kMaskNone)][slot] =
                  const_cast<float*>(row_scales.data[t]);
              args.row_lens[slot] = row_scales.row_lens[t];
            }
            args.batch.step_ptrs[slot] = device_steps ? steps.step_ptrs[t] : nullptr;
            args.batch.host_steps[slot] =
                device_steps ? 0.0f : static_cast<float>(steps.host_steps[t]);
          };
          auto go = [&](auto kernel) {
            return mt::pack_and_launch(args, n_tensors, numels, fill,
                                       [&](const Args& a, uint32_t blocks) {
                                         return launch(kernel, a, blocks, stream);
                                       });
          };
          return cfg.amsgrad ? go(ham_adam_kernel<P, S, kMirror, true, kMask, kScaled>)
                             : go(ham_adam_kernel<P, S, kMirror, false, kMask, kScaled>);
        });
      });
    });
  });
}

cudaError_t mirror_step_cuda(const MirrorStepConfig& cfg, DeviceScalars scalars,
                             ScalarType param_type, int64_t n_tensors, void* const* params,
                             const void* const* grads, const int64_t* numels,
                             cudaStream_t stream, Masks masks) {
  if (!valid_tensors(n_tensors, numels, {params, grads}) || !valid_mirror(cfg.mirror) ||
      !valid_masks(masks, n_tensors, numels)) {
    return cudaErrorInvalidValue;
  }
  if (param_type != ScalarType::Float32 && param_type != ScalarType::BFloat16 &&
      param_type != ScalarType::Float16) {
    return cudaErrorInvalidValue;
  }
  // α = β = 0: θ is unchanged (a float32 round trip is exact), nothing to launch.
  if (!cfg.mirror.enabled()) return cudaSuccess;

  MirrorOnlyParams p;
  p.common = make_common(cfg.lr, cfg.maximize, cfg.mirror, scalars);
  // The state type is irrelevant here; pass the param type so every param dtype dispatches.
  return dispatch_types(param_type, param_type, [&](auto p_tag, auto) {
    using P = typename decltype(p_tag)::type;
    return dispatch_mirror(cfg.mirror, [&](auto mirror_tag) -> cudaError_t {
      constexpr int kMirror = decltype(mirror_tag)::value;
      if constexpr (kMirror == kMirrorNone) {
        return cudaSuccess;  // unreachable: handled above
      } else {
        return dispatch_mask(masks.kind, [&](auto mask_tag) {
          constexpr int kMask = decltype(mask_tag)::value;
          using Args = MirrorArgsT<kMask != kMaskNone>;
          Args args;
          args.p = p;
          auto fill = [&](int slot, int64_t t) {
            args.batch.ptrs[0][slot] = params[t];
            args.batch.ptrs[1][slot] = const_cast<void*>(grads[t]);
            if constexpr (kMask != kMaskNone) {
              args.batch.ptrs[kMirrorDepth][slot] = const_cast<void*>(masks.data[t]);
            }
          };
          return mt::pack_and_launch(args, n_tensors, numels, fill,
                                     [&](const Args& a, uint32_t blocks) {
                                       return launch(mirror_step_kernel<P, kMirror, kMask>, a,
                                                     blocks, stream);
                                     });
        });
      }
    });
  });
}

}  // namespace cuda
}  // namespace sparseopt
