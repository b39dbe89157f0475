"""Parity of the Triton SparseOpt BN-skew kernels (row_coefficients_, row_scale_, and the
``row_scales=`` of the fused ham_sgd_/ham_adam_ steps) with the PyTorch reference.

Runs on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1, set before triton is
imported). The interpreter is slow per program instance, so shapes stay small; a few of them
span several 1024-element programs, with rows that cross program boundaries.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from sparseopt_kernels.reference import mirror as ref_mirror  # noqa: E402
from sparseopt_kernels.reference import skew as ref  # noqa: E402
from sparseopt_kernels.triton import mirror_step as tri_mirror  # noqa: E402
from sparseopt_kernels.triton import skew as tri  # noqa: E402

# Row-major weights: a bias (1-D), a linear layer whose rows are shorter than a program, a 4-D
# conv weight, and a layer whose rows are longer than a program (2500 elements: 3 programs).
SHAPES = [(7,), (17, 59), (4, 3, 3, 3), (2, 1250)]
N_STEPS = 5


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _random_masks(shapes, density, seed=0):
    gen = _gen(seed)
    return [torch.rand(s, generator=gen) < density for s in shapes]


def _bits(t):
    """The raw bits of a tensor (so that −0 and +0 differ in comparisons)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[
        t.element_size()])


def _assert_bits_equal(actual, expected):
    """Same bits everywhere, except that any NaN matches any NaN (the payload a conversion gives
    a NaN differs between torch's CPU paths, the GPU and the interpreter)."""
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, i
        both_nan = a.isnan() & e.isnan()
        diff = ((_bits(a) != _bits(e)) & ~both_nan).sum().item()
        assert diff == 0, f"tensor {i}: {diff} entries differ"


def _clone(ts, dtype=None):
    return [t.clone() if dtype is None else t.to(dtype) for t in ts]


def _assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"tensor {i}: {m}")


class _LaunchCounter:
    """Counts launches of a kernel of ``module`` by wrapping its ``kernel[grid]`` indexing."""

    def __init__(self, monkeypatch, module, name):
        self.count = 0
        kernel = getattr(module, name)
        counter = self

        class Wrapped:
            def __getitem__(self, grid):
                counter.count += 1
                return kernel[grid]

        monkeypatch.setattr(module, name, Wrapped())


def _coefficients(masks, fn):
    # NaN-filled outputs: every entry must be written
    out = [torch.full((m.shape[0],), float("nan")) for m in masks]
    fn(masks, out)
    return out


# ---------------------------------------------------------------------------------------------
# row_coefficients_: bit for bit equal to the reference
# ---------------------------------------------------------------------------------------------

def _structured_masks():
    """Masks with empty rows, full rows, an all-empty mask, 1-D and 4-D masks, rows shorter and
    longer than a program, and rows crossing program boundaries."""
    gen = _gen(1)
    m2 = torch.rand(33, 40, generator=gen) < 0.3
    m2[0] = False                 # empty row
    m2[1] = True                  # full row
    m2[5:9] = False               # several empty rows in a row
    m2[-1] = True                 # full last row
    conv = torch.rand(6, 4, 3, 3, generator=gen) < 0.1
    conv[2] = False
    conv[3] = True
    bias = torch.rand(1500, generator=gen) < 0.5   # 1-D: rows of one element, 2 programs
    long_rows = torch.rand(3, 2100, generator=gen) < 0.7  # rows spanning programs
    long_rows[1] = False
    odd = torch.rand(700, 3, generator=gen) < 0.5  # 1024 % 3 ≠ 0: rows cross program ends
    return [m2, conv, bias, long_rows, odd,
            torch.zeros(5, 7, dtype=torch.bool),   # all empty: c = 0 everywhere
            torch.ones(4, 2, 3, dtype=torch.bool),  # all full: c = 1 everywhere
            torch.ones(1, 1, dtype=torch.bool),
            torch.zeros(3, 0, dtype=torch.bool)]   # rows without elements: c = 0


def test_row_coefficients_structured_bit_exact():
    masks = _structured_masks()
    got = _coefficients(masks, tri.row_coefficients_)
    want = _coefficients(masks, ref.row_coefficients_)
    _assert_bits_equal(got, want)
    # a mask without rows has nothing to write (the reference cannot reshape it)
    no_rows = _coefficients(masks + [torch.zeros(0, 4, dtype=torch.bool)],
                            tri.row_coefficients_)
    _assert_bits_equal(no_rows[:-1], want)
    assert no_rows[-1].shape == (0,)
    m2 = masks[0]
    assert got[0][0] == 0 and got[0][5:9].eq(0).all()
    # a full row of a mask of density d has c = sqrt(1/d)
    assert got[0][1].item() == pytest.approx((m2.numel() / m2.sum().item()) ** 0.5, rel=1e-6)
    assert torch.equal(_bits(got[5]), torch.zeros(5, dtype=torch.int32))  # +0, not NaN
    assert torch.equal(got[6], torch.ones(4)) and torch.equal(got[7], torch.ones(1))
    assert torch.equal(_bits(got[8]), torch.zeros(3, dtype=torch.int32))


@pytest.mark.parametrize("density", [0.02, 0.3, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_row_coefficients_random_bit_exact(density, seed):
    shapes = SHAPES + [(31, 2, 5), (1, 40), (400,)]
    masks = _random_masks(shapes, density, seed)
    _assert_bits_equal(_coefficients(masks, tri.row_coefficients_),
                       _coefficients(masks, ref.row_coefficients_))


def test_row_coefficients_formula_and_one_launch_each(monkeypatch):
    count = _LaunchCounter(monkeypatch, tri, "_row_count_kernel")
    coef = _LaunchCounter(monkeypatch, tri, "_row_coefficients_kernel")
    masks = _random_masks(SHAPES, 0.4, seed=3)
    got = _coefficients(masks, tri.row_coefficients_)
    assert (count.count, coef.count) == (1, 1)  # all masks in one launch each
    for m, c in zip(masks, got):
        # the SparseOpt form: c_i = sqrt(1 − s_i) / sqrt(1 − s_avg)
        s = 1 - ref.row_view(m).double().mean(dim=1)
        torch.testing.assert_close(c.double(), (1 - s).sqrt() / (1 - s.mean()).sqrt())


def test_row_coefficients_noncontiguous_mask_and_repeated_calls():
    base = torch.rand(9, 16, generator=_gen(4)) < 0.5
    with pytest.raises(ValueError, match="contiguous"):  # the op's contract, as on every backend
        tri.row_coefficients_([base.t()], [torch.empty(16)])
    masks = [base.t().contiguous(), base[:, ::2].contiguous()]
    want = _coefficients(masks, ref.row_coefficients_)
    out = [torch.empty(m.shape[0]) for m in masks]
    for _ in range(2):  # a second call on the same outputs (cached tables, fresh scratch)
        out[0].fill_(-1.0)
        tri.row_coefficients_(masks, out)
        _assert_bits_equal(out, want)


def test_row_coefficients_bad_arguments():
    m = [torch.ones(3, 2, dtype=torch.bool)]
    with pytest.raises(ValueError, match="masks"):
        tri.row_coefficients_([torch.ones(3, 2)], [torch.zeros(3)])
    with pytest.raises(ValueError, match="masks"):
        tri.row_coefficients_([torch.tensor(True)], [torch.zeros(1)])
    with pytest.raises(ValueError, match=r"coefficients\[0\]"):
        tri.row_coefficients_(m, [torch.zeros(2)])
    with pytest.raises(ValueError, match=r"coefficients\[0\]"):
        tri.row_coefficients_(m, [torch.zeros(3, dtype=torch.float64)])
    with pytest.raises(ValueError, match="coefficients"):
        tri.row_coefficients_(m, [])


# ---------------------------------------------------------------------------------------------
# row_scale_: bit for bit equal to the reference; exactly +0 where the mask is False
# ---------------------------------------------------------------------------------------------

def _scale_inputs(dtype, seed=0):
    shapes = SHAPES + [(3, 0), (300, 5)]
    xs = [_randn(s, seed + i, dtype) for i, s in enumerate(shapes)]
    cs = [torch.rand(s[0], generator=_gen(100 + i)) * 3 for i, s in enumerate(shapes)]
    cs[1][::4] = 0.0      # rows scaled to zero
    cs[3][0] = 1.0        # a row left as is
    cs[2][1] = -0.5       # negative: 0·c = −0 where unmasked, still +0 where masked out
    masks = _random_masks(shapes, 0.6, seed)
    # NaN, ±inf and −0 where the mask is False: they must still become +0
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=dtype)
    for x, m in zip(xs, masks):
        dropped = (~m).view(-1).nonzero().flatten()[:4]
        x.view(-1)[dropped] = specials[:dropped.numel()]
    return xs, cs, masks


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf · 0
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_row_scale_bit_exact(dtype, masked):
    xs, cs, masks = _scale_inputs(dtype)
    m = masks if masked else None
    got, want = _clone(xs), _clone(xs)
    tri.row_scale_(got, cs, masks=m)
    ref.row_scale_(want, cs, masks=m)
    _assert_bits_equal(got, want)
    if masked:
        for x, k in zip(got, masks):
            assert torch.equal(_bits(x[~k]), torch.zeros_like(_bits(x[~k])))  # +0 exactly
            assert x[k].isfinite().all()
    else:
        assert got[0].isnan().any() and got[0].isinf().any()  # x · c everywhere


def test_row_scale_bf16_rounds_to_nearest_even():
    # 3·(1 + 2⁻⁷) lies exactly between two bfloat16 neighbours (the tie goes to the even one,
    # up); (1 + 2⁻⁷)(1 + 2⁻⁸) lies just above a midpoint (up). Truncating would go down twice.
    x = [torch.tensor([[3.0, -3.0], [1.0 + 2 ** -7, 1.0]], dtype=torch.bfloat16)]
    c = [torch.tensor([1.0 + 2 ** -7, 1.0 + 2 ** -8])]
    want = (x[0].float() * c[0].unsqueeze(1)).to(torch.bfloat16)
    tri.row_scale_(x, c)
    assert torch.equal(_bits(x[0]), _bits(want))
    assert x[0].tolist() == [[3.03125, -3.03125], [1.0 + 2 ** -6, 1.0]]


def test_row_scale_one_launch_for_many_tensors(monkeypatch):
    counter = _LaunchCounter(monkeypatch, tri, "_row_scale_kernel")
    xs = [torch.randn(s) for s in SHAPES] + [torch.randn(0, 4)]
    cs = [torch.rand(x.shape[0]) for x in xs]
    want = _clone(xs)
    tri.row_scale_(xs, cs)
    ref.row_scale_(want, cs)
    assert counter.count == 1  # the empty tensor is skipped
    _assert_bits_equal(xs, want)
    with pytest.raises(TypeError, match="once per dtype"):  # like every other op
        tri.row_scale_([torch.randn(3, 4), torch.randn(3, 4, dtype=torch.bfloat16)],
                       [torch.rand(3), torch.rand(3)])


def test_row_scale_bad_arguments():
    x, c = [torch.randn(3, 2)], [torch.ones(3)]
    with pytest.raises(ValueError, match=r"scales\[0\]"):
        tri.row_scale_(x, [torch.ones(2)])
    with pytest.raises(ValueError, match=r"scales\[0\]"):
        tri.row_scale_(x, [torch.ones(3, dtype=torch.bfloat16)])
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        tri.row_scale_(x, c, masks=[torch.ones(3, 2)])
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        tri.row_scale_(x, c, masks=[torch.ones(2, 3, dtype=torch.bool)])
    with pytest.raises(ValueError, match="contiguous"):
        tri.row_scale_([torch.randn(2, 3).t()], c)
    with pytest.raises(TypeError, match="dtype"):
        tri.row_scale_([torch.ones(3, 2, dtype=torch.int32)], c)


# ---------------------------------------------------------------------------------------------
# row-scaled fused steps vs the float64 reference
# ---------------------------------------------------------------------------------------------

def _params(dtype=torch.float32, seed=0):
    ps = [_randn(s, seed + i, dtype) for i, s in enumerate(SHAPES)]
    for p in ps:  # exact zeros (sparse weights) and a spread of magnitudes
        p.view(-1)[::5] = 0
        p.view(-1)[1::7] *= 1e-3
    return ps


def _grads(step, dtype=torch.float32, scale=1.0):
    gs = [_randn(s, 1000 * (step + 1) + i) * scale for i, s in enumerate(SHAPES)]
    for g in gs:
        g.view(-1)[::10] = 0
    return [g.to(dtype) for g in gs]


def _row_scales(seed=0):
    """The coefficients of random masks, plus a zero row and a large one."""
    cs = _coefficients(_random_masks(SHAPES, 0.3, seed), tri.row_coefficients_)
    cs[1][3] = 0.0
    cs[2][0] = 4.0
    return cs


SGD_CONFIGS = [
    dict(),  # plain SGD
    dict(momentum=0.9, weight_decay=0.01, alpha=2.0, beta=0.01, clamp=5.0),  # HAM
    dict(momentum=0.9, nesterov=True, maximize=True, alpha=20.0, beta=1e-3),
    dict(weight_decay=1e-2, alpha=3.0, beta=0.01, clamp=5.0, mirror="hypentropy", gamma=0.5),
]

ADAM_CONFIGS = [
    dict(),  # plain Adam
    dict(weight_decay=1e-2, decoupled_weight_decay=True, alpha=2.0, beta=0.01, clamp=5.0),
    dict(amsgrad=True, weight_decay=1e-2, maximize=True, alpha=1.0, beta=0.01,
         direction="adam", order="before"),
    dict(alpha=2.0, beta=0.01, clamp=5.0, mirror="hypentropy", gamma=0.1),
]


def _run(op, mod, params, state, grads_per_step, cfg):
    for step, grads in enumerate(grads_per_step):
        if op == "sgd":
            mod.ham_sgd_(params, grads, state[0], is_first_step=step == 0, **cfg)
        else:
            mod.ham_adam_(params, grads, *state, **cfg)


def _state(op, params, dtype=None):
    if op == "sgd":
        return ([torch.randn(p.shape, generator=_gen(7)).to(dtype or p.dtype) for p in params],)
    return ([torch.zeros_like(p, dtype=dtype) for p in params],
            [torch.zeros_like(p, dtype=dtype) for p in params],
            [torch.zeros_like(p, dtype=dtype) for p in params],
            [torch.tensor(0.0) for _ in params])


def _state64(state):
    return tuple(_clone(s, torch.float64) if s and s[0].dim() > 0 else _clone(s) for s in state)


@pytest.mark.parametrize("op,cfg", [("sgd", c) for c in SGD_CONFIGS]
                         + [("adam", c) for c in ADAM_CONFIGS])
@pytest.mark.parametrize("masked", [False, True])
def test_row_scaled_steps_match_reference(op, cfg, masked):
    lr = 0.05 if op == "sgd" else 0.01
    params = _params()
    state = _state(op, params)
    grads = [_grads(s) for s in range(N_STEPS)]
    cs = _row_scales()
    masks = _random_masks(SHAPES, 0.7, seed=5) if masked else None
    p64, s64 = _clone(params, torch.float64), _state64(state)
    g64 = [_clone(g, torch.float64) for g in grads]
    before = _clone(params)
    kw = dict(cfg, lr=lr, row_scales=cs, masks=masks)
    _run(op, tri_mirror, params, state, grads, kw)
    _run(op, ref_mirror, p64, s64, g64, kw)
    _assert_close(params, p64)
    for got, want in zip(state, s64):
        if got and got[0].dim() > 0:
            _assert_close(got, want)
    if masked:
        for p, old, k in zip(params, before, masks):
            assert torch.equal(_bits(p[~k]), _bits(old[~k]))
    # the row scales do matter: the same steps without them end elsewhere
    p_plain = _clone(before)
    _run(op, tri_mirror, p_plain, _state(op, p_plain), grads, dict(kw, row_scales=None))
    assert not torch.allclose(p_plain[1], params[1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("op", ["sgd", "adam"])
def test_row_scales_grad_scale_and_found_inf(op):
    cfg = dict(lr=0.05, momentum=0.9, alpha=2.0, beta=0.01, clamp=5.0) if op == "sgd" else \
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, alpha=1.0, beta=0.01,
             direction="adam")
    params = _params()
    state = _state(op, params)
    p64, s64 = _clone(params, torch.float64), _state64(state)
    cs = _row_scales(seed=1)
    scale = torch.tensor(1024.0)
    for step in range(3):
        g = _grads(step, scale=1024.0)
        kw = dict(cfg, row_scales=cs, grad_scale=scale, found_inf=torch.tensor(0.0))
        _run(op, tri_mirror, params, state, [g], kw)
        _run(op, ref_mirror, p64, s64, [_clone(g, torch.float64)], kw)
    _assert_close(params, p64)
    # found_inf set: nothing moves
    before = _clone(params + [t for s in state for t in s])
    _run(op, tri_mirror, params, state, [_grads(9, scale=1024.0)],
         dict(cfg, row_scales=cs, grad_scale=scale, found_inf=torch.tensor(1.0)))
    _assert_bits_equal(params + [t for s in state for t in s], before)


@pytest.mark.parametrize("op", ["sgd", "adam"])
def test_unit_row_scales_are_bit_identical_to_none(op):
    # c = 1 multiplies every gradient by exactly 1: the same bits as the unscaled kernel
    cfg = dict(lr=0.05, momentum=0.9, weight_decay=0.01, alpha=2.0, beta=0.01) if op == "sgd" \
        else dict(lr=0.01, amsgrad=True, alpha=1.0, beta=0.01, mirror="hypentropy")
    params, grads = _params(), [_grads(s) for s in range(2)]
    p_none, p_ones = _clone(params), _clone(params)
    s_none, s_ones = _state(op, params), _state(op, params)
    _run(op, tri_mirror, p_none, s_none, grads, cfg)
    _run(op, tri_mirror, p_ones, s_ones, grads,
         dict(cfg, row_scales=[torch.ones(p.shape[0]) for p in params]))
    _assert_bits_equal(p_ones + [t for s in s_ones for t in s],
                       p_none + [t for s in s_none for t in s])


def test_zero_row_scale_freezes_rows_without_decay():
    # SGD without weight decay or β: a row with c = 0 has g̃ = 0 and does not move
    params, grads = _params(), _grads(0)
    cs = [torch.ones(p.shape[0]) for p in params]
    cs[1][2] = 0.0
    cs[3][1] = 0.0
    before = _clone(params)
    tri_mirror.ham_sgd_(params, grads, [], lr=0.1, alpha=5.0, row_scales=cs)
    assert torch.equal(params[1][2], before[1][2]) and torch.equal(params[3][1], before[3][1])
    assert not torch.equal(params[1][1], before[1][1])
    assert not torch.equal(params[3][0], before[3][0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_row_scaled_adam_low_precision(dtype):
    cfg = dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, alpha=1.0, beta=0.01)
    params = _params(dtype)
    state = _state("adam", params, torch.float32)
    p_lp, s_lp = _clone(params), tuple(_clone(s) for s in state)
    p64, s64 = _clone(params, torch.float64), _state64(state)
    cs = _row_scales(seed=2)
    for step in range(3):
        g = _grads(step, dtype)
        kw = dict(cfg, row_scales=cs)
        _run("adam", tri_mirror, params, state, [g], kw)
        _run("adam", ref_mirror, p_lp, s_lp, [g], kw)  # float32 math, same rounding
        _run("adam", ref_mirror, p64, s64, [_clone(g, torch.float64)], kw)
    err = max((a.double() - e).abs().max().item() for a, e in zip(params, p64))
    err_ref = max((a.double() - e).abs().max().item() for a, e in zip(p_lp, p64))
    assert err <= 2 * err_ref + 1e-6, (err, err_ref)


def test_row_scale_table_columns():
    # [param, grad, numel, momentum buffer, mask, row scales, row length]
    params, grads = _params(), _grads(0)
    bufs = [torch.zeros_like(p) for p in params]
    masks = [torch.ones(p.shape, dtype=torch.bool) for p in params]
    cs = [torch.ones(p.shape[0]) for p in params]
    tri_mirror.ham_sgd_(params, grads, bufs, lr=0.1, momentum=0.9, masks=masks, row_scales=cs)
    table = next(reversed(tri_mirror._TABLE_CACHE.values()))[0].view(len(params), -1)
    for i, p in enumerate(params):
        assert table[i].tolist() == [p.data_ptr(), grads[i].data_ptr(), p.numel(),
                                     bufs[i].data_ptr(), masks[i].data_ptr(), cs[i].data_ptr(),
                                     p.numel() // p.shape[0]]


def test_bad_row_scales():
    p, g = [torch.randn(4, 3)], [torch.randn(4, 3)]
    steps = [torch.tensor(0.0)]
    for bad in ([torch.ones(3)], [torch.ones(4, dtype=torch.float64)], [torch.ones(4, 1)], [],
                [torch.ones(8)[::2]]):
        with pytest.raises(ValueError, match="row_scales"):
            tri_mirror.ham_sgd_(p, g, [], lr=0.1, row_scales=bad)
        with pytest.raises(ValueError, match="row_scales"):
            tri_mirror.ham_adam_(p, g, [torch.zeros(4, 3)], [torch.zeros(4, 3)], [], steps,
                                 lr=0.1, row_scales=bad)
    assert steps[0].item() == 0  # rejected before the step counters moved


# ---------------------------------------------------------------------------------------------
# through the dispatcher: torch.ops.sparseopt with SPARSEOPT_BACKEND=triton
# ---------------------------------------------------------------------------------------------

def test_ops_dispatch_to_triton(use_backend, monkeypatch):
    use_backend("triton")
    launches = {name: _LaunchCounter(monkeypatch, mod, name) for mod, name in (
        (tri, "_row_count_kernel"), (tri, "_row_coefficients_kernel"),
        (tri, "_row_scale_kernel"), (tri_mirror, "_ham_sgd_kernel"),
        (tri_mirror, "_ham_adam_kernel"))}
    ops = torch.ops.sparseopt

    masks = _random_masks(SHAPES, 0.4, seed=6)
    cs = [torch.empty(m.shape[0]) for m in masks]
    ops.row_coefficients_(masks, cs)
    _assert_bits_equal(cs, _coefficients(masks, ref.row_coefficients_))

    gs, want = _grads(0), _grads(0)
    ops.row_scale_(gs, cs, masks=masks)
    ref.row_scale_(want, cs, masks=masks)
    _assert_bits_equal(gs, want)

    params = _params()
    p64 = _clone(params, torch.float64)
    bufs = [torch.zeros_like(p) for p in params]
    b64 = _clone(bufs, torch.float64)
    kw = dict(lr=0.05, momentum=0.9, alpha=2.0, beta=0.01, clamp=5.0, is_first_step=True,
              masks=masks, row_scales=cs)
    ops.ham_sgd_(params, _grads(1), bufs, **kw)
    ref_mirror.ham_sgd_(p64, _clone(_grads(1), torch.float64), b64, **kw)
    _assert_close(params, p64)

    state = _state("adam", params)
    s64 = _state64(state)
    kw = dict(lr=0.01, alpha=1.0, beta=0.01, direction="adam", row_scales=cs)
    ops.ham_adam_(params, _grads(2), *state, **kw)
    ref_mirror.ham_adam_(p64, _clone(_grads(2), torch.float64), *s64, **kw)
    _assert_close(params, p64)

    assert all(c.count == 1 for c in launches.values()), {k: c.count
                                                         for k, c in launches.items()}
