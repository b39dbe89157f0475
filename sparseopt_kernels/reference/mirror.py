r"""Pure-PyTorch reference for the fused base step + hyperbolic mirror step (HAM, HORST).

This file is the numerical specification every native and Triton kernel is tested against
(ALGORITHMS.md §1-2). Per element, with ``g`` the gradient divided by ``grad_scale`` and negated
when ``maximize``, ``η`` the learning rate and arithmetic in float32 (float64 for float64 params):

Base steps (exactly torch.optim's update rules)::

    SGD:   g_b = g + λθ                      (weight decay, coupled)
           b   = g_b if first step else μ·b + (1 − τ)·g_b
           d   = g_b + μ·b if nesterov else b          (d = g_b when μ = 0)
           θ'  = θ − η·d
    Adam:  θ̃   = θ·(1 − ηλ) if decoupled (AdamW) else θ,   g_b = g + λθ if not decoupled else g
           m   = β₁·m + (1 − β₁)·g_b,   v = β₂·v + (1 − β₂)·g_b²,   v̂max = max(v̂max, v) (amsgrad)
           u   = (m / (1 − β₁ᵗ)) / (sqrt(v or v̂max) / sqrt(1 − β₂ᵗ) + ε)
           (the bias corrections 1 − β₁ᵗ and sqrt(1 − β₂ᵗ) are computed in float64)
           θ'  = θ̃ − η·u

Mirror step, applied to θ' (order "after") with direction ``d`` = ``g`` (HAM, HORST
``direction="grad"``) or ``u`` (HORST ``direction="adam"``)::

    exp:         z = clamp(−η·(α·sign(θ')·d + β), −c, c);   θ_new = θ'·exp(z)
    hypentropy:  s = clamp(η·α·d, −c, c);   θ_new = γ·sinh(asinh(θ'/γ) − s)·exp(−η·β)

With ``order="before"`` (Adam family only) the mirror step is applied to θ first and the AdamW
update to its result. The mirror step is skipped entirely when α = β = 0, so the base optimizer is
reproduced exactly. ``exp`` keeps exact zeros at zero; ``hypentropy`` can move a zero weight
(that is the point of the form). ``clamp=None`` disables the clamp.

Masks (optional, one per param: bool shaped like the param, or bit-packed uint8, see
:mod:`.masked`): where the mask is 0 the param and its state keep their bits.

Row scales (optional, SGD and Adam only; SparseOpt, see :mod:`.skew`): one float32 vector per
param with one entry per row (``param.shape[0]``); the gradient is ``g̃ = c ⊙ g`` (after the AMP
unscale and the maximize negation), and ``g̃`` is used everywhere ``g`` is above, the mirror
exponent included.

AMP: ``grad_scale`` (device scalar) divides the gradient; when ``found_inf`` (device scalar) is
non-zero nothing is modified, step counters included. Step counters are incremented by the op
(like torch.optim) before the bias corrections are computed. No host synchronization anywhere.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .skew import scaled_grad


def _compute_dtype(p: Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _lr_value(lr: float, lr_tensor: Optional[Tensor], like: Tensor):
    if lr_tensor is None:
        return lr
    return lr_tensor.to(device=like.device, dtype=like.dtype)


def _unscale(g: Tensor, grad_scale: Optional[Tensor], maximize: bool) -> Tensor:
    if grad_scale is not None:
        g = g / grad_scale.to(device=g.device, dtype=g.dtype)
    return -g if maximize else g


def _mirror(theta: Tensor, d: Tensor, lr, alpha: float, beta: float, clamp: Optional[float],
            mirror: str, gamma: float) -> Tensor:
    """The mirror step on ``theta`` along ``d`` (both in the compute dtype)."""
    if alpha == 0.0 and beta == 0.0:
        return theta
    if mirror == "exp":
        z = -lr * (alpha * torch.sign(theta) * d + beta)
        if clamp is not None:
            z = z.clamp(-clamp, clamp)
        return theta * torch.exp(z)
    shift = lr * alpha * d
    if clamp is not None:
        shift = shift.clamp(-clamp, clamp)
    decay = torch.exp(-lr * beta * torch.ones((), dtype=theta.dtype, device=theta.device))
    return gamma * torch.sinh(torch.asinh(theta / gamma) - shift) * decay


def _commit(found_inf: Optional[Tensor], dst: Tensor, new: Tensor,
            mask: Optional[Tensor] = None) -> None:
    """``dst.copy_(new)`` where ``mask`` (all if None) unless ``found_inf`` is set, without a
    host synchronization; elsewhere ``dst`` keeps its bits."""
    new = new.to(dst.dtype)
    if mask is not None:
        new = torch.where(mask, new, dst)
    if found_inf is not None:
        new = torch.where(found_inf.to(dst.device) != 0, dst, new)
    dst.copy_(new)


def _dense_mask(masks: Optional[List[Tensor]], i: int, like: Tensor) -> Optional[Tensor]:
    """Tensor i's mask as a bool tensor shaped like the param (bool or bit-packed uint8)."""
    if masks is None:
        return None
    mask = masks[i]
    if mask.dtype == torch.bool:
        return mask
    bits = (mask.unsqueeze(-1) >> torch.arange(8, device=mask.device, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[: like.numel()].view(like.shape).bool()


def _advance_steps(state_steps: List[Tensor], found_inf: Optional[Tensor]) -> None:
    """``step += 1`` for every counter, or ``+= 0`` where ``found_inf`` is set (no host sync)."""
    if not state_steps:
        return
    if found_inf is None:
        torch._foreach_add_(state_steps, 1)
        return
    keep = (found_inf != 0).logical_not().to(device=state_steps[0].device,
                                             dtype=state_steps[0].dtype)
    torch._foreach_add_(state_steps, [keep] * len(state_steps))


def ham_sgd_(params: List[Tensor], grads: List[Tensor], momentum_buffers: List[Tensor], *,
             lr: float, lr_tensor: Optional[Tensor] = None, weight_decay: float = 0.0,
             momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
             maximize: bool = False, is_first_step: bool = False, alpha: float = 0.0,
             beta: float = 0.0, clamp: Optional[float] = None, mirror: str = "exp",
             gamma: float = 1.0, grad_scale: Optional[Tensor] = None,
             found_inf: Optional[Tensor] = None, masks: Optional[List[Tensor]] = None,
             row_scales: Optional[List[Tensor]] = None) -> None:
    for i, (p, g_in) in enumerate(zip(params, grads)):
        mask = _dense_mask(masks, i, p)
        ct = _compute_dtype(p)
        theta = p.to(ct)
        g = scaled_grad(_unscale(g_in.to(ct), grad_scale, maximize), row_scales, i)
        eta = _lr_value(lr, lr_tensor, theta)
        g_b = g + weight_decay * theta if weight_decay != 0 else g
        if momentum != 0:
            buf = momentum_buffers[i]
            if is_first_step:
                new_buf = g_b
            else:
                new_buf = momentum * buf.to(ct) + (1 - dampening) * g_b
            d = g_b + momentum * new_buf if nesterov else new_buf
            _commit(found_inf, buf, new_buf, mask)
        else:
            d = g_b
        theta1 = theta - eta * d
        _commit(found_inf, p, _mirror(theta1, g, eta, alpha, beta, clamp, mirror, gamma), mask)


def ham_adam_(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
              exp_avg_sqs: List[Tensor], max_exp_avg_sqs: List[Tensor],
              state_steps: List[Tensor], *, lr: float, lr_tensor: Optional[Tensor] = None,
              beta1: float = 0.9, beta2: float = 0.999, weight_decay: float = 0.0,
              eps: float = 1e-8, amsgrad: bool = False, maximize: bool = False,
              decoupled_weight_decay: bool = False, alpha: float = 0.0, beta: float = 0.0,
              clamp: Optional[float] = None, mirror: str = "exp", gamma: float = 1.0,
              direction: str = "grad", order: str = "after",
              grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
              masks: Optional[List[Tensor]] = None,
              row_scales: Optional[List[Tensor]] = None) -> None:
    _advance_steps(state_steps, found_inf)
    for i, (p, g_in) in enumerate(zip(params, grads)):
        mask = _dense_mask(masks, i, p)
        ct = _compute_dtype(p)
        theta = p.to(ct)
        g = scaled_grad(_unscale(g_in.to(ct), grad_scale, maximize), row_scales, i)
        eta = _lr_value(lr, lr_tensor, theta)
        # Bias corrections in float64 like torch.optim: 1 − β₂ᵗ cancels badly in float32
        # (β₂ = 0.999 at t = 1 loses 1e-5 relative), so only the results are rounded.
        step = state_steps[i].to(device=p.device, dtype=torch.float64)
        bc1 = (1 - beta1 ** step).to(ct)
        bc2_sqrt = torch.sqrt(1 - beta2 ** step).to(ct)

        g_b = g + weight_decay * theta if (weight_decay != 0 and not decoupled_weight_decay) else g
        m = beta1 * exp_avgs[i].to(ct) + (1 - beta1) * g_b
        v = beta2 * exp_avg_sqs[i].to(ct) + (1 - beta2) * g_b * g_b
        if amsgrad:
            vmax = torch.maximum(max_exp_avg_sqs[i].to(ct), v)
            denom = torch.sqrt(vmax) / bc2_sqrt + eps
        else:
            denom = torch.sqrt(v) / bc2_sqrt + eps
        u = (m / bc1) / denom
        d = u if direction == "adam" else g

        if order == "before":
            theta = _mirror(theta, d, eta, alpha, beta, clamp, mirror, gamma)
        if weight_decay != 0 and decoupled_weight_decay:
            theta = theta * (1 - eta * weight_decay)
        theta1 = theta - eta * u
        if order == "after":
            theta1 = _mirror(theta1, d, eta, alpha, beta, clamp, mirror, gamma)

        _commit(found_inf, exp_avgs[i], m, mask)
        _commit(found_inf, exp_avg_sqs[i], v, mask)
        if amsgrad:
            _commit(found_inf, max_exp_avg_sqs[i], vmax, mask)
        _commit(found_inf, p, theta1, mask)


def mirror_step_(params: List[Tensor], grads: List[Tensor], *, lr: float,
                 lr_tensor: Optional[Tensor] = None, alpha: float = 0.0, beta: float = 0.0,
                 clamp: Optional[float] = None, mirror: str = "exp", gamma: float = 1.0,
                 maximize: bool = False, grad_scale: Optional[Tensor] = None,
                 found_inf: Optional[Tensor] = None,
                 masks: Optional[List[Tensor]] = None) -> None:
    """Standalone mirror step: ``params`` hold θ' (after some base step), ``grads`` the raw g."""
    for i, (p, g_in) in enumerate(zip(params, grads)):
        ct = _compute_dtype(p)
        g = _unscale(g_in.to(ct), grad_scale, maximize)
        eta = _lr_value(lr, lr_tensor, g)
        _commit(found_inf, p, _mirror(p.to(ct), g, eta, alpha, beta, clamp, mirror, gamma),
                _dense_mask(masks, i, p))


__all__ = ["ham_sgd_", "ham_adam_", "mirror_step_"]
