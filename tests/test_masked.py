"""Masked Adam family: selection, compact step, dense masks, NanoAdam (tiers 1 and 2)."""
import copy
import io

import pytest
import torch

from sparseopt_kernels import functional as F
from sparseopt_kernels.optim import NanoAdam
from sparseopt_kernels.reference import masked as ref

from sparseopt_kernels.testing import assert_close

from conftest import cpu_backends

BACKENDS = cpu_backends()


def sorted_selection(x: torch.Tensor, density: float, chunk: int):
    """Oracle: per chunk, a full stable sort by (|x| as float32, NaN last), first k, ascending."""
    flat = x.detach().reshape(-1).float().abs().tolist()
    out = []
    for start in range(0, len(flat), chunk):
        vals = flat[start:start + chunk]
        k = ref.chunk_k(density, len(vals))
        key = lambda i: (vals[i] != vals[i], vals[i] if vals[i] == vals[i] else 0.0, i)  # noqa
        out += sorted(start + i for i in sorted(range(len(vals)), key=key)[:k])
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("density,chunk", [(0.1, 64), (0.013, 256), (0.5, 7), (1.0, 16),
                                           (0.3, 1000)])
def test_selection_equals_a_sort_based_reference(backend, dtype, density, chunk, use_backend):
    use_backend(backend)
    values = [torch.randn(1000, dtype=torch.float64).to(dtype), torch.randn(3, 7).to(dtype),
              torch.randn(1).to(dtype)]
    values[0][::5] = 0.0                      # ties (zeros)
    values[0][1:40:3] = values[0][2]          # more ties, away from zero
    values[0][7] = float("nan")
    values[0][8] = float("inf")
    for offsets in ((False, True) if chunk <= 32768 else (False,)):
        got = F.chunk_select(values, density, chunk, chunk_offsets=offsets)
        for x, idx in zip(values, got):
            assert idx.dtype == (torch.int16 if offsets else torch.int32)
            flat = ref.global_indices(idx, density, chunk).tolist()
            assert flat == sorted_selection(x, density, chunk)
            assert len(flat) == ref.num_selected(x.numel(), density, chunk)


def test_chunk_k_rounding():
    assert ref.chunk_k(0.1, 4096) == 410 and ref.chunk_k(0.1, 4) == 1
    assert ref.chunk_k(0.29, 100) == 29 and ref.chunk_k(1.0, 9) == 9 and ref.chunk_k(0.5, 0) == 0
    assert ref.num_selected(10_000, 0.1, 4096) == 2 * 410 + 181


def nano_trajectory(backend, use_backend, moments_dtype, offsets, steps=34):
    """Compact steps on float32 params over ``steps`` steps with refreshes every 10 steps and a
    density change at step 20, against the float64 reference using the same selections."""
    use_backend(backend)
    chunk = 128
    params = [torch.randn(40, 13), torch.randn(777)]
    exact = [p.double() for p in params]
    state, state64 = {}, {}
    steps_t = [torch.tensor(0.0) for _ in params]
    steps64 = [torch.tensor(0.0) for _ in params]
    density = 0.1
    for t in range(steps):
        if t == 20:
            density = 0.05
        if t % 10 == 0 or t == 20:
            idx = F.chunk_select(params, density, chunk, chunk_offsets=offsets)
            assert [i.tolist() for i in idx] == [
                i.tolist() for i in ref.chunk_select(params, density, chunk, offsets)]
            for i in range(len(params)):
                for st, dt in ((state, moments_dtype), (state64, torch.float64)):
                    if i in st:
                        old_idx, old_d, m, v = st[i]
                        kw = dict(old_density=old_d, new_density=density, chunk_size=chunk)
                        m = ref.remap_compact_state(old_idx, idx[i], m, **kw)
                        v = ref.remap_compact_state(old_idx, idx[i], v, **kw)
                        # carry-over: kept entries keep their moment, new ones start at 0
                        old = set(ref.global_indices(old_idx, old_d, chunk).tolist())
                        new = ref.global_indices(idx[i], density, chunk).tolist()
                        fresh = torch.tensor([g not in old for g in new])
                        assert bool((m[fresh] == 0).all())
                    else:
                        m = torch.zeros(idx[i].numel(), dtype=dt)
                        v = torch.zeros(idx[i].numel(), dtype=dt)
                    st[i] = (idx[i], density, m, v)
        grads = [torch.randn_like(p) for p in params]
        before = [p.clone() for p in params]
        kw = dict(density=density, chunk_size=chunk, lr=3e-2, beta1=0.8, beta2=0.99, eps=1e-6,
                  weight_decay=0.1, maximize=t % 7 == 3)
        F.compact_adam(params, grads, [state[i][0] for i in range(2)],
                       [state[i][2] for i in range(2)], [state[i][3] for i in range(2)],
                       steps_t, **kw)
        ref.compact_adam_(exact, [g.double() for g in grads], [state64[i][0] for i in range(2)],
                          [state64[i][2] for i in range(2)], [state64[i][3] for i in range(2)],
                          steps64, **kw)
        for i, p in enumerate(params):
            sel = torch.zeros(p.numel(), dtype=torch.bool)
            sel[ref.global_indices(state[i][0], density, chunk)] = True
            assert torch.equal(p.view(-1)[~sel], before[i].view(-1)[~sel])  # untouched
    return params, exact


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offsets", [False, True])
def test_compact_adam_trajectory_matches_float64_reference(backend, offsets, use_backend):
    params, exact = nano_trajectory(backend, use_backend, torch.float32, offsets)
    for p, e in zip(params, exact):
        assert_close(p, e, rtol=5e-5, atol=5e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_adam_bf16_moments(backend, use_backend):
    params, exact = nano_trajectory(backend, use_backend, torch.bfloat16, True, steps=12)
    for p, e in zip(params, exact):
        assert_close(p, e, rtol=2e-2, atol=2e-3)  # bf16 moments: ~3 significant digits


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_adam_found_inf_and_grad_scale(backend, use_backend):
    use_backend(backend)
    p = [torch.randn(300)]
    idx = F.chunk_select(p, 0.2, 64)
    m, v = [torch.rand(idx[0].numel())], [torch.rand(idx[0].numel())]
    s = [torch.tensor(4.0)]
    before = copy.deepcopy((p, m, v, s))
    g = [torch.randn(300) * 64]
    F.compact_adam(p, g, idx, m, v, s, density=0.2, chunk_size=64, lr=1e-2,
                   grad_scale=torch.tensor(64.0), found_inf=torch.tensor(1.0))
    for a, b in zip(p + m + v + s, sum(map(list, before), [])):
        assert torch.equal(a, b)
    F.compact_adam(p, g, idx, m, v, s, density=0.2, chunk_size=64, lr=torch.tensor(1e-2),
                   grad_scale=torch.tensor(64.0))
    exact = [before[0][0].double()]
    ref.compact_adam_(exact, [g[0].double() / 64], idx, [before[1][0].double()],
                      [before[2][0].double()], [torch.tensor(4.0)], density=0.2, chunk_size=64,
                      lr=1e-2)
    assert_close(p[0], exact[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_dense_mask_steps(backend, packed, use_backend):
    """Masked-out entries (param and every state) stay bit-identical; the others equal the
    unmasked step; pruned zeros stay exactly zero, composed with the mirror step."""
    use_backend(backend)
    shapes = [(37, 5), (1000,), (3,)]
    params = [torch.randn(s) for s in shapes]
    dense = [torch.rand(s) < 0.6 for s in shapes]
    for p, d in zip(params, dense):
        p[~d] = 0.0  # pruned
    masks = [torch.from_numpy(__import__("numpy").packbits(d.reshape(-1).numpy(),
                                                            bitorder="little"))
             for d in dense] if packed else dense
    grads = [torch.randn(s) for s in shapes]
    mirror = dict(alpha=30.0, beta=1e-2, clamp=5.0)

    def run(op, masked):
        ps = [p.clone() for p in params]
        st = [[torch.rand(s) for s in shapes] for _ in range(3)]
        steps = [torch.tensor(2.0) for _ in shapes]
        st0 = copy.deepcopy(st)
        kw = dict(masks=masks) if masked else {}
        if op == "adam":
            F.ham_adam(ps, grads, st[0], st[1], st[2], steps, lr=1e-2, amsgrad=True,
                       weight_decay=0.1, decoupled_weight_decay=True, **mirror, **kw)
        elif op == "sgd":
            F.ham_sgd(ps, grads, st[0], lr=0.1, momentum=0.9, weight_decay=1e-2, **mirror, **kw)
        else:
            F.mirror_step(ps, grads, lr=0.1, **mirror, **kw)
        return ps, st, st0

    for op in ("adam", "sgd", "mirror"):
        torch.manual_seed(1)
        ps, st, st0 = run(op, masked=True)
        torch.manual_seed(1)
        ups, ust, _ = run(op, masked=False)
        n_state = {"adam": 3, "sgd": 1, "mirror": 0}[op]
        for i, d in enumerate(dense):
            assert torch.equal(ps[i][~d], params[i][~d]), (op, i)
            assert torch.equal(ps[i][~d], torch.zeros_like(ps[i][~d]))
            assert torch.equal(ps[i][d], ups[i][d]), (op, i)
            for k in range(n_state):
                assert torch.equal(st[k][i][~d], st0[k][i][~d]), (op, k, i)
                assert torch.equal(st[k][i][d], ust[k][i][d]), (op, k, i)


def make_model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(20, 40), torch.nn.Tanh(),
                               torch.nn.Linear(40, 5))


def train(model, opt, steps, seed=4):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 20, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.id != "triton"])
def test_nanoadam_state_dict_round_trip_across_refresh_and_density_change(backend,
                                                                          use_backend):
    use_backend(backend)
    kw = dict(lr=1e-2, density=0.2, final_density=0.1, density_interval=6, mask_interval=5,
              chunk_size=64, weight_decay=0.01)
    model = make_model()
    opt = NanoAdam(model.parameters(), **kw)
    train(model, opt, 8)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    twin = copy.deepcopy(model)
    buf.seek(0)
    opt2 = NanoAdam(twin.parameters(), **kw)
    opt2.load_state_dict(torch.load(buf, weights_only=False))
    train(model, opt, 14, seed=5)  # crosses refreshes at 10, 15, 20 and density changes
    train(twin, opt2, 14, seed=5)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    st = opt2.state[twin[0].weight]
    assert st["indices"].dtype == torch.int16 and st["exp_avg"].dtype == torch.float32
    assert st["density"] == NanoAdam.density_at(opt2.param_groups[0], 21)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.id != "triton"])
def test_nanoadam_density_one_group_equals_torch_adam(backend, use_backend):
    use_backend(backend)
    model, twin = make_model(), make_model()
    ours = NanoAdam([{"params": model[0].parameters(), "density": 1.0},
                     {"params": model[2].parameters()}], lr=1e-2, density=0.1, chunk_size=32)
    head_w = model[2].weight.detach().clone()
    theirs = torch.optim.Adam(twin[0].parameters(), lr=1e-2)
    twin_head = NanoAdam(twin[2].parameters(), lr=1e-2, density=0.1, chunk_size=32)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(16, 20, generator=gen)
        for m, opts in ((model, (ours,)), (twin, (theirs, twin_head))):
            for o in opts:
                o.zero_grad()
            m(x).pow(2).mean().backward()
            for o in opts:
                o.step()
        for a, b in zip(model[0].parameters(), twin[0].parameters()):
            assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the masked head updated only a small fraction of its weights; its bias fully
    changed = (model[2].weight != head_w).float().mean().item()
    assert 0.0 < changed <= 0.5


def test_nanoadam_memory_at_density_0_1_is_at_most_0_15_of_adam():
    shapes = [(1024, 1024), (4096, 512)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    adam = torch.optim.Adam(params, lr=1e-3)
    adam.step()
    nano = NanoAdam(params, lr=1e-3, density=0.1)
    nano.step()

    def state_bytes(opt):
        return sum(t.numel() * t.element_size() for st in opt.state.values()
                   for t in st.values() if isinstance(t, torch.Tensor))

    ratio = state_bytes(nano) / state_bytes(adam)
    assert ratio <= 0.15, ratio
    bf16 = NanoAdam(params, lr=1e-3, density=0.1, moments_dtype=torch.bfloat16)
    bf16.step()
    assert state_bytes(bf16) / state_bytes(adam) <= 0.08


@pytest.mark.parametrize("kw,exc,match", [
    (dict(density=0.0), ValueError, "density"), (dict(density=1.5), ValueError, "density"),
    (dict(chunk_size=0), ValueError, "chunk_size"), (dict(chunk_size=2.5), TypeError,
                                                     "chunk_size"),
    (dict(chunk_size=65536), ValueError, "chunk_offsets"),
    (dict(final_density=0.05), ValueError, "density_interval"),
    (dict(mask_interval=0), ValueError, "mask_interval"),
    (dict(moments_dtype=torch.float16), ValueError, "moments_dtype")])
def test_nanoadam_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        NanoAdam(make_model().parameters(), **kw)


def test_bad_masks_and_selection_arguments_modify_nothing():
    p = [torch.randn(10, 3), torch.randn(5)]
    g = [torch.randn(10, 3), torch.randn(5)]
    before = [t.clone() for t in p]
    bad = [
        ([torch.ones(10, 3, dtype=torch.bool), torch.ones(4, dtype=torch.bool)], ValueError,
         r"masks\[1\] has shape"),
        ([torch.ones(10, 3, dtype=torch.bool)], ValueError, "masks has 1"),
        ([torch.ones(10, 3), torch.ones(5)], TypeError, "masks\\[0\\] has dtype"),
        ([torch.ones(3, dtype=torch.uint8), torch.ones(1, dtype=torch.uint8)], ValueError,
         "bit-packed"),
        ([torch.ones(10, 3, dtype=torch.bool), torch.ones(5, dtype=torch.bool, device="meta")],
         ValueError, "masks\\[1\\] is on"),
    ]
    for masks, exc, match in bad:
        with pytest.raises(exc, match=match):
            F.mirror_step(p, g, lr=0.1, masks=masks)
        assert all(torch.equal(a, b) for a, b in zip(p, before))
    with pytest.raises(ValueError, match="density"):
        F.chunk_select(p, 0.0, 16)
    with pytest.raises(ValueError, match="chunk_size"):
        F.chunk_select(p, 0.1, 0)
    idx = F.chunk_select(p, 0.1, 16)
    m = [torch.zeros(i.numel()) for i in idx]
    with pytest.raises(ValueError, match=r"indices\[0\]"):
        F.compact_adam(p, g, [idx[0][:-1], idx[1]], m, m, [torch.tensor(0.0)] * 2,
                       density=0.1, chunk_size=16, lr=0.1)
    with pytest.raises(ValueError, match=r"exp_avgs\[1\]"):
        F.compact_adam(p, g, idx, [m[0], torch.zeros(9)], m, [torch.tensor(0.0)] * 2,
                       density=0.1, chunk_size=16, lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(p, before))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.id != "triton"])
def test_opcheck_masked_ops(backend, use_backend):
    from torch.library import opcheck
    use_backend(backend)
    p = [torch.randn(300), torch.randn(4, 9)]
    opcheck(torch.ops.sparseopt.chunk_select.default, (p, 0.1, 64, True))
    idx = ref.chunk_select(p, 0.1, 64, True)
    m = [torch.rand(i.numel()) for i in idx]
    v = [torch.rand(i.numel()) for i in idx]
    opcheck(torch.ops.sparseopt.compact_adam_.default,
            (p, [torch.randn_like(x) for x in p], idx, m, v, [torch.tensor(1.0)] * 2),
            dict(density=0.1, chunk_size=64, lr=1e-2, weight_decay=0.1))
    masks = [torch.rand(x.shape) < 0.5 for x in p]
    opcheck(torch.ops.sparseopt.mirror_step_.default, (p, [torch.randn_like(x) for x in p]),
            dict(lr=0.1, alpha=5.0, masks=masks))

