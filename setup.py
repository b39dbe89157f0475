"""Build of sparseopt_kernels and its native extension ``sparseopt_kernels._C``.

    pip install --no-build-isolation -e .      # C++ CPU kernels (+ CUDA kernels, see below)
    SPARSEOPT_CPP=0 pip install --no-build-isolation -e .   # pure Python: reference + Triton

The CUDA kernels are compiled when the installed torch is a CUDA build and nvcc is found (no GPU
is needed to build), for the architectures in SPARSEOPT_CUDA_ARCHS (default "80;90a").
SPARSEOPT_CUDA=0 skips them. torch is never a build requirement: an isolated build would pull a
multi-GB CUDA torch, hence --no-build-isolation.
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str, default: str = "1") -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off", "")


def _extensions():
    if not _flag("SPARSEOPT_CPP"):
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/torch/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = [("SPARSEOPT_TORCH_VERSION", f'"{torch.__version__}"')]
    # No -std flag: torch's build helper picks the standard its headers need (C++17/C++20).
    cxx_flags = ["-O3", "-fopenmp", "-Wall"]
    extra = {"cxx": cxx_flags}
    extension = cpp_extension.CppExtension

    with_cuda = (_flag("SPARSEOPT_CUDA") and torch.version.cuda is not None
                 and cpp_extension.CUDA_HOME is not None)
    if with_cuda:
        archs = os.environ.get("SPARSEOPT_CUDA_ARCHS", "80;90a").replace(",", ";").split(";")
        gencode = []
        for arch in filter(None, (a.strip() for a in archs)):
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros += [("SPARSEOPT_WITH_CUDA", None),
                          ("SPARSEOPT_CUDA_VERSION", f'"{torch.version.cuda}"'),
                          ("SPARSEOPT_CUDA_ARCHS", f'"{";".join(archs)}"')]
        extra["nvcc"] = ["-O3", "-lineinfo"] + gencode
        extension = cpp_extension.CUDAExtension

    ext = extension(
        name="sparseopt_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["sparseopt_kernels", "sparseopt_kernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
