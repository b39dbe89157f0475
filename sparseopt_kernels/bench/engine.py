"""The benchmark engine: registries of families, cases and providers; correctness check, timing,
tables, JSON/CSV/PNG output and comparison with an earlier run.

Vocabulary:

* A **family** (``optim``, ``matmul``) is a CLI subcommand. It knows its size presets and how to
  parse an explicit size (``10x2e6`` for optimizers, ``512x1024x1024/b32/d0.1`` for matmuls).
* A **case** is one computation of a family (``ham-adamw``, ``mirror``, ...). It makes the
  inputs for a :class:`Size`, computes the float64 expected result, and picks the outputs to
  compare.
* A **provider** is one implementation of a case (``ours-cpp``, ``torch-fused``, ...). Its
  ``build(inputs)`` returns the step to time; ``computes`` names which expected result it must
  match (e.g. torch's AdamW computes the ``"base"`` step, without the mirror step).

Per (case, size, provider): the provider first runs once on a small copy of the inputs and is
compared with the float64 expected result (a mismatch is a FAIL: no timing, no speed-up); then it
is built on the full-size inputs, warmed up and timed. Times are in milliseconds per call. On the
CPU the providers of one (case, size) are timed in alternation (:func:`time_cpu_interleaved`), so
the speed-ups compare them under the same machine conditions.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import fnmatch
import gc
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..backends import ENV_VAR as BACKEND_ENV_VAR
from ..testing import describe_mismatch

# --------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """One workload size. ``numel`` is per tensor (optimizers) or the weight's element count
    (matmuls); ``params`` holds family-specific extras (matmul: M, K, N, block, density)."""
    label: str
    n_tensors: int = 1
    numel: int = 0
    params: Tuple[Tuple[str, Any], ...] = ()

    @property
    def total_numel(self) -> int:
        return self.n_tensors * self.numel

    def get(self, key: str) -> Any:
        return dict(self.params)[key]


@dataclass
class Provider:
    """One implementation of a case.

    Args:
        name: unique within its case (``ours-cpp``, ``torch-fused``, ...).
        build: ``build(inputs) -> step``; ``step()`` runs one call (it may return the output).
        computes: which expected result of the case the output must match.
        bytes_per_element: ``f(dtype)``, the bytes the provider's passes must move per element
            (reads + writes of every tensor it streams; None when not meaningful).
        backend: the ``SPARSEOPT_BACKEND`` forced while this provider is checked and timed.
        baseline: the tables print this provider's time ratio against every other provider.
        default: run when ``--providers`` is not given: a bool, or ``f(device_type) -> bool``
            (``ours-cuda`` is a default on CUDA only).
        unavailable: ``f(device_type, dtype) -> reason or None``; unavailable providers are
            skipped with the reason.
    """
    name: str
    build: Callable[[Any], Callable[[], Any]]
    computes: str = "main"
    bytes_per_element: Optional[Callable[[torch.dtype], Optional[float]]] = None
    backend: Optional[str] = None
    baseline: bool = False
    default: Any = True
    unavailable: Optional[Callable[[str, torch.dtype], Optional[str]]] = None
    description: str = ""

    def is_default(self, device_type: str) -> bool:
        return self.default(device_type) if callable(self.default) else bool(self.default)

    def reason_unavailable(self, device_type: str, dtype: torch.dtype) -> Optional[str]:
        return self.unavailable(device_type, dtype) if self.unavailable else None


@dataclass
class Case:
    """One computation of a family.

    Args:
        make_inputs: ``f(size, device, dtype, seed) -> inputs`` (fresh tensors each call).
        expected: ``f(inputs, computes) -> [float64 tensors]``, computed from the inputs before
            any provider ran on them (must not modify them).
        outputs: ``f(inputs, step_result) -> [tensors]`` to compare with ``expected``.
        tolerance: ``f(dtype) -> (rtol, atol)``.
        check_size: ``f(size) -> size`` of the correctness check (a smaller copy of the
            workload that keeps its structure: same tensor count, capped length).
        flops: ``f(size, provider) -> useful floating-point operations`` of one call, or None.
    """
    family: str
    name: str
    description: str
    make_inputs: Callable[[Size, str, torch.dtype, int], Any]
    expected: Callable[[Any, str], List[torch.Tensor]]
    outputs: Callable[[Any, Any], List[torch.Tensor]]
    tolerance: Callable[[torch.dtype], Tuple[float, float]]
    check_size: Callable[[Size], Size] = lambda size: size
    flops: Optional[Callable[[Size, "Provider"], Optional[float]]] = None
    providers: Dict[str, Provider] = field(default_factory=dict)


@dataclass
class Family:
    """A CLI subcommand: size presets and the parser of explicit sizes."""
    name: str
    description: str
    presets: Dict[str, List[str]]
    parse_size: Callable[[str], Optional[Size]]
    default_preset: Callable[[str], str]  # device type -> preset name
    note: Callable[[], str] = lambda: ""  # printed before the family's tables

    def sizes(self, spec: Optional[str], device_type: str) -> List[Size]:
        """The sizes of a ``--sizes`` spec: preset names and explicit sizes, comma-separated.
        Explicit sizes of another family are ignored (``all --sizes 1x1e6`` runs optim only)."""
        tokens = [t.strip() for t in (spec or self.default_preset(device_type)).split(",")]
        out: List[Size] = []
        for token in filter(None, tokens):
            if token in self.presets:
                out.extend(self.parse_size(t) for t in self.presets[token])
            else:
                size = self.parse_size(token)
                if size is not None:
                    out.append(size)
        return out


FAMILIES: Dict[str, Family] = {}
CASES: Dict[Tuple[str, str], Case] = {}

# Modules that register each family's cases and providers when imported. A new kernel family
# (masked Adam, SparseOpt, block-sparse matmul) adds its module here or calls
# ``add_family_module`` before ``load_families()`` runs.
FAMILY_MODULES: Dict[str, List[str]] = {
    "optim": ["sparseopt_kernels.bench.optim", "sparseopt_kernels.bench.masked",
              "sparseopt_kernels.bench.skew"],
    "matmul": ["sparseopt_kernels.bench.matmul"],
}


def add_family_module(family: str, module: str) -> None:
    """Have ``load_families`` import ``module`` (which registers cases/providers) for
    ``family``."""
    FAMILY_MODULES.setdefault(family, [])
    if module not in FAMILY_MODULES[family]:
        FAMILY_MODULES[family].append(module)


def load_families() -> Dict[str, Family]:
    import importlib
    for modules in FAMILY_MODULES.values():
        for module in modules:
            importlib.import_module(module)
    return FAMILIES


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def register_case(case: Case) -> Case:
    """Register a case (replacing one of the same family and name)."""
    if case.family not in FAMILIES:
        raise KeyError(f"unknown benchmark family {case.family!r}; known: {sorted(FAMILIES)}")
    CASES[(case.family, case.name)] = case
    return case


def register_provider(family: str, case: str, provider: Provider) -> Provider:
    """Add (or replace) a provider of a registered case: the hook for kernels that land later
    (e.g. ``register_provider("matmul", "block-sparse-linear", Provider("ours-triton", ...))``)."""
    CASES[(family, case)].providers[provider.name] = provider
    return provider


def unregister_provider(family: str, case: str, name: str) -> None:
    CASES[(family, case)].providers.pop(name, None)


def cases_of(family: str) -> List[Case]:
    return [c for (f, _), c in CASES.items() if f == family]


def select_providers(case: Case, patterns: Optional[Sequence[str]], device_type: str
                     ) -> List[Provider]:
    """The providers of ``case`` named by ``patterns`` (fnmatch globs), or its defaults."""
    if not patterns:
        return [p for p in case.providers.values() if p.is_default(device_type)]
    return [p for p in case.providers.values()
            if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]


OURS_BACKENDS = ("cuda", "triton", "cpp")


def _backend_unavailable(backend: str, kernel_family: str
                         ) -> Callable[[str, torch.dtype], Optional[str]]:
    def why(device_type: str, dtype: torch.dtype) -> Optional[str]:
        from .. import backends
        families = getattr(backends, "FAMILIES", None)
        if families is not None and backend not in families.get(kernel_family, {}):
            return f"no {backend} kernels for the {kernel_family} family in this build yet"
        return backends.unavailable(backend, device_type, dtype)
    return why


def ours_providers(build: Callable[[Any], Callable[[], Any]],
                   bytes_per_element: Callable[[torch.dtype], Optional[float]],
                   computes: str = "main", kernel_family: str = "mirror",
                   description: str = "") -> List[Provider]:
    """``ours-cuda``, ``ours-triton``, ``ours-cpp`` (each forcing its backend) and ``reference``
    (the pure-PyTorch reference backend) for one step function of ours.

    Defaults: ``ours-cuda`` and ``ours-triton`` on CUDA, ``ours-cpp`` on CPU, ``reference``
    everywhere. ``ours-triton`` on CPU runs only when asked for by name and with
    ``TRITON_INTERPRET=1`` (the interpreter is far too slow for a default).
    ``kernel_family`` is the key of ``sparseopt_kernels.backends.FAMILIES`` whose backends
    implement the op (a backend without kernels for it is skipped with that reason).
    """
    defaults = {"cuda": lambda d: d == "cuda", "triton": lambda d: d == "cuda",
                "cpp": lambda d: d == "cpu"}
    out = [Provider(f"ours-{b}", build, computes, bytes_per_element, backend=b,
                    default=defaults[b], unavailable=_backend_unavailable(b, kernel_family),
                    description=f"{description} (SPARSEOPT_BACKEND={b})")
           for b in OURS_BACKENDS]
    out.append(Provider("reference", build, computes, bytes_per_element, backend="reference",
                        description=f"{description} on the pure-PyTorch reference backend"))
    return out


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def forced_backend(name: Optional[str]) -> Iterator[None]:
    """Set ``SPARSEOPT_BACKEND=name`` for the duration (nothing if None); restore afterwards."""
    if name is None:
        yield
        return
    old = os.environ.get(BACKEND_ENV_VAR)
    os.environ[BACKEND_ENV_VAR] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(BACKEND_ENV_VAR, None)
        else:
            os.environ[BACKEND_ENV_VAR] = old


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device_type: str) -> Dict[str, Any]:
    """Name of the device and its count of cores (CPU) or SMs (CUDA)."""
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return dict(device=props.name, compute_units=props.multi_processor_count,
                    compute_unit_kind="SMs",
                    memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return dict(device=_cpu_model(), compute_units=cores, compute_unit_kind="cores",
                threads=torch.get_num_threads())


def git_sha() -> str:
    """Short commit of the source tree (``-dirty`` when it has uncommitted changes)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                      text=True, stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"],
                                        cwd=root, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return sha + ("-dirty" if dirty else "")


def _triton_version() -> Optional[str]:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def environment(device_type: str) -> Dict[str, Any]:
    """The run's metadata (the JSON ``meta``), without the copy bandwidth."""
    import sparseopt_kernels as sk
    meta = dict(device_type=device_type, **device_info(device_type))
    versions = dict(torch=torch.__version__, triton=_triton_version(), cuda=torch.version.cuda,
                    python=platform.python_version())
    meta.update(versions=versions, **versions, build=sk.build_info(),
                backend=os.environ.get(BACKEND_ENV_VAR, "auto"),
                triton_interpret=os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                git_sha=git_sha(),
                timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"))
    return meta


def header(meta: Dict[str, Any]) -> str:
    build = meta["build"]
    if build.get("built"):
        b = (f"_C for torch {build['torch_version']}, {build['compiler']}, ISA "
             f"{build['cpu_isa']}, OpenMP {'on' if build['openmp'] else 'off'}, "
             + (f"CUDA {build['cuda_version']} sm {build['cuda_archs']}" if build["cuda"]
                else "no CUDA kernels"))
    else:
        b = f"_C not loaded: {build.get('reason', '?')}"
    units = f"{meta['compute_units']} {meta['compute_unit_kind']}"
    if meta["device_type"] == "cpu":
        units += f", {meta['threads']} torch threads"
    return "\n".join([
        f"# device   {meta['device']} ({units})",
        f"# versions torch {meta['torch']} | triton {meta['triton']} | CUDA {meta['cuda']} | "
        f"python {meta['python']} | git {meta['git_sha'] or '?'}",
        f"# build    {b}; SPARSEOPT_BACKEND={meta['backend']}",
        f"# copy bandwidth {meta['copy_bandwidth_gbps']:.1f} GB/s (large copy_, this run): "
        "the practical limit of memory-bound kernels",
    ])


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """How long to time: CPU ``min_run_time`` seconds per provider; CUDA warm-up and reps."""
    min_run_time: float = 1.0
    cuda_warmup: int = 5
    cuda_reps: int = 50

    @classmethod
    def quick(cls) -> "Timing":
        return cls(min_run_time=0.05, cuda_warmup=2, cuda_reps=10)


def _quantiles(times_ms: List[float]) -> Tuple[float, float, float]:
    t = sorted(times_ms)
    pick = lambda q: t[min(len(t) - 1, int(q * len(t)))]  # noqa: E731
    return pick(0.5), pick(0.2), pick(0.8)


def time_cpu(fn: Callable[[], Any], min_run_time: float) -> Tuple[float, float, float]:
    """(median, p20, p80) in ms of ``fn()`` with torch.utils.benchmark over all torch threads.

    Denormals are flushed while timing: the benchmark's fixed gradients drive some weights
    towards zero over thousands of steps, and denormal arithmetic would time the CPU's microcode,
    not the kernel."""
    import torch.utils.benchmark as tb
    # Timer defaults to one thread, and torch and _C share one OpenMP runtime: use them all.
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    flush = torch.set_flush_denormal(True)
    try:
        m = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    median, p20, p80 = _quantiles([t * 1e3 for t in m.times])
    return m.median * 1e3, p20, p80


def time_cpu_interleaved(fns: Dict[str, Callable[[], Any]], min_run_time: float,
                         block_s: float = 2e-3, min_rounds: int = 5
                         ) -> Dict[str, Tuple[float, float, float]]:
    """(median, p20, p80) in ms per call of every ``fns[name]()``, timed in alternation.

    Each round times one block of calls (≥ ``block_s`` seconds, after one untimed call) of every
    function in turn, for ``min_run_time`` seconds per function in total and at least
    ``min_rounds`` rounds. The shared 2-core development machine drifts by up to 1.5× over a
    minute (other tenants, memory speed): timed one after the other, two providers could land in
    different regimes, and the NanoAdam ratio moved between 1.65× and 2.1× from run to run;
    alternating blocks expose all of them to the same conditions. A function that raises is
    dropped from the rounds and its entry is the exception instead of a tuple. Denormals are
    flushed as in :func:`time_cpu`.
    """
    import time
    flush = torch.set_flush_denormal(True)
    try:
        calls: Dict[str, int] = {}
        results: Dict[str, Any] = {}
        for name, fn in fns.items():  # calls per block, from one more warm call
            try:
                t0 = time.perf_counter()
                fn()
                calls[name] = max(1, int(block_s / max(time.perf_counter() - t0, 1e-9)))
            except Exception as exc:  # noqa: BLE001  reported per provider
                results[name] = exc
        times: Dict[str, List[float]] = {name: [] for name in calls}
        deadline = time.perf_counter() + min_run_time * max(1, len(calls))
        rounds = 0
        while calls and (rounds < min_rounds or time.perf_counter() < deadline):
            for name in list(calls):
                fn, k = fns[name], calls[name]
                try:
                    fn()  # untimed: the previous block may have left caches and TLB cold
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    times[name].append((time.perf_counter() - t0) * 1e3 / k)
                except Exception as exc:  # noqa: BLE001
                    results[name] = exc
                    del calls[name]
            rounds += 1
    finally:
        if flush:
            torch.set_flush_denormal(False)
    for name in calls:
        results[name] = _quantiles(times[name])
    return results


_L2_FLUSH: Dict[int, torch.Tensor] = {}


def time_cuda(fn: Callable[[], Any], warmup: int, reps: int) -> Tuple[float, float, float]:
    """(median, p20, p80) in ms of ``fn()`` with CUDA events, the L2 cache flushed before each
    call (a 256 MB write) so every call reads DRAM."""
    dev = torch.cuda.current_device()
    if dev not in _L2_FLUSH:
        _L2_FLUSH[dev] = torch.empty(256 * 2**20 // 4, device="cuda")
    flush = _L2_FLUSH[dev]
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return _quantiles([s.elapsed_time(e) for s, e in zip(starts, ends)])


def time_fn(fn: Callable[[], Any], device_type: str, timing: Timing) -> Tuple[float, float, float]:
    if device_type == "cuda":
        return time_cuda(fn, timing.cuda_warmup, timing.cuda_reps)
    return time_cpu(fn, timing.min_run_time)


def copy_bandwidth(device_type: str, numel: int, timing: Timing) -> float:
    """GB/s of ``dst.copy_(src)`` for float32 tensors of ``numel`` elements (8 B/element)."""
    src = torch.randn(numel, device=device_type)
    dst = torch.empty_like(src)
    median_ms = time_fn(lambda: dst.copy_(src), device_type, timing)[0]
    return 8 * numel / (median_ms * 1e-3) / 1e9


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (a plain line per item when stderr is not a tty)."""

    def __init__(self, total: int, enabled: bool = True, stream=None) -> None:
        self.total, self.done, self.enabled = total, 0, enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, label: str) -> None:
        if not self.enabled:
            return
        self.done += 1
        width = 24
        filled = int(width * self.done / self.total)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def check(case: Case, provider: Provider, size: Size, device: str, dtype: torch.dtype,
          seed: int = 0) -> str:
    """Run ``provider`` once on the check-size inputs; "" when it matches the float64
    expected result, else what is wrong."""
    small = case.check_size(size)
    inputs = case.make_inputs(small, device, dtype, seed)
    expected = case.expected(inputs, provider.computes)
    result = provider.build(inputs)()
    actual = case.outputs(inputs, result)
    rtol, atol = case.tolerance(dtype)
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a.shape != e.shape:
            return f"output {i}: shape {tuple(a.shape)}, expected {tuple(e.shape)}"
        report = describe_mismatch(a, e, rtol=rtol, atol=atol)
        if report:
            return f"output {i} of {len(actual)}: {report}"
    return ""


def prepare(case: Case, provider: Provider, size: Size, device: str, dtype: torch.dtype,
            seed: int = 0) -> Tuple[Dict[str, Any], Optional[Callable[[], Any]]]:
    """Check one provider, then build it on the full-size inputs and warm it up: (the result
    row without times, the step to time), or (the row with its error, None)."""
    row: Dict[str, Any] = dict(correct=False, error="", median_ms=None, p20_ms=None,
                               p80_ms=None)
    with forced_backend(provider.backend):
        try:
            error = check(case, provider, size, device, dtype, seed)
        except Exception as exc:  # a provider that raises is reported, not fatal
            error = f"raised {type(exc).__name__}: {exc}"
        if error:
            row["error"] = error
            return row, None
        try:
            fn = provider.build(case.make_inputs(size, device, dtype, seed))
            fn()  # warm-up: state allocation, compilation, autotuning
        except Exception as exc:
            row["error"] = f"raised while timing {type(exc).__name__}: {exc}"
            return row, None
    row["correct"] = True

    def step() -> Any:
        with forced_backend(provider.backend):
            return fn()
    return row, step


def _record(row: Dict[str, Any], timed) -> None:
    if isinstance(timed, Exception):
        row.update(correct=False, error=f"raised while timing {type(timed).__name__}: {timed}")
    else:
        row["median_ms"], row["p20_ms"], row["p80_ms"] = timed


def _release(device: str) -> None:
    gc.collect()  # free the full-size inputs held by the steps
    if device == "cuda":
        torch.cuda.empty_cache()


def derive(rows: List[Dict[str, Any]], case: Case, copy_bw_gbps: float) -> None:
    """Fill GB/s, % of copy bandwidth, TFLOP/s, % of dense and speed-ups of one (case, size)."""
    timed = {r["provider"]: r for r in rows if r["correct"]}
    dense = timed.get("dense")
    for r in rows:
        r.update(gbps=None, pct_copy_bw=None, tflops=None, pct_dense=None, speedup_vs={})
        if not r["correct"]:
            continue
        seconds = r["median_ms"] * 1e-3
        if r["bytes_per_element"] is not None:
            r["gbps"] = r["bytes_per_element"] * r["numel"] / seconds / 1e9
            r["pct_copy_bw"] = 100.0 * r["gbps"] / copy_bw_gbps
        if r.get("flops"):
            r["tflops"] = r["flops"] / seconds / 1e12
            if dense is not None and dense.get("flops"):
                r["pct_dense"] = 100.0 * r["tflops"] / (dense["flops"] / dense["median_ms"]
                                                        / 1e9)
        r["speedup_vs"] = {name: other["median_ms"] / r["median_ms"]
                           for name, other in timed.items() if name != r["provider"]}


def run_case(case: Case, size: Size, providers: List[Provider], device: str,
             dtype: torch.dtype, timing: Timing, copy_bw_gbps: float,
             progress: Optional[Progress] = None,
             on_skip: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """All rows of one (case, size): check and time each available provider (on the CPU, all
    of them in alternation once every one is built)."""
    rows = []
    steps: Dict[str, Callable[[], Any]] = {}
    for provider in providers:
        if progress is not None:
            progress.update(f"{case.name} {size.label} {provider.name}")
        reason = provider.reason_unavailable(device, dtype)
        if reason:
            if progress is not None:
                progress.clear()
            on_skip(f"skip {case.name} {provider.name}: {reason}")
            continue
        row = dict(family=case.family, case=case.name, size=size.label, provider=provider.name,
                   dtype=str(dtype).replace("torch.", ""), device=device,
                   numel=size.total_numel, n_tensors=size.n_tensors,
                   bytes_per_element=(provider.bytes_per_element(dtype)
                                      if provider.bytes_per_element else None),
                   flops=case.flops(size, provider) if case.flops else None,
                   baseline=provider.baseline)
        prepared, step = prepare(case, provider, size, device, dtype)
        row.update(prepared)
        if device == "cuda":  # one at a time: each provider's inputs alone in GPU memory
            if step is not None:
                try:
                    _record(row, time_cuda(step, timing.cuda_warmup, timing.cuda_reps))
                except Exception as exc:  # noqa: BLE001  reported, not fatal
                    _record(row, exc)
            step = None
            _release(device)
        elif step is not None:
            steps[provider.name] = step
        rows.append(row)
    if steps:
        if progress is not None:
            progress.update(f"{case.name} {size.label}: timing {len(steps)} providers")
        timed = time_cpu_interleaved(steps, timing.min_run_time)
        for row in rows:
            if row["provider"] in timed:
                _record(row, timed[row["provider"]])
        steps.clear()
        _release(device)
    derive(rows, case, copy_bw_gbps)
    return rows


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------

FIELDS = ["family", "case", "size", "provider", "dtype", "device", "numel", "n_tensors",
          "correct", "median_ms", "p20_ms", "p80_ms", "bytes_per_element", "gbps",
          "pct_copy_bw", "flops", "tflops", "pct_dense", "speedup_vs", "baseline", "error"]


def _fmt(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_table(rows: List[Dict[str, Any]]) -> str:
    """The rows of one (case, size) as a text table. ``x`` ratios are the baselines' time over
    this provider's (above 1: faster than that baseline)."""
    if not rows:
        return ""
    matmul = any(r.get("flops") for r in rows)
    baselines = [r["provider"] for r in rows if r.get("baseline") and r["correct"]]
    width = max(len(r["provider"]) for r in rows) + 1
    head = (f"{'provider':<{width}} {'median ms':>10} {'p20/p80 ms':>17} "
            + (f"{'TFLOP/s':>8} {'%dense':>7}" if matmul
               else f"{'B/el':>5} {'GB/s':>7} {'%copy':>6}")
            + ("  speed-up vs " + ", ".join(baselines) if baselines else ""))
    lines = [f"== {rows[0]['family']} {rows[0]['case']} {rows[0]['size']} "
             f"({rows[0]['dtype']}, {rows[0]['n_tensors']} tensor(s), "
             f"{rows[0]['numel']:.3g} elements)", head]
    for r in rows:
        if not r["correct"]:
            lines.append(f"{r['provider']:<{width}} {'FAIL':>10}  {r['error']}")
            continue
        cols = (f"{_fmt(r['tflops'], '.3f'):>8} {_fmt(r['pct_dense'], '.1f'):>7}" if matmul
                else f"{_fmt(r['bytes_per_element'], '.0f'):>5} {_fmt(r['gbps'], '.1f'):>7} "
                     f"{_fmt(r['pct_copy_bw'], '.1f'):>6}")
        speedups = "  ".join(f"{r['speedup_vs'][b]:.2f}x" if b in r["speedup_vs"] else "-"
                             for b in baselines)
        p = f"{r['p20_ms']:.3f}/{r['p80_ms']:.3f}"
        lines.append(f"{r['provider']:<{width}} {r['median_ms']:>10.3f} {p:>17} {cols}  "
                     f"{speedups}")
    return "\n".join(lines)


def write_json(path: str, meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    _makedirs_for(path)
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": [{k: r.get(k) for k in FIELDS} for r in rows]},
                  f, indent=1)
        f.write("\n")


def write_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    """One line per result, the JSON fields as columns; ``speedup_vs`` as ``name=x;...``."""
    _makedirs_for(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            out = {k: r.get(k) for k in FIELDS}
            out["speedup_vs"] = ";".join(f"{k}={v:.4g}" for k, v in r["speedup_vs"].items())
            writer.writerow(out)


def plot_available() -> Optional[str]:
    """None if ``--plot`` can work, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ("--plot needs matplotlib, which is not installed: "
                "pip install matplotlib (or the package's [bench] extra)")
    return None


def write_plot(path: str, meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    """PNG: per case, GB/s (TFLOP/s for matmuls) against size, one line per provider, and the
    measured copy bandwidth as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["family"], r["case"]) for r in rows))
    if not cases:
        raise ValueError("nothing to plot: no results")
    fig, axes = plt.subplots(len(cases), 1, figsize=(8, 3.6 * len(cases)), squeeze=False)
    for ax, (family, case) in zip(axes[:, 0], cases):
        mine = [r for r in rows if (r["family"], r["case"]) == (family, case) and r["correct"]]
        flops = any(r.get("tflops") for r in mine)
        key = "tflops" if flops else "gbps"
        sizes = list(dict.fromkeys(r["size"] for r in mine))
        for provider in dict.fromkeys(r["provider"] for r in mine):
            pts = [(sizes.index(r["size"]), r[key]) for r in mine
                   if r["provider"] == provider and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=provider)
        if not flops:
            ax.axhline(meta["copy_bandwidth_gbps"], color="k", linestyle="--",
                       label=f"copy_ {meta['copy_bandwidth_gbps']:.0f} GB/s")
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels(sizes, fontsize=8)
        ax.set_ylabel("TFLOP/s" if flops else "GB/s")
        ax.set_title(f"{family} {case} ({mine[0]['dtype'] if mine else ''})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{meta['device']} | torch {meta['torch']} | {meta['timestamp'][:10]}",
                 fontsize=9)
    fig.tight_layout()
    _makedirs_for(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _makedirs_for(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)


def result_stem(meta: Dict[str, Any]) -> str:
    """``<device>-<n>c-<date>`` (CPU) or ``<gpu>-<date>``: the file name of recorded results."""
    name = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
    if meta["device_type"] == "cpu":
        name = f"cpu-{name}-{meta['compute_units']}c"
    return f"{name}-{meta['timestamp'][:10]}"


# --------------------------------------------------------------------------------------------
# comparison with an earlier run
# --------------------------------------------------------------------------------------------


def _key(r: Dict[str, Any]) -> Tuple:
    return (r["family"], r["case"], r.get("size"), r["provider"], r["dtype"], r["numel"],
            r["n_tensors"])


def compare(rows: List[Dict[str, Any]], meta: Dict[str, Any], old: Dict[str, Any],
            threshold_pct: float) -> Tuple[str, List[str]]:
    """Compare ``rows`` with an earlier run's JSON. Returns (a text table, the regressions):
    a provider whose median grew by more than ``threshold_pct`` percent, or that was correct
    before and fails now."""
    before = {_key(r): r for r in old.get("results", [])}
    lines = [f"== compare with {old.get('meta', {}).get('timestamp', '?')} "
             f"({old.get('meta', {}).get('device', '?')}; regression: > {threshold_pct:g}% "
             "slower)",
             f"{'case':<14} {'size':<22} {'provider':<22} {'old ms':>10} {'new ms':>10} "
             f"{'change':>8}"]
    regressions: List[str] = []
    matched = 0
    for r in rows:
        o = before.get(_key(r))
        if o is None:
            continue
        matched += 1
        label = f"{r['case']:<14} {r['size']:<22} {r['provider']:<22}"
        if not r["correct"]:
            if o.get("correct"):
                regressions.append(f"{r['case']} {r['size']} {r['provider']}: now FAILS")
                lines.append(f"{label} {'':>10} {'FAIL':>10}  REGRESSION (was correct)")
            continue
        if not o.get("correct") or not o.get("median_ms"):
            lines.append(f"{label} {'FAIL':>10} {r['median_ms']:>10.3f}")
            continue
        change = 100.0 * (r["median_ms"] / o["median_ms"] - 1.0)
        flag = ""
        if change > threshold_pct:
            flag = "  REGRESSION"
            regressions.append(f"{r['case']} {r['size']} {r['provider']}: {o['median_ms']:.3f}"
                               f" -> {r['median_ms']:.3f} ms ({change:+.1f}%)")
        lines.append(f"{label} {o['median_ms']:>10.3f} {r['median_ms']:>10.3f} "
                     f"{change:>+7.1f}%{flag}")
    if matched == 0:
        lines.append("(no result of this run matches one of the earlier run: same family, "
                     "case, size, provider, dtype needed)")
    old_device = old.get("meta", {}).get("device")
    if old_device and old_device != meta.get("device"):
        lines.append(f"note: the earlier run was on another device ({old_device}); times are "
                     "not comparable")
    return "\n".join(lines), regressions
