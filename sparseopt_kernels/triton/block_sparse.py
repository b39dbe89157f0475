r"""Triton kernels for the block-sparse matmuls of a linear layer (``dds``, ``dsd``, ``sdd``).

Same ops, signatures and semantics as :mod:`sparseopt_kernels.reference.block_sparse` (the
numerical specification; see it for the index layout). W is (R·b) × (C·b), cut into b × b
blocks, ``nnz`` of them stored in ``values`` (nnz × b × b) in CSR order; x is M × (C·b), dy is
M × (R·b). With I = [0, b) and the m-tile T = [m₀, m₀ + BM)::

    dds   y[T, r·b + I]  = Σ_{k ∈ row r}     x[T, c_k·b + I] · values[k]ᵀ        (y = x Wᵀ)
    dsd   dx[T, c·b + I] = Σ_{j ∈ col c}     dy[T, r_j·b + I] · values[t_j]      (dx = dy W)
    sdd   dW[k]          = Σ_{m}  dy[m, r_k·b + I]ᵀ · x[m, c_k·b + I]            (only stored k)

where "k ∈ row r" is k ∈ [row_offsets[r], row_offsets[r+1]) with c_k = col_indices[k], and
"j ∈ col c" is j ∈ [col_offsets[c], col_offsets[c+1]) with r_j = t_row_indices[j],
t_j = t_block_ids[j] (the CSC walk of the same blocks). Products accumulate in float32 in the
kernel's tensor-core dot and are rounded once to the input dtype at the store.

Programs
--------
* ``_dds_kernel``: one program per (m-tile, block-row r); it loops over the stored blocks of
  block-row r and writes the BM × b tile of y (zeros for an empty block-row: every tile of the
  output is written, so it is allocated with ``torch.empty``).
* ``_dsd_kernel``: the same per (m-tile, block-column c), walking the CSC index.
* ``_sdd_kernel``: one program per stored block k (times ``split`` parts of the m-range when
  there are too few blocks to fill the GPU); it loops over m in chunks of BK. With a split the
  parts write float32 partial blocks that one deterministic ``sum`` adds up before the single
  rounding (no atomics: the result does not depend on the order the programs run in).

Implementation notes
--------------------
* The grids of dds/dsd are 1-D, block-row (block-column) fastest: consecutive programs share the
  m-tile of x (dy), which then stays in L2 while all R block-rows read it; the stored blocks of W
  are small enough to stay in L2 anyway (4096² at 10 % density in bf16: 3.4 MB). A 1-D grid also
  avoids CUDA's 65535 limit on the second grid dimension.
* Inputs may be any-strided: the kernels take the strides of x, dy and values (a stride of 1 is
  specialized by Triton, so the contiguous case gets vectorized loads); the small 1-D index
  tensors are made contiguous. Row offsets are computed in int64, so M·K may exceed 2³¹.
* The transposed operands (Wᵀ in dds, dyᵀ in sdd) are loaded through swapped strides rather than
  with ``tl.trans``: the same tile, and Triton picks the shared-memory layout for the dot.
* float32 uses ``tl.dot(..., input_precision="ieee")`` unless ``allow_tf32`` (then ``"tf32"``);
  the keyword exists since triton 3.0 (``allow_tf32=`` is deprecated). 16-bit inputs pass
  Triton's default ``"tf32"``, which only affects float32 operands.
* float32 → bfloat16/float16 stores round to nearest even on the GPU. (The interpreter truncates
  float32 → bfloat16, and its dot cannot multiply bfloat16, so bfloat16 is tested on GPUs only.)
* Tile sizes, warps and stages come from a fixed table per block size and dtype (below), not
  autotuning: the interpreter cannot autotune across configs, and a table keeps the GPU path
  deterministic and cheap to launch. The pipeline depth is capped by the device's shared memory.
"""
from __future__ import annotations

import functools
import os
from typing import Tuple

import torch
from torch import Tensor

import triton
import triton.language as tl

from .. import _checks
from . import FP_FUSION

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# ---------------------------------------------------------------------------------------------
# Configs: (BM or BK, num_warps, num_stages) per block size b
# ---------------------------------------------------------------------------------------------
# UNMEASURED: chosen with the H100 in mind without a GPU to sweep on (the target case is bf16,
# M = 8192, a 4096 × 4096 weight, b = 64, 90 % block sparsity: ≥ 5× dense cuBLAS). Re-tune on the
# GPU and record the measurement here. Reasoning behind the first guess:
# * dds/dsd: the output tile is BM × b and each loop step a BM × b × b dot (in chunks of the
#   inner dimension, see _kc). BM = 128 with 4 warps (one Hopper warp group) for b ≤ 32; b ≥ 64
#   takes BM = 64 with 8 warps for register pressure (below). The loop is short at 10 % density
#   (a 4096-wide block-row holds ~6 blocks of 64, ~3 of 128), so 3 stages for b = 64 and 2 for
#   b = 128; b ≤ 32 has cheap steps, more of them (~25 for b = 16), and a deeper pipeline.
# * float32 tiles take twice the shared memory and registers: BM = 64 throughout.
# * sdd: the output is only b × b, so the m-chunk BK is the long dimension of each step; small
#   blocks take long chunks to keep each dot large enough for the tensor cores.
# * Register pressure, from compiling every config for sm_90 and sm_80 without a GPU (triton 3.9,
#   ptxas resource usage via cuobjdump): BM = 128 with 4 warps at b = 64 took 255 registers and
#   ~700 B of stack (spills) in dds/dsd; BM = 64 with 8 warps takes 128 (16-bit) and 153–179
#   (float32) with no stack. b = 128 spills at every tile tried (BM 32–128, 4–8 warps, the inner
#   dimension chunked by 16–64): the least is BM = 64, 8 warps (16-bit: 72–176 B of stack;
#   float32 with chunks of 16: 24–48 B). sdd float32 at b = 128 needs 8 warps (200 registers,
#   no stack; 4 warps spill).
_DENSE_CONFIGS = {  # dds and dsd, 16-bit inputs
    16: (128, 4, 4), 32: (128, 4, 4), 64: (64, 8, 3), 128: (64, 8, 2)}
_DENSE_CONFIGS_FP32 = {
    16: (64, 4, 3), 32: (64, 4, 3), 64: (64, 8, 3), 128: (64, 8, 2)}
_SDD_CONFIGS = {
    16: (128, 4, 4), 32: (128, 4, 4), 64: (64, 4, 3), 128: (64, 8, 3)}
_SDD_CONFIGS_FP32 = {
    16: (64, 4, 3), 32: (64, 4, 3), 64: (32, 4, 3), 128: (32, 8, 2)}

# sdd splits the m-range only while it has fewer than this many programs per SM (a wave of
# b × b blocks per SM at least twice over), and keeps at least this many BK-chunks per part so
# each part still runs a full pipeline and the float32 partials stay small.
_SDD_PROGRAMS_PER_SM = 2
_SDD_MIN_CHUNKS_PER_PART = 8


def _interpreting() -> bool:
    # triton reads the variable when a kernel is decorated: it must be set before import.
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> Tuple[int, int]:
    """(shared memory per block, opt-in, in bytes; number of SMs) of CUDA device ``index``."""
    props = torch.cuda.get_device_properties(index)
    # (the opt-in limit is what a Triton kernel may use; older torch builds lack the field)
    smem = getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block)
    return smem, props.multi_processor_count


def _config(kind: str, b: int, dtype: torch.dtype, device: torch.device) -> Tuple[int, int, int]:
    """(BM or BK, num_warps, num_stages) for ``kind`` in {"dense", "sdd"}."""
    fp32 = dtype == torch.float32
    if kind == "dense":
        tile, warps, stages = (_DENSE_CONFIGS_FP32 if fp32 else _DENSE_CONFIGS)[b]
        stage_bytes = (tile * b + b * b) * (4 if fp32 else 2)  # an x tile and a block
    else:
        tile, warps, stages = (_SDD_CONFIGS_FP32 if fp32 else _SDD_CONFIGS)[b]
        stage_bytes = 2 * tile * b * (4 if fp32 else 2)        # a dy chunk and an x chunk
    if device.type == "cuda":
        # Each pipeline stage holds one step's operands in shared memory; keep 16 KiB for the
        # epilogue's layout conversion. (float32 with b = 128 takes 96 KiB a stage: 2 stages fit
        # the H100's 227 KiB, 1 the A100's 163 KiB; GPUs with 99 KiB get fewer stages overall.)
        smem, _ = _device_limits(device.index if device.index is not None
                                 else torch.cuda.current_device())
        stages = max(1, min(stages, (smem - 16 * 1024) // stage_bytes))
    return tile, warps, stages


def _kc(b: int, dtype: torch.dtype) -> int:
    """The chunk of a block's inner dimension per dot in dds/dsd. A whole 128 × 128 block in one
    dot spilled heavily at every tile size (sm_90, triton 3.9: 255 registers and 660–17 000 B
    of stack); chunks of 64 (16-bit) and 16 (float32) spill the least (see the configs)."""
    return min(b, 16 if dtype == torch.float32 and b == 128 else 64)


def _precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    # "ieee" only matters for float32 operands; "tf32" is Triton's default for every dtype.
    return "ieee" if dtype == torch.float32 and not allow_tf32 else "tf32"


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def _dds_kernel(x, values, row_offsets, col_indices, y, M, R,
                stride_xm, stride_xk, stride_vn, stride_vi, stride_vj,
                B: tl.constexpr, BM: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr):
    # Block-row fastest (see the module notes: the x tile is shared by consecutive programs).
    pid = tl.program_id(0)
    r = pid % R
    rows = (pid // R) * BM + tl.arange(0, BM)
    row_ok = rows < M
    i = tl.arange(0, B)
    x_rows = x + rows.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros((BM, B), dtype=tl.float32)
    start = tl.load(row_offsets + r)
    end = tl.load(row_offsets + r + 1)
    for k in range(start, end):
        c = tl.load(col_indices + k).to(tl.int64)
        w_block = values + tl.cast(k, tl.int64) * stride_vn
        # The block's inner dimension in chunks of KC (see _KC).
        for kk in tl.static_range(0, B, KC):
            j = kk + tl.arange(0, KC)
            # Rows past M read 0 and are not stored; the columns c·b + j always exist.
            a = tl.load(x_rows + (c * B + j)[None, :] * stride_xk, mask=row_ok[:, None],
                        other=0.0)
            # values[k]ᵀ rows j: element (j, n) is values[k, n, j].
            w_t = tl.load(w_block + j[:, None] * stride_vj + i[None, :] * stride_vi)
            acc = tl.dot(a, w_t, acc, input_precision=PRECISION)
    y_ptrs = y + rows.to(tl.int64)[:, None] * (R * B) + (r * B + i)[None, :]
    tl.store(y_ptrs, acc.to(y.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _dsd_kernel(dy, values, col_offsets, t_row_indices, t_block_ids, dx, M, C,
                stride_dym, stride_dyn, stride_vn, stride_vi, stride_vj,
                B: tl.constexpr, BM: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr):
    # Block-column fastest: consecutive programs share the dy tile.
    pid = tl.program_id(0)
    c = pid % C
    rows = (pid // C) * BM + tl.arange(0, BM)
    row_ok = rows < M
    i = tl.arange(0, B)
    dy_rows = dy + rows.to(tl.int64)[:, None] * stride_dym
    acc = tl.zeros((BM, B), dtype=tl.float32)
    start = tl.load(col_offsets + c)
    end = tl.load(col_offsets + c + 1)
    for j in range(start, end):
        r = tl.load(t_row_indices + j).to(tl.int64)
        w_block = values + tl.load(t_block_ids + j).to(tl.int64) * stride_vn
        for kk in tl.static_range(0, B, KC):
            n = kk + tl.arange(0, KC)
            a = tl.load(dy_rows + (r * B + n)[None, :] * stride_dyn, mask=row_ok[:, None],
                        other=0.0)
            w = tl.load(w_block + n[:, None] * stride_vi + i[None, :] * stride_vj)
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
    dx_ptrs = dx + rows.to(tl.int64)[:, None] * (C * B) + (c * B + i)[None, :]
    tl.store(dx_ptrs, acc.to(dx.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _sdd_kernel(dy, x, row_indices, col_indices, out, M, NNZ, PART,
                stride_dym, stride_dyn, stride_xm, stride_xk, stride_out_part,
                B: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    # Block fastest: consecutive blocks mostly share their block-row (CSR order), so their dy
    # columns are read from L2. Part s covers rows [s·PART, min((s + 1)·PART, M)).
    pid = tl.program_id(0)
    k = pid % NNZ
    part = pid // NNZ
    r = tl.load(row_indices + k).to(tl.int64)
    c = tl.load(col_indices + k).to(tl.int64)
    i = tl.arange(0, B)
    mm = tl.arange(0, BK)
    # dyᵀ chunk (b × BK): element (n, m) is dy[m, r·b + n]; x chunk (BK × b).
    dy_cols = dy + (r * B + i)[:, None] * stride_dyn
    x_cols = x + (c * B + i)[None, :] * stride_xk
    m_start = part * PART
    m_end = tl.minimum(m_start + PART, M)
    acc = tl.zeros((B, B), dtype=tl.float32)
    for m0 in range(m_start, m_end, BK):
        m = m0 + mm
        m_ok = m < m_end  # the last chunk of a part is ragged; masked rows add 0
        m64 = m.to(tl.int64)
        dy_t = tl.load(dy_cols + m64[None, :] * stride_dym, mask=m_ok[None, :], other=0.0)
        xc = tl.load(x_cols + m64[:, None] * stride_xm, mask=m_ok[:, None], other=0.0)
        acc = tl.dot(dy_t, xc, acc, input_precision=PRECISION)
    out_ptrs = (out + part.to(tl.int64) * stride_out_part + k.to(tl.int64) * (B * B)
                + i[:, None] * B + i[None, :])
    tl.store(out_ptrs, acc.to(out.dtype.element_ty))


# ---------------------------------------------------------------------------------------------
# Launchers (same signatures and semantics as the reference)
# ---------------------------------------------------------------------------------------------

def _check_backend(t: Tensor, name: str) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; the Triton block-sparse kernels support "
                        "float32, bfloat16 and float16 (use the cpp or reference backend for "
                        "float64)")
    if _interpreting():
        if t.device.type != "cpu":
            raise RuntimeError("under TRITON_INTERPRET=1 the Triton block-sparse kernels need "
                               f"CPU tensors, got {t.device}")
    elif t.device.type != "cuda":
        raise RuntimeError("the Triton block-sparse kernels need CUDA tensors (or "
                           "TRITON_INTERPRET=1 set before importing triton), got "
                           f"{t.device}")


def _sdd_split(nnz: int, m: int, bk: int, device: torch.device) -> int:
    """How many parts sdd cuts the m-range into (1: none)."""
    if device.type != "cuda":
        return 1  # the interpreter gains nothing from more programs
    _, n_sm = _device_limits(device.index if device.index is not None
                             else torch.cuda.current_device())
    target = _SDD_PROGRAMS_PER_SM * n_sm
    if nnz >= target:
        return 1
    return max(1, min(triton.cdiv(target, nnz), m // (_SDD_MIN_CHUNKS_PER_PART * bk)))


def dds(x: Tensor, values: Tensor, row_offsets: Tensor, col_indices: Tensor, *,
        allow_tf32: bool = False) -> Tensor:
    _checks.check_dds(x, values, row_offsets, col_indices)
    _check_backend(x, "x")
    b, m, n_rows = values.shape[-1], x.shape[0], row_offsets.numel() - 1
    y = torch.empty((m, n_rows * b), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    if values.shape[0] == 0:
        return y.zero_()
    bm, warps, stages = _config("dense", b, x.dtype, x.device)
    grid = (n_rows * triton.cdiv(m, bm),)
    _dds_kernel[grid](x, values, row_offsets.contiguous(), col_indices.contiguous(), y, m,
                      n_rows, x.stride(0), x.stride(1), *values.stride(), B=b, BM=bm,
                      KC=_kc(b, x.dtype),
                      PRECISION=_precision(x.dtype, allow_tf32), num_warps=warps,
                      num_stages=stages, enable_fp_fusion=FP_FUSION)
    return y


def dsd(dy: Tensor, values: Tensor, col_offsets: Tensor, t_row_indices: Tensor,
        t_block_ids: Tensor, *, allow_tf32: bool = False) -> Tensor:
    _checks.check_dsd(dy, values, col_offsets, t_row_indices, t_block_ids)
    _check_backend(dy, "dy")
    b, m, n_cols = values.shape[-1], dy.shape[0], col_offsets.numel() - 1
    dx = torch.empty((m, n_cols * b), dtype=dy.dtype, device=dy.device)
    if m == 0:
        return dx
    if values.shape[0] == 0:
        return dx.zero_()
    bm, warps, stages = _config("dense", b, dy.dtype, dy.device)
    grid = (n_cols * triton.cdiv(m, bm),)
    _dsd_kernel[grid](dy, values, col_offsets.contiguous(), t_row_indices.contiguous(),
                      t_block_ids.contiguous(), dx, m, n_cols, dy.stride(0), dy.stride(1),
                      *values.stride(), B=b, BM=bm, KC=_kc(b, dy.dtype),
                      PRECISION=_precision(dy.dtype, allow_tf32),
                      enable_fp_fusion=FP_FUSION, num_warps=warps, num_stages=stages)
    return dx


def sdd(dy: Tensor, x: Tensor, row_indices: Tensor, col_indices: Tensor, block_size: int, *,
        allow_tf32: bool = False) -> Tensor:
    _checks.check_sdd(dy, x, row_indices, col_indices, block_size)
    _check_backend(dy, "dy")
    b, m, nnz = block_size, dy.shape[0], row_indices.numel()
    if nnz == 0 or m == 0:  # no blocks, or an empty sum over m
        return torch.zeros((nnz, b, b), dtype=dy.dtype, device=dy.device)
    bk, warps, stages = _config("sdd", b, dy.dtype, dy.device)
    split = _sdd_split(nnz, m, bk, dy.device)
    # Rows per part, a multiple of BK so only a part's last chunk is ragged; recompute the
    # number of parts so none is empty (every partial block is then written).
    part = triton.cdiv(triton.cdiv(m, split), bk) * bk
    split = triton.cdiv(m, part)
    if split == 1:
        out = torch.empty((nnz, b, b), dtype=dy.dtype, device=dy.device)
    else:
        out = torch.empty((split, nnz, b, b), dtype=torch.float32, device=dy.device)
    _sdd_kernel[(split * nnz,)](dy, x, row_indices.contiguous(), col_indices.contiguous(), out,
                                m, nnz, part, dy.stride(0), dy.stride(1), x.stride(0),
                                x.stride(1), nnz * b * b, B=b, BK=bk,
                                PRECISION=_precision(dy.dtype, allow_tf32), num_warps=warps,
                                num_stages=stages, enable_fp_fusion=FP_FUSION)
    if split == 1:
        return out
    # float32 partials, summed in a fixed order, rounded once.
    return out.sum(0).to(dy.dtype)


__all__ = ["dds", "dsd", "sdd"]
