"""State handling shared by our optimizers."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor
from torch.optim import Optimizer


def load_state_keeping_dtypes(opt: Optimizer, state_dict: Dict) -> None:
    """``Optimizer.load_state_dict`` without its dtype casts.

    torch casts every floating state tensor to its param's dtype, which would round float32
    moments of bf16/fp16 params (or bf16 compact moments of fp32 params) through another dtype.
    After the base load, each saved state tensor is restored in its saved dtype on the param's
    device; step counts become float32 device scalars (the kernels read them there).
    """
    Optimizer.load_state_dict(opt, state_dict)
    saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    params = [p for g in opt.param_groups for p in g["params"]]
    for saved_id, p in zip(saved_ids, params):
        for key, value in state_dict["state"].get(saved_id, {}).items():
            if not isinstance(value, Tensor):
                continue
            if key == "step":
                opt.state[p][key] = value.to(device=p.device, dtype=torch.float32, copy=True)
            else:
                opt.state[p][key] = value.to(device=p.device, copy=True)
