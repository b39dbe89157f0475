r"""Block-sparse layouts with a fixed number of blocks, built on the device.

A weight of (R·b) × (C·b) keeps ``nnz`` of its R·C blocks of b × b. The layout is given by the
sorted flat ids ``i_k = r_k·C + c_k`` of the kept blocks (row-major, so position k of the ids is
position k of the block values). From them, with device ops only (sort, index_add, cumsum; no
``nonzero``, ``bincount`` or ``.item()``, so nothing waits for the device)::

    row_indices[k] = i_k // C           col_indices[k] = i_k mod C
    row_offsets    = [0, cumsum(blocks per block-row)]                  (CSR)
    t_block_ids    = argsort(c_k·R + r_k)     the blocks in column-major order
    t_row_indices  = row_indices[t_block_ids] col_offsets = [0, cumsum(blocks per block-col)]

``nnz`` is fixed for the life of a layout: :meth:`BlockLayout.set_block_ids_` writes a new set of
ids into the same buffers (same storage, same pointers, so a CUDA graph or a compiled graph that
captured them stays valid).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import _checks

INDEX_NAMES = ("block_ids", "row_offsets", "row_indices", "col_indices", "col_offsets",
               "t_row_indices", "t_block_ids")


def num_blocks(n_blocks: int, density: float) -> int:
    """Blocks kept at ``density``: max(1, round(density · n_blocks))."""
    return max(1, min(n_blocks, round(density * n_blocks)))


def _offsets(groups: Tensor, n_groups: int) -> Tensor:
    counts = torch.zeros(n_groups + 1, dtype=torch.int64, device=groups.device)
    counts.index_add_(0, groups + 1, torch.ones_like(groups))
    return counts.cumsum_(0)


def check_shape(out_features: int, in_features: int, block_size: int) -> Tuple[int, int]:
    """(block-rows, block-cols) of an out_features × in_features weight; clear errors for bad
    sizes."""
    _checks.check_block_size(block_size)
    for name, features in (("out_features", out_features), ("in_features", in_features)):
        if isinstance(features, bool) or not isinstance(features, int) or features <= 0:
            raise ValueError(f"{name} must be a positive int, got {features!r}")
        if features % block_size:
            raise ValueError(f"{name}={features} is not a multiple of block_size={block_size}")
    return out_features // block_size, in_features // block_size


def build_indices(block_ids: Tensor, n_block_rows: int, n_block_cols: int) -> Dict[str, Tensor]:
    """Every index tensor of the layout whose kept blocks have flat ids ``block_ids`` (int64,
    unique, any order). ``block_ids`` of the result is sorted; the others are int32."""
    ids = block_ids.sort().values
    rows, cols = ids // n_block_cols, ids % n_block_cols
    t_order = torch.argsort(cols * n_block_rows + rows)
    i32 = torch.int32
    return {
        "block_ids": ids,
        "row_offsets": _offsets(rows, n_block_rows).to(i32),
        "row_indices": rows.to(i32),
        "col_indices": cols.to(i32),
        "col_offsets": _offsets(cols, n_block_cols).to(i32),
        "t_row_indices": rows[t_order].to(i32),
        "t_block_ids": t_order.to(i32),
    }


class BlockLayout:
    """The index tensors of a block-sparse (out_features × in_features) weight with ``nnz``
    blocks of ``block_size`` × ``block_size``; see the module docstring for each tensor."""

    def __init__(self, out_features: int, in_features: int, block_size: int, block_ids: Tensor):
        self.out_features, self.in_features, self.block_size = (out_features, in_features,
                                                                block_size)
        self.n_block_rows, self.n_block_cols = check_shape(out_features, in_features, block_size)
        self._check_ids(block_ids)
        self.indices = build_indices(block_ids.long(), self.n_block_rows, self.n_block_cols)

    @classmethod
    def from_indices(cls, out_features: int, in_features: int, block_size: int,
                     indices: Dict[str, Tensor]) -> "BlockLayout":
        """A layout over existing index tensors (no copy, no checks of their contents)."""
        layout = cls.__new__(cls)
        layout.out_features, layout.in_features, layout.block_size = (out_features, in_features,
                                                                      block_size)
        layout.n_block_rows = out_features // block_size
        layout.n_block_cols = in_features // block_size
        layout.indices = dict(indices)
        return layout

    @property
    def nnz(self) -> int:
        return self.indices["block_ids"].numel()

    @property
    def device(self) -> torch.device:
        return self.indices["block_ids"].device

    def __getattr__(self, name: str) -> Tensor:
        indices = self.__dict__.get("indices")
        if indices is not None and name in indices:
            return indices[name]
        raise AttributeError(name)

    def _check_ids(self, block_ids: Tensor, nnz: Optional[int] = None) -> None:
        if not isinstance(block_ids, Tensor) or block_ids.dim() != 1 or (
                block_ids.dtype not in (torch.int32, torch.int64)):
            raise TypeError("block_ids must be a 1-D int32/int64 tensor of flat block ids "
                            "(block_row · block_cols + block_col)")
        total = self.n_block_rows * self.n_block_cols
        if not 1 <= block_ids.numel() <= total:
            raise ValueError(f"block_ids must keep between 1 and {total} blocks, got "
                             f"{block_ids.numel()}")
        if nnz is not None and block_ids.numel() != nnz:
            raise ValueError(f"the layout keeps {nnz} blocks; block_ids has "
                             f"{block_ids.numel()} (the number of blocks is fixed)")

    def set_block_ids_(self, block_ids: Tensor) -> None:
        """Switch to the blocks ``block_ids`` (same count), in place in the same buffers."""
        self._check_ids(block_ids, self.nnz)
        new = build_indices(block_ids.to(self.device, torch.int64), self.n_block_rows,
                            self.n_block_cols)
        for name, t in new.items():
            self.indices[name].copy_(t)

    def block_mask(self) -> Tensor:
        """The (block-rows × block-cols) bool mask of kept blocks."""
        mask = torch.zeros(self.n_block_rows * self.n_block_cols, dtype=torch.bool,
                           device=self.device)
        mask[self.indices["block_ids"]] = True
        return mask.view(self.n_block_rows, self.n_block_cols)

    def dense_mask(self) -> Tensor:
        """The (out_features × in_features) bool mask of the kept entries."""
        b = self.block_size
        return self.block_mask().repeat_interleave(b, 0).repeat_interleave(b, 1)

    @classmethod
    def random(cls, out_features: int, in_features: int, block_size: int, nnz: int, *,
               generator: Optional[torch.Generator] = None, device=None) -> "BlockLayout":
        total = (out_features // block_size) * (in_features // block_size)
        ids = torch.randperm(total, generator=generator)[:nnz]
        return cls(out_features, in_features, block_size, ids.to(device))
