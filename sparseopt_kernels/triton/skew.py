r"""Triton kernels for the SparseOpt BN-skew correction (ALGORITHMS.md §3).

Same ops, signatures and semantics as :mod:`sparseopt_kernels.reference.skew` (the numerical
specification). A tensor of shape ``(rows, ...)`` is viewed as ``rows`` contiguous rows of
``L = numel / rows`` elements; flat element e lies in row ``e // L``.

Row coefficients (``row_coefficients_``), from a bool mask ``M``::

    count_i = nnz(M[i]),   total = Σ_i count_i
    c_i     = float32(sqrt(float64(count_i · rows) / total))      (0 for every row if total = 0)

in float64 and in this order (product, quotient, square root, each correctly rounded, then one
rounding to float32), so the result equals the reference bit for bit. Two launches for all the
masks together, without a host synchronization:

1. ``_row_count_kernel``, one program per BLOCK elements of a mask, adds the counts of the rows
   its chunk touches into an int64 scratch (one slot per row, one more per tensor for the total)
   with atomics. Inside the chunk ``k = cumsum(keep)`` (inclusive); at the last lane ``e_r`` of
   each row r the chunk touches, ``+k[e_r]`` goes to row r and ``−k[e_r]`` to row r + 1 (when
   row r + 1 continues in the chunk), so row r receives ``k[e_r] − k[e_{r−1}]``, its count in
   the chunk, with two atomics per row and chunk and no gather. Integer atomics are exact, so
   the counts do not depend on the order the programs run in.
2. ``_row_coefficients_kernel``, one program per BLOCK rows, turns counts and totals into ``c``.

Row scale (``row_scale_``), in place::

    x[i, j] ← x[i, j] · c_i            where masks[i, j] (everywhere without masks)
    x[i, j] ← +0                       where not masks[i, j]

in float32 (float64 for float64 tensors), rounded once to the tensor's dtype. Masked-out lanes
are written without reading ``x`` (a NaN or an infinity there still becomes +0).

Implementation notes
--------------------
* Multi-tensor launches through the pointer tables of :mod:`.mirror_step` (one int64 device
  tensor holding a per-tensor table and the (tensor, start) list of chunks, cached on the
  addresses and sizes). The count scratch is one more argument, its per-tensor offsets are
  table columns, so the tables stay cached while the masks and outputs keep their storage.
* float64 in the kernels: ``tl.div_rn``/``tl.sqrt_rn`` accept float32 only, but float64 ``/``
  and ``tl.sqrt`` are the IEEE operations already (NVIDIA: ``div.rn.f64`` and ``sqrt.rn.f64``;
  AMD: LLVM's correctly rounded ``fdiv``/``llvm.sqrt``; the interpreter: NumPy), and the
  float64 → float32 conversion rounds to nearest even.
* Stores to bfloat16 are rounded to nearest even by hand (``_to_storage``, see
  :mod:`.mirror_step`); float16 stores convert with round to nearest even.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

from .. import _checks
from . import FP_FUSION
from .mirror_step import (_BLOCK, _DTYPE_CODES, _NUM_WARPS, _check_device, _chunk,
                          _row_scale, _rows, _tables, _to_storage, _typed_ptr)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def _row_count_kernel(table, blocks, scratch, BLOCK: tl.constexpr):
    # Table row per mask: [mask, scratch offset of its counts, numel, L, rows]; the total sits
    # right after the counts (scratch offset + rows). blocks: (tensor, start) over the elements.
    t, row, offs, inb = _chunk(table, blocks, 5, BLOCK)
    m_ptr = _typed_ptr(tl.load(row), 7)
    counts = scratch + tl.load(row + 1)
    numel = tl.load(row + 2)
    row_len = tl.load(row + 3)
    n_rows = tl.load(row + 4)

    keep = (tl.load(m_ptr + offs, mask=inb, other=0) != 0).to(tl.int32)
    k = tl.cumsum(keep, axis=0)  # ≤ BLOCK: int32 is enough inside a chunk
    r = offs // row_len
    lane = tl.arange(0, BLOCK)
    # Last lane of its row within the chunk: the row ends there, or the chunk does. (The last
    # element of the tensor ends its row too.)
    row_end = inb & (((offs + 1) % row_len == 0) | (lane == BLOCK - 1))
    # Row r + 1 continues in this chunk: it must not count the lanes up to here again.
    next_in_chunk = row_end & (lane < BLOCK - 1) & (offs + 1 < numel)
    k64 = k.to(tl.int64)
    # Adding 0 changes nothing: skip those atomics (the leading empty rows of a chunk).
    tl.atomic_add(counts + r, k64, mask=row_end & (k != 0))
    tl.atomic_add(counts + r + 1, -k64, mask=next_in_chunk & (k != 0))
    n_kept = tl.sum(keep, axis=0).to(tl.int64)
    if n_kept != 0:
        tl.atomic_add(counts + n_rows, n_kept)


@triton.jit
def _row_coefficients_kernel(table, blocks, scratch, BLOCK: tl.constexpr):
    # Table row per mask: [coefficients, scratch offset of its counts, rows]; blocks: (tensor,
    # start) over the rows.
    t, row, offs, inb = _chunk(table, blocks, 3, BLOCK)
    c_ptr = _typed_ptr(tl.load(row), 0)
    counts = scratch + tl.load(row + 1)
    n_rows = tl.load(row + 2)
    count = tl.load(counts + offs, mask=inb, other=0)
    total = tl.load(counts + n_rows)
    # Same operations and order as the reference, all float64 and correctly rounded (see the
    # module notes): (count · rows) / max(total, 1), then the square root.
    q = (count.to(tl.float64) * n_rows.to(tl.float64)) / tl.maximum(total, 1).to(tl.float64)
    c = tl.where(total > 0, tl.sqrt(q), 0.0)
    tl.store(c_ptr + offs, c.to(tl.float32), mask=inb)


@triton.jit
def _row_scale_kernel(table, blocks, X_CODE: tl.constexpr, HAS_MASK: tl.constexpr,
                      NCOL: tl.constexpr, BLOCK: tl.constexpr):
    # Table row per tensor: [x, scales, numel, L, (mask)]; blocks: (tensor, start).
    t, row, offs, inb = _chunk(table, blocks, NCOL, BLOCK)
    x_ptr = _typed_ptr(tl.load(row), X_CODE)
    active = inb
    if HAS_MASK:
        m_ptr = _typed_ptr(tl.load(row + 4), 7)
        keep = tl.load(m_ptr + offs, mask=inb, other=0) != 0
        active = inb & keep  # masked-out lanes are written (+0) but not read
    c = _row_scale(row, offs, active, 1, 3)
    if X_CODE == 3:
        y = tl.load(x_ptr + offs, mask=active, other=0.0) * c.to(tl.float64)
    else:
        y = tl.load(x_ptr + offs, mask=active, other=0.0).to(tl.float32) * c
    if HAS_MASK:
        # Exactly +0, whatever x and c are (0·c could be −0, and 0·inf NaN).
        y = tl.where(keep, y, 0.0)
    tl.store(x_ptr + offs, _to_storage(y, X_CODE), mask=inb)


# ---------------------------------------------------------------------------------------------
# Launchers (same signatures and semantics as the reference)
# ---------------------------------------------------------------------------------------------

def row_coefficients_(masks: List[Tensor], coefficients: List[Tensor]) -> None:
    _checks.check_row_coefficients(masks, coefficients)
    groups: Dict[torch.device, List[int]] = {}
    for i, m in enumerate(masks):
        if _rows(m) > 0:  # (no rows: nothing to write)
            groups.setdefault(m.device, []).append(i)

    for device, idx in groups.items():
        _check_device(device)
        count_rows, coef_rows, offset = [], [], 0
        for i in idx:
            m, rows = masks[i], _rows(masks[i])
            if m.numel() > 0:  # (a mask with rows but no columns has only zero counts)
                count_rows.append((m.data_ptr(), offset, m.numel(), m.numel() // rows, rows))
            coef_rows.append((coefficients[i].data_ptr(), offset, rows))
            offset += rows + 1  # the counts, then the total
        # Zero-initialized: the count kernel accumulates into it.
        scratch = torch.zeros(offset, dtype=torch.int64, device=device)
        if count_rows:
            table, blocks, n_programs = _tables(device, count_rows)
            _row_count_kernel[(n_programs,)](table, blocks, scratch, BLOCK=_BLOCK,
                                             enable_fp_fusion=FP_FUSION, num_warps=_NUM_WARPS)
        table, blocks, n_programs = _tables(device, coef_rows)
        _row_coefficients_kernel[(n_programs,)](table, blocks, scratch, BLOCK=_BLOCK,
                                                enable_fp_fusion=FP_FUSION, num_warps=_NUM_WARPS)


def row_scale_(tensors: List[Tensor], scales: List[Tensor], *,
               masks: Optional[List[Tensor]] = None) -> None:
    _checks.check_row_scale(tensors, scales, masks)
    groups: Dict[tuple, List[int]] = {}
    for i, x in enumerate(tensors):
        if x.numel() > 0:
            groups.setdefault((x.device, x.dtype), []).append(i)

    for (device, dtype), idx in groups.items():
        _check_device(device)
        rows = []
        for i in idx:
            x = tensors[i]
            row = (x.data_ptr(), scales[i].data_ptr(), x.numel(), x.numel() // _rows(x))
            if masks is not None:
                row += (masks[i].data_ptr(),)
            rows.append(row)
        table, blocks, n_programs = _tables(device, rows)
        _row_scale_kernel[(n_programs,)](
            table, blocks, X_CODE=_DTYPE_CODES[dtype], HAS_MASK=masks is not None,
            NCOL=len(rows[0]), BLOCK=_BLOCK, enable_fp_fusion=FP_FUSION, num_warps=_NUM_WARPS)


__all__ = ["row_coefficients_", "row_scale_"]
