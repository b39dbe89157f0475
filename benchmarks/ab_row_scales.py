"""Interleaved A/B timing of the fused SparseOpt correction on the CPU.

    python benchmarks/ab_row_scales.py [--rounds 15] [--row 1000]

The shared development VM's memory bandwidth drifts by up to 1.6× within a run, so the
sequential medians of `sparseopt-bench` can put the correction anywhere in −5%…+10%. Here the
masked AdamW step with and without `row_scales` alternate in short rounds (10 × 2e6 fp32,
half pruned, bool masks, rows of `--row` elements) and the per-round ratios are summarized.
"""
import argparse
import statistics

import torch
import torch.utils.benchmark as tb

from sparseopt_kernels import functional as F


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--row", type=int, default=1000)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    shape = (2_000_000 // args.row, args.row)
    params = [torch.randn(shape, generator=gen) * 0.05 for _ in range(10)]
    grads = [torch.randn(shape, generator=gen) * 1e-2 for _ in range(10)]
    masks = [torch.rand(shape, generator=gen) < 0.5 for _ in range(10)]
    for p, m in zip(params, masks):
        p.mul_(m)
    coefficients = F.row_coefficients(masks)
    m_, v_ = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    steps = [torch.zeros(()) for _ in params]

    def step(row_scales):
        F.ham_adam(params, grads, m_, v_, [], steps, lr=1e-3, weight_decay=1e-2,
                   decoupled_weight_decay=True, alpha=0.0, beta=0.0, masks=masks,
                   row_scales=row_scales)

    def timed(row_scales):
        t = tb.Timer("step(c)", globals={"step": step, "c": row_scales},
                     num_threads=torch.get_num_threads())
        return t.blocked_autorange(min_run_time=0.3).median

    ratios = []
    for r in range(args.rounds):
        pair = [timed(None), timed(coefficients)] if r % 2 == 0 else \
            list(reversed([timed(coefficients), timed(None)]))
        ratios.append(pair[1] / pair[0])
    q = statistics.quantiles(ratios, n=4)
    print(f"rows of {args.row}: corrected / uncorrected step time over {args.rounds} "
          f"interleaved rounds: median {statistics.median(ratios):.3f} "
          f"(quartiles {q[0]:.3f}–{q[2]:.3f}, range {min(ratios):.3f}–{max(ratios):.3f})")


if __name__ == "__main__":
    main()
