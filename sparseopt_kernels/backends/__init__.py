"""Backend selection and the CPU/CUDA kernels of the ``sparseopt`` ops.

The reference is every op's default kernel (``_ops.py``). Here one kernel per op is registered
for the CPU and the CUDA dispatch keys; it validates the arguments, picks a backend and runs it:

==========  =====================================  =========================================
device      auto                                   can be forced with SPARSEOPT_BACKEND
==========  =====================================  =========================================
CPU         cpp (``_C``), else reference           cpp, reference, triton (TRITON_INTERPRET=1)
CUDA        cuda (``_C`` CUDA), else triton,       cuda, triton, reference
            else reference (with a warning)
==========  =====================================  =========================================

float64 params run on cpp or reference only. A forced backend that cannot serve an input raises
:class:`BackendUnavailable` saying why; it never falls back silently.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Callable, Dict, List, Optional

import torch

from .. import _native, _ops

BACKENDS = ("auto", "cuda", "triton", "cpp", "reference")
ENV_VAR = "SPARSEOPT_BACKEND"


class BackendUnavailable(RuntimeError):
    """A forced backend cannot serve this input (the message says why)."""


def requested_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def unavailable(backend: str, device_type: str, dtype: Optional[torch.dtype] = None
                ) -> Optional[str]:
    """Why ``backend`` cannot serve tensors of ``dtype`` on ``device_type`` (None if it can)."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if device_type != "cpu":
            return f"the cpp backend runs on CPU tensors only, got {device_type} tensors"
        if _native.native() is None:
            return _native.unavailable_reason()
        return None
    if backend == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs on CUDA tensors only, got {device_type} tensors"
        module = _native.native()
        if module is None:
            return _native.unavailable_reason()
        if not module.build_info()["cuda"]:
            return ("sparseopt_kernels._C was built without CUDA kernels (CPU-only torch or "
                    "no nvcc at build time)")
        if dtype == torch.float64:
            return "the cuda backend does not support float64 params (use reference)"
        return None
    if backend == "triton":
        if not _triton_installed():
            return "triton is not installed (pip install triton)"
        if device_type == "cpu" and not triton_interpreted():
            return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
        if device_type not in ("cpu", "cuda"):
            return f"the triton backend does not run on {device_type} tensors"
        if dtype == torch.float64:
            return "the triton backend does not support float64 params (use cpp or reference)"
        return None
    raise ValueError(f"unknown backend {backend!r}")


_AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}


def select(device_type: str, dtype: Optional[torch.dtype] = None,
           op: Optional[str] = None) -> str:
    """The concrete backend that serves ``op`` on tensors of ``dtype`` on ``device_type``."""
    wanted = requested_backend()
    if wanted != "auto":
        reason = unavailable(wanted, device_type, dtype) or _missing(wanted, op)
        if reason is not None:
            raise BackendUnavailable(f"{ENV_VAR}={wanted} cannot run this op: {reason}")
        return wanted
    for backend in _AUTO_ORDER.get(device_type, ("reference",)):
        if unavailable(backend, device_type, dtype) is None and _missing(backend, op) is None:
            return backend
    return "reference"


# kernel family → module (under sparseopt_kernels) that implements its ops, per backend
FAMILIES: Dict[str, Dict[str, str]] = {
    "mirror": {"reference": "reference.mirror", "cpp": "backends.cpu", "cuda": "backends.cuda",
               "triton": "triton.mirror_step"},
    "masked": {"reference": "reference.masked", "cpp": "backends.cpu_masked",
               "cuda": "backends.cuda_masked", "triton": "triton.masked_adam"},
    "skew": {"reference": "reference.skew", "cpp": "backends.cpu_skew",
             "cuda": "backends.cuda_skew", "triton": "triton.skew"},
    "block_sparse": {"reference": "reference.block_sparse", "cpp": "backends.cpu_block_sparse",
                     "cuda": "backends.cuda_block_sparse", "triton": "triton.block_sparse"},
}


def _missing(backend: str, op: Optional[str]) -> Optional[str]:
    if op is None or backend in FAMILIES[_ops.FAMILY[op]]:
        return None
    return f"there is no {backend} kernel for sparseopt::{op}"


def _implementation(backend: str, op: str) -> Callable:
    package = __package__.rsplit(".", 1)[0]
    module = importlib.import_module(f"{package}.{FAMILIES[_ops.FAMILY[op]][backend]}")
    return getattr(module, op)


_warned_slow_cuda = False


def _warn_reference_on_cuda(op: str) -> None:
    global _warned_slow_cuda
    if not _warned_slow_cuda and requested_backend() == "auto":
        _warned_slow_cuda = True
        warnings.warn(f"sparseopt::{op} runs the slow PyTorch reference on CUDA tensors "
                      "(no CUDA kernels in _C and no triton); see `python -m sparseopt_kernels`",
                      RuntimeWarning, stacklevel=4)


@functools.lru_cache(maxsize=None)
def _written_arguments(op: str) -> tuple:
    """(position, name) of the arguments ``op`` writes (``Tensor(a!)`` / ``Tensor(a!)[]``)."""
    schema = getattr(torch.ops.sparseopt, op).default._schema
    return tuple((i, a.name) for i, a in enumerate(schema.arguments)
                 if a.alias_info is not None and a.alias_info.is_write)


def _bump_versions(op: str, args: tuple, kwargs: dict) -> None:
    """Mark what a native or Triton kernel wrote (through raw pointers) as modified in place, as
    aten's in-place ops do: autograd then refuses a backward through a graph that saved a param
    before the step (torch.optim's fused steps raise there too) instead of using the new values.
    The reference writes with torch ops, which bump the counters themselves."""
    for position, name in _written_arguments(op):
        written = args[position] if position < len(args) else kwargs.get(name)
        if written is None:
            continue
        tensors = list(written) if isinstance(written, (list, tuple)) else [written]
        native = _native.native()
        if native is not None:
            native.bump_versions(tensors)
        else:
            for t in tensors:
                if not t.is_inference():
                    torch.autograd.graph.increment_version(t)


def _kernel(op: str) -> Callable:
    validate = _ops.VALIDATORS[op]

    def run(*args, **kwargs):
        validate(*args, **kwargs)
        first = args[0]  # the params (a list) or the input tensor of the op
        params: List[torch.Tensor] = first if isinstance(first, (list, tuple)) else [first]
        if len(params) == 0:
            return _ops.validated(op, _implementation("reference", op))(*args, **kwargs)
        device_type = params[0].device.type
        backend = select(device_type, params[0].dtype, op)
        if backend == "reference" and device_type == "cuda":
            _warn_reference_on_cuda(op)
        with torch.no_grad():  # in-place updates of leaf params, as inside torch.optim
            result = _implementation(backend, op)(*args, **kwargs)
        if backend != "reference":
            _bump_versions(op, args, kwargs)
        return result

    run.__name__ = f"{op}dispatch"
    return run


KERNELS: Dict[str, Callable] = {op: _kernel(op) for op in _ops.ops()}

for _op, _fn in KERNELS.items():
    for _key in ("CPU", "CUDA"):
        _ops._lib.impl(_op, _fn, _key)


def describe() -> Dict[str, Dict[str, str]]:
    """For each op and device, the backend ``auto`` (or the forced one) picks, or why none."""
    table: Dict[str, Dict[str, str]] = {}
    for op in _ops.ops():
        table[op] = {}
        for device_type in ("cpu", "cuda"):
            try:
                table[op][device_type] = select(device_type, torch.float32, op)
            except BackendUnavailable as exc:
                table[op][device_type] = f"unavailable: {exc}"
    return table
