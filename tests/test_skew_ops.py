"""SparseOpt's BN-skew correction (tiers 1 and 2): ``row_coefficients_``, ``row_scale_`` and the
``row_scales`` of the fused ``ham_sgd_`` / ``ham_adam_`` on every CPU backend, against the
reference (sparseopt_kernels/reference/skew.py); bad input; opcheck."""
import copy
import importlib
import inspect
import math

import pytest
import torch
from torch.library import opcheck

from sparseopt_kernels.reference import mirror as ref_mirror
from sparseopt_kernels.reference import skew as ref
from sparseopt_kernels.testing import assert_close, assert_within_reference_error

from conftest import cpu_backends

BACKENDS = cpu_backends()
NON_TRITON = [b for b in BACKENDS if b.id != "triton"]


def need_backend(backend, use_backend, module=None, fn=None):
    """Force ``backend``; Triton is skipped while its module (or the argument) does not exist."""
    if backend == "triton" and module is not None:
        mod = pytest.importorskip(f"sparseopt_kernels.triton.{module}")
        if fn is not None and "row_scales" not in inspect.signature(getattr(mod, fn)).parameters:
            pytest.skip(f"triton.{module}.{fn} has no row_scales yet")
    use_backend(backend)


def bits(t):
    """The storage bits of a float tensor, as integers (compares signed zeros and NaNs)."""
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16}
    return t.detach().contiguous().view(-1).view(ints[t.element_size()])


def assert_same_values(actual, expected, msg=""):
    """Bit for bit, except that any NaN matches any NaN."""
    nan = torch.isnan(actual)
    assert torch.equal(nan, torch.isnan(expected)), f"{msg}: NaNs differ"
    a, e = actual[~nan], expected[~nan]
    same = bits(a) == bits(e)
    if not bool(same.all()):
        i = int((~same).nonzero()[0])
        raise AssertionError(f"{msg}: {int((~same).sum())}/{a.numel()} differ; first at {i}: "
                             f"got {a.view(-1)[i].item()!r}, expected {e.view(-1)[i].item()!r}")


def random_mask(shape, density=0.5, seed=0):
    """A bool mask with a different density per row, an empty row and a full row."""
    g = torch.Generator().manual_seed(seed)
    rows = shape[0] if len(shape) else 1
    row_density = torch.rand(rows, generator=g) * 2 * density
    m = torch.rand(shape, generator=g) < row_density.view(-1, *([1] * (len(shape) - 1)))
    if rows >= 3 and m[0].numel() > 0:
        m[1] = False
        m[2] = True
    return m


MASK_SHAPES = [
    (33, 7), (5,), (1,), (1000,), (64, 3, 3, 3), (16, 8, 2, 2), (7, 1), (1, 9), (3, 40000),
    (2, 32769), (70, 1000), (4, 0), (0, 3),
]


def independent_coefficients(mask):
    """Python ints and math.sqrt: an oracle for the reference itself (double, correctly
    rounded, in the specified order), rounded to float32 by torch."""
    rows = mask.shape[0]
    counts = [int(c) for c in mask.reshape(rows, -1).sum(dim=1).tolist()] if rows else []
    total = sum(counts)
    vals = [math.sqrt(c * rows / total) if total else 0.0 for c in counts]
    return torch.tensor(vals, dtype=torch.float64).float()


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_coefficients_bit_for_bit(backend, use_backend):
    need_backend(backend, use_backend, "skew")
    masks = [random_mask(s, density=d, seed=k)
             for k, (s, d) in enumerate((s, d) for s in MASK_SHAPES for d in (0.1, 0.5))]
    masks += [torch.zeros(5, 4, dtype=torch.bool), torch.ones(4, 6, dtype=torch.bool),
              torch.zeros(100000, dtype=torch.bool), torch.zeros(3, 2, 2, 2, dtype=torch.bool)]
    masks[-1][1, 0, 1, 1] = True  # a single non-zero
    ours = [torch.full((m.shape[0],), -1.0) for m in masks]
    want = [torch.full((m.shape[0],), -1.0) for m in masks]
    torch.ops.sparseopt.row_coefficients_(masks, ours)
    ref.row_coefficients_(masks, want)
    for i, (m, a, e) in enumerate(zip(masks, ours, want)):
        assert torch.equal(a, e), f"{backend} masks[{i}] shape {tuple(m.shape)}"
        assert torch.equal(a, independent_coefficients(m)), f"masks[{i}] vs the oracle"
    # Uniform sparsity: c = 1 everywhere; all empty: c = 0 everywhere.
    m = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    c = torch.empty(2)
    torch.ops.sparseopt.row_coefficients_([m], [c])
    assert torch.equal(c, torch.ones(2))
    c = torch.ones(3)
    torch.ops.sparseopt.row_coefficients_([torch.zeros(3, 5, dtype=torch.bool)], [c])
    assert torch.equal(c, torch.zeros(3)) and not torch.signbit(c).any()


def scale_inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(33, 7), (5,), (64, 3, 3, 3), (3, 40000), (7, 1), (130, 65), (2, 0)]
    xs, cs, ms = [], [], []
    for k, s in enumerate(shapes):
        x = (torch.randn(s, generator=g, dtype=torch.float64) * 3).to(dtype)
        flat = x.view(-1)
        if flat.numel() > 20:
            flat[3], flat[5], flat[7], flat[11] = float("nan"), float("inf"), -float("inf"), -0.0
        rows = s[0]
        c = torch.rand(rows, generator=g) * 2.5
        c[::4] = 0.0
        c[1::4] = 1.0
        xs.append(x)
        cs.append(c)
        ms.append(random_mask(s, seed=seed + k))
    return xs, cs, ms


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_row_scale_matches_reference(backend, dtype, masked, use_backend):
    need_backend(backend, use_backend, "skew")
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("triton has no float64")
    xs, cs, ms = scale_inputs(dtype)
    ours, want = copy.deepcopy(xs), copy.deepcopy(xs)
    kw = dict(masks=ms) if masked else {}
    torch.ops.sparseopt.row_scale_(ours, cs, **kw)
    ref.row_scale_(want, cs, **kw)
    for i, (a, e) in enumerate(zip(ours, want)):
        assert_same_values(a, e, f"{backend} {dtype} tensors[{i}]")
        if masked:
            off = ~ms[i]
            assert torch.equal(a[off], torch.zeros_like(a[off]))
            assert not torch.signbit(a[off]).any(), "masked-out entries must be +0"
    # Against plain float64 math (every backend, not only the reference): x·c rounded to float32
    # and then to the dtype is exact for a product of two floats.
    for x, c, m, a in zip(xs, cs, ms, ours):
        exact = x.double() * c.double().view(-1, *([1] * (x.dim() - 1)))
        if dtype != torch.float64:
            exact = exact.float()
        if masked:
            exact = torch.where(m, exact, torch.zeros_like(exact))
        assert_same_values(a, exact.to(dtype), f"{backend} {dtype} vs float64 math")


# --- row_scales of the fused steps --------------------------------------------------------------

STEP_SHAPES = [(33, 7), (16, 3, 3, 3), (5,), (40, 70), (2, 20000)]


def step_problem(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in STEP_SHAPES]
    masks = [random_mask(s, density=0.4, seed=seed + k) for k, s in enumerate(STEP_SHAPES)]
    row_scales = [torch.empty(s[0]) for s in STEP_SHAPES]
    ref.row_coefficients_(masks, row_scales)
    row_scales[2] = torch.rand(5, generator=g) * 2  # a 1-D param: one coefficient per element
    return params, masks, row_scales


def as64(tensors):
    return [t.detach().to(torch.float64).clone() for t in tensors]


def state_dtype_of(dtype):
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def check_step_results(backend, dtype, ours, same, exact, masks, before, use_masks):
    """float32/float64 against the float64 reference with a tolerance; bfloat16 at
    most twice the error of the same-dtype reference (DESIGN.md), as the table's rtol is
    meaningless for params that cancel to ~0 in a step."""
    names = ("param", "state 1", "state 2", "state 3")
    for name, a_list, s_list, e_list in zip(names, ours, same, exact):
        for i, (a, r, e) in enumerate(zip(a_list, s_list, e_list)):
            msg = f"{backend} {dtype} {name}[{i}]"
            if dtype in (torch.bfloat16, torch.float16):  # float32 state follows the params
                assert_within_reference_error(a, r, e, factor=2.0, floor=1e-6, msg=msg)
            elif dtype == torch.float32:  # as tests/test_ops_parity.py: the mirror's exp
                assert_close(a, e, rtol=5e-5, atol=5e-6, msg=msg)  # amplifies float32 rounding
            else:
                assert_close(a, e, msg=msg)
    if use_masks:
        for a_list, b_list in zip(ours, before):
            for i, (a, b) in enumerate(zip(a_list, b_list)):
                off = ~masks[i]
                assert torch.equal(bits(a[off]), bits(b[off])), \
                    f"{backend}: pruned entries of tensor {i} changed"


ADAM_CASES = [
    dict(),
    dict(decoupled_weight_decay=True, weight_decay=0.05),
    dict(amsgrad=True, weight_decay=0.1, maximize=True),
    dict(decoupled_weight_decay=True, weight_decay=0.01, alpha=50.0, beta=1e-2, clamp=5.0),
    dict(alpha=30.0, beta=1e-2, clamp=0.05, mirror="hypentropy", gamma=0.3, amsgrad=True),
    dict(decoupled_weight_decay=True, weight_decay=0.01, alpha=20.0, beta=1e-2, clamp=5.0,
         direction="adam", order="before"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("use_masks", [False, True], ids=["rows", "rows+masks"])
@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
def test_ham_adam_row_scales(backend, dtype, use_masks, case, use_backend):
    need_backend(backend, use_backend, "mirror_step", "ham_adam_")
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("triton has no float64")
    cfg = ADAM_CASES[case]
    params, masks, row_scales = step_problem(dtype, seed=case)
    sd = state_dtype_of(dtype)
    m = [torch.randn(p.shape).to(sd) * 0.1 for p in params]
    v = [torch.rand(p.shape).to(sd) * 0.01 for p in params]
    vmax = [x.clone() * 1.5 for x in v]
    steps = [torch.tensor(float(k)) for k in range(len(params))]
    p64, m64, v64, vmax64 = as64(params), as64(m), as64(v), as64(vmax)
    steps64 = [s.clone().double() for s in steps]
    before = [copy.deepcopy(x) for x in (params, m, v, vmax)]
    same = copy.deepcopy(before)  # the reference in the same dtypes
    steps_same = [s.clone() for s in steps]
    amsgrad = cfg.get("amsgrad", False)
    mk = dict(masks=masks) if use_masks else {}
    for it in range(3):
        grads = [torch.randn(p.shape, dtype=torch.float64).to(dtype) for p in params]
        scale = torch.tensor(2.0 ** (it + 8)) if it != 1 else None  # AMP, then none, then AMP
        kw = dict(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, **cfg, **mk, row_scales=row_scales)
        scaled = [g * scale.to(g.dtype) for g in grads] if scale is not None else grads
        torch.ops.sparseopt.ham_adam_(params, scaled, m, v, vmax if amsgrad else [], steps,
                                      grad_scale=scale, **kw)
        ref_mirror.ham_adam_(p64, as64(scaled), m64, v64, vmax64 if amsgrad else [], steps64,
                             grad_scale=scale, **kw)
        ref_mirror.ham_adam_(same[0], scaled, same[1], same[2], same[3] if amsgrad else [],
                             steps_same, grad_scale=scale, **kw)
    n = 4 if amsgrad else 3
    check_step_results(backend, dtype, [params, m, v, vmax][:n], same[:n],
                       [p64, m64, v64, vmax64][:n], masks, before[:n], use_masks)


SGD_CASES = [
    dict(),
    dict(momentum=0.9, dampening=0.1, weight_decay=0.05),
    dict(momentum=0.9, nesterov=True, maximize=True, alpha=50.0, beta=1e-2, clamp=5.0),
    dict(momentum=0.5, alpha=30.0, beta=1e-2, clamp=0.05, mirror="hypentropy", gamma=0.3),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("use_masks", [False, True], ids=["rows", "rows+masks"])
@pytest.mark.parametrize("case", range(len(SGD_CASES)))
def test_ham_sgd_row_scales(backend, dtype, use_masks, case, use_backend):
    need_backend(backend, use_backend, "mirror_step", "ham_sgd_")
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("triton has no float64")
    cfg = SGD_CASES[case]
    params, masks, row_scales = step_problem(dtype, seed=10 + case)
    momentum = cfg.get("momentum", 0.0)
    bufs = [torch.randn(p.shape).to(state_dtype_of(dtype)) for p in params]
    p64, b64 = as64(params), as64(bufs)
    before = [copy.deepcopy(x) for x in (params, bufs)]
    same = copy.deepcopy(before)
    mk = dict(masks=masks) if use_masks else {}
    for it in range(3):
        grads = [torch.randn(p.shape, dtype=torch.float64).to(dtype) for p in params]
        scale = torch.tensor(512.0) if it == 2 else None
        scaled = [g * scale.to(g.dtype) for g in grads] if scale is not None else grads
        kw = dict(lr=0.05, **cfg, **mk, row_scales=row_scales, grad_scale=scale,
                  is_first_step=it == 0)
        torch.ops.sparseopt.ham_sgd_(params, scaled, bufs if momentum else [], **kw)
        ref_mirror.ham_sgd_(p64, as64(scaled), b64 if momentum else [], **kw)
        ref_mirror.ham_sgd_(same[0], scaled, same[1] if momentum else [], **kw)
    n = 2 if momentum else 1
    check_step_results(backend, dtype, [params, bufs][:n], same[:n], [p64, b64][:n], masks,
                       before[:n], use_masks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_scales_equal_a_prescaled_gradient(backend, use_backend):
    """g̃ = c ⊙ g: the step with row_scales is the step on the pre-scaled gradient (float32
    without AMP: the same float products, so bit for bit on the fused CPU kernels)."""
    need_backend(backend, use_backend, "mirror_step", "ham_adam_")
    params, masks, row_scales = step_problem(torch.float32, seed=3)
    grads = [torch.randn_like(p) for p in params]
    pre = [(g.reshape(g.shape[0], -1) * c.unsqueeze(1)).view(g.shape)
           for g, c in zip(grads, row_scales)]
    runs = []
    for g, rs in ((grads, row_scales), (pre, None)):
        p = [x.clone() for x in params]
        m, v = [torch.zeros_like(x) for x in p], [torch.zeros_like(x) for x in p]
        torch.ops.sparseopt.ham_adam_(p, g, m, v, [], [torch.tensor(0.0) for _ in p], lr=1e-2,
                                      alpha=50.0, beta=1e-2, clamp=5.0, weight_decay=0.01,
                                      decoupled_weight_decay=True, row_scales=rs)
        runs.append(p + m + v)
    for a, b in zip(*runs):
        if backend in ("reference", "cpp"):
            assert torch.equal(a, b)
        else:
            assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_found_inf_skips_the_row_scaled_step(backend, use_backend):
    need_backend(backend, use_backend, "mirror_step", "ham_adam_")
    params, masks, row_scales = step_problem(torch.float32)
    before = copy.deepcopy(params)
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    torch.ops.sparseopt.ham_adam_(params, [torch.randn_like(p) for p in params], m, v, [],
                                  [torch.tensor(0.0) for _ in params], lr=1e-2,
                                  grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0),
                                  row_scales=row_scales, masks=masks)
    for a, b in zip(params, before):
        assert torch.equal(a, b)


# --- bad input -----------------------------------------------------------------------------------

def sgd_call(params, row_scales, masks=None):
    torch.ops.sparseopt.ham_sgd_(params, [torch.ones_like(p) for p in params], [], lr=0.1,
                                 row_scales=row_scales, masks=masks)


BAD_ROW_SCALES = [
    ("dtype", lambda p: [torch.ones(4, dtype=torch.float64), torch.ones(3)], ValueError,
     "row_scales[0]"),
    ("shape", lambda p: [torch.ones(4), torch.ones(4)], ValueError, "row_scales[1]"),
    ("2-D", lambda p: [torch.ones(4, 1), torch.ones(3)], ValueError, "row_scales[0]"),
    ("count", lambda p: [torch.ones(4)], ValueError, "row_scales"),
    ("device", lambda p: [torch.ones(4, device="meta"), torch.ones(3)], ValueError,
     "row_scales[0]"),
    ("not a list", lambda p: torch.ones(4), (TypeError, RuntimeError), "row_scales"),
    ("not contiguous", lambda p: [torch.ones(8)[::2], torch.ones(3)], ValueError,
     "row_scales[0]"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,make,exc,match", BAD_ROW_SCALES, ids=[c[0] for c in BAD_ROW_SCALES])
def test_bad_row_scales_raise_before_anything_changes(backend, name, make, exc, match,
                                                      use_backend):
    use_backend(backend)
    params = [torch.randn(4, 5), torch.randn(3, 2, 2)]
    before = copy.deepcopy(params)
    with pytest.raises(exc, match=match.replace("[", r"\[").replace("]", r"\]")):
        sgd_call(params, make(params))
    for a, b in zip(params, before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_scales_of_a_0d_param_are_rejected(backend, use_backend):
    use_backend(backend)
    params = [torch.randn(4, 5), torch.tensor(2.0)]
    before = copy.deepcopy(params)
    with pytest.raises(ValueError, match="0-d"):
        sgd_call(params, [torch.ones(4), torch.ones(1)])
    for a, b in zip(params, before):
        assert torch.equal(a, b)


BAD_COEFFICIENTS = [
    ("uint8 mask", lambda: ([torch.ones(4, 3, dtype=torch.uint8)], [torch.empty(4)]),
     ValueError, "masks[0]"),
    ("float mask", lambda: ([torch.ones(4, 3)], [torch.empty(4)]), ValueError, "masks[0]"),
    ("0-d mask", lambda: ([torch.tensor(True)], [torch.empty(1)]), ValueError, "masks[0]"),
    ("float64 out", lambda: ([torch.ones(4, 3, dtype=torch.bool)],
                             [torch.empty(4, dtype=torch.float64)]), ValueError,
     "coefficients[0]"),
    ("short out", lambda: ([torch.ones(4, 3, dtype=torch.bool)], [torch.empty(3)]), ValueError,
     "coefficients[0]"),
    ("count", lambda: ([torch.ones(4, 3, dtype=torch.bool)] * 2, [torch.empty(4)]), ValueError,
     "coefficients"),
    ("device", lambda: ([torch.ones(4, 3, dtype=torch.bool)], [torch.empty(4, device="meta")]),
     ValueError, "coefficients[0]"),
    ("not contiguous", lambda: ([torch.ones(3, 4, dtype=torch.bool).t()], [torch.empty(4)]),
     ValueError, "masks[0]"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,make,exc,match", BAD_COEFFICIENTS,
                         ids=[c[0] for c in BAD_COEFFICIENTS])
def test_bad_row_coefficients_input(backend, name, make, exc, match, use_backend):
    use_backend(backend)
    masks, outs = make()
    before = [o.clone() for o in outs if o.device.type != "meta"]
    with pytest.raises(exc, match=match.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.sparseopt.row_coefficients_(masks, outs)
    after = [o for o in outs if o.device.type != "meta"]
    for a, b in zip(after, before):
        assert torch.equal(bits(a), bits(b))


BAD_ROW_SCALE = [
    ("int tensor", lambda: ([torch.ones(4, 3, dtype=torch.int32)], [torch.ones(4)], None),
     TypeError, "tensors[0]"),
    ("0-d tensor", lambda: ([torch.tensor(1.0)], [torch.ones(1)], None), ValueError,
     "tensors[0]"),
    ("scales dtype", lambda: ([torch.ones(4, 3)], [torch.ones(4, dtype=torch.float16)], None),
     ValueError, "scales[0]"),
    ("scales shape", lambda: ([torch.ones(4, 3), torch.ones(2)], [torch.ones(4), torch.ones(3)],
                              None), ValueError, "scales[1]"),
    ("scales count", lambda: ([torch.ones(4, 3)], [], None), ValueError, "scales"),
    ("mask shape", lambda: ([torch.ones(4, 3)], [torch.ones(4)],
                            [torch.ones(3, 4, dtype=torch.bool)]), ValueError, "masks[0]"),
    ("mask dtype", lambda: ([torch.ones(4, 3)], [torch.ones(4)], [torch.ones(4, 3)]),
     ValueError, "masks[0]"),
    ("packed mask", lambda: ([torch.ones(4, 3)], [torch.ones(4)],
                             [torch.ones(2, dtype=torch.uint8)]), ValueError, "masks[0]"),
    ("mask count", lambda: ([torch.ones(4, 3)], [torch.ones(4)], []), ValueError, "masks"),
    ("mixed devices", lambda: ([torch.ones(4, 3), torch.ones(2, device="meta")],
                               [torch.ones(4), torch.ones(2)], None), ValueError, "tensors[1]"),
    ("not contiguous", lambda: ([torch.ones(3, 4).t()], [torch.ones(4)], None), ValueError,
     "tensors[0]"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,make,exc,match", BAD_ROW_SCALE, ids=[c[0] for c in BAD_ROW_SCALE])
def test_bad_row_scale_input(backend, name, make, exc, match, use_backend):
    use_backend(backend)
    tensors, scales, masks = make()
    before = [t.clone() for t in tensors if t.device.type != "meta"]
    with pytest.raises(exc, match=match.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.sparseopt.row_scale_(tensors, scales, masks=masks)
    after = [t for t in tensors if t.device.type != "meta"]
    for a, b in zip(after, before):
        assert torch.equal(bits(a), bits(b))


def test_backend_modules_export_the_ops():
    for name in ("cpu_skew", "cuda_skew"):
        mod = importlib.import_module(f"sparseopt_kernels.backends.{name}")
        assert callable(mod.row_coefficients_) and callable(mod.row_scale_)


# --- opcheck -----------------------------------------------------------------------------------

def opcheck_inputs():
    masks = [random_mask((6, 4), seed=1), random_mask((5,), seed=2),
             random_mask((4, 2, 3, 3), seed=3)]
    yield "row_coefficients_", (masks, [torch.empty(m.shape[0]) for m in masks]), {}
    xs = [torch.randn(m.shape) for m in masks]
    cs = [torch.rand(m.shape[0]) * 2 for m in masks]
    yield "row_scale_", (xs, cs), {}
    yield "row_scale_", ([x.clone() for x in xs], cs), dict(masks=masks)
    yield "row_scale_", ([x.to(torch.bfloat16) for x in xs], cs), dict(masks=masks)
    p = [torch.randn(m.shape) for m in masks]
    yield "ham_adam_", (p, [torch.randn_like(x) for x in p], [torch.zeros_like(x) for x in p],
                        [torch.zeros_like(x) for x in p], [], [torch.tensor(1.0) for _ in p]), \
        dict(lr=1e-3, alpha=10.0, beta=1e-2, clamp=5.0, masks=masks, row_scales=cs)
    yield "ham_sgd_", ([x.clone() for x in p], [torch.randn_like(x) for x in p],
                       [torch.zeros_like(x) for x in p]), \
        dict(lr=0.1, momentum=0.9, row_scales=cs)


@pytest.mark.parametrize("backend", NON_TRITON)
@pytest.mark.parametrize("case", list(range(6)))
def test_opcheck(case, backend, use_backend):
    use_backend(backend)
    name, args, kwargs = list(opcheck_inputs())[case]
    opcheck(getattr(torch.ops.sparseopt, name).default, args, kwargs)
