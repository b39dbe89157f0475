"""The fused HAM-AdamW step against its baselines: a shortcut for

    sparseopt-bench optim --cases ham-adamw [options]

(see ``sparseopt_kernels/bench``; ``python -m sparseopt_kernels.bench --help`` lists the options).
"""
import sys

from sparseopt_kernels.bench.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0].startswith("-"):
        argv = ["optim", "--cases", "ham-adamw"] + argv
    sys.exit(main(argv))
