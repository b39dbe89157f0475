r"""Unstructured sparsity masks on dense weights (ALGORITHMS.md §9).

:class:`SparseMasks` holds one boolean mask per weight (``True`` = active). The per-layer
densities ``d_l`` meet a global density ``D`` (active weights / all masked weights):

* ``uniform``: ``d_l = D`` for every layer;
* ``erk`` (Erdős–Rényi–Kernel, as in RigL): ``d_l = ε · (Σ_k n_k / Π_k n_k)`` over the weight's
  dimensions ``n_k`` (for a conv kernel ``out + in + kh + kw`` over ``out·in·kh·kw``), with ε
  chosen so that ``Σ_l d_l·N_l = D·Σ_l N_l``; a layer whose ``d_l`` would exceed 1 is made dense
  and ε is solved again over the others.

Each layer keeps exactly ``n_l = max(1, round(d_l · N_l))`` active weights, drawn uniformly at
random. The counts are kept on the host, so the schedulers that change masks
(:mod:`.dst`) know how many weights to drop and grow without reading the device. Every change
of the masks bumps :attr:`SparseMasks.version`, which tells :class:`~sparseopt_kernels.optim.
SparseOpt` to recompute its per-row coefficients.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import _checks

DISTRIBUTIONS = ("erk", "uniform")


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> List[float]:
    """Per-layer densities of the Erdős–Rényi–Kernel distribution for a global ``density``."""
    density = _checks.check_density("density", density)
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    dense: set = set()
    while True:
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        weighted = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        if weighted == 0:  # every layer is dense
            return [1.0] * len(shapes)
        eps = budget / weighted
        too_dense = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
        if not too_dense:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.add(max(too_dense, key=lambda i: raw[i]))


def _weights_of(module: nn.Module) -> List[Tensor]:
    """The weights a mask makes sense for: parameters with at least two dimensions."""
    return [p for p in module.parameters() if p.dim() >= 2]


class SparseMasks:
    """Boolean masks for the given weights, at a global ``density``.

    Args:
        params: the weights (tensors with at least two dimensions: Linear/Conv weights), or an
            ``nn.Module`` (then every parameter with at least two dimensions).
        density: fraction of active weights over all of them, in (0, 1].
        distribution: ``"erk"`` or ``"uniform"`` per-layer densities.
        seed: seed of the random initial masks (None: torch's global generator).

    ``masks[p]`` is the mask of ``p``; ``apply()`` zeroes the pruned weights (call it once after
    construction); ``state_dict()`` / ``load_state_dict()`` save and restore the masks.
    """

    def __init__(self, params: Union[nn.Module, Iterable[Tensor]], density: float = 0.1,
                 distribution: str = "erk", seed: Optional[int] = None) -> None:
        if isinstance(params, nn.Module):
            params = _weights_of(params)
        if isinstance(params, Tensor) or not isinstance(params, Iterable):
            raise TypeError("params must be an iterable of weight tensors or an nn.Module, got "
                            f"{type(params).__name__}")
        self.params: List[Tensor] = list(params)
        if not self.params:
            raise ValueError("params is empty: there is nothing to mask")
        seen = set()
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{i}] must be a Tensor, got {type(p).__name__}")
            if p.dim() < 2:
                raise ValueError(f"params[{i}] has shape {tuple(p.shape)}; masks are for weights "
                                 "with at least two dimensions (biases and norm parameters stay "
                                 "dense)")
            if not p.is_floating_point():
                raise TypeError(f"params[{i}] has dtype {p.dtype}; expected a floating dtype")
            if id(p) in seen:
                raise ValueError(f"params[{i}] appears twice")
            seen.add(id(p))
        self.density = _checks.check_density("density", density)
        self.distribution = _checks.check_choice("distribution", distribution, DISTRIBUTIONS)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = seed
        shapes = [tuple(p.shape) for p in self.params]
        if distribution == "uniform":
            self.densities = [self.density] * len(shapes)
        else:
            self.densities = erk_densities(shapes, self.density)
        self.n_active: List[int] = [max(1, min(p.numel(), round(d * p.numel())))
                                    for d, p in zip(self.densities, self.params)]
        self._index: Dict[int, int] = {id(p): i for i, p in enumerate(self.params)}
        self.masks: List[Tensor] = [self._random_mask(p, n, i)
                                    for i, (p, n) in enumerate(zip(self.params, self.n_active))]
        self.version = 0

    def _random_mask(self, p: Tensor, n_active: int, i: int) -> Tensor:
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=p.device).manual_seed(self.seed + 7919 * i)
        scores = torch.rand(p.numel(), generator=gen, device=p.device)
        mask = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
        mask[torch.topk(scores, n_active, sorted=False).indices] = True
        return mask.view(p.shape)

    # --- lookup -------------------------------------------------------------------------------
    def index(self, p: Tensor) -> int:
        """Position of ``p`` in :attr:`params` (``KeyError`` if it is not masked)."""
        try:
            return self._index[id(p)]
        except KeyError:
            raise KeyError(f"no mask for the tensor of shape {tuple(p.shape)}: it is not one of "
                           "the weights given to SparseMasks") from None

    def __getitem__(self, p: Tensor) -> Tensor:
        return self.masks[self.index(p)]

    def __contains__(self, p: object) -> bool:
        return isinstance(p, Tensor) and id(p) in self._index

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        """(weight, mask) pairs."""
        return iter(zip(self.params, self.masks))

    def __repr__(self) -> str:
        return (f"SparseMasks({len(self)} weights, density={self.density}, "
                f"distribution={self.distribution!r})")

    # --- masks ----------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights (exact +0)."""
        for p, m in self:
            p.masked_fill_(m.logical_not(), 0)

    def changed(self) -> None:
        """Record that the masks were modified in place (schedulers call this)."""
        self.version += 1

    def actual_density(self) -> float:
        """Active weights over all masked weights (from the host-side counts; no device read)."""
        return sum(self.n_active) / sum(p.numel() for p in self.params)

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {"masks": [m.clone() for m in self.masks], "n_active": list(self.n_active),
                "densities": list(self.densities), "density": self.density,
                "distribution": self.distribution, "seed": self.seed}

    def load_state_dict(self, state_dict: Dict) -> None:
        masks = state_dict.get("masks")
        if not isinstance(masks, (list, tuple)) or len(masks) != len(self.masks):
            raise ValueError(f"state_dict['masks'] must hold {len(self.masks)} masks, got "
                             f"{len(masks) if isinstance(masks, (list, tuple)) else masks!r}")
        n_active = list(state_dict["n_active"])
        for i, (m, mine) in enumerate(zip(masks, self.masks)):
            if not isinstance(m, Tensor) or m.dtype != torch.bool or m.shape != mine.shape:
                raise ValueError(f"state_dict['masks'][{i}] must be a bool tensor of shape "
                                 f"{tuple(mine.shape)}")
        for m, mine in zip(masks, self.masks):  # everything checked: now copy
            mine.copy_(m)
        self.n_active = n_active
        self.densities = list(state_dict["densities"])
        self.density = float(state_dict["density"])
        self.distribution = state_dict["distribution"]
        self.seed = state_dict.get("seed")
        self.changed()


__all__ = ["SparseMasks", "erk_densities", "DISTRIBUTIONS"]
