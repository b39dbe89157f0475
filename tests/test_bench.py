"""The benchmark CLI (``sparseopt_kernels.bench``) end to end on CPU at tiny sizes.

Each run is restricted to a case or two and a few providers with a short timing budget, so the
file takes seconds: what is tested is the machinery (checks, FAIL reporting, outputs,
comparison), not the speed.
"""
import csv
import json
import subprocess
import sys

import pytest
import torch

from sparseopt_kernels import backends
from sparseopt_kernels.bench import Provider, cli, engine, optim

FAST = ["--device", "cpu", "--quick", "--min-run-time", "0.005", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: with the tests' tiny tensors, OpenMP regions only add overhead (and
    stall badly when the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*args):
    return cli.main(list(args) + FAST)


def load(path):
    with open(path) as f:
        return json.load(f)


def test_optim_quick_writes_json_csv_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "r"
    rc = run_cli("optim", "--cases", "ham-adamw,mirror",
                 "--providers", "reference,torch-fused,reference-wrapper",
                 "--json", str(out) + ".json", "--csv", str(out) + ".csv",
                 "--plot", str(out) + ".png")
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "copy bandwidth" in text and "cores" in text
    data = load(str(out) + ".json")
    meta = data["meta"]
    for key in ("device", "versions", "torch", "triton", "cuda", "build",
                "copy_bandwidth_gbps", "timestamp", "git_sha", "compute_units"):
        assert key in meta
    assert set(meta["versions"]) >= {"torch", "triton", "cuda"}
    assert meta["copy_bandwidth_gbps"] > 0
    results = data["results"]
    # ham-adamw: 3 providers, mirror: 2 (it has no torch-fused), 2 quick sizes each
    assert len(results) == (3 + 2) * 2
    for r in results:
        assert r["correct"] is True, r
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["gbps"] > 0 and r["pct_copy_bw"] > 0
        assert r["bytes_per_element"] in (12, 28, 40)
        assert set(r["speedup_vs"]) == {x["provider"] for x in results
                                        if (x["case"], x["size"]) == (r["case"], r["size"])
                                        } - {r["provider"]}
        for key in ("family", "case", "provider", "dtype", "numel", "n_tensors", "median_ms",
                    "p20_ms", "p80_ms", "bytes_per_element", "gbps", "pct_copy_bw"):
            assert r[key] is not None
    with open(str(out) + ".csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results)
    assert set(engine.FIELDS) == set(rows[0])
    with open(str(out) + ".png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def broken_provider():
    """A provider of ham-adamw whose step is AdamW with twice the learning rate."""
    engine.load_families()

    def build(params):
        opt = torch.optim.AdamW(params, lr=2 * optim.ADAM_LR, weight_decay=optim.WEIGHT_DECAY)
        return opt.step

    engine.register_provider("optim", "ham-adamw",
                             Provider("broken", build, "base", optim.adam_bytes))
    yield "broken"
    engine.unregister_provider("optim", "ham-adamw", "broken")


def test_wrong_provider_is_reported_as_fail(broken_provider, tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = run_cli("optim", "--cases", "ham-adamw", "--sizes", "2x3001",
                 "--providers", f"{broken_provider},torch-fused", "--json", str(path))
    text = capsys.readouterr().out
    assert rc == 1
    line = next(ln for ln in text.splitlines() if ln.startswith(broken_provider))
    assert "FAIL" in line and "outside rtol" in line
    rows = {r["provider"]: r for r in load(path)["results"]}
    bad = rows[broken_provider]
    assert bad["correct"] is False and bad["median_ms"] is None and bad["speedup_vs"] == {}
    assert rows["torch-fused"]["correct"] is True
    assert broken_provider not in rows["torch-fused"]["speedup_vs"]  # no speed-up vs a FAIL


def test_compare_detects_injected_regression(tmp_path, capsys):
    base = tmp_path / "base.json"
    args = ["optim", "--cases", "mirror", "--sizes", "1x20000", "--providers", "reference"]
    assert run_cli(*args, "--json", str(base)) == 0
    data = load(base)
    # inject: the earlier run was 10x faster -> this run is a regression
    for r in data["results"]:
        r["median_ms"] /= 10
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps(data))
    capsys.readouterr()
    assert run_cli(*args, "--compare", str(fast), "--fail-if-regression", "50") == 3
    assert "REGRESSION" in capsys.readouterr().out
    # the earlier run 10x slower: no regression
    for r in data["results"]:
        r["median_ms"] *= 100
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(data))
    assert run_cli(*args, "--compare", str(slow), "--fail-if-regression", "50") == 0


def test_compare_flags_a_provider_that_now_fails():
    engine.load_families()
    row = dict(family="optim", case="mirror", size="1x10", provider="p", dtype="float32",
               numel=10, n_tensors=1, correct=False, median_ms=None)
    old = {"meta": {"device": "x"}, "results": [dict(row, correct=True, median_ms=1.0)]}
    _, regressions = engine.compare([row], {"device": "x"}, old, 10.0)
    assert regressions and "FAILS" in regressions[0]


def test_matmul_quick_checks_ours_and_the_baselines(tmp_path):
    path = tmp_path / "m.json"
    assert run_cli("matmul", "--json", str(path)) == 0
    rows = {}
    for r in load(path)["results"]:
        rows.setdefault(r["case"], {})[r["provider"]] = r
    forward = rows["block-sparse-linear"]
    expected = {"dense", "torch-bsr", "torch-bsr-mm", "reference"}
    if backends.unavailable("cpp", "cpu") is None:
        expected.add("ours-cpp")
    assert set(forward) == expected
    assert all(r["correct"] and r["tflops"] > 0 for r in forward.values())
    assert forward["dense"]["pct_dense"] == pytest.approx(100.0)
    assert set(rows["block-sparse-linear-fwd-bwd"]) == expected - {"torch-bsr", "torch-bsr-mm"}
    assert all(r["correct"] for case in rows.values() for r in case.values())
    assert rows["block-layout-update"]["ours"]["median_ms"] > 0


def test_sizes_and_usage_errors(capsys):
    engine.load_families()
    sizes = engine.FAMILIES["optim"].sizes("standard,3x1e4", "cpu")
    assert [(s.n_tensors, s.numel) for s in sizes] == [(1, 10**8), (200, 5 * 10**5),
                                                        (1000, 10**4), (3, 10**4)]
    assert engine.FAMILIES["matmul"].sizes("3x1e4", "cpu") == []  # another family's size
    m = engine.FAMILIES["matmul"].sizes("64x128x256/b16/d0.5", "cpu")[0]
    assert (m.get("M"), m.get("K"), m.get("N"), m.get("block"), m.get("density")) == (
        64, 128, 256, 16, 0.5)
    assert run_cli("optim", "--sizes", "nonsense") == 2
    assert run_cli("optim", "--providers", "no-such-provider") == 2
    assert run_cli("optim", "--fail-if-regression", "5") == 2
    assert "error" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert run_cli("optim", "--plot", "x.png") == 2
    assert "needs matplotlib" in capsys.readouterr().err


def test_forced_backend_is_restored(monkeypatch):
    monkeypatch.setenv("SPARSEOPT_BACKEND", "auto")
    with engine.forced_backend("reference"):
        import os
        assert os.environ["SPARSEOPT_BACKEND"] == "reference"
    assert os.environ["SPARSEOPT_BACKEND"] == "auto"


def test_module_entry_point_lists_cases():
    out = subprocess.run([sys.executable, "-m", "sparseopt_kernels.bench", "all", "--list",
                          "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("ham-adamw", "ham-sgd", "horst", "mirror", "block-sparse-linear"):
        assert f"case {name}" in out.stdout


def test_interleaved_cpu_timing_alternates_and_reports_a_raising_provider():
    import time
    order, flaky_calls = [], [0]

    def fast():
        order.append("fast")
        time.sleep(0.001)

    def slow():
        order.append("slow")
        time.sleep(0.003)

    def flaky():  # fails on its third call: warm-up and one timed block pass
        flaky_calls[0] += 1
        if flaky_calls[0] >= 3:
            raise RuntimeError("boom")

    timed = engine.time_cpu_interleaved(dict(fast=fast, slow=slow, flaky=flaky),
                                        min_run_time=0.02, block_s=1e-4, min_rounds=5)
    assert isinstance(timed["flaky"], RuntimeError)
    fast_ms, slow_ms = timed["fast"][0], timed["slow"][0]
    assert 1.0 <= fast_ms < slow_ms and slow_ms >= 3.0
    for name in ("fast", "slow"):
        median, p20, p80 = timed[name]
        assert p20 <= median <= p80
    # alternation: after the calibration calls, the two providers take turns block by block
    # (each block: an untimed call, then the timed ones)
    import itertools
    blocks = [name for name, _ in itertools.groupby(order[2:])]
    assert blocks[:4] == ["fast", "slow", "fast", "slow"]
    assert blocks.count("fast") >= 5 and blocks.count("slow") >= 5
