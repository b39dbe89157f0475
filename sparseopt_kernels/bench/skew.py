"""SparseOpt case of the ``optim`` family: the BN-skew correction fused into the masked step.

``sparseopt-adamw``: AdamW over bool dense masks (half of every tensor pruned to exact zeros)
with SparseOpt's per-row gradient scale ``g̃ = c ⊙ g`` read inside the fused step. Each tensor is
viewed as rows of 1000 elements where its length allows (one row otherwise). Providers:

* ``ours-*``: the fused, corrected, masked step (``row_scales=``): 29 B per element (θ, m, v
  read and written, g and the mask read; the coefficients are one float per row);
* ``no-correction`` (the baseline): the same masked step without the correction, so the
  ratio is what the correction adds (target ≤ 1.03);
* ``unfused-correction``: what an unfused optimizer pays: copy the gradient, correct it with the
  standalone ``row_scale_`` op, then the masked step (46 B per element).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from .. import functional as F
from ..reference import mirror as ref
from . import engine
from .engine import Case, Provider, Size
from .optim import ADAM_LR, BETA1, BETA2, EPS, WEIGHT_DECAY, check_size, make_params, tolerance

ROW_LENGTHS = (1000, 1024, 500, 512, 250, 256, 100, 128)


def row_length(numel: int) -> int:
    return next((n for n in ROW_LENGTHS if numel % n == 0), numel)


def _inputs(size: Size, device: str, dtype: torch.dtype, seed: int) -> Dict:
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    params, masks = [], []
    for flat in make_params(size, device, dtype, seed):
        length = row_length(flat.numel())
        p = flat.detach().view(-1, length).clone().requires_grad_()
        p.grad = flat.grad.view(-1, length)
        keep = torch.rand(p.shape, generator=gen, device=device) < 0.5
        with torch.no_grad():
            p.mul_(keep)  # pruned weights are exact zeros
        params.append(p)
        masks.append(keep)
    return dict(params=params, masks=masks, row_scales=F.row_coefficients(masks))


def _state(params: List[Tensor]):
    return ([torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
            [torch.zeros((), device=p.device) for p in params])


def _expected(inputs: Dict, computes: str) -> List[Tensor]:
    params = inputs["params"]
    exact = [p.detach().double() for p in params]
    m, v, steps = _state(exact)
    ref.ham_adam_(exact, [p.grad.double() for p in params], m, v, [],
                  [s.double() for s in steps], lr=ADAM_LR, beta1=BETA1, beta2=BETA2, eps=EPS,
                  weight_decay=WEIGHT_DECAY, decoupled_weight_decay=True, masks=inputs["masks"],
                  row_scales=None if computes == "uncorrected" else inputs["row_scales"])
    return exact


def _masked_step(inputs: Dict, grads: List[Tensor], corrected: bool):
    params = inputs["params"]
    m, v, steps = _state(params)
    return lambda: F.ham_adam(params, grads, m, v, [], steps, lr=ADAM_LR, beta1=BETA1,
                              beta2=BETA2, eps=EPS, weight_decay=WEIGHT_DECAY,
                              decoupled_weight_decay=True, alpha=0.0, beta=0.0,
                              masks=inputs["masks"],
                              row_scales=inputs["row_scales"] if corrected else None)


def _fused(inputs: Dict):
    return _masked_step(inputs, [p.grad for p in inputs["params"]], corrected=True)


def _uncorrected(inputs: Dict):
    return _masked_step(inputs, [p.grad for p in inputs["params"]], corrected=False)


def _unfused(inputs: Dict):
    scratch = [torch.empty_like(p.grad) for p in inputs["params"]]
    step = _masked_step(inputs, scratch, corrected=False)

    def run():
        torch._foreach_copy_(scratch, [p.grad for p in inputs["params"]])
        F.row_scale_(scratch, inputs["row_scales"], masks=inputs["masks"])
        step()
    return run


def _params(inputs: Dict, _result=None) -> List[Tensor]:
    return [p.detach() for p in inputs["params"]]


engine.register_case(Case(
    family="optim", name="sparseopt-adamw",
    description="masked AdamW with SparseOpt's per-row gradient correction fused in",
    make_inputs=_inputs, expected=_expected, outputs=_params, tolerance=tolerance,
    check_size=check_size))
for _provider in engine.ours_providers(_fused, lambda dt: 29, kernel_family="mirror",
                                       description="fused corrected masked AdamW"):
    engine.register_provider("optim", "sparseopt-adamw", _provider)
engine.register_provider("optim", "sparseopt-adamw", Provider(
    "no-correction", _uncorrected, computes="uncorrected", bytes_per_element=lambda dt: 29,
    baseline=True, description="the same masked AdamW step without the correction"))
engine.register_provider("optim", "sparseopt-adamw", Provider(
    "unfused-correction", _unfused, bytes_per_element=lambda dt: 46,
    description="copy g, standalone row_scale_, then the masked step"))
