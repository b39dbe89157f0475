"""CPU kernels of SparseOpt's BN-skew correction: the C++ kernels of ``_C``
(csrc/cpu/row_scale.cpp). Math: :mod:`sparseopt_kernels.reference.skew`::

    c_i = float32(sqrt(count_i · rows / total))     (0 when total = 0)
    x[i, j] ← x[i, j] · c_i,  +0 where not masks[i, j]

The coefficients are bit for bit the reference's; arguments were validated by the dispatcher.
"""
from __future__ import annotations

from .. import _native


def row_coefficients_(masks, coefficients):
    _native.native().row_coefficients_cpu(masks, coefficients)


def row_scale_(tensors, scales, *, masks=None):
    _native.native().row_scale_cpu(tensors, scales, masks)
