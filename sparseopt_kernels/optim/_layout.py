"""Params stored in a dense layout other than row-major (channels_last conv weights, transposed
weights): the kernels take them, their gradients and their state as views of their memory in
memory order. Elementwise steps give the same values in any element order; NanoAdam's chunks
follow the memory order (see nanoadam.py).

A dense tensor (non-overlapping, no gaps) occupies ``numel`` consecutive elements of its storage,
so ``as_strided`` gives a contiguous view of them; tensors of one shape with the same memory
order place every element at the same offset, so an elementwise kernel over those views is the
step on the tensors themselves.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .. import _checks


def memory_order(t: Tensor) -> Tuple[int, ...]:
    """The dims of size > 1 from the outermost (largest stride) to the innermost."""
    dims = [d for d in range(t.dim()) if t.shape[d] > 1]
    return tuple(sorted(dims, key=lambda d: -t.stride(d)))


def is_dense(t: Tensor) -> bool:
    """Non-overlapping and without gaps (contiguous in some dim order)."""
    if t.is_contiguous():
        return True
    expected = 1
    for d in reversed(memory_order(t)):
        if t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def flat(t: Tensor) -> Tensor:
    """A contiguous view of a dense ``t``'s memory: ``t`` itself when contiguous, else 2-D
    ``(rows, numel / rows)`` when dim 0 is the outermost (so row ``i`` is still ``t[i]``, as
    SparseOpt's per-row scales need; channels_last weights are such), else 1-D. A tensor that
    is not dense is returned as it is, for the op's checks to refuse."""
    if t.is_contiguous() or not is_dense(t):
        return t
    n = t.numel()
    if t.dim() >= 2 and t.shape[0] > 0 and t.stride(0) * t.shape[0] == n:
        return t.as_strided((t.shape[0], n // t.shape[0]), (n // t.shape[0], 1))
    return t.as_strided((n,), (1,))


def in_layout_of(t: Tensor, like: Tensor) -> Tensor:
    """``t`` (shaped like ``like``) with ``like``'s memory layout: ``t`` itself when it already
    has it, else a copy (a gradient autograd laid out differently, state loaded from a model in
    another memory format)."""
    if t.is_contiguous() and like.is_contiguous():
        return t
    if is_dense(t) and memory_order(t) == memory_order(like):
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def step_views(params: List[Tensor], grads: List[Tensor], states: List[Dict],
               keys: Sequence[str]) -> Tuple[List[Tensor], List[Tensor], Dict[str, List[Tensor]]]:
    """``(params, grads, {key: [state[key], ...]})`` as the kernels take them.

    When every tensor is contiguous (one C++ summary: the usual case) they are returned as they
    are. Otherwise the grads and the state tensors are first moved to their param's layout (the
    state in place, in ``states``, so that happens once) and everything is returned as memory
    views (:func:`flat`). ``states`` may be empty when ``keys`` is.
    """
    per_key = {k: [s[k] for s in states] for k in keys}
    tensors = [t for lst in (params, grads, *per_key.values()) for t in lst]
    summary = _checks._summary(tensors, (), _checks.ANY)
    if summary[2] if summary is not None else all(t.is_contiguous() for t in tensors):
        return params, grads, per_key
    for s, p in zip(states, params):
        for k in keys:
            s[k] = in_layout_of(s[k], p)
    return ([flat(p) for p in params], [flat(in_layout_of(g, p)) for g, p in zip(grads, params)],
            {k: [flat(s[k]) for s in states] for k in keys})
