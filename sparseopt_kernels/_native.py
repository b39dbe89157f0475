"""Loads the native extension ``sparseopt_kernels._C`` once, or says (once) why it cannot.

Importing the package always works: without a usable ``_C`` the ops run on the reference and
Triton paths, and a single warning names the reason (not built, built for another torch, ...).
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Optional

import torch

_module = None
_reason: Optional[str] = None
_loaded = False


def _load():
    global _module, _reason, _loaded
    _loaded = True
    try:
        from . import _C  # type: ignore[attr-defined]
    except ImportError as exc:
        try:
            missing = importlib.util.find_spec(f"{__package__}._C") is None
        except ImportError:
            missing = False
        if missing:
            _reason = ("sparseopt_kernels._C was not built (pure-Python install, "
                       "SPARSEOPT_CPP=0); the C++/CUDA kernels are off and the ops run on the "
                       "reference/Triton paths. Build it with "
                       "`pip install --no-build-isolation -e .`.")
        else:
            _reason = (f"sparseopt_kernels._C could not be loaded ({exc}); the C++/CUDA "
                       "kernels are off and the ops run on the reference/Triton paths. "
                       "Rebuild it with `pip install --no-build-isolation -e .`.")
    else:
        built_for = _C.build_info().get("torch_version", "unknown")
        if built_for != torch.__version__:
            _reason = (f"sparseopt_kernels._C was built for torch {built_for} but torch "
                       f"{torch.__version__} is installed; the C++/CUDA kernels are off until "
                       "you rebuild with `pip install --no-build-isolation -e .`.")
        else:
            _module = _C
    if _reason is not None:
        warnings.warn(_reason, RuntimeWarning, stacklevel=3)


def native():
    """The ``_C`` module, or None when it is missing or unusable (warned once)."""
    if not _loaded:
        _load()
    return _module


def unavailable_reason() -> Optional[str]:
    native()
    return _reason


def build_info() -> dict:
    module = native()
    if module is None:
        return {"built": False, "reason": _reason}
    return {"built": True, **module.build_info()}
