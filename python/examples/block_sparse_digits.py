"""Block-sparse training that is faster than dense: a wide MLP on scikit-learn's digits.

    python python/examples/block_sparse_digits.py [--steps 300] [--width 2048] [--batch 1024]

The 1797 8×8 digits (no download) feed an MLP 64 → W → W → W → 10 whose three wide hidden
layers (W × 64 and W × W) are the interesting part. Three variants train with the same AdamW
(lr 1e-3, batch drawn with replacement, the same seed):

* dense:          nn.Linear everywhere;
* block-sparse:   the W × W layers are BlockSparseLinear (block 64, 10% of the blocks), the layout
                  evolves with BlockRigL (ΔT = 50, drop fraction 0.3, cosine decay, stopped at 75%);
* block-sparse + HAM: the same, with HAM's mirror step fused into the AdamW step.

It prints the test accuracy and the median wall-clock time of a training step (forward,
backward, optimizer, scheduler) of each. Runs on the CPU in a couple of minutes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from sparseopt_kernels.optim import HAM
from sparseopt_kernels.sparse import BlockRigL, BlockSparseLinear

VARIANTS = ("dense", "block-sparse", "block-sparse + HAM")


def load_digits_split(seed: int = 0, n_test: int = 497):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def make_model(variant: str, width: int) -> nn.Sequential:
    def hidden():
        if variant == "dense":
            return nn.Linear(width, width)
        return BlockSparseLinear(width, width, block_size=64, density=0.1)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), hidden(), nn.ReLU(), hidden(),
                         nn.ReLU(), nn.Linear(width, 10))


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    x, y = data
    return (model(x).argmax(1) == y).float().mean().item() * 100


def train(variant: str, args, train_data, test_data):
    torch.manual_seed(args.seed)
    model = make_model(variant, args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    if variant.endswith("HAM"):
        opt = HAM(opt, alpha=5.0, beta=1e-4)
    rigl = None
    if variant != "dense":
        rigl = BlockRigL(model, opt, delta_t=50, drop_fraction=0.3,
                         stop_step=int(0.75 * args.steps))
    x_all, y_all = train_data
    gen = torch.Generator().manual_seed(args.seed)
    times = []
    for _ in range(args.steps):
        idx = torch.randint(len(y_all), (args.batch,), generator=gen)
        start = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
        opt.step()
        if rigl is not None:
            rigl.step()
        times.append(time.perf_counter() - start)
    return accuracy(model, test_data), statistics.median(times) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train_data, test_data = load_digits_split(args.seed)
    print(f"digits: {len(train_data[1])} train / {len(test_data[1])} test; MLP 64 → "
          f"{args.width} ×3 → 10, batch {args.batch}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'variant':20s} {'test acc %':>10s} {'ms/step':>9s} {'speed-up':>9s}")
    results = {}
    for variant in VARIANTS:
        acc, ms = results[variant] = train(variant, args, train_data, test_data)
        print(f"{variant:20s} {acc:10.2f} {ms:9.1f} {results['dense'][1] / ms:8.2f}x")
    return results


if __name__ == "__main__":
    main()
