"""Argument checks shared by every backend of every op.

Each op validates all of its arguments before any tensor is modified, so bad input raises a
clear exception naming the argument and leaves the caller's parameters and state untouched.
The checks read only metadata (shapes, dtypes, devices) and Python scalars: they never
synchronize with the device. Tensor lists are first read in one C++ pass each (``_summary``);
the checks walk a list tensor by tensor, naming the culprit, only when its summary is not clean.
"""
from __future__ import annotations

import numbers
from typing import Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from . import _native

PARAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MIRROR_FORMS = ("exp", "hypentropy")
DIRECTIONS = ("grad", "adam")
ORDERS = ("after", "before")

# Shape rules of _C.summarize_tensors (csrc/torch/tensor_lists.cpp): what tensors[i] must look
# like relative to the param it belongs to.
ANY, SAME, SCALAR, SELECTED, MASK, ROWS = 0, 1, 2, 3, 4, 5


def _summary(tensors, like, rule: int, density: float = 0.0, chunk_size: int = 1):
    """``(dtype, device, dense, shapes_ok)`` of a tensor list, read in one C++ pass.

    ``like`` holds the param of each tensor for the shape rules that need it (pass ``()`` for
    ANY and SCALAR: each list costs ~30 ns per tensor to hand to C++).

    dtype / device are None unless every tensor shares them; dense: all strided and contiguous.
    None without ``_C``, while Dynamo traces, or when the list holds something else than plain
    tensors (non-tensors, fake or functional tensors): the caller then checks tensor by tensor,
    which is also how every error message is produced. A clean summary only ever lets through
    what the per-tensor checks accept.
    """
    native = _native.native()
    if native is None or torch.compiler.is_compiling():  # Dynamo cannot trace into _C
        return None
    try:
        return native.summarize_tensors(tensors, like, rule, density, chunk_size)
    except TypeError:  # an element that is not a Tensor
        return None


def check_real(name: str, value, *, low: Optional[float] = None, high: Optional[float] = None,
               low_open: bool = False, high_open: bool = True) -> float:
    """A real Python number (bools rejected) within [low, high) by default; returns a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_mirror_args(alpha, beta, clamp, mirror, gamma) -> None:
    check_real("alpha", alpha)
    check_real("beta", beta)
    if clamp is not None:
        check_real("clamp", clamp, low=0.0, low_open=True, high=None)
    check_choice("mirror", mirror, MIRROR_FORMS)
    check_real("gamma", gamma, low=0.0, low_open=True, high=None)


def check_lr(lr, lr_tensor: Optional[Tensor], device: Optional[torch.device]) -> None:
    check_real("lr", lr, low=0.0, high=None)
    if lr_tensor is not None:
        _check_scalar_tensor("lr_tensor", lr_tensor, device)


def _check_scalar_tensor(name: str, t, device: Optional[torch.device]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if t.numel() != 1 or not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a one-element floating-point tensor, "
                         f"got shape {tuple(t.shape)} and dtype {t.dtype}")
    if device is not None and t.device != device and t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device} but the params are on {device}")


def check_amp(grad_scale: Optional[Tensor], found_inf: Optional[Tensor],
              device: Optional[torch.device]) -> None:
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None:
            _check_scalar_tensor(name, t, device)
            if device is not None and t.device != device:
                raise ValueError(f"{name} must be on the params' device {device}, got {t.device}")


def check_tensor_lists(params: List[Tensor], grads: List[Tensor],
                       states: Iterable[tuple] = ()) -> Optional[torch.device]:
    """params/grads and same-shaped state lists: lengths, dense, real, contiguous, one device.

    ``states`` holds ``(name, tensors)`` pairs; a state list must hold float32 tensors or tensors
    of the param's dtype. Returns the common device (None for empty lists).
    """
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be a list of tensors, got {type(params).__name__}")
    n = len(params)
    lists = [("grads", grads)] + list(states)
    for name, lst in lists:
        if not isinstance(lst, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, got {type(lst).__name__}")
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} tensors but params has {n}")
    if n == 0:
        return None
    device = _clean_tensor_lists(params, grads, states)
    if device is not None:
        return device
    device = params[0].device
    dtype = params[0].dtype
    for i, p in enumerate(params):
        _check_dense(f"params[{i}]", p, device)
        if p.dtype not in PARAM_DTYPES:
            raise TypeError(f"params[{i}] has dtype {p.dtype}; expected one of "
                            "float32, float64, bfloat16, float16")
        if p.dtype != dtype:
            raise TypeError(f"params[{i}] has dtype {p.dtype} but params[0] has {dtype}: "
                            "call the op once per dtype")
        g = grads[i]
        _check_dense(f"grads[{i}]", g, device)
        if g.dtype != p.dtype or g.shape != p.shape:
            raise ValueError(f"grads[{i}] must match params[{i}] (shape {tuple(p.shape)}, "
                             f"dtype {p.dtype}), got shape {tuple(g.shape)}, dtype {g.dtype}")
        for name, lst in states:
            s = lst[i]
            _check_dense(f"{name}[{i}]", s, device)
            if s.shape != p.shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(s.shape)}, expected "
                                 f"{tuple(p.shape)} like params[{i}]")
            if s.dtype not in (torch.float32, p.dtype):
                raise TypeError(f"{name}[{i}] has dtype {s.dtype}; optimizer state must be "
                                f"float32 or the param dtype {p.dtype}")
    for name, lst in states:
        if len({s.dtype for s in lst}) > 1:
            raise TypeError(f"{name} mixes dtypes {sorted(str(s.dtype) for s in set(lst))}: "
                            "all state tensors of one call must share a dtype")
    state_dtypes = {lst[0].dtype for _, lst in states}
    if len(state_dtypes) > 1:
        raise TypeError(f"optimizer state lists mix dtypes {sorted(map(str, state_dtypes))}")
    return device


def _common_device(tensors) -> Optional[torch.device]:
    """The device every tensor of the list is on; None when they differ, for an empty list, or
    without a summary."""
    summary = _summary(tensors, (), ANY)
    return None if summary is None else summary[1]


def _clean_tensor_lists(params, grads, states) -> Optional[torch.device]:
    """The params' device when check_tensor_lists' per-tensor checks would all pass, read from
    one summary per list; None when a list needs the per-tensor checks."""
    summary = _summary(params, params, SAME)
    if summary is None:
        return None
    dtype, device, dense, _ = summary
    if device is None or not dense or dtype not in PARAM_DTYPES:
        return None
    if _summary(grads, params, SAME) != (dtype, device, True, True):
        return None
    state_dtype = None
    for _, lst in states:
        summary = _summary(lst, params, SAME)
        if (summary is None or summary[1:] != (device, True, True)
                or summary[0] not in (torch.float32, dtype)
                or state_dtype not in (None, summary[0])):
            return None
        state_dtype = summary[0]
    return device


def _check_dense(name: str, t, device: torch.device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} is a {t.layout} tensor; only dense (strided) tensors are "
                        "supported")
    if t.is_complex():
        raise TypeError(f"{name} is complex ({t.dtype}); only real tensors are supported")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but params[0] is on {device}: "
                         "call the op once per device")
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {t.stride()}); "
                         "call .contiguous() on it first")


def check_steps(state_steps: List[Tensor], n: int, device: Optional[torch.device],
                found_inf: Optional[Tensor]) -> None:
    if len(state_steps) != n:
        raise ValueError(f"state_steps has {len(state_steps)} tensors but params has {n}")
    summary = _summary(state_steps, (), SCALAR)
    if summary is not None:
        dtype, steps_device, _, scalars = summary
        if (scalars and dtype is not None and dtype.is_floating_point
                and steps_device is not None
                and (device is None or steps_device in (device, torch.device("cpu")))
                and (found_inf is None or device is None or device.type == "cpu"
                     or steps_device == device)):
            return
    for i, s in enumerate(state_steps):
        if not isinstance(s, Tensor):
            raise TypeError(f"state_steps[{i}] must be a Tensor, got {type(s).__name__}")
        if s.numel() != 1 or not s.dtype.is_floating_point:
            raise ValueError(f"state_steps[{i}] must be a one-element floating-point tensor, "
                             f"got shape {tuple(s.shape)} and dtype {s.dtype}")
        if device is not None and s.device not in (device, torch.device("cpu")):
            raise ValueError(f"state_steps[{i}] is on {s.device}; expected {device} or cpu")
        if s.device != state_steps[0].device:
            raise ValueError(f"state_steps[{i}] is on {s.device} but state_steps[0] is on "
                             f"{state_steps[0].device}: keep all step counts on one device")
        if (found_inf is not None and device is not None and device.type != "cpu"
                and s.device != device):
            raise ValueError(f"state_steps[{i}] is on the CPU but found_inf is on {device}: "
                             "with AMP the step counts must live on the params' device so a "
                             "skipped step needs no host synchronization")


def check_sgd(params, grads, momentum_buffers, lr, lr_tensor, weight_decay, momentum,
              dampening, nesterov, maximize, alpha, beta, clamp, mirror, gamma, grad_scale,
              found_inf) -> None:
    bufs = [("momentum_buffers", momentum_buffers)] if momentum != 0 else []
    device = check_tensor_lists(params, grads, bufs)
    if momentum == 0 and len(momentum_buffers) not in (0, len(params)):
        raise ValueError("momentum_buffers must be empty or match params when momentum == 0")
    check_lr(lr, lr_tensor, device)
    check_real("weight_decay", weight_decay, low=0.0, high=None)
    check_real("momentum", momentum, low=0.0, high=None)
    check_real("dampening", dampening, high=None)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov requires momentum > 0 and dampening == 0")
    check_mirror_args(alpha, beta, clamp, mirror, gamma)
    check_amp(grad_scale, found_inf, device)


def check_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr,
               lr_tensor, beta1, beta2, weight_decay, eps, amsgrad, alpha, beta, clamp, mirror,
               gamma, direction, order, grad_scale, found_inf) -> None:
    states = [("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)]
    if amsgrad:
        states.append(("max_exp_avg_sqs", max_exp_avg_sqs))
    elif len(max_exp_avg_sqs) not in (0, len(params)):
        raise ValueError("max_exp_avg_sqs must be empty or match params when amsgrad is False")
    device = check_tensor_lists(params, grads, states)
    check_steps(state_steps, len(params), device, found_inf)
    check_lr(lr, lr_tensor, device)
    check_real("beta1", beta1, low=0.0, high=1.0)
    check_real("beta2", beta2, low=0.0, high=1.0)
    check_real("weight_decay", weight_decay, low=0.0, high=None)
    check_real("eps", eps, low=0.0, high=None)
    check_mirror_args(alpha, beta, clamp, mirror, gamma)
    check_choice("direction", direction, DIRECTIONS)
    check_choice("order", order, ORDERS)
    check_amp(grad_scale, found_inf, device)


def check_mirror_step(params, grads, lr, lr_tensor, alpha, beta, clamp, mirror, gamma,
                      grad_scale, found_inf) -> None:
    device = check_tensor_lists(params, grads)
    check_lr(lr, lr_tensor, device)
    check_mirror_args(alpha, beta, clamp, mirror, gamma)
    check_amp(grad_scale, found_inf, device)


# --- masked Adam family ----------------------------------------------------------------------

def check_masks(masks, params) -> None:
    """``masks``: None, or one bool mask shaped like each param or one bit-packed uint8 mask of
    ceil(numel / 8) bytes, on the param's device, contiguous."""
    if masks is None:
        return
    if not isinstance(masks, (list, tuple)):
        raise TypeError(f"masks must be a list of tensors or None, got {type(masks).__name__}")
    if len(masks) != len(params):
        raise ValueError(f"masks has {len(masks)} tensors but params has {len(params)}")
    summary = _summary(masks, params, MASK)
    if (summary is not None and summary[0] in (torch.bool, torch.uint8)
            and summary[1] is not None and summary[1:] == (_common_device(params), True, True)):
        return
    for i, (m, p) in enumerate(zip(masks, params)):
        if not isinstance(m, Tensor):
            raise TypeError(f"masks[{i}] must be a Tensor, got {type(m).__name__}")
        if m.layout != torch.strided or not m.is_contiguous():
            raise ValueError(f"masks[{i}] must be a dense contiguous tensor")
        if m.device != p.device:
            raise ValueError(f"masks[{i}] is on {m.device} but params[{i}] is on {p.device}")
        if m.dtype == torch.bool:
            if m.shape != p.shape:
                raise ValueError(f"masks[{i}] has shape {tuple(m.shape)}, expected "
                                 f"{tuple(p.shape)} like params[{i}] (or a bit-packed uint8 "
                                 f"mask of {(p.numel() + 7) // 8} bytes)")
        elif m.dtype == torch.uint8:
            if m.dim() != 1 or m.numel() != (p.numel() + 7) // 8:
                raise ValueError(f"masks[{i}] is uint8, so it must be bit-packed: 1-D with "
                                 f"{(p.numel() + 7) // 8} bytes for {p.numel()} elements, got "
                                 f"shape {tuple(m.shape)}")
        else:
            raise TypeError(f"masks[{i}] has dtype {m.dtype}; expected torch.bool (one byte "
                            "per element) or torch.uint8 (bit-packed)")


def check_density(name: str, density) -> float:
    return check_real(name, density, low=0.0, low_open=True, high=1.0, high_open=False)


def check_chunk_size(chunk_size, chunk_offsets: bool = False) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if chunk_offsets and chunk_size > 32768:
        raise ValueError(f"chunk_offsets (int16 offsets) need chunk_size <= 32768, got "
                         f"{chunk_size}")
    return int(chunk_size)


def check_selection(values, density, chunk_size, chunk_offsets) -> None:
    check_density("density", density)
    check_chunk_size(chunk_size, chunk_offsets)
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"values must be a list of tensors, got {type(values).__name__}")
    device = values[0].device if values else None
    for i, v in enumerate(values):
        _check_dense(f"values[{i}]", v, device)
        if v.dtype not in PARAM_DTYPES:
            raise TypeError(f"values[{i}] has dtype {v.dtype}; expected a floating dtype")
        if v.numel() >= 2 ** 31:
            raise ValueError(f"values[{i}] has {v.numel()} elements; int32 indices address at "
                             "most 2**31 - 1")


def _clean_compact_state(params, indices, exp_avgs, exp_avg_sqs, device, density,
                         chunk_size) -> bool:
    """Whether check_compact_adam's per-tensor checks of the indices and compact moments would
    all pass, read from one summary per list."""
    summary = _summary(indices, params, SELECTED, density, chunk_size)
    if (summary is None or summary[0] not in (torch.int32, torch.int16)
            or summary[1:] != (device, True, True)):
        return False
    summary = _summary(exp_avgs, params, SELECTED, density, chunk_size)
    return (summary is not None and summary[0] in (torch.float32, torch.bfloat16)
            and summary[1:] == (device, True, True)
            and _summary(exp_avg_sqs, params, SELECTED, density, chunk_size) == summary)


def _check_compact_state(params, indices, exp_avgs, exp_avg_sqs, device, density,
                         chunk_size) -> None:
    """The indices and compact moments, tensor by tensor."""
    from .reference.masked import num_selected
    for i, p in enumerate(params):
        want = num_selected(p.numel(), density, chunk_size)
        idx = indices[i]
        _check_dense(f"indices[{i}]", idx, device)
        if idx.dtype not in (torch.int32, torch.int16) or idx.dim() != 1 or idx.numel() != want:
            raise ValueError(f"indices[{i}] must be a 1-D int32 (or int16 chunk-offset) tensor "
                             f"of {want} entries (density {density}, chunk_size {chunk_size}, "
                             f"{p.numel()} elements), got {idx.dtype} of shape "
                             f"{tuple(idx.shape)}")
        if idx.dtype != indices[0].dtype:
            raise TypeError("indices mix int32 and int16 tensors")
        for name, lst in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
            s = lst[i]
            _check_dense(f"{name}[{i}]", s, device)
            if s.dim() != 1 or s.numel() != want:
                raise ValueError(f"{name}[{i}] must be 1-D with {want} entries (one per selected "
                                 f"element), got shape {tuple(s.shape)}")
            if s.dtype not in (torch.float32, torch.bfloat16) or s.dtype != lst[0].dtype:
                raise TypeError(f"{name}[{i}] has dtype {s.dtype}; compact moments are float32 "
                                "or bfloat16, one dtype per call")


def check_compact_adam(params, grads, indices, exp_avgs, exp_avg_sqs, state_steps, density,
                       chunk_size, lr, lr_tensor, beta1, beta2, eps, weight_decay, grad_scale,
                       found_inf) -> None:
    device = check_tensor_lists(params, grads)
    check_density("density", density)
    n = len(params)
    for name, lst in (("indices", indices), ("exp_avgs", exp_avgs),
                      ("exp_avg_sqs", exp_avg_sqs)):
        if not isinstance(lst, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, got {type(lst).__name__}")
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} tensors but params has {n}")
    offsets = bool(indices) and isinstance(indices[0], Tensor) and indices[0].dtype == torch.int16
    check_chunk_size(chunk_size, offsets)
    if not _clean_compact_state(params, indices, exp_avgs, exp_avg_sqs, device, density,
                                chunk_size):
        _check_compact_state(params, indices, exp_avgs, exp_avg_sqs, device, density,
                             chunk_size)
    if exp_avgs and exp_avgs[0].dtype != exp_avg_sqs[0].dtype:
        raise TypeError("exp_avgs and exp_avg_sqs must share a dtype")
    check_steps(state_steps, n, device, found_inf)
    check_lr(lr, lr_tensor, device)
    check_real("beta1", beta1, low=0.0, high=1.0)
    check_real("beta2", beta2, low=0.0, high=1.0)
    check_real("eps", eps, low=0.0, high=None)
    check_real("weight_decay", weight_decay, low=0.0, high=None)
    check_amp(grad_scale, found_inf, device)


# --- SparseOpt BN-skew correction --------------------------------------------------------------

def _rows(t: Tensor) -> int:
    return t.shape[0] if t.dim() > 0 else 1


def _check_list(name: str, lst, n: Optional[int] = None) -> None:
    if not isinstance(lst, (list, tuple)):
        raise TypeError(f"{name} must be a list of tensors, got {type(lst).__name__}")
    if n is not None and len(lst) != n:
        raise ValueError(f"{name} has {len(lst)} tensors, expected {n}")


def _check_row_vector(name: str, c, rows: int, device, like: str) -> None:
    _check_dense(name, c, device)
    if c.dtype != torch.float32 or c.dim() != 1 or c.numel() != rows:
        raise ValueError(f"{name} must be a 1-D float32 tensor with one entry per row of {like} "
                         f"({rows}), got {c.dtype} of shape {tuple(c.shape)}")


def check_row_scales(row_scales, params) -> None:
    """``row_scales``: None, or one float32 vector per param with ``param.shape[0]`` entries."""
    if row_scales is None:
        return
    _check_list("row_scales", row_scales, len(params))
    summary = _summary(row_scales, params, ROWS)
    if (summary is not None and summary[0] == torch.float32
            and summary[1] is not None and summary[1:] == (_common_device(params), True, True)):
        return
    for i, (c, p) in enumerate(zip(row_scales, params)):
        if p.dim() == 0:
            raise ValueError(f"params[{i}] is 0-d and has no rows to scale; pass it without "
                             "row_scales")
        _check_row_vector(f"row_scales[{i}]", c, _rows(p), p.device, f"params[{i}]")


def _check_bool_mask(name: str, m, like: Tensor, like_name: str) -> None:
    _check_dense(name, m, like.device)
    if m.dtype != torch.bool or m.shape != like.shape:
        raise ValueError(f"{name} must be a bool tensor of shape {tuple(like.shape)} like "
                         f"{like_name}, got {m.dtype} of shape {tuple(m.shape)}")


def check_row_coefficients(masks, coefficients) -> None:
    _check_list("masks", masks)
    _check_list("coefficients", coefficients, len(masks))
    device = masks[0].device if masks else None
    for i, (m, c) in enumerate(zip(masks, coefficients)):
        _check_dense(f"masks[{i}]", m, device)
        if m.dtype != torch.bool or m.dim() == 0:
            raise ValueError(f"masks[{i}] must be a bool tensor with at least one dimension "
                             f"(rows = shape[0]), got {m.dtype} of shape {tuple(m.shape)}")
        _check_row_vector(f"coefficients[{i}]", c, _rows(m), device, f"masks[{i}]")


def check_row_scale(tensors, scales, masks) -> None:
    _check_list("tensors", tensors)
    _check_list("scales", scales, len(tensors))
    if masks is not None:
        _check_list("masks", masks, len(tensors))
    device = tensors[0].device if tensors else None
    for i, (x, c) in enumerate(zip(tensors, scales)):
        _check_dense(f"tensors[{i}]", x, device)
        if x.dtype not in PARAM_DTYPES:
            raise TypeError(f"tensors[{i}] has dtype {x.dtype}; expected one of float32, "
                            "float64, bfloat16, float16")
        if x.dtype != tensors[0].dtype:
            raise TypeError(f"tensors[{i}] has dtype {x.dtype} but tensors[0] has "
                            f"{tensors[0].dtype}: call the op once per dtype")
        if x.dim() == 0:
            raise ValueError(f"tensors[{i}] is 0-d; row scaling needs rows (shape[0])")
        _check_row_vector(f"scales[{i}]", c, _rows(x), device, f"tensors[{i}]")
        if masks is not None:
            _check_bool_mask(f"masks[{i}]", masks[i], x, f"tensors[{i}]")


# --- block-sparse matmuls ------------------------------------------------------------------------

BLOCK_SIZES = (16, 32, 64, 128)


def check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                         f"got {block_size}")
    return block_size


def _check_matrix(name: str, t, device, dtype=None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a strided (dense) tensor, got {t.layout}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows × features), got shape {tuple(t.shape)}")
    if t.dtype not in PARAM_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; expected float32, float64, bfloat16 or "
                        "float16")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype}, expected {dtype} like the block values")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} like the block values")


def _check_indices(name: str, t, device, numel: Optional[int] = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype != torch.int32 or t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D int32 tensor, got {t.dtype} of shape "
                         f"{tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} like the block values")
    if numel is not None and t.numel() != numel:
        raise ValueError(f"{name} has {t.numel()} entries, expected {numel}")


def _check_values(values) -> int:
    if not isinstance(values, Tensor):
        raise TypeError(f"values must be a tensor, got {type(values).__name__}")
    if values.dtype not in PARAM_DTYPES:
        raise TypeError(f"values has dtype {values.dtype}; expected float32, float64, bfloat16 "
                        "or float16")
    if values.dim() != 3 or values.shape[1] != values.shape[2]:
        raise ValueError("values must be (nnz_blocks × block × block), got shape "
                         f"{tuple(values.shape)}")
    return check_block_size(int(values.shape[-1]))  # a SymInt under torch.compile


def _check_features(name: str, features: int, block: int, what: str) -> None:
    if features % block:
        raise ValueError(f"{name} has {features} {what}, not a multiple of the block size "
                         f"{block}")


def check_dds(x, values, row_offsets, col_indices) -> None:
    b = _check_values(values)
    _check_matrix("x", x, values.device, values.dtype)
    _check_features("x", x.shape[1], b, "columns (in_features)")
    _check_indices("row_offsets", row_offsets, values.device)
    if row_offsets.numel() < 2:
        raise ValueError("row_offsets must have (block-rows + 1) >= 2 entries")
    _check_indices("col_indices", col_indices, values.device, values.shape[0])


def check_dsd(dy, values, col_offsets, t_row_indices, t_block_ids) -> None:
    b = _check_values(values)
    _check_matrix("dy", dy, values.device, values.dtype)
    _check_features("dy", dy.shape[1], b, "columns (out_features)")
    _check_indices("col_offsets", col_offsets, values.device)
    if col_offsets.numel() < 2:
        raise ValueError("col_offsets must have (block-columns + 1) >= 2 entries")
    _check_indices("t_row_indices", t_row_indices, values.device, values.shape[0])
    _check_indices("t_block_ids", t_block_ids, values.device, values.shape[0])


def check_sdd(dy, x, row_indices, col_indices, block_size) -> None:
    b = check_block_size(block_size)
    _check_matrix("dy", dy, None)
    _check_matrix("x", x, dy.device, dy.dtype)
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"dy has {dy.shape[0]} rows but x has {x.shape[0]}")
    _check_features("dy", dy.shape[1], b, "columns (out_features)")
    _check_features("x", x.shape[1], b, "columns (in_features)")
    _check_indices("row_indices", row_indices, dy.device)
    _check_indices("col_indices", col_indices, dy.device, row_indices.numel())
