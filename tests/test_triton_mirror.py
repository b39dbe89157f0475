"""Parity of the Triton mirror kernels with the float64 PyTorch reference.

Runs on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1, set before triton is
imported). The interpreter is slow (~0.5 ms per program instance), so shapes stay small.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import itertools  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from sparseopt_kernels.reference import mirror as ref  # noqa: E402
from sparseopt_kernels.triton import mirror_step as tri  # noqa: E402

SIZES = (1, 7, 1003, 2500)  # 2500 spans three 1024-element programs
N_STEPS = 5


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _randn(n, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)


def _params(dtype=torch.float32, seed=0):
    ps = [_randn(n, seed + i, dtype) for i, n in enumerate(SIZES)]
    for p in ps:  # exact zeros (sparse weights) and a spread of magnitudes
        p[::5] = 0
        p[1::7] *= 1e-3
    return ps


def _grads(step, dtype=torch.float32, scale=1.0):
    gs = [_randn(n, 1000 * (step + 1) + i) * scale for i, n in enumerate(SIZES)]
    for g in gs:
        g[::10] = 0
    return [g.to(dtype) for g in gs]


def _clone(ts, dtype=None):
    return [t.clone() if dtype is None else t.to(dtype) for t in ts]


def _assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"tensor {i}: {m}")


def _max_err(actual, expected):
    return max((a.double() - e.double()).abs().max().item() for a, e in zip(actual, expected))


class _LaunchCounter:
    """Counts launches of a kernel by wrapping its ``kernel[grid]`` indexing."""

    def __init__(self, monkeypatch, name):
        self.count = 0
        kernel = getattr(tri, name)
        counter = self

        class Wrapped:
            def __getitem__(self, grid):
                counter.count += 1
                return kernel[grid]

        monkeypatch.setattr(tri, name, Wrapped())


# ---------------------------------------------------------------------------------------------
# math helpers against torch (float64)
# ---------------------------------------------------------------------------------------------

@triton.jit
def _unary_kernel(x_ptr, out_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    if FN == 0:
        y = tri._asinh(x)
    elif FN == 1:
        y = tri._sinh(x)
    else:
        y = tri._one_minus_pow(x, -0.0010005003335835335)  # ln 0.999
    tl.store(out_ptr + offs, y, mask=mask)


def _unary(x, fn):
    out = torch.empty_like(x)
    _unary_kernel[(1,)](x, out, x.numel(), FN=fn, BLOCK=triton.next_power_of_2(x.numel()))
    return out


def _ulp_err(actual, exact):
    """Error in units of float32 ulps of the exact value."""
    f32 = torch.finfo(torch.float32)
    spacing = f32.eps * exact.abs().clamp(min=f32.tiny)
    return ((actual.double() - exact) / spacing).abs()


def test_asinh_accuracy():
    mags = torch.cat([torch.logspace(-30, 30, 601, dtype=torch.float64),
                      torch.linspace(0.4, 0.6, 101, dtype=torch.float64),
                      torch.linspace(4000, 4200, 11, dtype=torch.float64)])
    x = torch.cat([mags, -mags, torch.zeros(1, dtype=torch.float64)]).float()
    got = _unary(x, 0)
    exact = torch.asinh(x.double())
    assert got[-1] == 0
    assert _ulp_err(got, exact).max() <= 4, _ulp_err(got, exact).max()
    # at least as good as torch's own float32 asinh (within an ulp)
    assert _ulp_err(got, exact).max() <= _ulp_err(torch.asinh(x), exact).max() + 1


def test_sinh_accuracy():
    mags = torch.cat([torch.logspace(-30, 1.9, 601, dtype=torch.float64),
                      torch.linspace(0.9, 1.1, 101, dtype=torch.float64),
                      torch.linspace(87, 89.4, 25, dtype=torch.float64)])
    y = torch.cat([mags, -mags, torch.zeros(1, dtype=torch.float64)]).float()
    got = _unary(y, 1)
    exact = torch.sinh(y.double())
    assert got[-1] == 0
    assert _ulp_err(got, exact).max() <= 4, _ulp_err(got, exact).max()
    big = torch.tensor([89.5, -89.5, float("inf"), float("nan")])
    out = _unary(big, 1)
    assert out[0] == float("inf") and out[1] == -float("inf") and out[2] == float("inf")
    assert torch.isnan(out[3])


def test_bias_correction_accuracy():
    t = torch.tensor([1, 2, 3, 10, 100, 499, 500, 501, 1000, 10_000, 1e6], dtype=torch.float32)
    got = _unary(t, 2)
    exact = 1 - 0.999 ** t.double()
    assert ((got.double() - exact) / exact).abs().max() < 3e-7


# ---------------------------------------------------------------------------------------------
# SGD
# ---------------------------------------------------------------------------------------------

SGD_CONFIGS = [
    dict(),  # plain SGD, no mirror
    dict(momentum=0.9, alpha=2.0, beta=0.01, clamp=5.0),
    dict(momentum=0.9, dampening=0.1, weight_decay=0.01, alpha=50.0, beta=1e-3),
    dict(momentum=0.9, nesterov=True, weight_decay=1e-2, maximize=True, alpha=2.0, beta=0.01,
         clamp=5.0),
    dict(weight_decay=1e-2, alpha=3.0, beta=0.01, clamp=5.0, mirror="hypentropy", gamma=0.5),
    dict(momentum=0.8, alpha=10.0, beta=0.0, clamp=None, mirror="hypentropy", gamma=0.1),
    dict(momentum=0.9, alpha=0.0, beta=0.1, mirror="exp"),
]


def _run_sgd(params, grads_per_step, bufs, lr_kw, fn, extra, first_step_flag=True):
    for step, grads in enumerate(grads_per_step):
        kw = dict(extra, **lr_kw)
        fn(params, grads, bufs, is_first_step=first_step_flag and step == 0, **kw)


@pytest.mark.parametrize("cfg", SGD_CONFIGS)
@pytest.mark.parametrize("lr_mode", ["float", "tensor"])
def test_sgd_parity(cfg, lr_mode):
    params = _params()
    bufs = [torch.full_like(p, 123.0) for p in params]  # first step must ignore the contents
    grads = [_grads(s) for s in range(N_STEPS)]
    lr_kw = dict(lr=0.05) if lr_mode == "float" else dict(lr=0.0, lr_tensor=torch.tensor(0.05))
    p64, b64 = _clone(params, torch.float64), _clone(bufs, torch.float64)
    g64 = [_clone(g, torch.float64) for g in grads]
    _run_sgd(params, grads, bufs, lr_kw, tri.ham_sgd_, cfg)
    _run_sgd(p64, g64, b64, lr_kw, ref.ham_sgd_, cfg)
    _assert_close(params, p64)
    if cfg.get("momentum", 0.0) != 0:
        _assert_close(bufs, b64)
    else:
        assert all(torch.equal(b, torch.full_like(b, 123.0)) for b in bufs)


def test_sgd_grad_scale_and_found_inf_zero():
    cfg = dict(lr=0.05, momentum=0.9, alpha=2.0, beta=0.01, clamp=5.0)
    params, bufs = _params(), [torch.zeros(n) for n in SIZES]
    p64, b64 = _clone(params, torch.float64), _clone(bufs, torch.float64)
    scale = torch.tensor(1024.0)
    for step in range(3):
        g = _grads(step, scale=1024.0)
        tri.ham_sgd_(params, g, bufs, grad_scale=scale, found_inf=torch.tensor(0.0),
                     is_first_step=step == 0, **cfg)
        ref.ham_sgd_(p64, _clone(g, torch.float64), b64, grad_scale=scale,
                     found_inf=torch.tensor(0.0), is_first_step=step == 0, **cfg)
    _assert_close(params, p64)
    _assert_close(bufs, b64)


# ---------------------------------------------------------------------------------------------
# Adam / AdamW / HORST
# ---------------------------------------------------------------------------------------------

ADAM_CONFIGS = [
    dict(),  # plain Adam
    dict(weight_decay=1e-2, decoupled_weight_decay=True),  # plain AdamW
    dict(amsgrad=True, weight_decay=1e-2, alpha=2.0, beta=0.01, clamp=5.0),
    dict(maximize=True, decoupled_weight_decay=True, weight_decay=0.1, alpha=2.0, beta=0.01,
         direction="adam"),
    dict(decoupled_weight_decay=True, weight_decay=0.1, alpha=1.0, beta=0.01, clamp=5.0,
         direction="adam", order="before"),
    dict(alpha=2.0, beta=0.01, clamp=5.0, mirror="hypentropy", gamma=0.1),
    dict(amsgrad=True, decoupled_weight_decay=True, weight_decay=0.05, alpha=1.0, beta=0.02,
         clamp=None, mirror="hypentropy", gamma=1.0, direction="adam", order="before"),
    dict(beta1=0.0, beta2=0.99, eps=1e-6, alpha=0.5, beta=0.0, clamp=5.0, direction="adam"),
]


def _adam_state(params, amsgrad, dtype=torch.float32):
    return ([torch.zeros_like(p, dtype=dtype) for p in params],
            [torch.zeros_like(p, dtype=dtype) for p in params],
            [torch.zeros_like(p, dtype=dtype) for p in params] if amsgrad else [],
            [torch.tensor(0.0) for _ in params])


def _run_adam(fn, params, state, grads_per_step, kw):
    for grads in grads_per_step:
        fn(params, grads, *state, **kw)


@pytest.mark.parametrize("cfg", ADAM_CONFIGS)
@pytest.mark.parametrize("lr_mode", ["float", "tensor"])
def test_adam_parity(cfg, lr_mode):
    amsgrad = cfg.get("amsgrad", False)
    params = _params()
    state = _adam_state(params, amsgrad)
    grads = [_grads(s) for s in range(N_STEPS)]
    lr_kw = dict(lr=0.01) if lr_mode == "float" else dict(lr=0.0, lr_tensor=torch.tensor(0.01))
    p64 = _clone(params, torch.float64)
    s64 = tuple(_clone(s, torch.float64) for s in state[:3]) + (_clone(state[3]),)
    g64 = [_clone(g, torch.float64) for g in grads]
    _run_adam(tri.ham_adam_, params, state, grads, dict(cfg, **lr_kw))
    _run_adam(ref.ham_adam_, p64, s64, g64, dict(cfg, **lr_kw))
    _assert_close(params, p64)
    for got, want in zip(state[:3], s64[:3]):
        _assert_close(got, want)
    assert all(s.item() == N_STEPS for s in state[3])


def test_adam_grad_scale_and_mixed_step_dtypes():
    # float64 and float32 step counters in one call: the steps go through the dense path
    cfg = dict(lr=0.01, weight_decay=1e-2, alpha=2.0, beta=0.01, clamp=5.0, direction="adam")
    params = _params()
    state = _adam_state(params, False)
    state[3][0] = torch.tensor(0.0, dtype=torch.float64)
    p64 = _clone(params, torch.float64)
    s64 = tuple(_clone(s, torch.float64) for s in state[:3]) + (_clone(state[3]),)
    scale = torch.tensor(65536.0)
    for step in range(3):
        g = _grads(step, scale=65536.0)
        tri.ham_adam_(params, g, *state, grad_scale=scale, found_inf=torch.tensor(0.0), **cfg)
        ref.ham_adam_(p64, _clone(g, torch.float64), *s64, grad_scale=scale,
                      found_inf=torch.tensor(0.0), **cfg)
    _assert_close(params, p64)
    assert state[3][0].dtype == torch.float64 and state[3][0].item() == 3


# ---------------------------------------------------------------------------------------------
# standalone mirror step
# ---------------------------------------------------------------------------------------------

MIRROR_CONFIGS = [
    dict(),  # defaults: alpha = beta = 0, a no-op
    dict(alpha=200.0, beta=1e-3, clamp=5.0),
    dict(clamp=None, alpha=20.0),
    dict(maximize=True, alpha=50.0, beta=0.0),
    dict(mirror="hypentropy", gamma=0.5, alpha=20.0, beta=1e-2),
    dict(mirror="hypentropy", gamma=1e-3, alpha=200.0, beta=1e-3, clamp=None),
]


@pytest.mark.parametrize("cfg", MIRROR_CONFIGS)
@pytest.mark.parametrize("lr_mode", ["float", "tensor"])
def test_mirror_step_parity(cfg, lr_mode):
    params = _params()
    grads = [_grads(s) for s in range(N_STEPS)]
    lr_kw = dict(lr=0.01) if lr_mode == "float" else dict(lr=0.0, lr_tensor=torch.tensor(0.01))
    p64 = _clone(params, torch.float64)
    for g in grads:
        tri.mirror_step_(params, g, **cfg, **lr_kw)
        ref.mirror_step_(p64, _clone(g, torch.float64), **cfg, **lr_kw)
    _assert_close(params, p64)


def test_exp_mirror_keeps_exact_zeros():
    params = _params()
    zero = [p == 0 for p in params]
    assert all(z.any() for z in zero[1:])
    tri.mirror_step_(params, _grads(0), lr=0.1, alpha=200.0, beta=0.1)
    # SGD: a zero weight with a zero gradient (no momentum history) stays exactly zero
    grads = _grads(1)
    for g, z in zip(grads, zero):
        g[z] = 0
    tri.ham_sgd_(params, grads, [], lr=0.1, alpha=200.0, beta=0.1, clamp=5.0)
    for p, z in zip(params, zero):
        assert torch.equal(p[z], torch.zeros_like(p[z]))


def test_noncontiguous_grad():
    params = [_randn(12, 0)]
    g = _randn(24, 1)[::2]
    p64 = _clone(params, torch.float64)
    tri.mirror_step_(params, [g], lr=0.01, alpha=20.0)
    ref.mirror_step_(p64, [g.double()], lr=0.01, alpha=20.0)
    _assert_close(params, p64)


# ---------------------------------------------------------------------------------------------
# AMP: found_inf set leaves everything bit-identical
# ---------------------------------------------------------------------------------------------

def test_found_inf_skips_everything():
    inf = torch.tensor(1.0)
    scale = torch.tensor(4.0)

    params = _params()
    bufs = [torch.randn_like(p) for p in params]
    before = _clone(params + bufs)
    tri.ham_sgd_(params, _grads(0), bufs, lr=0.1, momentum=0.9, alpha=2.0, beta=0.1,
                 grad_scale=scale, found_inf=inf)
    assert all(torch.equal(a, b) for a, b in zip(params + bufs, before))

    for amsgrad in (False, True):
        params = _params()
        m, v, vmax, steps = _adam_state(params, amsgrad)
        for t in m + v + vmax:
            t.uniform_()
        steps = [torch.tensor(7.0) for _ in params]
        before = _clone(params + m + v + vmax + steps)
        tri.ham_adam_(params, _grads(0), m, v, vmax, steps, lr=0.1, amsgrad=amsgrad,
                      alpha=2.0, beta=0.1, mirror="hypentropy", grad_scale=scale,
                      found_inf=inf)
        assert all(torch.equal(a, b) for a, b in zip(params + m + v + vmax + steps, before))

    params = _params()
    before = _clone(params)
    tri.mirror_step_(params, _grads(0), lr=0.1, alpha=2.0, beta=0.1, mirror="hypentropy",
                     found_inf=inf)
    assert all(torch.equal(a, b) for a, b in zip(params, before))


# ---------------------------------------------------------------------------------------------
# bfloat16 / float16 params (float32 or same-dtype state)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,state_dtype", [(torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float32),
                                               (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("op", ["sgd", "adam", "mirror"])
def test_low_precision(dtype, state_dtype, op):
    params = _params(dtype)
    grads = [_grads(s, dtype) for s in range(N_STEPS)]
    p_lp, p64 = _clone(params), _clone(params, torch.float64)

    if op == "sgd":
        kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-2, alpha=2.0, beta=0.01, clamp=5.0)
        bufs = [torch.zeros_like(p, dtype=state_dtype) for p in params]
        b_lp, b64 = _clone(bufs), _clone(bufs, torch.float64)
        step = lambda fn, p, g, b, i: fn(p, g, b, is_first_step=i == 0, **kw)  # noqa: E731
        states = (bufs, b_lp, b64)
    elif op == "adam":
        kw = dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1, amsgrad=True,
                  alpha=1.0, beta=0.01, mirror="hypentropy", direction="adam")
        st = _adam_state(params, True, state_dtype)
        st_lp = tuple(_clone(s) for s in st)
        st64 = tuple(_clone(s, torch.float64) for s in st[:3]) + (_clone(st[3]),)
        step = lambda fn, p, g, s, i: fn(p, g, *s, **kw)  # noqa: E731
        states = (st, st_lp, st64)
    else:
        kw = dict(lr=0.01, alpha=50.0, beta=1e-2)
        step = lambda fn, p, g, s, i: fn(p, g, **kw)  # noqa: E731
        states = (None, None, None)

    name = {"sgd": "ham_sgd_", "adam": "ham_adam_", "mirror": "mirror_step_"}[op]
    for i, g in enumerate(grads):
        step(getattr(tri, name), params, g, states[0], i)
        step(getattr(ref, name), p_lp, g, states[1], i)  # same dtype, float32 arithmetic
        step(getattr(ref, name), p64, _clone(g, torch.float64), states[2], i)
        if i == 0:
            # After one step both round the same float32 value: nearly all bits agree.
            same = sum((a == b).sum().item() for a, b in zip(params, p_lp))
            assert same >= 0.98 * sum(SIZES)
    assert all(p.dtype == dtype for p in params)
    err, err_ref = _max_err(params, p64), _max_err(p_lp, p64)
    assert err <= 2 * err_ref + 1e-6, (err, err_ref)


# ---------------------------------------------------------------------------------------------
# launches, caching, validation
# ---------------------------------------------------------------------------------------------

def test_one_launch_per_dtype_group(monkeypatch):
    counter = _LaunchCounter(monkeypatch, "_ham_adam_kernel")
    params = [torch.randn(n) for n in (3, 1, 40, 17, 1025)]
    grads = [torch.randn_like(p) for p in params]
    m, v, vmax, steps = _adam_state(params, False)
    tri.ham_adam_(params, grads, m, v, vmax, steps, lr=0.01, alpha=1.0)
    assert counter.count == 1
    params += [torch.randn(5, dtype=torch.bfloat16), torch.randn(0)]
    grads += [torch.randn_like(p) for p in params[-2:]]
    m, v, vmax, steps = _adam_state(params, False)
    tri.ham_adam_(params, grads, m, v, vmax, steps, lr=0.01, alpha=1.0)
    assert counter.count == 3  # float32 group + bfloat16 group; the empty tensor is skipped
    assert steps[-1].item() == 1  # ... but its step still advances, like the reference


def test_tables_are_cached():
    params = [torch.randn(n) for n in (5, 2000)]
    grads = [torch.randn_like(p) for p in params]
    tri.mirror_step_(params, grads, lr=0.01, alpha=1.0)
    n = len(tri._TABLE_CACHE)
    entry = next(reversed(tri._TABLE_CACHE.values()))
    tri.mirror_step_(params, grads, lr=0.02, alpha=1.0)
    assert len(tri._TABLE_CACHE) == n
    assert next(reversed(tri._TABLE_CACHE.values()))[0] is entry[0]
    table, blocks, n_programs = entry
    assert n_programs == 1 + 2
    assert table.tolist() == [params[0].data_ptr(), grads[0].data_ptr(), 5,
                              params[1].data_ptr(), grads[1].data_ptr(), 2000]
    assert blocks.tolist() == [0, 0, 1, 0, 1, 1024]


def test_float64_rejected():
    p = [torch.randn(4, dtype=torch.float64)]
    with pytest.raises(TypeError, match=r"params\[0\].*float64"):
        tri.mirror_step_(p, [torch.randn(4, dtype=torch.float64)], lr=0.1)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\].*float64"):
        q = [torch.randn(4)]
        tri.ham_adam_(q, [torch.randn(4)], [torch.zeros(4, dtype=torch.float64)],
                      [torch.zeros(4)], [], [torch.tensor(0.0)], lr=0.1)


def test_bad_arguments():
    p, g = [torch.randn(4)], [torch.randn(4)]
    with pytest.raises(ValueError, match="mirror"):
        tri.mirror_step_(p, g, lr=0.1, mirror="log")
    with pytest.raises(ValueError, match="direction"):
        tri.ham_adam_(p, g, [torch.zeros(4)], [torch.zeros(4)], [], [torch.tensor(0.0)],
                      lr=0.1, direction="sideways")
    with pytest.raises(ValueError, match="grads"):
        tri.mirror_step_(p, [], lr=0.1)


def test_all_configs_compile_once_each():
    # Every constexpr combination of the Adam kernel that the tests do not reach above still
    # traces without error (one tiny tensor each).
    for amsgrad, decoupled, before, direction, mirror in itertools.product(
            (False, True), (False, True), (False, True), ("grad", "adam"), ("exp", "hypentropy")):
        p, g = [torch.randn(3)], [torch.randn(3)]
        m, v, vmax, steps = _adam_state(p, amsgrad)
        p64 = _clone(p, torch.float64)
        s64 = tuple(_clone(s, torch.float64) for s in (m, v, vmax)) + (_clone(steps),)
        kw = dict(lr=0.01, amsgrad=amsgrad, decoupled_weight_decay=decoupled, weight_decay=0.1,
                  order="before" if before else "after", direction=direction, mirror=mirror,
                  alpha=1.0, beta=0.01, clamp=5.0)
        tri.ham_adam_(p, g, m, v, vmax, steps, **kw)
        ref.ham_adam_(p64, _clone(g, torch.float64), *s64, **kw)
        _assert_close(p, p64)


# ---------------------------------------------------------------------------------------------
# masks: masked-out lanes keep their bits (param and state), the others step as unmasked
# ---------------------------------------------------------------------------------------------

def _pack_bits(keep):
    """Bit-pack a bool tensor: element e is bit e % 8 of byte e // 8 (little bit order)."""
    flat = keep.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).view(-1, 8)
    return (flat << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def _masks(params, kind, seed=0):
    """(keep masks as bool, the masks handed to the op) for kind bool / bits / mixed."""
    gen = torch.Generator().manual_seed(seed)
    keep = [torch.rand(p.shape, generator=gen) < 0.6 for p in params]
    if kind == "bool":
        return keep, keep
    if kind == "bits":
        return keep, [_pack_bits(k) for k in keep]
    return keep, [k if i % 2 else _pack_bits(k) for i, k in enumerate(keep)]  # mixed


def test_pack_bits_matches_reference_unpacking():
    keep = torch.rand(1003) < 0.5
    packed = _pack_bits(keep)
    assert packed.numel() == 126
    assert torch.equal(ref._dense_mask([packed], 0, keep), keep)


def _run_masked(op, params, states, grads_per_step, masks):
    for i, grads in enumerate(grads_per_step):
        if op == "sgd":
            tri.ham_sgd_(params, grads, states[0], lr=0.05, momentum=0.9, weight_decay=1e-2,
                         alpha=2.0, beta=0.01, clamp=5.0, is_first_step=i == 0, masks=masks)
        elif op == "adam":
            tri.ham_adam_(params, grads, *states, lr=0.01, amsgrad=True,
                          decoupled_weight_decay=True, weight_decay=0.1, alpha=1.0, beta=0.01,
                          mirror="hypentropy", direction="adam", masks=masks)
        else:
            tri.mirror_step_(params, grads, lr=0.01, alpha=50.0, beta=1e-2, masks=masks)


def _fresh_state(op, params):
    if op == "sgd":
        return ([torch.randn_like(p) for p in params],)
    if op == "adam":
        m, v, vmax, steps = _adam_state(params, True)
        for t in m + v + vmax:
            t.uniform_()  # non-zero state, so "kept its bits" is a real check
        return m, v, vmax, steps
    return ()


@pytest.mark.parametrize("kind", ["bool", "bits", "mixed"])
@pytest.mark.parametrize("op", ["sgd", "adam", "mirror"])
def test_masks(op, kind):
    params = _params()
    params.append(torch.zeros(0))  # an empty tensor (its mask is empty too)
    keep, masks = _masks(params, kind)
    grads = [_grads(s) + [torch.zeros(0)] for s in range(3)]
    states = _fresh_state(op, params)
    before = _clone(params), [_clone(s) for s in states]

    # the same step without masks, from the same starting point
    p_full, s_full = _clone(params), [_clone(s) for s in states]
    _run_masked(op, params, states, grads, masks)
    _run_masked(op, p_full, s_full, grads, None)

    tensor_lists = [(params, before[0], p_full)]
    tensor_lists += [(s, b, f) for s, b, f in zip(states, before[1], s_full)
                     if s and s[0].dim() > 0]  # (the Adam step counters are scalars)
    for got_list, old_list, full_list in tensor_lists:
        changed = 0
        for got, old, full, k in zip(got_list, old_list, full_list, keep):
            # masked-out: bit-identical to before; kept: bit-identical to the unmasked step
            assert torch.equal(got[~k].view(torch.int32), old[~k].view(torch.int32))
            assert torch.equal(got[k].view(torch.int32), full[k].view(torch.int32))
            changed += (got[k] != old[k]).sum().item()
        # the kept lanes did step (an amsgrad max or a zero weight with a zero grad may not)
        assert changed > 0.2 * sum(k.sum().item() for k in keep)
    if op == "adam":
        assert all(s.item() == 3 for s in states[3])  # steps advance per tensor regardless


@pytest.mark.parametrize("op", ["sgd", "adam", "mirror"])
def test_masks_match_reference(op):
    params = _params()
    keep, masks = _masks(params, "bits", seed=1)
    grads = [_grads(s) for s in range(3)]
    states = _fresh_state(op, params)
    p64 = _clone(params, torch.float64)
    s64 = [_clone(s, torch.float64) if s and s[0].dim() > 0 else _clone(s) for s in states]
    _run_masked(op, params, states, grads, masks)
    for i, g in enumerate(grads):
        g64 = _clone(g, torch.float64)
        if op == "sgd":
            ref.ham_sgd_(p64, g64, s64[0], lr=0.05, momentum=0.9, weight_decay=1e-2,
                         alpha=2.0, beta=0.01, clamp=5.0, is_first_step=i == 0, masks=masks)
        elif op == "adam":
            ref.ham_adam_(p64, g64, *s64, lr=0.01, amsgrad=True, decoupled_weight_decay=True,
                          weight_decay=0.1, alpha=1.0, beta=0.01, mirror="hypentropy",
                          direction="adam", masks=masks)
        else:
            ref.mirror_step_(p64, g64, lr=0.01, alpha=50.0, beta=1e-2, masks=masks)
    _assert_close(params, p64)
    for got, want in zip(states, s64):
        if got and got[0].dim() > 0:
            _assert_close(got, want)


def test_masks_low_precision_and_found_inf():
    # bfloat16 params and state: masked-out lanes keep their 16 bits; found_inf skips all
    params = _params(torch.bfloat16)
    keep, masks = _masks(params, "bits", seed=2)
    m, v, vmax, steps = _adam_state(params, False, torch.bfloat16)
    before = _clone(params + m + v)
    tri.ham_adam_(params, _grads(0, torch.bfloat16), m, v, vmax, steps, lr=0.01, alpha=1.0,
                  masks=masks)
    for got, old, k in zip(params + m + v, before, keep * 3):
        assert torch.equal(got[~k].view(torch.int16), old[~k].view(torch.int16))
    before = _clone(params + m + v + steps)
    tri.ham_adam_(params, _grads(1, torch.bfloat16), m, v, vmax, steps, lr=0.01, alpha=1.0,
                  masks=masks, found_inf=torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(params + m + v + steps, before))


def test_all_zero_and_all_one_masks():
    params = _params()
    grads = _grads(0)
    before = _clone(params)
    tri.mirror_step_(params, grads, lr=0.01, alpha=20.0,
                     masks=[torch.zeros(p.shape, dtype=torch.bool) for p in params])
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    tri.mirror_step_(params, grads, lr=0.01, alpha=20.0,
                     masks=[torch.full(((p.numel() + 7) // 8,), 255, dtype=torch.uint8)
                            for p in params])
    tri.mirror_step_(before, grads, lr=0.01, alpha=20.0)
    assert all(torch.equal(a, b) for a, b in zip(params, before))


def test_bad_masks():
    p, g = [torch.randn(10)], [torch.randn(10)]
    with pytest.raises(ValueError, match="masks"):
        tri.mirror_step_(p, g, lr=0.1, alpha=1.0, masks=[torch.ones(9, dtype=torch.bool)])
    with pytest.raises(ValueError, match="bit-packed"):
        tri.mirror_step_(p, g, lr=0.1, alpha=1.0, masks=[torch.ones(10, dtype=torch.uint8)])
    with pytest.raises(TypeError, match="masks"):
        tri.mirror_step_(p, g, lr=0.1, alpha=1.0, masks=[torch.ones(10)])
    with pytest.raises(ValueError, match="masks"):
        tri.mirror_step_(p, g, lr=0.1, alpha=1.0, masks=[])
