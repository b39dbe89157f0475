"""Test tiers (DESIGN.md): tier 1 reference + C++ CPU, tier 2 Triton under the interpreter,
tier 4 (marked ``gpu``) CUDA. Without a GPU, Triton runs on CPU tensors via TRITON_INTERPRET=1,
which must be set before triton is imported, hence here."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sparseopt_kernels  # noqa: E402
from sparseopt_kernels import backends  # noqa: E402


def cpu_backends():
    """Backends that can run on CPU tensors in this environment (skip-marked otherwise)."""
    out = []
    for name in ("reference", "cpp", "triton"):
        reason = backends.unavailable(name, "cpu", torch.float32)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        if name == "triton":
            marks.append(pytest.mark.triton)
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture
def use_backend(monkeypatch):
    """Force a backend for the duration of a test: ``use_backend("cpp")``."""
    def force(name: str) -> None:
        monkeypatch.setenv(backends.ENV_VAR, name)
    return force


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
