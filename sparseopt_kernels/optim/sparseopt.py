r"""SparseOpt: the BN-skew correction of sparse layers, as a drop-in optimizer wrapper.

A sparse row i (a fraction ``s_i`` of its weights pruned) that feeds a BatchNorm gets its gradient
amplified by ``(1 − s_i)^(−1/2)``. SparseOpt (ALGORITHMS.md §3) scales it back::

    c_i = sqrt(1 − s_i) / sqrt(1 − s_avg)          (per masked weight, when its mask changes)
    g̃   = c ⊙ g        (row i times c_i), pruned entries stay exactly zero

and the base optimizer steps on ``g̃`` (for HAM the mirror exponent uses ``g̃`` too). Masked
weights take the dense-mask step: where the mask is 0 the weight and its state keep their bits.

Paths:

* ``torch.optim.SGD`` / ``Adam`` / ``AdamW``, or :class:`~.ham.HAM` around one of them: one fused
  kernel per group reads ``c_i`` with the gradient (no extra pass over memory); ``p.grad`` is not
  modified, so RigL's growth score sees the uncorrected gradient. GradScaler's ``grad_scale`` /
  ``found_inf`` are read by the kernels.
* any other optimizer: the gradients are copied, corrected with the standalone
  :func:`~sparseopt_kernels.functional.row_scale_` (pruned entries zeroed), swapped into
  ``p.grad`` for the base step and swapped back afterwards; pruned weights are then reset to
  zero.

The coefficients are recomputed on the device (one reduction, no host synchronization) whenever
``masks.version`` changes: RigL/SET updates and ``masks.load_state_dict`` bump it; call
``masks.changed()`` after editing masks by hand.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import functional as F
from ..sparse.dst import check_owned
from ..sparse.masks import SparseMasks
from ._wrapper import OptimizerWrapper
from .ham import HAM

_AMP_ATTRS = ("grad_scale", "found_inf")  # set on the optimizer by torch.amp.GradScaler.step


class SparseOpt(OptimizerWrapper):
    """Wrap ``optimizer`` so that masked weights take the BN-skew-corrected, mask-aware step.

    Args:
        optimizer: SGD, Adam, AdamW or HAM (fused), or any ``torch.optim.Optimizer``.
        masks: the :class:`~sparseopt_kernels.sparse.SparseMasks` of (some of) its parameters.
        corrected: the masked weights whose output feeds a normalization layer, which get the
            correction (default: every masked weight). The others keep ``c = 1`` but still take
            the masked step.
    """

    def __init__(self, optimizer: Optimizer, masks: SparseMasks,
                 corrected: Optional[Iterable[Tensor]] = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if isinstance(optimizer, SparseOpt):
            raise TypeError("optimizer is already wrapped by SparseOpt")
        if not isinstance(masks, SparseMasks):
            raise TypeError(f"masks must be a sparseopt_kernels.sparse.SparseMasks, got "
                            f"{type(masks).__name__}")
        check_owned(masks, optimizer)
        if corrected is None:
            corrected_params = list(masks.params)
        else:
            corrected_params = list(corrected)
            for i, p in enumerate(corrected_params):
                if not isinstance(p, Tensor):
                    raise TypeError(f"corrected[{i}] must be a Tensor, got {type(p).__name__}")
                if p not in masks:
                    raise ValueError(f"corrected[{i}] (shape {tuple(p.shape)}) has no mask: "
                                     "only masked weights can be corrected")
        self._wrap(optimizer)
        self.masks = masks
        # The fused path runs through HAM; with α = β = 0 it is exactly the base optimizer.
        self._inner = optimizer if isinstance(optimizer, HAM) else HAM(
            optimizer, alpha=0.0, beta=0.0, clamp=None)
        self._corrected = [p for p in masks.params if any(p is q for q in corrected_params)]
        self.coefficients: Dict[Tensor, Tensor] = {
            p: torch.ones(p.shape[0], dtype=torch.float32, device=p.device)
            for p in masks.params}
        self._inner.masks = {p: m for p, m in masks}
        self._inner.row_scales = {p: self.coefficients[p] for p in self._corrected}
        self._seen_version: Optional[int] = None

    def __repr__(self) -> str:
        return f"SparseOpt({self.masks!r},\n{self.optimizer!r})"

    # --- coefficients ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Recompute the coefficients now if the masks changed since the last time."""
        if self._seen_version == self.masks.version:
            return
        if self._corrected:
            F.row_coefficients([self.masks[p] for p in self._corrected],
                               out=[self.coefficients[p] for p in self._corrected])
        self._seen_version = self.masks.version

    # --- AMP ------------------------------------------------------------------------------------
    @property
    def _step_supports_amp_scaling(self) -> bool:  # read by torch.amp.GradScaler
        return self._inner.fused_kind() is not None

    # --- the step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        self.refresh()
        if self._inner.fused_kind() is not None:
            forwarded = [a for a in _AMP_ATTRS if hasattr(self, a)]
            for a in forwarded:
                setattr(self._inner, a, getattr(self, a))
            try:
                return self._inner.step(closure)
            finally:
                for a in forwarded:
                    delattr(self._inner, a)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._corrected_base_step()
        return loss

    def _corrected_base_step(self) -> None:
        params: List[Tensor] = [p for p in self.masks.params if p.grad is not None]
        originals = [p.grad for p in params]
        for i, g in enumerate(originals):
            if g.is_sparse or g.is_complex():
                raise TypeError(f"SparseOpt needs dense real gradients; the masked weight of "
                                f"shape {tuple(params[i].shape)} has a {g.layout} {g.dtype} one")
        corrected = [g.clone(memory_format=torch.contiguous_format) for g in originals]
        F.row_scale_(corrected, [self.coefficients[p] for p in params],
                     masks=[self.masks[p] for p in params])
        try:
            for p, g in zip(params, corrected):
                p.grad = g
            self._inner.step()
        finally:
            for p, g in zip(params, originals):
                p.grad = g
        for p in params:
            p.masked_fill_(self.masks[p].logical_not(), 0)

    # --- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        """The wrapped optimizer's own state_dict (the masks have theirs)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Dict) -> None:
        self.optimizer.load_state_dict(state_dict)
        self._seen_version = None


__all__ = ["SparseOpt"]
