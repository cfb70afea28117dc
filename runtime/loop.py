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

from mptc.errors import RunError
from mptc.runtime.estimators import timed
from mptc.runtime.hypergradient import reference
from mptc.runtime.parallel import SOLO, rank_seed


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
    step: int = 0      # PT steps taken (a resumed run's loop skips these: runtime/checkpoint.py)


class Fixed(dict):
    """The meta-parameters, detached, for the steps between two meta-updates (`Stages.fixed`): a loss may
    evaluate a `let` of them alone once for all those steps (runtime/program.py)."""

    reusable = True


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


@attrs.frozen
class Settings:
    """What the loop reads of the plan: the schedule (warmup, P, meta-steps, cycles), K, the seed, the
    checks and each meta-parameter's bounds."""

    warmup: int
    P: int
    meta_steps: int
    reset_every: int
    K: int
    seed: int
    max_nonfinite: int
    check_every: int | None
    bounds: dict
    rates: dict = attrs.Factory(dict)   # meta-parameter -> its own meta-optimizer learning rate (`meta ... rate R`)


class Stages:
    """The stages as functions of a State (the loop in `meta_train` owns the order): the losses, which
    parameters each stage trains (`pt_keys`, `ft_keys`, `shared`: the encoder), the optimizers, and the
    estimators `pt` (through the PT stage) and `ft` (through the FT stage), objects of the interface
    runtime/hypergradient.py describes. `prog` gives initial parameters (`init_params`, `init_metas`,
    `draw_params`), `data` the batches (`batch(stream)`). Built from a plan by `Trainer`; a standalone
    script (`mptc compile --emit python`) builds one from its own functions and runs this same loop."""

    def __init__(self, settings: Settings, prog, data, losses, keys, optimizers, estimators):
        self.settings, self.prog, self.data = settings, prog, data
        self.loss_pt, self.loss_ft, self.loss_val = losses
        self.pt_keys, self.ft_keys, self.shared = keys          # ft_keys: what the K unrolled FT steps update
        self.online_keys = [k for k in self.ft_keys if k not in set(self.pt_keys)]   # the FT head: online steps
        self.pt_opt, self.ft_opt, self.meta_opt = optimizers
        self.pt, self.ft = estimators
        # an auxiliary block's estimator (AANG; runtime/aang.py), the meta-parameters it owns, and the
        # parameters of the modules the meta-objective applies (its dev head's): set by a plan's Trainer
        self.aux_est, self.aux_metas, self.val_keys = None, (), []
        # the processes of a data-parallel run (runtime/parallel.py): every gradient leaving a process is
        # their mean; one process: SOLO, whose collectives are the identity
        self.world = SOLO
        self._fixed = (None, (), {})                    # `fixed`: the meta-parameters detached, per meta-update

    def fresh_start(self, seed: int) -> None:
        """Back to where a run starts: batch streams, augmentation noise and torch's generator reseeded
        (the estimators' running state is in each new State)."""
        self.data.reseed(seed)
        self.prog.reseed_noise(seed)                    # per process (runtime/parallel.py: rank_seed)
        torch.manual_seed(rank_seed(seed, self.world.rank))

    def init_state(self, params: dict | None = None) -> State:
        """The state a run starts from: `params` (default: the modules' initial values), the
        meta-parameters' initial values, every optimizer's and estimator's initial state."""
        params, metas = params or self.prog.init_params(), self.prog.init_metas()
        self.world.broadcast_([*params.values(), *metas.values()])   # every process starts from rank 0's
        return State(params, metas, self.pt_opt.init(self.sel(params, self.pt_keys)),
                     self.ft_opt.init(self.sel(params, self.online_keys)), self.meta_opt.init(list(metas.values())),
                     est=self.pt.start(self))

    def reset(self, state: State) -> None:
        """`train reset_every`: the PT model and the FT head start again from new initial values (drawn
        from the run's seed and the cycle's number) with their optimizers' states anew; the
        meta-parameters, the meta-optimizer and the estimator's state carry on."""
        state.cycle += 1
        fresh = self.init_state(self.prog.draw_params(1_000_003 * (self.settings.seed + 1) + state.cycle))
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

    def fixed(self, state: State) -> dict:
        """The meta-parameters detached, one dict for as long as they stay the same (between meta-updates):
        a `let` of them alone (task weights) is evaluated once for all the PT steps in between."""
        held, tensors, detached = self._fixed
        now = tuple(state.metas.values())
        if held is not state.metas or len(now) != len(tensors) or any(a is not b for a, b in zip(tensors, now)):
            detached = Fixed((n, t.detach()) for n, t in state.metas.items())
            self._fixed = (state.metas, now, detached)
        return detached

    def pt_step(self, state: State, batch, keep: bool = False) -> torch.Tensor:
        """One PT step at fixed meta-parameters. `keep` (the step before a meta-step, for an estimator
        that reuses it) keeps the step's gradient differentiable in theta and phi."""
        metas = state.metas if keep else self.fixed(state)
        loss = self.loss_pt(state.params, metas, *batch)
        grads = torch.autograd.grad(loss, self.sel(state.params, self.pt_keys), create_graph=keep,
                                    allow_unused=True, materialize_grads=True)  # a pooler the loss never reaches: 0
        if keep:
            state.est["kept"] = (dict(state.params), grads)   # the point theta_{P-1} and dL_PT/dtheta there
        loss, *step = self.world.mean([loss.detach(), *(g.detach() for g in grads)])   # the processes' means
        if self.pt.replays(state):                      # a step the estimator replays: the replay's arithmetic
            state.pt_opt = self._pure_step(state, step)
        else:
            state.pt_opt = self.apply(state, self.pt_keys, self.pt_opt, state.pt_opt, step, fresh=keep)
        return loss

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
        loss = self.loss_ft(view, self.fixed(state), *batch)
        grads = torch.autograd.grad(loss, self.sel(view, self.online_keys), allow_unused=True, materialize_grads=True)
        state.ft_opt = self.apply(state, self.online_keys, self.ft_opt, state.ft_opt, self.world.mean(grads))

    def hypergradient(self, state: State, pt_batch, ft_batches, val_batch):
        """(L_val, {meta: dL_val/dphi}, info): through the FT stage (v = dL_val/dtheta and the direct
        term), then through the PT stage."""
        own, info_aux = {}, {}
        if self.aux_est is not None:                    # the auxiliary weights' own estimator (alignment)
            (own, info_aux), t_aux = timed(self.aux_est.through_aux, self, state, pt_batch, val_batch)
            info_aux["alignment_s"] = t_aux
            if set(own) >= set(state.metas):            # it owns every meta-parameter: no FT unroll, no IFT
                state.est.pop("kept", None)
                with torch.no_grad():
                    l_val = self.loss_val(state.params, state.metas, *val_batch)
                return l_val, own, {"iters": 0, "residual": 0.0, **info_aux}
        (l_val, v, direct), t_ft = timed(self.ft.through_ft, self, state, ft_batches, val_batch)
        hg, info = self.pt.through_pt(self, state, pt_batch, v)
        state.est["last"] = (pt_batch, v, direct)       # what `check` compares against
        state.est.pop("kept", None)                     # no graph outlives the meta-step
        return l_val, {n: own[n] if n in own else hg[n] + direct[n] for n in hg}, {**info, **info_aux, "ft_unroll_s": t_ft}

    def check(self, state: State, hg: dict) -> float:
        """Cosine of the estimate `hg` to the reference (IFT with CG to tolerance, exact products) on the
        same batches and state, whatever the plan's PT estimator (NaN when the meta-step used none: an
        auxiliary block's alignment owning every meta-parameter)."""
        if "last" not in state.est:
            return float("nan")
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
        bounds, rates = self.settings.bounds, self.settings.rates
        new = [t if rates.get(n) is None else state.metas[n] + rates[n] / self.meta_opt.lr * (t - state.metas[n])
               for n, t in zip(names, new)]             # its own rate: the step (linear in the rate) rescaled
        state.metas = {n: _clamp(t, bounds.get(n)).detach().requires_grad_() for n, t in zip(names, new)}


def _clamp(t, bounds):
    return t if bounds is None else t.clamp(*bounds)


def _hg_norm(hg: dict) -> float:
    return math.sqrt(sum(float(torch.linalg.vector_norm(g)) ** 2 for g in hg.values()))   # no g*g buffer


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


def meta_train(trainer: Stages, state: State, hook: Hook | None = None, mode: str = "meta") -> State:
    """The outer loop: PT steps, FT online steps and, every P steps, a meta-step; `hook(record, state)`
    after each meta-step.

    `mode` "pretrain" runs the PT steps alone, "online" adds the online FT head, "meta" everything
    (and, with `train reset_every`, the resets: the other modes run the same number of steps as a
    meta run without them)."""
    meta = mode == "meta"
    run, data, pt = trainer.settings, trainer.data, trainer.pt
    K, check_every, max_nonfinite = run.K, run.check_every, run.max_nonfinite
    steps = schedule(run.warmup, run.P, run.meta_steps, run.reset_every if meta else 0)
    t0, t_pt, pt_losses = time.perf_counter(), 0.0, []
    done = state.step                                   # > 0: resumed from a checkpoint after that many
    for step, (reset, opens, meta_step) in enumerate(steps, 1):
        if step <= done:
            continue
        state.step = step
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
        checking = bool(check_every) and meta_step % check_every == 0
        if checking:
            state.est["_check_p"] = True                # an amortized solver compares its p (runtime/solvers.py)
        l_val, hg, info = trainer.hypergradient(state, pt_batch, ft_batches, data.batch("objective"))
        norm = _hg_norm(hg)
        cosine = trainer.check(state, hg) if checking else None
        state.est.pop("_check_p", None)
        if "_p_cosine" in state.est:                    # an amortized solve's p against a converged one
            info = {**info, "check_p_cosine": state.est.pop("_p_cosine")}
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


# ---- a plan's stages (what `mptc run` builds; not part of the loop a standalone script copies) ---------
class Trainer(Stages):
    """The stages of a plan: its losses compiled by the Program, its optimizers and its estimators built
    through their registries (a `call:` argument, such as `ift`'s solver, built through its own)."""

    def __init__(self, plan, prog, data):
        from mptc.runtime import optim
        self.plan = plan
        pt_keys, ft_keys = prog.keys_of(plan.pretrain.trains), prog.keys_of(plan.finetune.trains)
        shared = [k for k in pt_keys if k in set(prog.keys_of(encoder_modules(plan)))]
        methods = {e.stage: e.method for e in plan.estimators}
        settings = Settings(plan.train.warmup, plan.pretrain.steps, plan.train.meta_steps, plan.train.reset_every,
                            plan.finetune.unroll, plan.train.seed, plan.train.max_nonfinite, plan.hg_check_every,
                            {m.name: m.bounds for m in plan.metas},
                            {m.name: m.rate for m in plan.metas if m.rate is not None})
        losses = (prog.loss(plan.pretrain.loss), prog.loss(plan.finetune.loss), prog.loss(plan.objective.expr))
        if plan.train.precision == "bf16":
            losses = tuple(autocast(f, prog.device) for f in losses)
        super().__init__(settings, prog, data, losses,
                         (pt_keys, ft_keys, shared),
                         tuple(optim.build(c) for c in (plan.pretrain.optimizer, plan.finetune.optimizer,
                                                        plan.meta_optimizer)),
                         (build("estimator", methods["pretrain"]), build("estimator", methods["finetune"])))
        self.val_keys = prog.keys_of(dict.fromkeys(_applied(plan.objective.expr)))
        if plan.auxiliary is not None:
            prog.aux.data = data
            self.aux_metas = auxiliary_metas(plan)
            estimator = build("estimator", methods["auxiliary"])
            self.aux_est = estimator if hasattr(estimator, "through_aux") else None   # bilevel: the others

    def encoder_modules(self) -> list[str]:
        return encoder_modules(self.plan)


def build(kind: str, component):
    """The object a registry entry builds from an IR Component's arguments; an argument that is itself a
    component (a `call:KIND` parameter, e.g. `ift(solver: cg(...))`) is built first, through its registry."""
    from mptc.components.registry import ALL
    comp = ALL[kind].get(component.name)
    args = dict(component.args)
    for p in comp.params:
        if p.kind.startswith("call:") and args.get(p.name) is not None:
            args[p.name] = build(p.kind[5:], args[p.name])
    return comp.load()(**comp.runtime_args(args))


def autocast(loss, device):
    """`train precision bf16`: the loss's forward pass under torch.autocast to bfloat16 (CUDA or CPU); its
    value comes back in float32, so gradients, Hessian-vector products, the solver's vectors and the
    meta-parameters stay float32 while the matrix products run in bfloat16."""
    def loss_bf16(params, metas, x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = loss(params, metas, x, y)
        return out.float()
    return loss_bf16


def auxiliary_metas(plan) -> tuple[str, ...]:
    """The meta-parameters an auxiliary block's weights (and end-task weight) depend on, through lets."""
    from mptc.compiler import ir
    from mptc.runtime.program import _inline, _nodes
    lets = {let.name: let.expr for let in plan.lets}
    found = set()
    for e in (plan.auxiliary.weights, plan.auxiliary.end_task_weight):
        found |= {n.name for n in _nodes(_inline(e, lets)) if isinstance(n, ir.MetaRef)}
    return tuple(m.name for m in plan.metas if m.name in found)


def encoder_modules(plan) -> list[str]:
    """Modules both stages use: the pre-trained representation (theta)."""
    ft_modules = set(_applied(plan.finetune.loss)) | set(_applied(plan.objective.expr))
    return [m for m in plan.pretrain.trains if m in ft_modules]


def _applied(e) -> list[str]:
    """Modules applied anywhere in an IR expression."""
    from mptc.compiler import ir
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
