r"""NanoAdam: Adam on the smallest-magnitude weights only (ALGORITHMS.md §6).

For each weight tensor (``ndim >= 2``, in a param group with ``density < 1``):

* at the first step, every ``mask_interval`` steps after it, and whenever the density changes,
  select in each chunk of ``chunk_size`` consecutive elements the fraction ``density`` of
  entries with the smallest ``|θ|`` (at least one per chunk; :func:`~sparseopt_kernels.
  functional.chunk_select`, on the device, no host synchronization);
* every step, Adam with bias correction on the selected entries only
  (:func:`~sparseopt_kernels.functional.compact_adam`), decoupled weight decay on those entries;
  the other entries are not touched (bit-identical).

Moments exist only for the selected entries. On a refresh, the moments of entries that stay
selected are carried over and new entries start at zero (``carry_state=False``: all restart at
zero). Parameters with ``ndim < 2`` and groups with ``density=1.0`` (put the head and the
normalization layers there) take a full AdamW step (with ``weight_decay=0`` exactly Adam).

Density schedule: with ``final_density`` the density moves linearly from ``density`` to
``final_density`` over ``density_decay_steps`` steps (default ``10 × density_interval``),
changing only every ``density_interval`` steps (piecewise constant). The paper does not give the
horizon, hence the explicit option.

Memory per parameter at density d (torch.optim.Adam: 8 B): float32 moments + int16 chunk
offsets (the default) ``10·d`` B; bfloat16 moments (``moments_dtype=torch.bfloat16``) ``6·d`` B;
int32 indices (``chunk_offsets=False``, needed for ``chunk_size > 32768``) add 2·d B.

Chunks are cut from the tensor's memory: for a channels_last conv weight that is the NHWC
order, in which the step needs no copy. The order is recorded with the selection; a param whose
layout changes later (``model.to(memory_format=...)``, a checkpoint of the other format) is
selected again with fresh moments, with a warning.

The schedule counts steps on the host (``state["host_step"]``), so it needs no device sync;
under AMP a skipped step still counts there (its device step count does not advance).
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import _checks
from .. import functional as F
from ._layout import flat, memory_order, step_views
from ._state import load_state_keeping_dtypes


class NanoAdam(Optimizer):
    def __init__(self, params: Iterable, lr: Union[float, Tensor] = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, density: float = 0.1,
                 final_density: Optional[float] = None, density_interval: Optional[int] = None,
                 mask_interval: int = 100, chunk_size: int = 4096, carry_state: bool = True,
                 density_decay_steps: Optional[int] = None,
                 moments_dtype: torch.dtype = torch.float32, chunk_offsets: bool = True):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        density=density, final_density=final_density,
                        density_interval=density_interval, mask_interval=mask_interval,
                        chunk_size=chunk_size, carry_state=carry_state,
                        density_decay_steps=density_decay_steps, moments_dtype=moments_dtype,
                        chunk_offsets=chunk_offsets)
        self._check_group(defaults)
        super().__init__(params, defaults)

    _step_supports_amp_scaling = True  # grad_scale/found_inf are read by the kernels

    def add_param_group(self, param_group: Dict) -> None:
        merged = {**self.defaults, **param_group} if hasattr(self, "defaults") else param_group
        self._check_group(merged)
        super().add_param_group(param_group)

    @staticmethod
    def _check_group(g: Dict) -> None:
        lr = g["lr"]
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError("lr must be a float or a one-element tensor")
        else:
            _checks.check_real("lr", lr, low=0.0, high=None)
        betas = g["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _checks.check_real("betas[0]", betas[0], low=0.0, high=1.0)
        _checks.check_real("betas[1]", betas[1], low=0.0, high=1.0)
        _checks.check_real("eps", g["eps"], low=0.0, high=None)
        _checks.check_real("weight_decay", g["weight_decay"], low=0.0, high=None)
        _checks.check_density("density", g["density"])
        if g["final_density"] is not None:
            _checks.check_density("final_density", g["final_density"])
            if g["density_interval"] is None:
                raise ValueError("final_density needs density_interval (steps between changes)")
        for name in ("density_interval", "mask_interval", "density_decay_steps"):
            value = g[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if g["mask_interval"] is None:
            raise ValueError("mask_interval must be a positive int, got None")
        _checks.check_chunk_size(g["chunk_size"], g["chunk_offsets"])
        if g["moments_dtype"] not in (torch.float32, torch.bfloat16):
            raise ValueError(f"moments_dtype must be torch.float32 or torch.bfloat16, got "
                             f"{g['moments_dtype']}")

    # --- schedule -----------------------------------------------------------------------------
    @staticmethod
    def density_at(group: Dict, step: int) -> float:
        """The group's density at host step ``step`` (0 = the first step)."""
        start, final = group["density"], group["final_density"]
        if final is None:
            return start
        interval = group["density_interval"]
        horizon = group["density_decay_steps"] or 10 * interval
        progress = min(1.0, (step // interval) * interval / horizon)
        return start + (final - start) * progress

    @staticmethod
    def masked(group: Dict, p: Tensor) -> bool:
        return p.ndim >= 2 and group["density"] < 1.0

    # --- state --------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Dict) -> None:
        load_state_keeping_dtypes(self, state_dict)

    def _full_state(self, p: Tensor) -> Dict:
        state = self.state[p]
        if "exp_avg" not in state:
            dtype = torch.float32 if p.dtype in (torch.bfloat16, torch.float16) else p.dtype
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype)  # p's memory layout
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
            state["host_step"] = 0
        return state

    def _drop_if_relaid(self, p: Tensor, state: Dict) -> None:
        """Chunks and indices follow the memory order the param had at its selection; if it has
        another one now (``model.to(memory_format=...)`` since, or a checkpoint of the other
        format), forget the selection: the next step selects again, with fresh moments."""
        row_major = tuple(d for d in range(p.dim()) if p.shape[d] > 1)
        if state.get("memory_order", row_major) == memory_order(p):
            return
        warnings.warn("NanoAdam: a parameter's memory layout changed since its entries were "
                      "selected; they are selected again and their moments restart at zero",
                      RuntimeWarning, stacklevel=3)
        for key in ("indices", "exp_avg", "exp_avg_sq", "memory_order"):
            state.pop(key, None)

    def _select(self, group: Dict, params: List[Tensor], density: float) -> None:
        """(Re)select the entries of ``params`` at ``density``; carry or reset their moments."""
        chunk = group["chunk_size"]
        new_indices = F.chunk_select([flat(p.detach()) for p in params], density, chunk,
                                     chunk_offsets=group["chunk_offsets"])
        for p, idx in zip(params, new_indices):
            state = self.state[p]
            if p.is_contiguous():
                state.pop("memory_order", None)
            else:
                state["memory_order"] = memory_order(p)
            old = state.get("indices")
            fresh = lambda: torch.zeros(idx.numel(), dtype=group["moments_dtype"],  # noqa: E731
                                        device=p.device)
            if old is None or not group["carry_state"]:
                m, v = fresh(), fresh()
            else:
                remap = dict(old_density=state["density"], new_density=density,
                             chunk_size=chunk)
                m = F.remap_compact_state(state["indices"], idx, state["exp_avg"], **remap)
                v = F.remap_compact_state(state["indices"], idx, state["exp_avg_sq"], **remap)
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["host_step"] = 0
            state["indices"], state["exp_avg"], state["exp_avg_sq"] = idx, m, v
            state["density"] = density

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            adam = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                        weight_decay=group["weight_decay"], grad_scale=grad_scale,
                        found_inf=found_inf)
            full, buckets = [], {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("NanoAdam does not support sparse gradients")
                if not self.masked(group, p):
                    full.append(p)
                    continue
                state = self.state[p]
                if ("memory_order" in state or not p.is_contiguous()) and "indices" in state:
                    self._drop_if_relaid(p, state)
                t = state.get("host_step", 0)
                density = self.density_at(group, t)
                if ("indices" not in state or t % group["mask_interval"] == 0
                        or density != state["density"]):
                    buckets.setdefault(("select", density), []).append(p)
                buckets.setdefault(("step", density), []).append(p)
            for (kind, density), params in buckets.items():
                if kind == "select":
                    self._select(group, params, density)
            for (kind, density), params in buckets.items():
                if kind != "step":
                    continue
                states = [self.state[p] for p in params]
                views, grads, _ = step_views(params, [p.grad for p in params], [], ())
                F.compact_adam(views, grads, [s["indices"] for s in states],
                               [s["exp_avg"] for s in states],
                               [s["exp_avg_sq"] for s in states],
                               [s["step"] for s in states], density=density,
                               chunk_size=group["chunk_size"], **adam)
                for s in states:
                    s["host_step"] += 1
            if full:
                states = [self._full_state(p) for p in full]
                views, grads, moments = step_views(full, [p.grad for p in full], states,
                                                   ("exp_avg", "exp_avg_sq"))
                F.ham_adam(views, grads, moments["exp_avg"], moments["exp_avg_sq"], [],
                           [s["step"] for s in states], decoupled_weight_decay=True, alpha=0.0,
                           beta=0.0, **adam)
                for s in states:
                    s["host_step"] += 1
        return loss


__all__ = ["NanoAdam"]
