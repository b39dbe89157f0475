"""Benchmark of the fused HAM-AdamW step against its baselines, measured side by side.

    python benchmarks/bench_mirror_step.py [--device cpu|cuda] [--quick] [--json PATH]

Case: HAM on AdamW (α=200, β=1e-3, clamp 5) over N fp32 tensors (default 10 × 2e6 = 2e7
params, the CPU target of issue #2; 1 × 1e8 and 1000 × 1e4 with --suite gpu). Providers:

* ``torch-fused-adamw``  torch.optim.AdamW(fused=True) alone (no mirror step): the floor.
* ``ours-fused``         HAM(AdamW(fused=True)): one fused pass (28 B/element, like AdamW).
* ``ours-standalone``    torch fused AdamW step, then our standalone mirror op (+12 B/element).
* ``reference-wrapper``  the authors' style: torch fused AdamW, then the mirror step as
                         per-tensor torch ops (sign, mul, add, clamp, exp, mul).
* ``compiled-wrapper``   as above with the mirror step under torch.compile.

Every provider's step is first checked against the float64 reference (FAIL, and no timing,
when wrong). Times are medians of torch.utils.benchmark (CPU) or CUDA-event timings (GPU); the
copy bandwidth of the same device is measured in the same run (a large ``copy_``), and each
provider's GB/s counts the bytes it must move per element.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

import torch
import torch.utils.benchmark as tb

import sparseopt_kernels as sk
from sparseopt_kernels.optim import HAM
from sparseopt_kernels.reference import mirror as ref
from sparseopt_kernels.testing import describe_mismatch

ALPHA, BETA, CLAMP, LR = 200.0, 1e-3, 5.0, 1e-3
BYTES = {"torch-fused-adamw": 28, "ours-fused": 28, "ours-standalone": 40,
         "reference-wrapper": 40, "compiled-wrapper": 40}


def wrapper_mirror(params, lr=LR):
    """The reference wrapper's mirror step: per-tensor torch ops, as the authors wrote it."""
    for p in params:
        z = -lr * (ALPHA * torch.sign(p) * p.grad + BETA)
        p.mul_(torch.exp(z.clamp_(-CLAMP, CLAMP)))


compiled_mirror = torch.compile(wrapper_mirror)


def make_params(n_tensors, numel, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for _ in range(n_tensors):
        p = torch.randn(numel, generator=gen).mul_(0.05).to(device).requires_grad_()
        p.grad = torch.randn(numel, generator=gen).mul_(1e-2).to(device)
        params.append(p)
    return params


def make_provider(name, params):
    adamw = torch.optim.AdamW(params, lr=LR, fused=True)
    if name == "torch-fused-adamw":
        return adamw.step
    if name == "ours-fused":
        # the benchmark's tensors are flat, so select them all (the default is ndim >= 2)
        return HAM(adamw, alpha=ALPHA, beta=BETA, clamp=CLAMP, apply_to=lambda p: True).step
    if name == "ours-standalone":
        def step():
            adamw.step()
            sk.functional.mirror_step(params, [p.grad for p in params], lr=LR, alpha=ALPHA,
                                      beta=BETA, clamp=CLAMP)
        return torch.no_grad()(step)
    if name == "reference-wrapper":
        def step():
            adamw.step()
            wrapper_mirror(params)
        return torch.no_grad()(step)
    if name == "compiled-wrapper":
        def step():
            adamw.step()
            compiled_mirror(params)
        return torch.no_grad()(step)
    raise ValueError(name)


def check(name, n_tensors, numel, device):
    """One step of the provider against the float64 reference of the same (HAM-)AdamW step."""
    params = make_params(n_tensors, min(numel, 100_003), device)
    exact = [p.detach().double().clone() for p in params]
    make_provider(name, params)()
    mirrored = name != "torch-fused-adamw"
    steps = [torch.tensor(0.0) for _ in exact]
    ref.ham_adam_(exact, [p.grad.double() for p in params], [torch.zeros_like(e) for e in exact],
                  [torch.zeros_like(e) for e in exact], [], steps, lr=LR, weight_decay=1e-2,
                  decoupled_weight_decay=True, alpha=ALPHA if mirrored else 0.0,
                  beta=BETA if mirrored else 0.0, clamp=CLAMP)
    # |θ| ~ 0.05 here; 1e-7 absolute covers results that cancel to ~0 after the Adam step
    reports = [describe_mismatch(p.detach(), e, rtol=2e-5, atol=1e-7)
               for p, e in zip(params, exact)]
    failures = [r for r in reports if r]
    return not failures, (failures[0] if failures else "")


def time_cpu(fn, min_run_time):
    # Timer defaults to one thread, and torch and _C share one OpenMP runtime: use them all.
    m = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()
                 ).blocked_autorange(min_run_time=min_run_time)
    times = sorted(m.times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return m.median * 1e3, pick(0.2) * 1e3, pick(0.8) * 1e3


def time_cuda(fn, reps=50):
    flush = torch.empty(256 * 1024 * 1024 // 4, device="cuda")
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()  # evict L2 so every step reads DRAM
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2], times[len(times) // 5], times[4 * len(times) // 5]


def copy_bandwidth(device, numel, min_run_time):
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    median_ms = (time_cuda(fn)[0] if device == "cuda" else time_cpu(fn, min_run_time)[0])
    return 8 * numel / (median_ms * 1e-3) / 1e9


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({torch.get_num_threads()} threads)"


def git_sha():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes, short timing")
    ap.add_argument("--suite", choices=["cpu", "gpu"], default=None)
    ap.add_argument("--providers", default=",".join(BYTES))
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    suite = args.suite or ("gpu" if args.device == "cuda" else "cpu")
    cases = {"cpu": [(10, 2_000_000)], "gpu": [(1, 100_000_000), (200, 500_000),
                                               (1000, 10_000)]}[suite]
    if args.quick:
        cases = [(n, max(1, numel // 100)) for n, numel in cases]
    min_run_time = 0.2 if args.quick else 2.0
    providers = args.providers.split(",")

    bw = copy_bandwidth(args.device, 50_000_000 if not args.quick else 2_000_000, min_run_time)
    meta = {"device": device_name(args.device), "torch": torch.__version__,
            "triton": _triton_version(), "cuda": torch.version.cuda,
            "build": sk.build_info(), "backend": os.environ.get("SPARSEOPT_BACKEND", "auto"),
            "copy_bandwidth_gbps": round(bw, 2), "git_sha": git_sha(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
    print(f"# {meta['device']} | torch {meta['torch']} | triton {meta['triton']} | "
          f"copy bandwidth {bw:.1f} GB/s")
    results = []
    for n_tensors, numel in cases:
        case = f"{n_tensors}x{numel:.0e}"
        rows = {}
        for name in providers:
            ok, err = check(name, n_tensors, numel, args.device)
            if not ok:
                print(f"{case:>10} {name:<20} FAIL: {err}")
                rows[name] = dict(correct=False)
                continue
            params = make_params(n_tensors, numel, args.device)
            fn = make_provider(name, params)
            fn()  # warm up (state allocation, compilation)
            med, p20, p80 = (time_cuda(fn) if args.device == "cuda"
                             else time_cpu(fn, min_run_time))
            gbps = BYTES[name] * n_tensors * numel / (med * 1e-3) / 1e9
            rows[name] = dict(correct=True, median_ms=med, p20_ms=p20, p80_ms=p80, gbps=gbps)
            del params, fn
        for name, r in rows.items():
            res = dict(family="optim", case=f"ham-adamw {case}", provider=name, dtype="float32",
                       numel=n_tensors * numel, n_tensors=n_tensors,
                       bytes_per_element=BYTES[name], **r)
            if r["correct"]:
                res["pct_copy_bw"] = 100 * r["gbps"] / bw
                res["speedup_vs"] = {other: rows[other]["median_ms"] / r["median_ms"]
                                     for other in rows if other != name
                                     and rows[other].get("correct")}
            results.append(res)
        _print_table(results[-len(rows):])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0 if all(r["correct"] for r in results) else 1


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def _print_table(rows):
    print(f"{'case':<22} {'provider':<20} {'median ms':>10} {'p20':>8} {'p80':>8} {'B/el':>5} "
          f"{'GB/s':>7} {'%copy':>6}  ratio vs torch-fused-adamw / reference-wrapper")
    for r in rows:
        if not r["correct"]:
            print(f"{r['case']:<22} {r['provider']:<20} FAIL")
            continue
        sv = r["speedup_vs"]
        vs_torch = 1 / sv["torch-fused-adamw"] if "torch-fused-adamw" in sv else 1.0
        vs_wrap = sv.get("reference-wrapper", 1.0)
        print(f"{r['case']:<22} {r['provider']:<20} {r['median_ms']:>10.3f} {r['p20_ms']:>8.3f} "
              f"{r['p80_ms']:>8.3f} {r['bytes_per_element']:>5} {r['gbps']:>7.1f} "
              f"{r['pct_copy_bw']:>6.1f}  {vs_torch:.2f}x time of torch / "
              f"{vs_wrap:.2f}x faster than wrapper")


if __name__ == "__main__":
    sys.exit(main())
