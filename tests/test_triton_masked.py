"""Parity of the Triton masked-Adam kernels (chunk_select, compact_adam_) with the reference.

Runs on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1, set before triton is
imported). The interpreter is slow per program instance (one per chunk for the selection), so
tensors and chunk counts stay small.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from sparseopt_kernels.reference import masked as ref  # noqa: E402
from sparseopt_kernels.triton import masked_adam as tri  # noqa: E402


def _nan(bits):
    """A float32 NaN with the given bit pattern (payload and sign)."""
    return torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32)


def _values(seed=0):
    """Tensors with ties, exact zeros (both signs), ±inf and NaNs of several payloads."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(1000, generator=gen)
    a[::9] = 0.0
    a[1::13] = -0.0
    a[2::17] = float("nan")
    a[3::31] = float("inf")
    a[4::37] = -float("inf")
    a[5::41] = -float("nan")
    a[6:10] = torch.cat([_nan(0x7FC00001), _nan(0x7F800001), _nan(0xFFFFFFFF), _nan(0x7FFFFFFF)])
    ties = torch.randint(-3, 4, (517,), generator=gen).float()  # many equal |θ|
    small = torch.randn(7, generator=gen)
    nan_only = torch.full((5,), float("nan"))
    return [a, ties, small, torch.zeros(0), nan_only]


CASES = [  # (chunk_size, density): full chunks and odd last chunks, k = 1 and k = L
    (64, 0.1), (100, 0.37), (17, 0.5), (128, 1.0), (250, 0.01), (1000, 0.05), (2048, 0.3),
]


@pytest.mark.parametrize("chunk_offsets", [False, True])
@pytest.mark.parametrize("chunk_size,density", CASES)
def test_chunk_select_matches_reference(chunk_size, density, chunk_offsets):
    values = _values()
    got = tri.chunk_select(values, density, chunk_size, chunk_offsets)
    want = ref.chunk_select(values, density, chunk_size, chunk_offsets)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype == (torch.int16 if chunk_offsets else torch.int32)
        assert torch.equal(g, w), f"tensor {i}"


def test_chunk_select_tiny_chunks():
    # chunk_size 1 (every entry selected) to 3: one program per 1-3 elements, so few elements
    values = [v[:13] for v in _values(2)]
    for chunk_size, density in ((1, 0.5), (2, 0.5), (3, 0.34), (3, 1.0)):
        for chunk_offsets in (False, True):
            got = tri.chunk_select(values, density, chunk_size, chunk_offsets)
            want = ref.chunk_select(values, density, chunk_size, chunk_offsets)
            assert all(torch.equal(g, w) for g, w in zip(got, want)), (chunk_size, density)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_chunk_select_other_dtypes(dtype):
    # Keys are float32 |θ| bits as in the reference (bfloat16/float16 have many exact ties).
    values = [v.to(dtype) for v in _values(1)]
    for chunk_offsets in (False, True):
        got = tri.chunk_select(values, 0.2, 50, chunk_offsets)
        want = ref.chunk_select(values, 0.2, 50, chunk_offsets)
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_chunk_select_largest_chunk_and_limits():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 50, (tri.MAX_CHUNK + 300,), generator=gen).float()
    for density in (0.02, 0.5):
        got = tri.chunk_select([x], density, tri.MAX_CHUNK)
        assert torch.equal(got[0], ref.chunk_select([x], density, tri.MAX_CHUNK)[0])
    with pytest.raises(ValueError, match="chunk_size"):
        tri.chunk_select([x], 0.1, tri.MAX_CHUNK + 1)
    with pytest.raises(ValueError, match="density"):
        tri.chunk_select([x], 0.0, 64)
    with pytest.raises(TypeError, match="dtype"):
        tri.chunk_select([torch.ones(4, dtype=torch.int32)], 0.5, 4)


def test_chunk_select_noncontiguous_and_shapes():
    base = torch.randn(40, 30)
    values = [base.t(), base[:, ::3], base.view(6, 5, 40)]
    got = tri.chunk_select(values, 0.25, 32)
    want = ref.chunk_select(values, 0.25, 32)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


# ---------------------------------------------------------------------------------------------
# compact_adam_
# ---------------------------------------------------------------------------------------------

SIZES = (1, 300, 2100)  # 2100 elements at density 0.5 span two 1024-position programs
CHUNK = 64
N_STEPS = 4


def _randn(n, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)


def _setup(density, offsets, p_dtype=torch.float32, m_dtype=torch.float32, seed=0):
    params = [_randn(n, seed + i, p_dtype) for i, n in enumerate(SIZES)]
    indices = ref.chunk_select(params, density, CHUNK, offsets)
    exp_avgs = [_randn(i.numel(), 50 + k).abs().mul(0.01).to(m_dtype)
                for k, i in enumerate(indices)]
    exp_avg_sqs = [_randn(i.numel(), 80 + k).square().mul(1e-3).to(m_dtype)
                   for k, i in enumerate(indices)]
    steps = [torch.tensor(3.0) for _ in params]
    return params, indices, exp_avgs, exp_avg_sqs, steps


def _grads(step, dtype=torch.float32, scale=1.0):
    return [(_randn(n, 1000 * (step + 1) + i) * scale).to(dtype) for i, n in enumerate(SIZES)]


def _clone(ts, dtype=None):
    return [t.clone() if dtype is None else t.to(dtype) for t in ts]


def _assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"tensor {i}: {m}")


CONFIGS = [
    dict(),
    dict(weight_decay=0.1),
    dict(maximize=True, weight_decay=0.01, beta1=0.8, beta2=0.99, eps=1e-6),
    dict(lr_tensor=True),
    dict(grad_scale=True, beta1=0.0),
]


def _kwargs(cfg, density):
    kw = dict(cfg, density=density, chunk_size=CHUNK, lr=0.01)
    if kw.pop("lr_tensor", False):
        kw.update(lr=0.0, lr_tensor=torch.tensor(0.01))
    scale = 1.0
    if kw.pop("grad_scale", False):
        scale = 1024.0
        kw.update(grad_scale=torch.tensor(scale), found_inf=torch.tensor(0.0))
    return kw, scale


@pytest.mark.parametrize("offsets", [False, True], ids=["int32", "int16"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_compact_adam_matches_reference(cfg, offsets):
    density = 0.5
    params, indices, m, v, steps = _setup(density, offsets)
    p64 = _clone(params, torch.float64)
    m64, v64 = _clone(m, torch.float64), _clone(v, torch.float64)
    s64 = _clone(steps)
    kw, scale = _kwargs(cfg, density)
    for step in range(N_STEPS):
        grads = _grads(step, scale=scale)
        tri.compact_adam_(params, grads, indices, m, v, steps, **kw)
        ref.compact_adam_(p64, _clone(grads, torch.float64), indices, m64, v64, s64, **kw)
    _assert_close(params, p64)
    _assert_close(m, m64)
    _assert_close(v, v64, atol=1e-9)
    assert all(s.item() == 3 + N_STEPS for s in steps)


@pytest.mark.parametrize("offsets", [False, True], ids=["int32", "int16"])
def test_compact_adam_touches_only_selected(offsets):
    density = 0.2
    params, indices, m, v, steps = _setup(density, offsets)
    before = _clone(params)
    tri.compact_adam_(params, _grads(0), indices, m, v, steps, density=density,
                      chunk_size=CHUNK, lr=0.01, weight_decay=0.1)
    for p, b, idx in zip(params, before, indices):
        selected = torch.zeros(p.numel(), dtype=torch.bool)
        selected[ref.global_indices(idx, density, CHUNK)] = True
        assert torch.equal(p[~selected].view(torch.int32), b[~selected].view(torch.int32))
        assert (p[selected] != b[selected]).all()


def test_compact_adam_bf16_moments():
    # Same dtypes as the reference (float32 params, bfloat16 moments, both float32 arithmetic):
    # the moments round the same float32 values to bfloat16 (allow one bfloat16 ulp).
    density = 0.5
    params, indices, m, v, steps = _setup(density, True, m_dtype=torch.bfloat16)
    p_ref, m_ref, v_ref, s_ref = _clone(params), _clone(m), _clone(v), _clone(steps)
    p64 = _clone(params, torch.float64)
    m64, v64, s64 = _clone(m, torch.float64), _clone(v, torch.float64), _clone(steps)
    kw = dict(density=density, chunk_size=CHUNK, lr=0.01, weight_decay=0.05)
    for step in range(N_STEPS):
        grads = _grads(step)
        tri.compact_adam_(params, grads, indices, m, v, steps, **kw)
        ref.compact_adam_(p_ref, grads, indices, m_ref, v_ref, s_ref, **kw)
        ref.compact_adam_(p64, _clone(grads, torch.float64), indices, m64, v64, s64, **kw)
    assert all(t.dtype == torch.bfloat16 for t in m + v)
    _assert_close(m, m_ref, rtol=2 ** -7, atol=1e-7)
    _assert_close(v, v_ref, rtol=2 ** -7, atol=1e-9)
    _assert_close(params, p_ref, rtol=1e-4, atol=1e-5)
    err = max((a.double() - b).abs().max().item() for a, b in zip(params, p64))
    err_ref = max((a.double() - b).abs().max().item() for a, b in zip(p_ref, p64))
    assert err <= 2 * err_ref + 1e-6, (err, err_ref)


@pytest.mark.parametrize("p_dtype", [torch.bfloat16, torch.float16])
def test_compact_adam_low_precision_params(p_dtype):
    density = 0.5
    params, indices, m, v, steps = _setup(density, False, p_dtype=p_dtype)
    p_ref, m_ref, v_ref, s_ref = _clone(params), _clone(m), _clone(v), _clone(steps)
    p64 = _clone(params, torch.float64)
    m64, v64, s64 = _clone(m, torch.float64), _clone(v, torch.float64), _clone(steps)
    kw = dict(density=density, chunk_size=CHUNK, lr=0.01)
    for step in range(N_STEPS):
        grads = _grads(step, p_dtype)
        tri.compact_adam_(params, grads, indices, m, v, steps, **kw)
        ref.compact_adam_(p_ref, grads, indices, m_ref, v_ref, s_ref, **kw)
        ref.compact_adam_(p64, _clone(grads, torch.float64), indices, m64, v64, s64, **kw)
    assert all(p.dtype == p_dtype for p in params)
    same = sum((a == b).sum().item() for a, b in zip(params, p_ref))
    assert same >= 0.98 * sum(SIZES)
    err = max((a.double() - b).abs().max().item() for a, b in zip(params, p64))
    err_ref = max((a.double() - b).abs().max().item() for a, b in zip(p_ref, p64))
    assert err <= 2 * err_ref + 1e-6, (err, err_ref)


def test_compact_adam_found_inf_bit_identical():
    for offsets in (False, True):
        params, indices, m, v, steps = _setup(0.3, offsets, m_dtype=torch.bfloat16)
        before = _clone(params + m + v + steps)
        tri.compact_adam_(params, _grads(0, scale=8.0), indices, m, v, steps, density=0.3,
                          chunk_size=CHUNK, lr=0.1, weight_decay=0.1,
                          grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
        after = params + m + v + steps
        assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_compact_adam_dense_steps_and_selection_roundtrip():
    # float64 and float32 step counters in one call go through the gathered-steps path; the
    # indices come from the Triton selection itself.
    density = 0.25
    params = [_randn(n, 7 + i) for i, n in enumerate(SIZES)]
    indices = tri.chunk_select(params, density, CHUNK, chunk_offsets=False)
    m = [torch.zeros(i.numel()) for i in indices]
    v = [torch.zeros(i.numel()) for i in indices]
    steps = [torch.tensor(0.0, dtype=torch.float64)] + [torch.tensor(0.0) for _ in SIZES[1:]]
    p64 = _clone(params, torch.float64)
    m64, v64 = _clone(m, torch.float64), _clone(v, torch.float64)
    s64 = _clone(steps)
    for step in range(N_STEPS):
        grads = _grads(step)
        tri.compact_adam_(params, grads, indices, m, v, steps, density=density,
                          chunk_size=CHUNK, lr=0.01)
        ref.compact_adam_(p64, _clone(grads, torch.float64), indices, m64, v64, s64,
                          density=density, chunk_size=CHUNK, lr=0.01)
    _assert_close(params, p64)
    _assert_close(m, m64)
    assert steps[0].dtype == torch.float64 and steps[0].item() == N_STEPS


def test_compact_adam_rejects_bad_inputs():
    params, indices, m, v, steps = _setup(0.5, False)
    kw = dict(density=0.5, chunk_size=CHUNK, lr=0.01)
    with pytest.raises(TypeError, match="float64"):
        tri.compact_adam_(_clone(params, torch.float64), _clone(_grads(0), torch.float64),
                          indices, m, v, steps, **kw)
    with pytest.raises(TypeError, match="bfloat16"):
        tri.compact_adam_(params, _grads(0), indices, _clone(m, torch.float16), v, steps, **kw)
    with pytest.raises(ValueError, match="indices"):
        tri.compact_adam_(params, _grads(0), [i[:-1] for i in indices], m, v, steps, **kw)
    with pytest.raises(ValueError, match="exp_avgs"):
        tri.compact_adam_(params, _grads(0), indices, m[:1], v, steps, **kw)
    assert all(s.item() == 3 for s in steps)  # nothing advanced on a rejected call
