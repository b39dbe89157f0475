"""CUDA kernels of the masked Adam family: the CUDA C++ kernels of ``_C`` (csrc/cuda).

No host synchronization: lr_tensor/grad_scale/found_inf go to the kernels as float32 device
scalars and device step counts advance with a foreach add that adds 0 where found_inf is set.
"""
from __future__ import annotations

from .. import _native
from ..reference.mirror import _advance_steps
from .cuda import _device_scalar, _lr_args, check_device_steps


def chunk_select(values, density, chunk_size, chunk_offsets=False):
    return _native.native().chunk_select_cuda(values, density, chunk_size, chunk_offsets)


def compact_adam_(params, grads, indices, exp_avgs, exp_avg_sqs, state_steps, *, density,
                  chunk_size, lr, lr_tensor=None, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, maximize=False, grad_scale=None, found_inf=None):
    device = params[0].device
    check_device_steps(state_steps)
    lr, lr_tensor = _lr_args(lr, lr_tensor, device)
    _advance_steps(state_steps, found_inf)
    _native.native().compact_adam_cuda(
        params, grads, indices, exp_avgs, exp_avg_sqs, state_steps, density, chunk_size, lr,
        lr_tensor, beta1, beta2, eps, weight_decay, maximize,
        _device_scalar(grad_scale, device), _device_scalar(found_inf, device))
