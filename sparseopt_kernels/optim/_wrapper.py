"""A wrapper optimizer that shares ``param_groups``, ``state`` and ``defaults`` with the
optimizer it wraps (HAM, SparseOpt), so LR schedulers, ``zero_grad`` and ``add_param_group``
act on the wrapped optimizer and its ``state_dict`` format is kept."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List

from torch.optim import Optimizer


class OptimizerWrapper(Optimizer):
    """Base of the wrappers; ``__init__`` of a subclass calls :meth:`_wrap` instead of
    ``Optimizer.__init__`` (which would make new param groups)."""

    def _wrap(self, optimizer: Optimizer) -> None:
        self.__dict__["optimizer"] = optimizer
        # the hook tables Optimizer.__init__ would have created
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                     "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                     "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            setattr(self, name, OrderedDict())
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

    @property
    def param_groups(self) -> List[Dict]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, value) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> Dict:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value) -> None:
        self.optimizer.defaults = value

    def add_param_group(self, param_group: Dict) -> None:
        self.optimizer.add_param_group(param_group)

    def __getstate__(self):
        return self.__dict__.copy()

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
