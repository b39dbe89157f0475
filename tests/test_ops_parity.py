"""Every CPU backend of every op against the float64 reference (tiers 1 and 2)."""
import copy
import itertools

import pytest
import torch

from sparseopt_kernels.reference import mirror as ref
from sparseopt_kernels.testing import assert_close, assert_within_reference_error

from conftest import cpu_backends

SHAPES = [(33, 7), (5,), (1,), (130,)]
BACKENDS = cpu_backends()

MIRRORS = [
    dict(alpha=0.0, beta=0.0, clamp=None, mirror="exp"),  # plain base optimizer
    dict(alpha=50.0, beta=1e-2, clamp=5.0, mirror="exp"),
    dict(alpha=20.0, beta=0.5, clamp=None, mirror="exp"),  # no clamp
    dict(alpha=80.0, beta=1e-2, clamp=0.02, mirror="exp"),  # the clamp is active
    dict(alpha=30.0, beta=1e-2, clamp=0.05, mirror="hypentropy", gamma=0.3),
]


def make_tensors(dtype, n_state, shapes=SHAPES, state_dtype=None):
    params = [torch.randn(s, dtype=torch.float64).to(dtype) for s in shapes]
    params[0].view(-1)[::3] = 0.0  # exact zeros
    grads = [torch.randn(s, dtype=torch.float64).to(dtype) for s in shapes]
    state_dtype = state_dtype or (torch.float32 if dtype in (torch.bfloat16, torch.float16)
                                  else dtype)
    states = [[torch.rand(s, dtype=torch.float64).to(state_dtype) for s in shapes]
              for _ in range(n_state)]
    return params, grads, states


def as64(tensors):
    return [t.detach().to(torch.float64).clone() for t in tensors]


ADAM_CONFIGS = [
    dict(),
    dict(amsgrad=True, weight_decay=0.1),
    dict(decoupled_weight_decay=True, weight_decay=0.1, maximize=True),
    dict(decoupled_weight_decay=True, weight_decay=0.01, direction="adam"),
    dict(decoupled_weight_decay=True, weight_decay=0.01, direction="adam", order="before"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg,mirror", list(itertools.product(ADAM_CONFIGS, MIRRORS)))
def test_ham_adam_matches_float64_reference(backend, cfg, mirror, use_backend):
    use_backend(backend)
    params, grads, (m, v, vmax) = make_tensors(torch.float32, 3)
    steps = [torch.tensor(float(k)) for k in range(len(params))]  # per-tensor step counts
    p64, m64, v64, vmax64 = as64(params), as64(m), as64(v), as64(vmax)
    steps64 = [s.clone().double() for s in steps]
    amsgrad = cfg.get("amsgrad", False)
    for it in range(4):
        grads = [torch.randn_like(p) for p in params]
        lr = 1e-2 * (it + 1)
        kw = dict(lr=lr, beta1=0.8, beta2=0.95, eps=1e-6, **cfg, **mirror)
        torch.ops.sparseopt.ham_adam_(params, grads, m, v, vmax if amsgrad else [], steps, **kw)
        ref.ham_adam_(p64, as64(grads), m64, v64, vmax64 if amsgrad else [], steps64, **kw)
    for name, ours, theirs in (("param", params, p64), ("exp_avg", m, m64),
                               ("exp_avg_sq", v, v64)):
        for i, (a, e) in enumerate(zip(ours, theirs)):
            assert_close(a, e, rtol=5e-5, atol=5e-6, msg=f"{backend} {name}[{i}]")
    assert [s.item() for s in steps] == [s.item() for s in steps64]


SGD_CONFIGS = [
    dict(),
    dict(momentum=0.9, dampening=0.1, weight_decay=0.05),
    dict(momentum=0.9, nesterov=True, maximize=True),
    dict(momentum=0.5, is_first_step=True, weight_decay=0.01),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg,mirror", list(itertools.product(SGD_CONFIGS, MIRRORS)))
def test_ham_sgd_matches_float64_reference(backend, cfg, mirror, use_backend):
    use_backend(backend)
    params, grads, (bufs,) = make_tensors(torch.float32, 1)
    p64, b64 = as64(params), as64(bufs)
    momentum = cfg.get("momentum", 0.0)
    for it in range(4):
        grads = [torch.randn_like(p) for p in params]
        kw = dict(lr=0.05, **mirror, **cfg)
        kw["is_first_step"] = cfg.get("is_first_step", False) and it == 0
        torch.ops.sparseopt.ham_sgd_(params, grads, bufs if momentum else [], **kw)
        ref.ham_sgd_(p64, as64(grads), b64 if momentum else [], **kw)
    for i, (a, e) in enumerate(zip(params, p64)):
        assert_close(a, e, rtol=5e-5, atol=5e-6, msg=f"{backend} param[{i}]")
    if momentum:
        for i, (a, e) in enumerate(zip(bufs, b64)):
            assert_close(a, e, rtol=5e-5, atol=5e-6, msg=f"{backend} momentum_buffer[{i}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mirror", MIRRORS[1:])
def test_mirror_step_matches_float64_reference(backend, mirror, use_backend):
    use_backend(backend)
    params, grads, _ = make_tensors(torch.float32, 0)
    p64 = as64(params)
    kw = dict(lr=0.1, maximize=True, **mirror)
    torch.ops.sparseopt.mirror_step_(params, grads, **kw)
    ref.mirror_step_(p64, as64(grads), **kw)
    for i, (a, e) in enumerate(zip(params, p64)):
        assert_close(a, e, rtol=2e-5, atol=2e-6, msg=f"{backend} param[{i}]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_lr_tensor_grad_scale_and_float64(backend, use_backend):
    """lr as a tensor and grad_scale behave like their float/unscaled equivalents."""
    use_backend(backend)
    params, grads, (m, v) = make_tensors(torch.float32, 2)
    p2, m2, v2 = [copy.deepcopy(x) for x in (params, m, v)]
    steps, steps2 = [torch.tensor(0.0) for _ in params], [torch.tensor(0.0) for _ in params]
    scale = torch.tensor(1024.0)
    torch.ops.sparseopt.ham_adam_(params, [g * 1024 for g in grads], m, v, [], steps, lr=0.0,
                                  lr_tensor=torch.tensor(3e-3), alpha=40.0, beta=1e-2,
                                  clamp=5.0, grad_scale=scale)
    torch.ops.sparseopt.ham_adam_(p2, grads, m2, v2, [], steps2, lr=3e-3, alpha=40.0, beta=1e-2,
                                  clamp=5.0)
    for a, e in zip(params + m + v, p2 + m2 + v2):
        assert_close(a, e, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_float64_params(backend, use_backend):
    from sparseopt_kernels import backends
    if backends.unavailable(backend, "cpu", torch.float64):
        pytest.skip(backends.unavailable(backend, "cpu", torch.float64))
    use_backend(backend)
    params, grads, (m, v) = make_tensors(torch.float64, 2)
    p64, m64, v64 = as64(params), as64(m), as64(v)
    steps, steps64 = [torch.tensor(0.0) for _ in params], [torch.tensor(0.0) for _ in params]
    kw = dict(lr=1e-2, alpha=100.0, beta=1e-2, clamp=None, decoupled_weight_decay=True,
              weight_decay=0.1)
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, [], steps, **kw)
    ref.ham_adam_(p64, as64(grads), m64, v64, [], steps64, **kw)
    for a, e in zip(params, p64):
        assert_close(a, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state", ["float32", "param"])
def test_low_precision_params(backend, dtype, state, use_backend):
    """bf16/fp16 params (float32 or same-dtype state): error ≤ 2× torch's same-dtype error."""
    use_backend(backend)
    state_dtype = torch.float32 if state == "float32" else dtype
    params, grads, (m, v) = make_tensors(dtype, 2, shapes=[(257,), (64, 3)],
                                         state_dtype=state_dtype)
    kw = dict(lr=1e-2, alpha=50.0, beta=1e-2, clamp=5.0, decoupled_weight_decay=True,
              weight_decay=0.1)
    exact_p, exact_m = as64(params), as64(m)
    same_p, same_m = [t.clone() for t in params], [t.clone() for t in m]
    same_v = [t.clone() for t in v]
    ref.ham_adam_(exact_p, as64(grads), exact_m, as64(v), [],
                  [torch.tensor(0.0) for _ in params], **kw)
    ref.ham_adam_(same_p, grads, same_m, same_v, [], [torch.tensor(0.0) for _ in params], **kw)
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, [], [torch.tensor(0.0) for _ in params],
                                  **kw)
    for i in range(len(params)):
        assert params[i].dtype == dtype and m[i].dtype == state_dtype
        assert_within_reference_error(params[i], same_p[i], exact_p[i], msg=f"param[{i}]")
        assert_within_reference_error(m[i], same_m[i], exact_m[i], floor=1e-7,
                                      msg=f"exp_avg[{i}]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_found_inf_leaves_everything_bit_identical(backend, use_backend):
    use_backend(backend)
    params, grads, (m, v, vmax) = make_tensors(torch.float32, 3)
    steps = [torch.tensor(3.0) for _ in params]
    before = copy.deepcopy((params, m, v, vmax, steps))
    grads[0].view(-1)[0] = float("inf")
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, vmax, steps, lr=1e-2, amsgrad=True,
                                  alpha=10.0, beta=0.1, grad_scale=torch.tensor(8.0),
                                  found_inf=torch.tensor(1.0))
    for a, b in zip(params + m + v + vmax + steps, sum(map(list, before), [])):
        assert torch.equal(a, b)
    bufs = copy.deepcopy(m)
    torch.ops.sparseopt.ham_sgd_(params, grads, bufs, lr=1e-2, momentum=0.9, alpha=10.0,
                                 found_inf=torch.tensor(1.0))
    torch.ops.sparseopt.mirror_step_(params, grads, lr=1e-2, alpha=10.0,
                                     found_inf=torch.tensor(1.0))
    for a, b in zip(params + bufs, before[0] + before[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_zeros_stay_zero(backend, use_backend):
    """Pruned weights (θ = 0, g = 0) stay exactly zero through every fused step and the
    standalone mirror step keeps any exact zero."""
    use_backend(backend)
    params, grads, (m, v, bufs) = make_tensors(torch.float32, 3)
    mask = torch.rand(params[0].shape) < 0.5
    params[0][mask] = 0.0
    for t in (grads[0], m[0], v[0], bufs[0]):
        t[mask] = 0.0
    steps = [torch.tensor(0.0) for _ in params]
    kw = dict(alpha=200.0, beta=1e-3, clamp=5.0)
    for _ in range(3):
        torch.ops.sparseopt.ham_adam_(params, grads, m, v, [], steps, lr=1e-2,
                                      decoupled_weight_decay=True, weight_decay=0.1, **kw)
        torch.ops.sparseopt.ham_sgd_(params, grads, bufs, lr=0.1, momentum=0.9, **kw)
    assert torch.equal(params[0][mask], torch.zeros(int(mask.sum())))
    zeros = [p.clone() for p in params]
    for z in zeros:
        z.view(-1)[::2] = 0.0
    torch.ops.sparseopt.mirror_step_(zeros, [torch.randn_like(z) for z in zeros], lr=0.5, **kw)
    for z in zeros:
        assert torch.equal(z.view(-1)[::2], torch.zeros_like(z.view(-1)[::2]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_gradients_propagate(backend, use_backend):
    """Outside AMP a NaN gradient poisons the step exactly as in torch.optim (no masking)."""
    use_backend(backend)
    params, grads, (m, v) = make_tensors(torch.float32, 2)
    grads[0].view(-1)[4] = float("nan")
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, [], [torch.tensor(0.0) for _ in params],
                                  lr=1e-2, alpha=10.0, beta=1e-3)
    assert torch.isnan(params[0].view(-1)[4]) and torch.isnan(m[0].view(-1)[4])
    assert torch.isfinite(params[1]).all()


def test_kernel_defaults_equal_schema_defaults():
    """The dispatcher drops keyword arguments equal to the schema default, so every kernel's
    Python defaults must be the schema's (else a default would silently change meaning)."""
    import importlib
    import inspect

    from sparseopt_kernels import _ops, backends
    for op in _ops.ops():
        schema = getattr(torch.ops.sparseopt, op).default._schema
        defaults = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
        functions = [getattr(_ops, f"validate_{op}")]
        for backend, module in backends.FAMILIES[_ops.FAMILY[op]].items():
            try:
                functions.append(getattr(importlib.import_module(f"sparseopt_kernels.{module}"),
                                         op))
            except ImportError:  # e.g. triton not installed
                continue
        for fn in functions:
            sig = inspect.signature(fn)
            for name, value in defaults.items():
                assert sig.parameters[name].default == value, (fn.__module__, op, name)
