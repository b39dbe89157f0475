"""Every Triton kernel, in every specialization the Triton tests launch, compiles for sm_90 (H100,
H200) and sm_80 (A100) without a GPU (see triton_launches.py for how and why).

Runs the Triton test modules once more in a subprocess under the interpreter to record their
launches, then compiles the records in another subprocess without the interpreter.
"""
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

from triton.compiler import ASTSource  # noqa: E402

import sparseopt_kernels.triton as triton_kernels  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
ARCHS = (90, 80)

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif("constexprs" not in inspect.signature(ASTSource).parameters,
                       reason="compiling by name needs triton >= 3.3 (ASTSource(constexprs=))"),
    pytest.mark.skipif(not os.path.exists(os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")),
        reason="this triton has no NVIDIA backend (ptxas)"),
]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    env.update(extra)
    return env


def _kernel_names():
    """The kernels the package launches: the @triton.jit functions named ``*_kernel``."""
    names = set()
    for mod in pkgutil.iter_modules(triton_kernels.__path__):
        module = importlib.import_module(f"sparseopt_kernels.triton.{mod.name}")
        for name, obj in vars(module).items():
            if name.endswith("_kernel") and obj.__class__.__name__ in ("JITFunction",
                                                                        "InterpretedFunction"):
                names.add(name)
    return names


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    path = tmp_path_factory.mktemp("aot") / "launches.json"
    modules = sorted(os.path.join(TESTS, f) for f in os.listdir(TESTS)
                     if f.startswith("test_triton_") and f != os.path.basename(__file__))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "triton_launches",
                          "-p", "no:cacheprovider", *modules],
                         env=_env(TRITON_INTERPRET="1", SPARSEOPT_TRITON_LAUNCHES=str(path)),
                         capture_output=True, text=True, cwd=os.path.dirname(TESTS))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    with open(path) as f:
        return path, json.load(f)


def test_every_kernel_is_launched_by_the_triton_tests(launches):
    _, records = launches
    ours = [r for r in records if r["module"].startswith("sparseopt_kernels.")]
    assert _kernel_names() - {r["name"] for r in ours} == set()
    # every launch pins FP contraction (see sparseopt_kernels/triton/__init__.py)
    assert [r["name"] for r in ours if r["options"].get("enable_fp_fusion") is not True] == []


def test_every_launch_compiles_for_sm90_and_sm80(launches):
    path, records = launches
    run = subprocess.run([sys.executable, os.path.join(TESTS, "triton_launches.py"), str(path),
                          "--arch", *map(str, ARCHS)],
                         env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    n_package = sum(r["module"].startswith("sparseopt_kernels.") for r in records)
    assert len(results) == n_package * len(ARCHS) > 0
    failed = [r for r in results if not r["ok"]]
    assert failed == [], "\n".join(f"{r['name']} sm_{r['arch']} {r['constexprs']}: {r['error']}"
                                   for r in failed)
    # A cubin without register counts would mean the check read nothing.
    assert all(r["registers"] for r in results)
