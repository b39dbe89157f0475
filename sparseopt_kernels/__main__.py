"""``python -m sparseopt_kernels``: versions, how ``_C`` was built, and the backend per op."""
from __future__ import annotations

import platform
import sys


def report() -> str:
    import torch

    import sparseopt_kernels as sk
    from sparseopt_kernels import backends

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [
        f"sparseopt_kernels {sk.__version__}",
        f"python   {platform.python_version()} ({platform.machine()})",
        f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'}; "
        f"{torch.cuda.device_count()} CUDA device(s) visible)",
        f"triton   {triton_version}"
        + (" (TRITON_INTERPRET=1)" if backends.triton_interpreted() else ""),
    ]
    for i in range(torch.cuda.device_count()):
        lines.append(f"cuda:{i}   {torch.cuda.get_device_name(i)}")
    info = sk.build_info()
    if info.get("built"):
        cuda = (f"CUDA {info['cuda_version']} for sm {info['cuda_archs']}" if info["cuda"]
                else "no CUDA kernels")
        lines.append(f"_C       built for torch {info['torch_version']} with "
                     f"{info['compiler']}; CPU ISA {info['cpu_isa']}; "
                     f"OpenMP {'on' if info['openmp'] else 'off'}; {cuda}")
    else:
        lines.append(f"_C       not loaded: {info['reason']}")
    lines.append(f"backend  {backends.ENV_VAR}={backends.requested_backend()}")
    width = max(len(op) for op in backends.describe())
    lines.append(f"  {'op'.ljust(width)}  cpu        cuda")
    for op, per_device in backends.describe().items():
        lines.append(f"  {op.ljust(width)}  {per_device['cpu']:<10} {per_device['cuda']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    sys.exit(0)
