"""Bad input raises a clear exception naming the argument, before any tensor is modified."""
import copy

import pytest
import torch

from sparseopt_kernels import functional as F
from sparseopt_kernels.optim import HAM, HORST

from conftest import cpu_backends


def adam_args(n=2, dtype=torch.float32):
    params = [torch.randn(4, 3, dtype=dtype) for _ in range(n)]
    grads = [torch.randn(4, 3, dtype=dtype) for _ in range(n)]
    m = [torch.zeros(4, 3) for _ in range(n)]
    v = [torch.zeros(4, 3) for _ in range(n)]
    steps = [torch.tensor(0.0) for _ in range(n)]
    return params, grads, m, v, [], steps


def mutate(args, where, value):
    args = [list(a) for a in args]
    lst, i = where
    args[lst][i] = value
    return args


BAD_TENSOR_CASES = [
    ("grads", lambda a: mutate(a, (1, 1), torch.randn(3, 4)), ValueError, "grads[1]"),
    ("grads", lambda a: mutate(a, (1, 0), torch.randn(4, 3, dtype=torch.float64)), ValueError,
     "grads[0]"),
    ("exp_avgs", lambda a: [a[0], a[1], a[2][:1], a[3], a[4], a[5]], ValueError, "exp_avgs"),
    ("params", lambda a: mutate(a, (0, 1), torch.randn(3, 4).t()), ValueError,
     "not contiguous"),
    ("params", lambda a: mutate(a, (0, 0), torch.randn(4, 3, dtype=torch.complex64)),
     TypeError, "complex"),
    ("grads", lambda a: mutate(a, (1, 0), torch.randn(4, 3).to_sparse()), TypeError,
     "sparse"),
    ("params", lambda a: mutate(a, (0, 1), torch.randn(4, 3, dtype=torch.float64)), TypeError,
     "params[1]"),
    ("params", lambda a: mutate(a, (0, 0), torch.ones(4, 3, dtype=torch.int32)), TypeError,
     "params[0]"),
    ("exp_avg_sqs", lambda a: mutate(a, (3, 1), torch.zeros(4, 3, dtype=torch.float16)),
     TypeError, "exp_avg_sqs[1]"),
    ("state_steps", lambda a: mutate(a, (5, 1), torch.zeros(2)), ValueError, "state_steps[1]"),
    ("params", lambda a: mutate(a, (0, 1), torch.randn(4, 3, device="meta")), ValueError,
     "params[1]"),
]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("name,make_bad,exc,match", BAD_TENSOR_CASES,
                         ids=[c[3] for c in BAD_TENSOR_CASES])
def test_bad_tensors_raise_before_anything_changes(backend, name, make_bad, exc, match,
                                                   use_backend):
    use_backend(backend)
    args = make_bad(adam_args())
    before = copy.deepcopy([[t for t in lst if t.device.type != "meta" and not t.is_sparse]
                            for lst in args])
    with pytest.raises(exc, match=match.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.sparseopt.ham_adam_(*args, lr=1e-3, alpha=1.0)
    after = [[t for t in lst if t.device.type != "meta" and not t.is_sparse] for lst in args]
    for a_list, b_list in zip(after, before):
        for a, b in zip(a_list, b_list):
            assert torch.equal(a, b)


BAD_SCALARS = [
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(beta1=1.0), ValueError, "beta1"),
    (dict(beta2=-0.1), ValueError, "beta2"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(clamp=0.0), ValueError, "clamp"),
    (dict(clamp=-1.0), ValueError, "clamp"),
    (dict(mirror="log"), ValueError, "mirror"),
    (dict(gamma=0.0), ValueError, "gamma"),
    (dict(direction="sideways"), ValueError, "direction"),
    (dict(order="never"), ValueError, "order"),
    (dict(alpha=float("nan")), ValueError, "alpha"),
]


@pytest.mark.parametrize("kw,exc,match", BAD_SCALARS, ids=[c[2] + str(i) for i, c in
                                                          enumerate(BAD_SCALARS)])
def test_bad_hyperparameters_through_functional(kw, exc, match):
    args = adam_args()
    before = copy.deepcopy(args)
    full = dict(lr=1e-3)
    full.update(kw)
    with pytest.raises(exc, match=match):
        F.ham_adam(*args, **full)
    for a_list, b_list in zip(args, before):
        for a, b in zip(a_list, b_list):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kw,match", [
    (dict(alpha="200"), "alpha"), (dict(beta=[1e-3]), "beta"), (dict(clamp="5"), "clamp"),
    (dict(alpha=True), "alpha")])
def test_mirror_settings_of_the_wrong_type(kw, match):
    model = torch.nn.Linear(3, 3)
    with pytest.raises(TypeError, match=match):
        HAM(torch.optim.SGD(model.parameters(), lr=0.1), **kw)
    with pytest.raises(TypeError, match=match):
        HORST(model.parameters(), **kw)
    with pytest.raises(TypeError, match=match):
        F.mirror_step([torch.zeros(2)], [torch.zeros(2)], lr=0.1, **kw)


def test_sgd_list_mismatch_and_nesterov():
    p, g = [torch.zeros(3), torch.zeros(3)], [torch.zeros(3)]
    with pytest.raises(ValueError, match="grads has 1 tensors but params has 2"):
        F.ham_sgd(p, g, [], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        F.ham_sgd(p[:1], g, [torch.zeros(3)], lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="momentum_buffers"):
        F.ham_sgd(p[:1], g, [], lr=0.1, momentum=0.9)


def test_mixed_dtypes_through_functional_are_split_and_all_checked_first():
    """functional splits by dtype; a bad split aborts before the good split is touched."""
    good = [torch.randn(3), torch.randn(3, dtype=torch.float64)]
    grads = [torch.randn(3), torch.randn(2, dtype=torch.float64)]  # second split is bad
    before = copy.deepcopy(good)
    with pytest.raises(ValueError, match="grads"):
        F.mirror_step(good, grads, lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(good, before))
    grads[1] = torch.randn(3, dtype=torch.float64)
    F.mirror_step(good, grads, lr=0.1)
    assert not torch.equal(good[0], before[0]) and not torch.equal(good[1], before[1])


def test_forced_backend_that_cannot_serve_raises(use_backend, monkeypatch):
    from sparseopt_kernels.backends import BackendUnavailable
    use_backend("cuda")
    with pytest.raises(BackendUnavailable, match="cuda backend runs on CUDA tensors only"):
        F.mirror_step([torch.zeros(2)], [torch.zeros(2)], lr=0.1)
    use_backend("bogus")
    with pytest.raises(ValueError, match="SPARSEOPT_BACKEND"):
        F.mirror_step([torch.zeros(2)], [torch.zeros(2)], lr=0.1)
    use_backend("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        F.mirror_step([torch.zeros(2)], [torch.zeros(2)], lr=0.1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(BackendUnavailable, match="float64"):
        F.mirror_step([torch.zeros(2, dtype=torch.float64)],
                      [torch.zeros(2, dtype=torch.float64)], lr=0.1)


def test_ham_rejects_non_optimizers_and_double_wrapping():
    with pytest.raises(TypeError, match="optimizer"):
        HAM([torch.zeros(2)])
    opt = HAM(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1))
    with pytest.raises(TypeError, match="already wrapped"):
        HAM(opt)
    with pytest.raises(TypeError, match="apply_to"):
        HAM(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1), apply_to=3)
