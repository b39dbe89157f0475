"""Tolerances and comparison helpers, reusable by downstream tests.

One table of tolerances per dtype. A low-precision kernel is judged against the error that the
same-dtype PyTorch computation makes against float64 (it may be at most ~2× that), and failure
messages name the worst element and the fraction of elements out of tolerance.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# (rtol, atol) of a fused kernel against the float64 reference, after a few optimizer steps.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (2e-3, 1e-5),
}


def tolerance(dtype: torch.dtype):
    return TOLERANCES[dtype]


def describe_mismatch(actual: Tensor, expected: Tensor, rtol: float, atol: float) -> str:
    a = actual.detach().double().flatten().cpu()
    e = expected.detach().double().flatten().cpu()
    err = (a - e).abs()
    bound = atol + rtol * e.abs()
    bad = ~(err <= bound)  # NaN counts as bad
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    bad |= nan_mismatch
    bad &= ~(torch.isnan(a) & torch.isnan(e))
    if not bad.any():
        return ""
    excess = torch.where(bad, (err - bound).nan_to_num(float("inf")), torch.zeros_like(err))
    worst = int(excess.argmax())
    return (f"{int(bad.sum())}/{a.numel()} elements ({100.0 * float(bad.float().mean()):.3g}%) "
            f"outside rtol={rtol:g}, atol={atol:g}; worst at flat index {worst}: got "
            f"{a[worst].item()!r}, expected {e[worst].item()!r} (|diff| {err[worst].item():.3g})")


def assert_close(actual: Tensor, expected: Tensor, *, rtol: Optional[float] = None,
                 atol: Optional[float] = None, msg: str = "") -> None:
    """Like torch.testing.assert_close with the dtype table and an xformers-style message."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    d_rtol, d_atol = tolerance(actual.dtype)
    report = describe_mismatch(actual, expected, d_rtol if rtol is None else rtol,
                               d_atol if atol is None else atol)
    if report:
        raise AssertionError(f"{msg} {report}".strip())


def assert_within_reference_error(actual: Tensor, reference_same_dtype: Tensor,
                                  exact: Tensor, factor: float = 2.0, floor: float = 0.0,
                                  msg: str = "") -> None:
    """A low-precision result may err against ``exact`` (float64) at most ``factor`` times as
    much as the same-dtype PyTorch computation does (max-abs error, plus ``floor``)."""
    ours = (actual.double() - exact.double()).abs().max().item()
    theirs = (reference_same_dtype.double() - exact.double()).abs().max().item()
    if not ours <= factor * theirs + floor:
        raise AssertionError(f"{msg} max error {ours:.3g} exceeds {factor}× the same-dtype "
                             f"reference's {theirs:.3g} (+{floor:g})".strip())
