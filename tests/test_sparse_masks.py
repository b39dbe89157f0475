"""SparseMasks (ERK / uniform layer densities) and the RigL / SET mask schedulers."""
import math

import pytest
import torch
from torch import nn

from sparseopt_kernels.sparse import RigL, SET, SparseMasks, erk_densities


def _net():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10))


def _assert_pruned_zero(masks):
    for p, m in masks:
        assert torch.equal(p.detach()[~m], torch.zeros_like(p.detach()[~m]))


# ---------------------------------------------------------------------------------------------
# SparseMasks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("distribution", ["erk", "uniform"])
@pytest.mark.parametrize("density", [0.05, 0.1, 0.5, 1.0])
def test_masks_meet_the_global_density(distribution, density):
    net = _net()
    masks = SparseMasks(net, density=density, distribution=distribution, seed=0)
    assert len(masks) == 3  # conv and two linear weights; biases and BN stay dense
    total = sum(p.numel() for p in masks.params)
    active = sum(int(m.sum()) for m in masks.masks)
    assert active == sum(masks.n_active)
    assert abs(active / total - density) <= len(masks) / total + 1e-9
    for p, m, n in zip(masks.params, masks.masks, masks.n_active):
        assert m.dtype == torch.bool and m.shape == p.shape and int(m.sum()) == n
    if distribution == "uniform":
        assert masks.densities == [density] * 3


def test_erk_formula_and_dense_layers():
    shapes = [(16, 3, 3, 3), (64, 576), (10, 64)]
    d = erk_densities(shapes, 0.1)
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    assert sum(di * n for di, n in zip(d, sizes)) == pytest.approx(0.1 * sum(sizes))
    # the layers that are not dense follow ε·(Σ dims / Π dims)
    free = [i for i in range(3) if d[i] < 1]
    assert len({d[i] / raw[i] for i in free}) == 1 or \
        max(d[i] / raw[i] for i in free) == pytest.approx(min(d[i] / raw[i] for i in free))
    # the small first conv and the head would need density > 1: they are made dense
    d_small = erk_densities([(4, 2), (1000, 1000)], 0.3)
    assert d_small[0] == 1.0 and 0 < d_small[1] < 0.31
    assert erk_densities([(8, 8)], 1.0) == [1.0]


def test_mask_lookup_apply_and_state_dict():
    net = _net()
    masks = SparseMasks(net, density=0.2, seed=3)
    w = net[4].weight
    assert masks[w] is masks.masks[1] and w in masks and net[4].bias not in masks
    with pytest.raises(KeyError, match="not one of the weights"):
        masks[net[4].bias]
    masks.apply()
    _assert_pruned_zero(masks)
    sd = masks.state_dict()
    other = SparseMasks(_net(), density=0.2, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(other.masks, masks.masks))
    version = other.version
    other.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(other.masks, masks.masks))
    assert other.n_active == masks.n_active and other.version == version + 1
    # same seed, same masks
    again = SparseMasks(_net(), density=0.2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again.masks, masks.masks))


def test_masks_bad_input():
    net = _net()
    for density in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density"):
            SparseMasks(net, density=density)
    with pytest.raises(TypeError, match="density"):
        SparseMasks(net, density="0.1")
    with pytest.raises(ValueError, match="distribution"):
        SparseMasks(net, distribution="gaussian")
    with pytest.raises(ValueError, match="at least two dimensions"):
        SparseMasks([net[0].weight, net[0].bias])
    with pytest.raises(ValueError, match="empty"):
        SparseMasks([])
    with pytest.raises(ValueError, match="twice"):
        SparseMasks([net[0].weight, net[0].weight])
    masks = SparseMasks(net, density=0.2)
    sd = masks.state_dict()
    sd["masks"] = [m.float() for m in sd["masks"]]
    before = [m.clone() for m in masks.masks]
    with pytest.raises(ValueError, match="bool tensor"):
        masks.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(before, masks.masks))


# ---------------------------------------------------------------------------------------------
# RigL / SET
# ---------------------------------------------------------------------------------------------

def _train_setup(opt_cls=torch.optim.Adam, density=0.3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8))
    masks = SparseMasks(net, density=density, distribution="uniform", seed=0)
    masks.apply()
    opt = opt_cls(net.parameters(), lr=1e-2)
    x, y = torch.randn(64, 32), torch.randint(0, 8, (64,))
    return net, masks, opt, x, y


def _backward(net, x, y):
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()


def test_cosine_drop_fraction_and_update_schedule():
    net, masks, opt, x, y = _train_setup()
    sch = RigL(masks, opt, delta_t=3, drop_fraction=0.4, stop_step=10)
    assert sch.drop_fraction_at(0) == pytest.approx(0.4)
    assert sch.drop_fraction_at(5) == pytest.approx(0.2)
    assert sch.drop_fraction_at(10) == pytest.approx(0.0)
    updated = []
    for _ in range(12):
        _backward(net, x, y)
        updated.append(sch.step())
    assert [i + 1 for i, u in enumerate(updated) if u] == [3, 6, 9]
    assert RigL(masks, opt, drop_fraction=0.4).drop_fraction_at(10 ** 6) == 0.4


@pytest.mark.parametrize("scheduler", [RigL, SET])
def test_update_invariants(scheduler):
    net, masks, opt, x, y = _train_setup()
    for _ in range(3):  # build up optimizer state
        _backward(net, x, y)
        opt.step()
        masks.apply()
    _backward(net, x, y)
    old_masks = [m.clone() for m in masks.masks]
    old_params = [p.detach().clone() for p in masks.params]
    old_state = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in masks.params}
    version = masks.version
    sch = scheduler(masks, opt, delta_t=1, drop_fraction=0.3)
    assert sch.step()
    assert masks.version == version + 1
    for i, (p, m) in enumerate(masks):
        old = old_masks[i]
        k = int(0.3 * masks.n_active[i])
        assert int(m.sum()) == masks.n_active[i]  # density kept per layer
        grown = m & ~old
        dropped = old & ~m
        assert int(grown.sum()) == int(dropped.sum()) <= k
        assert int(grown.sum()) > 0
        # regrown weights and their state start at zero; kept ones are untouched
        assert torch.equal(p.detach()[grown], torch.zeros(int(grown.sum())))
        for key in ("exp_avg", "exp_avg_sq"):
            s = opt.state[p][key]
            assert torch.equal(s[grown], torch.zeros(int(grown.sum())))
            assert torch.equal(s[m & old], old_state[p][key][m & old])
        assert torch.equal(p.detach()[m & old], old_params[i][m & old])
        _assert_pruned_zero(masks)
        # the drop set is the k smallest active magnitudes (some of them may regrow at once)
        score = torch.where(old, old_params[i].abs(), torch.tensor(float("inf")))
        drop_set = torch.zeros(old.numel(), dtype=torch.bool)
        drop_set[torch.topk(score.flatten(), k, largest=False).indices] = True
        drop_set = drop_set.view(old.shape)
        assert not (dropped & ~drop_set).any()
        assert not (old & ~drop_set & ~m).any()


def test_rigl_grows_largest_uncorrected_gradients():
    net, masks, opt, x, y = _train_setup()
    _backward(net, x, y)
    old_masks = [m.clone() for m in masks.masks]
    grads = [p.grad.clone() for p in masks.params]
    RigL(masks, opt, delta_t=1, drop_fraction=0.25).step()
    for old, new, g in zip(old_masks, masks.masks, grads):
        grown = new & ~old
        # every grown weight beats every weight left inactive
        left_out = ~new
        assert g[grown].abs().min() >= g[left_out].abs().max()


def test_set_is_seeded_and_state_dict_round_trips():
    def run(seed):
        net, masks, opt, x, y = _train_setup(torch.optim.SGD)
        sch = SET(masks, opt, delta_t=2, drop_fraction=0.3, seed=seed)
        for _ in range(4):
            _backward(net, x, y)
            opt.step()
            sch.step()
        return masks, sch

    a, sch_a = run(5)
    b, _ = run(5)
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))
    sd = sch_a.state_dict()
    net, masks, opt, x, y = _train_setup(torch.optim.SGD)
    sch = SET(masks, opt)
    sch.load_state_dict(sd)
    assert (sch.step_count, sch.delta_t, sch.seed) == (4, 2, 5)
    assert torch.equal(sch._grow_score(masks.params[0]), sch_a._grow_score(a.params[0]))


def test_rigl_without_grad_and_bad_arguments():
    net, masks, opt, x, y = _train_setup()
    with pytest.raises(RuntimeError, match="dense gradient"):
        RigL(masks, opt, delta_t=1).step()
    for kw in (dict(delta_t=0), dict(delta_t=1.5), dict(stop_step=0)):
        with pytest.raises(ValueError, match="positive int"):
            RigL(masks, opt, **kw)
    with pytest.raises(ValueError, match="drop_fraction"):
        RigL(masks, opt, drop_fraction=1.2)
    other = torch.optim.SGD(nn.Linear(3, 3).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="does not own"):
        RigL(masks, other)
    with pytest.raises(TypeError, match="SparseMasks"):
        SET([m for m in masks.masks], opt)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 37, 5000])
def test_top_k_equals_torch_topk_on_large_inputs(largest, k):
    """The CPU path (sampled threshold, then top-k of the candidates) is exact."""
    from sparseopt_kernels.sparse.dst import top_k
    gen = torch.Generator().manual_seed(k)
    score = torch.randn(300_000, generator=gen)
    exclude = torch.rand(300_000, generator=gen) < 0.9
    got = top_k(score, k, largest=largest, exclude=exclude)
    want = torch.topk(score.masked_fill(exclude, float("-inf") if largest else float("inf")),
                      k, largest=largest).indices
    assert torch.equal(got.sort().values, want.sort().values)
    got = top_k(score, k, largest=largest)
    assert torch.equal(got.sort().values,
                       torch.topk(score, k, largest=largest).indices.sort().values)


def test_rigl_parallel_update_equals_sequential_and_checks_first():
    """Layers updated on several threads give the sequential result; a missing gradient raises
    before any layer changes."""
    def run(parallel):
        net, masks, opt, x, y = _train_setup()
        net.add_module("big", nn.Linear(600, 200))  # one layer above the top_k sampling size
        masks = SparseMasks(net, density=0.3, distribution="uniform", seed=0)
        masks.apply()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        sch = RigL(masks, opt, delta_t=1, drop_fraction=0.3)
        sch._parallel_cpu = parallel
        _backward(net[:3], x, y)
        net.big.weight.grad = torch.randn(200, 600)
        sch.step()
        return masks, net

    (a, net_a), (b, net_b) = run(True), run(False)
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))
    assert all(torch.equal(x, y) for x, y in zip(net_a.parameters(), net_b.parameters()))
    net, masks, opt, x, y = _train_setup()
    _backward(net, x, y)
    net[2].weight.grad = None
    before = [m.clone() for m in masks.masks]
    with pytest.raises(RuntimeError, match="dense gradient"):
        RigL(masks, opt, delta_t=1).step()
    assert all(torch.equal(x, y) for x, y in zip(before, masks.masks))
