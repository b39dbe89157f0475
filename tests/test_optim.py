"""HAM and HORST as drop-in torch.optim optimizers: trajectories, state_dict, schedulers, AMP."""
import copy
import io

import pytest
import torch
from torch import nn

from sparseopt_kernels.optim import HAM, HORST
from sparseopt_kernels.reference import mirror as ref
from sparseopt_kernels.testing import assert_close

from conftest import cpu_backends

STEPS = 22


def make_model(dtype=torch.float32):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3)).to(dtype)


def loss_fn(model, x, maximize=False):
    """A bounded problem either way: maximize the negated loss (no diverging trajectories)."""
    loss = model(x).pow(2).mean()
    return -loss if maximize else loss


def train(model, opt, steps=STEPS, on_step=None, scheduler=None, seed=2, maximize=False):
    gen = torch.Generator().manual_seed(seed)
    for k in range(steps):
        x = torch.randn(12, 6, generator=gen, dtype=next(model.parameters()).dtype)
        opt.zero_grad()
        loss_fn(model, x, maximize).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if on_step is not None:
            on_step(k)


TORCH_CASES = [
    (torch.optim.SGD, dict(lr=0.1)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=1e-2)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    (torch.optim.SGD, dict(lr=torch.tensor(0.05), momentum=0.5)),
    (torch.optim.Adam, dict(lr=1e-2)),
    (torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    (torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.9), maximize=True, eps=1e-6)),
    (torch.optim.Adam, dict(lr=torch.tensor(1e-2), amsgrad=True)),
    (torch.optim.AdamW, dict(lr=1e-2)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.3, amsgrad=True, maximize=True)),
    (torch.optim.AdamW, dict(lr=torch.tensor(1e-2), weight_decay=0.1)),
]


def case_id(case):
    cls, kw = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in kw.items() if k != "lr") + (
        "-lrtensor" if isinstance(kw["lr"], torch.Tensor) else "")


def clone_kwargs(kw):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b.id != "triton"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_ham_with_zero_alpha_beta_reproduces_torch_optim(case, backend, use_backend):
    """Every step of a 22-step trajectory equals torch.optim's, with a state_dict round trip
    (through torch.save) in the middle."""
    use_backend(backend)
    cls, kw = case
    ours_model, torch_model = make_model(), make_model()
    ours = HAM(cls(ours_model.parameters(), **clone_kwargs(kw)), alpha=0.0, beta=0.0)
    theirs = cls(torch_model.parameters(), **clone_kwargs(kw))
    assert ours.fused_kind() is not None
    gen = torch.Generator().manual_seed(3)
    for k in range(STEPS):
        x = torch.randn(12, 6, generator=gen)
        for model, opt in ((ours_model, ours), (torch_model, theirs)):
            opt.zero_grad()
            loss_fn(model, x, kw.get("maximize", False)).backward()
            opt.step()
        for a, b in zip(ours_model.parameters(), torch_model.parameters()):
            assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {k}")
        if k == STEPS // 2:
            buf = io.BytesIO()
            torch.save(ours.state_dict(), buf)
            buf.seek(0)
            fresh = HAM(cls(ours_model.parameters(), **clone_kwargs(kw)), alpha=0.0, beta=0.0)
            fresh.load_state_dict(torch.load(buf, weights_only=False))
            ours = fresh
    # the base's own state format is kept
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert sd["state"].keys() == tsd["state"].keys()
    for k in tsd["state"]:
        assert sd["state"][k].keys() == tsd["state"][k].keys()
    assert "ham" in sd


def manual_ham_reference(model, base_cls, kw, alpha, beta, clamp, steps=STEPS):
    """The authors' style: torch.optim step then the per-tensor mirror step in float64."""
    model = copy.deepcopy(model).double()
    opt = base_cls(model.parameters(), **kw)
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(12, 6, generator=gen).double()
        opt.zero_grad()
        loss_fn(model, x, kw.get("maximize", False)).backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    ref.mirror_step_([p], [p.grad], lr=kw["lr"], alpha=alpha, beta=beta,
                                     clamp=clamp, maximize=kw.get("maximize", False))
    return model


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b.id != "triton"])
@pytest.mark.parametrize("base_cls,kw,alpha", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3), 20.0),
    (torch.optim.Adam, dict(lr=1e-2, amsgrad=True), 300.0),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, maximize=True), 300.0),
    (torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5), 300.0),  # not fused: step + mirror op
])
def test_ham_matches_base_step_then_mirror_step(base_cls, kw, alpha, backend, use_backend):
    use_backend(backend)
    model = make_model()
    expected = manual_ham_reference(model, base_cls, kw, alpha, 1e-2, 5.0)
    opt = HAM(base_cls(model.parameters(), **kw), alpha=alpha, beta=1e-2, clamp=5.0)
    assert (opt.fused_kind() is None) == (base_cls is torch.optim.RMSprop)
    train(model, opt, maximize=kw.get("maximize", False))
    for a, b in zip(model.parameters(), expected.parameters()):
        assert_close(a, b, rtol=2e-4, atol=2e-5)
    # biases (ndim 1) took no mirror step, weights did
    assert HAM(base_cls(make_model().parameters(), **kw)).apply_to(model[0].bias) is False


def test_ham_switched_on_for_an_existing_checkpoint():
    model = make_model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, base, steps=3)
    checkpoint = base.state_dict()
    ham = HAM(torch.optim.AdamW(model.parameters(), lr=1e-2))
    ham.load_state_dict(checkpoint)  # a plain checkpoint loads into HAM
    train(model, ham, steps=2)
    assert ham.state_dict()["state"][0]["step"].item() == 5
    plain = torch.optim.AdamW(model.parameters(), lr=1e-2)
    plain.load_state_dict(ham.state_dict())  # and HAM's loads back into the plain optimizer
    train(model, plain, steps=1)
    assert plain.state_dict()["state"][0]["step"].item() == 6


def test_lr_scheduler_param_groups_and_zero_grad():
    model = make_model()
    opt = HAM(torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9), alpha=10.0)
    opt.add_param_group({"params": model[2].parameters(), "lr": 0.01})
    assert len(opt.param_groups) == 2 and opt.param_groups is opt.optimizer.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    train(model, opt, steps=10, scheduler=sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0025)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert len(opt.state) == 4


def test_grad_scaler_with_an_inf_step():
    """GradScaler hands grad_scale/found_inf to the fused kernel: the inf step changes nothing
    and the others equal the unscaled optimizer."""
    model, twin = make_model(), make_model()
    opt = HAM(torch.optim.AdamW(model.parameters(), lr=1e-2), alpha=100.0, beta=1e-2)
    twin_opt = HAM(torch.optim.AdamW(twin.parameters(), lr=1e-2), alpha=100.0, beta=1e-2)
    assert opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=1000)
    gen = torch.Generator().manual_seed(4)
    for k in range(6):
        x = torch.randn(12, 6, generator=gen)
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        if k == 3:
            model[0].weight.grad[0, 0] = float("inf")
            before = copy.deepcopy((list(model.parameters()), opt.state_dict()))
        scaler.step(opt)
        scaler.update()
        if k == 3:
            for a, b in zip(model.parameters(), before[0]):
                assert torch.equal(a, b)
            assert torch.equal(opt.state_dict()["state"][0]["exp_avg"],
                               before[1]["state"][0]["exp_avg"])
            assert opt.state_dict()["state"][0]["step"].item() == 3
            assert scaler.get_scale() == 128.0
            continue
        twin_opt.zero_grad()
        twin(x).pow(2).mean().backward()
        twin_opt.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_horst_with_zero_alpha_beta_is_adamw():
    model, twin = make_model(), make_model()
    ours = HORST(model.parameters(), lr=1e-2, weight_decay=0.1, alpha=0.0, beta=0.0,
                 amsgrad=True)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True)
    train(model, ours)
    train(twin, theirs)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mirror,direction,order", [
    ("exp", "adam", "after"), ("exp", "grad", "after"), ("exp", "adam", "before"),
    ("hypentropy", "adam", "after")])
def test_horst_matches_reference(mirror, direction, order):
    model = make_model()
    exact = copy.deepcopy(model).double()
    kw = dict(lr=1e-2, weight_decay=0.05, alpha=30.0, beta=1e-2, clamp=5.0, mirror=mirror,
              gamma=0.5, direction=direction, order=order)
    opt = HORST(model.parameters(), **kw)
    train(model, opt, steps=8)
    # float64 reference trajectory through the functional reference
    states = {p: None for p in exact.parameters()}
    gen = torch.Generator().manual_seed(2)
    for _ in range(8):
        x = torch.randn(12, 6, generator=gen).double()
        exact.zero_grad()
        exact(x).pow(2).mean().backward()
        with torch.no_grad():
            for p in exact.parameters():
                if states[p] is None:
                    states[p] = (torch.zeros_like(p), torch.zeros_like(p), torch.tensor(0.0))
                m, v, s = states[p]
                mirrored = p.ndim >= 2
                ref.ham_adam_([p], [p.grad], [m], [v], [], [s], lr=kw["lr"],
                              weight_decay=kw["weight_decay"], decoupled_weight_decay=True,
                              alpha=kw["alpha"] if mirrored else 0.0,
                              beta=kw["beta"] if mirrored else 0.0, clamp=kw["clamp"],
                              mirror=mirror, gamma=kw["gamma"], direction=direction, order=order)
    for a, b in zip(model.parameters(), exact.parameters()):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_horst_state_dict_round_trip_and_low_precision_state():
    model = make_model(torch.bfloat16)
    opt = HORST(model.parameters(), lr=1e-2)
    train(model, opt, steps=3)
    state = opt.state[model[0].weight]
    assert state["exp_avg"].dtype == torch.float32 and state["step"].item() == 3
    sd = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    opt2 = HORST(twin.parameters(), lr=1e-2)
    opt2.load_state_dict(sd)
    train(model, opt, steps=2, seed=9)
    train(twin, opt2, steps=2, seed=9)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_hypentropy_moves_zero_weights_exp_does_not():
    for mirror, moves in (("exp", False), ("hypentropy", True)):
        p = torch.zeros(4, 4, requires_grad=True)
        opt = HORST([p], lr=1e-2, alpha=10.0, beta=0.0, mirror=mirror, order="before",
                    weight_decay=0.0)
        p.grad = torch.zeros(4, 4)
        p.grad[0, 0] = 1.0
        opt.step()
        assert bool(p[1:, :].eq(0).all())  # no gradient, no move in either form
        assert (p[0, 0].item() != 0) is True  # the Adam step itself moves it
        q = torch.zeros(3, 3)
        ref.mirror_step_([q], [torch.ones(3, 3)], lr=0.1, alpha=1.0, beta=0.0, mirror=mirror,
                         clamp=None)
        assert bool(q.ne(0).all()) is moves


def test_larger_alpha_gives_interpolators_of_smaller_l1_norm():
    """ALGORITHMS.md §1: the implicit bias moves from L2 towards L1 as α grows."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "python" / "examples" / "ham_least_squares.py"
    spec = importlib.util.spec_from_file_location("ham_least_squares", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = [example.solve(alpha, steps=3000) for alpha in (0.0, 10.0, 30.0)]
    losses, l1_norms = [r[0] for r in results], [r[1] for r in results]
    assert max(losses) < 1e-6  # all interpolate
    assert l1_norms[0] > l1_norms[1] > l1_norms[2]
