"""Op schemas of the ``sparseopt`` namespace, their fake kernels and default kernels.

Every op is defined once here. The pure-PyTorch reference is registered as the default kernel
(CompositeExplicitAutograd, so it serves any device); ``backends/`` override it on CPU and CUDA.
The fake kernels validate arguments so that ``torch.compile`` reports bad input at trace time.

The optimizer ops are in-place and multi-tensor, modelled on aten's ``_fused_adam_``: one call
per parameter group, dtype and device; ``lr_tensor``, ``grad_scale`` and ``found_inf`` are
one-element device tensors read by the kernel so a step needs no host synchronization.
"""
from __future__ import annotations

import torch

from . import _checks
from .reference import mirror as _ref

_lib = torch.library.Library("sparseopt", "DEF")  # noqa: TOR901 - the namespace is ours

_MIRROR_ARGS = ('float alpha=0., float beta=0., float? clamp=None, str mirror="exp", '
                'float gamma=1.')
_AMP_ARGS = "Tensor? grad_scale=None, Tensor? found_inf=None"
_MASK_ARG = "Tensor[]? masks=None"
_ROW_SCALE_ARG = "Tensor[]? row_scales=None"

SCHEMAS: dict = {}     # op name → schema string
VALIDATORS: dict = {}  # op name → argument checks (run by every kernel first)
FAMILY: dict = {}      # op name → kernel family; backends/ maps a family to its modules

_MIRROR_SCHEMAS = {
    "ham_sgd_": (
        "ham_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, *, "
        "float lr, Tensor? lr_tensor=None, float weight_decay=0., float momentum=0., "
        "float dampening=0., bool nesterov=False, bool maximize=False, "
        f"bool is_first_step=False, {_MIRROR_ARGS}, {_AMP_ARGS}, {_MASK_ARG}, "
        f"{_ROW_SCALE_ARG}) -> ()"),
    "ham_adam_": (
        "ham_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, *, "
        "float lr, Tensor? lr_tensor=None, float beta1=0.9, float beta2=0.999, "
        "float weight_decay=0., float eps=1e-8, bool amsgrad=False, bool maximize=False, "
        f"bool decoupled_weight_decay=False, {_MIRROR_ARGS}, str direction=\"grad\", "
        f"str order=\"after\", {_AMP_ARGS}, {_MASK_ARG}, {_ROW_SCALE_ARG}) -> ()"),
    "mirror_step_": (
        "mirror_step_(Tensor(a!)[] params, Tensor[] grads, *, float lr, "
        f"Tensor? lr_tensor=None, {_MIRROR_ARGS}, bool maximize=False, {_AMP_ARGS}, "
        f"{_MASK_ARG}) -> ()"),
}



# --- validation shared by every kernel of an op (called first, before anything is modified) ---

def validate_ham_sgd_(params, grads, momentum_buffers, *, lr, lr_tensor=None, weight_decay=0.0,
                      momentum=0.0, dampening=0.0, nesterov=False, maximize=False,
                      is_first_step=False, alpha=0.0, beta=0.0, clamp=None, mirror="exp",
                      gamma=1.0, grad_scale=None, found_inf=None, masks=None,
                      row_scales=None):
    _checks.check_sgd(params, grads, momentum_buffers, lr, lr_tensor, weight_decay, momentum,
                      dampening, nesterov, maximize, alpha, beta, clamp, mirror, gamma,
                      grad_scale, found_inf)
    _checks.check_masks(masks, params)
    _checks.check_row_scales(row_scales, params)


def validate_ham_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *,
                       lr, lr_tensor=None, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                       amsgrad=False, maximize=False, decoupled_weight_decay=False, alpha=0.0,
                       beta=0.0, clamp=None, mirror="exp", gamma=1.0, direction="grad",
                       order="after", grad_scale=None, found_inf=None, masks=None,
                       row_scales=None):
    _checks.check_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr,
                       lr_tensor, beta1, beta2, weight_decay, eps, amsgrad, alpha, beta, clamp,
                       mirror, gamma, direction, order, grad_scale, found_inf)
    _checks.check_masks(masks, params)
    _checks.check_row_scales(row_scales, params)


def validate_mirror_step_(params, grads, *, lr, lr_tensor=None, alpha=0.0, beta=0.0, clamp=None,
                          mirror="exp", gamma=1.0, maximize=False, grad_scale=None,
                          found_inf=None, masks=None):
    _checks.check_mirror_step(params, grads, lr, lr_tensor, alpha, beta, clamp, mirror, gamma,
                              grad_scale, found_inf)
    _checks.check_masks(masks, params)


def validated(name, kernel):
    """``kernel`` preceded by the op's argument checks."""
    check = VALIDATORS[name]

    def run(*args, **kwargs):
        check(*args, **kwargs)
        with torch.no_grad():  # in-place updates of leaf params, as inside torch.optim
            return kernel(*args, **kwargs)

    run.__name__ = f"{name}{getattr(kernel, '__name__', 'kernel')}"
    return run


def define(name: str, schema: str, family: str, reference, validator, fake=None) -> None:
    """Define ``sparseopt::name``: schema, argument checks, the reference as the default kernel
    and a fake kernel (``fake`` for ops that return tensors; in-place ops return nothing)."""
    SCHEMAS[name] = schema
    VALIDATORS[name] = validator
    FAMILY[name] = family
    _lib.define(schema)
    _lib.impl(name, validated(name, reference), "CompositeExplicitAutograd")
    torch.library.register_fake(f"sparseopt::{name}", lib=_lib)(
        validated(name, fake or (lambda *args, **kwargs: None)))


_MIRROR_VALIDATORS = {"ham_sgd_": validate_ham_sgd_, "ham_adam_": validate_ham_adam_,
                      "mirror_step_": validate_mirror_step_}
for _name, _schema in _MIRROR_SCHEMAS.items():
    define(_name, _schema, "mirror", getattr(_ref, _name), _MIRROR_VALIDATORS[_name])


# --- masked Adam family (NanoAdam): chunked bottom-k selection and the compact step ---------

from .reference import masked as _ref_masked  # noqa: E402


def validate_chunk_select(values, density, chunk_size, chunk_offsets=False):
    _checks.check_selection(values, density, chunk_size, chunk_offsets)


def fake_chunk_select(values, density, chunk_size, chunk_offsets=False):
    dtype = torch.int16 if chunk_offsets else torch.int32
    return [v.new_empty(_ref_masked.num_selected(v.numel(), density, chunk_size), dtype=dtype)
            for v in values]


def validate_compact_adam_(params, grads, indices, exp_avgs, exp_avg_sqs, state_steps, *,
                           density, chunk_size, lr, lr_tensor=None, beta1=0.9, beta2=0.999,
                           eps=1e-8, weight_decay=0.0, maximize=False, grad_scale=None,
                           found_inf=None):
    _checks.check_compact_adam(params, grads, indices, exp_avgs, exp_avg_sqs, state_steps,
                               density, chunk_size, lr, lr_tensor, beta1, beta2, eps,
                               weight_decay, grad_scale, found_inf)


define("chunk_select",
       "chunk_select(Tensor[] values, float density, int chunk_size, bool chunk_offsets=False)"
       " -> Tensor[]",
       "masked", _ref_masked.chunk_select, validate_chunk_select, fake_chunk_select)
define("compact_adam_",
       "compact_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor[] indices, "
       "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] state_steps, *, "
       "float density, int chunk_size, float lr, Tensor? lr_tensor=None, float beta1=0.9, "
       f"float beta2=0.999, float eps=1e-8, float weight_decay=0., bool maximize=False, "
       f"{_AMP_ARGS}) -> ()",
       "masked", _ref_masked.compact_adam_, validate_compact_adam_)


# --- SparseOpt BN-skew correction: per-row coefficients and the standalone row scale ---------

from .reference import skew as _ref_skew  # noqa: E402


def validate_row_coefficients_(masks, coefficients):
    _checks.check_row_coefficients(masks, coefficients)


def validate_row_scale_(tensors, scales, *, masks=None):
    _checks.check_row_scale(tensors, scales, masks)


define("row_coefficients_", "row_coefficients_(Tensor[] masks, Tensor(a!)[] coefficients) -> ()",
       "skew", _ref_skew.row_coefficients_, validate_row_coefficients_)
define("row_scale_",
       "row_scale_(Tensor(a!)[] tensors, Tensor[] scales, *, Tensor[]? masks=None) -> ()",
       "skew", _ref_skew.row_scale_, validate_row_scale_)


# --- block-sparse matmuls of a linear layer: y = x Wᵀ (dds), dx = dy W (dsd), dW = dyᵀ x (sdd) --

from .reference import block_sparse as _ref_bs  # noqa: E402


def validate_dds(x, values, row_offsets, col_indices, *, allow_tf32=False):
    _checks.check_dds(x, values, row_offsets, col_indices)


def validate_dsd(dy, values, col_offsets, t_row_indices, t_block_ids, *, allow_tf32=False):
    _checks.check_dsd(dy, values, col_offsets, t_row_indices, t_block_ids)


def validate_sdd(dy, x, row_indices, col_indices, block_size, *, allow_tf32=False):
    _checks.check_sdd(dy, x, row_indices, col_indices, block_size)


def fake_dds(x, values, row_offsets, col_indices, *, allow_tf32=False):
    return x.new_empty(x.shape[0], (row_offsets.shape[0] - 1) * values.shape[-1])


def fake_dsd(dy, values, col_offsets, t_row_indices, t_block_ids, *, allow_tf32=False):
    return dy.new_empty(dy.shape[0], (col_offsets.shape[0] - 1) * values.shape[-1])


def fake_sdd(dy, x, row_indices, col_indices, block_size, *, allow_tf32=False):
    return dy.new_empty(row_indices.shape[0], block_size, block_size)


define("dds", "dds(Tensor x, Tensor values, Tensor row_offsets, Tensor col_indices, *, "
       "bool allow_tf32=False) -> Tensor", "block_sparse", _ref_bs.dds, validate_dds, fake_dds)
define("dsd", "dsd(Tensor dy, Tensor values, Tensor col_offsets, Tensor t_row_indices, "
       "Tensor t_block_ids, *, bool allow_tf32=False) -> Tensor", "block_sparse", _ref_bs.dsd,
       validate_dsd, fake_dsd)
define("sdd", "sdd(Tensor dy, Tensor x, Tensor row_indices, Tensor col_indices, "
       "int block_size, *, bool allow_tf32=False) -> Tensor", "block_sparse", _ref_bs.sdd,
       validate_sdd, fake_sdd)


def _not_differentiable(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"sparseopt::{name} has no derivative of its own (its backward needs "
                           "the other two products and the layout's transposed index); use "
                           "sparseopt_kernels.sparse.BlockSparseLinear or "
                           "BlockSparseLinearFunction to differentiate through it")
    return backward


for _name in ("dds", "dsd", "sdd"):  # a clear error instead of autograd's silent zero gradient
    torch.library.register_autograd(f"sparseopt::{_name}", _not_differentiable(_name), lib=_lib)


_SCALAR_KINDS: dict = {}


def check_scalar_types(name: str, kwargs: dict) -> None:
    """Clear TypeErrors for keyword scalars of the wrong type (the dispatcher's own message
    would be a RuntimeError about a C++ cast). Cheap: no tensor is looked at."""
    kinds = _SCALAR_KINDS.get(name)
    if kinds is None:
        schema = getattr(torch.ops.sparseopt, name).default._schema
        kinds = _SCALAR_KINDS[name] = {}
        for a in schema.arguments:
            t = a.type
            if isinstance(t, torch._C.OptionalType):
                t = t.getElementType()
            kinds[a.name] = str(t)
    for key, value in kwargs.items():
        kind = kinds.get(key)
        if value is None or kind not in ("float", "int", "bool", "str"):
            continue
        if kind == "float":
            _checks.check_real(key, value, high=None)
        elif kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{key} must be an int, got {type(value).__name__} ({value!r})")
        elif kind == "bool" and not isinstance(value, bool):
            raise TypeError(f"{key} must be a bool, got {type(value).__name__} ({value!r})")
        elif kind == "str" and not isinstance(value, str):
            raise TypeError(f"{key} must be a str, got {type(value).__name__} ({value!r})")


def ops():
    """Every op name, once all families are imported."""
    return tuple(SCHEMAS)
