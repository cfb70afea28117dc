"""Hypergradient estimators (Raghu et al. 2021, Algorithm 1):

    dL_val/dphi = (dL_val/dtheta_FT) (dAlg_FT/dtheta_PT) (dAlg_PT/dphi)

`unroll_ft` gives v = dL_val/dtheta by backprop through K differentiable FT steps (features not
detached, so v has both the direct path and the one through the head update). `ift` turns v into the
hypergradient through the PT stage by the implicit function theorem at the current PT parameters:

    dAlg_PT/dphi = -[d2L_PT/dtheta dtheta^T]^-1 d2L_PT/dtheta dphi^T,  so  hg = -p^T d2L_PT/dtheta dphi
    with p ~ H^-1 v from a linear solver that only needs Hessian-vector products.

Everything is a pure function of parameter dicts; no graph outlives a call.
"""
from __future__ import annotations

from typing import Callable

import torch

from mptc.runtime.optim import Optimizer


def _grad(out, inputs, **kw):
    return torch.autograd.grad(out, inputs, allow_unused=True, materialize_grads=True, **kw)


def unroll_ft(loss_ft: Callable, loss_val: Callable, params: dict, metas: dict, update: list[str],
              opt: Optimizer, opt_state, k: int, ft_batches, val_batch, wrt: list[str]):
    """K differentiable FT steps on the `update` parameters, then the meta-objective.

    Returns (L_val, v) with v = dL_val/d params[wrt] (and dL_val/d metas, the direct term)."""
    theta = dict(params)
    psi = [params[n] for n in update]
    for step in range(k):
        x, y = ft_batches[step % len(ft_batches)]
        loss = loss_ft({**theta, **dict(zip(update, psi))}, metas, x, y)
        g = torch.autograd.grad(loss, psi, create_graph=True)          # dL_FT/dpsi, kept differentiable
        psi, opt_state = opt.update(psi, list(g), opt_state)            # psi_{k+1} = Alg_FT(psi_k, theta)
    x, y = val_batch
    l_val = loss_val({**theta, **dict(zip(update, psi))}, metas, x, y)
    names = list(metas)
    grads = _grad(l_val, [params[n] for n in wrt] + [metas[n] for n in names])
    v = list(grads[:len(wrt)])                                          # dL_val/dtheta (both paths)
    direct = dict(zip(names, grads[len(wrt):]))                         # dL_val/dphi held theta fixed
    return l_val.detach(), v, direct


def ift(loss_pt: Callable, params: dict, metas: dict, batch, v: list, wrt: list[str], solver: Callable,
        solver_args: dict, hessian_keys: list[str] | None = None):
    """-p^T d2L_PT/dtheta dphi with p ~ H^-1 v, H = d2L_PT/dtheta2 over `hessian_keys` (default: wrt).

    Returns ({meta name: hypergradient}, solver info)."""
    keys = hessian_keys or wrt
    v_h = [v[wrt.index(n)] if n in wrt else torch.zeros_like(params[n]) for n in keys]
    theta = [params[n] for n in keys]
    x, y = batch
    g = torch.autograd.grad(loss_pt(params, metas, x, y), theta, create_graph=True)  # dL_PT/dtheta (phi live)

    def hvp(u):                                                         # H u = d(g . u)/dtheta
        return list(_grad(g, theta, grad_outputs=u, retain_graph=True))

    p, info = solver(hvp, v_h, **solver_args)                           # p ~ H^-1 v
    names = list(metas)
    mixed = _grad(g, [metas[n] for n in names], grad_outputs=p)        # p^T d2L_PT/dtheta dphi (one VJP)
    return {n: -m for n, m in zip(names, mixed)}, info
