"""Linear solvers for p ~ H^-1 v, as (matvec, v) -> (p, info), and their registry entries (`Neumann`,
`CG`, `Identity`: the SOLVERS a spec's `ift(solver: ...)` names, each built from its declared arguments
and bound to a run by `bind`). Vectors are lists of tensors (one per
parameter); `matvec` is a Hessian-vector product. `info` reports iterations and the relative residual
||H p - v|| / ||v|| when it was computed along the way.

    >>> import torch

from mptc.runtime.hvp import power_iteration
    >>> A = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    >>> p, info = cg(lambda v: [A @ v[0]], [torch.tensor([2.0, 4.0])])
    >>> p[0].tolist()
    [1.0, 1.0]
"""
from __future__ import annotations

import torch

from mptc.runtime.hvp import power_iteration


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a):
    return _dot(a, a).sqrt()


def neumann(matvec, v, terms: int = 1, scale: float = 1e-3):
    """p = alpha * sum_{j=0..J} (I - alpha H)^j v: the truncated Neumann series of H^-1 v.

    The reported residual is ||H p' - v|| / ||v|| of p' = the sum up to J - 1 (it costs no extra product).
    Converges to H^-1 v when 0 < alpha * lambda_max(H) < 2 and H is positive definite. Without a graph the
    differences and sums go into buffers made here, in place (the same values bit for bit, one temporary
    fewer a tensor and term; tests/test_bench_speed_solvers.py)."""
    c = list(v)      # c_j = (I - alpha H)^j v
    p = list(v)      # running sum of the c_j
    for j in range(terms):
        hc = matvec(c)                                   # H c_j
        if _untracked(c, hc, p):                        # the same operations, into buffers of our own
            for i, (ci, hi) in enumerate(zip(c, hc)):
                c[i] = _minus_scaled(ci, hi, scale)     # c_{j+1} = c_j - alpha H c_j
                p[i] = p[i] + c[i] if j == 0 else p[i].add_(c[i])   # p is v's own tensors until the first sum
        else:
            c = [ci - scale * hi for ci, hi in zip(c, hc)]   # c_{j+1} = c_j - alpha H c_j
            p = [pi + ci for pi, ci in zip(p, c)]
    # H p = v - c_{J+1}; c_J is free: ||c_J|| / ||v|| is the residual of the sum one term shorter
    vnorm = float(_norm(v))
    own = terms > 0 and _untracked(p)                   # p's tensors are sums made here: scaled in place
    return [pi.mul_(scale) if own else scale * pi for pi in p], \
        {"iters": terms, "residual": float(_norm(c)) / vnorm if vnorm else 0.0}


def _minus_scaled(c, h, scale):
    """c - scale h, as `c - scale * h` computes it, with one buffer fewer: the product's buffer takes the
    difference (h itself, which may be any tensor the caller holds, is only read)."""
    s = torch.mul(h, scale)
    return torch.sub(c, s, out=s)


def _untracked(*groups) -> bool:
    """Whether arithmetic on these lists of tensors records no graph (grad mode off, or none requiring grad)
    and pairs tensors of one dtype and shape, so a result may be written into a buffer made here (in place)
    with the values the out-of-place expression gives."""
    tensors = [t for group in groups for t in group]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(len(g) == len(groups[0]) and all(a.dtype == b.dtype and a.shape == b.shape for a, b in zip(g, groups[0]))
               for g in groups)


def cg(matvec, v, iters: int = 20, damping: float = 0.0, tol: float = 1e-10, x0=None):
    """Conjugate gradient on (H + damping I) p = v, from p = x0 (default 0); stops on ||r|| <= tol ||v||.

    Stops early (keeping the last iterate) on non-positive curvature d^T (H + damping I) d <= 0."""
    def op(d):
        return [h + damping * di for h, di in zip(matvec(d), d)] if damping else matvec(d)
    if x0 is None:
        p = [torch.zeros_like(t) for t in v]
        r = list(v)
    else:                                                # warm start: r = v - (H + damping I) x0
        p = list(x0)
        r = [vi - ai for vi, ai in zip(v, op(p))]
    d = list(r)
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


def richardson(matvec, v, iters: int = 1, scale: float = 1e-3, x0=None):
    """The fixed-point iteration p <- p - alpha (H p - v) from x0 (default 0): with x0 = 0 and J steps it is
    the Neumann series of J - 1 terms. Converges when 0 < alpha lambda_max(H) < 2 (H positive definite)."""
    p = [torch.zeros_like(t) for t in v] if x0 is None else list(x0)
    for _ in range(iters):
        p = [pi - scale * (hi - vi) for pi, hi, vi in zip(p, matvec(p), v)]
    return p, {"iters": iters, "residual": None}                # (no extra product for the residual)


def identity(matvec, v):
    """H^-1 ~ I: p = v (the first-order T1-T2 / DARTS form)."""
    return list(v), {"iters": 0, "residual": None}


# ---- the registry entries: a solver's declared arguments, bound to a run ---------------------------
class Neumann:
    """SOLVERS "neumann": the series above with J = `terms`; alpha = `scale`, the PT learning rate when
    None, or 1/lambda_max(H) by power iteration when "auto" (re-estimated every `rescale_every`
    meta-steps with `power_iters` products; the estimate is kept in the estimator's state)."""

    def __init__(self, terms: int = 1, scale=None, rescale_every: int = 50, power_iters: int = 10):
        self.terms, self.scale, self.rescale_every, self.power_iters = terms, scale, rescale_every, power_iters

    def bind(self, lr: float, est: dict, meta_step: int):
        """(solve, args, prepare) for `ift`: `prepare(hvp, like)` gives the scale of `scale: auto` (and the
        lambda_max it came from, for the metrics)."""
        if self.scale != "auto":
            return neumann, {"terms": self.terms, "scale": lr if self.scale is None else self.scale}, None

        def prepare(hvp, like):
            if est.get("lam_max") is None or (meta_step - 1) % self.rescale_every == 0:
                est["lam_max"] = max(power_iteration(hvp, like, self.power_iters, seed=meta_step), 1e-12)
            return {"scale": 1.0 / est["lam_max"]}, {"lambda_max": est["lam_max"]}
        return neumann, {"terms": self.terms}, prepare


class CG:
    """SOLVERS "cg": conjugate gradient on (H + damping I) p = v."""

    def __init__(self, iters: int = 20, damping: float = 0.0, tol: float = 1e-10):
        self.args = {"iters": iters, "damping": damping, "tol": tol}

    def bind(self, lr: float, est: dict, meta_step: int):
        return cg, dict(self.args), None


class Amortized:
    """SOLVERS "amortized": amortized implicit differentiation (Arbel & Mairal 2022). Each meta-step's solve
    starts from the previous meta-step's p (kept in the estimator's state, and in checkpoints) instead of
    zero, and runs only `iters` Hessian-vector products of `method` (cg: conjugate gradient with
    `damping`; richardson: p <- p - alpha (H p - v), alpha = `scale` or the PT learning rate): theta moves
    little between meta-steps, so the warm start carries the solve across them. The first meta-step
    starts from 0. `check every` reports the cosine of its p to CG run to convergence at the same state
    (`check_p_cosine` in metrics.jsonl)."""

    def __init__(self, iters: int = 2, method: str = "cg", damping: float = 0.0, scale=None):
        self.iters, self.method, self.damping, self.scale = iters, method, damping, scale

    def bind(self, lr: float, est: dict, meta_step: int):
        def solve(matvec, v):
            x0 = est.get("amortized_p")
            if x0 is not None and [t.shape for t in x0] != [t.shape for t in v]:
                x0 = None
            if self.method == "cg":
                p, info = cg(matvec, v, iters=self.iters, damping=self.damping, tol=0.0, x0=x0)
            else:
                p, info = richardson(matvec, v, iters=self.iters, scale=lr if self.scale is None else self.scale,
                                     x0=x0)
            est["amortized_p"] = [t.detach() for t in p]
            if est.pop("_check_p", False):              # `check every`: p against CG to convergence, here,
                exact, _ = cg(matvec, v, iters=500, damping=self.damping, tol=1e-10)   # while H's graph lives
                a, b = (torch.cat([t.flatten() for t in q]).double() for q in (p, exact))
                est["_p_cosine"] = float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))
            return p, info
        return solve, {}, None


class Identity:
    """SOLVERS "identity": H^-1 ~ I."""

    def bind(self, lr: float, est: dict, meta_step: int):
        return identity, {}, None
