"""sparseopt_kernels: fused Triton and C++/CUDA kernels for sparse-training optimizers.

Layers (data flows one way): ``optim`` → ``functional`` → ``torch.ops.sparseopt.*`` →
``backends`` → kernels (``_C``: csrc/cpu, csrc/cuda; ``triton``; ``reference``).
``python -m sparseopt_kernels`` prints versions, how ``_C`` was built and which backend serves
each op on each device; ``SPARSEOPT_BACKEND=auto|cuda|triton|cpp|reference`` forces one.
"""
from . import _ops  # noqa: F401  (defines the op schemas)
from . import backends  # noqa: F401  (registers the CPU/CUDA kernels)
from . import functional, optim, sparse
from ._native import build_info, native as _load_native

_load_native()  # warns once, at import, when _C is missing or built for another torch

__version__ = "0.1.0"

__all__ = ["functional", "optim", "sparse", "build_info", "__version__"]
