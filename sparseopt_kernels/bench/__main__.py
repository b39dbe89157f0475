"""``python -m sparseopt_kernels.bench``: the same CLI as ``sparseopt-bench``."""
import sys

from .cli import main

sys.exit(main())
