"""The ``optim`` family: optimizer steps over N tensors of the same length.

Cases (flat tensors, all of which take the mirror step; params ~ 0.05·N(0,1), gradients
~ 1e-2·N(0,1), fixed over the steps):

* ``ham-adamw``  HAM on AdamW (lr 1e-3, weight decay 1e-2, α=200, β=1e-3, clamp 5).
* ``ham-sgd``    HAM on SGD with momentum 0.9 (lr 0.1, α=200, β=1e-3, clamp 5).
* ``horst``      HORST (AdamW lr 1e-3, wd 1e-2, mirror along Adam's direction u).
* ``mirror``     the standalone mirror op alone (lr 0.1, α=200, β=1e-3, clamp 5).

Providers:

* ``ours-cuda`` / ``ours-triton`` / ``ours-cpp``: our fused step on that backend.
* ``reference``: the same step on the pure-PyTorch reference backend (the specification).
* ``ours-unfused`` (HAM-AdamW): torch's fused AdamW, then our standalone mirror op: HAM's
  fallback path for base optimizers it does not fuse.
* ``torch-fused`` / ``torch-foreach``: torch.optim's base optimizer alone (no mirror step),
  the floor; for ``mirror``, the mirror step written with ``torch._foreach_*`` ops.
* ``reference-wrapper``: the authors' style: torch's fused base step, then the mirror step as
  per-tensor torch ops (sign, mul, add, clamp, exp, mul).
* ``compiled-wrapper``: the same with the per-tensor mirror step under ``torch.compile``.

Bytes per element count the compulsory traffic of each pass (fp32: AdamW 28 B, SGD with momentum
20 B, mirror step 12 B; a base step followed by a separate mirror pass moves the sum).
The correctness check runs each provider once on the same number of tensors, at most 100 003
elements each, against the float64 reference (``torch-*`` providers against the base step).

Adding a case (e.g. masked Adam, SparseOpt): build its providers with
:func:`sparseopt_kernels.bench.engine.ours_providers` plus its baselines, then
``register_case(Case(family="optim", ...))`` from a module listed in ``engine.FAMILY_MODULES``
(or added with ``engine.add_family_module("optim", "your.module")``). ``make_params``,
``param_outputs`` and ``TOLERANCES`` below are reusable for any step over a list of params.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import functional as F
from ..optim import HAM, HORST
from ..reference import mirror as ref
from . import engine
from .engine import Case, Family, Provider, Size

ALPHA, BETA, CLAMP = 200.0, 1e-3, 5.0
ADAM_LR, SGD_LR, MIRROR_LR = 1e-3, 0.1, 0.1
WEIGHT_DECAY, MOMENTUM = 1e-2, 0.9
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
CHECK_NUMEL = 100_003  # odd, so every vector width leaves a tail

# (rtol, atol) against the float64 reference after one step (|θ| ~ 0.05: 1e-7 absolute covers
# fp32 results that cancel to ~0 after the base step).
TOLERANCES: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 1e-7),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (2e-3, 1e-5),
}

# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------

PRESETS = {
    # the standard cases: one large tensor, a few hundred medium ones, many small ones
    "standard": ["1x1e8", "200x5e5", "1000x1e4"],
    # CPU default: 2e7 params (fp32 AdamW state 320 MB); ~2 minutes for all cases on 2 cores
    "cpu": ["10x2e6"],
    # tiny, for tests and smoke runs (a tail at every vector width, many tensors)
    "quick": ["1x20011", "32x1000"],
}

_SIZE = re.compile(r"^\s*(\d+)\s*[x×]\s*([0-9.]+(?:e[0-9]+)?)\s*$", re.IGNORECASE)


def parse_size(token: str) -> Optional[Size]:
    """``"200x5e5"`` → 200 tensors of 500 000 elements; None for a token of another family."""
    m = _SIZE.match(token)
    if m is None:
        if token.count("x") == 1 or "×" in token:
            raise ValueError(f"bad optim size {token!r}: expected N_TENSORSxNUMEL, "
                             "e.g. 10x2e6")
        return None
    n, numel = int(m.group(1)), float(m.group(2))
    if n < 1 or numel < 1 or numel != int(numel):
        raise ValueError(f"bad optim size {token!r}: counts must be positive integers")
    return Size(label=f"{n}x{_short(int(numel))}", n_tensors=n, numel=int(numel))


def _short(n: int) -> str:
    """1e8, 5e5, 65537: the shortest exact spelling."""
    s = f"{n:.0e}".replace("e+0", "e").replace("e+", "e")
    return s if float(s) == n else str(n)


# --------------------------------------------------------------------------------------------
# inputs, expected results
# --------------------------------------------------------------------------------------------


def make_params(size: Size, device: str, dtype: torch.dtype, seed: int) -> List[Tensor]:
    """``size.n_tensors`` leaf params of ``size.numel`` elements with ``.grad`` set."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for _ in range(size.n_tensors):
        p = torch.randn(size.numel, generator=gen, device=device).mul_(0.05)
        g = torch.randn(size.numel, generator=gen, device=device).mul_(1e-2)
        p = p.to(dtype).requires_grad_()
        p.grad = g.to(dtype)
        params.append(p)
    return params


def param_outputs(params: List[Tensor], _result=None) -> List[Tensor]:
    return [p.detach() for p in params]


def tolerance(dtype: torch.dtype) -> Tuple[float, float]:
    return TOLERANCES[dtype]


def check_size(size: Size) -> Size:
    return Size(label=size.label, n_tensors=size.n_tensors, numel=min(size.numel, CHECK_NUMEL))


def _exact(params: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    return ([p.detach().to(torch.float64, copy=True) for p in params],
            [p.grad.to(torch.float64, copy=True) for p in params])


def _mirror_kwargs(computes: str) -> Dict:
    """The reference's mirror arguments: ``"base"`` is the base optimizer alone."""
    on = computes != "base"
    return dict(alpha=ALPHA if on else 0.0, beta=BETA if on else 0.0, clamp=CLAMP)


def expected_adamw(direction: str) -> Callable[[List[Tensor], str], List[Tensor]]:
    def expected(params: List[Tensor], computes: str) -> List[Tensor]:
        exact, grads = _exact(params)
        zeros = [torch.zeros_like(e) for e in exact]
        ref.ham_adam_(exact, grads, zeros, [z.clone() for z in zeros], [],
                      [torch.zeros((), dtype=torch.float64, device=e.device) for e in exact],
                      lr=ADAM_LR, beta1=BETA1, beta2=BETA2, eps=EPS, weight_decay=WEIGHT_DECAY,
                      decoupled_weight_decay=True, direction=direction,
                      **_mirror_kwargs(computes))
        return exact
    return expected


def expected_sgd(params: List[Tensor], computes: str) -> List[Tensor]:
    exact, grads = _exact(params)
    ref.ham_sgd_(exact, grads, [torch.zeros_like(e) for e in exact], lr=SGD_LR,
                 momentum=MOMENTUM, is_first_step=True, **_mirror_kwargs(computes))
    return exact


def expected_mirror(params: List[Tensor], computes: str) -> List[Tensor]:
    exact, grads = _exact(params)
    ref.mirror_step_(exact, grads, lr=MIRROR_LR, alpha=ALPHA, beta=BETA, clamp=CLAMP)
    return exact


# --------------------------------------------------------------------------------------------
# baselines written with torch ops
# --------------------------------------------------------------------------------------------


def wrapper_mirror_(p: Tensor, g: Tensor, lr: float) -> None:
    """The authors' mirror step of one tensor, as torch ops."""
    z = -lr * (ALPHA * torch.sign(p) * g + BETA)
    p.mul_(torch.exp(z.clamp_(-CLAMP, CLAMP)))


def wrapper_horst_mirror_(p: Tensor, m: Tensor, v: Tensor, step: Tensor, lr: float) -> None:
    """HORST's mirror step of one tensor after torch's AdamW step, along Adam's direction u
    recomputed from the updated moments (bias corrections in float64, like torch.optim)."""
    t = step.to(torch.float64)
    ct = torch.float64 if p.dtype == torch.float64 else torch.float32
    bc1 = (1 - BETA1 ** t).to(ct)
    bc2_sqrt = torch.sqrt(1 - BETA2 ** t).to(ct)
    u = (m / bc1) / (v.sqrt() / bc2_sqrt + EPS)
    z = -lr * (ALPHA * torch.sign(p) * u + BETA)
    p.mul_(torch.exp(z.clamp_(-CLAMP, CLAMP)))


def foreach_mirror_(params: List[Tensor], grads: List[Tensor], lr: float) -> None:
    """The mirror step with torch's multi-tensor ``_foreach`` ops."""
    z = torch._foreach_sign(params)
    torch._foreach_mul_(z, grads)
    torch._foreach_mul_(z, -lr * ALPHA)
    torch._foreach_add_(z, -lr * BETA)
    torch._foreach_clamp_min_(z, -CLAMP)
    torch._foreach_clamp_max_(z, CLAMP)
    torch._foreach_exp_(z)
    torch._foreach_mul_(params, z)


_COMPILED: Dict[str, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` (one per function, compiled on first use; one graph per shape)."""
    if fn.__name__ not in _COMPILED:
        _COMPILED[fn.__name__] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn.__name__]


# --------------------------------------------------------------------------------------------
# bytes per element
# --------------------------------------------------------------------------------------------


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def adam_bytes(dtype: torch.dtype, fp32_state: bool = False) -> int:
    """Read θ, g, m, v; write θ, m, v (state in float32 for bf16/fp16 when ``fp32_state``)."""
    s = _itemsize(dtype)
    state = 4 if fp32_state and s < 4 else s
    return 3 * s + 4 * state


def sgd_bytes(dtype: torch.dtype) -> int:
    """Read θ, g, b; write θ, b."""
    return 5 * _itemsize(dtype)


def mirror_bytes(dtype: torch.dtype) -> int:
    """Read θ', g; write θ."""
    return 3 * _itemsize(dtype)


def horst_wrapper_bytes(dtype: torch.dtype) -> int:
    """torch AdamW, then a pass reading θ', m, v and writing θ."""
    return adam_bytes(dtype) + 4 * _itemsize(dtype)


# --------------------------------------------------------------------------------------------
# providers
# --------------------------------------------------------------------------------------------


def _every(_p: Tensor) -> bool:
    return True  # the benchmark's tensors are flat: the mirror step applies to all


def _no_grad(fn: Callable[[], None]) -> Callable[[], None]:
    return torch.no_grad()(fn)


def _adamw(params: List[Tensor], **kw) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=ADAM_LR, betas=(BETA1, BETA2), eps=EPS,
                             weight_decay=WEIGHT_DECAY, **kw)


def _sgd(params: List[Tensor], **kw) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=SGD_LR, momentum=MOMENTUM, **kw)


def _then_mirror(base: torch.optim.Optimizer, params: List[Tensor], lr: float,
                 mirror: Callable) -> Callable[[], None]:
    def step() -> None:
        base.step()
        for p in params:
            mirror(p, p.grad, lr)
    return _no_grad(step)


def _then_horst_mirror(base: torch.optim.Optimizer, params: List[Tensor],
                       mirror: Callable) -> Callable[[], None]:
    def step() -> None:
        base.step()
        for p in params:
            s = base.state[p]
            mirror(p, s["exp_avg"], s["exp_avg_sq"], s["step"], ADAM_LR)
    return _no_grad(step)


def _ham_adamw(params):
    return HAM(_adamw(params), alpha=ALPHA, beta=BETA, clamp=CLAMP, apply_to=_every).step


def _ham_adamw_unfused(params):
    base = _adamw(params, fused=True)

    def step() -> None:
        base.step()
        F.mirror_step(params, [p.grad for p in params], lr=ADAM_LR, alpha=ALPHA, beta=BETA,
                      clamp=CLAMP)
    return _no_grad(step)


def _ham_sgd(params):
    return HAM(_sgd(params), alpha=ALPHA, beta=BETA, clamp=CLAMP, apply_to=_every).step


def _horst(params):
    return HORST(params, lr=ADAM_LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WEIGHT_DECAY,
                 alpha=ALPHA, beta=BETA, clamp=CLAMP, direction="adam", apply_to=_every).step


def _mirror_op(params):
    grads = [p.grad for p in params]
    return _no_grad(lambda: F.mirror_step(params, grads, lr=MIRROR_LR, alpha=ALPHA, beta=BETA,
                                          clamp=CLAMP))


def _torch_base(make: Callable, **kw) -> Callable:
    return lambda params: make(params, **kw).step


def _plus(a: Callable[[torch.dtype], int], b: Callable[[torch.dtype], int]
          ) -> Callable[[torch.dtype], int]:
    return lambda dtype: a(dtype) + b(dtype)


def _base_providers(make: Callable, bytes_fn: Callable[[torch.dtype], int],
                    mirror_lr: float) -> List[Provider]:
    """torch-fused, torch-foreach, reference-wrapper and compiled-wrapper for a base optimizer
    followed by HAM's mirror step."""
    return [
        Provider("torch-fused", _torch_base(make, fused=True), "base", bytes_fn, baseline=True,
                 description="torch.optim fused base step alone (no mirror step)"),
        Provider("torch-foreach", _torch_base(make, foreach=True), "base", bytes_fn,
                 baseline=True, description="torch.optim foreach base step alone"),
        Provider("reference-wrapper",
                 lambda params: _then_mirror(make(params, fused=True), params, mirror_lr,
                                             wrapper_mirror_),
                 "main", _plus(bytes_fn, mirror_bytes), baseline=True,
                 description="torch fused base step, then the mirror step as torch ops"),
        Provider("compiled-wrapper",
                 lambda params: _then_mirror(make(params, fused=True), params, mirror_lr,
                                             compiled(wrapper_mirror_)),
                 "main", _plus(bytes_fn, mirror_bytes), baseline=True,
                 description="torch fused base step, then a torch.compile'd mirror step"),
    ]


def _providers(items: List[Provider]) -> Dict[str, Provider]:
    return {p.name: p for p in items}


def _case(name: str, description: str, expected, providers: List[Provider]) -> Case:
    return Case(family="optim", name=name, description=description, make_inputs=make_params,
                expected=expected, outputs=param_outputs, tolerance=tolerance,
                check_size=check_size, providers=_providers(providers))


def _register() -> None:
    engine.register_family(Family(
        name="optim", description="optimizer steps (HAM, HORST, the mirror op)",
        presets=PRESETS, parse_size=parse_size,
        default_preset=lambda device_type: "standard" if device_type == "cuda" else "cpu"))

    engine.register_case(_case(
        "ham-adamw", "HAM on AdamW, one fused pass", expected_adamw("grad"),
        engine.ours_providers(_ham_adamw, adam_bytes, description="HAM(AdamW)")
        + [Provider("ours-unfused", _ham_adamw_unfused, "main", _plus(adam_bytes, mirror_bytes),
                    description="torch fused AdamW, then our standalone mirror op")]
        + _base_providers(_adamw, adam_bytes, ADAM_LR)))

    engine.register_case(_case(
        "ham-sgd", "HAM on SGD with momentum 0.9, one fused pass", expected_sgd,
        engine.ours_providers(_ham_sgd, sgd_bytes, description="HAM(SGD)")
        + _base_providers(_sgd, sgd_bytes, SGD_LR)))

    horst_bytes = lambda dtype: adam_bytes(dtype, fp32_state=True)  # noqa: E731
    engine.register_case(_case(
        "horst", "HORST: AdamW + mirror step along Adam's direction, one fused pass",
        expected_adamw("adam"),
        engine.ours_providers(_horst, horst_bytes, description="HORST")
        + [Provider("torch-fused", _torch_base(_adamw, fused=True), "base", adam_bytes,
                    baseline=True, description="torch fused AdamW alone"),
           Provider("torch-foreach", _torch_base(_adamw, foreach=True), "base", adam_bytes,
                    baseline=True, description="torch foreach AdamW alone"),
           Provider("reference-wrapper",
                    lambda params: _then_horst_mirror(_adamw(params, fused=True), params,
                                                      wrapper_horst_mirror_),
                    "main", horst_wrapper_bytes, baseline=True,
                    description="torch fused AdamW, then the mirror step along u as torch ops"),
           Provider("compiled-wrapper",
                    lambda params: _then_horst_mirror(_adamw(params, fused=True), params,
                                                      compiled(wrapper_horst_mirror_)),
                    "main", horst_wrapper_bytes, baseline=True,
                    description="torch fused AdamW, then a torch.compile'd mirror step")]))

    engine.register_case(_case(
        "mirror", "the standalone mirror op", expected_mirror,
        engine.ours_providers(_mirror_op, mirror_bytes, description="F.mirror_step")
        + [Provider("torch-foreach",
                    lambda params: _no_grad(lambda: foreach_mirror_(
                        params, [p.grad for p in params], MIRROR_LR)),
                    "main", mirror_bytes, baseline=True,
                    description="the mirror step as torch._foreach ops"),
           Provider("reference-wrapper",
                    lambda params: _no_grad(lambda: [wrapper_mirror_(p, p.grad, MIRROR_LR)
                                                     for p in params]),
                    "main", mirror_bytes, baseline=True,
                    description="the mirror step as per-tensor torch ops"),
           Provider("compiled-wrapper",
                    lambda params: _no_grad(lambda: [compiled(wrapper_mirror_)(p, p.grad,
                                                                               MIRROR_LR)
                                                     for p in params]),
                    "main", mirror_bytes, baseline=True,
                    description="the per-tensor mirror step under torch.compile")]))


_register()
