"""Hypergradient estimators (Raghu et al. 2021, Algorithm 1):

    dL_val/dphi = (dL_val/dtheta_FT) (dAlg_FT/dtheta_PT) (dAlg_PT/dphi)

`unroll_ft` gives v = dL_val/dtheta by backprop through K differentiable FT steps (features not
detached, so v has both the direct path and the one through the head update). `ift` turns v into the
hypergradient through the PT stage by the implicit function theorem at the current PT parameters:

    dAlg_PT/dphi = -[d2L_PT/dtheta dtheta^T]^-1 d2L_PT/dtheta dphi^T,  so  hg = -p^T d2L_PT/dtheta dphi
    with p ~ H^-1 v from a linear solver that only needs Hessian-vector products.

The implicit function is the stationarity condition of the PT optimizer actually used: with coupled L2
weight decay lambda (runtime/optim.py) its fixed point solves grad L_PT + lambda theta = 0, so H is
d2L_PT/dtheta2 + lambda I, and the mixed term is unchanged (lambda does not depend on phi).

`unroll_pt` is the exact alternative to `ift`: reverse mode through the last P PT steps themselves.

Everything is a pure function of parameter dicts; no graph outlives a call.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from mptc.runtime.hvp import MAKERS, central_difference
from mptc.runtime.optim import Optimizer
from mptc.runtime.parallel import SOLO

_ROR = "reverse-over-reverse"


def _grad(out, inputs, **kw):
    return torch.autograd.grad(out, inputs, allow_unused=True, materialize_grads=True, **kw)


def unroll_ft(loss_ft: Callable, loss_val: Callable, params: dict, metas: dict, update: list[str],
              opt: Optimizer, opt_state, k: int, ft_batches, val_batch, wrt: list[str], world=SOLO):
    """K differentiable FT steps on the `update` parameters, then the meta-objective.

    Returns (L_val, v) with v = dL_val/d params[wrt] (and dL_val/d metas, the direct term). Under several
    processes (`world`, runtime/parallel.py) each step's gradient is the processes' mean, differentiably,
    and L_val, v and the direct term are the means of the processes' own."""
    theta = dict(params)
    psi = [params[n] for n in update]
    for step in range(k):
        x, y = ft_batches[step % len(ft_batches)]
        loss = loss_ft({**theta, **dict(zip(update, psi))}, metas, x, y)
        g = world.mean_graph(_grad(loss, psi, create_graph=True))   # dL_FT/dpsi, kept differentiable
        psi, opt_state = opt.update(psi, list(g), opt_state)            # psi_{k+1} = Alg_FT(psi_k, theta)
    x, y = val_batch
    l_val = loss_val({**theta, **dict(zip(update, psi))}, metas, x, y)
    names = list(metas)
    grads = _grad(l_val, [params[n] for n in wrt] + [metas[n] for n in names])
    if world.size > 1:                                                  # one collective: the means
        *grads, l_val = world.mean([*grads, l_val.detach()])
    v = list(grads[:len(wrt)])                                          # dL_val/dtheta (both paths)
    direct = dict(zip(names, grads[len(wrt):]))                         # dL_val/dphi held theta fixed
    return l_val.detach(), v, direct


def timed(fn, *args, **kw):
    """(fn(*args, **kw), seconds it took)."""
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


def hessian(loss_pt: Callable, params: dict, metas: dict, batch, keys: list[str], mode: str = _ROR,
            hessian_batch: int | None = None, g: list | None = None):
    """(g, hvp): g = dL_PT/dtheta over `keys` on `batch`, differentiable in theta and phi (the mixed
    term needs it), and u -> H u, H = d2L_PT/dtheta2 on the first `hessian_batch` examples of `batch`
    (all of it when None), formed by `mode` (see runtime/hvp.py). A `g` given (the fused schedule: the
    last PT step's own differentiable gradient at `params`) is used instead of a new one."""
    theta = [params[n] for n in keys]
    x, y = batch
    if g is None:
        g = _grad(loss_pt(params, metas, x, y), theta, create_graph=True)  # dL_PT/dtheta
    if mode == _ROR and hessian_batch is None:
        return g, MAKERS[mode](None, theta, g)                          # H u = d(g . u)/dtheta, same graph
    sub = (x, y) if hessian_batch is None else (x[:hessian_batch], y[:hessian_batch])
    return g, MAKERS[mode](pt_loss_of(loss_pt, params, metas, sub, keys), theta)


def _mixed(loss_pt: Callable, params: dict, metas: dict, keys: list[str], g: list, p: list, batches: list,
           mode: str = _ROR) -> list:
    """p^T d2L_PT/dtheta dphi, the mean over `batches` (the first one's gradient is `g`), each at the
    same `params`: more batches, a lower-variance estimate of the population term. `mode`:
    reverse-over-reverse differentiates p . dL/dtheta in phi; finite-difference takes the central
    difference of dL/dphi along p (two first-order passes per batch, no second-order graph: cheap when
    phi enters late, as task weights do; exact up to O(e^2))."""
    phis, theta = list(metas.values()), [params[n] for n in keys]
    if mode == "finite-difference":
        def grad_phi(batch):
            return lambda ts: _grad(loss_pt({**params, **dict(zip(keys, ts))}, metas, *batch), phis)
        per_batch = [central_difference(grad_phi(b), [t.detach() for t in theta], p) for b in batches]
    else:
        grads = [g] + [_grad(loss_pt(params, metas, *b), theta, create_graph=True)
                       for b in batches[1:]]
        per_batch = [_grad(gk, phis, grad_outputs=p) for gk in grads]
    if len(per_batch) == 1:
        return list(per_batch[0])
    return [sum(parts) / len(batches) for parts in zip(*per_batch)]


def pt_loss_of(loss_pt: Callable, params: dict, metas: dict, batch, keys: list[str]) -> Callable:
    """theta -> L_PT(theta) on `batch` (theta: the tensors of `keys`; phi held fixed)."""
    fixed = {n: t.detach() for n, t in metas.items()}
    return lambda ts: loss_pt({**params, **dict(zip(keys, ts))}, fixed, *batch)


def ift(loss_pt: Callable, params: dict, metas: dict, batch, v: list, wrt: list[str], solver: Callable,
        solver_args: dict, hessian_keys: list[str] | None = None, hvp: str = _ROR,
        hessian_batch: int | None = None, prepare: Callable | None = None, g: list | None = None,
        more: list = (), mixed_mode: str = _ROR, weight_decay: float = 0.0, world=SOLO):
    """-p^T d2L_PT/dtheta dphi with p ~ H^-1 v, H = d2L_PT/dtheta2 + weight_decay I over `hessian_keys`
    (default: wrt): the Jacobian of the PT optimizer's stationarity condition grad L_PT + lambda theta = 0
    (`weight_decay` lambda: the PT optimizer's coupled L2 decay, 0 without).

    `prepare(hvp, v)`, when given, returns (extra solver arguments computed from the Hessian, diagnostics
    for `info`): e.g. the Neumann scale from a power iteration, and the lambda_max it came from. Returns ({meta name: hypergradient}, info) where info has
    the solver's iterations and residual and the seconds spent solving and in the mixed VJP. `g`, when
    given, is dL_PT/dtheta over `hessian_keys` at `params`, differentiable (see `hessian`). The mixed
    term is averaged over `batch` and the PT batches in `more` (H and p come from `batch` alone), formed
    by `mixed_mode` (see `_mixed`). Under several processes (`world`) every Hessian-vector product and the
    mixed term are the processes' means, so each one solves the same system to the same p."""
    keys = hessian_keys or wrt
    v_h = [v[wrt.index(n)] if n in wrt else torch.zeros_like(params[n]) for n in keys]
    (g, plain), t_hessian = timed(hessian, loss_pt, params, metas, batch, keys, hvp, hessian_batch, g)
    if world.size > 1:
        plain = _averaged(plain, world)                                 # u -> mean over processes of H_r u
    matvec = _decayed(plain, weight_decay)                              # u -> (H + lambda I) u
    extra, seen = prepare(matvec, v_h) if prepare else ({}, {})
    (p, info), t_solve = timed(solver, matvec, v_h, **{**solver_args, **extra})  # p ~ (H + lambda I)^-1 v
    names = list(metas)
    minus_p = [-t for t in p]                                           # -p^T d2L/dtheta dphi: p negated
    mixed, t_mixed = timed(_mixed, loss_pt, params, metas, keys, g, minus_p, [batch, *more], mixed_mode)
    mixed = world.mean(mixed)                                           # (theta-sized), not the result
    info = {**info, **extra, **seen, "solve_s": t_hessian + t_solve, "mixed_s": t_mixed}
    return dict(zip(names, mixed)), info


def _averaged(hvp: Callable, world) -> Callable:
    """u -> the mean over the processes of their own Hessian-vector products (one collective each)."""
    return lambda u: world.mean(hvp(u))


def _decayed(hvp: Callable, weight_decay: float) -> Callable:
    """u -> (H + lambda I) u: the Hessian of L_PT + lambda/2 |theta|^2, whose gradient is the PT step's
    decayed gradient (hvp itself when lambda is 0)."""
    if not weight_decay:
        return hvp
    return lambda u: [hu + weight_decay * ui for hu, ui in zip(hvp(u), u)]   # (H + lambda I) u


def unroll_pt(loss_pt: Callable, params0: dict, metas: dict, keys: list[str], opt: Optimizer, opt_state0,
              batches: list, v: list, world=SOLO):
    """v^T dtheta_P/dphi by reverse mode through the P PT steps theta_0 -> theta_P (exact).

    theta_{i+1} = Alg_PT(theta_i, phi; batch_i), replayed from the snapshot (theta_0, optimizer state)
    with every step differentiable in theta and phi; `v` = dL_val/dtheta_P over `keys`. The loop takes
    a window's steps by the same `opt.update` (executor.Trainer.pt_step), and an augmentation's noise is
    the loop's (program.NoiseMemo), so the replay reaches the loop's theta_P bit for bit. Under several
    processes (`world`) each step's gradient is the processes' mean, differentiably, as the loop's steps."""
    theta, state = [params0[n].detach().requires_grad_() for n in keys], opt_state0
    for x, y in batches:
        current = {**params0, **dict(zip(keys, theta))}
        g = world.mean_graph(_grad(loss_pt(current, metas, x, y), theta, create_graph=True))  # dL_PT/dtheta_i
        theta, state = opt.update(theta, list(g), state)                # theta_{i+1}, differentiable in phi
    names = list(metas)
    hg = world.mean(_grad(theta, [metas[n] for n in names], grad_outputs=v))   # v^T dtheta_P/dphi
    return dict(zip(names, hg)), {"iters": len(batches), "residual": None}
