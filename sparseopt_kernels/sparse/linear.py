r"""``BlockSparseLinear``: a linear layer whose weight is block-sparse, trained in that form.

The weight W (out_features × in_features) keeps ``nnz = max(1, round(density · R·C))`` of its
R·C blocks of b × b; only they are stored (``values``, nnz × b × b, the parameter) and only
they are multiplied. With x (… × in_features) flattened to M rows::

    forward   y  = x · Wᵀ + bias               sparseopt::dds
    backward  dx = dy · W                      sparseopt::dsd   (the layout's CSC index)
              dW = dyᵀ · x at the kept blocks  sparseopt::sdd   (gradient of ``values``)
              dbias = Σ_rows dy

so ``y == F.linear(x, layer.to_dense(), layer.bias)`` and an optimizer step on ``values`` is the
dense-masked step of the kept weights. At steps where a :class:`~.block_dst.BlockRigL` needs
it, the backward also accumulates the dense weight gradient dyᵀ·x (one dense GEMM, only then).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor, nn

from .. import _checks
from ..reference.block_sparse import dense_weight
from .layout import INDEX_NAMES, BlockLayout, check_shape, num_blocks


def _allow_tf32(t: Tensor) -> bool:
    return t.is_cuda and torch.backends.cuda.matmul.allow_tf32


class DenseGradSink:
    """Where the backward accumulates the dense weight gradient dyᵀ·x (N × K, float32) while
    ``active``; read and cleared by the block scheduler at an update step."""

    def __init__(self) -> None:
        self.active = False
        self.grad: Optional[Tensor] = None

    def add(self, g: Tensor) -> None:
        self.grad = g if self.grad is None else self.grad.add_(g)


class BlockSparseLinearFunction(torch.autograd.Function):
    """y = x·Wᵀ (+ bias) for a 2-D x; the gradients of x, values and bias as above."""

    @staticmethod
    def forward(ctx, x, values, bias, row_offsets, col_indices, row_indices, col_offsets,
                t_row_indices, t_block_ids, sink):
        tf32 = _allow_tf32(x)
        y = torch.ops.sparseopt.dds(x, values, row_offsets, col_indices, allow_tf32=tf32)
        if bias is not None:
            y = y.add_(bias)
        ctx.save_for_backward(x, values, row_offsets, col_indices, row_indices, col_offsets,
                              t_row_indices, t_block_ids)
        ctx.has_bias, ctx.tf32, ctx.sink = bias is not None, tf32, sink
        return y

    @staticmethod
    def backward(ctx, dy):
        (x, values, row_offsets, col_indices, row_indices, col_offsets, t_row_indices,
         t_block_ids) = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dvalues = dbias = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.sparseopt.dsd(dy, values, col_offsets, t_row_indices, t_block_ids,
                                         allow_tf32=ctx.tf32)
        if ctx.needs_input_grad[1]:
            dvalues = torch.ops.sparseopt.sdd(dy, x, row_indices, col_indices,
                                              values.shape[-1], allow_tf32=ctx.tf32)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = dy.sum(0, dtype=torch.float32 if dy.dtype != torch.float64 else None
                           ).to(dy.dtype)
        if ctx.sink is not None and ctx.sink.active:
            acc = torch.float64 if dy.dtype == torch.float64 else torch.float32
            ctx.sink.add(dy.t().to(acc) @ x.to(acc))
        return dx, dvalues, dbias, None, None, None, None, None, None, None


class BlockSparseLinear(nn.Module):
    r"""``y = x Wᵀ + b`` with W block-sparse: ``nnz = max(1, round(density · blocks))`` blocks of
    ``block_size`` × ``block_size`` kept and multiplied, the rest exactly zero.

    Args:
        in_features, out_features: multiples of ``block_size``.
        bias: learn an additive bias.
        block_size: 16, 32, 64 or 128.
        density: fraction of blocks kept, in (0, 1]; the kept blocks are drawn at random.

    Attributes:
        values: the parameter, (nnz × block_size × block_size); block k is
            ``W[r_k·b : r_k·b + b, c_k·b : c_k·b + b]`` in row-major block order.
        bias: (out_features,) or None.
        block_ids, row_offsets, …: the layout's index buffers (see :mod:`.layout`), saved in
            the state_dict; a layout update rewrites them in place.

    Initialization matches ``nn.Linear`` for the kept weights: U(−1/√in, 1/√in).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 block_size: int = 64, density: float = 0.1, device=None, dtype=None) -> None:
        super().__init__()
        density = _checks.check_density("density", density)
        R, C = check_shape(out_features, in_features, block_size)
        ids = torch.randperm(R * C)[:num_blocks(R * C, density)]
        self._init(in_features, out_features, block_size, ids, bias, device, dtype)

    @classmethod
    def with_blocks(cls, in_features: int, out_features: int, block_ids: Tensor,
                    bias: bool = True, block_size: int = 64, device=None,
                    dtype=None) -> "BlockSparseLinear":
        """The layer keeping exactly the blocks with flat ids ``block_ids`` (``r·block_cols + c``,
        unique), initialized like the constructor."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._init(in_features, out_features, block_size, block_ids, bias, device, dtype)
        return layer

    def _init(self, in_features, out_features, block_size, block_ids, bias, device, dtype):
        factory = {"device": device, "dtype": dtype}
        layout = BlockLayout(out_features, in_features, block_size,
                             block_ids.to(device=device, dtype=torch.int64))
        self.in_features, self.out_features, self.block_size = (in_features, out_features,
                                                                 block_size)
        self.block_rows, self.block_cols = layout.n_block_rows, layout.n_block_cols
        for name, t in layout.indices.items():
            self.register_buffer(name, t)
        self.values = nn.Parameter(torch.empty(layout.nnz, block_size, block_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.grad_sink = DenseGradSink()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.values, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    # --- construction from a dense layer -------------------------------------------------------
    @classmethod
    def from_dense(cls, linear: nn.Linear, block_size: int = 64,
                   density: float = 0.1) -> "BlockSparseLinear":
        """The layer keeping the ``max(1, round(density · blocks))`` blocks of ``linear.weight``
        with the largest Frobenius norm (values and bias copied, same device and dtype)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        density = _checks.check_density("density", density)
        weight = linear.weight.detach()
        R, C = check_shape(linear.out_features, linear.in_features, block_size)
        b = block_size
        norms = weight.float().view(R, b, C, b).pow(2).sum((1, 3)).view(-1)
        ids = torch.topk(norms, num_blocks(R * C, density)).indices
        layer = cls.with_blocks(linear.in_features, linear.out_features, ids,
                                linear.bias is not None, b, weight.device, weight.dtype)
        with torch.no_grad():
            blocks = weight.view(R, b, C, b).permute(0, 2, 1, 3)
            layer.values.copy_(blocks[layer.row_indices.long(), layer.col_indices.long()])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    # --- views ------------------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return self.values.shape[0]

    @property
    def density(self) -> float:
        """Fraction of blocks kept (fixed for the life of the layer)."""
        return self.nnz / (self.block_rows * self.block_cols)

    @property
    def layout(self) -> BlockLayout:
        """A view of the layout buffers (no copy)."""
        return BlockLayout.from_indices(self.out_features, self.in_features, self.block_size,
                                        {name: getattr(self, name) for name in INDEX_NAMES})

    def to_dense(self) -> Tensor:
        """The dense (out_features × in_features) weight, zero outside the blocks
        (differentiable with respect to ``values``)."""
        return dense_weight(self.values, self.row_indices, self.col_indices, self.block_rows,
                            self.block_cols)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        lead = x.shape[:-1]
        sink = self.grad_sink if self.grad_sink.active and torch.is_grad_enabled() else None
        y = BlockSparseLinearFunction.apply(
            x.reshape(-1, self.in_features), self.values, self.bias, self.row_offsets,
            self.col_indices, self.row_indices, self.col_offsets, self.t_row_indices,
            self.t_block_ids, sink)
        return y.view(*lead, self.out_features)

    def _check_input(self, x) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have in_features={self.in_features} in its last "
                             f"dimension, got shape {tuple(x.shape)}")
        if x.dtype != self.values.dtype:
            raise TypeError(f"input has dtype {x.dtype} but the layer's values are "
                            f"{self.values.dtype}; cast one of them (e.g. layer.to({x.dtype}))")
        if x.device != self.values.device:
            raise ValueError(f"input is on {x.device} but the layer is on "
                             f"{self.values.device}")

    # --- layout updates ------------------------------------------------------------------------
    @torch.no_grad()
    def set_blocks_(self, block_ids: Tensor, state: Optional[List[Tensor]] = None) -> None:
        """Keep the blocks with flat ids ``block_ids`` (``r·block_cols + c``, same count as
        now, unique): blocks kept before keep their values, new ones start at zero. Every
        tensor of ``state`` shaped like ``values`` (optimizer moments) is remapped the same
        way. Runs on the device with no host synchronization; no buffer is reallocated."""
        old_ids = self.block_ids.clone()
        self.layout.set_block_ids_(block_ids)
        pos = torch.searchsorted(old_ids, self.block_ids).clamp_(max=self.nnz - 1)
        kept = (old_ids[pos] == self.block_ids).view(-1, 1, 1)
        for t in [self.values] + [s for s in (state or []) if s.shape == self.values.shape]:
            t.copy_(torch.where(kept, t[pos], torch.zeros((), dtype=t.dtype, device=t.device)))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block_size={self.block_size}, "
                f"density={self.density:.4g} ({self.nnz} of "
                f"{self.block_rows * self.block_cols} blocks)")


__all__ = ["BlockSparseLinear", "BlockSparseLinearFunction", "DenseGradSink"]
