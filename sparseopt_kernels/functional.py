r"""Stateless multi-tensor API: what other training stacks call with plain tensor lists.

Each function takes lists of tensors (params, grads, optimizer state), splits them by device and
dtype, checks every split before running any (so bad input modifies nothing), and runs one
``torch.ops.sparseopt`` call per split. ``lr`` may be a float or a one-element tensor (a device
tensor keeps the step free of host synchronizations, e.g. for CUDA graphs); ``grad_scale`` and
``found_inf`` are the AMP scalars (see :class:`torch.amp.GradScaler`).

Update rules: see :mod:`sparseopt_kernels.reference.mirror` (ALGORITHMS.md §1–2)::

    ham_sgd:     θ ← mirror(SGD(θ, g, b), g)
    ham_adam:    θ ← mirror(Adam/AdamW(θ, g, m, v), d)        d = g or Adam's direction u
    mirror_step: θ ← θ'·exp(clamp(−η(α·sign(θ')·g + β), −c, c))   (θ' = params as given)
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _ops
from .reference import masked as _masked_ref

LR = Union[float, Tensor]


def _split_lr(lr: LR) -> Tuple[float, Optional[Tensor]]:
    if isinstance(lr, Tensor):
        return 0.0, lr
    return lr, None


def _on(t: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    if t is None or t.device == device:
        return t
    return t.to(device, non_blocking=True)


def _run_grouped(op: str, lists: Sequence[List[Tensor]], optional: Sequence[bool],
                 kwargs: Dict):
    """Run ``op`` once per (device, dtype) of ``lists[0]`` (the params).

    ``optional[i]`` marks a list that may be empty (e.g. max_exp_avg_sqs without amsgrad).
    """
    _ops.check_scalar_types(op, kwargs)
    params = lists[0]
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be a list of tensors, got {type(params).__name__}")
    for lst in lists[1:]:
        if not isinstance(lst, (list, tuple)):
            raise TypeError(f"expected lists of tensors, got {type(lst).__name__}")
    groups: "OrderedDict[tuple, List[int]]" = OrderedDict()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a Tensor, got {type(p).__name__}")
        groups.setdefault((p.device, p.dtype), []).append(i)
    if not groups:
        return groups, []
    calls = []
    for (device, _dtype), idx in groups.items():
        args = []
        for lst, may_be_empty in zip(lists, optional):
            if may_be_empty and len(lst) == 0:
                args.append([])
            elif len(lst) != len(params):
                # the op's own check names the list; give it an unsplit view to do so
                args.append(list(lst))
            else:
                args.append([lst[i] for i in idx])
        kw = dict(kwargs)
        if "grad_scale" in kw:
            kw["grad_scale"] = _on(kw["grad_scale"], device)
            kw["found_inf"] = _on(kw["found_inf"], device)
        for key in ("masks", "row_scales"):  # one per param: split like the params
            per_param = kw.get(key)
            if per_param is not None:
                kw[key] = ([per_param[i] for i in idx] if len(per_param) == len(params)
                           else list(per_param))
        calls.append((args, kw))
    if len(calls) > 1:  # check every split before running any; one split is checked by its op
        for args, kw in calls:
            _ops.VALIDATORS[op](*args, **kw)
    fn = getattr(torch.ops.sparseopt, op)
    outputs = [fn(*args, **kw) for args, kw in calls]
    return groups, outputs


def ham_sgd(params: List[Tensor], grads: List[Tensor], momentum_buffers: List[Tensor], *,
            lr: LR, weight_decay: float = 0.0, momentum: float = 0.0, dampening: float = 0.0,
            nesterov: bool = False, maximize: bool = False, is_first_step: bool = False,
            alpha: float = 200.0, beta: float = 1e-3, clamp: Optional[float] = 5.0,
            mirror: str = "exp", gamma: float = 1.0, grad_scale: Optional[Tensor] = None,
            found_inf: Optional[Tensor] = None, masks: Optional[List[Tensor]] = None,
            row_scales: Optional[List[Tensor]] = None) -> None:
    """SGD (torch.optim.SGD's rule) fused with the mirror step, in place.

    ``is_first_step`` initializes the momentum buffers to the gradient (as torch.optim.SGD does
    when a buffer does not exist yet). ``momentum_buffers`` may be empty when momentum is 0.
    ``masks`` (one bool mask shaped like each param, or bit-packed uint8) makes it the dense-mask
    step: where the mask is 0 the param and its buffer keep their bits (pruned zeros stay zero).
    ``row_scales`` (one float32 vector of ``p.shape[0]`` entries per param, see
    :func:`row_coefficients`) multiply the gradient's rows first: SparseOpt's ``g̃ = c ⊙ g``,
    fused into the gradient read (no extra pass).
    """
    lr_f, lr_t = _split_lr(lr)
    _run_grouped("ham_sgd_", [params, grads, momentum_buffers], [False, False, momentum == 0],
                 dict(lr=lr_f, lr_tensor=lr_t, weight_decay=weight_decay, momentum=momentum,
                      dampening=dampening, nesterov=nesterov, maximize=maximize,
                      is_first_step=is_first_step, alpha=alpha, beta=beta, clamp=clamp,
                      mirror=mirror, gamma=gamma, grad_scale=grad_scale, found_inf=found_inf,
                      masks=masks, row_scales=row_scales))


def ham_adam(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
             exp_avg_sqs: List[Tensor], max_exp_avg_sqs: List[Tensor],
             state_steps: List[Tensor], *, lr: LR, beta1: float = 0.9, beta2: float = 0.999,
             weight_decay: float = 0.0, eps: float = 1e-8, amsgrad: bool = False,
             maximize: bool = False, decoupled_weight_decay: bool = False,
             alpha: float = 200.0, beta: float = 1e-3, clamp: Optional[float] = 5.0,
             mirror: str = "exp", gamma: float = 1.0, direction: str = "grad",
             order: str = "after", grad_scale: Optional[Tensor] = None,
             found_inf: Optional[Tensor] = None, masks: Optional[List[Tensor]] = None,
             row_scales: Optional[List[Tensor]] = None) -> None:
    """Adam (or AdamW with ``decoupled_weight_decay``) fused with the mirror step, in place.

    ``state_steps`` are one-element float tensors, incremented by the call (unless
    ``found_inf``). ``direction="adam"`` with ``decoupled_weight_decay=True`` is HORST.
    ``masks`` makes it the dense-mask step (see :func:`ham_sgd`); memory per parameter is the
    dense moments' (8 B in float32) plus the mask (1 B bool, or 1/8 B bit-packed).
    ``row_scales``: SparseOpt's per-row gradient scale, as in :func:`ham_sgd`.
    """
    lr_f, lr_t = _split_lr(lr)
    _run_grouped("ham_adam_",
                 [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps],
                 [False, False, False, False, not amsgrad, False],
                 dict(lr=lr_f, lr_tensor=lr_t, beta1=beta1, beta2=beta2,
                      weight_decay=weight_decay, eps=eps, amsgrad=amsgrad, maximize=maximize,
                      decoupled_weight_decay=decoupled_weight_decay, alpha=alpha, beta=beta,
                      clamp=clamp, mirror=mirror, gamma=gamma, direction=direction, order=order,
                      grad_scale=grad_scale, found_inf=found_inf, masks=masks,
                      row_scales=row_scales))


def mirror_step(params: List[Tensor], grads: List[Tensor], *, lr: LR, alpha: float = 200.0,
                beta: float = 1e-3, clamp: Optional[float] = 5.0, mirror: str = "exp",
                gamma: float = 1.0, maximize: bool = False,
                grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
                masks: Optional[List[Tensor]] = None) -> None:
    """The standalone mirror step on params that already took a base step (θ' → θ), in place."""
    lr_f, lr_t = _split_lr(lr)
    _run_grouped("mirror_step_", [params, grads], [False, False],
                 dict(lr=lr_f, lr_tensor=lr_t, alpha=alpha, beta=beta, clamp=clamp,
                      mirror=mirror, gamma=gamma, maximize=maximize, grad_scale=grad_scale,
                      found_inf=found_inf, masks=masks))


def chunk_select(values: List[Tensor], density: float, chunk_size: int = 4096,
                 chunk_offsets: bool = False) -> List[Tensor]:
    """Per chunk of ``chunk_size`` elements, the entries of smallest ``|θ|`` (a fraction
    ``density``, at least one per chunk), as ascending int32 flat indices or int16 chunk offsets.

    Computed on the device without a full sort; the output sizes are known on the host
    (:func:`sparseopt_kernels.reference.masked.num_selected`), so nothing synchronizes.
    """
    groups, outputs = _run_grouped("chunk_select", [values], [False],
                                   dict(density=density, chunk_size=chunk_size,
                                        chunk_offsets=chunk_offsets))
    result: List[Optional[Tensor]] = [None] * len(values)
    for idx, out in zip(groups.values(), outputs):
        for i, t in zip(idx, out):
            result[i] = t
    return result  # type: ignore[return-value]


def compact_adam(params: List[Tensor], grads: List[Tensor], indices: List[Tensor],
                 exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor], state_steps: List[Tensor],
                 *, density: float, chunk_size: int = 4096, lr: LR, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                 maximize: bool = False, grad_scale: Optional[Tensor] = None,
                 found_inf: Optional[Tensor] = None) -> None:
    """Adam on the selected entries only (NanoAdam's step), in place.

    ``indices`` come from :func:`chunk_select` with the same ``density`` and ``chunk_size``;
    ``exp_avgs``/``exp_avg_sqs`` hold one moment per selected entry (float32 or bfloat16).
    Weight decay is decoupled and applied to the selected entries only. Memory per parameter at
    density d: ``d × (8 + 4)`` B with float32 moments and int32 indices, ``d × (8 + 2)`` B with
    int16 chunk offsets, ``d × (4 + 2)`` B with bfloat16 moments (torch.optim.Adam: 8 B).
    """
    lr_f, lr_t = _split_lr(lr)
    _run_grouped("compact_adam_",
                 [params, grads, indices, exp_avgs, exp_avg_sqs, state_steps],
                 [False] * 6,
                 dict(density=density, chunk_size=chunk_size, lr=lr_f, lr_tensor=lr_t,
                      beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                      maximize=maximize, grad_scale=grad_scale, found_inf=found_inf))


remap_compact_state = _masked_ref.remap_compact_state


def row_coefficients(masks: List[Tensor], out: Optional[List[Tensor]] = None) -> List[Tensor]:
    """SparseOpt's per-row gradient coefficients of each bool mask (rows = ``shape[0]``)::

        c_i = sqrt(1 − s_i) / sqrt(1 − s_avg) = sqrt(nnz(M[i]) · rows / nnz(M))

    (float32, 0 for every row of an all-zero mask). Computed on the masks' device with one
    reduction and no host synchronization. ``out`` (float32 vectors) is written in place,
    otherwise new vectors are returned.
    """
    if not isinstance(masks, (list, tuple)):
        raise TypeError(f"masks must be a list of tensors, got {type(masks).__name__}")
    if out is None:
        out = [torch.empty(m.shape[0] if m.dim() > 0 else 0, dtype=torch.float32,
                           device=m.device) for m in masks]
    _run_grouped("row_coefficients_", [masks, out], [False, False], {})
    return list(out)


def row_scale_(tensors: List[Tensor], scales: List[Tensor], *,
               masks: Optional[List[Tensor]] = None) -> None:
    """In place ``x[i] ← c_i · x[i]`` per row (and ``+0`` where ``masks`` is False): the
    standalone SparseOpt correction for optimizers whose step is not fused with it. Tensors of
    several devices and dtypes take one op call each."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"tensors must be a list of tensors, got {type(tensors).__name__}")
    _run_grouped("row_scale_", [tensors, scales], [False, False], dict(masks=masks))


__all__ = ["ham_sgd", "ham_adam", "mirror_step", "chunk_select", "compact_adam",
           "remap_compact_state", "row_coefficients", "row_scale_"]
