r"""Pure-PyTorch reference for masked Adam updates (NanoAdam, ALGORITHMS.md §6; dense masks §9).

This file is the numerical specification of the masked family; every kernel must match it.

**Chunked bottom-k selection** (``chunk_select``). The flattened tensor is cut into chunks of
``C = chunk_size`` consecutive elements (the last may be shorter, of length L). In each chunk the
``k(L) = clamp(floor(density·L + 1/2), 1, L)`` entries of smallest ``|θ|`` are selected (NaN counts
as larger than every number; ties go to the lower index). The result lists the selected entries
in ascending order, so chunk ``c`` owns positions ``[c·k(C), (c+1)·k(C))`` of the list and the
length ``n_sel = (n // C)·k(C) + k(n mod C)`` (0 when C divides n) is known on the host: nothing
in the selection or the step synchronizes with the device. Entries are int32 flat indices, or
with ``chunk_offsets=True`` int16 offsets within their chunk (``C ≤ 32768``): position ``j`` lies in
chunk ``j // k(C)``, so its flat index is ``(j // k(C))·C + offset``.

**Compact masked Adam step** (``compact_adam_``). Moments ``m, v`` exist for the selected entries
only (length ``n_sel``, float32 or bfloat16). With ``i = index[j]``, ``g = grad[i]`` (divided by
``grad_scale``, negated when maximizing) and the tensor's step ``t`` (incremented by the op)::

    m[j] = β₁·m[j] + (1 − β₁)·g
    v[j] = β₂·v[j] + (1 − β₂)·g²
    u    = (m[j] / (1 − β₁ᵗ)) / (sqrt(v[j]) / sqrt(1 − β₂ᵗ) + ε)       (bias corrections in float64)
    θ[i] = θ[i]·(1 − η·λ) − η·u                                      (decoupled weight decay)

Unselected entries are not touched. With ``found_inf`` set nothing is modified.

**Carry-over at a refresh** (``remap_compact_state``): a moment of an entry that stays selected is
carried to its new position; new entries start at zero.

**Dense-mask steps** are the ``masks`` argument of the fused steps (``ham_sgd_``, ``ham_adam_``,
``mirror_step_`` in :mod:`.mirror`): ``masks[i]`` is a bool tensor shaped like ``params[i]``, or a
bit-packed uint8 tensor of ``ceil(numel / 8)`` bytes (element e is bit ``e % 8`` of byte ``e // 8``,
``numpy.packbits(..., bitorder="little")``). Where the mask is 0 the param and all its state are
left bit-identical (pruned zeros stay exactly zero); elsewhere the step is the unmasked one.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .mirror import _advance_steps, _commit, _unscale


def chunk_k(density: float, length: int) -> int:
    """Entries selected in a chunk of ``length`` elements."""
    if length <= 0:
        return 0
    return min(length, max(1, int(density * length + 0.5)))


def num_selected(numel: int, density: float, chunk_size: int) -> int:
    full = numel // chunk_size  # (no divmod: numel may be a SymInt under torch.compile)
    return full * chunk_k(density, chunk_size) + chunk_k(density, numel - full * chunk_size)


def selection_keys(values: Tensor) -> Tensor:
    """|θ| as int64 sort keys that order NaN after every number."""
    mag = values.detach().abs().float()
    keys = mag.view(torch.int32).to(torch.int64)  # non-negative floats order like their bits
    return keys


def chunk_select(values: List[Tensor], density: float, chunk_size: int,
                 chunk_offsets: bool = False) -> List[Tensor]:
    out = []
    for x in values:
        n = x.numel()
        keys = selection_keys(x.reshape(-1))
        full = n // chunk_size
        k_full = chunk_k(density, chunk_size)
        parts = []
        if full:
            block = keys[: full * chunk_size].view(full, chunk_size)
            order = torch.sort(block, dim=1, stable=True).indices[:, :k_full]
            picked = torch.sort(order, dim=1).values
            base = torch.arange(full, device=x.device).unsqueeze(1) * chunk_size
            parts.append((picked if chunk_offsets else picked + base).reshape(-1))
        rest = n - full * chunk_size
        if rest:
            tail = keys[full * chunk_size:]
            order = torch.sort(tail, stable=True).indices[: chunk_k(density, rest)]
            picked = torch.sort(order).values
            parts.append(picked if chunk_offsets else picked + full * chunk_size)
        idx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=x.device)
        out.append(idx.to(torch.int16 if chunk_offsets else torch.int32))
    return out


def global_indices(indices: Tensor, density: float, chunk_size: int) -> Tensor:
    """Flat int64 indices of a selection given as int32 indices or int16 chunk offsets."""
    if indices.dtype != torch.int16:
        return indices.to(torch.int64)
    k_full = chunk_k(density, chunk_size)
    chunk = torch.arange(indices.numel(), device=indices.device) // k_full
    return chunk * chunk_size + indices.to(torch.int64)


def remap_compact_state(old_indices: Tensor, new_indices: Tensor, old_state: Tensor, *,
                        old_density: float, new_density: float, chunk_size: int) -> Tensor:
    """Moments of entries that stay selected move to their new position; new entries get 0."""
    old = global_indices(old_indices, old_density, chunk_size)
    new = global_indices(new_indices, new_density, chunk_size)
    if old.numel() == 0:
        return torch.zeros(new.numel(), dtype=old_state.dtype, device=old_state.device)
    pos = torch.searchsorted(old, new).clamp_(max=old.numel() - 1)
    kept = old[pos] == new
    return torch.where(kept, old_state[pos], torch.zeros((), dtype=old_state.dtype,
                                                          device=old_state.device))


def compact_adam_(params: List[Tensor], grads: List[Tensor], indices: List[Tensor],
                  exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                  state_steps: List[Tensor], *, density: float, chunk_size: int, lr: float,
                  lr_tensor: Optional[Tensor] = None, beta1: float = 0.9, beta2: float = 0.999,
                  eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False,
                  grad_scale: Optional[Tensor] = None,
                  found_inf: Optional[Tensor] = None) -> None:
    _advance_steps(state_steps, found_inf)
    for p, g_in, idx, m_, v_, s in zip(params, grads, indices, exp_avgs, exp_avg_sqs,
                                       state_steps):
        ct = torch.float64 if p.dtype == torch.float64 else torch.float32
        flat = p.view(-1)
        where = global_indices(idx, density, chunk_size)
        theta = flat[where].to(ct)
        g = _unscale(g_in.reshape(-1)[where].to(ct), grad_scale, maximize)
        eta = lr_tensor.to(device=p.device, dtype=ct) if lr_tensor is not None else lr
        step = s.to(device=p.device, dtype=torch.float64)
        bc1 = (1 - beta1 ** step).to(ct)
        bc2_sqrt = torch.sqrt(1 - beta2 ** step).to(ct)
        m = beta1 * m_.to(ct) + (1 - beta1) * g
        v = beta2 * v_.to(ct) + (1 - beta2) * g * g
        u = (m / bc1) / (torch.sqrt(v) / bc2_sqrt + eps)
        if weight_decay != 0:
            theta = theta * (1 - eta * weight_decay)
        theta = theta - eta * u
        _commit(found_inf, m_, m)
        _commit(found_inf, v_, v)
        new = theta.to(p.dtype)
        if found_inf is not None:
            new = torch.where(found_inf.to(p.device) != 0, flat[where], new)
        flat[where] = new


__all__ = ["chunk_k", "num_selected", "chunk_select", "global_indices", "remap_compact_state",
           "compact_adam_"]
