"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, without a GPU.

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python on CPU tensors: it never lowers
them, so a kernel that the interpreter accepts can still fail to compile for a GPU (types the
compiler promotes differently, ops without a lowering) or spill registers. This file closes that
gap in two steps, used by test_triton_aot.py:

1. As a pytest plugin (``-p triton_launches``) it records every distinct specialization that the
   Triton tests launch under the interpreter: the kernel, the Triton type of each runtime
   argument (``triton.runtime.jit.mangle_type``, as the JIT would see it), the value of each
   ``tl.constexpr`` argument and the launch options (num_warps, num_stages). The records go to
   the JSON file named by $SPARSEOPT_TRITON_LAUNCHES when the session ends.
2. Run as a script (without TRITON_INTERPRET), it compiles each record of the package's kernels
   with ``triton.compile`` for the given CUDA architectures (PTX, then ptxas to a cubin) and
   prints one JSON line per record: ok or the error, and the registers and stack bytes per
   thread that ``cuobjdump -res-usage`` reads from the cubin.

   python tests/triton_launches.py launches.json --arch 90 80
"""
import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

ENV_OUT = "SPARSEOPT_TRITON_LAUNCHES"


# ---------------------------------------------------------------------------------------------
# 1. Recording (pytest plugin)
# ---------------------------------------------------------------------------------------------

_records = {}


def _record(fn, arg_names, args, kwargs):
    import triton.language as tl
    from triton.runtime.jit import mangle_type

    params = inspect.signature(fn).parameters
    values = dict(zip(arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in params})
    constexpr = [n for n in arg_names if params[n].annotation in (tl.constexpr, "tl.constexpr")]
    record = {
        "module": fn.__module__, "name": fn.__name__,
        "signature": {n: "constexpr" if n in constexpr else mangle_type(values[n])
                      for n in arg_names},
        "constexprs": {n: values[n] for n in constexpr},
        "options": {k: v for k, v in kwargs.items() if k not in params},
    }
    _records.setdefault(json.dumps(record, sort_keys=True), record)


def pytest_configure(config):
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        _record(self.fn, self.arg_names, args, kwargs)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ[ENV_OUT], "w") as f:
        json.dump(list(_records.values()), f)


# ---------------------------------------------------------------------------------------------
# 2. Compiling (script)
# ---------------------------------------------------------------------------------------------

def _compile(job):
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    record, arch = job
    out = {"name": record["name"], "arch": arch, "constexprs": record["constexprs"],
           "options": record["options"]}
    try:
        fn = getattr(importlib.import_module(record["module"]), record["name"])
        kernel = triton.compile(ASTSource(fn, record["signature"], record["constexprs"]),
                                target=GPUTarget("cuda", arch, 32), options=record["options"])
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(kernel.asm["cubin"])
        try:
            cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                     "bin", "cuobjdump")
            usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True,
                                   text=True).stdout
        finally:
            os.unlink(f.name)
        regs, stack = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
        out.update(ok=True, registers=int(regs.group(1)) if regs else None,
                   stack=int(stack.group(1)) if stack else None)
    except Exception as e:  # reported, not raised: one record's failure must not hide others
        out.update(ok=False, error=f"{type(e).__name__}: {e}"[:4000])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("launches", help="JSON written by the recording plugin")
    parser.add_argument("--arch", type=int, nargs="+", default=[90])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the kernels must be real @triton.jit functions here")
    with open(args.launches) as f:
        records = [r for r in json.load(f) if r["module"].startswith("sparseopt_kernels.")]
    jobs = [(r, arch) for arch in args.arch for r in records]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(_compile, jobs):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
