"""SparseOpt on real data: a small BatchNorm CNN on scikit-learn's digits, 90% sparse, RigL.

    python python/examples/sparseopt_digits.py [--seeds 3] [--steps 1500] [--plot digits.png]

The 1797 8×8 handwritten digits ship with scikit-learn (no download). The conv and linear
weights are masked at 90% sparsity (ERK layer densities) and the masks evolve with RigL
(ΔT = 50 steps, drop fraction 0.3 with cosine decay, stopped at 75% of training). Three
optimizers share the same masked, fused SGD-momentum step and differ only in:

* baseline:      RigL + masked SGD (SparseOpt with ``corrected=[]``: no correction);
* SparseOpt:     the BN-skew correction g̃ = c ⊙ g on every masked weight feeding a BatchNorm;
* SparseOpt+HAM: the same, with the hyperbolic mirror step (HAM) fused into the SGD step.

It prints final / best test accuracy and the accuracy early in training (the paper reports the
gain mostly as faster convergence) over several seeds, and writes a plot of test accuracy
against steps. Runs on the CPU in a few minutes.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Dict, List

import torch
from torch import nn

from sparseopt_kernels.optim import HAM, SparseOpt
from sparseopt_kernels.sparse import RigL, SparseMasks

VARIANTS = ("baseline", "SparseOpt", "SparseOpt+HAM")


def load_digits_split(seed: int = 0, n_test: int = 497):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def make_model() -> nn.Sequential:
    # Conv → BN pairs (no conv bias: BatchNorm removes it); the head is the only layer whose
    # output does not feed a normalization layer.
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    model.eval()
    x, y = data
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train(variant: str, seed: int, steps: int, density: float, eval_every: int,
          train_data, test_data, lr: float = 0.05, batch: int = 64, alpha: float = 20.0
          ) -> List[float]:
    torch.manual_seed(seed)
    model = make_model()
    masks = SparseMasks(model, density=density, distribution="erk", seed=seed)
    masks.apply()
    base = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    if variant == "SparseOpt+HAM":
        base = HAM(base, alpha=alpha, beta=0.0, clamp=5.0)
    head = model[-1].weight
    behind_bn = [p for p in masks.params if p is not head]
    opt = SparseOpt(base, masks, corrected=[] if variant == "baseline" else behind_bn)
    rigl = RigL(masks, opt, delta_t=50, drop_fraction=0.3, stop_step=int(0.75 * steps))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    x_train, y_train = train_data
    gen = torch.Generator().manual_seed(1000 + seed)
    curve = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(y_train), (batch,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
        rigl.step()  # uses the uncorrected gradient for growth; tells SparseOpt of new masks
        sched.step()
        if step % eval_every == 0:
            curve.append(accuracy(model, test_data))
    assert abs(masks.actual_density() - density) < 0.01
    return curve


def summarize(curves: Dict[str, List[List[float]]], eval_every: int) -> str:
    def stats(values: List[float]) -> str:
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * mean:6.2f} ± {100 * sd:4.2f}"

    n_points = len(next(iter(curves.values()))[0])
    early = max(0, n_points // 5 - 1)
    lines = [f"{'variant':<15} {'final acc %':>15} {'best acc %':>15} "
             f"{'acc % at step ' + str((early + 1) * eval_every):>18}"]
    for name, runs in curves.items():
        lines.append(f"{name:<15} {stats([r[-1] for r in runs]):>15} "
                     f"{stats([max(r) for r in runs]):>15} {stats([r[early] for r in runs]):>18}")
    return "\n".join(lines)


def plot(curves: Dict[str, List[List[float]]], eval_every: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in curves.items():
        steps = [eval_every * (i + 1) for i in range(len(runs[0]))]
        t = torch.tensor(runs) * 100
        ax.plot(steps, t.mean(0), label=name)
        ax.fill_between(steps, t.min(0).values, t.max(0).values, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits, 90% sparse CNN with RigL ({len(runs)} seeds, min–max band)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> Dict[str, List[List[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--plot", default="sparseopt_digits.png",
                        help="where to write the accuracy plot ('' for none)")
    args = parser.parse_args(argv)
    train_data, test_data = load_digits_split()
    curves = {name: [train(name, seed, args.steps, args.density, args.eval_every, train_data,
                           test_data) for seed in range(args.seeds)] for name in VARIANTS}
    print(summarize(curves, args.eval_every))
    if args.plot:
        plot(curves, args.eval_every, args.plot)
        print(f"plot: {args.plot}")
    return curves


if __name__ == "__main__":
    main()
