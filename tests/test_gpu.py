"""Tier 4: everything on CUDA, for the CUDA C++ and the Triton backends (skipped without a GPU)."""
import copy
import itertools

import pytest
import torch

from sparseopt_kernels import backends
from sparseopt_kernels.optim import HAM, HORST
from sparseopt_kernels.reference import mirror as ref
from sparseopt_kernels.testing import assert_close, assert_within_reference_error

from test_ops_parity import ADAM_CONFIGS, MIRRORS, SGD_CONFIGS

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def gpu_backends():
    out = []
    for name in ("cuda", "triton"):
        reason = backends.unavailable(name, "cuda", torch.float32)
        out.append(pytest.param(name, marks=[pytest.mark.skip(reason=reason)] if reason else [],
                                id=name))
    return out


BACKENDS = gpu_backends()
# sizes that exercise vector bodies, scalar tails, one-element tensors and several chunks
SHAPES = [(1,), (7,), (4099,), (300, 257), (70_001,)]


def tensors(dtype, n_state, state_dtype=torch.float32, shapes=SHAPES, offset=0):
    """CUDA tensors; ``offset`` > 0 makes every pointer misaligned for 16-byte accesses."""
    def make(shape, dt, positive=False):
        numel = int(torch.tensor(shape).prod()) + offset
        base = torch.randn(numel, device="cuda", dtype=torch.float64)
        base = base.abs() if positive else base
        return base.to(dt)[offset:].view(shape)

    params = [make(s, dtype) for s in shapes]
    params[0].view(-1)[::3] = 0
    grads = [make(s, dtype) for s in shapes]
    states = [[make(s, state_dtype, positive=True) for s in shapes] for _ in range(n_state)]
    return params, grads, states


def as64(ts):
    return [t.detach().double().cpu().clone() for t in ts]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("cfg,mirror", list(itertools.product(ADAM_CONFIGS, MIRRORS)))
def test_ham_adam_on_cuda(backend, offset, cfg, mirror, use_backend):
    use_backend(backend)
    params, grads, (m, v, vmax) = tensors(torch.float32, 3, offset=offset)
    steps = [torch.tensor(float(k), device="cuda") for k in range(len(params))]
    p64, m64, v64, vmax64 = as64(params), as64(m), as64(v), as64(vmax)
    steps64 = [s.double().cpu() for s in steps]
    amsgrad = cfg.get("amsgrad", False)
    for it in range(3):
        grads = [torch.randn_like(p) for p in params]
        kw = dict(lr=1e-2 * (it + 1), beta1=0.8, beta2=0.95, eps=1e-6, **cfg, **mirror)
        lr_tensor = torch.tensor(kw["lr"], device="cuda") if it == 1 else None
        torch.ops.sparseopt.ham_adam_(params, grads, m, v, vmax if amsgrad else [], steps,
                                      lr_tensor=lr_tensor, **kw)
        ref.ham_adam_(p64, as64(grads), m64, v64, vmax64 if amsgrad else [], steps64, **kw)
    for name, ours, theirs in (("param", params, p64), ("exp_avg", m, m64),
                               ("exp_avg_sq", v, v64)):
        for i, (a, e) in enumerate(zip(ours, theirs)):
            assert_close(a.cpu(), e, rtol=5e-5, atol=5e-6, msg=f"{backend} {name}[{i}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg,mirror", list(itertools.product(SGD_CONFIGS, MIRRORS)))
def test_ham_sgd_and_mirror_step_on_cuda(backend, cfg, mirror, use_backend):
    use_backend(backend)
    params, grads, (bufs,) = tensors(torch.float32, 1)
    p64, b64 = as64(params), as64(bufs)
    momentum = cfg.get("momentum", 0.0)
    for it in range(3):
        grads = [torch.randn_like(p) for p in params]
        kw = dict(lr=0.05, **mirror, **cfg)
        kw["is_first_step"] = cfg.get("is_first_step", False) and it == 0
        torch.ops.sparseopt.ham_sgd_(params, grads, bufs if momentum else [], **kw)
        ref.ham_sgd_(p64, as64(grads), b64 if momentum else [], **kw)
    if mirror["alpha"]:
        g = [torch.randn_like(p) for p in params]
        kw = dict(lr=0.1, maximize=True, **mirror)
        torch.ops.sparseopt.mirror_step_(params, g, **kw)
        ref.mirror_step_(p64, as64(g), **kw)
    for i, (a, e) in enumerate(zip(params, p64)):
        assert_close(a.cpu(), e, rtol=5e-5, atol=5e-6, msg=f"{backend} param[{i}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state", ["float32", "param"])
def test_low_precision_on_cuda(backend, dtype, state, use_backend):
    use_backend(backend)
    state_dtype = torch.float32 if state == "float32" else dtype
    params, grads, (m, v) = tensors(dtype, 2, state_dtype=state_dtype)
    kw = dict(lr=1e-2, alpha=50.0, beta=1e-2, clamp=5.0, decoupled_weight_decay=True,
              weight_decay=0.1)
    exact_p = as64(params)
    same_p = [t.clone() for t in params]
    ref.ham_adam_(exact_p, as64(grads), as64(m), as64(v), [],
                  [torch.tensor(0.0) for _ in params], **kw)
    ref.ham_adam_(same_p, grads, [t.clone() for t in m], [t.clone() for t in v], [],
                  [torch.tensor(0.0, device="cuda") for _ in params], **kw)
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, [],
                                  [torch.tensor(0.0, device="cuda") for _ in params], **kw)
    for i in range(len(params)):
        assert_within_reference_error(params[i].cpu(), same_p[i].cpu(), exact_p[i],
                                      msg=f"param[{i}]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_found_inf_and_many_tensors_on_cuda(backend, use_backend):
    """1000 tensors (several launches of the multi-tensor launcher); found_inf changes nothing."""
    use_backend(backend)
    params, grads, (m, v) = tensors(torch.float32, 2, shapes=[(10_000,)] * 1000)
    steps = [torch.tensor(1.0, device="cuda") for _ in params]
    before = copy.deepcopy((params, m, v, steps))
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, [], steps, lr=1e-2, alpha=10.0,
                                  grad_scale=torch.tensor(2.0, device="cuda"),
                                  found_inf=torch.tensor(1.0, device="cuda"))
    for a, b in zip(params + m + v + steps, sum(map(list, before), [])):
        assert torch.equal(a, b)
    p64 = as64(params)
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, [], steps, lr=1e-2, alpha=10.0,
                                  beta=1e-3)
    ref.ham_adam_(p64, as64(grads), as64(before[1]), as64(before[2]), [],
                  [s.double().cpu() for s in before[3]], lr=1e-2, alpha=10.0, beta=1e-3)
    for i in (0, 508, 509, 999):  # both sides of a launch boundary
        assert_close(params[i].cpu(), p64[i], rtol=2e-5, atol=2e-6)
    assert all(s.item() == 2.0 for s in steps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [
    lambda ps: HAM(torch.optim.AdamW(ps, lr=1e-2, fused=True), alpha=0.0, beta=0.0),
    lambda ps: HAM(torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), alpha=0, beta=0),
    lambda ps: HORST(ps, lr=1e-2, alpha=0.0, beta=0.0, amsgrad=True),
], ids=["ham-adamw", "ham-sgd", "horst"])
def test_optimizers_reproduce_torch_on_cuda(backend, make, use_backend):
    use_backend(backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 8)).cuda()
    twin = copy.deepcopy(model)
    ours = make(model.parameters())
    base = ours.optimizer if isinstance(ours, HAM) else None
    if base is not None:
        theirs = type(base)(twin.parameters(), **{k: v for k, v in base.defaults.items()})
    else:
        theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2, amsgrad=True, fused=True)
    for _ in range(20):
        x = torch.randn(32, 64, device="cuda")
        for mdl, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            mdl(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert_close(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_and_cuda_graph_capture(backend, use_backend):
    """A HAM-AdamW step with device lr, grad_scale and found_inf captured in a CUDA graph and
    replayed equals the eager step."""
    use_backend(backend)
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 256).cuda()
    twin = copy.deepcopy(model)
    make = lambda ps: HAM(torch.optim.AdamW(ps, lr=torch.tensor(1e-2, device="cuda"),  # noqa
                                            capturable=True), alpha=5000.0, beta=1e-3)
    opt, eager = make(model.parameters()), make(twin.parameters())
    x = torch.randn(64, 256, device="cuda")
    for mdl in (model, twin):
        mdl(x).pow(2).mean().backward()
    opt.grad_scale = torch.tensor(1.0, device="cuda")
    opt.found_inf = torch.tensor(0.0, device="cuda")
    opt.step()  # warm-up outside the capture (state, tables)
    eager.step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert_close(a, b, rtol=1e-6, atol=1e-7)
    opt.found_inf.fill_(1.0)
    before = [p.clone() for p in model.parameters()]
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


# --- masked Adam family on CUDA ------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("density,chunk,offsets", [(0.1, 4096, True), (0.01, 4096, False),
                                                   (0.3, 1000, True), (1.0, 64, False)])
def test_chunk_select_on_cuda(backend, dtype, density, chunk, offsets, use_backend):
    from sparseopt_kernels import functional as F
    from sparseopt_kernels.reference import masked as mref
    use_backend(backend)
    values = [torch.randn(1_000_003, device="cuda").to(dtype), torch.randn(77, 3,
                                                                          device="cuda").to(dtype)]
    values[0][::97] = 0.0
    values[0][5] = float("nan")
    got = F.chunk_select(values, density, chunk, chunk_offsets=offsets)
    want = mref.chunk_select([v.cpu() for v in values], density, chunk, offsets)
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("moments", [torch.float32, torch.bfloat16])
def test_compact_adam_on_cuda(backend, moments, use_backend):
    from sparseopt_kernels import functional as F
    from sparseopt_kernels.reference import masked as mref
    use_backend(backend)
    params = [torch.randn(300, 257, device="cuda"), torch.randn(10_001, device="cuda")]
    idx = F.chunk_select(params, 0.1, 4096, chunk_offsets=True)
    m = [torch.rand(i.numel(), device="cuda").to(moments) for i in idx]
    v = [torch.rand(i.numel(), device="cuda").to(moments) for i in idx]
    steps = [torch.tensor(3.0, device="cuda") for _ in params]
    exact = [p.double().cpu() for p in params]
    m64, v64 = [t.double().cpu() for t in m], [t.double().cpu() for t in v]
    steps64 = [torch.tensor(3.0) for _ in params]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        kw = dict(density=0.1, chunk_size=4096, lr=1e-2, weight_decay=0.1)
        F.compact_adam(params, grads, idx, m, v, steps, **kw)
        mref.compact_adam_(exact, [g.double().cpu() for g in grads], [i.cpu() for i in idx],
                           m64, v64, steps64, **kw)
    tol = dict(rtol=5e-5, atol=5e-6) if moments == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for p, e in zip(params, exact):
        assert_close(p.cpu(), e, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_dense_mask_adam_on_cuda(backend, packed, use_backend):
    use_backend(backend)
    params, grads, (m, v) = tensors(torch.float32, 2)
    dense = [torch.rand(p.shape, device="cuda") < 0.5 for p in params]
    if packed:
        masks = []
        for d in dense:
            bits = torch.nn.functional.pad(d.reshape(-1), (0, (-d.numel()) % 8)).view(-1, 8)
            weights = 2 ** torch.arange(8, device="cuda")
            masks.append((bits.to(torch.int64) * weights).sum(1).to(torch.uint8))
    else:
        masks = dense
    before = copy.deepcopy((params, m, v))
    steps = [torch.tensor(1.0, device="cuda") for _ in params]
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, [], steps, lr=1e-2, alpha=50.0,
                                  beta=1e-3, clamp=5.0, masks=masks)
    unmasked = copy.deepcopy(before)
    torch.ops.sparseopt.ham_adam_(unmasked[0], grads, unmasked[1], unmasked[2], [],
                                  [torch.tensor(1.0, device="cuda") for _ in params], lr=1e-2,
                                  alpha=50.0, beta=1e-3, clamp=5.0)
    for k in range(3):
        for i, d in enumerate(dense):
            got = (params, m, v)[k][i]
            assert torch.equal(got[~d], before[k][i][~d])
            assert torch.equal(got[d], unmasked[k][i][d])


# --- SparseOpt BN-skew correction ----------------------------------------------------------------

def _masks_like(shapes, density=0.4, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    masks = [torch.rand(s, generator=gen, device="cuda") < density for s in shapes]
    masks[0].view(masks[0].shape[0], -1)[0] = False  # an empty row
    masks[-1].view(masks[-1].shape[0], -1)[-1] = True  # a full row
    return masks


SKEW_SHAPES = [(5, 3), (64, 3, 3, 3), (300, 257), (7, 70_001), (2, 1)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_coefficients_and_row_scale_on_cuda(backend, use_backend):
    from sparseopt_kernels.reference import skew as ref_skew
    use_backend(backend)
    masks = _masks_like(SKEW_SHAPES) + [torch.zeros(4, 9, dtype=torch.bool, device="cuda")]
    out = [torch.full((m.shape[0],), float("nan"), device="cuda") for m in masks]
    torch.ops.sparseopt.row_coefficients_(masks, out)
    expected = [torch.empty(m.shape[0]) for m in masks]
    ref_skew.row_coefficients_([m.cpu() for m in masks], expected)
    for o, e in zip(out, expected):
        assert torch.equal(o.cpu(), e)  # bit for bit
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        xs = [torch.randn(m.shape, device="cuda").to(dtype) for m in masks[:-1]]
        want = [x.cpu() for x in xs]
        ref_skew.row_scale_(want, [o.cpu() for o in out[:-1]], masks=[m.cpu() for m in masks[:-1]])
        torch.ops.sparseopt.row_scale_(xs, out[:-1], masks=masks[:-1])
        for x, w in zip(xs, want):
            assert torch.equal(x.cpu(), w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
def test_row_scaled_steps_on_cuda(backend, masked, use_backend):
    use_backend(backend)
    shapes = SKEW_SHAPES
    params, grads, (m, v, buf) = tensors(torch.float32, 3, shapes=shapes)
    masks = _masks_like(shapes) if masked else None
    scales = [torch.rand(s[0], device="cuda") * 3 for s in shapes]
    steps = [torch.zeros((), device="cuda") for _ in shapes]
    p64, m64, v64, buf64 = as64(params), as64(m), as64(v), as64(buf)
    cpu = dict(masks=[k.cpu() for k in masks] if masked else None,
               row_scales=[s.cpu() for s in scales])
    torch.ops.sparseopt.ham_adam_(params, grads, m, v, [], steps, lr=1e-2, weight_decay=0.1,
                                  decoupled_weight_decay=True, alpha=30.0, beta=1e-2,
                                  clamp=5.0, masks=masks, row_scales=scales)
    ref.ham_adam_(p64, as64(grads), m64, v64, [], [torch.zeros((), dtype=torch.float64)
                                                    for _ in shapes],
                  lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, alpha=30.0, beta=1e-2,
                  clamp=5.0, **cpu)
    for a, e in zip(params + m + v, p64 + m64 + v64):
        assert_close(a.double().cpu(), e, rtol=1e-5, atol=1e-6)
    params2 = [p.clone() for p in params]
    torch.ops.sparseopt.ham_sgd_(params2, grads, buf, lr=0.1, momentum=0.9, weight_decay=1e-3,
                                 alpha=2.0, masks=masks, row_scales=scales)
    p64b = as64(params)
    ref.ham_sgd_(p64b, as64(grads), buf64, lr=0.1, momentum=0.9, weight_decay=1e-3, alpha=2.0,
                 **cpu)
    for a, e in zip(params2 + buf, p64b + buf64):
        assert_close(a.double().cpu(), e, rtol=1e-5, atol=1e-6)
    if masked:
        for p, k, before in zip(params2, masks, params):
            assert torch.equal(p[~k], before[~k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparseopt_with_rigl_on_cuda(backend, use_backend):
    from sparseopt_kernels.optim import SparseOpt
    from sparseopt_kernels.sparse import RigL, SparseMasks
    use_backend(backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128, bias=False), torch.nn.BatchNorm1d(128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10)).cuda()
    masks = SparseMasks(model, density=0.2, seed=0)
    masks.apply()
    opt = SparseOpt(torch.optim.AdamW(model.parameters(), lr=1e-2), masks)
    rigl = RigL(masks, opt, delta_t=2, drop_fraction=0.3)
    x, y = torch.randn(256, 64, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    for _ in range(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        rigl.step()
        for p, k in masks:
            assert torch.equal(p[~k], torch.zeros_like(p[~k]))
            assert int(k.sum()) == masks.n_active[masks.index(p)]


# --- block-sparse matmuls -------------------------------------------------------------------------

def _block_case(b, kind, M, dtype, gen_seed=0):
    from sparseopt_kernels.sparse import BlockLayout
    gen = torch.Generator().manual_seed(gen_seed)
    out_f, in_f = 4 * b, 3 * b
    R, C = 4, 3
    ids = {"random": torch.randperm(R * C, generator=gen)[:5], "single": torch.tensor([7]),
           "full-row": torch.arange(C, 2 * C), "all": torch.arange(R * C)}[kind]
    L = BlockLayout(out_f, in_f, b, ids.cuda())
    values = torch.randn(L.nnz, b, b, generator=gen).to("cuda", dtype)
    x = torch.randn(M, in_f, generator=gen).to("cuda", dtype)
    dy = torch.randn(M, out_f, generator=gen).to("cuda", dtype)
    return L, values, x, dy


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True),
                                        (torch.float16, False), (torch.bfloat16, False)])
@pytest.mark.parametrize("b", [16, 32, 64, 128])
@pytest.mark.parametrize("kind", ["random", "single", "full-row", "all"])
def test_block_sparse_ops_on_cuda(backend, dtype, tf32, b, kind, use_backend):
    from sparseopt_kernels.reference import block_sparse as ref_bs
    use_backend(backend)
    M = 300  # not a multiple of any row tile
    L, values, x, dy = _block_case(b, kind, M, dtype)
    W = ref_bs.dense_weight(values.double(), L.row_indices, L.col_indices, 4, 3)
    # TF32 keeps 10 mantissa bits; half types round the inputs' products' output
    tol = {torch.float32: 2e-2 if tf32 else 1e-4, torch.float16: 1e-2,
           torch.bfloat16: 6e-2}[dtype]
    y = torch.ops.sparseopt.dds(x, values, L.row_offsets, L.col_indices, allow_tf32=tf32)
    dx = torch.ops.sparseopt.dsd(dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids,
                                 allow_tf32=tf32)
    dw = torch.ops.sparseopt.sdd(dy, x, L.row_indices, L.col_indices, b, allow_tf32=tf32)
    mask = L.dense_mask()
    for actual, expected in ((y, x.double() @ W.t()), (dx, dy.double() @ W),
                             (ref_bs.dense_weight(dw.double(), L.row_indices, L.col_indices,
                                                  4, 3), (dy.double().t() @ x.double()) * mask)):
        scale = expected.abs().max().clamp(min=1)
        assert (actual.double() - expected).abs().max() <= tol * scale
    assert torch.equal(y[:, ~mask.any(1)], torch.zeros_like(y[:, ~mask.any(1)]))
    assert torch.equal(dx[:, ~mask.any(0)], torch.zeros_like(dx[:, ~mask.any(0)]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_sparse_layer_and_rigl_on_cuda(backend, use_backend):
    from sparseopt_kernels.sparse import BlockRigL, BlockSparseLinear
    use_backend(backend)
    torch.manual_seed(0)
    layer = BlockSparseLinear(256, 128, block_size=32, density=0.25, device="cuda",
                              dtype=torch.bfloat16)
    x = torch.randn(4, 50, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    yd = torch.nn.functional.linear(x.float(), layer.to_dense().float(), layer.bias.float())
    assert (y.float() - yd).abs().max() <= 3e-2 * yd.abs().max()
    opt = HAM(torch.optim.AdamW(layer.parameters(), lr=1e-3), alpha=5.0, beta=1e-2)
    sched = BlockRigL(layer, opt, delta_t=2, drop_fraction=0.5)
    for _ in range(4):
        opt.zero_grad()
        layer(x).float().square().mean().backward()
        opt.step()
        sched.step()
    assert sched.updates == 2 and layer.nnz == 8
    assert layer.block_ids.unique().numel() == 8
