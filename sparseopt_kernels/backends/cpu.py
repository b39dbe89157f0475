"""CPU kernels of the ``sparseopt`` ops: the vectorized C++ kernels of ``_C`` (csrc/cpu).

On the CPU every scalar tensor (lr_tensor, grad_scale, found_inf, step counts) lives in host
memory, so reading it here costs no device synchronization; the C++ bindings advance the step
counts themselves (csrc/torch/common.h). A step with ``found_inf`` set returns before anything is
touched. Arguments were validated by the dispatcher.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .. import _native


def _host_lr(lr: float, lr_tensor: Optional[Tensor]) -> float:
    return float(lr_tensor.item()) if lr_tensor is not None else float(lr)


def _skip(found_inf: Optional[Tensor]) -> bool:
    return found_inf is not None and bool(found_inf.item() != 0)


def _inv_scale(grad_scale: Optional[Tensor]) -> float:
    # GradScaler multiplies by the float32 reciprocal of the scale; so do we.
    if grad_scale is None:
        return 1.0
    return float(grad_scale.double().reciprocal().float().item())


def ham_sgd_(params, grads, momentum_buffers, *, lr, lr_tensor=None, weight_decay=0.0,
             momentum=0.0, dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
             alpha=0.0, beta=0.0, clamp=None, mirror="exp", gamma=1.0, grad_scale=None,
             found_inf=None, masks=None, row_scales=None):
    if _skip(found_inf):
        return
    _native.native().ham_sgd_cpu(
        params, grads, momentum_buffers, _host_lr(lr, lr_tensor), weight_decay, momentum,
        dampening, nesterov, maximize, is_first_step, alpha, beta, clamp, mirror, gamma,
        _inv_scale(grad_scale), masks, row_scales)


def ham_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr,
              lr_tensor=None, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
              amsgrad=False, maximize=False, decoupled_weight_decay=False, alpha=0.0, beta=0.0,
              clamp=None, mirror="exp", gamma=1.0, direction="grad", order="after",
              grad_scale=None, found_inf=None, masks=None, row_scales=None):
    if _skip(found_inf):
        return
    _native.native().ham_adam_cpu(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
        _host_lr(lr, lr_tensor), beta1, beta2, weight_decay, eps, amsgrad, maximize,
        decoupled_weight_decay, alpha, beta, clamp, mirror, gamma, direction, order,
        _inv_scale(grad_scale), masks, row_scales)


def mirror_step_(params, grads, *, lr, lr_tensor=None, alpha=0.0, beta=0.0, clamp=None,
                 mirror="exp", gamma=1.0, maximize=False, grad_scale=None, found_inf=None,
                 masks=None):
    if _skip(found_inf):
        return
    _native.native().mirror_step_cpu(params, grads, _host_lr(lr, lr_tensor), alpha, beta, clamp,
                                     mirror, gamma, maximize, _inv_scale(grad_scale), masks)


