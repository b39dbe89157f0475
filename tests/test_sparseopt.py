"""SparseOpt: the BN-skew-corrected, mask-aware step on every path, and the skew property."""
import copy

import pytest
import torch
from torch import nn

from sparseopt_kernels import functional as F
from sparseopt_kernels.optim import HAM, SparseOpt
from sparseopt_kernels.sparse import RigL, SparseMasks, gradient_skew
from sparseopt_kernels.testing import assert_close

from conftest import cpu_backends

STEPS = 8


def make_model():
    torch.manual_seed(1)
    # no bias before the BatchNorm: its gradient is rounding noise, which Adam would amplify
    return nn.Sequential(nn.Linear(12, 20, bias=False), nn.BatchNorm1d(20), nn.ReLU(),
                         nn.Linear(20, 4))


def make_masks(model, seed=0):
    masks = SparseMasks(model, density=0.4, distribution="uniform", seed=seed)
    masks.apply()
    return masks


def batches(steps=STEPS, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 12, generator=gen), torch.randint(0, 4, (16,), generator=gen))
            for _ in range(steps)]


def backward(model, x, y):
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def corrected_grads_in_place(masks):
    """The oracle's gradient: c ⊙ g on masked weights, zero where pruned (float64 formula)."""
    for p, m in masks:
        rows = m.reshape(m.shape[0], -1).sum(1).double()
        c = torch.sqrt(rows * m.shape[0] / rows.sum()).float()
        p.grad.mul_(c.view(-1, *([1] * (p.dim() - 1)))).masked_fill_(~m, 0)


OPTIMIZERS = [
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3)),
    ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3, amsgrad=True)),
    ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)),
    ("ham-adamw", lambda ps: HAM(torch.optim.AdamW(ps, lr=1e-2), alpha=50.0, beta=1e-2)),
    ("ham-sgd", lambda ps: HAM(torch.optim.SGD(ps, lr=0.1, momentum=0.5), alpha=2.0)),
    ("rmsprop", lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5)),  # unfused path
    ("ham-rmsprop", lambda ps: HAM(torch.optim.RMSprop(ps, lr=1e-2), alpha=2.0)),
]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("name,make_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_corrected_step_matches_base_step_on_corrected_gradient(name, make_opt, backend,
                                                                use_backend):
    """Each step equals the base optimizer stepping on c ⊙ g (zero where pruned); pruned weights
    stay exactly zero and p.grad keeps the uncorrected gradient."""
    use_backend(backend)
    model, twin = make_model(), make_model()
    masks, twin_masks = make_masks(model), make_masks(twin)
    opt = SparseOpt(make_opt(model.parameters()), masks)
    twin_opt = make_opt(twin.parameters())
    assert opt._step_supports_amp_scaling == (name not in ("rmsprop", "ham-rmsprop"))
    for k, (x, y) in enumerate(batches()):
        backward(model, x, y)
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        for p, g in zip(model.parameters(), grads):
            assert torch.equal(p.grad, g), "p.grad must keep the uncorrected gradient"
        backward(twin, x, y)
        corrected_grads_in_place(twin_masks)
        twin_opt.step()
        if name in ("rmsprop", "ham-rmsprop"):
            twin_masks.apply()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-5, msg=f"step {k}")
        for p, m in masks:
            assert torch.equal(p.detach()[~m], torch.zeros(int((~m).sum())))


@pytest.mark.parametrize("backend", cpu_backends())
def test_only_the_chosen_weights_are_corrected(backend, use_backend):
    use_backend(backend)
    model, twin = make_model(), make_model()
    masks, twin_masks = make_masks(model), make_masks(twin)
    head = model[3].weight
    opt = SparseOpt(torch.optim.SGD(model.parameters(), lr=0.1), masks,
                    corrected=[model[0].weight])
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    x, y = batches(1)[0]
    backward(model, x, y)
    opt.step()
    backward(twin, x, y)
    grad_head = twin[3].weight.grad.clone()
    corrected_grads_in_place(twin_masks)
    twin[3].weight.grad.copy_(grad_head.masked_fill(~twin_masks.masks[1], 0))  # c = 1 there
    twin_opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(opt.coefficients[head], torch.ones(head.shape[0]))


def test_coefficients_follow_rigl_updates():
    model = make_model()
    masks = make_masks(model)
    opt = SparseOpt(torch.optim.Adam(model.parameters(), lr=1e-2), masks)
    rigl = RigL(masks, opt, delta_t=2, drop_fraction=0.5)
    for x, y in batches(6):
        backward(model, x, y)
        opt.step()
        rigl.step()
        opt.refresh()
        for p, m in masks:
            assert torch.equal(opt.coefficients[p], F.row_coefficients([m])[0])
            assert torch.equal(p.detach()[~m], torch.zeros(int((~m).sum())))
    assert rigl.updates == 3


def test_state_dict_round_trip_midway():
    model, twin = make_model(), make_model()
    masks, twin_masks = make_masks(model), make_masks(twin)
    opt = SparseOpt(torch.optim.AdamW(model.parameters(), lr=1e-2), masks)
    data = batches()
    for x, y in data[:4]:
        backward(model, x, y)
        opt.step()
    twin.load_state_dict(model.state_dict())
    twin_masks.load_state_dict(masks.state_dict())
    twin_opt = SparseOpt(torch.optim.AdamW(twin.parameters(), lr=1e-2), twin_masks)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}  # the base optimizer's own format
    twin_opt.load_state_dict(copy.deepcopy(sd))
    for x, y in data[4:]:
        for m_, o_ in ((model, opt), (twin, twin_opt)):
            backward(m_, x, y)
            o_.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_and_lr_scheduler():
    model, twin = make_model(), make_model()
    masks, twin_masks = make_masks(model), make_masks(twin)
    opt = SparseOpt(torch.optim.AdamW(model.parameters(), lr=1e-2), masks)
    twin_opt = SparseOpt(torch.optim.AdamW(twin.parameters(), lr=1e-2), twin_masks)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    twin_sched = torch.optim.lr_scheduler.StepLR(twin_opt, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0, growth_interval=1000)
    for k, (x, y) in enumerate(batches(6)):
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if k == 2:
            model[0].weight.grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        sched.step()
        if k == 2:  # skipped step: nothing moved
            assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
            assert not hasattr(opt, "grad_scale") and not hasattr(opt._inner, "grad_scale")
            twin.load_state_dict(model.state_dict())  # BN statistics moved in the forward
            twin_sched.step()
            continue
        backward(twin, x, y)
        twin_opt.step()
        twin_sched.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=f"step {k}")
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** 3)


def test_closure_is_called_once():
    model = make_model()
    opt = SparseOpt(torch.optim.RMSprop(model.parameters(), lr=1e-2), make_masks(model))
    x, y = batches(1)[0]
    calls = []

    def closure():
        calls.append(1)
        backward(model, x, y)
        return 1.5

    assert opt.step(closure) == 1.5 and len(calls) == 1


def test_bad_input():
    model = make_model()
    masks = make_masks(model)
    with pytest.raises(ValueError, match="does not own"):
        SparseOpt(torch.optim.SGD(model[0].parameters(), lr=0.1), masks)
    with pytest.raises(ValueError, match="has no mask"):
        SparseOpt(torch.optim.SGD(model.parameters(), lr=0.1), masks, corrected=[model[3].bias])
    with pytest.raises(TypeError, match="SparseMasks"):
        SparseOpt(torch.optim.SGD(model.parameters(), lr=0.1), masks.masks)
    with pytest.raises(TypeError, match="Optimizer"):
        SparseOpt(model, masks)
    opt = SparseOpt(torch.optim.SGD(model.parameters(), lr=0.1), masks)
    with pytest.raises(TypeError, match="already wrapped"):
        SparseOpt(opt, masks)


# ---------------------------------------------------------------------------------------------
# The skew property (ALGORITHMS.md §3 "Check")
# ---------------------------------------------------------------------------------------------

def _skew_setup(batchnorm: bool):
    torch.manual_seed(0)
    n_in, n_hidden = 128, 384
    layers = [nn.Linear(n_in, n_hidden, bias=False)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(n_hidden))
    model = nn.Sequential(*layers, nn.ReLU(), nn.Linear(n_hidden, 10))
    masks = SparseMasks([model[0].weight], density=0.5, distribution="uniform", seed=0)
    # rows from 5% to 100% dense, so the per-row sparsity varies
    row_density = torch.linspace(0.05, 1.0, n_hidden).unsqueeze(1)
    masks.masks[0].copy_(torch.rand(n_hidden, n_in) < row_density)
    masks.changed()
    masks.apply()
    batch = (torch.randn(512, n_in), torch.randint(0, 10, (512,)))
    return model, masks, batch


def test_gradient_skew_follows_inverse_sqrt_density_behind_batchnorm():
    model, masks, batch = _skew_setup(batchnorm=True)
    saved = copy.deepcopy(model.state_dict())
    report = gradient_skew(model, masks, batch, nn.functional.cross_entropy)["0.weight"]
    assert report.exponent == pytest.approx(-0.5, abs=0.1)
    assert report.corrected_exponent == pytest.approx(0.0, abs=0.1)
    # the diagnostic leaves BatchNorm statistics and .grad alone
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k])
    assert all(p.grad is None for p in model.parameters())


def test_gradient_skew_is_flat_without_batchnorm():
    model, masks, batch = _skew_setup(batchnorm=False)
    report = gradient_skew(model, masks, batch, nn.functional.cross_entropy)["0.weight"]
    assert report.exponent == pytest.approx(0.0, abs=0.1)
    assert report.corrected_exponent == pytest.approx(0.5, abs=0.1)  # the correction tilts it


def test_digits_example_runs(tmp_path):
    """python/examples/sparseopt_digits.py end to end at a tiny size (scikit-learn's digits)."""
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "python" / "examples" / "sparseopt_digits.py"
    spec = importlib.util.spec_from_file_location("sparseopt_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    plot = tmp_path / "digits.png"
    curves = example.main(["--seeds", "1", "--steps", "60", "--eval-every", "30",
                           "--plot", str(plot)])
    assert set(curves) == set(example.VARIANTS)
    assert all(len(runs) == 1 and len(runs[0]) == 2 for runs in curves.values())
    assert all(runs[0][-1] > 0.5 for runs in curves.values())  # it learns (10 classes)
    assert plot.stat().st_size > 0


def test_functional_row_scale_splits_by_dtype():
    """The op takes one dtype per call; the functional API calls it once per (device, dtype),
    so SparseOpt's unfused path works for models that mix dtypes."""
    from sparseopt_kernels.reference import skew as ref_skew
    xs = [torch.randn(4, 6), torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 2)]
    masks = [torch.rand(x.shape) < 0.5 for x in xs]
    cs = F.row_coefficients(masks)
    want = [x.clone() for x in xs]
    for w, c, m in zip(want, cs, masks):
        ref_skew.row_scale_([w], [c], masks=[m])
    F.row_scale_(xs, cs, masks=masks)
    assert all(torch.equal(x, w) for x, w in zip(xs, want))
    with pytest.raises(TypeError, match="once per dtype"):
        torch.ops.sparseopt.row_scale_(xs, cs, masks=masks)
