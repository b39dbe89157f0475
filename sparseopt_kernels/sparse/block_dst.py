r"""Block-level dynamic sparse training of :class:`~.linear.BlockSparseLinear` layers.

Call ``scheduler.step()`` after ``optimizer.step()``. At every ``delta_t``-th call below
``stop_step`` each layer with ``nnz`` blocks drops and regrows ``k = ⌊f(t)·nnz⌋`` blocks, with
the cosine-decaying fraction ``f(t) = f₀/2 · (1 + cos(π·t / stop_step))`` of :mod:`.dst`::

    drop:  the k kept blocks of smallest Frobenius norm ‖W_blk‖
    grow:  among the blocks not kept after the drop, the k of largest dense-gradient norm
           ‖(∇_W L)_blk‖ (BlockRigL) or k drawn uniformly at random (BlockSET)

so the number of blocks never changes. BlockRigL needs the dense weight gradient, which a
block-sparse layer never forms: during the step before an update (and only then) the layers'
backward also accumulates dyᵀ·x (one dense GEMM; summed over gradient-accumulation passes).
A grown block that was not kept before starts at zero and so does every optimizer state tensor
shaped like ``values`` at its position; a block dropped and regrown in the same update keeps its
values and state. The layout is rewritten in place (:meth:`BlockSparseLinear.set_blocks_`);
everything runs on the device with k known on the host: no host synchronization.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Union

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .dst import RandomGrowth, Schedule, owned_params
from .linear import BlockSparseLinear


def _layers_of(layers) -> List[BlockSparseLinear]:
    if isinstance(layers, BlockSparseLinear):
        return [layers]
    if isinstance(layers, nn.Module):
        found = [m for m in layers.modules() if isinstance(m, BlockSparseLinear)]
        if not found:
            raise ValueError("layers is a module without BlockSparseLinear submodules")
        return found
    layers = list(layers)
    for i, layer in enumerate(layers):
        if not isinstance(layer, BlockSparseLinear):
            raise TypeError(f"layers[{i}] must be a BlockSparseLinear, got "
                            f"{type(layer).__name__}")
    if not layers:
        raise ValueError("layers is empty")
    return layers


class _BlockScheduler(Schedule):
    """Block drop-and-grow updates; subclasses define the growth score."""

    def __init__(self, layers: Union[nn.Module, Iterable[BlockSparseLinear]],
                 optimizer: Optimizer, delta_t: int = 100, drop_fraction: float = 0.3,
                 stop_step: Optional[int] = None) -> None:
        super().__init__(optimizer, delta_t, drop_fraction, stop_step)
        self.layers = _layers_of(layers)
        owned = owned_params(optimizer)
        for i, layer in enumerate(self.layers):
            if id(layer.values) not in owned:
                raise ValueError(f"the optimizer does not own the values of layer {i} "
                                 f"({layer.extra_repr()})")
        self._arm()

    def _needs_dense_grad(self) -> bool:
        return False

    def _arm(self) -> None:
        """Tell the layers whether the coming backward must accumulate the dense gradient."""
        active = self._needs_dense_grad() and self.will_update()
        for layer in self.layers:
            layer.grad_sink.active = active
            layer.grad_sink.grad = None  # used by this step's update, or never needed

    def step(self) -> bool:
        updated = super().step()
        self._arm()
        return updated

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._arm()

    def _check_ready(self) -> None:
        """Raise before anything is modified if the update cannot run."""

    @torch.no_grad()
    def update(self, fraction: float) -> None:
        """Drop and regrow ``⌊fraction·nnz⌋`` blocks in every layer now."""
        self._check_ready()
        for layer in self.layers:
            k = int(fraction * layer.nnz)
            if k > 0:
                self._update_layer(layer, k)
        self.updates += 1

    def _grow_score(self, layer: BlockSparseLinear) -> Tensor:
        raise NotImplementedError

    def _update_layer(self, layer: BlockSparseLinear, k: int) -> None:
        norms = layer.values.detach().float().flatten(1).norm(dim=1)
        drop_pos = torch.topk(norms, k, largest=False, sorted=False).indices
        ids = layer.block_ids
        kept = torch.zeros(layer.block_rows * layer.block_cols, dtype=torch.bool,
                           device=ids.device)
        kept[ids] = True
        kept[ids[drop_pos]] = False
        score = self._grow_score(layer).reshape(-1).float().masked_fill(kept, -float("inf"))
        grown = torch.topk(score, k, sorted=False).indices
        new_ids = ids.index_copy(0, drop_pos, grown)
        state = self.optimizer.state.get(layer.values, {})
        layer.set_blocks_(new_ids, [v for v in state.values() if isinstance(v, Tensor)])


class BlockRigL(_BlockScheduler):
    """RigL on blocks: drop the blocks of smallest norm, grow where the dense gradient's block
    norm is largest. The dense gradient is accumulated by the layers' backward during the step
    before each update, so ``scheduler.step()`` must follow that step's backward."""

    def _needs_dense_grad(self) -> bool:
        return True

    def _check_ready(self) -> None:
        for i, layer in enumerate(self.layers):
            if layer.grad_sink.grad is None:
                raise RuntimeError(
                    f"BlockRigL needs the dense gradient of layer {i} at an update step, and "
                    "no backward pass ran through it since the previous scheduler.step() "
                    "(call scheduler.step() once per training step, after the backward)")

    def _grow_score(self, layer: BlockSparseLinear) -> Tensor:
        b = layer.block_size
        g = layer.grad_sink.grad
        return g.view(layer.block_rows, b, layer.block_cols, b).pow(2).sum((1, 3))


class BlockSET(RandomGrowth, _BlockScheduler):
    """SET on blocks: drop the blocks of smallest norm, grow at random (``seed`` seeds the
    draws; None: torch's global generator)."""

    def __init__(self, layers: Union[nn.Module, Iterable[BlockSparseLinear]],
                 optimizer: Optimizer, delta_t: int = 100, drop_fraction: float = 0.3,
                 stop_step: Optional[int] = None, seed: Optional[int] = None) -> None:
        self._init_random(seed)
        super().__init__(layers, optimizer, delta_t, drop_fraction, stop_step)

    def _grow_score(self, layer: BlockSparseLinear) -> Tensor:
        return self._random_scores((layer.block_rows, layer.block_cols), layer.values.device)


__all__ = ["BlockRigL", "BlockSET"]
