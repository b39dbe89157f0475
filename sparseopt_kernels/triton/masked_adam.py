r"""Triton kernels for the masked Adam family (NanoAdam): chunked bottom-k selection and the
compact Adam step.

Same ops, signatures and semantics as :mod:`sparseopt_kernels.reference.masked` (the numerical
specification).

Chunked bottom-k selection (``chunk_select``)
---------------------------------------------
The flattened tensor is cut into chunks of ``C = chunk_size`` elements (the last may be shorter,
length L); each chunk selects its ``k(L) = clamp(floor(density·L + 1/2), 1, L)`` entries of
smallest ``|θ|`` (NaN above every number, ties to the lower index), listed in ascending order.
Chunk ``c`` owns positions ``[c·k(C), c·k(C) + k(L))`` of the output, so every chunk writes its
part independently and the output length is known on the host.

One program handles one chunk (``C`` ≤ ``MAX_CHUNK``, padded to a power of two):

    key   = bits of float32(|θ|) as int32: non-negative floats order like their bit patterns,
            and every NaN (0x7F800001…0x7FFFFFFF once the sign is cleared) lies above +inf
            (0x7F800000) — the same keys as ``reference.masked.selection_keys``.
    T     = the k-th smallest key, found without sorting by a 31-step bitwise binary search:
            T is the largest value with #{key < T} < k, built from the top bit down
            (set bit b when #{key < T | 2ᵇ} < k; each count is one tl.sum).
    pick  = key < T, plus the first k − #{key < T} entries with key == T in index order (the
            tie-break; tl.cumsum ranks the ties), exactly k entries in all.
    out[c·k(C) + (exclusive prefix count of pick)] = flat index (int32) or offset in the chunk
            (int16, ``chunk_offsets=True``).

Compact Adam step (``compact_adam_``)
-------------------------------------
Moments exist for the selected entries only. For position ``j`` of the compact list, with
``i = index[j]`` (or ``(j // k(C))·C + offset[j]`` for int16 offsets), ``g = grad[i]`` divided by
``grad_scale`` and negated when maximizing, and the tensor's step ``t`` (advanced by the op)::

    m[j] = β₁·m[j] + (1 − β₁)·g
    v[j] = β₂·v[j] + (1 − β₂)·g²
    u    = (m[j] / (1 − β₁ᵗ)) / (sqrt(v[j]) / sqrt(1 − β₂ᵗ) + ε)
    θ[i] = θ[i]·(1 − η·λ) − η·u                              (decoupled weight decay)

Each program gathers BLOCK positions, updates them in float32 registers and scatters them back;
unselected entries are never touched. Multi-tensor launches, device-side scalars (lr_tensor,
grad_scale, found_inf, step counters), bias corrections via −expm1(t·ln β), IEEE div/sqrt and
round-to-nearest-even bfloat16 stores are shared with :mod:`.mirror_step` (see its notes).
``found_inf`` set: every program returns before touching memory and the counters do not move,
without a host synchronization.

Indices are trusted: an index outside its tensor would be an out-of-bounds access (checking
it would need a device→host synchronization). ``chunk_select`` produces valid ones.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

from ..reference.masked import chunk_k, num_selected
from ..reference.mirror import _advance_steps
from . import FP_FUSION
from .mirror_step import (_BLOCK, _DTYPE_CODES, _NUM_WARPS, _bias_corrections, _check_device,
                          _check_float, _chunk, _common, _contiguous, _dense_steps, _load_grad,
                          _log, _or, _steps_in_table, _tables, _to_storage, _typed_ptr)

# Largest chunk one program selects from: the whole chunk's keys sit in registers (16384 int32
# keys over 16 warps = 32 registers per thread), and the 31 counting passes re-read them there.
MAX_CHUNK = 16384

_SELECT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_MOMENT_DTYPES = (torch.float32, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def _chunk_select_kernel(table, blocks, chunk_size, k_full,
                         V_CODE: tl.constexpr, OFFSETS: tl.constexpr, NCOL: tl.constexpr,
                         BLOCK: tl.constexpr):
    # Table row per tensor: [values, out, numel, k of the last chunk]; blocks: (tensor, start).
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(blocks + 2 * pid)
    start = tl.load(blocks + 2 * pid + 1)
    row = table + t * NCOL
    v_ptr = _typed_ptr(tl.load(row), V_CODE)
    numel = tl.load(row + 2)
    length = tl.minimum(numel - start, chunk_size)
    # Only the last chunk of a tensor can be short, and its k differs (k(L) ≠ k(C) in general).
    k = tl.where(length == chunk_size, k_full, tl.load(row + 3)).to(tl.int32)

    lane = tl.arange(0, BLOCK)
    valid = lane < length
    x = tl.load(v_ptr + start + lane, mask=valid, other=0.0).to(tl.float32)
    # |x| by clearing the sign bit (also for NaN, whose payload then orders it like torch does).
    key = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF

    # T = the k-th smallest key = the largest T with #{key < T} < k, one bit at a time. Padding
    # lanes are excluded from every count.
    T = tl.full([], 0, tl.int32)
    for i in tl.static_range(31):
        cand = T | (1 << (30 - i))
        n_below = tl.sum(((key < cand) & valid).to(tl.int32), axis=0)
        T = tl.where(n_below < k, cand, T)

    below = (key < T) & valid
    n_below = tl.sum(below.to(tl.int32), axis=0)
    tie = (key == T) & valid
    # Ties go to the lower index: keep the first k − n_below of them (inclusive rank ≤ quota).
    pick = below | (tie & (tl.cumsum(tie.to(tl.int32), axis=0) <= k - n_below))
    # Output slot = chunk base + number of picked lanes before this one (ascending order).
    pos = tl.cumsum(pick.to(tl.int32), axis=0) - 1
    base = (start // chunk_size) * k_full
    if OFFSETS:
        out_ptr = _typed_ptr(tl.load(row + 1), 6)  # int16 offsets within the chunk
        tl.store(out_ptr + base + pos, lane.to(tl.int16), mask=pick)
    else:
        out_ptr = _typed_ptr(tl.load(row + 1), 5)  # int32 flat indices
        tl.store(out_ptr + base + pos, (start + lane).to(tl.int32), mask=pick)


@triton.jit
def _compact_adam_kernel(table, blocks, steps, lr, lr_ptr, grad_scale_ptr, found_inf_ptr,
                         chunk_size, k_full,
                         beta1, one_minus_beta1, log_beta1, beta2, one_minus_beta2, log_beta2,
                         weight_decay, eps,
                         P_CODE: tl.constexpr, G_CODE: tl.constexpr, I_CODE: tl.constexpr,
                         S_CODE: tl.constexpr, STEP_CODE: tl.constexpr,
                         STEPS_IN_TABLE: tl.constexpr, OFFSETS: tl.constexpr,
                         HAS_LR_TENSOR: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                         HAS_FOUND_INF: tl.constexpr, HAS_WEIGHT_DECAY: tl.constexpr,
                         MAXIMIZE: tl.constexpr, NCOL: tl.constexpr, BLOCK: tl.constexpr):
    # Table row per tensor: [param, grad, n_sel, indices, exp_avg, exp_avg_sq, (step)];
    # blocks: (tensor, start) over the compact positions.
    if HAS_FOUND_INF:
        if tl.load(found_inf_ptr) != 0:
            return
    t, row, j, mask = _chunk(table, blocks, NCOL, BLOCK)
    p_ptr = _typed_ptr(tl.load(row), P_CODE)
    g_ptr = _typed_ptr(tl.load(row + 1), G_CODE)
    i_ptr = _typed_ptr(tl.load(row + 3), I_CODE)
    m_ptr = _typed_ptr(tl.load(row + 4), S_CODE)
    v_ptr = _typed_ptr(tl.load(row + 5), S_CODE)
    if HAS_LR_TENSOR:
        lr = tl.load(lr_ptr).to(tl.float32)

    bc1, bc2_sqrt = _bias_corrections(row, steps, t, log_beta1, log_beta2, NCOL, STEP_CODE,
                                      STEPS_IN_TABLE)

    # Flat element index (int64: tensors may exceed 2³¹ elements with int16 offsets).
    idx = tl.load(i_ptr + j, mask=mask, other=0).to(tl.int64)
    if OFFSETS:
        idx = (j // k_full) * chunk_size + idx

    theta = tl.load(p_ptr + idx, mask=mask).to(tl.float32)
    g = _load_grad(g_ptr, idx, mask, grad_scale_ptr, HAS_GRAD_SCALE, MAXIMIZE)
    m = beta1 * tl.load(m_ptr + j, mask=mask).to(tl.float32) + one_minus_beta1 * g
    v = beta2 * tl.load(v_ptr + j, mask=mask).to(tl.float32) + one_minus_beta2 * g * g
    u = tl.div_rn(tl.div_rn(m, bc1), tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps)
    if HAS_WEIGHT_DECAY:
        theta = theta * (1.0 - lr * weight_decay)
    theta = theta - lr * u

    tl.store(m_ptr + j, _to_storage(m, S_CODE), mask=mask)
    tl.store(v_ptr + j, _to_storage(v, S_CODE), mask=mask)
    tl.store(p_ptr + idx, _to_storage(theta, P_CODE), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers (same signatures and semantics as the reference)
# ---------------------------------------------------------------------------------------------

def _check_density_chunk(density: float, chunk_size: int) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _select_warps(block: int) -> int:
    # Keep ~32 keys per thread: enough work per thread, registers to spare.
    return max(1, min(16, block // 1024))


def chunk_select(values: List[Tensor], density: float, chunk_size: int,
                 chunk_offsets: bool = False) -> List[Tensor]:
    _check_density_chunk(density, chunk_size)
    if chunk_size > MAX_CHUNK:
        raise ValueError(f"the Triton chunk_select handles chunk_size <= {MAX_CHUNK} (one chunk "
                         f"per program, held in registers), got {chunk_size}; use a smaller "
                         "chunk or another backend")
    values = _contiguous(values)
    out_dtype = torch.int16 if chunk_offsets else torch.int32
    k_full = chunk_k(density, chunk_size)
    outs: List[Tensor] = []
    groups: Dict[tuple, List[int]] = {}
    for i, x in enumerate(values):
        if x.dtype not in _SELECT_DTYPES:
            raise TypeError(f"values[{i}] has dtype {x.dtype}; expected a floating dtype")
        n = x.numel()
        if n >= 2 ** 31:
            raise ValueError(f"values[{i}] has {n} elements; int32 indices address at most "
                             "2**31 - 1")
        # The output length is known on the host (no synchronization): every slot is written.
        outs.append(torch.empty(num_selected(n, density, chunk_size), dtype=out_dtype,
                                device=x.device))
        if n > 0:
            groups.setdefault((x.device, x.dtype), []).append(i)

    block = triton.next_power_of_2(chunk_size)
    for (device, dtype), idx in groups.items():
        _check_device(device)
        rows = []
        for i in idx:
            n = values[i].numel()
            rest = n % chunk_size  # length of a short last chunk (0: all chunks are full)
            k_last = chunk_k(density, rest) if rest else k_full
            rows.append((values[i].data_ptr(), outs[i].data_ptr(), n, k_last))
        # One program per chunk. (The outputs are new every call, so are the tables.)
        table, blocks, n_programs = _tables(device, rows, block=chunk_size)
        _chunk_select_kernel[(n_programs,)](
            table, blocks, chunk_size, k_full,
            V_CODE=_DTYPE_CODES[dtype], OFFSETS=bool(chunk_offsets), NCOL=4, BLOCK=block,
            enable_fp_fusion=FP_FUSION, num_warps=_select_warps(block))
    return outs


def compact_adam_(params: List[Tensor], grads: List[Tensor], indices: List[Tensor],
                  exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                  state_steps: List[Tensor], *, density: float, chunk_size: int, lr: float,
                  lr_tensor: Optional[Tensor] = None, beta1: float = 0.9, beta2: float = 0.999,
                  eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False,
                  grad_scale: Optional[Tensor] = None,
                  found_inf: Optional[Tensor] = None) -> None:
    _check_density_chunk(density, chunk_size)
    n = len(params)
    for name, lst in (("grads", grads), ("indices", indices), ("exp_avgs", exp_avgs),
                      ("exp_avg_sqs", exp_avg_sqs), ("state_steps", state_steps)):
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} tensors, params has {n}")
    grads, indices = _contiguous(grads), _contiguous(indices)

    # Validate everything before touching the step counters.
    groups: Dict[tuple, List[int]] = {}
    for i, (p, g, idx) in enumerate(zip(params, grads, indices)):
        _check_float("params", i, p)
        _check_float("grads", i, g)
        if g.shape != p.shape or g.device != p.device:
            raise ValueError(f"grads[{i}] must be shaped and placed like params[{i}]")
        if not p.is_contiguous():
            raise ValueError(f"params[{i}] must be contiguous")
        want = num_selected(p.numel(), density, chunk_size)
        if idx.dtype not in (torch.int32, torch.int16) or idx.dim() != 1 \
                or idx.numel() != want or idx.device != p.device:
            raise ValueError(f"indices[{i}] must be a 1-D int32 (or int16 chunk-offset) tensor "
                             f"of {want} entries on {p.device}, got {idx.dtype} of shape "
                             f"{tuple(idx.shape)} on {idx.device}")
        if idx.dtype == torch.int16 and chunk_size > 32768:
            raise ValueError(f"int16 chunk offsets need chunk_size <= 32768, got {chunk_size}")
        for name, lst in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
            s = lst[i]
            if s.dtype not in _MOMENT_DTYPES:
                raise TypeError(f"{name}[{i}] has dtype {s.dtype}; compact moments are float32 "
                                "or bfloat16")
            if s.dim() != 1 or s.numel() != want or not s.is_contiguous() \
                    or s.device != p.device:
                raise ValueError(f"{name}[{i}] must be a contiguous 1-D tensor of {want} entries "
                                 f"on {p.device}, got shape {tuple(s.shape)}")
        if exp_avgs[i].dtype != exp_avg_sqs[i].dtype:
            raise TypeError(f"exp_avgs[{i}] and exp_avg_sqs[{i}] must share a dtype")
        if want > 0:
            key = (p.device, p.dtype, g.dtype, idx.dtype, exp_avgs[i].dtype)
            groups.setdefault(key, []).append(i)

    _advance_steps(state_steps, found_inf)  # like torch.optim: before the bias corrections

    k_full = chunk_k(density, chunk_size)
    for (device, p_dtype, g_dtype, i_dtype, s_dtype), idx in groups.items():
        _check_device(device)
        steps = [state_steps[i] for i in idx]
        in_table = _steps_in_table(steps, device)
        rows = []
        for i in idx:
            row = (params[i].data_ptr(), grads[i].data_ptr(), indices[i].numel(),
                   indices[i].data_ptr(), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr())
            if in_table:
                row += (state_steps[i].data_ptr(),)
            rows.append(row)
        table, blocks, n_programs = _tables(device, rows)
        dense_steps = table if in_table else _dense_steps(steps, device)
        lr_t, gs, fi = _common(device, lr_tensor, grad_scale, found_inf)
        _compact_adam_kernel[(n_programs,)](
            table, blocks, dense_steps, float(lr if lr_tensor is None else 0.0),
            _or(lr_t, table), _or(gs, table), _or(fi, table),
            chunk_size, k_full,
            float(beta1), float(1.0 - beta1), _log(beta1),
            float(beta2), float(1.0 - beta2), _log(beta2),
            float(weight_decay), float(eps),
            P_CODE=_DTYPE_CODES[p_dtype], G_CODE=_DTYPE_CODES[g_dtype],
            I_CODE=_DTYPE_CODES[i_dtype], S_CODE=_DTYPE_CODES[s_dtype],
            STEP_CODE=_DTYPE_CODES[steps[0].dtype] if in_table else 0,
            STEPS_IN_TABLE=in_table, OFFSETS=i_dtype == torch.int16,
            HAS_LR_TENSOR=lr_t is not None, HAS_GRAD_SCALE=gs is not None,
            HAS_FOUND_INF=fi is not None, HAS_WEIGHT_DECAY=weight_decay != 0,
            MAXIMIZE=bool(maximize), NCOL=len(rows[0]), BLOCK=_BLOCK, num_warps=_NUM_WARPS,
            enable_fp_fusion=FP_FUSION)


__all__ = ["chunk_select", "compact_adam_", "MAX_CHUNK"]
