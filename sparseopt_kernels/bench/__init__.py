"""Microbenchmarks of sparseopt_kernels: ``sparseopt-bench`` / ``python -m sparseopt_kernels.bench``.

Modules: :mod:`.engine` (registries of families, cases and providers; correctness check, timing,
tables, JSON/CSV/PNG, comparison), :mod:`.optim` (HAM-AdamW, HAM-SGD, HORST, the mirror op),
:mod:`.matmul` (block-sparse linear layers against dense and torch BSR), :mod:`.cli`.

Hooks for kernels that land later (masked Adam, SparseOpt, block-sparse matmuls): a module that
calls :func:`register_case` / :func:`register_provider` (use :func:`ours_providers` for the
``ours-<backend>`` set), listed in ``engine.FAMILY_MODULES`` or added with
:func:`add_family_module`. See the docstrings of :mod:`.optim` and :mod:`.matmul`.
"""
from .engine import (Case, Family, Provider, Size, add_family_module, load_families,
                     ours_providers, register_case, register_provider, unregister_provider)

__all__ = ["Case", "Family", "Provider", "Size", "add_family_module", "load_families",
           "ours_providers", "register_case", "register_provider", "unregister_provider"]
