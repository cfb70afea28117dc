"""Linear solvers for p ~ H^-1 v, as (matvec, v) -> (p, info). Vectors are lists of tensors (one per
parameter); `matvec` is a Hessian-vector product. `info` reports iterations and the relative residual
||H p - v|| / ||v|| when it was computed along the way.

    >>> import torch
    >>> A = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    >>> p, info = cg(lambda v: [A @ v[0]], [torch.tensor([2.0, 4.0])])
    >>> p[0].tolist()
    [1.0, 1.0]
"""
from __future__ import annotations

import torch


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a):
    return _dot(a, a).sqrt()


def neumann(matvec, v, terms: int = 1, scale: float = 1e-3, **_):
    """p = alpha * sum_{j=0..J} (I - alpha H)^j v: the truncated Neumann series of H^-1 v.

    The reported residual is ||H p' - v|| / ||v|| of p' = the sum up to J - 1 (it costs no extra product).
    Converges to H^-1 v when 0 < alpha * lambda_max(H) < 2 and H is positive definite."""
    c = list(v)      # c_j = (I - alpha H)^j v
    p = list(v)      # running sum of the c_j
    for _ in range(terms):
        hc = matvec(c)                                   # H c_j
        c = [ci - scale * hi for ci, hi in zip(c, hc)]   # c_{j+1} = c_j - alpha H c_j
        p = [pi + ci for pi, ci in zip(p, c)]
    # H p = v - c_{J+1}; c_J is free: ||c_J|| / ||v|| is the residual of the sum one term shorter
    vnorm = float(_norm(v))
    return [scale * pi for pi in p], {"iters": terms, "residual": float(_norm(c)) / vnorm if vnorm else 0.0}


def cg(matvec, v, iters: int = 20, damping: float = 0.0, tol: float = 1e-10, **_):
    """Conjugate gradient on (H + damping I) p = v, from p = 0; stops on ||r|| <= tol ||v||.

    Stops early (keeping the last iterate) on non-positive curvature d^T (H + damping I) d <= 0."""
    def op(d):
        return [h + damping * di for h, di in zip(matvec(d), d)] if damping else matvec(d)
    p = [torch.zeros_like(t) for t in v]
    r, d = list(v), list(v)
    rr, vnorm = _dot(r, r), _norm(v)
    k = 0
    for k in range(1, iters + 1):
        ad = op(d)
        curvature = _dot(d, ad)
        if curvature <= 0:
            k -= 1
            break
        a = rr / curvature
        p = [pi + a * di for pi, di in zip(p, d)]
        r = [ri - a * adi for ri, adi in zip(r, ad)]
        rr_new = _dot(r, r)
        if rr_new.sqrt() <= tol * vnorm:
            rr = rr_new
            break
        d = [ri + (rr_new / rr) * di for ri, di in zip(r, d)]
        rr = rr_new
    return p, {"iters": k, "residual": float(rr.sqrt() / vnorm) if vnorm > 0 else 0.0}


def identity(matvec, v, **_):
    """H^-1 ~ I: p = v (the first-order T1-T2 / DARTS form)."""
    return list(v), {"iters": 0, "residual": None}
