"""Block-sparse matmuls (dds/dsd/sdd), BlockSparseLinear and the block DST schedulers, against
the dense masked computation, on the CPU backends (reference, C++). Triton's kernels are checked
in the interpreter in test_triton_block_sparse.py; CUDA in test_gpu.py."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from sparseopt_kernels import backends
from sparseopt_kernels.optim import HAM
from sparseopt_kernels.reference.block_sparse import dense_weight
from sparseopt_kernels.sparse import BlockLayout, BlockRigL, BlockSET, BlockSparseLinear
from sparseopt_kernels.sparse.layout import build_indices
from sparseopt_kernels.sparse.linear import BlockSparseLinearFunction

from conftest import cpu_backends

BACKENDS = [b for b in cpu_backends() if b.id != "triton"]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _layout(kind, out_f, in_f, b, gen):
    R, C = out_f // b, in_f // b
    if kind == "random":
        return BlockLayout.random(out_f, in_f, b, max(1, R * C // 3), generator=gen)
    if kind == "single":
        return BlockLayout(out_f, in_f, b, torch.tensor([R * C - 1]))
    if kind == "full-row-empty-rows":  # block-row 1 full, rows 0 and R-1 empty
        return BlockLayout(out_f, in_f, b, torch.arange(C, 2 * C))
    if kind == "all":
        return BlockLayout(out_f, in_f, b, torch.arange(R * C))
    raise ValueError(kind)


LAYOUTS = ["random", "single", "full-row-empty-rows", "all"]


def _close(actual, expected, dtype):
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected).abs().max().item()
    assert err <= TOL[dtype] * scale * 4, f"max error {err:.3g} (scale {scale:.3g}) for {dtype}"


# --- the ops ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("b", [16, 32])
def test_ops_match_dense_masked(backend, dtype, kind, b, use_backend):
    use_backend(backend)
    gen = torch.Generator().manual_seed(1)
    out_f, in_f, M = 3 * b, 4 * b, 37
    L = _layout(kind, out_f, in_f, b, gen)
    values = torch.randn(L.nnz, b, b, generator=gen).to(dtype)
    x = torch.randn(M, in_f, generator=gen).to(dtype)
    dy = torch.randn(M, out_f, generator=gen).to(dtype)
    W = dense_weight(values.double(), L.row_indices, L.col_indices, out_f // b, in_f // b)
    mask = L.dense_mask()

    y = torch.ops.sparseopt.dds(x, values, L.row_offsets, L.col_indices)
    assert y.dtype == dtype and y.shape == (M, out_f)
    _close(y, x.double() @ W.t(), dtype)
    empty_rows = ~mask.any(1)
    assert torch.equal(y[:, empty_rows], torch.zeros_like(y[:, empty_rows]))

    dx = torch.ops.sparseopt.dsd(dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids)
    assert dx.dtype == dtype and dx.shape == (M, in_f)
    _close(dx, dy.double() @ W, dtype)
    empty_cols = ~mask.any(0)
    assert torch.equal(dx[:, empty_cols], torch.zeros_like(dx[:, empty_cols]))

    dw = torch.ops.sparseopt.sdd(dy, x, L.row_indices, L.col_indices, b)
    assert dw.dtype == dtype and dw.shape == values.shape
    full = (dy.double().t() @ x.double()) * mask
    _close(dense_weight(dw.double(), L.row_indices, L.col_indices, out_f // b, in_f // b), full,
           dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_take_non_contiguous_inputs_and_block_64_128(backend, use_backend):
    use_backend(backend)
    gen = torch.Generator().manual_seed(2)
    for b in (64, 128):
        L = BlockLayout.random(2 * b, 2 * b, b, 2, generator=gen)
        values = torch.randn(2, b, b, generator=gen).transpose(1, 2)  # non-contiguous
        x = torch.randn(2 * b, 9, generator=gen).t()                  # 9 × 2b, transposed
        dy = torch.randn(9, 4 * b, generator=gen)[:, ::2]              # strided columns
        W = dense_weight(values.double(), L.row_indices, L.col_indices, 2, 2)
        _close(torch.ops.sparseopt.dds(x, values, L.row_offsets, L.col_indices),
               x.double() @ W.t(), torch.float32)
        _close(torch.ops.sparseopt.dsd(dy, values, L.col_offsets, L.t_row_indices,
                                       L.t_block_ids), dy.double() @ W, torch.float32)
        dw = torch.ops.sparseopt.sdd(dy, x, L.row_indices, L.col_indices, b)
        _close(dense_weight(dw.double(), L.row_indices, L.col_indices, 2, 2),
               (dy.double().t() @ x.double()) * L.dense_mask(), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_with_no_rows(backend, use_backend):
    use_backend(backend)
    L = BlockLayout.random(32, 48, 16, 2)
    values = torch.randn(2, 16, 16)
    assert torch.ops.sparseopt.dds(torch.randn(0, 48), values, L.row_offsets,
                                   L.col_indices).shape == (0, 32)
    assert torch.ops.sparseopt.dsd(torch.randn(0, 32), values, L.col_offsets, L.t_row_indices,
                                   L.t_block_ids).shape == (0, 48)
    dw = torch.ops.sparseopt.sdd(torch.randn(0, 32), torch.randn(0, 48), L.row_indices,
                                 L.col_indices, 16)
    assert torch.equal(dw, torch.zeros(2, 16, 16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, use_backend):
    use_backend(backend)
    L = BlockLayout.random(32, 48, 16, 3)
    values, x, dy = torch.randn(3, 16, 16), torch.randn(5, 48), torch.randn(5, 32)
    opcheck(torch.ops.sparseopt.dds.default, (x, values, L.row_offsets, L.col_indices))
    opcheck(torch.ops.sparseopt.dsd.default,
            (dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids))
    opcheck(torch.ops.sparseopt.sdd.default, (dy, x, L.row_indices, L.col_indices, 16))


def test_ops_alone_refuse_to_differentiate():
    L = BlockLayout.random(32, 48, 16, 3)
    x = torch.randn(5, 48, requires_grad=True)
    y = torch.ops.sparseopt.dds(x, torch.randn(3, 16, 16), L.row_offsets, L.col_indices)
    with pytest.raises(RuntimeError, match="BlockSparseLinear"):
        y.sum().backward()


# --- the layout -----------------------------------------------------------------------------------

def test_layout_indices_match_the_block_mask():
    gen = torch.Generator().manual_seed(3)
    R, C = 5, 7
    ids = torch.randperm(R * C, generator=gen)[:12]
    idx = build_indices(ids, R, C)
    mask = torch.zeros(R * C, dtype=torch.bool)
    mask[ids] = True
    mask = mask.view(R, C)
    rows, cols = mask.nonzero(as_tuple=True)  # row-major order
    assert idx["row_indices"].tolist() == rows.tolist()
    assert idx["col_indices"].tolist() == cols.tolist()
    assert idx["row_offsets"].tolist() == [0] + mask.sum(1).cumsum(0).tolist()
    assert idx["col_offsets"].tolist() == [0] + mask.sum(0).cumsum(0).tolist()
    t_rows, t_cols = mask.t().nonzero(as_tuple=True)  # column-major: (col, row) pairs
    assert idx["t_row_indices"].tolist() == t_cols.tolist()
    csr_pos = {(r, c): k for k, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))}
    assert idx["t_block_ids"].tolist() == [csr_pos[(r, c)] for c, r in
                                           zip(t_rows.tolist(), t_cols.tolist())]
    assert all(t.dtype == torch.int32 for k, t in idx.items() if k != "block_ids")


def test_layout_update_writes_in_place():
    L = BlockLayout.random(64, 64, 16, 5)
    pointers = {k: t.data_ptr() for k, t in L.indices.items()}
    L.set_block_ids_(torch.tensor([15, 0, 3, 7, 9]))
    assert L.block_ids.tolist() == [0, 3, 7, 9, 15]
    assert {k: t.data_ptr() for k, t in L.indices.items()} == pointers
    with pytest.raises(ValueError, match="fixed"):
        L.set_block_ids_(torch.tensor([1, 2]))


# --- the layer ------------------------------------------------------------------------------------

def test_layer_shape_density_and_init():
    layer = BlockSparseLinear(256, 128, block_size=32, density=0.3)
    assert layer.block_size == 32 and layer.nnz == round(0.3 * 32)
    assert layer.density == layer.nnz / 32
    assert layer.values.shape == (layer.nnz, 32, 32)
    assert layer.values.abs().max() <= 1 / 256 ** 0.5
    assert BlockSparseLinear(64, 64, block_size=64, density=0.01).nnz == 1  # max(1, …)
    assert BlockSparseLinear(64, 128, block_size=64, density=1.0).nnz == 2
    dense = layer.to_dense()
    assert dense.shape == (128, 256)
    assert torch.equal(dense != 0, layer.layout.dense_mask() & (dense != 0))
    assert torch.equal(dense[~layer.layout.dense_mask()], torch.zeros(128 * 256 - layer.nnz *
                                                                      1024))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_layer_forward_backward_equal_dense(backend, dtype, use_backend):
    use_backend(backend)
    layer = BlockSparseLinear(96, 64, block_size=16, density=0.4, dtype=dtype)
    x = torch.randn(3, 5, 96, dtype=dtype, requires_grad=True)      # batch dims
    xd = x.detach().clone().requires_grad_()
    w = layer.to_dense().detach().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    y = layer(x)
    yd = F.linear(xd.float(), w.float(), b.float())
    assert y.shape == (3, 5, 64)
    _close(y, yd.double(), dtype)
    g = torch.randn_like(y)
    y.backward(g)
    yd.backward(g.float())
    _close(x.grad, xd.grad.double(), dtype)
    _close(layer.bias.grad, b.grad.double(), dtype)
    grad_blocks = dense_weight(layer.values.grad.double(), layer.row_indices, layer.col_indices,
                               4, 6)
    _close(grad_blocks, (w.grad * layer.layout.dense_mask()).double(), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, use_backend):
    use_backend(backend)
    layer = BlockSparseLinear(48, 32, block_size=16, density=0.5, dtype=torch.float64)
    x = torch.randn(4, 48, dtype=torch.float64, requires_grad=True)
    index = (layer.row_offsets, layer.col_indices, layer.row_indices, layer.col_offsets,
             layer.t_row_indices, layer.t_block_ids, None)
    assert torch.autograd.gradcheck(
        lambda x, v, b: BlockSparseLinearFunction.apply(x, v, b, *index),
        (x, layer.values, layer.bias))
    assert torch.autograd.gradcheck(layer, (x.t().contiguous().t(),))  # non-contiguous x


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: HAM(torch.optim.AdamW(ps, lr=1e-2), alpha=5.0, beta=1e-2),
    lambda ps: HAM(torch.optim.SGD(ps, lr=0.1, momentum=0.9), alpha=5.0, beta=1e-2),
], ids=["sgd", "adamw", "ham-adamw", "ham-sgd"])
def test_optimizer_steps_equal_the_dense_masked_update(make_opt):
    layer = BlockSparseLinear(64, 48, block_size=16, density=0.3)
    dense = torch.nn.Linear(64, 48)
    with torch.no_grad():
        dense.weight.copy_(layer.to_dense())
        dense.bias.copy_(layer.bias)
    mask = layer.layout.dense_mask()
    opt, dense_opt = make_opt(layer.parameters()), make_opt(dense.parameters())
    for _ in range(4):
        x = torch.randn(16, 64)
        for model, o in ((layer, opt), (dense, dense_opt)):
            o.zero_grad()
            model(x).pow(2).mean().backward()
        dense.weight.grad.mul_(mask)
        opt.step()
        dense_opt.step()
        with torch.no_grad():
            dense.weight.mul_(mask)
    torch.testing.assert_close(layer.to_dense(), dense.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.bias, dense.bias, rtol=1e-5, atol=1e-6)


def test_from_dense_keeps_the_largest_blocks():
    linear = torch.nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight.mul_(0.01)
        linear.weight[16:32, 48:64] = 1.0   # block (1, 3): the largest
        linear.weight[0:16, 0:16] = 0.5     # block (0, 0): second
    layer = BlockSparseLinear.from_dense(linear, block_size=16, density=0.25)
    assert layer.block_ids.tolist() == [0, 7]
    mask = layer.layout.dense_mask()
    assert torch.equal(layer.to_dense(), linear.weight.detach() * mask)
    assert torch.equal(layer.bias, linear.bias)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), F.linear(x, linear.weight * mask, linear.bias))


def test_state_dict_round_trip_including_the_layout():
    layer = BlockSparseLinear(64, 64, block_size=16, density=0.25)
    other = BlockSparseLinear(64, 64, block_size=16, density=0.25)
    assert not torch.equal(layer.block_ids, other.block_ids)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(5, 64)
    assert torch.equal(other(x), layer(x))
    assert torch.equal(other.t_block_ids, layer.t_block_ids)
    saved = copy.deepcopy(layer.state_dict())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.set_blocks_(torch.arange(layer.nnz), opt.state.get(layer.values, {}).values())
    layer.load_state_dict(saved)
    assert torch.equal(layer(x), other(x))


def test_layer_under_torch_compile():
    layer = BlockSparseLinear(64, 32, block_size=16, density=0.5)
    twin = copy.deepcopy(layer)
    compiled = torch.compile(twin, backend="aot_eager")
    x = torch.randn(6, 64)
    layer(x).square().sum().backward()
    compiled(x).square().sum().backward()
    torch.testing.assert_close(twin.values.grad, layer.values.grad)
    torch.testing.assert_close(twin.bias.grad, layer.bias.grad)


def test_set_blocks_remaps_values_and_state():
    layer = BlockSparseLinear(64, 64, block_size=16, density=0.25)   # 4 of 16 blocks
    state = torch.randn_like(layer.values)
    other_shape = torch.randn(3)
    old = dict(zip(layer.block_ids.tolist(), layer.values.detach().clone()))
    old_state = dict(zip(layer.block_ids.tolist(), state.clone()))
    keep = layer.block_ids[:2]
    new_blocks = [i for i in range(16) if i not in layer.block_ids.tolist()][:2]
    layer.set_blocks_(torch.cat([torch.tensor(new_blocks), keep]), [state, other_shape])
    for k, i in enumerate(layer.block_ids.tolist()):
        if i in new_blocks:
            assert torch.equal(layer.values[k], torch.zeros(16, 16))
            assert torch.equal(state[k], torch.zeros(16, 16))
        else:
            assert torch.equal(layer.values[k], old[i]) and torch.equal(state[k], old_state[i])
    assert layer.nnz == 4


# --- block DST --------------------------------------------------------------------------------------

def _train_step(layer, opt, x):
    opt.zero_grad()
    loss = layer(x).pow(2).mean()
    loss.backward()
    opt.step()


def test_block_rigl_drops_smallest_and_grows_largest_gradient():
    torch.manual_seed(4)
    layer = BlockSparseLinear(128, 64, block_size=16, density=0.25, bias=False)  # 8 of 32
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    sched = BlockRigL(layer, opt, delta_t=3, drop_fraction=0.5)
    x = torch.randn(32, 128)
    for _ in range(2):
        _train_step(layer, opt, x)
        assert not sched.step()
        assert layer.grad_sink.grad is None
    assert layer.grad_sink.active  # the coming step feeds the update
    opt.zero_grad()
    y = layer(x)
    y.pow(2).mean().backward()
    opt.step()
    dense_grad = layer.grad_sink.grad.clone()
    torch.testing.assert_close(dense_grad, 2 * (y.detach().t() @ x) / y.numel())
    ids = layer.block_ids.clone()
    values = dict(zip(ids.tolist(), layer.values.detach().clone()))
    exp_avg = dict(zip(ids.tolist(), opt.state[layer.values]["exp_avg"].clone()))
    norms = layer.values.detach().flatten(1).norm(dim=1)
    dropped = set(ids[norms.argsort()[:4]].tolist())
    score = dense_grad.view(4, 16, 8, 16).pow(2).sum((1, 3)).view(-1)
    score[list(set(ids.tolist()) - dropped)] = -1
    grown = set(score.argsort(descending=True)[:4].tolist())

    assert sched.step()
    new_ids = set(layer.block_ids.tolist())
    assert layer.nnz == 8 and len(new_ids) == 8
    assert new_ids == (set(ids.tolist()) - dropped) | grown
    for k, i in enumerate(layer.block_ids.tolist()):
        if i in values:  # kept (or dropped and regrown): untouched
            assert torch.equal(layer.values[k], values[i])
            assert torch.equal(opt.state[layer.values]["exp_avg"][k], exp_avg[i])
        else:            # new: zero, and so is its state
            assert torch.equal(layer.values[k], torch.zeros(16, 16))
            assert torch.equal(opt.state[layer.values]["exp_avg"][k], torch.zeros(16, 16))
            assert torch.equal(opt.state[layer.values]["exp_avg_sq"][k], torch.zeros(16, 16))
    assert not layer.grad_sink.active and layer.grad_sink.grad is None
    _train_step(layer, opt, x)  # trains on with the new layout
    torch.testing.assert_close(layer(x), x @ layer.to_dense().t())


def test_block_rigl_sums_accumulated_gradients_and_needs_a_backward():
    layer = BlockSparseLinear(32, 32, block_size=16, density=0.5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    sched = BlockRigL(layer, opt, delta_t=1)
    with pytest.raises(RuntimeError, match="backward"):
        sched.step()
    sched = BlockRigL(layer, opt, delta_t=1)
    x1, x2 = torch.randn(4, 32), torch.randn(4, 32)
    layer(x1).sum().backward()
    layer(x2).sum().backward()
    ones = torch.ones(4, 32)
    torch.testing.assert_close(layer.grad_sink.grad, ones.t() @ x1 + ones.t() @ x2)
    with torch.no_grad():  # an evaluation pass in between does not count
        layer(x1)
    assert sched.step()


def test_block_set_is_seeded_and_round_trips():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))

    def make():
        torch.manual_seed(0)
        layer = BlockSparseLinear(64, 64, block_size=16, density=0.5)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        return layer, opt, BlockSET(layer, opt, delta_t=2, drop_fraction=0.5, stop_step=10,
                                    seed=7)

    def run(layer, opt, sched, steps):
        history = []
        for _ in steps:
            _train_step(layer, opt, x)
            sched.step()
            history.append(layer.block_ids.tolist())
        return history

    layer, opt, sched = make()
    history = run(layer, opt, sched, range(4))
    saved = [copy.deepcopy(obj.state_dict()) for obj in (layer, opt, sched)]
    history += run(layer, opt, sched, range(4, 8))
    assert history == run(*make(), range(8))
    assert len({tuple(h) for h in history}) > 1 and all(len(h) == 8 for h in history)
    resumed = make()
    for obj, state in zip(resumed, saved):
        obj.load_state_dict(state)
    assert run(*resumed, range(4, 8)) == history[4:]


def test_block_schedulers_find_layers_in_a_model():
    model = torch.nn.Sequential(BlockSparseLinear(32, 64, block_size=16), torch.nn.ReLU(),
                                BlockSparseLinear(64, 32, block_size=16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert len(BlockSET(model, opt).layers) == 2
    with pytest.raises(ValueError, match="does not own"):
        BlockRigL(model, torch.optim.SGD(model[0].parameters(), lr=0.1))
    with pytest.raises(ValueError, match="without BlockSparseLinear"):
        BlockRigL(torch.nn.Linear(3, 3), opt)


# --- bad input ------------------------------------------------------------------------------------

def test_bad_construction():
    with pytest.raises(ValueError, match="multiple of block_size"):
        BlockSparseLinear(100, 64, block_size=16)
    with pytest.raises(ValueError, match="block_size must be one of"):
        BlockSparseLinear(96, 96, block_size=24)
    for density in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="density"):
            BlockSparseLinear(64, 64, block_size=16, density=density)
    with pytest.raises(TypeError, match="nn.Linear"):
        BlockSparseLinear.from_dense(torch.nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="multiple of block_size"):
        BlockSparseLinear.from_dense(torch.nn.Linear(48, 40), block_size=16)


def test_bad_forward_input_leaves_the_layer_intact():
    layer = BlockSparseLinear(32, 16, block_size=16)
    before = copy.deepcopy(layer.state_dict())
    with pytest.raises(ValueError, match="in_features=32"):
        layer(torch.randn(4, 31))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(4, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match="tensor"):
        layer([1.0] * 32)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k])


def test_bad_op_arguments():
    L = BlockLayout.random(32, 48, 16, 3)
    values, x = torch.randn(3, 16, 16), torch.randn(5, 48)
    dds = torch.ops.sparseopt.dds
    with pytest.raises(ValueError, match="int32"):
        dds(x, values, L.row_offsets.long(), L.col_indices)
    with pytest.raises(TypeError, match="dtype"):
        dds(x.double(), values, L.row_offsets, L.col_indices)
    with pytest.raises(ValueError, match="not a multiple of the block size"):
        dds(torch.randn(5, 40), values, L.row_offsets, L.col_indices)
    with pytest.raises(ValueError, match="block_size must be one of"):
        dds(x, torch.randn(3, 8, 8), L.row_offsets, L.col_indices)
    with pytest.raises(ValueError, match="col_indices has 2 entries"):
        dds(x, values, L.row_offsets, L.col_indices[:2])
    with pytest.raises(ValueError, match="rows"):
        torch.ops.sparseopt.sdd(torch.randn(4, 32), x, L.row_indices, L.col_indices, 16)
    with pytest.raises(ValueError, match="2-D"):
        dds(x[None], values, L.row_offsets, L.col_indices)


@pytest.mark.parametrize("gemm", ["blas", "aten"])
def test_cpp_kernels_on_both_gemm_paths(gemm, use_backend):
    """The C++ CPU kernels call the Fortran BLAS torch links, or ATen's mm where there is none."""
    from sparseopt_kernels import _native
    if backends.unavailable("cpp", "cpu") is not None:
        pytest.skip(backends.unavailable("cpp", "cpu"))
    module = _native.native()
    use_backend("cpp")
    gen = torch.Generator().manual_seed(5)
    L = _layout("random", 64, 96, 16, gen)
    values, x, dy = (torch.randn(L.nnz, 16, 16, generator=gen), torch.randn(70, 96, generator=gen),
                     torch.randn(70, 64, generator=gen))
    W = dense_weight(values.double(), L.row_indices, L.col_indices, 4, 6)
    try:
        assert module.block_sparse_gemm(gemm) == gemm
        _close(torch.ops.sparseopt.dds(x, values, L.row_offsets, L.col_indices),
               x.double() @ W.t(), torch.float32)
        _close(torch.ops.sparseopt.dsd(dy, values, L.col_offsets, L.t_row_indices,
                                       L.t_block_ids), dy.double() @ W, torch.float32)
        dw = torch.ops.sparseopt.sdd(dy, x, L.row_indices, L.col_indices, 16)
        _close(dense_weight(dw.double(), L.row_indices, L.col_indices, 4, 6),
               (dy.double().t() @ x.double()) * L.dense_mask(), torch.float32)
    finally:
        module.block_sparse_gemm("auto")


def test_cpp_rejects_out_of_range_indices(use_backend):
    if backends.unavailable("cpp", "cpu") is not None:
        pytest.skip(backends.unavailable("cpp", "cpu"))
    use_backend("cpp")
    L = BlockLayout.random(32, 48, 16, 3)
    values, x = torch.randn(3, 16, 16), torch.randn(5, 48)
    bad_cols = L.col_indices.clone()
    bad_cols[0] = 3  # only 3 block-columns: 0, 1, 2
    with pytest.raises(RuntimeError, match="col_indices"):
        torch.ops.sparseopt.dds(x, values, L.row_offsets, bad_cols)
    bad_offsets = L.row_offsets.clone()
    bad_offsets[-1] = 4  # more blocks than values has
    with pytest.raises(RuntimeError, match="row_offsets"):
        torch.ops.sparseopt.dds(x, values, bad_offsets, L.col_indices)


def test_digits_example_runs():
    """python/examples/block_sparse_digits.py end to end at a tiny size."""
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "python" / "examples" / "block_sparse_digits.py"
    spec = importlib.util.spec_from_file_location("block_sparse_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # 80 steps: BlockRigL (ΔT = 50, stopped at 60) updates the layouts once
    results = example.main(["--steps", "80", "--width", "1024", "--batch", "64"])
    assert set(results) == set(example.VARIANTS)
    assert all(acc > 50 for acc, _ in results.values())  # it learns (10 classes)
