"""Cost of a RigL mask update against optimizer steps, on a ResNet-50-sized parameter set.

    python benchmarks/bench_rigl_update.py [--device cpu|cuda] [--density 0.1] [--save DIR]

The 54 conv and fc weights of ResNet-50 (25.5 M parameters; BatchNorm and biases excluded, as
they stay dense) get ERK masks at the given density and random dense gradients. Timed, in the
same run: one SparseOpt(AdamW) step (fused masked AdamW with the BN-skew correction), one
RigL update (drop fraction 0.3: per layer a top-k of |θ| over the active weights, a top-k of
|∇L| over the inactive ones, indexed writes of weights, moments and mask), and the coefficient
refresh that follows it. Target: an update costs less than 10 optimizer steps.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import List, Tuple

import torch
import torch.utils.benchmark as tb

import sparseopt_kernels
from sparseopt_kernels.optim import SparseOpt
from sparseopt_kernels.sparse import RigL, SparseMasks


def resnet50_weight_shapes() -> List[Tuple[int, ...]]:
    shapes = [(64, 3, 7, 7)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            if b == 0:
                shapes.append((4 * width, in_ch, 1, 1))  # projection shortcut
            in_ch = 4 * width
    shapes.append((1000, 2048))
    return shapes


def timed(fn, device: str, min_run_time: float = 2.0) -> float:
    """Median seconds per call (all threads; CUDA synchronized by the timer)."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--save", default=None, help="directory for the JSON result")
    args = parser.parse_args(argv)
    device = args.device
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in resnet50_weight_shapes():
        p = (torch.randn(shape, generator=gen, device=device) * 0.05).requires_grad_()
        p.grad = torch.randn(shape, generator=gen, device=device) * 1e-2
        params.append(p)
    masks = SparseMasks(params, density=args.density, distribution="erk", seed=0)
    masks.apply()
    opt = SparseOpt(torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2), masks)
    opt.step()  # creates the state; the timed steps reuse it
    rigl = RigL(masks, opt, delta_t=1, drop_fraction=0.3)

    step_s = timed(opt.step, device)
    update_s = timed(lambda: rigl.update(0.3), device)
    refresh_s = timed(lambda: (masks.changed(), opt.refresh()), device)
    numel = sum(p.numel() for p in params)
    result = {
        "device": (torch.cuda.get_device_name() if device == "cuda"
                   else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {"torch": torch.__version__, "sparseopt_kernels": sparseopt_kernels.__version__},
        "params": numel, "layers": len(params), "density": args.density,
        "sparseopt_adamw_step_ms": step_s * 1e3,
        "rigl_update_ms": update_s * 1e3,
        "coefficient_refresh_ms": refresh_s * 1e3,
        "update_in_steps": (update_s + refresh_s) / step_s,
    }
    print(f"ResNet-50 weights: {numel / 1e6:.1f} M params in {len(params)} layers, density "
          f"{args.density}, {device}, {result['threads']} threads")
    print(f"  SparseOpt(AdamW) step      {result['sparseopt_adamw_step_ms']:9.2f} ms")
    print(f"  RigL update (drop 0.3)     {result['rigl_update_ms']:9.2f} ms")
    print(f"  coefficient refresh        {result['coefficient_refresh_ms']:9.2f} ms")
    print(f"  update + refresh = {result['update_in_steps']:.2f} optimizer steps (target < 10)")
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        path = os.path.join(args.save, f"rigl-update-{device}-{result['date']}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
