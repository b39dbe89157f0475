"""torch.library.opcheck of every op on CPU, and the ops and optimizers under torch.compile."""
import pytest
import torch
from torch.library import opcheck

import sparseopt_kernels  # noqa: F401
from sparseopt_kernels import functional as F
from sparseopt_kernels.optim import HAM, HORST
from sparseopt_kernels.testing import assert_close

from conftest import cpu_backends


def sample_inputs():
    def t(*shape, dtype=torch.float32):
        return torch.randn(*shape, dtype=dtype)

    def lists(dtype=torch.float32, n=2):
        return [t(5, 3, dtype=dtype) for _ in range(n)]

    mirror = dict(alpha=10.0, beta=1e-2, clamp=5.0)
    yield "ham_adam_", (lists(), lists(), lists(), [x.abs() for x in lists()], [],
                        [torch.tensor(1.0), torch.tensor(2.0)]), dict(lr=1e-3, **mirror)
    yield "ham_adam_", (lists(), lists(), lists(), [x.abs() for x in lists()],
                        [x.abs() for x in lists()], [torch.tensor(0.0)] * 2), dict(
        lr=0.0, lr_tensor=torch.tensor(1e-3), amsgrad=True, decoupled_weight_decay=True,
        weight_decay=0.1, direction="adam", order="before", mirror="hypentropy",
        grad_scale=torch.tensor(4.0), found_inf=torch.tensor(0.0))
    yield "ham_sgd_", (lists(), lists(), lists()), dict(lr=0.1, momentum=0.9, nesterov=True,
                                                       **mirror)
    yield "ham_sgd_", (lists(torch.bfloat16), lists(torch.bfloat16), []), dict(lr=0.1,
                                                                              **mirror)
    yield "mirror_step_", (lists(), lists()), dict(lr=0.1, maximize=True, **mirror)
    yield "mirror_step_", (lists(torch.float64), lists(torch.float64)), dict(
        lr=0.1, found_inf=torch.tensor(1.0), **mirror)


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b.id != "triton"])
@pytest.mark.parametrize("case", list(range(6)))
def test_opcheck(case, backend, use_backend):
    use_backend(backend)
    name, args, kwargs = list(sample_inputs())[case]
    opcheck(getattr(torch.ops.sparseopt, name).default, args, kwargs)


def test_functional_under_torch_compile_fullgraph():
    def step(params, grads, m, v, steps, lr):
        F.ham_adam(params, grads, m, v, [], steps, lr=lr, alpha=50.0, beta=1e-2,
                   decoupled_weight_decay=True, weight_decay=0.1)

    def fresh():
        torch.manual_seed(5)
        params = [torch.randn(7, 3), torch.randn(4)]
        return (params, [torch.randn_like(p) for p in params],
                [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
                [torch.tensor(0.0) for _ in params])

    eager, compiled = fresh(), fresh()
    compiled_step = torch.compile(step, fullgraph=True, backend="aot_eager")
    for _ in range(3):
        step(*eager, torch.tensor(1e-2))
        compiled_step(*compiled, torch.tensor(1e-2))
    for a, b in zip(sum(map(list, eager), []), sum(map(list, compiled), [])):
        assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("make_opt", [
    lambda ps: HAM(torch.optim.AdamW(ps, lr=1e-2), alpha=50.0, beta=1e-2),
    lambda ps: HAM(torch.optim.SGD(ps, lr=0.1, momentum=0.9), alpha=5.0, beta=1e-2),
    lambda ps: HORST(ps, lr=1e-2, alpha=5.0),
], ids=["ham-adamw", "ham-sgd", "horst"])
@pytest.mark.parametrize("layer", ["linear", "conv-channels-last"])
def test_optimizer_step_under_torch_compile(make_opt, layer):
    torch.manual_seed(0)
    if layer == "linear":
        model, twin, shape = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4), (8, 5)
    else:  # params stepped through memory views (optim/_layout.py)
        model, twin = (torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
                       for _ in range(2))
        shape = (2, 3, 6, 6)
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = make_opt(model.parameters()), make_opt(twin.parameters())

    @torch.compile(backend="aot_eager")
    def compiled_step():
        opt.step()

    for _ in range(3):
        x = torch.randn(shape)
        for m, o, run in ((model, opt, compiled_step), (twin, twin_opt, twin_opt.step)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            run()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b.id != "triton"])
def test_functional_on_leaf_params_that_require_grad(backend, use_backend):
    """Like torch.optim's functional API: in-place updates of leaf params work on every
    backend, whether or not grad mode is on."""
    use_backend(backend)
    p = [torch.randn(6, 3, requires_grad=True)]
    g = [torch.randn(6, 3)]
    F.mirror_step(p, g, lr=0.1, alpha=5.0)
    F.ham_adam(p, g, [torch.zeros(6, 3)], [torch.zeros(6, 3)], [], [torch.tensor(0.0)], lr=0.1)
    assert p[0].requires_grad and p[0].grad_fn is None
