r"""HAM: the hyperbolic mirror step after any optimizer step, as a drop-in wrapper.

After the base optimizer's step ``θ' = BaseStep(θ, g)`` every selected tensor takes
(ALGORITHMS.md §1)::

    θ ← θ' · exp(clamp(−η·(α·sign(θ')·g + β), −c, c))

with ``η`` the group's learning rate at this step, ``g`` the raw gradient (negated when the base
maximizes). For ``torch.optim.SGD``, ``Adam`` and ``AdamW`` both steps run in one fused kernel that
uses the base optimizer's own hyperparameters and state, so the state and ``state_dict`` keep the
base's format (plus a ``"ham"`` entry with HAM's settings) and HAM can be switched on or off for
an existing checkpoint. Params in another dense layout (channels_last conv weights) are fused
too, through views of their memory (optim/_layout.py). Any other optimizer, or options the fused
kernel does not cover (``differentiable``, sparse or complex gradients, overlapping or strided
tensors, a non-contiguous param with a bit-packed mask, tensor betas, a subclass of the base
classes), runs ``optimizer.step()`` and then the standalone mirror op.
With ``alpha=0, beta=0`` the base optimizer is reproduced exactly.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer

from .. import _checks
from .. import functional as F
from ._layout import flat, in_layout_of, is_dense, step_views
from ._wrapper import OptimizerWrapper

ApplyTo = Callable[[Tensor], bool]


def default_apply_to(p: Tensor) -> bool:
    """Conv/linear weights, embeddings and heads; biases and norm parameters are skipped."""
    return p.ndim >= 2


def _fusable_tensor(t: Optional[Tensor]) -> bool:
    return (t is None or (t.layout == torch.strided and not t.is_complex()
                          and is_dense(t) and t.dtype in _checks.PARAM_DTYPES
                          and t.device.type in ("cpu", "cuda")))


def _uniformly_fusable(tensors: List[Tensor]) -> bool:
    """Every tensor fusable and all of one dtype, read from one C++ summary (the common case,
    ~30 ns per tensor instead of ~1 us); False when the summary cannot say so."""
    summary = _checks._summary(tensors, (), _checks.ANY)
    if summary is None:
        return False
    dtype, device, dense, _ = summary
    return (dense and dtype in _checks.PARAM_DTYPES and device is not None
            and device.type in ("cpu", "cuda"))


def _scalar_dtype(fused: bool) -> torch.dtype:
    # torch.optim's choice for the step counter (optimizer._get_scalar_dtype)
    if not fused and torch.get_default_dtype() == torch.float64:
        return torch.float64
    return torch.float32


class HAM(OptimizerWrapper):
    """Wrap ``optimizer`` so each step is followed by the hyperbolic mirror step.

    Args:
        optimizer: the base optimizer (its param_groups, state and hyperparameters are used).
        alpha: α, the strength of the sign-gradient term (≈200 for SGD at lr≈0.1; about 100×
            larger for Adam at lr≈1e-3, because the step uses the raw gradient).
        beta: β, the multiplicative decay; multiplied by the learning rate.
        clamp: c, bound on the exponent (None disables it).
        apply_to: predicate choosing the tensors that take the mirror step
            (default: ``p.ndim >= 2``).
        mirror: ``"exp"`` (HAM) or ``"hypentropy"`` (scale ``gamma``).
        max_weight_norm: optional per-tensor weight-norm clip applied to every parameter after
            the step (the authors' wrapper uses 1000); off by default.
    """

    def __init__(self, optimizer: Optimizer, alpha: float = 200.0, beta: float = 1e-3,
                 clamp: Optional[float] = 5.0, apply_to: Optional[ApplyTo] = None,
                 mirror: str = "exp", gamma: float = 1.0,
                 max_weight_norm: Optional[float] = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if isinstance(optimizer, HAM):
            raise TypeError("optimizer is already wrapped by HAM")
        if apply_to is not None and not callable(apply_to):
            raise TypeError(f"apply_to must be a callable predicate on a parameter, got "
                            f"{type(apply_to).__name__}")
        self._wrap(optimizer)
        self._set_settings(dict(alpha=alpha, beta=beta, clamp=clamp, mirror=mirror,
                                gamma=gamma, max_weight_norm=max_weight_norm))
        self.apply_to: ApplyTo = apply_to or default_apply_to
        # Per-param dense masks and SparseOpt row scales for the fused kernels, filled in by
        # SparseOpt (tensors updated in place by the mask schedulers; empty for plain HAM).
        self.masks: Dict[Tensor, Tensor] = {}
        self.row_scales: Dict[Tensor, Tensor] = {}

    def __repr__(self) -> str:
        s = self.settings()
        args = ", ".join(f"{k}={v!r}" for k, v in s.items())
        return f"HAM({args},\n{self.optimizer!r})"

    # --- settings ---------------------------------------------------------------------------
    def _set_settings(self, s: Dict) -> None:
        _checks.check_mirror_args(s["alpha"], s["beta"], s["clamp"], s["mirror"], s["gamma"])
        if s.get("max_weight_norm") is not None:
            _checks.check_real("max_weight_norm", s["max_weight_norm"], low=0.0, low_open=True,
                               high=None)
        self.alpha = float(s["alpha"])
        self.beta = float(s["beta"])
        self.clamp = None if s["clamp"] is None else float(s["clamp"])
        self.mirror = s["mirror"]
        self.gamma = float(s["gamma"])
        self.max_weight_norm = s.get("max_weight_norm")

    def settings(self) -> Dict:
        return dict(alpha=self.alpha, beta=self.beta, clamp=self.clamp, mirror=self.mirror,
                    gamma=self.gamma, max_weight_norm=self.max_weight_norm)

    def state_dict(self) -> Dict:
        sd = self.optimizer.state_dict()
        sd["ham"] = self.settings()
        return sd

    def load_state_dict(self, state_dict: Dict) -> None:
        state_dict = dict(state_dict)
        settings = state_dict.pop("ham", None)
        if settings is not None:
            merged = {**self.settings(), **settings}
            _checks.check_mirror_args(merged["alpha"], merged["beta"], merged["clamp"],
                                      merged["mirror"], merged["gamma"])
        self.optimizer.load_state_dict(state_dict)
        if settings is not None:
            self._set_settings(merged)

    # --- which path ------------------------------------------------------------------------
    def fused_kind(self) -> Optional[str]:
        """``"sgd"``, ``"adam"`` or ``"adamw"`` when every group can take the fused kernel."""
        kind = {SGD: "sgd", Adam: "adam", AdamW: "adamw"}.get(type(self.optimizer))
        if kind is None:
            return None
        for group in self.param_groups:
            if group.get("differentiable", False):
                return None
            if kind != "sgd" and any(isinstance(b, Tensor) for b in group["betas"]):
                return None
            with_grad = [p for p in group["params"] if p.grad is not None]
            tensors = with_grad + [p.grad for p in with_grad] + [
                v for p in with_grad for k, v in self.state.get(p, {}).items()
                if k != "step" and isinstance(v, Tensor)]
            if _uniformly_fusable(tensors):
                continue
            for p in with_grad:
                if not (_fusable_tensor(p) and _fusable_tensor(p.grad)
                        and p.grad.dtype == p.dtype):
                    return None
                if not p.is_contiguous() and not self._memory_views_serve(p):
                    return None
                state = self.state.get(p)
                if state and not all(_fusable_tensor(v) for k, v in state.items()
                                     if k != "step" and isinstance(v, Tensor)):
                    return None
        return kind

    def _memory_views_serve(self, p: Tensor) -> bool:
        """Whether the kernels can step non-contiguous ``p`` through views of its memory
        (optim/_layout.py): not with a bit-packed mask (its bits follow the row-major order),
        nor with row scales unless dim 0 is the outermost (rows must stay contiguous)."""
        mask = self.masks.get(p) if self.masks else None
        if mask is not None and mask.dtype == torch.uint8:
            return False
        return not (self.row_scales and p in self.row_scales and flat(p).dim() != 2)

    @property
    def _step_supports_amp_scaling(self) -> bool:  # read by torch.amp.GradScaler
        return self.fused_kind() is not None

    # --- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        kind = self.fused_kind()
        if kind is None:
            loss = self.optimizer.step(closure)
            self._mirror_after_base_step()
            self._clip_weight_norms(None)
            return loss
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            if kind == "sgd":
                self._sgd_group(group, grad_scale, found_inf)
            else:
                self._adam_group(group, kind == "adamw", grad_scale, found_inf)
        self._clip_weight_norms(found_inf)
        return loss

    def _mirror_kwargs(self, mirrored: bool) -> Dict:
        return dict(alpha=self.alpha if mirrored else 0.0, beta=self.beta if mirrored else 0.0,
                    clamp=self.clamp, mirror=self.mirror, gamma=self.gamma)

    def _buckets(self, group: Dict, extra_key: Callable[[Tensor], object] = lambda p: None
                 ) -> Dict[Tuple, List[Tensor]]:
        """Params with a gradient, split by (mirrored?, masked?, row-scaled?, extra key); the op
        splits by dtype."""
        buckets: Dict[Tuple, List[Tensor]] = {}
        # (hashing a Tensor runs Python code: skip the lookups in empty dicts)
        masks, row_scales = self.masks, self.row_scales
        for p in group["params"]:
            if p.grad is not None:
                key = (bool(self.apply_to(p)), bool(masks) and p in masks,
                       bool(row_scales) and p in row_scales, extra_key(p))
                buckets.setdefault(key, []).append(p)
        return buckets

    def _sparse_kwargs(self, key: Tuple, params: List[Tensor], views: List[Tensor]) -> Dict:
        """masks / row_scales of a bucket; with memory views (``views is not params``) each
        bool mask is read in its param's layout too."""
        _, masked, scaled, _ = key
        masks = [self.masks[p] for p in params] if masked else None
        if masks is not None and views is not params:
            masks = [flat(in_layout_of(m, p)) for m, p in zip(masks, params)]
        return dict(masks=masks,
                    row_scales=[self.row_scales[p] for p in params] if scaled else None)

    def _sgd_group(self, group: Dict, grad_scale, found_inf) -> None:
        momentum = group["momentum"]
        state = self.state

        def first_step(p: Tensor) -> bool:
            return momentum != 0 and state[p].get("momentum_buffer") is None

        for key, params in self._buckets(group, first_step).items():
            mirrored, is_first = key[0], key[3]
            if momentum != 0 and is_first:
                for p in params:
                    state[p]["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
            keys = ("momentum_buffer",) if momentum != 0 else ()
            # (without momentum torch.optim.SGD keeps no state: do not create entries)
            views, grads, bufs = step_views(params, [p.grad for p in params],
                                            [state[p] for p in params] if keys else [], keys)
            F.ham_sgd(views, grads, bufs.get("momentum_buffer", []), lr=group["lr"],
                      weight_decay=group["weight_decay"], momentum=momentum,
                      dampening=group["dampening"], nesterov=group["nesterov"],
                      maximize=group.get("maximize", False), is_first_step=is_first,
                      grad_scale=grad_scale, found_inf=found_inf,
                      **self._mirror_kwargs(mirrored), **self._sparse_kwargs(key, params, views))

    def _adam_group(self, group: Dict, adamw: bool, grad_scale, found_inf) -> None:
        amsgrad = group["amsgrad"]
        beta1, beta2 = group["betas"]
        for key, params in self._buckets(group).items():
            mirrored = key[0]
            states = []
            for p in params:
                state = self.state[p]
                if len(state) == 0:  # as torch.optim.Adam._init_group does, except that
                    # the step count of a CUDA param lives on its device (as with fused=True)
                    state["step"] = torch.zeros(
                        (), dtype=_scalar_dtype(group.get("fused") or False), device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                    if amsgrad:
                        state["max_exp_avg_sq"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format)
                elif p.device.type != "cpu" and state["step"].device != p.device:
                    # A CPU step counter (non-capturable torch.optim.Adam) would need a host
                    # sync under AMP; the fused kernels read it on the device, as torch's do.
                    state["step"] = state["step"].to(p.device, torch.float32)
                states.append(state)
            keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
            views, grads, moments = step_views(params, [p.grad for p in params], states, keys)
            F.ham_adam(views, grads, moments["exp_avg"], moments["exp_avg_sq"],
                       moments.get("max_exp_avg_sq", []), [s["step"] for s in states],
                       lr=group["lr"], beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=amsgrad,
                       maximize=group.get("maximize", False),
                       decoupled_weight_decay=adamw or group.get("decoupled_weight_decay", False),
                       direction="grad", order="after", grad_scale=grad_scale,
                       found_inf=found_inf, **self._mirror_kwargs(mirrored),
                       **self._sparse_kwargs(key, params, views))

    def _mirror_after_base_step(self) -> None:
        """Fallback path: the base optimizer has stepped; apply the standalone mirror op."""
        if self.alpha == 0.0 and self.beta == 0.0:
            return
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and self.apply_to(p)]
            for i, p in enumerate(params):
                if p.grad.is_sparse or p.is_complex():
                    raise TypeError(f"HAM's mirror step needs dense real gradients; "
                                    f"param {i} of a group has a {p.grad.layout} {p.dtype} one")
            contiguous = [p for p in params if p.is_contiguous() and p.grad.is_contiguous()]
            if contiguous:
                F.mirror_step(contiguous, [p.grad for p in contiguous], lr=group["lr"],
                              maximize=group.get("maximize", False),
                              **self._mirror_kwargs(True))
            for p in params:
                if not (p.is_contiguous() and p.grad.is_contiguous()):
                    dense = p.contiguous()
                    F.mirror_step([dense], [p.grad.contiguous()], lr=group["lr"],
                                  maximize=group.get("maximize", False),
                                  **self._mirror_kwargs(True))
                    p.copy_(dense)

    def _clip_weight_norms(self, found_inf: Optional[Tensor]) -> None:
        if self.max_weight_norm is None:
            return
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            norms = torch._foreach_norm(params)
            factors = [torch.clamp(self.max_weight_norm / (n + 1e-12), max=1.0) for n in norms]
            if found_inf is not None:
                factors = [torch.where(found_inf.to(f.device) != 0, torch.ones_like(f), f)
                           for f in factors]
            torch._foreach_mul_(params, [f.to(p.dtype) for f, p in zip(factors, params)])


__all__ = ["HAM", "default_apply_to"]
