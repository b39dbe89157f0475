r"""Triton kernels for the fused base step + hyperbolic mirror step (HAM, HORST).

Same ops, signatures and semantics as :mod:`sparseopt_kernels.reference.mirror` (the numerical
specification). Per element, with ``g`` the gradient divided by ``grad_scale`` and negated when
``maximize`` and ``η`` the learning rate, all arithmetic in float32::

    SGD:   g_b = g + λθ                      (weight decay, coupled)
           b   = g_b if first step else μ·b + (1 − τ)·g_b
           d   = g_b + μ·b if nesterov else b          (d = g_b when μ = 0)
           θ'  = θ − η·d
    Adam:  θ̃   = θ·(1 − ηλ) if decoupled (AdamW) else θ,   g_b = g + λθ if not decoupled else g
           m   = β₁·m + (1 − β₁)·g_b,   v = β₂·v + (1 − β₂)·g_b²,   v̂max = max(v̂max, v) (amsgrad)
           u   = (m / (1 − β₁ᵗ)) / (sqrt(v or v̂max) / sqrt(1 − β₂ᵗ) + ε)
           θ'  = θ̃ − η·u

    mirror step on θ' (order "after"; "before": on θ, then the AdamW update), d = g or u:
    exp:         θ_new = θ'·exp(clamp(−η·(α·sign(θ')·d + β), −c, c))
    hypentropy:  θ_new = γ·sinh(asinh(θ'/γ) − clamp(η·α·d, −c, c))·exp(−η·β)

The mirror step is skipped (compiled out) when α = β = 0. Each element is read once, updated in
registers (base step, then mirror step) and written once, optimizer state included.

Masks (``masks[i]``: bool shaped like the param, or bit-packed uint8 with element e at bit e % 8
of byte e // 8): lanes whose mask bit is 0 are neither read nor written, so the param and its
state keep their bits; step counters still advance per tensor.

Row scales (``row_scales=`` of ``ham_sgd_`` / ``ham_adam_``; SparseOpt, see :mod:`.skew`): one
float32 vector per param with one entry per row (``param.shape[0]``). With ``L`` = numel / rows,
flat element e gets ``g̃ = c[e // L]·g`` right after the unscale and the maximize negation, and
``g̃`` replaces ``g`` everywhere above (weight decay term, moments, mirror exponent).

Implementation notes
--------------------
* Multi-tensor launches. Tensors are grouped by (device, dtypes); each group is one launch over
  a flat list of BLOCK-sized chunks. The kernel finds its chunk in a per-program table
  (tensor index, start offset) and the tensors' addresses in a per-tensor table of raw
  ``data_ptr()`` values, which it casts to typed pointers. Both tables live in one int64 device
  tensor, cached on the tuple of addresses and sizes, so the host→device copy happens only
  when the tensors change (grads that are reallocated every step do change it).
* ``lr_tensor``, ``grad_scale``, ``found_inf`` and the step counters are read on the device:
  no host synchronization, and a step can be captured in a CUDA graph once the tables are
  cached (run one step before capturing). With ``found_inf`` non-zero every program returns
  before touching memory, so the step leaves all tensors bit-identical.
* Config flags are ``tl.constexpr`` (one specialization per configuration); hyperparameters are
  runtime scalars so changing lr, betas, etc. does not recompile.
* Bias corrections 1 − βᵗ (float64 in the reference) are computed in-kernel from the step
  counter as −expm1(t·ln β), ln β from the host in float64: float32 arithmetic, but within
  ~2 ulp of the float64 value even for t = 1, β₂ = 0.999, where 1 − βᵗ in float32 would lose
  ~4 digits to cancellation.
* Triton has no sinh/asinh; both are built from exp/log/sqrt with a Taylor series near zero,
  where the closed forms cancel (see ``_asinh``/``_sinh``).
* Divisions and square roots the reference performs use ``tl.div_rn``/``tl.sqrt_rn`` (IEEE
  rounding; plain ``/`` and ``tl.sqrt`` are approximate on NVIDIA GPUs).
* float32 → bfloat16 stores are rounded to nearest-even by hand: the Triton interpreter
  truncates on that cast, and the bit trick gives the same result as the GPU conversion.
* Masks are folded into the per-lane bounds mask (``MASK_KIND`` constexpr: 0 none, 1 bool,
  2 bits; the mask's address is one more table column), so loads and stores skip masked-out
  lanes and ``masks=None`` compiles to exactly the unmasked kernel.
* Row scales are two more table columns (the vector's address and the row length L) behind
  the ``ROW_SCALE`` constexpr, so ``row_scales=None`` compiles to exactly the unscaled kernel.
  The row of a lane is ``offs // L`` in int64 (NVPTX runs a 64-bit division as a 32-bit one
  when both operands fit, which they do below 2³² elements); lanes of one row load the same
  scale, so the gather costs one cached load per row.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import triton
import triton.language as tl

from ..reference.mirror import _advance_steps
from . import FP_FUSION

# One fixed launch configuration: the kernels are memory bound, 1024 elements x 4 warps keeps
# 8 fp32 elements per thread in flight, and the interpreter cannot autotune anyway.
_BLOCK = 1024
_NUM_WARPS = 4

# Codes of the element types a table entry can point to (a tl.constexpr per launch).
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2,
                torch.float64: 3, torch.int64: 4, torch.int32: 5, torch.int16: 6,
                torch.uint8: 7, torch.bool: 7}  # bool: one byte, 0 or 1
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_STEP_DTYPES = _FLOAT_DTYPES + (torch.float64, torch.int64, torch.int32)

_MIRROR_NONE, _MIRROR_EXP, _MIRROR_HYPENTROPY = 0, 1, 2
_MASK_NONE, _MASK_BOOL, _MASK_BITS = 0, 1, 2


def _interpreting() -> bool:
    # Same test as backends.triton_interpreted(); triton reads the variable when a kernel is
    # decorated, so it must be set before this module is imported.
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---------------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------------

@triton.jit
def _typed_ptr(addr, CODE: tl.constexpr):
    """Reinterpret an int64 address from a pointer table as a typed pointer."""
    if CODE == 0:
        return addr.to(tl.pointer_type(tl.float32))
    elif CODE == 1:
        return addr.to(tl.pointer_type(tl.bfloat16))
    elif CODE == 2:
        return addr.to(tl.pointer_type(tl.float16))
    elif CODE == 3:
        return addr.to(tl.pointer_type(tl.float64))
    elif CODE == 4:
        return addr.to(tl.pointer_type(tl.int64))
    elif CODE == 5:
        return addr.to(tl.pointer_type(tl.int32))
    elif CODE == 6:
        return addr.to(tl.pointer_type(tl.int16))
    else:
        return addr.to(tl.pointer_type(tl.uint8))


@triton.jit
def _to_storage(x, CODE: tl.constexpr):
    """float32 -> storage dtype, rounding to nearest even (like ``Tensor.copy_``)."""
    if CODE == 1:
        # bfloat16 by hand: add half an ulp (ties to even) and drop the low 16 bits. NaN must
        # not carry into the exponent, so it maps to the canonical quiet NaN.
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif CODE == 2:
        return x.to(tl.float16)
    else:
        return x


@triton.jit
def _clamp(x, c):
    # torch.clamp propagates NaN; Triton's min/max would drop it without PropagateNan.ALL.
    x = tl.maximum(x, -c, propagate_nan=tl.PropagateNan.ALL)
    return tl.minimum(x, c, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _one_minus_pow(t, log_base):
    """1 − baseᵗ = −expm1(t·ln base) without cancellation (t ≥ 0, base ∈ [0, 1])."""
    x = t * log_base
    # Taylor series of expm1 for |x| < 1/2 (truncation error < x¹²/12! ≈ 5e-13 relative).
    p = 1.0 + x / 11.0
    p = 1.0 + x / 10.0 * p
    p = 1.0 + x / 9.0 * p
    p = 1.0 + x / 8.0 * p
    p = 1.0 + x / 7.0 * p
    p = 1.0 + x / 6.0 * p
    p = 1.0 + x / 5.0 * p
    p = 1.0 + x / 4.0 * p
    p = 1.0 + x / 3.0 * p
    p = 1.0 + x / 2.0 * p
    series = -(x * p)
    # Elsewhere baseᵗ ≤ e^(−1/2), so 1 − baseᵗ ≥ 0.39 and the subtraction is benign.
    return tl.where(tl.abs(x) < 0.5, series, 1.0 - tl.exp(x))


@triton.jit
def _bias_corrections(row, steps, t, log_beta1, log_beta2, NCOL: tl.constexpr,
                      STEP_CODE: tl.constexpr, STEPS_IN_TABLE: tl.constexpr):
    """(1 − β₁ᵗ, sqrt(1 − β₂ᵗ)) from tensor t's (already advanced) step count, read on the device:
    through the table's last column, or from the gathered float32 ``steps`` array."""
    if STEPS_IN_TABLE:
        step = tl.load(_typed_ptr(tl.load(row + NCOL - 1), STEP_CODE)).to(tl.float32)
    else:
        step = tl.load(steps + t)
    return _one_minus_pow(step, log_beta1), tl.sqrt_rn(_one_minus_pow(step, log_beta2))


@triton.jit
def _asinh(x):
    """float32 asinh: series for |x| < 1/2, log(|x| + sqrt(x² + 1)) up to 2¹², log(2|x|) above."""
    a = tl.abs(x)
    s = tl.minimum(a, 0.5) * tl.minimum(a, 0.5)  # x² where the series is used, no overflow
    # asinh(x) = x·Σ cₙ x²ⁿ, cₙ = (−1)ⁿ(2n)!/(4ⁿ(n!)²(2n+1)); through n = 10 the truncation
    # error is < 2e-9 relative for |x| < 1/2.
    p = 0.008390335809616815
    p = p * s - 0.009761609529194078
    p = p * s + 0.011551800896139705
    p = p * s - 0.01396484375
    p = p * s + 0.017352764423076924
    p = p * s - 0.022372159090909092
    p = p * s + 0.030381944444444444
    p = p * s - 0.044642857142857144
    p = p * s + 0.075
    p = p * s - 0.16666666666666666
    p = p * s + 1.0
    small = x * p
    # For |x| ≥ 1/2 the log's argument is ≥ 1.6, so there is no cancellation. Above 2¹² the
    # 1/(4x²) correction is below float32 resolution and x² would overflow past ~1.8e19.
    # (Both branches are evaluated; bounding a keeps the unused ones finite. NaN propagates.)
    a = tl.maximum(a, 0.5, propagate_nan=tl.PropagateNan.ALL)
    am = tl.minimum(a, 4096.0, propagate_nan=tl.PropagateNan.ALL)
    mid = tl.log(am + tl.sqrt_rn(am * am + 1.0))
    big = tl.log(a) + 0.6931471805599453
    r = tl.where(a < 4096.0, mid, big)
    r = tl.where(x < 0, -r, r)
    return tl.where(tl.abs(x) < 0.5, small, r)


@triton.jit
def _sinh(y):
    """float32 sinh: series for |y| < 1, (eʸ − e⁻ʸ)/2 above (no cancellation there)."""
    a = tl.abs(y)
    s = y * y
    # sinh(y) = y·(1 + y²/(2·3)·(1 + y²/(4·5)·(1 + ...))) through y¹³/13!; the next term is
    # < 1e-12 relative for |y| < 1.
    p = 1.0 + s / 156.0
    p = 1.0 + s / 110.0 * p
    p = 1.0 + s / 72.0 * p
    p = 1.0 + s / 42.0 * p
    p = 1.0 + s / 20.0 * p
    p = 1.0 + s / 6.0 * p
    small = y * p
    e = tl.exp(tl.minimum(a, 88.0))  # (bounded: both branches are evaluated)
    mid = 0.5 * e - 0.5 / e
    # exp overflows at 88.72 but sinh only at 89.42: eᵃ/2 = (e^(a/2)·½)·e^(a/2) near the top
    # (exp(a − ln 2) would lose ~10 ulp to the rounding of a − ln 2).
    h = tl.exp(0.5 * a)
    big = (h * 0.5) * h
    r = tl.where(a < 88.0, mid, big)
    r = tl.where(y < 0, -r, r)
    return tl.where(a < 1.0, small, r)


@triton.jit
def _mirror(theta, d, lr, alpha, beta, clamp, gamma,
            MIRROR: tl.constexpr, USE_CLAMP: tl.constexpr):
    """The mirror step on ``theta`` along ``d`` (float32), same operation order as the spec."""
    if MIRROR == 1:
        sign = tl.where(theta > 0, 1.0, tl.where(theta < 0, -1.0, 0.0))
        z = -lr * (alpha * sign * d + beta)
        if USE_CLAMP:
            z = _clamp(z, clamp)
        return theta * tl.exp(z)
    elif MIRROR == 2:
        shift = lr * alpha * d
        if USE_CLAMP:
            shift = _clamp(shift, clamp)
        decay = tl.exp(-lr * beta)
        return gamma * _sinh(_asinh(tl.div_rn(theta, gamma)) - shift) * decay
    else:
        return theta


@triton.jit
def _chunk(table, blocks, NCOL: tl.constexpr, BLOCK: tl.constexpr):
    """This program's chunk: its tensor's index and table row, int64 element offsets and
    bounds mask."""
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(blocks + 2 * pid)
    start = tl.load(blocks + 2 * pid + 1)
    row = table + t * NCOL
    numel = tl.load(row + 2)
    # int64 offsets: tensors may exceed 2³¹ elements.
    offs = start + tl.arange(0, BLOCK).to(tl.int64)
    return t, row, offs, offs < numel


@triton.jit
def _apply_mask(row, offs, mask, MASK_COL: tl.constexpr, MASK_KIND: tl.constexpr):
    """Narrow the bounds mask to the lanes the user's mask keeps. Masked-out lanes are then
    neither loaded nor stored, so the param and its state keep their bits exactly."""
    if MASK_KIND == 0:
        return mask
    mask_ptr = _typed_ptr(tl.load(row + MASK_COL), 7)
    if MASK_KIND == 1:
        keep = tl.load(mask_ptr + offs, mask=mask, other=0) != 0
    else:
        # Bit-packed: element e is bit e % 8 of byte e // 8 (packbits, bitorder="little").
        byte = tl.load(mask_ptr + (offs >> 3), mask=mask, other=0).to(tl.int32)
        keep = ((byte >> (offs & 7).to(tl.int32)) & 1) != 0
    return mask & keep


@triton.jit
def _load_grad(g_ptr, offs, mask, grad_scale_ptr,
               HAS_GRAD_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr):
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    if HAS_GRAD_SCALE:
        g = tl.div_rn(g, tl.load(grad_scale_ptr).to(tl.float32))
    if MAXIMIZE:
        g = -g
    return g


@triton.jit
def _row_scale(row, offs, mask, C_COL: tl.constexpr, LEN_COL: tl.constexpr):
    """Per lane, the float32 scale ``c[e // L]`` of its row: the table row holds the vector's
    address in column ``C_COL`` and the row length L in column ``LEN_COL``."""
    c_ptr = _typed_ptr(tl.load(row + C_COL), 0)
    row_len = tl.load(row + LEN_COL)
    return tl.load(c_ptr + offs // row_len, mask=mask, other=0.0)


# ---------------------------------------------------------------------------------------------
# Kernels. Table row per tensor: [param, grad, numel, state..., mask, row scale, row length,
# step]; blocks: (tensor, start). The mask, row-scale and step columns are present only when
# used.
# ---------------------------------------------------------------------------------------------

@triton.jit
def _ham_sgd_kernel(table, blocks, lr, lr_ptr, grad_scale_ptr, found_inf_ptr,
                    weight_decay, momentum, one_minus_dampening, alpha, beta, clamp, gamma,
                    P_CODE: tl.constexpr, G_CODE: tl.constexpr, B_CODE: tl.constexpr,
                    HAS_LR_TENSOR: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                    HAS_FOUND_INF: tl.constexpr, HAS_WEIGHT_DECAY: tl.constexpr,
                    HAS_MOMENTUM: tl.constexpr, FIRST_STEP: tl.constexpr,
                    NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr, MIRROR: tl.constexpr,
                    USE_CLAMP: tl.constexpr, MASK_KIND: tl.constexpr, MASK_COL: tl.constexpr,
                    ROW_SCALE: tl.constexpr, RS_COL: tl.constexpr,
                    NCOL: tl.constexpr, BLOCK: tl.constexpr):
    if HAS_FOUND_INF:
        if tl.load(found_inf_ptr) != 0:
            return
    t, row, offs, mask = _chunk(table, blocks, NCOL, BLOCK)
    mask = _apply_mask(row, offs, mask, MASK_COL, MASK_KIND)
    p_ptr = _typed_ptr(tl.load(row), P_CODE)
    g_ptr = _typed_ptr(tl.load(row + 1), G_CODE)
    if HAS_LR_TENSOR:
        lr = tl.load(lr_ptr).to(tl.float32)

    theta = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = _load_grad(g_ptr, offs, mask, grad_scale_ptr, HAS_GRAD_SCALE, MAXIMIZE)
    if ROW_SCALE:
        g = g * _row_scale(row, offs, mask, RS_COL, RS_COL + 1)  # g̃ replaces g from here on
    g_b = g
    if HAS_WEIGHT_DECAY:
        g_b = g + weight_decay * theta
    d = g_b
    if HAS_MOMENTUM:
        b_ptr = _typed_ptr(tl.load(row + 3), B_CODE)
        if FIRST_STEP:
            buf = g_b
        else:
            buf = momentum * tl.load(b_ptr + offs, mask=mask).to(tl.float32) \
                + one_minus_dampening * g_b
        if NESTEROV:
            d = g_b + momentum * buf
        else:
            d = buf
        tl.store(b_ptr + offs, _to_storage(buf, B_CODE), mask=mask)
    theta1 = theta - lr * d
    # HAM: the mirror direction is the raw (unscaled, sign-adjusted, row-scaled) gradient.
    new = _mirror(theta1, g, lr, alpha, beta, clamp, gamma, MIRROR, USE_CLAMP)
    tl.store(p_ptr + offs, _to_storage(new, P_CODE), mask=mask)


@triton.jit
def _ham_adam_kernel(table, blocks, steps, lr, lr_ptr, grad_scale_ptr, found_inf_ptr,
                     beta1, one_minus_beta1, log_beta1, beta2, one_minus_beta2, log_beta2,
                     weight_decay, eps, alpha, beta, clamp, gamma,
                     P_CODE: tl.constexpr, G_CODE: tl.constexpr, S_CODE: tl.constexpr,
                     STEP_CODE: tl.constexpr, STEPS_IN_TABLE: tl.constexpr,
                     HAS_LR_TENSOR: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                     HAS_FOUND_INF: tl.constexpr, HAS_WEIGHT_DECAY: tl.constexpr,
                     DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
                     MIRROR: tl.constexpr, USE_CLAMP: tl.constexpr,
                     DIRECTION_ADAM: tl.constexpr, ORDER_BEFORE: tl.constexpr,
                     MASK_KIND: tl.constexpr, MASK_COL: tl.constexpr,
                     ROW_SCALE: tl.constexpr, RS_COL: tl.constexpr,
                     NCOL: tl.constexpr, BLOCK: tl.constexpr):
    if HAS_FOUND_INF:
        if tl.load(found_inf_ptr) != 0:
            return
    t, row, offs, mask = _chunk(table, blocks, NCOL, BLOCK)
    mask = _apply_mask(row, offs, mask, MASK_COL, MASK_KIND)
    p_ptr = _typed_ptr(tl.load(row), P_CODE)
    g_ptr = _typed_ptr(tl.load(row + 1), G_CODE)
    m_ptr = _typed_ptr(tl.load(row + 3), S_CODE)
    v_ptr = _typed_ptr(tl.load(row + 4), S_CODE)
    if HAS_LR_TENSOR:
        lr = tl.load(lr_ptr).to(tl.float32)

    bc1, bc2_sqrt = _bias_corrections(row, steps, t, log_beta1, log_beta2, NCOL, STEP_CODE,
                                      STEPS_IN_TABLE)

    theta = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = _load_grad(g_ptr, offs, mask, grad_scale_ptr, HAS_GRAD_SCALE, MAXIMIZE)
    if ROW_SCALE:
        g = g * _row_scale(row, offs, mask, RS_COL, RS_COL + 1)  # g̃ replaces g from here on
    g_b = g
    if HAS_WEIGHT_DECAY and not DECOUPLED:
        g_b = g + weight_decay * theta
    m = beta1 * tl.load(m_ptr + offs, mask=mask).to(tl.float32) + one_minus_beta1 * g_b
    v = beta2 * tl.load(v_ptr + offs, mask=mask).to(tl.float32) + one_minus_beta2 * g_b * g_b
    if AMSGRAD:
        vmax_ptr = _typed_ptr(tl.load(row + 5), S_CODE)
        vmax = tl.maximum(tl.load(vmax_ptr + offs, mask=mask).to(tl.float32), v,
                          propagate_nan=tl.PropagateNan.ALL)
        denom = tl.div_rn(tl.sqrt_rn(vmax), bc2_sqrt) + eps
        tl.store(vmax_ptr + offs, _to_storage(vmax, S_CODE), mask=mask)
    else:
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    u = tl.div_rn(tl.div_rn(m, bc1), denom)
    if DIRECTION_ADAM:
        d = u  # HORST direction="adam"
    else:
        d = g

    if ORDER_BEFORE:
        theta = _mirror(theta, d, lr, alpha, beta, clamp, gamma, MIRROR, USE_CLAMP)
    if HAS_WEIGHT_DECAY and DECOUPLED:
        theta = theta * (1.0 - lr * weight_decay)
    theta1 = theta - lr * u
    if not ORDER_BEFORE:
        theta1 = _mirror(theta1, d, lr, alpha, beta, clamp, gamma, MIRROR, USE_CLAMP)

    tl.store(m_ptr + offs, _to_storage(m, S_CODE), mask=mask)
    tl.store(v_ptr + offs, _to_storage(v, S_CODE), mask=mask)
    tl.store(p_ptr + offs, _to_storage(theta1, P_CODE), mask=mask)


@triton.jit
def _mirror_step_kernel(table, blocks, lr, lr_ptr, grad_scale_ptr, found_inf_ptr,
                        alpha, beta, clamp, gamma,
                        P_CODE: tl.constexpr, G_CODE: tl.constexpr,
                        HAS_LR_TENSOR: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                        HAS_FOUND_INF: tl.constexpr, MAXIMIZE: tl.constexpr,
                        MIRROR: tl.constexpr, USE_CLAMP: tl.constexpr,
                        MASK_KIND: tl.constexpr, MASK_COL: tl.constexpr,
                        NCOL: tl.constexpr, BLOCK: tl.constexpr):
    if HAS_FOUND_INF:
        if tl.load(found_inf_ptr) != 0:
            return
    t, row, offs, mask = _chunk(table, blocks, NCOL, BLOCK)
    mask = _apply_mask(row, offs, mask, MASK_COL, MASK_KIND)
    p_ptr = _typed_ptr(tl.load(row), P_CODE)
    g_ptr = _typed_ptr(tl.load(row + 1), G_CODE)
    if HAS_LR_TENSOR:
        lr = tl.load(lr_ptr).to(tl.float32)
    theta = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = _load_grad(g_ptr, offs, mask, grad_scale_ptr, HAS_GRAD_SCALE, MAXIMIZE)
    new = _mirror(theta, g, lr, alpha, beta, clamp, gamma, MIRROR, USE_CLAMP)
    tl.store(p_ptr + offs, _to_storage(new, P_CODE), mask=mask)


# ---------------------------------------------------------------------------------------------
# Host side: validation, grouping, pointer tables
# ---------------------------------------------------------------------------------------------

# (device, table rows) -> (table view, blocks view, number of programs). Bounded so callers
# that hand in fresh tensors every step (e.g. reallocated grads) do not grow it without limit.
_TABLE_CACHE: "OrderedDict[tuple, Tuple[Tensor, Tensor, int]]" = OrderedDict()
_TABLE_CACHE_SIZE = 64


def _tables(device: torch.device, rows: List[Tuple[int, ...]],
            block: int = _BLOCK) -> Tuple[Tensor, Tensor, int]:
    """Device tables for ``rows`` = per tensor (param ptr, grad ptr, length, other entries...):
    one program per ``block`` elements of each tensor's length."""
    key = (device, block, tuple(rows))
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    blocks: List[int] = []
    for t, row in enumerate(rows):
        for start in range(0, row[2], block):
            blocks += (t, start)
    flat = [x for row in rows for x in row]
    # One host->device copy for both tables; the kernel gets two views of it.
    buf = torch.tensor(flat + blocks, dtype=torch.int64).to(device)
    entry = (buf[:len(flat)], buf[len(flat):], len(blocks) // 2)
    _TABLE_CACHE[key] = entry
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return entry


def _check_float(name: str, i: int, t: Tensor) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}[{i}] has dtype {t.dtype}; the Triton path supports float32, "
                        f"bfloat16 and float16 (use the CPU/reference backend for float64)")
    if t.is_sparse:
        raise TypeError(f"{name}[{i}] is sparse; the Triton path needs dense tensors")


def _check_device(device: torch.device) -> None:
    if _interpreting():
        if device.type != "cpu":
            # The interpreter reads the raw addresses in the pointer tables from host memory.
            raise RuntimeError("under TRITON_INTERPRET=1 the Triton mirror kernels need CPU "
                               f"tensors, got {device}")
    elif device.type == "cpu":
        raise RuntimeError("the Triton mirror kernels need GPU tensors (or TRITON_INTERPRET=1 "
                           "set before importing triton)")


def _scalar(t: Optional[Tensor], device: torch.device, name: str) -> Optional[Tensor]:
    """A device scalar (lr_tensor, grad_scale, found_inf) on ``device``, read by the kernel."""
    if t is None:
        return None
    if t.numel() != 1:
        raise ValueError(f"{name} must hold a single value, got shape {tuple(t.shape)}")
    return t.to(device)  # a no-op (no copy) when it is already there


def _check_mirror(mirror: str, clamp: Optional[float], gamma: float) -> None:
    if mirror not in ("exp", "hypentropy"):
        raise ValueError(f"mirror must be 'exp' or 'hypentropy', got {mirror!r}")
    if mirror == "hypentropy" and not gamma > 0:
        raise ValueError(f"gamma must be > 0 for the hypentropy mirror, got {gamma}")
    if clamp is not None and not clamp >= 0:
        raise ValueError(f"clamp must be >= 0 or None, got {clamp}")


def _mirror_form(mirror: str, alpha: float, beta: float) -> int:
    if alpha == 0.0 and beta == 0.0:
        return _MIRROR_NONE
    return _MIRROR_EXP if mirror == "exp" else _MIRROR_HYPENTROPY


def _mask_kind(masks: Optional[Sequence[Tensor]], i: int, p: Tensor) -> int:
    """Validate ``masks[i]`` against ``params[i]``; its MASK_KIND code."""
    if masks is None:
        return _MASK_NONE
    m = masks[i]
    if m.device != p.device:
        raise ValueError(f"masks[{i}] is on {m.device}, params[{i}] on {p.device}")
    if m.dtype == torch.bool:
        if m.shape != p.shape:
            raise ValueError(f"masks[{i}] has shape {tuple(m.shape)}, params[{i}] "
                             f"{tuple(p.shape)}")
        return _MASK_BOOL
    if m.dtype == torch.uint8:
        if m.dim() != 1 or m.numel() != (p.numel() + 7) // 8:
            raise ValueError(f"masks[{i}] is uint8, so it must be bit-packed: 1-D with "
                             f"{(p.numel() + 7) // 8} bytes, got shape {tuple(m.shape)}")
        return _MASK_BITS
    raise TypeError(f"masks[{i}] has dtype {m.dtype}; expected torch.bool or bit-packed "
                    "torch.uint8")


def _groups(params: Sequence[Tensor], grads: Sequence[Tensor],
            states: Dict[str, Sequence[Tensor]],
            masks: Optional[Sequence[Tensor]] = None) -> Dict[tuple, List[int]]:
    """Indices of the non-empty tensors, grouped by (device, param, grad and state dtypes,
    mask kind); the mask kind is always the last entry of the key."""
    groups: Dict[tuple, List[int]] = {}
    lists = [("grads", grads)] + list(states.items())
    if masks is not None:
        lists.append(("masks", masks))
    for name, lst in lists:
        if len(lst) != len(params):
            raise ValueError(f"{name} has {len(lst)} tensors, params has {len(params)}")
    for i, (p, g) in enumerate(zip(params, grads)):
        _check_float("params", i, p)
        _check_float("grads", i, g)
        if g.shape != p.shape:
            raise ValueError(f"grads[{i}] has shape {tuple(g.shape)}, params[{i}] "
                             f"{tuple(p.shape)}")
        if not p.is_contiguous():
            raise ValueError(f"params[{i}] must be contiguous")
        key = [p.device, p.dtype, g.dtype]
        for name, lst in states.items():
            s = lst[i]
            _check_float(name, i, s)
            if s.shape != p.shape or not s.is_contiguous() or s.device != p.device:
                raise ValueError(f"{name}[{i}] must be a contiguous tensor shaped and placed "
                                 f"like params[{i}]")
            if s.dtype not in (torch.float32, p.dtype):
                raise TypeError(f"{name}[{i}] has dtype {s.dtype}; optimizer state must be "
                                f"float32 or the param dtype ({p.dtype})")
            key.append(s.dtype)
        if g.device != p.device:
            raise ValueError(f"grads[{i}] is on {g.device}, params[{i}] on {p.device}")
        key.append(_mask_kind(masks, i, p))
        if p.numel() > 0:
            groups.setdefault(tuple(key), []).append(i)
    return groups


def _contiguous(grads: Optional[Sequence[Tensor]]) -> Optional[List[Tensor]]:
    # The kernels index grads (and masks) linearly; a non-contiguous one is copied (it is only
    # read). The copies are freed stream-ordered after the launch, like any PyTorch temporary.
    if grads is None:
        return None
    return [g if g.is_contiguous() else g.contiguous() for g in grads]


def _rows(t: Tensor) -> int:
    """Rows of a tensor for the row scales: its first dimension (a 0-d tensor is one row)."""
    return t.shape[0] if t.dim() > 0 else 1


def _check_row_scales(row_scales: Optional[Sequence[Tensor]], params: Sequence[Tensor]) -> None:
    """``row_scales``: None, or one contiguous float32 vector per param with one entry per row,
    on the param's device."""
    if row_scales is None:
        return
    if len(row_scales) != len(params):
        raise ValueError(f"row_scales has {len(row_scales)} tensors, params has {len(params)}")
    for i, (c, p) in enumerate(zip(row_scales, params)):
        if c.dtype != torch.float32 or c.dim() != 1 or c.numel() != _rows(p) \
                or c.device != p.device or not c.is_contiguous():
            raise ValueError(f"row_scales[{i}] must be a contiguous 1-D float32 tensor with one "
                             f"entry per row of params[{i}] ({_rows(p)}) on {p.device}, got "
                             f"{c.dtype} of shape {tuple(c.shape)} on {c.device}")


def _row_scale_cols(row_scales: Optional[Sequence[Tensor]], i: int, p: Tensor) -> tuple:
    """The table columns (vector address, row length L) of ``row_scales[i]``; () if None."""
    if row_scales is None:
        return ()
    return (row_scales[i].data_ptr(), p.numel() // _rows(p))


def _steps_in_table(steps: Sequence[Tensor], device: torch.device) -> bool:
    """Whether the kernel can read the step counters through the pointer table: they live on
    the param device with one common dtype (torch.optim's capturable/fused layout). Otherwise
    (e.g. CPU counters) ``_dense_steps`` gathers them into a float32 device array each call."""
    return all(s.device == device and s.numel() == 1 and s.dtype == steps[0].dtype
               and s.dtype in _STEP_DTYPES for s in steps)


def _dense_steps(steps: Sequence[Tensor], device: torch.device) -> Tensor:
    return torch.stack([s.reshape(()).to(torch.float32) for s in steps]).to(device)


def _common(device: torch.device, lr_tensor: Optional[Tensor], grad_scale: Optional[Tensor],
            found_inf: Optional[Tensor]):
    return (_scalar(lr_tensor, device, "lr_tensor"), _scalar(grad_scale, device, "grad_scale"),
            _scalar(found_inf, device, "found_inf"))


def _or(t: Optional[Tensor], placeholder: Tensor) -> Tensor:
    # Absent scalars are passed as some valid device pointer; the matching HAS_* flag is False,
    # so the kernel never reads it.
    return placeholder if t is None else t


# ---------------------------------------------------------------------------------------------
# Launchers (same signatures and semantics as the reference)
# ---------------------------------------------------------------------------------------------

def ham_sgd_(params: List[Tensor], grads: List[Tensor], momentum_buffers: List[Tensor], *,
             lr: float, lr_tensor: Optional[Tensor] = None, weight_decay: float = 0.0,
             momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
             maximize: bool = False, is_first_step: bool = False, alpha: float = 0.0,
             beta: float = 0.0, clamp: Optional[float] = None, mirror: str = "exp",
             gamma: float = 1.0, grad_scale: Optional[Tensor] = None,
             found_inf: Optional[Tensor] = None, masks: Optional[List[Tensor]] = None,
             row_scales: Optional[List[Tensor]] = None) -> None:
    _check_mirror(mirror, clamp, gamma)
    grads, masks = _contiguous(grads), _contiguous(masks)
    has_momentum = momentum != 0
    states = {"momentum_buffers": momentum_buffers} if has_momentum else {}
    groups = _groups(params, grads, states, masks)
    _check_row_scales(row_scales, params)
    mask_col = 3 + int(has_momentum)
    rs_col = mask_col + int(masks is not None)
    for key, idx in groups.items():
        device = key[0]
        _check_device(device)
        rows = []
        for i in idx:
            row = (params[i].data_ptr(), grads[i].data_ptr(), params[i].numel())
            if has_momentum:
                row += (momentum_buffers[i].data_ptr(),)
            if masks is not None:
                row += (masks[i].data_ptr(),)
            row += _row_scale_cols(row_scales, i, params[i])
            rows.append(row)
        table, blocks, n_programs = _tables(device, rows)
        lr_t, gs, fi = _common(device, lr_tensor, grad_scale, found_inf)
        _ham_sgd_kernel[(n_programs,)](
            table, blocks, float(lr if lr_tensor is None else 0.0), _or(lr_t, table),
            _or(gs, table), _or(fi, table),
            float(weight_decay), float(momentum), float(1.0 - dampening),
            float(alpha), float(beta), float(0.0 if clamp is None else clamp), float(gamma),
            P_CODE=_DTYPE_CODES[key[1]], G_CODE=_DTYPE_CODES[key[2]],
            B_CODE=_DTYPE_CODES[key[3]] if has_momentum else 0,
            HAS_LR_TENSOR=lr_t is not None, HAS_GRAD_SCALE=gs is not None,
            HAS_FOUND_INF=fi is not None, HAS_WEIGHT_DECAY=weight_decay != 0,
            HAS_MOMENTUM=has_momentum, FIRST_STEP=bool(is_first_step),
            NESTEROV=bool(nesterov), MAXIMIZE=bool(maximize),
            MIRROR=_mirror_form(mirror, alpha, beta), USE_CLAMP=clamp is not None,
            MASK_KIND=key[-1], MASK_COL=mask_col,
            ROW_SCALE=row_scales is not None, RS_COL=rs_col,
            NCOL=len(rows[0]), BLOCK=_BLOCK, enable_fp_fusion=FP_FUSION, num_warps=_NUM_WARPS)


def _log(b: float) -> float:
    # ln β for the in-kernel bias correction; β = 0 gives −inf, so βᵗ = 0 (t ≥ 1).
    return math.log(b) if b > 0 else float("-inf")


def ham_adam_(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
              exp_avg_sqs: List[Tensor], max_exp_avg_sqs: List[Tensor],
              state_steps: List[Tensor], *, lr: float, lr_tensor: Optional[Tensor] = None,
              beta1: float = 0.9, beta2: float = 0.999, weight_decay: float = 0.0,
              eps: float = 1e-8, amsgrad: bool = False, maximize: bool = False,
              decoupled_weight_decay: bool = False, alpha: float = 0.0, beta: float = 0.0,
              clamp: Optional[float] = None, mirror: str = "exp", gamma: float = 1.0,
              direction: str = "grad", order: str = "after",
              grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
              masks: Optional[List[Tensor]] = None,
              row_scales: Optional[List[Tensor]] = None) -> None:
    _check_mirror(mirror, clamp, gamma)
    if direction not in ("grad", "adam"):
        raise ValueError(f"direction must be 'grad' or 'adam', got {direction!r}")
    if order not in ("after", "before"):
        raise ValueError(f"order must be 'after' or 'before', got {order!r}")
    if len(state_steps) != len(params):
        raise ValueError(f"state_steps has {len(state_steps)} tensors, params has {len(params)}")
    grads, masks = _contiguous(grads), _contiguous(masks)
    states = {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    if amsgrad:
        states["max_exp_avg_sqs"] = max_exp_avg_sqs
    # validate before touching the step counters
    groups = _groups(params, grads, states, masks)
    _check_row_scales(row_scales, params)

    _advance_steps(state_steps, found_inf)  # like torch.optim: before the bias corrections

    for key, idx in groups.items():
        device = key[0]
        _check_device(device)
        s_code = _DTYPE_CODES[key[3]]
        if any(key[3 + k] != key[3] for k in range(1, len(states))):
            # One state dtype per launch: split mixed groups further (rare).
            raise TypeError("exp_avgs/exp_avg_sqs/max_exp_avg_sqs of a tensor must share a "
                            "dtype")
        steps = [state_steps[i] for i in idx]
        in_table = _steps_in_table(steps, device)
        mask_col = 5 + int(amsgrad)  # the step, when in the table, stays the last column
        rs_col = mask_col + int(masks is not None)
        rows = []
        for i in idx:
            row = (params[i].data_ptr(), grads[i].data_ptr(), params[i].numel(),
                   exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr())
            if amsgrad:
                row += (max_exp_avg_sqs[i].data_ptr(),)
            if masks is not None:
                row += (masks[i].data_ptr(),)
            row += _row_scale_cols(row_scales, i, params[i])
            if in_table:
                row += (state_steps[i].data_ptr(),)
            rows.append(row)
        table, blocks, n_programs = _tables(device, rows)
        # (the table is a placeholder when the steps are in it: the kernel does not read it)
        dense_steps = table if in_table else _dense_steps(steps, device)
        lr_t, gs, fi = _common(device, lr_tensor, grad_scale, found_inf)
        _ham_adam_kernel[(n_programs,)](
            table, blocks, dense_steps, float(lr if lr_tensor is None else 0.0),
            _or(lr_t, table), _or(gs, table), _or(fi, table),
            float(beta1), float(1.0 - beta1), _log(beta1),
            float(beta2), float(1.0 - beta2), _log(beta2),
            float(weight_decay), float(eps),
            float(alpha), float(beta), float(0.0 if clamp is None else clamp), float(gamma),
            P_CODE=_DTYPE_CODES[key[1]], G_CODE=_DTYPE_CODES[key[2]], S_CODE=s_code,
            STEP_CODE=_DTYPE_CODES[steps[0].dtype] if in_table else 0,
            STEPS_IN_TABLE=in_table,
            HAS_LR_TENSOR=lr_t is not None, HAS_GRAD_SCALE=gs is not None,
            HAS_FOUND_INF=fi is not None, HAS_WEIGHT_DECAY=weight_decay != 0,
            DECOUPLED=bool(decoupled_weight_decay), AMSGRAD=bool(amsgrad),
            MAXIMIZE=bool(maximize), MIRROR=_mirror_form(mirror, alpha, beta),
            USE_CLAMP=clamp is not None, DIRECTION_ADAM=direction == "adam",
            ORDER_BEFORE=order == "before", MASK_KIND=key[-1], MASK_COL=mask_col,
            ROW_SCALE=row_scales is not None, RS_COL=rs_col,
            NCOL=len(rows[0]), BLOCK=_BLOCK, enable_fp_fusion=FP_FUSION, num_warps=_NUM_WARPS)


def mirror_step_(params: List[Tensor], grads: List[Tensor], *, lr: float,
                 lr_tensor: Optional[Tensor] = None, alpha: float = 0.0, beta: float = 0.0,
                 clamp: Optional[float] = None, mirror: str = "exp", gamma: float = 1.0,
                 maximize: bool = False, grad_scale: Optional[Tensor] = None,
                 found_inf: Optional[Tensor] = None,
                 masks: Optional[List[Tensor]] = None) -> None:
    """Standalone mirror step: ``params`` hold θ' (after some base step), ``grads`` the raw g."""
    _check_mirror(mirror, clamp, gamma)
    grads, masks = _contiguous(grads), _contiguous(masks)
    form = _mirror_form(mirror, alpha, beta)
    if form == _MIRROR_NONE:
        _groups(params, grads, {}, masks)  # still validate the arguments
        return
    for key, idx in _groups(params, grads, {}, masks).items():
        device = key[0]
        _check_device(device)
        rows = []
        for i in idx:
            row = (params[i].data_ptr(), grads[i].data_ptr(), params[i].numel())
            if masks is not None:
                row += (masks[i].data_ptr(),)
            rows.append(row)
        table, blocks, n_programs = _tables(device, rows)
        lr_t, gs, fi = _common(device, lr_tensor, grad_scale, found_inf)
        _mirror_step_kernel[(n_programs,)](
            table, blocks, float(lr if lr_tensor is None else 0.0), _or(lr_t, table),
            _or(gs, table), _or(fi, table),
            float(alpha), float(beta), float(0.0 if clamp is None else clamp), float(gamma),
            P_CODE=_DTYPE_CODES[key[1]], G_CODE=_DTYPE_CODES[key[2]],
            HAS_LR_TENSOR=lr_t is not None, HAS_GRAD_SCALE=gs is not None,
            HAS_FOUND_INF=fi is not None, MAXIMIZE=bool(maximize), MIRROR=form,
            USE_CLAMP=clamp is not None, MASK_KIND=key[-1], MASK_COL=3,
            NCOL=len(rows[0]), BLOCK=_BLOCK, enable_fp_fusion=FP_FUSION, num_warps=_NUM_WARPS)


__all__ = ["ham_sgd_", "ham_adam_", "mirror_step_"]
