"""Host-side overhead (pytest-benchmark): what a step costs in Python and op dispatch when the
tensors are too small for the kernels to matter.

    python -m pytest benchmarks/test_overhead.py --benchmark-only

Kept out of tests/ so CI does not time anything. Cases, on 100 tensors of 16 elements (CPU):

* ``optimizer-step``: one ``step()`` of HAM(AdamW), HORST, HAM(SGD) against torch's fused and
  foreach AdamW: the Python bookkeeping per step (grouping, state lookup, argument checks).
* ``op-call``: one call of the mirror op on one 16-element tensor through each layer:
  ``functional.mirror_step`` (split by device/dtype + checks), ``torch.ops.sparseopt``
  (dispatcher + backend selection) and the raw kernel of the selected backend.
"""
import pytest
import torch

import sparseopt_kernels.functional as F
from sparseopt_kernels import backends
from sparseopt_kernels.optim import HAM, HORST

N_TENSORS, NUMEL = 100, 16


def make_params(n=N_TENSORS, numel=NUMEL):
    params = []
    for _ in range(n):
        p = torch.randn(numel).mul_(0.05).requires_grad_()
        p.grad = torch.randn(numel).mul_(1e-2)
        params.append(p)
    return params


def every(_p):
    return True


OPTIMIZERS = {
    "ham-adamw": lambda ps: HAM(torch.optim.AdamW(ps, lr=1e-3), alpha=200.0, apply_to=every),
    "ham-sgd": lambda ps: HAM(torch.optim.SGD(ps, lr=0.1, momentum=0.9), apply_to=every),
    "horst": lambda ps: HORST(ps, lr=1e-3, apply_to=every),
    "torch-adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
    "torch-adamw-foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_step(benchmark, name):
    benchmark.group = f"optimizer-step ({N_TENSORS} x {NUMEL} elements)"
    opt = OPTIMIZERS[name](make_params())
    opt.step()  # state allocation outside the timing
    benchmark(opt.step)


def _raw_kernel():
    backend = backends.select("cpu", torch.float32, "mirror_step_")
    return backends._implementation(backend, "mirror_step_")


LAYERS = {
    "functional": lambda p, g: F.mirror_step([p], [g], lr=0.1, alpha=200.0, beta=1e-3,
                                             clamp=5.0),
    "torch.ops": lambda p, g: torch.ops.sparseopt.mirror_step_([p], [g], lr=0.1, alpha=200.0,
                                                               beta=1e-3, clamp=5.0),
    "kernel": lambda p, g: _raw_kernel()([p], [g], lr=0.1, alpha=200.0, beta=1e-3, clamp=5.0),
}


@pytest.mark.parametrize("layer", list(LAYERS))
def test_mirror_op_call(benchmark, layer):
    benchmark.group = f"op-call (mirror_step_, 1 x {NUMEL} elements)"
    p = torch.randn(NUMEL).mul_(0.05)
    g = torch.randn(NUMEL).mul_(1e-2)
    fn = LAYERS[layer]
    benchmark(fn, p, g)
