"""The package imports and works without ``_C`` (SPARSEOPT_CPP=0 installs), warning once why."""
import subprocess
import sys
import textwrap

BLOCK_C = textwrap.dedent("""
    import importlib.abc, sys, warnings
    class NoNative(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "sparseopt_kernels._C":
                raise ImportError("blocked for the test")
    sys.meta_path.insert(0, NoNative())
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch, sparseopt_kernels
        from sparseopt_kernels.optim import HAM
        model = torch.nn.Linear(3, 3)
        opt = HAM(torch.optim.AdamW(model.parameters(), lr=1e-2))
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        from sparseopt_kernels import backends
        assert backends.select("cpu") == "reference", backends.select("cpu")
    ours = [w for w in caught if "sparseopt_kernels._C" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    print("WARNING:", ours[0].message)
""")


def test_import_without_native_extension_warns_once():
    out = subprocess.run([sys.executable, "-c", BLOCK_C], capture_output=True, text=True,
                         env={"SPARSEOPT_BACKEND": "auto", "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": ":".join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert "sparseopt_kernels._C" in out.stdout


def test_python_m_reports_versions_and_backends():
    out = subprocess.run([sys.executable, "-m", "sparseopt_kernels"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin",
                                         "PYTHONPATH": ":".join(sys.path)})
    assert out.returncode == 0, out.stderr
    for needle in ("torch", "triton", "_C", "ham_adam_", "mirror_step_", "cpu", "cuda"):
        assert needle in out.stdout
