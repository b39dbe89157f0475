"""Parity of the Triton block-sparse matmuls (dds, dsd, sdd) with the PyTorch reference.

Runs on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1, set before triton is
imported). The interpreter is slow per program instance, so shapes stay small: a few block-rows
and block-columns, M of a few tiles (not a multiple of the tile), b = 128 only with tiny M.
Results are judged against the reference run in float64: float32 tightly (IEEE products),
float16 by at most twice the error of the same-dtype reference. Outputs that must be zero (empty
block-rows, empty block-columns) are checked bit for bit.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

from sparseopt_kernels import testing  # noqa: E402
from sparseopt_kernels.reference import block_sparse as ref  # noqa: E402
from sparseopt_kernels.sparse.layout import BlockLayout  # noqa: E402
from sparseopt_kernels.triton import block_sparse as tri  # noqa: E402

pytestmark = pytest.mark.triton


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def _layout(out_features, in_features, b, ids):
    return BlockLayout(out_features, in_features, b, torch.tensor(ids, dtype=torch.int64))


def _operands(L, m, dtype, seed=0):
    n, k = L.out_features, L.in_features
    x = _randn((m, k), seed, dtype)
    dy = _randn((m, n), seed + 1, dtype)
    values = _randn((L.nnz, L.block_size, L.block_size), seed + 2, dtype)
    return x, dy, values


def _calls(L, x, dy, values, **kw):
    """(name, function of a module) for the three ops on layout L."""
    b = L.block_size
    return {
        "dds": lambda mod: mod.dds(x, values, L.row_offsets, L.col_indices, **kw),
        "dsd": lambda mod: mod.dsd(dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids,
                                   **kw),
        "sdd": lambda mod: mod.sdd(dy, x, L.row_indices, L.col_indices, b, **kw),
    }


class _Float64:
    """The reference on float64 copies of the operands (the exact answer, to ~1e-16)."""
    def __init__(self, L, x, dy, values):
        self.calls = _calls(L, x.double(), dy.double(), values.double())

    def __getitem__(self, op):
        return self.calls[op](ref)


def _check_op(op, got, L, x, dy, values, **kw):
    exact = _Float64(L, x, dy, values)[op]
    same_dtype = _calls(L, x, dy, values, **kw)[op](ref)
    assert got.dtype == x.dtype and got.shape == same_dtype.shape, (op, got.dtype, got.shape)
    if x.dtype == torch.float32 and not kw.get("allow_tf32"):
        # IEEE float32 products, float32 sums in another order than torch's: ~1e-6 relative.
        torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-4,
                                   msg=lambda m: f"{op}: {m}")
    elif x.dtype == torch.float32:  # TF32 products (10-bit mantissa) where the device has them
        torch.testing.assert_close(got.double(), exact, rtol=5e-3, atol=5e-2,
                                   msg=lambda m: f"{op}: {m}")
    else:
        # One rounding of a float32 sum, like the reference: within 2× its error (the floor
        # covers blocks whose reference error happens to be 0).
        testing.assert_within_reference_error(got, same_dtype, exact, factor=2.0, floor=1e-3,
                                              msg=op)


def _check_all(L, m, dtype, seed=0, **kw):
    x, dy, values = _operands(L, m, dtype, seed)
    out = {}
    for op, call in _calls(L, x, dy, values, **kw).items():
        out[op] = call(tri)
        _check_op(op, out[op], L, x, dy, values, **kw)
    _check_zeros(L, out)
    return out


def _check_zeros(L, out):
    """Empty block-rows of y and empty block-columns of dx are +0 exactly (for the ops in
    ``out``)."""
    b = L.block_size
    mask = L.block_mask()
    for r in torch.nonzero(~mask.any(1)).flatten().tolist() if "dds" in out else []:
        assert torch.equal(_bits(out["dds"][:, r * b:(r + 1) * b]),
                           torch.zeros_like(_bits(out["dds"][:, r * b:(r + 1) * b]))), r
    for c in torch.nonzero(~mask.any(0)).flatten().tolist() if "dsd" in out else []:
        assert torch.equal(_bits(out["dsd"][:, c * b:(c + 1) * b]),
                           torch.zeros_like(_bits(out["dsd"][:, c * b:(c + 1) * b]))), c


class _LaunchCounter:
    """Counts launches of a kernel of ``tri`` by wrapping its ``kernel[grid]`` indexing."""

    def __init__(self, monkeypatch, name):
        self.count, self.grids = 0, []
        kernel = getattr(tri, name)
        counter = self

        class Wrapped:
            def __getitem__(self, grid):
                counter.count += 1
                counter.grids.append(grid)
                return kernel[grid]

        monkeypatch.setattr(tri, name, Wrapped())


# ---------------------------------------------------------------------------------------------
# random layouts, every block size
# ---------------------------------------------------------------------------------------------

# (b, out_features, in_features, nnz, M): M is not a multiple of the tile (64 rows in float32,
# 128 in float16 for dds/dsd; the sdd chunk is 32 to 128 rows); b = 128 only with tiny M.
RANDOM_CASES = [
    (16, 96, 128, 15, 70),
    (16, 64, 48, 6, 150),
    (32, 128, 96, 6, 70),
    (64, 192, 128, 3, 37),
    (128, 256, 128, 1, 5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("b,n,k,nnz,m", RANDOM_CASES,
                         ids=[f"b{c[0]}-{c[1]}x{c[2]}-nnz{c[3]}-M{c[4]}" for c in RANDOM_CASES])
def test_random_layouts(b, n, k, nnz, m, dtype):
    L = BlockLayout.random(n, k, b, nnz, generator=_gen(b + nnz))
    _check_all(L, m, dtype, seed=b)


def test_every_program_sees_its_own_block():
    # A layout whose blocks all differ from the transposed/misplaced ones: W with distinct
    # random blocks at scattered places, compared with the dense product directly (not only the
    # reference), so a swapped index or a transposed block cannot cancel out.
    b = 16
    L = _layout(4 * b, 3 * b, b, [1, 3, 5, 8, 10])
    x, dy, values = _operands(L, 33, torch.float32, seed=3)
    w = ref.dense_weight(values.double(), L.row_indices, L.col_indices, 4, 3)
    assert w.shape == (4 * b, 3 * b)
    torch.testing.assert_close(tri.dds(x, values, L.row_offsets, L.col_indices).double(),
                               x.double() @ w.t(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        tri.dsd(dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids).double(),
        dy.double() @ w, rtol=1e-5, atol=1e-4)
    full = dy.double().t() @ x.double()
    want = torch.stack([full[r * b:(r + 1) * b, c * b:(c + 1) * b]
                        for r, c in zip(L.row_indices.tolist(), L.col_indices.tolist())])
    torch.testing.assert_close(tri.sdd(dy, x, L.row_indices, L.col_indices, b).double(), want,
                               rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# edge layouts
# ---------------------------------------------------------------------------------------------

def _edge_layouts():
    b = 16
    R, C = 5, 4
    return {
        # block-rows 0 and 3 empty, row 1 full, row 2 a single block, row 4 one block
        "empty_and_full_rows": _layout(R * b, C * b, b, [4, 5, 6, 7, 9, 16]),
        # block-columns 1 and 3 empty, block-row 1 empty
        "empty_cols": _layout(3 * b, C * b, b, [0, 2, 8, 10]),
        # one block in a larger weight: every other row and column empty
        "single_block": _layout(4 * 32, 3 * 32, 32, [7]),
        # one block that is the whole weight
        "one_by_one": _layout(64, 64, 64, [0]),
        # every block stored (dense)
        "dense": _layout(2 * b, 3 * b, b, list(range(6))),
        # last block-row and last block-column only
        "corner": _layout(3 * b, 3 * b, b, [8]),
    }


EDGE = _edge_layouts()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(EDGE))
def test_edge_layouts(name, dtype):
    L = EDGE[name]
    out = _check_all(L, 70, dtype, seed=7)
    mask = L.block_mask()
    if not mask.all():
        assert (~mask.any(1)).any() or (~mask.any(0)).any()  # the zero checks did run
    # and the non-empty rows/columns are not zero (the kernel did write them)
    b = L.block_size
    for r in torch.nonzero(mask.any(1)).flatten().tolist():
        assert out["dds"][:, r * b:(r + 1) * b].abs().sum() > 0, r
    for c in torch.nonzero(mask.any(0)).flatten().tolist():
        assert out["dsd"][:, c * b:(c + 1) * b].abs().sum() > 0, c


def test_empty_rows_are_written_over_garbage(monkeypatch):
    # y is allocated with torch.empty: an empty block-row must still be stored as +0 even where
    # that memory held NaN.
    L = EDGE["empty_and_full_rows"]
    x, dy, values = _operands(L, 40, torch.float32)
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(tri.torch, "empty", nan_empty)
    out = {"dds": tri.dds(x, values, L.row_offsets, L.col_indices),
           "dsd": tri.dsd(dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids)}
    monkeypatch.undo()
    assert not out["dds"].isnan().any() and not out["dsd"].isnan().any()
    _check_zeros(L, out)
    L2 = EDGE["empty_cols"]
    x, dy, values = _operands(L2, 40, torch.float32)
    monkeypatch.setattr(tri.torch, "empty", nan_empty)
    dx = tri.dsd(dy, values, L2.col_offsets, L2.t_row_indices, L2.t_block_ids)
    monkeypatch.undo()
    _check_zeros(L2, {"dsd": dx})
    assert not dx.isnan().any()


# ---------------------------------------------------------------------------------------------
# strides, sizes, tf32, the sdd split
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_non_contiguous_inputs(dtype):
    b = 16
    L = BlockLayout.random(4 * b, 3 * b, b, 5, generator=_gen(11))
    m = 70
    x_c, dy_c, values_c = _operands(L, m, dtype, seed=5)
    # x: column-major (a transposed view); dy: every other column of a wider matrix and every
    # other row of a taller one; values: each block stored transposed.
    x = x_c.t().contiguous().t()
    dy_big = torch.zeros(2 * m, 2 * L.out_features, dtype=dtype)
    dy_big[::2, ::2] = dy_c
    dy = dy_big[::2, ::2]
    values = values_c.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (x.is_contiguous() or dy.is_contiguous() or values.is_contiguous())

    def strided(idx):  # the same index values as a stride-2 view
        return torch.stack([idx, idx], 1).view(-1)[::2]

    got = {
        "dds": tri.dds(x, values, strided(L.row_offsets), strided(L.col_indices)),
        "dsd": tri.dsd(dy, values, strided(L.col_offsets), strided(L.t_row_indices),
                       strided(L.t_block_ids)),
        "sdd": tri.sdd(dy, x, strided(L.row_indices), strided(L.col_indices), b),
    }
    want = {op: call(tri) for op, call in _calls(L, x_c, dy_c, values_c).items()}
    for op in got:  # same products, same order: identical to the contiguous run
        assert got[op].is_contiguous()
        assert torch.equal(got[op], want[op]), op
        _check_op(op, got[op], L, x_c, dy_c, values_c)


def test_zero_rows_launch_nothing(monkeypatch):
    counters = [_LaunchCounter(monkeypatch, n)
                for n in ("_dds_kernel", "_dsd_kernel", "_sdd_kernel")]
    L = EDGE["empty_and_full_rows"]
    x, dy, values = _operands(L, 0, torch.float32)
    y = tri.dds(x, values, L.row_offsets, L.col_indices)
    dx = tri.dsd(dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids)
    dw = tri.sdd(dy, x, L.row_indices, L.col_indices, 16)
    assert y.shape == (0, L.out_features) and dx.shape == (0, L.in_features)
    assert dw.shape == (L.nnz, 16, 16) and torch.equal(dw, torch.zeros_like(dw))
    assert [c.count for c in counters] == [0, 0, 0]


def test_no_blocks(monkeypatch):
    counters = [_LaunchCounter(monkeypatch, n)
                for n in ("_dds_kernel", "_dsd_kernel", "_sdd_kernel")]
    b, m = 16, 20
    x, dy = _randn((m, 3 * b), 0), _randn((m, 2 * b), 1)
    values = torch.empty(0, b, b)
    empty = torch.empty(0, dtype=torch.int32)
    y = tri.dds(x, values, torch.zeros(3, dtype=torch.int32), empty)
    dx = tri.dsd(dy, values, torch.zeros(4, dtype=torch.int32), empty, empty)
    dw = tri.sdd(dy, x, empty, empty, b)
    assert torch.equal(_bits(y), torch.zeros(m, 2 * b, dtype=torch.int32))
    assert torch.equal(_bits(dx), torch.zeros(m, 3 * b, dtype=torch.int32))
    assert dw.shape == (0, b, b)
    assert [c.count for c in counters] == [0, 0, 0]


def test_grids(monkeypatch):
    # one program per (m-tile, block-row) / (m-tile, block-column) / block
    counters = {n: _LaunchCounter(monkeypatch, n)
                for n in ("_dds_kernel", "_dsd_kernel", "_sdd_kernel")}
    L = EDGE["empty_and_full_rows"]  # R = 5, C = 4, nnz = 6
    m = 130
    x, dy, values = _operands(L, m, torch.float16)
    for call in _calls(L, x, dy, values).values():
        call(tri)
    bm = tri._config("dense", 16, torch.float16, x.device)[0]
    tiles = -(-m // bm)
    assert tiles >= 2 and m % bm  # several tiles, the last one ragged
    assert counters["_dds_kernel"].grids == [(5 * tiles,)]
    assert counters["_dsd_kernel"].grids == [(4 * tiles,)]
    assert counters["_sdd_kernel"].grids == [(6,)]


@pytest.mark.parametrize("split", [2, 3, 5])
def test_sdd_split(monkeypatch, split):
    # The split over m (used on GPUs when there are few blocks) against the unsplit kernel.
    b = 16
    L = BlockLayout.random(3 * b, 2 * b, b, 3, generator=_gen(2))
    m = 150
    x, dy, values = _operands(L, m, torch.float16, seed=4)
    whole = tri.sdd(dy, x, L.row_indices, L.col_indices, b)
    counter = _LaunchCounter(monkeypatch, "_sdd_kernel")
    monkeypatch.setattr(tri, "_sdd_split", lambda nnz, m, bk, device: split)
    parts = tri.sdd(dy, x, L.row_indices, L.col_indices, b)
    bk = tri._config("sdd", b, torch.float16, x.device)[0]
    rows = -(-(-(-m // split)) // bk) * bk  # rows per part, a multiple of BK
    assert counter.grids == [(-(-m // rows) * L.nnz,)]
    assert parts.dtype == torch.float16
    _check_op("sdd", parts, L, x, dy, values)
    # float32 partials rounded once: at most one float16 ulp from the unsplit result
    assert ((parts.double() - whole.double()).abs()
            <= whole.double().abs() * 2 ** -10 + 1e-6).all()


def test_allow_tf32_float32():
    # The interpreter multiplies in float32 either way; on GPUs this is the TF32 path.
    L = BlockLayout.random(64, 48, 16, 6, generator=_gen(9))
    _check_all(L, 40, torch.float32, seed=9, allow_tf32=True)


def test_bfloat16():
    # The interpreter stores bfloat16 as uint16 and its tl.dot multiplies those as integers
    # (triton 3.x): probe that, run the real test when the interpreter can do it.
    import triton
    import triton.language as tl

    @triton.jit
    def probe(a, out):
        i = tl.arange(0, 16)
        t = tl.load(a + i[:, None] * 16 + i[None, :])
        tl.store(out + i[:, None] * 16 + i[None, :], tl.dot(t, t))

    a, out = torch.ones(16, 16, dtype=torch.bfloat16), torch.zeros(16, 16)
    probe[(1,)](a, out)
    if not torch.equal(out, torch.full((16, 16), 16.0)):
        pytest.skip("the Triton interpreter cannot multiply bfloat16 in tl.dot (it treats the "
                    "uint16 storage as integers); bfloat16 runs in the GPU tests")
    L = BlockLayout.random(64, 48, 16, 6, generator=_gen(10))
    _check_all(L, 40, torch.bfloat16, seed=10)


# ---------------------------------------------------------------------------------------------
# configs, arguments, dispatch
# ---------------------------------------------------------------------------------------------

def test_config_table_is_complete():
    for b in (16, 32, 64, 128):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for kind in ("dense", "sdd"):
                tile, warps, stages = tri._config(kind, b, dtype, torch.device("cpu"))
                assert tile >= 16 and tile & (tile - 1) == 0  # tl.dot needs powers of 2 ≥ 16
                assert warps in (1, 2, 4, 8) and stages >= 1


def test_bad_arguments():
    b = 16
    L = BlockLayout.random(32, 32, b, 2, generator=_gen(0))
    x, dy, values = _operands(L, 8, torch.float64)
    with pytest.raises(TypeError, match="float64"):
        tri.dds(x, values, L.row_offsets, L.col_indices)
    with pytest.raises(TypeError, match="float64"):
        tri.dsd(dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids)
    with pytest.raises(TypeError, match="float64"):
        tri.sdd(dy, x, L.row_indices, L.col_indices, b)
    x, dy, values = _operands(L, 8, torch.float32)
    with pytest.raises(ValueError, match="multiple of the block size"):
        tri.dds(x[:, :20], values, L.row_offsets, L.col_indices)
    with pytest.raises(ValueError, match="rows"):
        tri.sdd(dy[:4], x, L.row_indices, L.col_indices, b)
    with pytest.raises(TypeError, match="dtype"):
        tri.dds(x.half(), values, L.row_offsets, L.col_indices)


def test_ops_dispatch_to_triton(use_backend, monkeypatch):
    use_backend("triton")
    counters = {n: _LaunchCounter(monkeypatch, n)
                for n in ("_dds_kernel", "_dsd_kernel", "_sdd_kernel")}
    L = EDGE["empty_and_full_rows"]
    x, dy, values = _operands(L, 20, torch.float32, seed=12)
    ops = torch.ops.sparseopt
    got = _calls(L, x, dy, values)
    assert torch.equal(ops.dds(x, values, L.row_offsets, L.col_indices), got["dds"](tri))
    assert torch.equal(ops.dsd(dy, values, L.col_offsets, L.t_row_indices, L.t_block_ids),
                       got["dsd"](tri))
    assert torch.equal(ops.sdd(dy, x, L.row_indices, L.col_indices, 16), got["sdd"](tri))
    assert all(c.count == 2 for c in counters.values()), {k: c.count
                                                         for k, c in counters.items()}
