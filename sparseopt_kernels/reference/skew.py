r"""Pure-PyTorch reference of the SparseOpt BN-skew correction (ALGORITHMS.md §3).

A weight ``W`` (a mask ``M`` of the same shape) is viewed as ``rows = W.shape[0]`` rows of
``L = W.numel() / rows`` contiguous elements (row i is output neuron / channel i). When the mask
changes::

    count_i = nnz(M[i]),   total = Σ_i count_i
    c_i     = sqrt(1 − s_i) / sqrt(1 − s_avg)           with s_i = 1 − count_i / L
            = sqrt(count_i · rows / total)              (s_avg = mean_i s_i)

computed in float64 and rounded once to float32, in this order: ``(count_i · rows) / total``,
then the square root (every step is correctly rounded, so all backends agree bit for bit);
``c = 0`` for every row when ``total = 0`` (nothing is active, nothing is updated).

Every step the gradient row i is multiplied by ``c_i`` (``g̃ = c ⊙ g``), either inside the fused
optimizer steps (``row_scales=`` of ``ham_sgd_`` / ``ham_adam_``) or by the standalone in-place
op ``row_scale_`` for optimizers we do not fuse::

    x[i, j] ← x[i, j] · c_i            where masks[i, j] (everywhere without a mask)
    x[i, j] ← +0                       where not masks[i, j]

in float32 arithmetic (float64 for float64 tensors), rounded to the tensor's dtype.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor


def rows_of(t: Tensor) -> int:
    """The number of rows of a weight (its first dimension; a 0-d tensor is one row)."""
    return t.shape[0] if t.dim() > 0 else 1


def row_view(t: Tensor) -> Tensor:
    """``t`` as a (rows, L) matrix."""
    rows = rows_of(t)
    return t.reshape(rows, t.numel() // rows if rows else 0)


def row_coefficients_(masks: List[Tensor], coefficients: List[Tensor]) -> None:
    for mask, out in zip(masks, coefficients):
        counts = row_view(mask).sum(dim=1, dtype=torch.float64)
        total = counts.sum()
        c = torch.sqrt(counts * rows_of(mask) / total.clamp(min=1))
        out.copy_(torch.where(total > 0, c, torch.zeros_like(c)))


def row_scale_(tensors: List[Tensor], scales: List[Tensor], *,
               masks: Optional[List[Tensor]] = None) -> None:
    for i, (x, c) in enumerate(zip(tensors, scales)):
        if x.numel() == 0:
            continue
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        rows = row_view(x)
        scaled = rows.to(ct) * c.to(ct).unsqueeze(1)
        if masks is not None:
            scaled = torch.where(row_view(masks[i]), scaled, torch.zeros_like(scaled))
        rows.copy_(scaled.to(x.dtype))


def scaled_grad(g: Tensor, row_scales: Optional[List[Tensor]], i: int) -> Tensor:
    """The fused steps' ``g̃ = c ⊙ g`` for tensor i (``g`` already unscaled, compute dtype)."""
    if row_scales is None or g.numel() == 0:
        return g
    return (row_view(g) * row_scales[i].to(g.dtype).unsqueeze(1)).view(g.shape)


__all__ = ["row_coefficients_", "row_scale_"]
