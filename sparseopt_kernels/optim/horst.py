r"""HORST: AdamW composed with a hyperbolic mirror step (ALGORITHMS.md §2), one fused kernel.

Per element, with ``u = m̂ / (sqrt(v̂) + ε)`` the AdamW direction::

    AdamW:   θ' = θ − η·(u + λ·θ)
    mirror:  exp:        θ_new = θ' · exp(clamp(−η·(α·sign(θ')·d + β), −c, c))
             hypentropy: θ_new = γ·sinh(asinh(θ'/γ) − clamp(η·α·d, −c, c)) · exp(−η·β)

``d = u`` (``direction="adam"``, default) or ``d = g`` (``direction="grad"``: HORST is then HAM on
AdamW). ``order="after"`` (default) applies the mirror step to θ' ; ``"before"`` applies it to θ
(with sign(θ)) and the AdamW update to its result.

What the published text does not pin down, and what we chose (all are options):

* the direction fed to the mirror step — ``u`` by default: it is bounded (|u| ≲ 1), so the
  factor ``α·|θ|`` by which the mirror step scales the update plays the role it has in HAM on
  SGD and α needs no per-optimizer re-tuning; hence the same defaults as HAM (α=200, β=1e-3,
  c=5);
* the order of the two non-commuting operators — mirror after AdamW by default;
* the mirror form — ``exp`` by default; ``hypentropy`` can move weights across zero;
* for ``hypentropy`` the clamp bounds the asinh-space shift ``η·α·d``;
* which tensors take the mirror step — ``apply_to`` (default ``p.ndim >= 2``, as HAM);
  the others take plain AdamW.

Params in another dense layout (channels_last conv weights) are stepped in place through views
of their memory, with state in the param's layout. With ``alpha=0, beta=0`` it is exactly AdamW. State: ``step`` (a float32 device scalar, so steps
can be captured in a CUDA graph), ``exp_avg``, ``exp_avg_sq`` (``max_exp_avg_sq`` with amsgrad),
in float32 for bf16/fp16 params. Same bytes per element as AdamW (28 B for fp32).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import _checks
from .. import functional as F
from ._layout import step_views
from ._state import load_state_keeping_dtypes
from .ham import default_apply_to


class HORST(Optimizer):
    def __init__(self, params: Iterable, lr: Union[float, Tensor] = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, alpha: float = 200.0, beta: float = 1e-3,
                 clamp: Optional[float] = 5.0, mirror: str = "exp", gamma: float = 1.0,
                 direction: str = "adam", order: str = "after", amsgrad: bool = False,
                 maximize: bool = False, apply_to: Optional[Callable[[Tensor], bool]] = None):
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError(f"lr must be a float or a one-element tensor, got shape "
                                 f"{tuple(lr.shape)}")
        else:
            _checks.check_real("lr", lr, low=0.0, high=None)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _checks.check_real("betas[0]", betas[0], low=0.0, high=1.0)
        _checks.check_real("betas[1]", betas[1], low=0.0, high=1.0)
        _checks.check_real("eps", eps, low=0.0, high=None)
        _checks.check_real("weight_decay", weight_decay, low=0.0, high=None)
        _checks.check_mirror_args(alpha, beta, clamp, mirror, gamma)
        _checks.check_choice("direction", direction, _checks.DIRECTIONS)
        _checks.check_choice("order", order, _checks.ORDERS)
        if apply_to is not None and not callable(apply_to):
            raise TypeError("apply_to must be a callable predicate on a parameter")
        self.apply_to = apply_to or default_apply_to
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        alpha=alpha, beta=beta, clamp=clamp, mirror=mirror, gamma=gamma,
                        direction=direction, order=order, amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults)

    _step_supports_amp_scaling = True  # grad_scale/found_inf are read by the kernel

    def _init_state(self, p: Tensor, amsgrad: bool) -> Dict:
        state = self.state[p]
        if len(state) == 0:
            state_dtype = torch.float32 if p.dtype in (torch.bfloat16, torch.float16) else p.dtype
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype)  # p's memory layout
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
        return state

    def load_state_dict(self, state_dict: Dict) -> None:
        """As torch.optim, but float32 state of bf16/fp16 params stays float32."""
        load_state_keeping_dtypes(self, state_dict)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            buckets: Dict[bool, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("HORST does not support sparse gradients")
                buckets.setdefault(bool(self.apply_to(p)), []).append(p)
            amsgrad = group["amsgrad"]
            beta1, beta2 = group["betas"]
            for mirrored, params in buckets.items():
                states = [self._init_state(p, amsgrad) for p in params]
                keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
                views, grads, state = step_views(params, [p.grad for p in params], states, keys)
                F.ham_adam(
                    views, grads, state["exp_avg"], state["exp_avg_sq"],
                    state.get("max_exp_avg_sq", []), [s["step"] for s in states],
                    lr=group["lr"], beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=amsgrad,
                    maximize=group["maximize"], decoupled_weight_decay=True,
                    alpha=group["alpha"] if mirrored else 0.0,
                    beta=group["beta"] if mirrored else 0.0, clamp=group["clamp"],
                    mirror=group["mirror"], gamma=group["gamma"], direction=group["direction"],
                    order=group["order"], grad_scale=grad_scale, found_inf=found_inf)
        return loss


__all__ = ["HORST"]
