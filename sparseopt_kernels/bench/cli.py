"""``sparseopt-bench`` / ``python -m sparseopt_kernels.bench``: the microbenchmark CLI.

    sparseopt-bench optim  [--device cpu|cuda] [--dtype float32] [--sizes standard|cpu|quick|NxM,...]
                           [--cases ham-adamw,...] [--providers ours-*,torch-fused,...] [--quick]
                           [--json PATH] [--csv PATH] [--plot PATH] [--save DIR]
                           [--compare OLD.json [--fail-if-regression PCT]] [--list]
    sparseopt-bench matmul ...   (sizes MxKxN/bBLOCK/dDENSITY)
    sparseopt-bench all    ...

Every provider is checked against the float64 reference before it is timed (FAIL: no timing,
no speed-up). Exit status: 0 all correct, 1 a provider failed its check, 3 a regression beyond
``--fail-if-regression`` against ``--compare``, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import torch

from . import engine

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
FAMILY_ORDER = ["optim", "matmul"]


class UsageError(Exception):
    """Bad arguments, reported like argparse's (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available, else cpu")
    common.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="param / operand dtype (default float32)")
    common.add_argument("--sizes", default=None,
                        help="comma-separated presets (standard, cpu, quick) and explicit sizes: "
                             "optim N_TENSORSxNUMEL (e.g. 1x1e8,200x5e5), matmul "
                             "MxKxN/bBLOCK/dDENSITY. Default: standard on CUDA, cpu on CPU "
                             "(quick with --quick)")
    common.add_argument("--cases", default=None,
                        help="comma-separated case names or globs (default: all of the family)")
    common.add_argument("--providers", default=None,
                        help="comma-separated provider names or globs, e.g. 'ours-*,torch-fused'"
                             " (default: every provider available on the device)")
    common.add_argument("--quick", action="store_true",
                        help="tiny sizes (unless --sizes) and short timing: a smoke test")
    common.add_argument("--json", metavar="PATH", help="write meta and results as JSON")
    common.add_argument("--csv", metavar="PATH", help="write the results as CSV")
    common.add_argument("--plot", metavar="PATH",
                        help="write a PNG of GB/s (TFLOP/s) against size (needs matplotlib)")
    common.add_argument("--save", metavar="DIR",
                        help="write DIR/<device>-<date>.json and .csv (and .png when matplotlib "
                             "is installed): the layout of benchmarks/results/")
    common.add_argument("--compare", metavar="PATH",
                        help="compare the medians with an earlier run's JSON")
    common.add_argument("--fail-if-regression", metavar="PCT", type=float, default=None,
                        help="with --compare: exit 3 when a provider is more than PCT%% slower "
                             "(or fails where it passed)")
    common.add_argument("--min-run-time", type=float, default=None, metavar="S",
                        help="CPU: seconds of timing per provider (default 1, 0.05 with --quick)")
    common.add_argument("--reps", type=int, default=None,
                        help="CUDA: timed calls per provider (default 50, 10 with --quick)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    common.add_argument("--list", action="store_true",
                        help="list the cases and providers and exit")

    parser = argparse.ArgumentParser(
        prog="sparseopt-bench",
        description="Microbenchmarks of sparseopt_kernels against torch and the reference: "
                    "each provider is checked against float64 before it is timed.")
    sub = parser.add_subparsers(dest="family", metavar="{optim,matmul,all}")
    sub.add_parser("optim", parents=[common],
                   help="optimizer steps: HAM-AdamW, HAM-SGD, HORST, the mirror op")
    sub.add_parser("matmul", parents=[common],
                   help="block-sparse linear layers: forward, forward+backward, layout updates")
    sub.add_parser("all", parents=[common], help="every family")
    return parser


def _split(value: Optional[str]) -> List[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _list(families: List[str], device: str) -> str:
    lines = []
    for name in families:
        family = engine.FAMILIES[name]
        lines.append(f"{name}: {family.description}")
        for preset, sizes in family.presets.items():
            lines.append(f"  preset {preset:<9} {', '.join(sizes)}")
        for case in engine.cases_of(name):
            lines.append(f"  case {case.name}: {case.description}")
            for p in case.providers.values():
                flags = []
                if p.is_default(device):
                    flags.append("default")
                if p.baseline:
                    flags.append("baseline")
                lines.append(f"    {p.name:<20} {p.description}"
                             + (f" [{', '.join(flags)}]" if flags else ""))
    return "\n".join(lines)


def _plan(args, families: List[str], device: str, dtype: torch.dtype):
    """([(family, case, sizes, providers)], {(provider, reason): [case names]}) for the
    arguments: the runs, and the selected providers that cannot run here and why."""
    size_spec = args.sizes or ("quick" if args.quick else None)
    tokens = _split(size_spec)
    for token in tokens:  # every token must be a preset or a size of one of the families
        claimed = False
        for name in families:
            family = engine.FAMILIES[name]
            try:
                claimed |= token in family.presets or family.parse_size(token) is not None
            except ValueError as exc:
                raise UsageError(str(exc))
        if not claimed:
            raise UsageError(f"--sizes: {token!r} is neither a preset nor a size of "
                             f"{'/'.join(families)}")
    case_patterns, provider_patterns = _split(args.cases), _split(args.providers)
    plan, skipped = [], {}
    matched_cases, matched_providers = set(), set()
    import fnmatch
    for name in families:
        sizes = engine.FAMILIES[name].sizes(size_spec, device)
        for case in engine.cases_of(name):
            hits = [p for p in case_patterns if fnmatch.fnmatchcase(case.name, p)]
            if case_patterns and not hits:
                continue
            matched_cases.update(hits)
            providers = engine.select_providers(case, provider_patterns, device)
            for pat in provider_patterns:
                if any(fnmatch.fnmatchcase(p.name, pat) for p in providers):
                    matched_providers.add(pat)
            runnable = []
            for p in providers:
                reason = p.reason_unavailable(device, dtype)
                if reason:
                    skipped.setdefault((p.name, reason), []).append(case.name)
                else:
                    runnable.append(p)
            providers = runnable
            if sizes and providers:
                plan.append((name, case, sizes, providers))
    unknown = [p for p in case_patterns if p not in matched_cases]
    if unknown:
        known = sorted({c.name for f in families for c in engine.cases_of(f)})
        raise UsageError(f"--cases: no case matches {', '.join(unknown)}; known: "
                         f"{', '.join(known)}")
    unknown = [p for p in provider_patterns if p not in matched_providers]
    if unknown:
        known = sorted({p.name for _, c, _, _ in plan for p in c.providers.values()}
                       | {p.name for f in families for c in engine.cases_of(f)
                          for p in c.providers.values()})
        raise UsageError(f"--providers: no provider matches {', '.join(unknown)}; known: "
                         f"{', '.join(known)}")
    return plan, skipped


def run(args) -> int:
    engine.load_families()
    families = FAMILY_ORDER if args.family == "all" else [args.family]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (torch "
                         f"{torch.__version__}, CUDA {torch.version.cuda})")
    if args.list:
        print(_list(families, device))
        return 0
    if args.fail_if_regression is not None and not args.compare:
        raise UsageError("--fail-if-regression needs --compare PATH")
    if args.plot:
        reason = engine.plot_available()
        if reason:
            raise UsageError(reason)
    old = None
    if args.compare:
        try:
            with open(args.compare) as f:
                old = json.load(f)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--compare {args.compare}: {exc}")
    dtype = DTYPES[args.dtype]
    plan, skipped = _plan(args, families, device, dtype)

    timing = engine.Timing.quick() if args.quick else engine.Timing()
    if args.min_run_time is not None:
        timing.min_run_time = args.min_run_time
    if args.reps is not None:
        timing.cuda_reps = args.reps

    meta = engine.environment(device)
    copy_numel = 4 * 2**20 if args.quick else (256 if device == "cuda" else 64) * 2**20
    meta["copy_bandwidth_gbps"] = round(engine.copy_bandwidth(device, copy_numel, timing), 2)
    meta.update(dtype=args.dtype, sizes=args.sizes or ("quick" if args.quick else "default"),
                quick=args.quick, command=" ".join(["sparseopt-bench"] + args.argv))
    print(engine.header(meta))
    for (name, reason), case_names in skipped.items():
        print(f"# skip {name} ({', '.join(case_names)}): {reason}")

    progress = engine.Progress(sum(len(s) * len(p) for _, _, s, p in plan),
                               enabled=not args.no_progress)
    rows: List[Dict] = []
    noted = set()
    for family, case, sizes, providers in plan:
        note = engine.FAMILIES[family].note()
        if note and family not in noted:
            noted.add(family)
            progress.clear()
            print(note)
        for size in sizes:
            block = engine.run_case(case, size, providers, device, dtype, timing,
                                    meta["copy_bandwidth_gbps"], progress=progress)
            progress.clear()
            print(engine.format_table(block), flush=True)
            rows.extend(block)
    for family in families:
        note = engine.FAMILIES[family].note()
        if note and family not in noted:
            print(note)
    if not rows:
        print("no results")

    outputs = dict(json=args.json, csv=args.csv, plot=args.plot)
    if args.save:
        stem = os.path.join(args.save, engine.result_stem(meta))
        outputs["json"] = outputs["json"] or stem + ".json"
        outputs["csv"] = outputs["csv"] or stem + ".csv"
        if outputs["plot"] is None and engine.plot_available() is None:
            outputs["plot"] = stem + ".png"
    if outputs["json"]:
        engine.write_json(outputs["json"], meta, rows)
        print(f"wrote {outputs['json']}")
    if outputs["csv"]:
        engine.write_csv(outputs["csv"], rows)
        print(f"wrote {outputs['csv']}")
    if outputs["plot"] and rows:
        engine.write_plot(outputs["plot"], meta, rows)
        print(f"wrote {outputs['plot']}")

    failed = [r for r in rows if not r["correct"]]
    regressions: List[str] = []
    if old is not None:
        threshold = args.fail_if_regression if args.fail_if_regression is not None else 10.0
        table, regressions = engine.compare(rows, meta, old, threshold)
        print(table)
    if failed:
        print(f"{len(failed)} provider run(s) FAILED their correctness check:")
        for r in failed:
            print(f"  {r['case']} {r['size']} {r['provider']}: {r['error']}")
        return 1
    if regressions and args.fail_if_regression is not None:
        print(f"{len(regressions)} regression(s) beyond {args.fail_if_regression:g}%:")
        for line in regressions:
            print(f"  {line}")
        return 3
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.family is None:
        parser.print_help()
        return 2
    try:
        return run(args)
    except UsageError as exc:
        print(f"sparseopt-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
