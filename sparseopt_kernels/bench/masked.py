"""Masked Adam cases of the ``optim`` family (NanoAdam's compact step, the dense-mask step and
the chunked selection).

* ``nanoadam-d0.1`` / ``nanoadam-d0.01``: Adam on the entries selected at density 0.1 / 0.01
  (chunk 4096, int16 chunk offsets, float32 moments), against torch.optim.Adam(fused=True) on the
  whole tensors (``torch-fused-adam``, the dense step NanoAdam replaces). Useful bytes per
  param element: d × 30 (θ r/w, g, m r/w, v r/w, 2-byte index); the real floor is set by the
  cache lines / DRAM sectors that hold a selected element (≈81% of θ's and g's 64-byte lines at
  d = 0.1, so ≈2.4× the dense step at best on a CPU).
* ``masked-adamw``: AdamW over bit-packed dense masks (half of every tensor pruned to exact
  zeros), against torch's fused AdamW alone (``torch-fused``, no mask: the floor) and the usual
  dynamic-sparse-training recipe ``step-then-mask`` (fused AdamW, then ``p.mul_(mask)``).
* ``chunk-select``: the bottom-10% selection per 4096-element chunk, against a per-chunk
  ``torch.topk`` + sort (``torch-topk``).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from .. import functional as F
from ..reference import masked as mref
from ..reference import mirror as ref
from . import engine
from .engine import Case, Provider, Size
from .optim import ADAM_LR, BETA1, BETA2, EPS, WEIGHT_DECAY, check_size, make_params, tolerance

CHUNK = 4096


def _compact_inputs(density: float):
    def make(size: Size, device: str, dtype: torch.dtype, seed: int) -> Dict:
        params = make_params(size, device, dtype, seed)
        indices = F.chunk_select([p.detach() for p in params], density, CHUNK,
                                 chunk_offsets=True)
        return dict(params=params, indices=indices, density=density,
                    m=[torch.zeros(i.numel(), device=device) for i in indices],
                    v=[torch.zeros(i.numel(), device=device) for i in indices],
                    steps=[torch.zeros((), device=device) for _ in params])
    return make


def _compact_expected(inputs: Dict, computes: str) -> List[Tensor]:
    params = inputs["params"]
    exact = [p.detach().double() for p in params]
    grads = [p.grad.double() for p in params]
    if computes == "dense":
        zeros = [torch.zeros_like(e) for e in exact]
        ref.ham_adam_(exact, grads, zeros, [z.clone() for z in zeros], [],
                      [torch.zeros((), dtype=torch.float64) for _ in exact], lr=ADAM_LR,
                      beta1=BETA1, beta2=BETA2, eps=EPS)
        return exact
    mref.compact_adam_(exact, grads, inputs["indices"], [m.double() for m in inputs["m"]],
                       [v.double() for v in inputs["v"]],
                       [torch.zeros((), dtype=torch.float64) for _ in exact],
                       density=inputs["density"], chunk_size=CHUNK, lr=ADAM_LR, beta1=BETA1,
                       beta2=BETA2, eps=EPS)
    return exact


def _compact_step(inputs: Dict):
    params = inputs["params"]
    grads = [p.grad for p in params]
    return lambda: F.compact_adam(params, grads, inputs["indices"], inputs["m"], inputs["v"],
                                  inputs["steps"], density=inputs["density"], chunk_size=CHUNK,
                                  lr=ADAM_LR, beta1=BETA1, beta2=BETA2, eps=EPS)


def _torch_fused_adam(inputs: Dict):
    opt = torch.optim.Adam(inputs["params"], lr=ADAM_LR, betas=(BETA1, BETA2), eps=EPS,
                           fused=True)
    return opt.step


def _params(inputs: Dict, _result=None) -> List[Tensor]:
    return [p.detach() for p in inputs["params"]]


for _density in (0.1, 0.01):
    _case = engine.register_case(Case(
        family="optim", name=f"nanoadam-d{_density:g}",
        description=f"NanoAdam's compact Adam step at density {_density:g} vs dense Adam",
        make_inputs=_compact_inputs(_density), expected=_compact_expected, outputs=_params,
        tolerance=tolerance, check_size=check_size))
    for _provider in engine.ours_providers(_compact_step, lambda dt, d=_density: d * 30,
                                           kernel_family="masked",
                                           description="compact Adam on the selection"):
        engine.register_provider("optim", _case.name, _provider)
    engine.register_provider("optim", _case.name, Provider(
        "torch-fused-adam", _torch_fused_adam, computes="dense",
        bytes_per_element=lambda dt: 28, baseline=True,
        description="torch.optim.Adam(fused=True) on every element"))


# --- dense-mask AdamW -------------------------------------------------------------------------

def _masked_inputs(size: Size, device: str, dtype: torch.dtype, seed: int) -> Dict:
    params = make_params(size, device, dtype, seed)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    dense, packed = [], []
    with torch.no_grad():
        for p in params:
            keep = torch.rand(p.shape, generator=gen, device=device) < 0.5
            p.mul_(keep)  # pruned weights are exact zeros
            bits = torch.nn.functional.pad(keep.to(torch.uint8), (0, (-p.numel()) % 8))
            weights = 2 ** torch.arange(8, device=device, dtype=torch.uint8)
            packed.append((bits.view(-1, 8) * weights).sum(1, dtype=torch.uint8))
            dense.append(keep)
    return dict(params=params, dense=dense, masks=packed)


def _masked_expected(inputs: Dict, computes: str) -> List[Tensor]:
    params = inputs["params"]
    exact = [p.detach().double() for p in params]
    zeros = [torch.zeros_like(e) for e in exact]
    ref.ham_adam_(exact, [p.grad.double() for p in params], zeros, [z.clone() for z in zeros],
                  [], [torch.zeros((), dtype=torch.float64) for _ in exact], lr=ADAM_LR,
                  beta1=BETA1, beta2=BETA2, eps=EPS, weight_decay=WEIGHT_DECAY,
                  decoupled_weight_decay=True,
                  masks=None if computes == "dense" else inputs["dense"])
    return exact


def _masked_ours(inputs: Dict):
    params = inputs["params"]
    grads = [p.grad for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), device=p.device) for p in params]
    return lambda: F.ham_adam(params, grads, m, v, [], steps, lr=ADAM_LR, beta1=BETA1,
                              beta2=BETA2, eps=EPS, weight_decay=WEIGHT_DECAY,
                              decoupled_weight_decay=True, alpha=0.0, beta=0.0,
                              masks=inputs["masks"])


def _torch_fused_adamw(inputs: Dict):
    return torch.optim.AdamW(inputs["params"], lr=ADAM_LR, betas=(BETA1, BETA2), eps=EPS,
                             weight_decay=WEIGHT_DECAY, fused=True).step


def _step_then_mask(inputs: Dict):
    opt = torch.optim.AdamW(inputs["params"], lr=ADAM_LR, betas=(BETA1, BETA2), eps=EPS,
                            weight_decay=WEIGHT_DECAY, fused=True)

    @torch.no_grad()
    def step():
        opt.step()
        torch._foreach_mul_(inputs["params"], inputs["dense"])
    return step


engine.register_case(Case(
    family="optim", name="masked-adamw",
    description="AdamW over bit-packed dense masks (half pruned) vs torch fused AdamW",
    make_inputs=_masked_inputs, expected=_masked_expected, outputs=_params,
    tolerance=tolerance, check_size=check_size))
for _provider in engine.ours_providers(_masked_ours, lambda dt: 28.125, kernel_family="mirror",
                                       description="fused AdamW with a bit-packed mask"):
    engine.register_provider("optim", "masked-adamw", _provider)
engine.register_provider("optim", "masked-adamw", Provider(
    "torch-fused", _torch_fused_adamw, computes="dense", bytes_per_element=lambda dt: 28,
    baseline=True, description="torch.optim.AdamW(fused=True), no mask (the floor)"))
engine.register_provider("optim", "masked-adamw", Provider(
    "step-then-mask", _step_then_mask, bytes_per_element=lambda dt: 28 + 9,
    description="torch fused AdamW, then p.mul_(mask) (what mask-based DST libraries do)"))


# --- selection --------------------------------------------------------------------------------

def _select_inputs(size: Size, device: str, dtype: torch.dtype, seed: int) -> Dict:
    return dict(params=[p.detach() for p in make_params(size, device, dtype, seed)])


def _select_expected(inputs: Dict, computes: str) -> List[Tensor]:
    return [i.double() for i in mref.chunk_select(inputs["params"], 0.1, CHUNK)]


def _select_ours(inputs: Dict):
    return lambda: F.chunk_select(inputs["params"], 0.1, CHUNK)


def _select_topk(inputs: Dict):
    def select():
        out = []
        for p in inputs["params"]:
            full = p.numel() // CHUNK * CHUNK
            keys = p[:full].abs().view(-1, CHUNK)
            k = mref.chunk_k(0.1, CHUNK)
            idx = torch.topk(keys, k, dim=1, largest=False).indices.sort(dim=1).values
            idx = idx + torch.arange(keys.shape[0], device=p.device).unsqueeze(1) * CHUNK
            parts = [idx.reshape(-1)]
            if full < p.numel():
                tail = p[full:].abs()
                kt = mref.chunk_k(0.1, tail.numel())
                parts.append(torch.topk(tail, kt, largest=False).indices.sort().values + full)
            out.append(torch.cat(parts).to(torch.int32))
        return out
    return select


engine.register_case(Case(
    family="optim", name="chunk-select",
    description="bottom-10% |θ| per 4096-element chunk (NanoAdam's selection)",
    make_inputs=_select_inputs, expected=_select_expected,
    outputs=lambda inputs, result: [i.double() for i in result],
    tolerance=lambda dt: (0.0, 0.0), check_size=check_size))
for _provider in engine.ours_providers(_select_ours, lambda dt: 4 + 0.1 * 4,
                                       kernel_family="masked",
                                       description="chunked radix/bucket select"):
    engine.register_provider("optim", "chunk-select", _provider)
engine.register_provider("optim", "chunk-select", Provider(
    "torch-topk", _select_topk, bytes_per_element=lambda dt: 4 + 0.1 * 4, baseline=True,
    description="per-chunk torch.topk + sort"))
