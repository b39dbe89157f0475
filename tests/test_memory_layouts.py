"""Optimizers on params stored in other dense layouts (channels_last conv weights): the kernels
run on memory-order views, so the step equals the step on the same values laid out row-major."""
import copy

import pytest
import torch

from sparseopt_kernels.optim import HAM, HORST, NanoAdam
from sparseopt_kernels.optim._layout import flat, in_layout_of, is_dense, memory_order

from conftest import cpu_backends

CL = torch.channels_last


def conv_weights(memory_format):
    torch.manual_seed(0)
    ws = [torch.randn(16, 8, 3, 3) * 0.1, torch.randn(32, 16, 1, 1) * 0.1, torch.randn(8, 4, 5, 5)]
    return [w.contiguous(memory_format=memory_format).requires_grad_() for w in ws]


def set_grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        g = torch.randn(p.shape, generator=gen) * 1e-2
        p.grad = g.contiguous(memory_format=CL) if not p.is_contiguous() else g


def test_layout_helpers():
    w = torch.randn(16, 8, 3, 3).contiguous(memory_format=CL)
    assert memory_order(w) == (0, 2, 3, 1) and is_dense(w)
    assert not is_dense(torch.randn(4, 6)[:, ::2])
    v = flat(w)
    assert v.shape == (16, 72) and v.is_contiguous() and v.data_ptr() == w.data_ptr()
    assert torch.equal(v[3], w[3].permute(1, 2, 0).reshape(-1))  # rows stay rows
    assert flat(torch.randn(3, 4).t()).shape == (12,)  # dim 0 innermost: 1-D
    g = torch.randn(16, 8, 3, 3)
    moved = in_layout_of(g, w)
    assert torch.equal(moved, g) and memory_order(moved) == memory_order(w)
    assert in_layout_of(w, w) is w


@pytest.mark.parametrize("backend", cpu_backends())
def test_horst_on_channels_last_equals_row_major(backend, use_backend):
    use_backend(backend)
    results = {}
    for fmt in (torch.contiguous_format, CL):
        params = conv_weights(fmt)
        opt = HORST(params, lr=1e-2, weight_decay=0.01, amsgrad=True)
        for step in range(3):
            set_grads(params, step)
            opt.step()
        assert all(p.is_contiguous(memory_format=fmt) for p in params)
        results[fmt] = [p.detach().contiguous() for p in params]
    for a, b in zip(results[torch.contiguous_format], results[CL]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", cpu_backends())
def test_nanoadam_chunks_follow_memory_order(backend, use_backend):
    """NanoAdam on a channels_last weight is NanoAdam on its memory, read as a flat tensor."""
    use_backend(backend)
    params = conv_weights(CL)
    ref_params = [flat(p.detach()).reshape(-1, 1).clone().requires_grad_() for p in params]
    kwargs = dict(lr=1e-2, density=0.1, chunk_size=64, mask_interval=2, weight_decay=0.01)
    opt, ref = NanoAdam(params, **kwargs), NanoAdam(ref_params, **kwargs)
    for step in range(5):
        set_grads(params, step)
        for p, r in zip(params, ref_params):
            r.grad = flat(p.grad).reshape(r.shape).clone()
        before = [p.detach().clone() for p in params]
        opt.step()
        ref.step()
        for p, r, b in zip(params, ref_params, before):
            assert p.is_contiguous(memory_format=CL)
            assert torch.equal(flat(p.detach()).reshape(-1), r.detach().reshape(-1))
            assert (p.detach() != b).float().mean() <= 0.2  # only the selection moved
    state = opt.state_dict()
    again = NanoAdam(conv_weights(CL), **kwargs)
    again.load_state_dict(copy.deepcopy(state))
    assert again.state_dict()["state"][0]["memory_order"] == (0, 2, 3, 1)


def test_nanoadam_reselects_when_the_layout_changes():
    params = conv_weights(torch.contiguous_format)
    opt = NanoAdam(params, lr=1e-2, density=0.1, chunk_size=64, mask_interval=1000)
    set_grads(params, 0)
    opt.step()
    with torch.no_grad():
        for p in params:
            p.data = p.data.contiguous(memory_format=CL)
    set_grads(params, 1)
    with pytest.warns(RuntimeWarning, match="memory layout changed"):
        opt.step()
    for p in params:
        state = opt.state[p]
        # (a 1x1 conv weight is row-major in both formats: nothing to record)
        assert state.get("memory_order") == (None if p.is_contiguous() else memory_order(p))
        assert state["exp_avg"].count_nonzero() > 0


def test_nanoadam_full_step_on_channels_last_equals_adam():
    params = conv_weights(CL)
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt = NanoAdam(params, lr=1e-2, density=1.0)
    torch_opt = torch.optim.Adam(ref, lr=1e-2)
    for step in range(3):
        set_grads(params, step)
        for p, r in zip(params, ref):
            r.grad = p.grad.clone()
        opt.step()
        torch_opt.step()
    for p, r in zip(params, ref):
        assert p.is_contiguous(memory_format=CL)
        torch.testing.assert_close(p, r)


def test_state_from_a_row_major_checkpoint_moves_to_the_params_layout():
    rm = conv_weights(torch.contiguous_format)
    opt = HORST(rm, lr=1e-2)
    set_grads(rm, 0)
    opt.step()
    cl = conv_weights(CL)
    with torch.no_grad():
        for a, b in zip(cl, rm):
            a.copy_(b)
    opt_cl = HORST(cl, lr=1e-2)
    opt_cl.load_state_dict(opt.state_dict())
    set_grads(rm, 1)
    set_grads(cl, 1)
    opt.step()
    opt_cl.step()
    for a, b in zip(cl, rm):
        assert torch.equal(a.detach().contiguous(), b.detach())
        assert opt_cl.state[a]["exp_avg"].is_contiguous(memory_format=CL)


def _ham_run(fmt, base, masks=None, packed=False, row_scales=False):
    params = conv_weights(fmt)
    opt = HAM(base(params), alpha=50.0, apply_to=lambda p: True)
    if masks is not None:
        for p, m in zip(params, masks):
            opt.masks[p] = (torch.from_numpy(__import__("numpy").packbits(
                m.reshape(-1).numpy(), bitorder="little")) if packed else m)
    if row_scales:
        for p in params:
            opt.row_scales[p] = torch.linspace(0.5, 1.5, p.shape[0])
    kinds = []
    for step in range(3):
        set_grads(params, step)
        kinds.append(opt.fused_kind())
        opt.step()
    assert all(p.is_contiguous(memory_format=fmt) for p in params)
    return [p.detach().contiguous() for p in params], kinds


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("base", ["adamw", "sgd"])
@pytest.mark.parametrize("extra", ["plain", "bool-masks", "packed-masks", "row-scales"])
def test_ham_on_channels_last_equals_row_major(backend, base, extra, use_backend):
    use_backend(backend)
    make = {"adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, amsgrad=True),
            "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)}[base]
    gen = torch.Generator().manual_seed(7)
    masks = [torch.rand(p.shape, generator=gen) < 0.5 for p in conv_weights(CL)]
    kwargs = dict(masks=masks if extra != "plain" and extra != "row-scales" else None,
                  packed=extra == "packed-masks", row_scales=extra == "row-scales")
    row_major, kinds_rm = _ham_run(torch.contiguous_format, make, **kwargs)
    channels_last, kinds_cl = _ham_run(CL, make, **kwargs)
    assert kinds_rm == [base] * 3
    if extra == "packed-masks":
        # a bit-packed mask's bits follow the row-major order: such a param is not fused (masks
        # reach HAM through SparseOpt, whose fallback applies them; plain HAM's ignores them)
        assert kinds_cl == [None] * 3
        return
    assert kinds_cl == [base] * 3
    for a, b in zip(row_major, channels_last):
        assert torch.equal(a, b)


def test_sparseopt_on_a_channels_last_model_equals_row_major():
    from sparseopt_kernels.optim import SparseOpt
    from sparseopt_kernels.sparse import SparseMasks
    results = {}
    for fmt in (torch.contiguous_format, CL):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU(),
                                    torch.nn.Conv2d(16, 8, 3)).to(memory_format=fmt)
        masks = SparseMasks(model, density=0.4, distribution="uniform", seed=0)
        opt = SparseOpt(torch.optim.AdamW(model.parameters(), lr=1e-2), masks)
        for step in range(3):
            for i, p in enumerate(model.parameters()):
                g = torch.randn(p.shape, generator=torch.Generator().manual_seed(10 * step + i))
                p.grad = g.contiguous(memory_format=fmt) if p.dim() == 4 else g
            assert opt._inner.fused_kind() == "adamw"
            opt.step()
        results[fmt] = [p.detach().contiguous() for p in model.parameters()]
    for a, b in zip(*results.values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make", [lambda ps: HORST(ps, lr=1e-2),
                                  lambda ps: NanoAdam(ps, lr=1e-2, chunk_size=8)],
                         ids=["horst", "nanoadam"])
def test_strided_params_are_refused_not_misread(make):
    """Memory views need a dense layout: a param with gaps gets the ops' clear error."""
    base = torch.randn(6, 8)
    p = torch.nn.Parameter(base[:, ::2])  # a leaf with strides (8, 2)
    p.grad = torch.randn(6, 4)
    opt = make([p])
    before = p.detach().clone()
    with pytest.raises(ValueError, match="not contiguous"):
        opt.step()
    assert torch.equal(p.detach(), before)
