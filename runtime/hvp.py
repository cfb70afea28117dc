"""Hessian-vector products u -> H u of a loss over a list of parameter tensors, formed three ways.

Each maker takes `loss_of(theta) -> scalar` (a function of the list `theta`, everything else bound)
and the point `theta`, and returns `hvp(u) -> list` (u and H u are lists shaped like theta):

* `reverse-over-reverse`: H u = d(g . u)/dtheta with g = dL/dtheta kept differentiable (one graph,
  one backward per product);
* `forward-over-reverse`: H u = jvp(grad L, theta; u) with `torch.func` (a forward pass through the
  backward pass: no graph of g kept);
* `finite-difference`: H u ~ (g(theta + e u) - g(theta - e u)) / 2e, central, with e scaled to the
  dtype's precision (error O(e^2) from the third derivative plus O(eps / e) rounding): two plain
  gradients per product, no second-order graph at all. Exact only up to that error; chosen explicitly.

    >>> import torch
    >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    >>> hvp = MAKERS["forward-over-reverse"](lambda t: 0.5 * t[0] @ A @ t[0], [torch.zeros(2)])
    >>> hvp([torch.tensor([1.0, 0.0])])[0].tolist()
    [2.0, 1.0]
"""
from __future__ import annotations

import time
from typing import Callable

import torch

MODES = ("reverse-over-reverse", "forward-over-reverse", "finite-difference")


def _grad(out, inputs, **kw):
    return torch.autograd.grad(out, inputs, allow_unused=True, materialize_grads=True, **kw)


def reverse_over_reverse(loss_of: Callable, theta: list, g: list | None = None) -> Callable:
    """H u = d(g . u)/dtheta; pass `g` (a differentiable gradient at theta) to reuse its graph."""
    theta = [t if t.requires_grad else t.detach().requires_grad_() for t in theta]
    if g is None:
        g = torch.autograd.grad(loss_of(theta), theta, create_graph=True)  # dL/dtheta, differentiable

    def hvp(u):
        return list(_grad(g, theta, grad_outputs=u, retain_graph=True))
    return hvp


def forward_over_reverse(loss_of: Callable, theta: list, g=None) -> Callable:
    """H u = d/ds grad L(theta + s u) at s = 0, as a torch.func.jvp of torch.func.grad."""
    from torch.func import grad, jvp
    primals = tuple(t.detach() for t in theta)
    grad_fn = grad(lambda *ts: loss_of(list(ts)), argnums=tuple(range(len(primals))))

    def hvp(u):
        return list(jvp(grad_fn, primals, tuple(ui.detach() for ui in u))[1])
    return hvp


def central_difference(fn: Callable, base: list, u: list) -> list:
    """(fn(base + e u) - fn(base - e u)) / 2e, the derivative of `fn` (a list of tensors from a list
    like `base`) along u, with e = eps^(1/3) (1 + |base|) / |u| for the dtype's precision; zeros at u = 0."""
    norm = float(torch.sqrt(sum((ui * ui).sum() for ui in u)))
    if norm == 0:
        return [torch.zeros_like(o) for o in fn(base)]
    size = float(torch.sqrt(sum((t * t).sum() for t in base)))
    e = torch.finfo(base[0].dtype).eps ** (1 / 3) * (1 + size) / norm
    plus = fn([t + e * s for t, s in zip(base, u)])
    minus = fn([t - e * s for t, s in zip(base, u)])
    return [(a - b) / (2 * e) for a, b in zip(plus, minus)]


def finite_difference(loss_of: Callable, theta: list, g=None) -> Callable:
    """H u ~ (g(theta + e u) - g(theta - e u)) / 2e (`central_difference` of the gradient)."""
    base = [t.detach() for t in theta]

    def grad_at(point):
        point = [t.requires_grad_() for t in point]
        return _grad(loss_of(point), point)
    return lambda u: central_difference(grad_at, base, u)


MAKERS = {"reverse-over-reverse": reverse_over_reverse, "forward-over-reverse": forward_over_reverse,
          "finite-difference": finite_difference}


def fastest(loss_of: Callable, theta: list, like: list, modes=MODES[:2]) -> str:
    """The mode of `modes` whose one product on `like` takes least time (a mode that raises is skipped).

    `auto` considers the exact modes only; finite differences are a choice a user makes explicitly."""
    best, best_time = None, float("inf")
    for mode in modes:
        try:
            start = time.perf_counter()
            MAKERS[mode](loss_of, theta)(like)
            took = time.perf_counter() - start
        except (RuntimeError, NotImplementedError):  # e.g. an op without a forward-mode rule
            continue
        if took < best_time:
            best, best_time = mode, took
    if best is None:
        raise RuntimeError("no Hessian-vector product mode works for this model")
    return best


def power_iteration(hvp: Callable, like: list, iters: int = 10, seed: int = 0) -> float:
    """|lambda_max(H)| by `iters` power iterations from a seeded random start (Rayleigh quotient).

        >>> import torch
        >>> round(power_iteration(lambda u: [torch.diag(torch.tensor([1.0, 5.0])) @ u[0]], [torch.ones(2)], 50), 4)
        5.0
    """
    gen = torch.Generator().manual_seed(seed)
    u = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in like]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((ui * ui).sum() for ui in u))
        u = [ui / norm for ui in u]
        hu = hvp(u)
        lam = float(sum((a * b).sum() for a, b in zip(u, hu)))   # u^T H u, |u| = 1
        u = [h.detach() for h in hu]
    return abs(lam)
