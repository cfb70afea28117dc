"""The hypergradient estimators a spec names (`hypergradient pretrain: ift(...), finetune: unroll`): the
ESTIMATORS registry's entries, each built from its declared arguments. runtime/estimators.py holds their
math as pure functions; these objects bind it to the loop through one small interface (docs/components.md):

    start(trainer) -> dict            the estimator's running state, kept in `State.est`
    keeps_last_step: bool             the loop keeps the graph of the PT step before a meta-step
    replays(state) -> bool            the loop takes PT steps by the optimizer's pure update
    open_window(trainer, state)       a P-step window starts (before its first PT step)
    record(state, batch)              each PT batch of a meta run
    through_pt(trainer, state, pt_batch, v) -> ({meta: v^T dtheta_PT/dphi}, info)
    through_ft(trainer, state, ft_batches, val_batch) -> (L_val, v = dL_val/dtheta, direct dL_val/dphi)

`PTEstimator` gives the defaults, so an estimator states only what it does. An estimator that drives the
whole run instead of the loop (`search`) has `drives = True` and `train(trainer, hook) -> State`.
"""
from __future__ import annotations

import collections

import torch

from mptc.errors import RunError
from mptc.runtime.estimators import ift, pt_loss_of, unroll_ft, unroll_pt
from mptc.runtime.hvp import fastest
from mptc.runtime.optim import clone_state
from mptc.runtime.solvers import CG

_ROR = "reverse-over-reverse"


class PTEstimator:
    """The defaults of the interface (module docstring): no running state, no replay, no kept step."""

    keeps_last_step = False
    drives = False

    def start(self, trainer) -> dict:
        return {}

    def replays(self, state) -> bool:
        return False

    def open_window(self, trainer, state) -> None:
        pass

    def record(self, state, batch) -> None:
        pass

    def through_pt(self, trainer, state, pt_batch, v):
        raise RunError(f"{type(self).__name__} does not apply to the pretrain stage")

    def through_ft(self, trainer, state, ft_batches, val_batch):
        raise RunError(f"{type(self).__name__} does not apply to the finetune stage")


class IFT(PTEstimator):
    """ESTIMATORS "ift": the implicit function theorem at the current PT parameters,
    hg = -p^T d2L_PT/dtheta dphi with p ~ (H + lambda I)^-1 v from the `solver` (runtime/estimators.ift)."""

    def __init__(self, solver, hessian: str = "all", hessian_batch: int | None = None, hvp: str = _ROR,
                 fused: bool = False, mixed_batches: int = 1, mixed_mode: str = _ROR):
        self.solver = solver                            # a SOLVERS entry, built from `solver: ...` (loop.build)
        self.hessian, self.hessian_batch, self.hvp = hessian, hessian_batch, hvp
        self.keeps_last_step, self.mixed_batches, self.mixed_mode = fused, mixed_batches, mixed_mode

    def start(self, trainer) -> dict:
        return {"recent": collections.deque(maxlen=self.mixed_batches), "hvp": self.hvp}

    def record(self, state, batch) -> None:
        if self.mixed_batches > 1:
            state.est["recent"].append(batch)           # the mixed term's last N PT batches

    def through_pt(self, trainer, state, pt_batch, v):
        keys = trainer.shared if self.hessian == "encoder" else trainer.pt_keys
        params, g = state.params, None
        if self.keeps_last_step:                        # H and the mixed term at theta_{P-1}, from the PT step
            params, grads = state.est["kept"]
            g = [grads[trainer.pt_keys.index(k)] for k in keys]
        if state.est["hvp"] == "auto":                  # resolved once, on the first meta-step's state
            state.est["hvp"] = trainer.world.same(    # rank 0's choice: every process forms H u alike
                fastest(pt_loss_of(trainer.loss_pt, state.params, state.metas, pt_batch, keys),
                        trainer.sel(state.params, keys), [torch.ones_like(state.params[k]) for k in keys]))
        solve, args, prepare = self.solver.bind(trainer.pt_opt.lr, state.est, state.meta_step)  # lr: Neumann's alpha
        more = [b for b in state.est["recent"] if b is not pt_batch]
        world = trainer.world                           # several processes: each its shard of the sub-batch
        sub = None if self.hessian_batch is None else self.hessian_batch // world.size
        return ift(trainer.loss_pt, params, state.metas, pt_batch, v, trainer.pt_keys, solve, args,
                   hessian_keys=keys, hvp=state.est["hvp"], hessian_batch=sub, prepare=prepare,
                   g=g, more=more, mixed_mode=self.mixed_mode,
                   weight_decay=trainer.pt_opt.weight_decay, world=world)   # H + lambda I: the decayed step's fixed point


class Unroll(PTEstimator):
    """ESTIMATORS "unroll": exact reverse mode, through the FT stage's K steps (`through_ft`), or through
    the PT stage's last P steps, replayed from a snapshot taken when the window opens (`through_pt`)."""

    def replays(self, state) -> bool:
        return state.est.get("window") is not None

    def open_window(self, trainer, state) -> None:
        state.est["window"] = ({k: t.detach().clone() for k, t in state.params.items()},
                               clone_state(state.pt_opt), [])

    def record(self, state, batch) -> None:
        if state.est.get("window") is not None:
            state.est["window"][2].append(batch)

    def through_pt(self, trainer, state, pt_batch, v):
        window = state.est.pop("window", None)          # replayed: closed until the next one opens
        if window is None:
            raise RunError("pretrain: unroll has no window to replay (open_window at the window's start)")
        params0, opt0, batches = window
        return unroll_pt(trainer.loss_pt, params0, state.metas, trainer.pt_keys, trainer.pt_opt, opt0, batches, v,
                         world=trainer.world)

    def through_ft(self, trainer, state, ft_batches, val_batch):
        """(L_val, v, direct) through K FT steps on the `update` modules, from the online FT state."""
        ft_state = trainer.ft_opt.init(trainer.sel(state.params, trainer.ft_keys))
        return unroll_ft(trainer.loss_ft, trainer.loss_val, state.params, state.metas, trainer.ft_keys,
                         trainer.ft_opt, ft_state, trainer.settings.K, ft_batches, val_batch,
                         wrt=trainer.pt_keys, world=trainer.world)


class Search(PTEstimator):
    """ESTIMATORS "search": no hypergradient; whole PT runs at random meta-parameters, the best on the
    meta-objective kept (runtime/search.py). It drives the run in place of the loop."""

    drives = True

    def __init__(self, method: str = "random", trials: int = 8, low: float = -3.0, high: float = 3.0):
        self.method, self.trials, self.low, self.high = method, trials, low, high

    def train(self, trainer, on_trial=None):
        from mptc.runtime.search import search
        return search(trainer, self.trials, self.low, self.high, on_trial)


def reference(trainer, state, pt_batch, v):
    """The `check every` reference: IFT with CG to tolerance on the whole batch, exact products, at the
    loop's current theta, whatever the plan's estimator."""
    exact = IFT(solver=CG(iters=200, tol=1e-8))
    return exact.through_pt(trainer, _Plain(state), pt_batch, v)


class _Plain:
    """A state's view for the reference: its parameters and metas, a fresh estimator state."""

    def __init__(self, state):
        self.params, self.metas, self.meta_step = state.params, state.metas, state.meta_step
        self.est = {"recent": (), "hvp": _ROR}
