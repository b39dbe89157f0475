"""CUDA kernels of the block-sparse matmuls of a linear layer: the CUDA C++ kernels of ``_C``
(csrc/cuda/block_sparse.cu). Math: :mod:`sparseopt_kernels.reference.block_sparse`::

    dds   y  = x · Wᵀ           y[:, r]  = Σ_{k ∈ block-row r}  x[:, c_k] · values[k]ᵀ
    dsd   dx = dy · W           dx[:, c] = Σ_{j ∈ block-col c}  dy[:, r_j] · values[t_block_ids[j]]
    sdd   dW[k] = dy[:, r_k·b …]ᵀ · x[:, c_k·b …]            (only the stored blocks)

float32, float16 and bfloat16 (no float64); products accumulate in float32 and are rounded
once. ``allow_tf32`` lets float32 products use TF32 tensor cores. Asynchronous on the current
stream, no host synchronization (so the index values are not range-checked here; the layout
builder makes them consistent). Arguments were validated by the dispatcher; the binding makes
non-contiguous inputs contiguous and copies ones not 16-byte aligned (the kernels' vector loads).
"""
from __future__ import annotations

from .. import _native


def dds(x, values, row_offsets, col_indices, *, allow_tf32=False):
    return _native.native().dds_cuda(x, values, row_offsets, col_indices, allow_tf32)


def dsd(dy, values, col_offsets, t_row_indices, t_block_ids, *, allow_tf32=False):
    return _native.native().dsd_cuda(dy, values, col_offsets, t_row_indices, t_block_ids,
                                     allow_tf32)


def sdd(dy, x, row_indices, col_indices, block_size, *, allow_tf32=False):
    return _native.native().sdd_cuda(dy, x, row_indices, col_indices, block_size, allow_tf32)
