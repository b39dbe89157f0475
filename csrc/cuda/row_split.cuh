// Row lookup of the multi-tensor CUDA kernels that scale rows (SparseOpt's row_scale_ and the
// row-scaled fused steps): which row of a tensor each element of a block's chunk lies in,
// without a 64-bit division per element. Host-callable too, for host-side checks.
#pragma once

#include <cstdint>

#include "multi_tensor.cuh"

namespace sparseopt {
namespace cuda {

// Rows of a chunk. Element e of a tensor lies in row e / L. A block splits its first element
// `begin` once in 64 bits: row0 = begin / L, rem0 = begin mod L. The element at chunk offset off
// (< kChunkElems = 2^16) then lies in row row0 + (rem0 + off) / L. When L < 2^16, n = rem0 + off
// < 2^17 and the quotient is n · mul >> shift with shift = 31 + ceil(log2 L) and
// mul = ceil(2^shift / L) < 2^32: writing mul = (2^shift + e) / L with 0 <= e < L,
// n · mul / 2^shift = n / L + n·e / (L·2^shift), whose floor is n / L while n·e < 2^shift, i.e.
// for every n < 2^31. Rows of L >= 2^16 elements change at most once in a chunk, at offset
// next = L − rem0; they are split as rows of 2^16 elements with rem0 = 2^16 − next (0 when
// next >= 2^16), which puts the row change at the same offset and no other one in the chunk.
struct RowSplit {
  const float* c;  // the scale of the chunk's first row (scales + row0)
  uint32_t rem0;
  uint32_t len;    // L, or 2^16 for longer rows
  uint32_t mul;
  uint32_t shift;
};

SPARSEOPT_HD RowSplit row_split(const float* scales, int64_t begin, int64_t row_len) {
  const int64_t row0 = begin / row_len;
  const int64_t rem0 = begin - row0 * row_len;
  RowSplit s;
  s.c = scales + row0;
  if (row_len < mt::kChunkElems) {
    s.rem0 = static_cast<uint32_t>(rem0);
    s.len = static_cast<uint32_t>(row_len);
  } else {
    const int64_t next = row_len - rem0;
    s.rem0 = next < mt::kChunkElems ? static_cast<uint32_t>(mt::kChunkElems - next) : 0u;
    s.len = static_cast<uint32_t>(mt::kChunkElems);
  }
  uint32_t log2_len = 0;
  while ((1u << log2_len) < s.len) ++log2_len;
  s.shift = 31 + log2_len;
  s.mul = static_cast<uint32_t>(((uint64_t{1} << s.shift) + s.len - 1) / s.len);
  return s;
}

// Row of chunk offset n − rem0, counted from the chunk's first row (exact for n < 2^31).
SPARSEOPT_HD uint32_t row_quotient(const RowSplit& s, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(n) * s.mul) >> s.shift);
}

// Scales are read-only for the kernel's lifetime: the non-coherent (texture) path on the device.
SPARSEOPT_HD float load_scale(const float* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}

// The scales c[row] of the N elements at chunk offset off (all inside the tensor). With L >= N
// the vector holds at most one row change, before element in_row: one load, and a second one
// only when the change is inside the vector (then the next row exists). Shorter rows take one
// quotient and one load per element. (N <= 8: the loops unroll fully.)
template <int N>
SPARSEOPT_HD void row_scales_of(const RowSplit& s, int off, float (&sc)[N]) {
  const uint32_t n = s.rem0 + static_cast<uint32_t>(off);
  const uint32_t q = row_quotient(s, n);
  if constexpr (N == 1) {
    sc[0] = load_scale(s.c + q);
  } else if (s.len >= static_cast<uint32_t>(N)) {
    const uint32_t in_row = s.len - (n - q * s.len);  // elements of the row from off on, >= 1
    const float v0 = load_scale(s.c + q);
    const float v1 = in_row < static_cast<uint32_t>(N) ? load_scale(s.c + q + 1) : v0;
    for (int k = 0; k < N; ++k) sc[k] = static_cast<uint32_t>(k) < in_row ? v0 : v1;
  } else {
    for (int k = 0; k < N; ++k) {
      sc[k] = load_scale(s.c + row_quotient(s, n + static_cast<uint32_t>(k)));
    }
  }
}

}  // namespace cuda
}  // namespace sparseopt
