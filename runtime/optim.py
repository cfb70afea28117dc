"""Functional optimizers as explicit (init, update) pairs over lists of tensors.

`update` is pure and differentiable, so the same code serves the online steps (under no_grad) and the
unrolled fine-tuning steps the hypergradient backpropagates through. When nothing records a graph (no_grad,
or no input requiring grad) it runs the very same float operations in the same order, each rounded as there,
but into fresh output buffers with in-place kernels, and on a large CPU tensor one cache-sized slice at a
time (`_no_graph`, `_slices`, `_adam_no_graph`): the results equal the differentiable form's bit for bit
(tests/test_bench_speed_optim.py), its inputs untouched, at a fraction of the memory traffic (the
meta-optimizer over 10^6 meta-parameters).

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
    differentiable; step_(params, grads, state) -> state, the same update done in place by fused kernels
    (Adam: torch's fused Adam kernel where `_fusable`, else `torch._foreach_*` ones; no autograd: the
    online steps, which nothing differentiates).

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
        rate = _lr_at(lr, t, halflife)
        if _no_graph(params, grads, state.get("buf", ())):
            return _sgd_no_graph(params, grads, state.get("buf"), momentum, rate, t)
        if momentum:
            grads = [momentum * b + g for b, g in zip(state["buf"], grads)]
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
        c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
        rate = _lr_at(lr, t, halflife)
        if _no_graph(params, grads, state["m"], state["v"]):   # the same arithmetic, fresh buffers in place
            out = [_adam_no_graph(p, g, mi, vi, (beta1, beta2, c1, c2, rate, eps))
                   for p, g, mi, vi in zip(params, grads, state["m"], state["v"])]
            return [o[0] for o in out], {"t": t, "m": [o[1] for o in out], "v": [o[2] for o in out]}
        m = [beta1 * m + (1 - beta1) * g for m, g in zip(state["m"], grads)]
        v = [beta2 * v + (1 - beta2) * g * g for v, g in zip(state["v"], grads)]
        new = [p - rate * (mi / c1) / (_sqrt(vi / c2) + eps) for p, mi, vi in zip(params, m, v)]
        return new, {"t": t, "m": m, "v": v}

    @torch.no_grad()
    def step_(params, grads, state):                    # the same arithmetic as `update`, in place
        t = state["t"] + 1
        rate = _lr_at(lr, t, halflife)
        if _fusable(params, grads, state["m"], state["v"]):   # one kernel per tensor, one pass over memory
            steps = [torch.full((), float(t), device=params[0].device)] * len(params)
            torch._fused_adam_(params, grads, state["m"], state["v"], [], steps, lr=rate, beta1=beta1,
                               beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
            return {**state, "t": t}
        if weight_decay:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        torch._foreach_lerp_(state["m"], grads, 1 - beta1)          # m <- b1 m + (1 - b1) g
        torch._foreach_mul_(state["v"], beta2)
        torch._foreach_addcmul_(state["v"], grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(state["v"])
        torch._foreach_div_(denom, math.sqrt(1 - beta2 ** t))        # sqrt(v / c2)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, state["m"], denom, value=-rate / (1 - beta1 ** t))
        return {**state, "t": t}
    return Optimizer(init, update, lr, step_, weight_decay)


SLICE = 1 << 18     # elements of one slice of `_slices` (1 MiB of float32; each core works on half, in its L2)


def _no_graph(params, *groups) -> bool:
    """Whether an update of `params` by these lists of tensors (gradients, optimizer buffers: each one's
    i-th tensor pairs with params[i]) records no graph, so `update` may take the in-place form: grad mode
    off, or no tensor requiring grad; and one floating dtype and device throughout and same shapes pairwise,
    so no in-place kernel casts or broadcasts what the out-of-place one would have promoted."""
    tensors = [*params, *(t for group in groups for t in group)]
    if not tensors or not tensors[0].is_floating_point():
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    first = tensors[0]
    return (all(t.dtype == first.dtype and t.device == first.device for t in tensors)
            and all(len(group) == len(params) and all(t.shape == p.shape for t, p in zip(group, params))
                    for group in groups))


def _fusable(params, *groups) -> bool:
    """Whether torch's fused Adam kernel (`torch._fused_adam_`, what `torch.optim.Adam(fused=True)` runs) may
    take an in-place step of `params`: dense contiguous tensors of one floating dtype it supports, all on one
    CPU or CUDA device, and same shapes pairwise. It computes the step of `update`, rounding within an ulp
    of it (each parameter read and written once instead of once per `_foreach_*` pass)."""
    first = params[0] if params else None
    if first is None or first.device.type not in ("cpu", "cuda") or first.dtype not in (torch.float32, torch.float64):
        return False
    return all(len(group) == len(params) and all(
        t.dtype == first.dtype and t.device == first.device and t.layout == torch.strided and t.is_contiguous()
        and t.shape == p.shape for t, p in zip(group, params)) for group in (params, *groups))


def _slices(*tensors):
    """Equal slices of contiguous same-shaped CPU tensors (outputs among them), each with a scratch tensor
    of its size, for an elementwise chain run slice by slice so each step's operands stay in cache: views of
    SLICE elements and one scratch slice reused, or the tensors themselves and a scratch tensor like the
    first when small, on another device or not all contiguous. Elementwise float operations do not depend
    on how the elements are grouped, so the results are the same bit for bit."""
    first = tensors[0]
    if (first.device.type != "cpu" or first.numel() < 2 * SLICE
            or not all(t.is_contiguous() for t in tensors)):
        return [(*tensors, torch.empty_like(first))]
    scratch = first.new_empty(SLICE)
    return [(*parts, scratch[:parts[0].numel()]) for parts in zip(*(t.view(-1).split(SLICE) for t in tensors))]


@torch.no_grad()
def _adam_no_graph(p, g, m, v, consts):
    """Adam's `update` of one tensor, by the same float operations in the same order as the differentiable
    form, each rounded as there, into fresh buffers and in place, no graph:

        m' = b1 m + (1 - b1) g;  v' = b2 v + ((1 - b2) g) g;  p' = p - (rate (m' / c1)) / (sqrt(v' / c2) + eps)

    On the CPU in float32/float64 two steps share a kernel where that kernel rounds exactly as the separate
    steps do (ATen's CPU addcmul computes self + (value t1) t2 and addcdiv self + (value t1) / t2, each
    operation rounded): b1 m + (1 - b1) g as addcmul(b1 m, g, 1, value=1 - b1), where the product by 1 is
    exact (and even contracted to a fused multiply-add, round(round(x) * 1 + y) is round(x + y)); and
    p - (rate q) / d as addcdiv(p, q, d, value=-rate), since (-rate) q = -(rate q) and (-a) / d = -(a / d)
    exactly. Elsewhere (other devices, where such kernels may contract differently; reduced precision, whose
    kernels keep float intermediates) every step is its own kernel."""
    beta1, beta2, c1, c2, rate, eps = consts
    m_new, v_new, p_new = (torch.empty_like(t) for t in (m, v, p))   # each laid out as before
    fused = p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
    one = torch.ones((), dtype=p.dtype, device=p.device)
    for ps, gs, ms, vs, mo, vo, po, s in _slices(p, g, m, v, m_new, v_new, p_new):
        torch.mul(ms, beta1, out=mo)                    # b1 m
        if fused:
            mo.addcmul_(gs, one, value=1 - beta1)       # + (1 - b1) g: m'
        else:
            torch.mul(gs, 1 - beta1, out=s)
            mo.add_(s)
        torch.mul(gs, 1 - beta2, out=s)
        s.mul_(gs)                                      # ((1 - b2) g) g
        torch.mul(vs, beta2, out=vo)
        vo.add_(s)                                      # v'
        torch.div(vo, c2, out=s)
        s.sqrt_()
        s.add_(eps)                                     # sqrt(v' / c2) + eps
        torch.div(mo, c1, out=po)                       # m' / c1
        if fused:
            torch.addcdiv(ps, po, s, value=-rate, out=po)   # p - (rate (m' / c1)) / (...): p'
        else:
            po.mul_(rate)
            po.div_(s)
            torch.sub(ps, po, out=po)
    return p_new, m_new, v_new


@torch.no_grad()
def _sgd_no_graph(params, grads, bufs, momentum, rate, t):
    """SGD's `update` by the same float operations as the differentiable form, into fresh buffers, no graph."""
    if momentum:
        grads = [torch.mul(b, momentum).add_(g) for b, g in zip(bufs, grads)]    # momentum b + g
    new = [torch.mul(g, rate) for g in grads]
    for p, n in zip(params, new):
        torch.sub(p, n, out=n)                          # p - rate g
    return new, {"t": t, **({"buf": grads} if momentum else {})}


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
