"""The CUDA branches of the torch bindings (``#ifdef SPARSEOPT_WITH_CUDA`` in csrc/torch/*.cpp)
compile, with the host compiler and torch's own headers.

Why: ctest compiles the torch-free CUDA kernels with nvcc, but the glue that turns tensors into
their arguments is only built by setup.py against a CUDA torch, which a CPU machine does not
have. The CPU wheel ships the c10/cuda headers except one generated at torch's build time
(c10/cuda/impl/cuda_cmake_macros.h, a single #define); a stand-in for it is searched after
torch's include directories, so a CUDA torch's own header wins where it exists.
"""
import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_INCLUDE = os.path.join(os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME
                            or "/usr/local/cuda", "include")
TORCH_INCLUDES = cpp_extension.include_paths()
# the binding files with CUDA branches of their own (the rest only include common.h's)
def _has_cuda_branch(name):
    with open(os.path.join(ROOT, "csrc", "torch", name)) as f:
        return "SPARSEOPT_WITH_CUDA" in f.read()


SOURCES = sorted(f for f in os.listdir(os.path.join(ROOT, "csrc", "torch"))
                 if f.endswith(".cpp") and _has_cuda_branch(f))

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++"),
    pytest.mark.skipif(not os.path.exists(os.path.join(CUDA_INCLUDE, "cuda_runtime_api.h")),
                       reason=f"needs the CUDA headers ({CUDA_INCLUDE})"),
    pytest.mark.skipif(not any(os.path.exists(os.path.join(d, "c10", "cuda", "CUDAStream.h"))
                               for d in TORCH_INCLUDES),
                       reason="this torch ships no c10/cuda headers"),
]


def _compile(source, stand_in_dir):
    cmd = ["g++", "-fsyntax-only", "-std=c++20", "-fopenmp", "-Wall", "-Werror=return-type",
           "-DSPARSEOPT_WITH_CUDA", '-DSPARSEOPT_CUDA_VERSION="13.0"',
           '-DSPARSEOPT_CUDA_ARCHS="80;90a"', f'-DSPARSEOPT_TORCH_VERSION="{torch.__version__}"',
           "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
           *(f"-I{d}" for d in TORCH_INCLUDES), f"-I{sysconfig.get_paths()['include']}",
           f"-I{CUDA_INCLUDE}", f"-I{os.path.join(ROOT, 'csrc', 'include')}",
           f"-idirafter{stand_in_dir}", os.path.join(ROOT, "csrc", "torch", source)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    return source, run.returncode, run.stderr


def test_cuda_bindings_compile(tmp_path):
    assert "masked_adam.cpp" in SOURCES and "module.cpp" in SOURCES
    macros = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    macros.parent.mkdir(parents=True)
    macros.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda s: _compile(s, tmp_path), SOURCES))
    failed = [f"{source}:\n{stderr[-3000:]}" for source, rc, stderr in results if rc != 0]
    assert not failed, "\n\n".join(failed)
