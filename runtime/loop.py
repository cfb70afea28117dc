"""The outer loop: Algorithm 1 of Raghu et al. (2021), online as in the published code.

Every PT step updates the PT parameters; between meta-steps the FT head trains online on detached
features; every P PT steps (after `warmup` PT steps) a meta-step unrolls the FT stage K steps, measures
the meta-objective, passes its gradient through the PT stage by the plan's estimator, and steps the
meta-parameters. With `train reset_every R` the run is a sequence of cycles of R meta-steps, each from
new initial parameters (`schedule`, `Trainer.reset`).

Everything the loop changes lives in `State` (parameters, meta-parameters, optimizer states, the
estimators' own state, the counters); the `Trainer` holds what does not change (the plan's functions,
optimizers and estimators, reached through their registries); `meta_train` owns the order and calls a
hook after every meta-step (metrics, progress, a restart's path).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import attrs
import torch

from mptc.compiler import ir
from mptc.components.registry import ESTIMATORS
from mptc.errors import RunError
from mptc.runtime import optim
from mptc.runtime.data import Data
from mptc.runtime.program import Program


@attrs.define
class State:
    """Everything the outer loop updates: parameters, meta-parameters, optimizer states, each estimator's
    own running state (`est`: the PT estimator's kept graph, replay window, recent batches, lambda_max
    ...), and the counters of meta-steps, cycles and non-finite hypergradients in a row."""

    params: dict
    metas: dict
    pt_opt: object
    ft_opt: object
    meta_opt: object
    est: dict = attrs.Factory(dict)
    meta_step: int = 0
    cycle: int = 0
    nonfinite: int = 0


@attrs.frozen
class MetaStep:
    """What a meta-step did, as the hook after it sees it (and metrics.jsonl logs it)."""

    step: int
    meta_step: int
    pt_loss: float
    ft_val_loss: float
    hypergrad_norm: float
    info: dict
    skipped: bool
    elapsed_s: float
    pt_s: float
    check_cosine: float | None


Hook = Callable[[MetaStep, State], None]


class Trainer:
    """One plan's stages as functions of a State (the loop in `meta_train` owns the order). The plan's
    estimators come from the ESTIMATORS registry: `pt` (through the PT stage) and `ft` (through the FT
    stage), each an object of the interface docs/components.md describes."""

    def __init__(self, plan: ir.Plan, prog: Program, data: Data):
        self.plan, self.prog, self.data = plan, prog, data
        self.pt_keys = prog.keys_of(plan.pretrain.trains)
        self.ft_keys = prog.keys_of(plan.finetune.trains)           # what the K unrolled FT steps update
        self.online_keys = [k for k in self.ft_keys if k not in set(self.pt_keys)]   # the FT head: online steps
        self.shared = [k for k in self.pt_keys if k in set(prog.keys_of(self.encoder_modules()))]
        self.loss_pt = prog.loss(plan.pretrain.loss)
        self.loss_ft = prog.loss(plan.finetune.loss)
        self.loss_val = prog.loss(plan.objective.expr)
        self.pt_opt = optim.build(plan.pretrain.optimizer)
        self.ft_opt = optim.build(plan.finetune.optimizer)
        self.meta_opt = optim.build(plan.meta_optimizer)
        methods = {e.stage: e.method for e in plan.estimators}
        self.pt, self.ft = _estimator(methods["pretrain"]), _estimator(methods["finetune"])

    def encoder_modules(self) -> list[str]:
        """Modules both stages use: the pre-trained representation (theta)."""
        ft_modules = set(_applied(self.plan.finetune.loss)) | set(_applied(self.plan.objective.expr))
        return [m for m in self.plan.pretrain.trains if m in ft_modules]

    def fresh_start(self, seed: int) -> None:
        """Back to where a run starts: batch streams, augmentation noise and torch's generator reseeded
        (the estimators' running state is in each new State)."""
        self.data.reseed(seed)
        self.prog.reseed_noise(seed)
        torch.manual_seed(seed)

    def init_state(self, params: dict | None = None) -> State:
        """The state a run starts from: `params` (default: the modules' initial values), the
        meta-parameters' initial values, every optimizer's and estimator's initial state."""
        params, metas = params or self.prog.init_params(), self.prog.init_metas()
        return State(params, metas, self.pt_opt.init(self.sel(params, self.pt_keys)),
                     self.ft_opt.init(self.sel(params, self.online_keys)), self.meta_opt.init(list(metas.values())),
                     est=self.pt.start(self))

    def reset(self, state: State) -> None:
        """`train reset_every`: the PT model and the FT head start again from new initial values (drawn
        from the run's seed and the cycle's number) with their optimizers' states anew; the
        meta-parameters, the meta-optimizer and the estimator's state carry on."""
        state.cycle += 1
        fresh = self.init_state(self.prog.draw_params(1_000_003 * (self.plan.train.seed + 1) + state.cycle))
        state.params, state.pt_opt, state.ft_opt = fresh.params, fresh.pt_opt, fresh.ft_opt

    @staticmethod
    def sel(params, keys):
        return [params[k] for k in keys]

    def apply(self, state: State, keys, opt, opt_state, grads, fresh: bool = False):
        """An optimizer step in place (fused kernels). `fresh` first gives the parameters new storage, so
        the tensors a kept graph holds (the fused schedule's theta_{P-1}) keep their values."""
        if fresh:
            state.params.update({k: state.params[k].detach().clone().requires_grad_() for k in keys})
        return opt.step_(self.sel(state.params, keys), list(grads), opt_state)

    def pt_step(self, state: State, batch, keep: bool = False) -> torch.Tensor:
        """One PT step at fixed meta-parameters. `keep` (the step before a meta-step, for an estimator
        that reuses it) keeps the step's gradient differentiable in theta and phi."""
        metas = state.metas if keep else {n: t.detach() for n, t in state.metas.items()}
        loss = self.loss_pt(state.params, metas, *batch)
        grads = torch.autograd.grad(loss, self.sel(state.params, self.pt_keys), create_graph=keep)
        if keep:
            state.est["kept"] = (dict(state.params), grads)   # the point theta_{P-1} and dL_PT/dtheta there
        if self.pt.replays(state):                      # a step the estimator replays: the replay's arithmetic
            state.pt_opt = self._pure_step(state, grads)
        else:
            state.pt_opt = self.apply(state, self.pt_keys, self.pt_opt, state.pt_opt, [g.detach() for g in grads],
                                      fresh=keep)
        return loss.detach()

    @torch.no_grad()
    def _pure_step(self, state: State, grads):
        """The PT step by the optimizer's pure `update`, the form a replay differentiates, instead of the
        fused in-place kernels (equal to 1e-12, not to the bit): the replay of the window then reaches
        exactly the theta_P the loop reached."""
        new, opt_state = self.pt_opt.update(self.sel(state.params, self.pt_keys), list(grads), state.pt_opt)
        for k, t in zip(self.pt_keys, new):
            state.params[k].copy_(t)
        return opt_state

    def ft_online_step(self, state: State, batch) -> None:
        """One FT step on the FT head alone (the modules `unroll K update ...` names that pre-training does
        not train), features detached: the encoder is trained by PT only, whatever `update` says."""
        view = {k: (t if k in self.online_keys else t.detach()) for k, t in state.params.items()}
        loss = self.loss_ft(view, state.metas, *batch)
        grads = torch.autograd.grad(loss, self.sel(view, self.online_keys))
        state.ft_opt = self.apply(state, self.online_keys, self.ft_opt, state.ft_opt, grads)

    def hypergradient(self, state: State, pt_batch, ft_batches, val_batch):
        """(L_val, {meta: dL_val/dphi}, info): through the FT stage (v = dL_val/dtheta and the direct
        term), then through the PT stage."""
        from mptc.runtime.estimators import timed
        (l_val, v, direct), t_ft = timed(self.ft.through_ft, self, state, ft_batches, val_batch)
        hg, info = self.pt.through_pt(self, state, pt_batch, v)
        state.est["last"] = (pt_batch, v, direct)       # what `check` compares against
        state.est.pop("kept", None)                     # no graph outlives the meta-step
        return l_val, {n: hg[n] + direct[n] for n in hg}, {**info, "ft_unroll_s": t_ft}

    def check(self, state: State, hg: dict) -> float:
        """Cosine of the estimate `hg` to the reference (IFT with CG to tolerance, exact products) on the
        same batches and state, whatever the plan's PT estimator."""
        from mptc.runtime.hypergradient import reference
        pt_batch, v, direct = state.est["last"]
        ref, _ = reference(self, state, pt_batch, v)
        a = torch.cat([hg[n].flatten() for n in ref]).double()
        b = torch.cat([(ref[n] + direct[n]).flatten() for n in ref]).double()
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))

    def meta_update(self, state: State, hg: dict) -> None:
        """The meta-optimizer's step, each meta-parameter clamped to its declared bounds."""
        names = list(state.metas)
        with torch.no_grad():
            new, state.meta_opt = self.meta_opt.update([state.metas[n] for n in names],
                                                       [hg[n] for n in names], state.meta_opt)
        bounds = {m.name: m.bounds for m in self.plan.metas}
        state.metas = {n: _clamp(t, bounds.get(n)).detach().requires_grad_() for n, t in zip(names, new)}


def _estimator(method: ir.Component):
    """The estimator object a plan's `hypergradient` entry names, built through the registry."""
    comp = ESTIMATORS.get(method.name)
    return comp.load()(**method.args)


def _clamp(t, bounds):
    return t if bounds is None else t.clamp(*bounds)


def _applied(e) -> list[str]:
    """Modules applied anywhere in an IR expression."""
    if isinstance(e, ir.Apply):
        return [e.module, *_applied(e.arg)]
    if attrs.has(type(e)):
        out = []
        for f in attrs.fields(type(e)):
            child = getattr(e, f.name)
            for c in child if isinstance(child, tuple) else (child,):
                out += _applied(c)
        return out
    return []


def _norm(hg: dict) -> float:
    return math.sqrt(sum(float((g * g).sum()) for g in hg.values()))


def schedule(warmup: int, P: int, meta_steps: int, reset_every: int = 0):
    """The outer loop's PT steps in order, each as (reset, opens, meta_step): `reset` when the PT model
    is re-initialised before the step, `opens` when the step starts a P-step window, `meta_step` the
    number of the meta-step that follows the step (0: none). `warmup` steps precede the first window;
    with `reset_every` R, after every R meta-steps (but not the last) the model is reset and warmed up
    again: a new cycle. Lazy: nothing is listed up front, whatever the counts.

        >>> ["R" * r + "o" * o + str(m or "") or "." for r, o, m in schedule(1, 2, 3, reset_every=2)]
        ['.', 'o', '1', 'o', '2', 'R', 'o', '3']
    """
    done = 0
    while done < meta_steps:
        cycle = min(reset_every or meta_steps, meta_steps - done)
        for j in range(warmup):
            yield done > 0 and j == 0, False, 0
        for m in range(done + 1, done + cycle + 1):
            for i in range(P):
                yield done > 0 and warmup == 0 and m == done + 1 and i == 0, i == 0, m if i == P - 1 else 0
        done += cycle


def meta_train(trainer: Trainer, state: State, hook: Hook | None = None, mode: str = "meta") -> State:
    """The outer loop: PT steps, FT online steps and, every P steps, a meta-step; `hook(record, state)`
    after each meta-step.

    `mode` "pretrain" runs the PT steps alone, "online" adds the online FT head, "meta" everything
    (and, with `train reset_every`, the resets: the other modes run the same number of steps as a
    meta run without them)."""
    meta = mode == "meta"
    plan, data, pt = trainer.plan, trainer.data, trainer.pt
    K, check_every, max_nonfinite = plan.finetune.unroll, plan.hg_check_every, plan.train.max_nonfinite
    steps = schedule(plan.train.warmup, plan.pretrain.steps, plan.train.meta_steps,
                     plan.train.reset_every if meta else 0)
    t0, t_pt, pt_losses = time.perf_counter(), 0.0, []
    for step, (reset, opens, meta_step) in enumerate(steps, 1):
        # ---- PT step (meta-parameters fixed) ---------------------------------------------------
        ts = time.perf_counter()
        if reset:
            trainer.reset(state)                        # a new cycle: theta, psi and their optimizers anew
        if meta and opens:
            pt.open_window(trainer, state)              # an estimator that replays the window snapshots it
        pt_batch = data.batch("pretrain")
        if meta:
            pt.record(state, pt_batch)
        last = meta and meta_step > 0                   # a meta-step follows this PT step
        pt_losses.append(trainer.pt_step(state, pt_batch, keep=last and pt.keeps_last_step))
        t_pt += time.perf_counter() - ts
        if mode == "pretrain":
            continue
        # ---- FT head, online, on detached features ---------------------------------------------
        trainer.ft_online_step(state, data.batch("finetune"))
        if not last:
            continue
        # ---- FT unroll + meta-objective + hypergradient through the PT stage ---------------------
        state.meta_step = meta_step
        ft_batches = [data.batch("finetune") for _ in range(K)]
        l_val, hg, info = trainer.hypergradient(state, pt_batch, ft_batches, data.batch("objective"))
        norm = _norm(hg)
        cosine = trainer.check(state, hg) if check_every and meta_step % check_every == 0 else None
        # ---- meta-step (skipped on a non-finite hypergradient) ---------------------------------
        skipped = not math.isfinite(norm) or not math.isfinite(float(l_val))
        state.nonfinite = state.nonfinite + 1 if skipped else 0
        if state.nonfinite >= max_nonfinite:
            raise RunError(f"non-finite hypergradient at meta-step {meta_step} "
                           f"({state.nonfinite} in a row): the run stopped")
        if not skipped:
            trainer.meta_update(state, hg)
        # ---- hook: metrics, progress ---------------------------------------------------------------
        if hook:
            hook(MetaStep(step, meta_step, float(torch.stack(pt_losses).mean()), float(l_val), norm, info, skipped,
                          round(time.perf_counter() - t0, 4), round(t_pt, 6), cosine), state)
        pt_losses, t_pt = [], 0.0
    return state
