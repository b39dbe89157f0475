"""CPU kernels of the masked Adam family: the C++ kernels of ``_C`` (csrc/cpu/masked_adam.cpp).

Scalars on the CPU are read on the host (no device exists to synchronize with); a step with
``found_inf`` set returns before anything is touched. Arguments were validated by the dispatcher.
"""
from __future__ import annotations

from .. import _native
from .cpu import _host_lr, _inv_scale, _skip


def chunk_select(values, density, chunk_size, chunk_offsets=False):
    return _native.native().chunk_select_cpu(values, density, chunk_size, chunk_offsets)


def compact_adam_(params, grads, indices, exp_avgs, exp_avg_sqs, state_steps, *, density,
                  chunk_size, lr, lr_tensor=None, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, maximize=False, grad_scale=None, found_inf=None):
    if _skip(found_inf):
        return
    _native.native().compact_adam_cpu(
        params, grads, indices, exp_avgs, exp_avg_sqs, state_steps, density, chunk_size,
        _host_lr(lr, lr_tensor), beta1, beta2, eps, weight_decay, maximize,
        _inv_scale(grad_scale))
