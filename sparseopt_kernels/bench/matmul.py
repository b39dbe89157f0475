"""The ``matmul`` family: a linear layer ``y = x Wᵀ`` with a block-sparse weight W.

Cases:

* ``block-sparse-linear``: the forward ``y = x Wᵀ`` (our ``sparseopt::dds``).
* ``block-sparse-linear-fwd-bwd``: forward and backward of the layer (dds, then the input
  gradient ``dx = dy W`` (dsd) and the weight gradient at the kept blocks (sdd)); no bias, so
  every provider does the same three products.
* ``block-layout-update``: rewriting the layout of a layer (new block ids → CSR and CSC index,
  values and two optimizer-state tensors remapped), as a BlockRigL/BlockSET update does.

Providers:

* ``dense``             ``F.linear(x, W)`` with W stored dense (zeros included): the baseline.
* ``torch-bsr``         ``F.linear(x, W_bsr)``, W as a torch BSR tensor (forward only).
* ``torch-bsr-mm``      ``(W_bsr @ xᵀ)ᵀ``, the sparse × dense product directly (forward only).
* ``ours-cuda`` / ``ours-triton`` / ``ours-cpp`` / ``reference``: ``BlockSparseLinear`` on
  that backend.

Sizes are ``MxKxN/bB/dD``: x is M × K, W is N × K with B × B blocks of which a fraction D is
kept (chosen at random, exactly max(1, round(D · blocks)) of them). TFLOP/s count the operations
a provider must do (sparse: 2·M·K·N·D per product; dense, zeros included: 2·M·K·N), and
``%dense`` is a provider's TFLOP/s over dense's: how close a sparse kernel gets to the dense
hardware rate. The dense float32 baseline runs in the same math mode as ours (TF32 off unless
``torch.backends.cuda.matmul.allow_tf32`` is set).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference.block_sparse import dense_weight
from ..sparse.layout import num_blocks
from ..sparse.linear import BlockSparseLinear
from . import engine
from .engine import Case, Family, Provider, Size

PRESETS = {
    # issue 4's GPU targets: M = 8192 tokens, a 4096 × 4096 layer, 90% / 50% block sparsity
    "standard": ["8192x4096x4096/b64/d0.1", "8192x4096x4096/b32/d0.1",
                 "8192x4096x4096/b64/d0.5", "8192x4096x4096/b128/d0.1"],
    # issue 4's CPU target: a 2048 → 2048 layer, batch 1024, block 64, 90% sparse
    "cpu": ["1024x2048x2048/b64/d0.1", "1024x2048x2048/b64/d0.5"],
    "quick": ["64x128x128/b16/d0.25"],
}
CHECK_ROWS = 256  # the correctness check uses the first rows of x (each row is independent)

_SIZE = re.compile(r"^(\d+)x(\d+)x(\d+)(?:/b(\d+))?(?:/d([0-9.]+))?$")


def parse_size(token: str) -> Optional[Size]:
    """``"512x1024x1024/b32/d0.1"`` (block 32 and density 0.1 are the defaults); None for a
    token of another family."""
    token = token.strip()
    if token.count("x") != 2:
        return None
    m = _SIZE.match(token)
    if m is None:
        raise ValueError(f"bad matmul size {token!r}: expected MxKxN[/bBLOCK][/dDENSITY], "
                         "e.g. 512x1024x1024/b32/d0.1")
    M, K, N = (int(m.group(i)) for i in (1, 2, 3))
    block = int(m.group(4) or 32)
    density = float(m.group(5) or 0.1)
    if K % block or N % block:
        raise ValueError(f"bad matmul size {token!r}: K and N must be multiples of the block")
    if not 0 < density <= 1:
        raise ValueError(f"bad matmul size {token!r}: density must be in (0, 1]")
    return Size(label=f"{M}x{K}x{N}/b{block}/d{density:g}", n_tensors=1, numel=K * N,
                params=(("M", M), ("K", K), ("N", N), ("block", block), ("density", density)))


@dataclass
class LinearInputs:
    x: Tensor                   # M × K
    dy: Tensor                  # M × N, the output gradient of the backward cases
    weight: Tensor              # N × K, dense, zero outside the kept blocks
    weight_bsr: Optional[Tensor]  # the same weight as a torch BSR tensor (forward cases)
    layer: BlockSparseLinear    # the same weight, ours (no bias)
    mask: Tensor                # N × K bool, the kept entries
    block: int
    density: float              # actual fraction of kept blocks


def make_inputs(size: Size, device: str, dtype: torch.dtype, seed: int,
                with_bsr: bool = True) -> LinearInputs:
    M, K, N, block = (size.get(k) for k in ("M", "K", "N", "block"))
    gen = torch.Generator().manual_seed(seed)
    R, C = N // block, K // block
    ids = torch.randperm(R * C, generator=gen)[:num_blocks(R * C, size.get("density"))]
    layer = BlockSparseLinear.with_blocks(K, N, ids, False, block, device, dtype)
    with torch.no_grad():
        layer.values.copy_(torch.randn(layer.values.shape, generator=gen) / K ** 0.5)
    x = torch.randn(M, K, generator=gen).to(device=device, dtype=dtype)
    dy = torch.randn(M, N, generator=gen).to(device=device, dtype=dtype)
    weight = layer.to_dense().detach()
    weight_bsr = None
    if with_bsr:
        with warnings.catch_warnings():  # "Sparse BSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            weight_bsr = weight.to_sparse_bsr((block, block))
    return LinearInputs(x=x, dy=dy, weight=weight, weight_bsr=weight_bsr, layer=layer,
                        mask=layer.layout.dense_mask(), block=block, density=layer.density)


def check_size(size: Size) -> Size:
    params = dict(size.params)
    params["M"] = min(params["M"], CHECK_ROWS)
    return Size(label=size.label, n_tensors=1, numel=size.numel, params=tuple(params.items()))


def tolerance(dtype: torch.dtype) -> Tuple[float, float]:
    """|y| ~ 1 (W is scaled by 1/sqrt(K)); |dx|, |dW| grow like sqrt(M) and sqrt(N) at most;
    low precision accumulates in float32 but rounds the output; TF32 is off by default."""
    return {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-3),
            torch.bfloat16: (2e-2, 5e-2), torch.float16: (5e-3, 2e-2)}[dtype]


def _flops(products: int) -> Callable[[Size, Provider], float]:
    """Operations one call must do: 2·M·K·N·density per product for a sparse provider;
    2·M·K·N for dense, which multiplies the zeros too (its TFLOP/s is the hardware rate)."""
    def flops(size: Size, provider: Provider) -> float:
        M, K, N = size.get("M"), size.get("K"), size.get("N")
        dense = provider.name == "dense"
        return products * 2.0 * M * K * N * (1.0 if dense else size.get("density"))
    return flops


def _bsr_cpu_dtypes(device_type: str, dtype: torch.dtype) -> Optional[str]:
    if device_type == "cpu" and dtype not in (torch.float32, torch.float64):
        return "torch's CPU BSR matmul (MKL) supports float32 and float64 only"
    return None


# --- forward -------------------------------------------------------------------------------------

def _forward_expected(inputs: LinearInputs, _computes: str) -> List[Tensor]:
    return [F.linear(inputs.x.double(), inputs.weight.double())]


def _ours_forward(inputs: LinearInputs):
    layer, x = inputs.layer, inputs.x
    return lambda: layer(x).detach()


# --- forward + backward --------------------------------------------------------------------------

def _fwd_bwd_inputs(size, device, dtype, seed):
    return make_inputs(size, device, dtype, seed, with_bsr=False)


def _fwd_bwd_expected(inputs: LinearInputs, _computes: str) -> List[Tensor]:
    x, dy, w = inputs.x.double(), inputs.dy.double(), inputs.weight.double()
    return [x @ w.t(), dy @ w, (dy.t() @ x) * inputs.mask]


def _dense_fwd_bwd(inputs: LinearInputs):
    x = inputs.x.detach().requires_grad_()
    w = inputs.weight.detach().requires_grad_()

    def step():
        x.grad = w.grad = None
        y = F.linear(x, w)
        y.backward(inputs.dy)
        return y.detach(), x.grad, w.grad * inputs.mask  # the mask only for the check
    return step


def _ours_fwd_bwd(inputs: LinearInputs):
    layer = inputs.layer
    x = inputs.x.detach().requires_grad_()

    def step():
        x.grad = layer.values.grad = None
        y = layer(x)
        y.backward(inputs.dy)
        return y.detach(), x.grad, layer.values.grad

    return step


def _fwd_bwd_outputs(inputs: LinearInputs, result) -> List[Tensor]:
    y, dx, dw = result
    if dw.dim() == 3:  # our gradient of the kept blocks, laid out densely for the check
        layer = inputs.layer
        dw = dense_weight(dw, layer.row_indices, layer.col_indices, layer.block_rows,
                          layer.block_cols)
    return [y, dx, dw]


# --- layout update -------------------------------------------------------------------------------

def _update_expected(inputs: LinearInputs, _computes: str) -> List[Tensor]:
    """After one update to the alternate ids: the dense weight keeps the blocks in both id sets
    (zero elsewhere) and the index matches the alternate ids."""
    layer = inputs.layer
    ids, alternate = _alternate_ids(layer)
    both = torch.isin(alternate, ids)
    grid = torch.zeros(layer.block_rows * layer.block_cols, dtype=torch.bool, device=ids.device)
    grid[alternate[both]] = True
    b = layer.block_size
    mask = grid.view(layer.block_rows, layer.block_cols).repeat_interleave(b, 0
                                                                          ).repeat_interleave(b, 1)
    return [inputs.weight.double() * mask, alternate.sort().values.double()]


def _alternate_ids(layer: BlockSparseLinear) -> Tuple[Tensor, Tensor]:
    """The layer's block ids and a second set that swaps out a third of them (seeded)."""
    ids = layer.block_ids.clone()
    total = layer.block_rows * layer.block_cols
    gen = torch.Generator().manual_seed(1)
    free = torch.ones(total, dtype=torch.bool)
    free[ids.cpu()] = False
    candidates = free.nonzero().view(-1)
    k = min(max(1, layer.nnz // 3), candidates.numel())
    grown = candidates[torch.randperm(candidates.numel(), generator=gen)[:k]]
    alternate = ids.clone()
    alternate[torch.randperm(layer.nnz, generator=gen)[:k].to(ids.device)] = grown.to(ids.device)
    return ids, alternate


def _layout_update(inputs: LinearInputs):
    layer = inputs.layer
    ids, alternate = _alternate_ids(layer)
    state = [torch.randn_like(layer.values), torch.rand_like(layer.values)]  # Adam's m and v
    targets = [alternate, ids]
    calls = [0]

    def step():
        layer.set_blocks_(targets[calls[0] % 2], state)
        calls[0] += 1
        return layer
    return step


def _update_outputs(_inputs: LinearInputs, layer: BlockSparseLinear) -> List[Tensor]:
    return [layer.to_dense().detach(), layer.block_ids]


def _register() -> None:
    engine.register_family(Family(
        name="matmul", description="block-sparse linear layers: forward, backward, layout "
        "updates", presets=PRESETS, parse_size=parse_size,
        default_preset=lambda device_type: "standard" if device_type == "cuda" else "cpu"))
    ours = "BlockSparseLinear"
    engine.register_case(Case(
        family="matmul", name="block-sparse-linear",
        description="y = x @ W^T, W block-sparse", make_inputs=make_inputs,
        expected=_forward_expected, outputs=lambda inputs, y: [y], tolerance=tolerance,
        check_size=check_size, flops=_flops(1),
        providers={p.name: p for p in [
            Provider("dense", lambda i: lambda: F.linear(i.x, i.weight), baseline=True,
                     description="F.linear with the weight stored dense"),
            Provider("torch-bsr", lambda i: lambda: F.linear(i.x, i.weight_bsr),
                     baseline=True, unavailable=_bsr_cpu_dtypes,
                     description="F.linear with a torch BSR weight"),
            Provider("torch-bsr-mm", lambda i: lambda: (i.weight_bsr @ i.x.t()).t(),
                     unavailable=_bsr_cpu_dtypes, description="(W_bsr @ x^T)^T"),
        ] + engine.ours_providers(_no_grad(_ours_forward), lambda dtype: None,
                                  kernel_family="block_sparse", description=ours)}))
    engine.register_case(Case(
        family="matmul", name="block-sparse-linear-fwd-bwd",
        description="y = x @ W^T, then dx = dy @ W and dW at the kept blocks",
        make_inputs=_fwd_bwd_inputs, expected=_fwd_bwd_expected,
        outputs=_fwd_bwd_outputs, tolerance=tolerance,
        check_size=check_size, flops=_flops(3),
        providers={p.name: p for p in [
            Provider("dense", _dense_fwd_bwd, baseline=True,
                     description="F.linear forward + backward, weight stored dense"),
        ] + engine.ours_providers(_ours_fwd_bwd, lambda dtype: None,
                                  kernel_family="block_sparse", description=ours)}))
    engine.register_case(Case(
        family="matmul", name="block-layout-update",
        description="new block ids: index rebuilt, values and 2 state tensors remapped",
        make_inputs=_fwd_bwd_inputs, expected=_update_expected, outputs=_update_outputs,
        tolerance=tolerance, check_size=check_size,
        providers={"ours": Provider("ours", _no_grad(_layout_update), baseline=True,
                                    description="BlockSparseLinear.set_blocks_")}))


def _no_grad(build):
    def wrapped(inputs):
        step = build(inputs)

        def run():
            with torch.no_grad():
                return step()
        return run
    return wrapped


_register()
