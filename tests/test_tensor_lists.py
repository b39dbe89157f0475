"""Per-list metadata work done in C++ (csrc/torch/tensor_lists.cpp): the argument checks' list
summaries, version-counter bumps after native/Triton kernels, and step counts advanced by the
CPU bindings."""
import itertools

import pytest
import torch

from sparseopt_kernels import _checks, _native, _ops
from sparseopt_kernels import functional as F
from sparseopt_kernels.optim import NanoAdam, ham

from conftest import cpu_backends

native = _native.native()
needs_native = pytest.mark.skipif(native is None, reason="sparseopt_kernels._C not built")


# --- summaries -------------------------------------------------------------------------------

@needs_native
def test_summary_reports_common_dtype_device_density_and_shapes():
    a, b = torch.zeros(4, 3), torch.zeros(2)
    assert native.summarize_tensors([a, b], [a, b], _checks.SAME) == (
        torch.float32, torch.device("cpu"), True, True)
    assert native.summarize_tensors([a, b.double()], [a, b], _checks.SAME)[0] is None
    assert native.summarize_tensors([a.t(), b], [a, b], _checks.SAME)[2] is False
    assert native.summarize_tensors([b, a], [a, b], _checks.SAME)[3] is False
    assert native.summarize_tensors([a], [a, b], _checks.SAME)[3] is False  # lengths differ
    assert native.summarize_tensors([], [], _checks.SAME) == (None, None, True, True)


@needs_native
def test_summary_shape_rules():
    p = torch.zeros(5000)
    rule = native.summarize_tensors
    assert rule([torch.zeros(())], [p], _checks.SCALAR)[3]
    assert not rule([torch.zeros(2)], [p], _checks.SCALAR)[3]
    # 4096 → 410, 904 → 90 at density 0.1 (reference.masked.num_selected)
    assert rule([torch.zeros(500)], [p], _checks.SELECTED, 0.1, 4096)[3]
    assert not rule([torch.zeros(501)], [p], _checks.SELECTED, 0.1, 4096)[3]
    assert not rule([torch.zeros(1, 500)], [p], _checks.SELECTED, 0.1, 4096)[3]
    assert rule([torch.zeros(5000, dtype=torch.bool)], [p], _checks.MASK)[3]
    assert rule([torch.zeros(625, dtype=torch.uint8)], [p], _checks.MASK)[3]
    assert not rule([torch.zeros(626, dtype=torch.uint8)], [p], _checks.MASK)[3]
    assert not rule([torch.zeros(5000)], [p], _checks.MASK)[3]
    assert rule([torch.zeros(3)], [torch.zeros(3, 2)], _checks.ROWS)[3]
    assert not rule([torch.zeros(())], [torch.zeros(())], _checks.ROWS)[3]
    with pytest.raises(RuntimeError, match="chunk_size"):
        rule([torch.zeros(1)], [p], _checks.SELECTED, 0.1, 0)


@needs_native
def test_summary_declines_what_it_cannot_read_like_python():
    p = torch.zeros(3)
    assert _checks._summary([p, None], [p, p], _checks.SAME) is None
    assert _checks._summary([p, 1.0], [p, p], _checks.SAME) is None
    assert native.summarize_tensors([torch.zeros(3, device="meta")], [p], _checks.SAME) is None
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fake = torch.zeros(3)
    assert native.summarize_tensors([fake], [fake], _checks.SAME) is None


# --- the checks decide the same with and without summaries ------------------------------------

def _variants(t):
    """Replacements of one list entry: each breaks one property the checks look at."""
    yield "float64", t.double()
    yield "float16", t.half()
    yield "bfloat16", t.bfloat16()
    yield "int32", t.to(torch.int32)
    yield "int16", t.to(torch.int16)
    yield "bool", t.bool()
    yield "uint8", t.to(torch.uint8)
    yield "complex", t.to(torch.complex64)
    yield "longer", torch.zeros(t.numel() + 1, dtype=t.dtype)
    yield "2-d", t.reshape(1, -1)
    yield "0-d", torch.zeros((), dtype=t.dtype)
    yield "strided", torch.zeros(t.numel() * 2, dtype=t.dtype)[::2]
    yield "meta", t.to("meta")
    yield "sparse", t.reshape(-1).to_sparse()
    yield "None", None
    yield "float", 1.0


def _outcome(validate, args, kwargs):
    try:
        validate(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the outcome compared is the exception itself
        return type(exc), str(exc)
    return None


def _assert_same_decisions(monkeypatch, op, args, kwargs):
    validate = _ops.VALIDATORS[op]
    assert _outcome(validate, args, kwargs) is None  # the unmodified arguments pass
    for (li, lst), ti in itertools.product(
            [(i, a) for i, a in enumerate(args) if isinstance(a, list)], (0, 1)):
        if ti >= len(lst):
            continue
        for label, bad in _variants(lst[ti]):
            broken = [list(a) if isinstance(a, list) else a for a in args]
            broken[li][ti] = bad
            with_summaries = _outcome(validate, broken, kwargs)
            with monkeypatch.context() as m:
                m.setattr(_checks, "_summary", lambda *a, **k: None)
                tensor_by_tensor = _outcome(validate, broken, kwargs)
            assert with_summaries == tensor_by_tensor, (op, li, ti, label)


def _adam_lists(n=3):
    shapes = [(6, 5), (7,), (4, 2, 3)][:n]
    params = [torch.randn(s) for s in shapes]
    return (params, [torch.randn_like(p) for p in params],
            [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
            [], [torch.tensor(3.0) for _ in params])


@needs_native
def test_adam_checks_decide_the_same_with_summaries(monkeypatch):
    params = _adam_lists()[0]
    masks = [torch.rand(p.shape) < 0.5 for p in params]
    scales = [torch.ones(p.shape[0]) for p in params]
    _assert_same_decisions(monkeypatch, "ham_adam_", list(_adam_lists()),
                           dict(lr=1e-3, alpha=1.0, masks=masks, row_scales=scales))
    packed = [torch.zeros((p.numel() + 7) // 8, dtype=torch.uint8) for p in params]
    _assert_same_decisions(monkeypatch, "ham_adam_", list(_adam_lists()),
                           dict(lr=1e-3, masks=packed, amsgrad=False))


@needs_native
def test_sgd_and_mirror_checks_decide_the_same_with_summaries(monkeypatch):
    params, grads, bufs = _adam_lists()[:3]
    _assert_same_decisions(monkeypatch, "ham_sgd_", [params, grads, bufs],
                           dict(lr=1e-2, momentum=0.9))
    _assert_same_decisions(monkeypatch, "mirror_step_", [params, grads], dict(lr=1e-2))


@needs_native
@pytest.mark.parametrize("offsets", [False, True])
def test_compact_checks_decide_the_same_with_summaries(monkeypatch, offsets):
    params = [torch.randn(5000), torch.randn(300, 7)]
    grads = [torch.randn_like(p) for p in params]
    indices = F.chunk_select(params, 0.1, 1024, chunk_offsets=offsets)
    m = [torch.zeros(i.numel()) for i in indices]
    v = [torch.zeros(i.numel()) for i in indices]
    steps = [torch.tensor(1.0) for _ in params]
    _assert_same_decisions(monkeypatch, "compact_adam_", [params, grads, indices, m, v, steps],
                           dict(density=0.1, chunk_size=1024, lr=1e-3))


@needs_native
def test_clean_arguments_skip_the_per_tensor_checks(monkeypatch):
    """The per-step host cost stays O(lists), not O(tensors), on ordinary arguments."""
    params = [torch.randn(64, 64, requires_grad=True) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p)
    nano = NanoAdam(params, density=0.1, chunk_size=256)
    nano.step()  # the selection (once per mask refresh) checks its inputs one by one
    calls = []
    monkeypatch.setattr(_checks, "_check_dense", lambda *a: calls.append(a))
    monkeypatch.setattr(ham, "_fusable_tensor", lambda *a: calls.append(a) or True)
    F.ham_adam(*_adam_lists(), lr=1e-3, alpha=1.0,
               masks=[torch.rand(p.shape) < 0.5 for p in _adam_lists()[0]])
    nano.step()
    opt = ham.HAM(torch.optim.AdamW(params, lr=1e-3))
    opt.step()
    assert opt.fused_kind() == "adamw"
    assert calls == []


# --- version counters --------------------------------------------------------------------------

def _steps(name, params):
    grads = [p.grad for p in params]
    if name == "ham_adam":
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        F.ham_adam(params, grads, m, v, [], [torch.tensor(0.0) for _ in params], lr=1e-2,
                   alpha=1.0)
        return m + v
    if name == "ham_sgd":
        bufs = [torch.zeros_like(p) for p in params]
        F.ham_sgd(params, grads, bufs, lr=1e-2, momentum=0.9, alpha=1.0)
        return bufs
    if name == "masked_adam":
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        F.ham_adam(params, grads, m, v, [], [torch.tensor(0.0) for _ in params], lr=1e-2,
                   masks=[torch.rand(p.shape) < 0.5 for p in params])
        return m + v
    if name == "mirror_step":
        F.mirror_step(params, grads, lr=1e-2, alpha=1.0)
        return []
    indices = F.chunk_select([p.detach() for p in params], 0.25, 64)
    m = [torch.zeros(i.numel()) for i in indices]
    v = [torch.zeros(i.numel()) for i in indices]
    F.compact_adam(params, grads, indices, m, v, [torch.tensor(0.0) for _ in params],
                   density=0.25, chunk_size=64, lr=1e-2)
    return m + v


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("step", ["ham_adam", "ham_sgd", "masked_adam", "mirror_step",
                                  "compact_adam"])
def test_steps_mark_what_they_write_as_modified(backend, step, use_backend):
    """As with torch.optim's fused steps, a backward through a graph that saved a param before
    the step raises instead of silently using the stepped values."""
    use_backend(backend)
    params = [torch.randn(200, requires_grad=True), torch.randn(10, 13, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    x = torch.randn(200, requires_grad=True)
    loss = (x * params[0]).sum()  # saves params[0] for x's gradient
    versions = [p._version for p in params]
    states = _steps(step, params)
    assert all(p._version > v for p, v in zip(params, versions))
    assert all(s._version > 0 for s in states)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# --- step counts advanced by the CPU bindings ------------------------------------------------

@pytest.mark.parametrize("step_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_step_counts_advance_in_their_dtype(step_dtype, use_backend):
    results = {}
    start = _adam_lists(2)
    for backend in ("reference", "cpp") if native is not None else ("reference",):
        use_backend(backend)
        args = [[t.clone() for t in lst] for lst in start]
        steps = [torch.tensor(255.0, dtype=step_dtype) for _ in range(2)]
        F.ham_adam(*args[:5], steps, lr=1e-2, alpha=1.0)
        assert all(s.dtype == step_dtype for s in steps)
        results[backend] = (steps, args[0])
    for steps, _ in results.values():
        assert [s.item() for s in steps] == [256.0, 256.0]
    if "cpp" in results:
        for a, b in zip(results["cpp"][1], results["reference"][1]):
            torch.testing.assert_close(a, b)
