"""The ``matmul`` family: ``y = x @ Wᵀ`` with a block-sparse weight W.

This build has no block-sparse kernels of ours yet, so the family times the torch baselines
that those kernels must beat, each checked against the float64 result first:

* ``dense``             ``F.linear(x, W)`` with W stored dense (zeros included).
* ``torch-bsr``         ``F.linear(x, W_bsr)``, W as a torch BSR tensor.
* ``torch-bsr-mm``      ``(W_bsr @ xᵀ)ᵀ``, the sparse × dense product directly.

When the block-sparse kernels land, register them on the ``block-sparse-linear`` case::

    engine.register_provider("matmul", "block-sparse-linear",
                             Provider("ours-triton", build, unavailable=...))

where ``build(inputs)`` gets a :class:`LinearInputs` (``x``, ``weight`` dense with its zeros,
``weight_bsr``, ``block``, ``density``) and returns a step that returns y.

Sizes are ``MxKxN/bB/dD``: x is M × K, W is N × K with B × B blocks of which a fraction D is
non-zero (chosen at random, exactly round(D · blocks) of them). TFLOP/s count the operations a
provider must do (sparse: 2·M·K·N·D; dense, zeros included: 2·M·K·N), and ``%dense`` is a
provider's TFLOP/s over dense's: how close a sparse kernel gets to the dense hardware rate.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import engine
from .engine import Case, Family, Provider, Size

PRESETS = {
    # transformer-sized projections on a GPU: 4096 tokens, hidden 4096, MLP 11008
    "standard": ["4096x4096x4096/b32/d0.1", "4096x4096x4096/b32/d0.5",
                 "4096x4096x11008/b64/d0.1"],
    "cpu": ["512x1024x1024/b32/d0.1", "512x1024x1024/b32/d0.5"],
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
    x: Tensor           # M × K
    weight: Tensor      # N × K, dense, zero outside the kept blocks
    weight_bsr: Tensor  # the same weight as a torch BSR tensor
    block: int
    density: float      # actual fraction of kept blocks


def block_mask(n_rows: int, n_cols: int, density: float, gen: torch.Generator) -> Tensor:
    """A random bool mask of round(density · blocks) kept blocks (at least one)."""
    total = n_rows * n_cols
    keep = max(1, round(density * total))
    mask = torch.zeros(total, dtype=torch.bool)
    mask[torch.randperm(total, generator=gen)[:keep]] = True
    return mask.view(n_rows, n_cols)


def make_inputs(size: Size, device: str, dtype: torch.dtype, seed: int) -> LinearInputs:
    M, K, N, block = (size.get(k) for k in ("M", "K", "N", "block"))
    gen = torch.Generator().manual_seed(seed)
    mask = block_mask(N // block, K // block, size.get("density"), gen)
    dense_mask = mask.repeat_interleave(block, 0).repeat_interleave(block, 1)
    weight = (torch.randn(N, K, generator=gen) / K ** 0.5) * dense_mask
    x = torch.randn(M, K, generator=gen)
    weight = weight.to(device=device, dtype=dtype)
    with warnings.catch_warnings():  # "Sparse BSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        weight_bsr = weight.to_sparse_bsr((block, block))
    return LinearInputs(x=x.to(device=device, dtype=dtype), weight=weight,
                        weight_bsr=weight_bsr, block=block,
                        density=float(mask.float().mean()))


def check_size(size: Size) -> Size:
    params = dict(size.params)
    params["M"] = min(params["M"], CHECK_ROWS)
    return Size(label=size.label, n_tensors=1, numel=size.numel, params=tuple(params.items()))


def expected(inputs: LinearInputs, _computes: str) -> List[Tensor]:
    return [F.linear(inputs.x.double(), inputs.weight.double())]


def outputs(_inputs: LinearInputs, y: Tensor) -> List[Tensor]:
    return [y]


def tolerance(dtype: torch.dtype) -> Tuple[float, float]:
    """|y| ~ 1 (W is scaled by 1/sqrt(K)); low precision accumulates in float32 but rounds the
    output; TF32 is off by default in torch."""
    return {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-4),
            torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)}[dtype]


def flops(size: Size, provider: Provider) -> float:
    """Operations one call must do: 2·M·K·N·density for a sparse provider; 2·M·K·N for dense,
    which multiplies the zeros too (so its TFLOP/s is the dense hardware rate)."""
    M, K, N = size.get("M"), size.get("K"), size.get("N")
    return 2.0 * M * K * N * (1.0 if provider.name == "dense" else size.get("density"))


def _bsr_cpu_dtypes(device_type: str, dtype: torch.dtype) -> Optional[str]:
    if device_type == "cpu" and dtype not in (torch.float32, torch.float64):
        return "torch's CPU BSR matmul (MKL) supports float32 and float64 only"
    return None


def note() -> str:
    ours = [p for p in engine.CASES[("matmul", "block-sparse-linear")].providers.values()
            if p.name.startswith("ours")]
    if ours:
        return ""
    return ("note: no block-sparse kernels in this build yet; timing the torch baselines "
            "(dense F.linear, torch BSR) that they must beat")


def _register() -> None:
    engine.register_family(Family(
        name="matmul", description="block-sparse matmuls (torch baselines until ours land)",
        presets=PRESETS, parse_size=parse_size,
        default_preset=lambda device_type: "standard" if device_type == "cuda" else "cpu",
        note=note))
    engine.register_case(Case(
        family="matmul", name="block-sparse-linear",
        description="y = x @ W^T, W block-sparse", make_inputs=make_inputs, expected=expected,
        outputs=outputs, tolerance=tolerance, check_size=check_size, flops=flops,
        providers={
            "dense": Provider("dense", lambda i: lambda: F.linear(i.x, i.weight), baseline=True,
                              description="F.linear with the weight stored dense"),
            "torch-bsr": Provider("torch-bsr", lambda i: lambda: F.linear(i.x, i.weight_bsr),
                                  baseline=True, unavailable=_bsr_cpu_dtypes,
                                  description="F.linear with a torch BSR weight"),
            "torch-bsr-mm": Provider("torch-bsr-mm",
                                     lambda i: lambda: (i.weight_bsr @ i.x.t()).t(),
                                     unavailable=_bsr_cpu_dtypes,
                                     description="(W_bsr @ x^T)^T"),
        }))


_register()
