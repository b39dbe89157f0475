r"""Diagnostic of the gradient skew that BatchNorm causes in sparse layers (ALGORITHMS.md §3).

For each masked weight, row i with sparsity ``s_i`` (a fraction ``1 − s_i`` of its weights
active) the gradient RMS over the row's active weights is measured on one batch::

    r_i = sqrt(mean_{j active} g_ij²)

and the exponent ``k`` of the power law ``r_i ∝ (1 − s_i)^k`` is fitted by least squares on
``log r_i`` against ``log(1 − s_i)`` over the rows with at least one active weight and a non-zero gradient. Behind a
BatchNorm ``k ≈ −1/2`` (sparser rows get larger gradients); without one ``k ≈ 0``; after the
SparseOpt correction (``r_i · c_i``) ``k ≈ 0``. The fit needs rows of different sparsity: with
every row equally sparse the exponent is NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Sequence

import torch
from torch import Tensor, nn

from .. import functional as F
from .masks import SparseMasks


@dataclass
class SkewReport:
    """Per-row measurements of one masked weight."""

    row_sparsity: Tensor         # s_i, float64, one per row with an active weight
    grad_rms: Tensor             # r_i
    corrected_grad_rms: Tensor   # c_i · r_i
    exponent: float              # k before the correction
    corrected_exponent: float    # k after it

    def __str__(self) -> str:
        return (f"rows={self.row_sparsity.numel()} sparsity {self.row_sparsity.min():.2f}–"
                f"{self.row_sparsity.max():.2f}: exponent {self.exponent:+.3f} → "
                f"{self.corrected_exponent:+.3f} corrected")


def power_law_exponent(x: Tensor, y: Tensor) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN when ``x`` does not vary)."""
    lx, ly = x.double().log(), y.double().log()
    dx = lx - lx.mean()
    var = float((dx * dx).sum())
    if not var > 1e-12:
        return math.nan
    return float((dx * (ly - ly.mean())).sum()) / var


def gradient_skew(model: nn.Module, masks: SparseMasks, batch: Sequence,
                  loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Dict[str, SkewReport]:
    """One forward/backward pass of ``loss_fn(model(inputs), targets)`` on ``batch = (inputs,
    targets)``, and a :class:`SkewReport` per masked weight, keyed by its parameter name.

    The masks are applied to the weights' gradients (pruned weights do not count). The model
    runs in its current mode (use ``model.train()``: the skew comes from BatchNorm's batch
    statistics); its buffers (BatchNorm running statistics) and the parameters' ``.grad`` are
    restored afterwards, so training is not disturbed.
    """
    if not isinstance(masks, SparseMasks):
        raise TypeError(f"masks must be a SparseMasks, got {type(masks).__name__}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError("batch must be an (inputs, targets) pair")
    names = {id(p): n for n, p in model.named_parameters()}
    for i, p in enumerate(masks.params):
        if id(p) not in names:
            raise ValueError(f"masks.params[{i}] (shape {tuple(p.shape)}) is not a parameter "
                             "of model")
    buffers = [(b, b.clone()) for b in model.buffers()]
    saved_grads = [(p, p.grad) for p in model.parameters()]
    try:
        for p in model.parameters():
            p.grad = None
        inputs, targets = batch
        with torch.enable_grad():
            loss_fn(model(inputs), targets).backward()
        grads = [p.grad for p in masks.params]
    finally:
        for b, saved in buffers:
            b.copy_(saved)
        for p, g in saved_grads:
            p.grad = g
    reports: Dict[str, SkewReport] = {}
    coefficients = F.row_coefficients(list(masks.masks))
    for p, mask, grad, c in zip(masks.params, masks.masks, grads, coefficients):
        if grad is None:
            continue
        rows = mask.reshape(mask.shape[0], -1)
        count = rows.sum(dim=1).double()
        g2 = (grad.detach().double().reshape(rows.shape) ** 2 * rows).sum(dim=1)
        keep = (count > 0) & (g2 > 0)  # rows without active weights (or gradient) say nothing
        rms = (g2[keep] / count[keep]).sqrt()
        density = count[keep] / rows.shape[1]
        corrected = rms * c.double()[keep]
        reports[names[id(p)]] = SkewReport(
            row_sparsity=1 - density, grad_rms=rms, corrected_grad_rms=corrected,
            exponent=power_law_exponent(density, rms),
            corrected_exponent=power_law_exponent(density, corrected))
    return reports


__all__ = ["gradient_skew", "SkewReport", "power_law_exponent"]
