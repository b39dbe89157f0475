"""CUDA kernels of the ``sparseopt`` ops: the torch-free CUDA C++ kernels of ``_C`` (csrc/cuda).

No host synchronization: lr_tensor, grad_scale and found_inf are passed to the kernels as
float32 device scalars, and step counts on the device are advanced with a foreach add that adds
0 where found_inf is set. (The Triton kernels are the other CUDA backend; see ``select``.)
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _native
from ..reference.mirror import _advance_steps


def _device_scalar(t: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    if t is None:
        return None
    return t.to(device=device, dtype=torch.float32)


def _lr_args(lr: float, lr_tensor: Optional[Tensor], device) -> Tuple[float, Optional[Tensor]]:
    # A host lr tensor is read on the host (no device sync); a device one stays on the device.
    if lr_tensor is not None and lr_tensor.device.type == "cpu":
        return float(lr_tensor.item()), None
    return float(lr), _device_scalar(lr_tensor, device)


def check_device_steps(state_steps) -> None:
    """Before the steps advance: the kernels read device step counts as float32."""
    if state_steps and state_steps[0].device.type == "cuda" and \
            state_steps[0].dtype != torch.float32:
        raise TypeError(f"state_steps on CUDA must be float32 (the kernels read them on the "
                        f"device), got {state_steps[0].dtype}")


def ham_sgd_(params, grads, momentum_buffers, *, lr, lr_tensor=None, weight_decay=0.0,
             momentum=0.0, dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
             alpha=0.0, beta=0.0, clamp=None, mirror="exp", gamma=1.0, grad_scale=None,
             found_inf=None, masks=None, row_scales=None):
    device = params[0].device
    lr, lr_tensor = _lr_args(lr, lr_tensor, device)
    _native.native().ham_sgd_cuda(
        params, grads, momentum_buffers, lr, lr_tensor, weight_decay, momentum, dampening,
        nesterov, maximize, is_first_step, alpha, beta, clamp, mirror, gamma,
        _device_scalar(grad_scale, device), _device_scalar(found_inf, device), masks, row_scales)


def ham_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr,
              lr_tensor=None, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
              amsgrad=False, maximize=False, decoupled_weight_decay=False, alpha=0.0, beta=0.0,
              clamp=None, mirror="exp", gamma=1.0, direction="grad", order="after",
              grad_scale=None, found_inf=None, masks=None, row_scales=None):
    device = params[0].device
    check_device_steps(state_steps)
    lr, lr_tensor = _lr_args(lr, lr_tensor, device)
    _advance_steps(state_steps, found_inf)
    _native.native().ham_adam_cuda(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, lr_tensor,
        beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, alpha, beta,
        clamp, mirror, gamma, direction, order, _device_scalar(grad_scale, device),
        _device_scalar(found_inf, device), masks, row_scales)


def mirror_step_(params, grads, *, lr, lr_tensor=None, alpha=0.0, beta=0.0, clamp=None,
                 mirror="exp", gamma=1.0, maximize=False, grad_scale=None, found_inf=None,
                 masks=None):
    device = params[0].device
    lr, lr_tensor = _lr_args(lr, lr_tensor, device)
    _native.native().mirror_step_cuda(
        params, grads, lr, lr_tensor, alpha, beta, clamp, mirror, gamma, maximize,
        _device_scalar(grad_scale, device), _device_scalar(found_inf, device), masks)
