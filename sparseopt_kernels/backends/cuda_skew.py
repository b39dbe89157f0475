"""CUDA kernels of SparseOpt's BN-skew correction: the CUDA C++ kernels of ``_C`` (csrc/cuda).
Math: :mod:`sparseopt_kernels.reference.skew`::

    c_i = float32(sqrt(count_i · rows / total))     (0 when total = 0)
    x[i, j] ← x[i, j] · c_i,  +0 where not masks[i, j]

Both run asynchronously on the current stream with no host synchronization (the per-row counts
and the totals stay on the device, in a scratch tensor the binding allocates). Arguments were
validated by the dispatcher.
"""
from __future__ import annotations

from .. import _native


def row_coefficients_(masks, coefficients):
    _native.native().row_coefficients_cuda(masks, coefficients)


def row_scale_(tensors, scales, *, masks=None):
    _native.native().row_scale_cuda(tensors, scales, masks)
