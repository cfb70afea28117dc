"""Functional optimizers as explicit (init, update) pairs over lists of tensors.

`update` is pure and differentiable (no in-place ops), so the same code serves the online steps (under
no_grad) and the unrolled fine-tuning steps the hypergradient backpropagates through.

    >>> import torch
    >>> opt = sgd(lr=0.5)
    >>> p, s = opt.update([torch.tensor(1.0)], [torch.tensor(2.0)], opt.init([torch.tensor(1.0)]))
    >>> float(p[0])
    0.0
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch


class Optimizer(NamedTuple):
    """init(params) -> state; update(params, grads, state) -> (new params, new state), pure and
    differentiable; step_(params, grads, state) -> state, the same update done in place with fused
    `torch._foreach_*` kernels (no autograd: the online steps, which nothing differentiates).

    `weight_decay` is coupled L2 decay: lambda * theta is added to the gradient before the optimizer's
    own arithmetic, so the optimizer's fixed points solve grad L(theta) + lambda * theta = 0, the
    stationarity condition the IFT estimator differentiates (runtime/estimators.py `ift`)."""

    init: Callable
    update: Callable
    lr: float
    step_: Callable
    weight_decay: float = 0.0


def clone_state(state: dict) -> dict:
    """A copy of an optimizer state that later in-place steps leave untouched."""
    return {k: [t.clone() for t in v] if isinstance(v, list) else v for k, v in state.items()}


def _decay(params, grads, weight_decay):
    """Coupled L2 decay: g + lambda * theta (so a fixed point has grad L + lambda * theta = 0)."""
    return grads if not weight_decay else [g + weight_decay * p for p, g in zip(params, grads)]


def _lr_at(lr: float, t: int, halflife: float | None) -> float:
    """The learning rate of step t (1-based): `lr`, halved every `halflife` steps when one is given.

        >>> _lr_at(4.0, 1, 2), _lr_at(4.0, 3, 2), _lr_at(4.0, 3, None)
        (4.0, 2.0, 4.0)
    """
    return lr if not halflife else lr * 0.5 ** ((t - 1) / halflife)


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0, halflife: float | None = None) -> Optimizer:
    """p <- p - lr_t * b, with b <- momentum * b + g (b = g without momentum); lr_t = lr, halved every
    `halflife` steps when given."""
    def init(params):
        return {"t": 0, **({"buf": [torch.zeros_like(p) for p in params]} if momentum else {})}

    def update(params, grads, state):
        grads, t = _decay(params, grads, weight_decay), state["t"] + 1
        if momentum:
            grads = [momentum * b + g for b, g in zip(state["buf"], grads)]
        rate = _lr_at(lr, t, halflife)
        return [p - rate * g for p, g in zip(params, grads)], {"t": t, **({"buf": grads} if momentum else {})}

    @torch.no_grad()
    def step_(params, grads, state):
        if weight_decay:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        if momentum:
            torch._foreach_mul_(state["buf"], momentum)
            torch._foreach_add_(state["buf"], grads)
            grads = state["buf"]
        t = state["t"] + 1
        torch._foreach_add_(params, grads, alpha=-_lr_at(lr, t, halflife))
        return {**state, "t": t}
    return Optimizer(init, update, lr, step_, weight_decay)


def adam(lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, halflife: float | None = None) -> Optimizer:
    """Adam with bias correction (Kingma & Ba), weight decay added to the gradient; the learning rate
    halved every `halflife` steps when given."""
    def init(params):
        return {"t": 0, "m": [torch.zeros_like(p) for p in params], "v": [torch.zeros_like(p) for p in params]}

    def update(params, grads, state):
        grads = _decay(params, grads, weight_decay)
        t = state["t"] + 1
        m = [beta1 * m + (1 - beta1) * g for m, g in zip(state["m"], grads)]
        v = [beta2 * v + (1 - beta2) * g * g for v, g in zip(state["v"], grads)]
        c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
        rate = _lr_at(lr, t, halflife)
        new = [p - rate * (mi / c1) / (_sqrt(vi / c2) + eps) for p, mi, vi in zip(params, m, v)]
        return new, {"t": t, "m": m, "v": v}

    @torch.no_grad()
    def step_(params, grads, state):                    # the same arithmetic as `update`, in place
        if weight_decay:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        t = state["t"] + 1
        torch._foreach_lerp_(state["m"], grads, 1 - beta1)          # m <- b1 m + (1 - b1) g
        torch._foreach_mul_(state["v"], beta2)
        torch._foreach_addcmul_(state["v"], grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(state["v"])
        torch._foreach_div_(denom, math.sqrt(1 - beta2 ** t))        # sqrt(v / c2)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, state["m"], denom, value=-_lr_at(lr, t, halflife) / (1 - beta1 ** t))
        return {**state, "t": t}
    return Optimizer(init, update, lr, step_, weight_decay)


def _sqrt(v):
    """sqrt(v) whose derivative is 0 (not inf, which times a zero gradient is NaN) where v = 0: a
    parameter that never had a gradient keeps a finite hypergradient through an unrolled Adam step."""
    if not torch.is_grad_enabled():                     # the same values, without the masking passes
        return v.sqrt()
    positive = v > 0
    return torch.where(positive, v, torch.ones_like(v)).sqrt() * positive


def build(component) -> Optimizer:
    """The optimizer an IR Component names."""
    from mptc.components.registry import OPTIMIZERS
    return OPTIMIZERS.get(component.name).load()(**component.args)
