"""CPU kernels of the block-sparse matmuls of a linear layer: the C++ kernels of ``_C``
(csrc/cpu/block_sparse.cpp). Math: :mod:`sparseopt_kernels.reference.block_sparse`::

    dds   y  = x · Wᵀ           y[:, r]  = Σ_{k ∈ block-row r}  x[:, c_k] · values[k]ᵀ
    dsd   dx = dy · W           dx[:, c] = Σ_{j ∈ block-col c}  dy[:, r_j] · values[t_block_ids[j]]
    sdd   dW[k] = dy[:, r_k·b …]ᵀ · x[:, c_k·b …]            (only the stored blocks)

One small GEMM per block on torch's BLAS (MKL in the x86 CPU wheels), one GEMM per thread,
the tasks spread over all OpenMP threads. float32 and float64 run natively; float16 and
bfloat16 are computed in float32 and rounded once. ``allow_tf32`` means nothing on the CPU and
is ignored. Arguments were validated by the dispatcher; the binding also checks that the
indices are in range (the kernels index memory with them). Inputs may be non-contiguous.
"""
from __future__ import annotations

from .. import _native


def dds(x, values, row_offsets, col_indices, *, allow_tf32=False):
    return _native.native().dds_cpu(x, values, row_offsets, col_indices)


def dsd(dy, values, col_offsets, t_row_indices, t_block_ids, *, allow_tf32=False):
    return _native.native().dsd_cpu(dy, values, col_offsets, t_row_indices, t_block_ids)


def sdd(dy, x, row_indices, col_indices, block_size, *, allow_tf32=False):
    return _native.native().sdd_cpu(dy, x, row_indices, col_indices, block_size)
