r"""Pure-PyTorch reference of the block-sparse matmuls of a linear layer (the dense masked matmul).

A weight ``W`` of shape (N = out_features) × (K = in_features) is cut into b × b blocks
(b ∈ {16, 32, 64, 128}): R = N / b block-rows and C = K / b block-columns. ``nnz`` of them are
stored, in row-major (CSR) order::

    values[k]          (b × b)   W[r_k·b : r_k·b + b, c_k·b : c_k·b + b],  k = 0 … nnz−1
    row_offsets        (R + 1)   blocks of block-row r are k ∈ [row_offsets[r], row_offsets[r+1])
    col_indices        (nnz)     c_k;  row_indices (nnz): r_k
    col_offsets        (C + 1)   the same blocks in column-major (CSC) order: position j ∈
    t_row_indices      (nnz)       [col_offsets[c], col_offsets[c+1]) is block t_block_ids[j]
    t_block_ids        (nnz)       of values, whose block-row is t_row_indices[j]

All index tensors are int32. W is zero outside the stored blocks. With x (M × K) and the output
gradient dy (M × N), the three products of ``y = x Wᵀ`` are (stk-style names: the letters say
which operands are dense or sparse, output first)::

    dds   y  = x · Wᵀ                       dense  = dense × sparseᵀ      (forward)
    dsd   dx = dy · W  = (Wᵀ · dyᵀ)ᵀ        dense  = sparse(ᵀ) × dense    (input gradient;
                                                       walks W by block-column: the CSC index)
    sdd   dW[k] = dy[:, r_k·b …]ᵀ · x[:, c_k·b …]     sparse = dense × dense, only at the
                                                       stored blocks      (weight gradient)

Products accumulate in float32 (float64 for float64 inputs) and are rounded once to the input
dtype. ``allow_tf32`` lets float32 products on CUDA use TF32 tensor cores; it is ignored here.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _acc(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float64 else t.float()


def dense_weight(values: Tensor, row_indices: Tensor, col_indices: Tensor, n_block_rows: int,
                 n_block_cols: int) -> Tensor:
    """The dense (N × K) weight with zeros outside the blocks (in the values' dtype)."""
    b = values.shape[-1]
    grid = values.new_zeros(n_block_rows, n_block_cols, b, b)
    grid[row_indices.long(), col_indices.long()] = values
    return grid.permute(0, 2, 1, 3).reshape(n_block_rows * b, n_block_cols * b)


def row_indices_of(row_offsets: Tensor, nnz: int) -> Tensor:
    """Block-row of every block, from the CSR offsets (no host synchronization)."""
    counts = (row_offsets[1:] - row_offsets[:-1]).long()
    rows = torch.arange(counts.numel(), device=row_offsets.device)
    return torch.repeat_interleave(rows, counts, output_size=nnz)


def dds(x: Tensor, values: Tensor, row_offsets: Tensor, col_indices: Tensor, *,
        allow_tf32: bool = False) -> Tensor:
    b = values.shape[-1]
    weight = dense_weight(_acc(values), row_indices_of(row_offsets, values.shape[0]),
                          col_indices, row_offsets.numel() - 1, x.shape[1] // b)
    return (_acc(x) @ weight.t()).to(x.dtype)


def dsd(dy: Tensor, values: Tensor, col_offsets: Tensor, t_row_indices: Tensor,
        t_block_ids: Tensor, *, allow_tf32: bool = False) -> Tensor:
    b = values.shape[-1]
    t_cols = row_indices_of(col_offsets, values.shape[0])
    weight = dense_weight(_acc(values)[t_block_ids.long()], t_row_indices, t_cols,
                          dy.shape[1] // b, col_offsets.numel() - 1)
    return (_acc(dy) @ weight).to(dy.dtype)


def sdd(dy: Tensor, x: Tensor, row_indices: Tensor, col_indices: Tensor, block_size: int, *,
        allow_tf32: bool = False) -> Tensor:
    b = block_size
    full = _acc(dy).t() @ _acc(x)  # N × K: the dense weight gradient, then keep the blocks
    blocks = full.view(dy.shape[1] // b, b, x.shape[1] // b, b).permute(0, 2, 1, 3)
    return blocks[row_indices.long(), col_indices.long()].to(dy.dtype)
