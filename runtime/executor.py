"""Executes an IR plan: Algorithm 1 of Raghu et al. (2021), online as in the published code.

Every PT step updates the PT parameters; between meta-steps the FT head trains online on detached
features; every P PT steps (after `warmup` PT steps) a meta-step unrolls the FT head K steps, measures
the meta-objective, passes its gradient through the PT stage by IFT, and steps the meta-parameters.
With `train reset_every R` the run is a sequence of cycles of R meta-steps, each from new initial
parameters (`schedule`, `Trainer.reset`).
"""
from __future__ import annotations

import collections
import json
import math
import time
from pathlib import Path

import attrs
import torch

from mptc.compiler import ir
from mptc.errors import RunError
from mptc.runtime import optim
from mptc.runtime.optim import clone_state
from mptc.runtime.data import Data
from mptc.runtime.estimators import ift, pt_loss_of, timed, unroll_ft, unroll_pt
from mptc.runtime.hvp import fastest, power_iteration
from mptc.runtime.program import Program, pick_device
from mptc.components.registry import SOLVERS
from mptc.runtime.artifacts import write_artifacts
from mptc.runtime.rundir import MetricsLog, default_out, staging, write_json



@attrs.define
class State:
    """Everything the outer loop updates: parameters, meta-parameters and optimizer states."""

    params: dict
    metas: dict
    pt_opt: object
    ft_opt: object
    meta_opt: object


class Trainer:
    """One plan's stages as functions of a State (the loop in `meta_train` owns the order)."""

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
        self.estimator = {e.stage: e.method for e in plan.estimators}["pretrain"]
        self._configure_pt_estimator(self.estimator.args)

    def _configure_pt_estimator(self, args: dict) -> None:
        """The PT estimator's options, solver and solver arguments (`scale: auto` is resolved per meta-step)."""
        self.hessian = args.get("hessian", "all")
        self.hvp_mode, self.hessian_batch = args.get("hvp", "reverse-over-reverse"), args.get("hessian_batch")
        self.fused, self.kept = bool(args.get("fused")), None
        solver = args.get("solver") or ir.Component("identity", {})
        self.solver = SOLVERS.get(solver.name).load()
        self.solver_args = {k: v for k, v in solver.args.items() if v is not None}
        if solver.name == "neumann":                   # the published default: alpha = the PT learning rate
            self.solver_args.setdefault("scale", self.plan.pretrain.optimizer.args["lr"])
        self.auto_scale = self.solver_args.get("scale") == "auto"
        for option in ("rescale_every", "power_iters") + (("scale",) if self.auto_scale else ()):
            self.solver_args.pop(option, None)          # read by `_scale`, not by the solver
        self.lam_max, self.meta_step_no, self.window = None, 0, None
        self.recent = collections.deque(maxlen=args.get("mixed_batches") or 1)  # the last PT batches
        self.mixed_mode = args.get("mixed_mode") or "reverse-over-reverse"

    def fresh_start(self, seed: int) -> None:
        """Back to where a run starts: batch streams, augmentation noise and torch's generator reseeded,
        the PT estimator's running state (`scale: auto`'s lambda_max and meta-step count, the `unroll`
        window) forgotten, so a restart never sees what an earlier run left behind."""
        self.data.reseed(seed)
        self.prog.reseed_noise(seed)
        torch.manual_seed(seed)
        self._configure_pt_estimator(self.estimator.args)

    def encoder_modules(self) -> list[str]:
        """Modules both stages use: the pre-trained representation (theta)."""
        ft_modules = set(_applied(self.plan.finetune.loss)) | set(_applied(self.plan.objective.expr))
        return [m for m in self.plan.pretrain.trains if m in ft_modules]

    def reset(self, state: State, cycle: int) -> None:
        """`train reset_every`: the PT model and the FT head start again from new initial values (drawn
        from the run's seed and the cycle's number) with their optimizers' states anew; the
        meta-parameters and the meta-optimizer carry on."""
        fresh = self.init_state(self.prog.draw_params(1_000_003 * (self.plan.train.seed + 1) + cycle))
        state.params, state.pt_opt, state.ft_opt = fresh.params, fresh.pt_opt, fresh.ft_opt

    def init_state(self, params: dict | None = None) -> State:
        """The state a run starts from: `params` (default: the modules' initial values), the
        meta-parameters' initial values and every optimizer's initial state."""
        params, metas = params or self.prog.init_params(), self.prog.init_metas()
        return State(params, metas, self.pt_opt.init(self._sel(params, self.pt_keys)),
                     self.ft_opt.init(self._sel(params, self.online_keys)), self.meta_opt.init(list(metas.values())))

    @staticmethod
    def _sel(params, keys):
        return [params[k] for k in keys]

    def _apply(self, state: State, keys, opt, opt_state, grads, fresh: bool = False):
        """An optimizer step in place (fused kernels). `fresh` first gives the parameters new storage, so
        the tensors a kept graph holds (the fused schedule's theta_{P-1}) keep their values."""
        if fresh:
            state.params.update({k: state.params[k].detach().clone().requires_grad_() for k in keys})
        return opt.step_(self._sel(state.params, keys), list(grads), opt_state)

    def pt_step(self, state: State, batch, keep: bool = False) -> float:
        """One PT step at fixed meta-parameters. `keep` (the fused schedule, last step before a meta-step)
        keeps the step's gradient differentiable in theta and phi for the hypergradient to reuse."""
        metas = state.metas if keep else {n: t.detach() for n, t in state.metas.items()}
        loss = self.loss_pt(state.params, metas, *batch)
        grads = torch.autograd.grad(loss, self._sel(state.params, self.pt_keys), create_graph=keep)
        if keep:
            self.kept = (dict(state.params), grads)     # the point theta_{P-1} and dL_PT/dtheta there
        if self.window is not None:                     # a step the PT `unroll` replays: the replay's arithmetic
            state.pt_opt = self._replayable_step(state, grads)
            return loss.detach()
        state.pt_opt = self._apply(state, self.pt_keys, self.pt_opt, state.pt_opt, [g.detach() for g in grads],
                                   fresh=keep)
        return loss.detach()

    @torch.no_grad()
    def _replayable_step(self, state: State, grads):
        """The PT step by the optimizer's pure `update`, the form `unroll_pt` differentiates, instead of the
        fused in-place kernels (equal to 1e-12, not to the bit): the replay of the window then reaches
        exactly the theta_P the loop reached, and its hypergradient is that of the loop's own window."""
        new, opt_state = self.pt_opt.update(self._sel(state.params, self.pt_keys), list(grads), state.pt_opt)
        for k, t in zip(self.pt_keys, new):
            state.params[k].copy_(t)
        return opt_state

    def ft_online_step(self, state: State, batch) -> None:
        """One FT step on the FT head alone (the modules `unroll K update ...` names that pre-training does
        not train), features detached: the encoder is trained by PT only, whatever `update` says, so the
        PT `unroll` replay of a window reproduces the loop's theta_P."""
        view = {k: (t if k in self.online_keys else t.detach()) for k, t in state.params.items()}
        loss = self.loss_ft(view, state.metas, *batch)
        grads = torch.autograd.grad(loss, self._sel(view, self.online_keys))
        state.ft_opt = self._apply(state, self.online_keys, self.ft_opt, state.ft_opt, grads)

    # ---- the PT window the exact `unroll` estimator replays --------------------------------------
    def open_window(self, state: State) -> None:
        """Snapshot theta and the PT optimizer state at the start of a P-step window (PT `unroll` only);
        the window closes when the meta-step's hypergradient has replayed it."""
        if self.estimator.name == "unroll":
            self.window = ({k: t.detach().clone() for k, t in state.params.items()}, clone_state(state.pt_opt), [])

    def record(self, batch) -> None:
        """Keep a PT batch for the estimator: the `unroll` window, the IFT mixed term's last N batches."""
        if self.window is not None:
            self.window[2].append(batch)
        if self.recent.maxlen > 1:
            self.recent.append(batch)

    # ---- the hypergradient ---------------------------------------------------------------------------
    def hypergradient(self, state: State, pt_batch, ft_batches, val_batch):
        """(L_val, {meta: dL_val/dphi}, info): FT unroll, then the PT stage's estimator."""
        self.meta_step_no += 1
        v_out, t_ft = timed(self.ft_unroll, state, ft_batches, val_batch)
        l_val, v, direct = v_out
        hg, info = self.through_pt(state, pt_batch, v)
        self.last, self.kept = (pt_batch, v, direct), None  # what `check` compares against; no graph kept
        self.window = None                              # replayed: steps until the next window are not recorded
        return l_val, {n: hg[n] + direct[n] for n in hg}, {**info, "ft_unroll_s": t_ft}

    def ft_unroll(self, state: State, ft_batches, val_batch):
        """(L_val, v = dL_val/dtheta_PT, direct dL_val/dphi) through K FT steps from the online FT state."""
        ft_state = self.ft_opt.init(self._sel(state.params, self.ft_keys))
        return unroll_ft(self.loss_ft, self.loss_val, state.params, state.metas, self.ft_keys, self.ft_opt,
                         ft_state, self.plan.finetune.unroll, ft_batches, val_batch, wrt=self.pt_keys)

    def through_pt(self, state: State, pt_batch, v, reference: bool = False):
        """({meta: v^T dtheta_PT/dphi}, info) by the plan's PT estimator, or with `reference` by the `check`
        reference whatever the estimator: IFT with CG to tolerance on the same batch and state."""
        if self.estimator.name == "unroll" and not reference:
            if self.window is None:
                raise RunError("pretrain: unroll has no window to replay (open_window at the window's start)")
            params0, opt0, batches = self.window
            return unroll_pt(self.loss_pt, params0, state.metas, self.pt_keys, self.pt_opt, opt0, batches, v)
        keys = self.shared if self.hessian == "encoder" else self.pt_keys
        params, g = state.params, None
        if self.fused and not reference:                # H and the mixed term at theta_{P-1}, from the PT step
            params, grads = self.kept
            g = [grads[self.pt_keys.index(k)] for k in keys]
        if self.hvp_mode == "auto":                     # resolved once, on the first meta-step's state
            self.hvp_mode = fastest(pt_loss_of(self.loss_pt, state.params, state.metas, pt_batch, keys),
                                    self._sel(state.params, keys), self._ones(state, keys))
        solver, args, prepare = self.solver, self.solver_args, self._scale if self.auto_scale else None
        if reference:                                   # CG to tolerance on the whole batch, exact products
            solver, args, prepare = SOLVERS.get("cg").load(), {"iters": 200, "tol": 1e-8}, None
        more = [b for b in self.recent if b is not pt_batch]   # the mixed term's other PT batches
        return ift(self.loss_pt, params, state.metas, pt_batch, v, self.pt_keys, solver, args,
                   hessian_keys=keys, hvp="reverse-over-reverse" if reference else self.hvp_mode,
                   hessian_batch=None if reference else self.hessian_batch, prepare=prepare, g=g, more=more,
                   mixed_mode="reverse-over-reverse" if reference else self.mixed_mode,
                   weight_decay=self.pt_opt.weight_decay)  # H + lambda I: the decayed PT step's fixed point

    @staticmethod
    def _ones(state: State, keys):
        return [torch.ones_like(state.params[k]) for k in keys]

    def _scale(self, hvp, like) -> dict:
        """Neumann `scale: auto`: alpha = 1/lambda_max(H) by power iteration, re-estimated every N meta-steps."""
        args = self.estimator.args["solver"].args
        if self.lam_max is None or (self.meta_step_no - 1) % args["rescale_every"] == 0:
            self.lam_max = max(power_iteration(hvp, like, args["power_iters"], seed=self.meta_step_no), 1e-12)
        return {"scale": 1.0 / self.lam_max, "lambda_max": self.lam_max}

    def check(self, state: State, hg: dict) -> float:
        """Cosine of the estimate `hg` to a reference (IFT with CG to tolerance) on the same batches and state."""
        pt_batch, v, direct = self.last
        ref, _ = self.through_pt(state, pt_batch, v, reference=True)
        a = torch.cat([hg[n].flatten() for n in ref]).double()
        b = torch.cat([(ref[n] + direct[n]).flatten() for n in ref]).double()
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))

    def meta_step(self, state: State, hg: dict) -> None:
        names = list(state.metas)
        with torch.no_grad():
            new, state.meta_opt = self.meta_opt.update([state.metas[n] for n in names],
                                                       [hg[n] for n in names], state.meta_opt)
        bounds = {m.name: m.bounds for m in self.plan.metas}
        state.metas = {n: _clamp(t, bounds.get(n)).detach().requires_grad_() for n, t in zip(names, new)}


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
    again: a new cycle.

        >>> ["R" * r + "o" * o + str(m or "") or "." for r, o, m in schedule(1, 2, 3, reset_every=2)]
        ['.', 'o', '1', 'o', '2', 'R', 'o', '3']
    """
    done = 0
    while done < meta_steps:
        cycle = min(reset_every or meta_steps, meta_steps - done)
        steps = [(False, 0)] * warmup + [(i == 0, m if i == P - 1 else 0)
                                         for m in range(done + 1, done + cycle + 1) for i in range(P)]
        for j, (opens, m) in enumerate(steps):
            yield done > 0 and j == 0, opens, m
        done += cycle


def meta_train(trainer: Trainer, state: State, log: MetricsLog | None, bar=None, mode: str = "meta") -> State:
    """The outer loop: PT steps, FT online steps and, every P steps, a meta-step.

    `mode` "pretrain" runs the PT steps alone, "online" adds the online FT head, "meta" everything
    (and, with `train reset_every`, the resets: the other modes run the same number of steps as a
    meta run without them)."""
    meta = mode == "meta"
    plan, data = trainer.plan, trainer.data
    K, check_every, max_nonfinite = plan.finetune.unroll, plan.hg_check_every, plan.train.max_nonfinite
    steps = schedule(plan.train.warmup, plan.pretrain.steps, plan.train.meta_steps,
                     plan.train.reset_every if meta else 0)
    t0, t_pt, nonfinite, pt_losses, cycle = time.perf_counter(), 0.0, 0, [], 0
    for step, (reset, opens, meta_step) in enumerate(steps, 1):
        # ---- PT step (meta-parameters fixed) ---------------------------------------------------
        ts = time.perf_counter()
        if reset:
            cycle += 1
            trainer.reset(state, cycle)                 # a new cycle: theta, psi and their optimizers anew
        if meta and opens:
            trainer.open_window(state)                  # the exact PT `unroll` replays this window
        pt_batch = data.batch("pretrain")
        trainer.record(pt_batch)
        last = meta and meta_step > 0                   # a meta-step follows this PT step
        pt_losses.append(trainer.pt_step(state, pt_batch, keep=last and trainer.fused))
        t_pt += time.perf_counter() - ts
        if mode == "pretrain":
            continue
        # ---- FT head, online, on detached features ---------------------------------------------
        trainer.ft_online_step(state, data.batch("finetune"))
        if not last:
            continue
        # ---- FT unroll + meta-objective + hypergradient through the PT stage ---------------------
        ft_batches = [data.batch("finetune") for _ in range(K)]
        l_val, hg, info = trainer.hypergradient(state, pt_batch, ft_batches, data.batch("objective"))
        norm = _norm(hg)
        extra = {}
        if check_every and meta_step % check_every == 0:
            extra["check_cosine"] = trainer.check(state, hg)
        # ---- meta-step (skipped on a non-finite hypergradient) ---------------------------------
        if not math.isfinite(norm) or not math.isfinite(float(l_val)):
            nonfinite += 1
            if nonfinite >= max_nonfinite:
                raise RunError(f"non-finite hypergradient at meta-step {meta_step} "
                               f"({nonfinite} in a row): the run stopped")
        else:
            nonfinite = 0
            trainer.meta_step(state, hg)
        # ---- log -----------------------------------------------------------------------------------
        pt_loss = float(torch.stack(pt_losses).mean())
        due = meta_step % plan.train.log_every == 0 or meta_step in (1, plan.train.meta_steps)
        if log and (due or nonfinite):                  # a skipped meta-step is always logged
            log.log(step=step, meta_step=meta_step, pt_loss=pt_loss, ft_val_loss=float(l_val),
                    hypergrad_norm=norm, solver_iters=info["iters"], solver_residual=info["residual"],
                    skipped=nonfinite > 0, elapsed_s=round(time.perf_counter() - t0, 4),
                    pt_s=round(t_pt, 6), **_timings(info), **_scalars(state), **extra)
        pt_losses, t_pt = [], 0.0
        if bar:
            bar(meta_step, pt_loss, float(l_val))
    return state


def _scalars(state: State) -> dict:
    """Each scalar meta-parameter's value after the meta-step, as `meta.NAME` (a learned angle or
    temperature, followed as it moves)."""
    return {f"meta.{n}": float(t.detach()) for n, t in state.metas.items() if t.numel() == 1}


def _timings(info: dict) -> dict:
    """The estimator's time split and, for Neumann `scale: auto`, the power-iteration estimate of
    lambda_max(H) (of H + lambda I with weight decay) and the scale alpha = 1/lambda_max it gave."""
    out = {k: round(v, 6) for k, v in info.items() if k.endswith("_s")}
    if "lambda_max" in info:
        out["neumann_alpha"] = info["scale"]
        out["lambda_max"] = info["lambda_max"]
    return out


def plain_pretrain(trainer: Trainer) -> State:
    """The `pretrain` baseline: the same PT steps with the meta-parameters fixed at their initial values."""
    return meta_train(trainer, trainer.init_state(), None, mode="pretrain")


def no_pretrain(trainer: Trainer) -> State:
    """The `no_pretrain` baseline: the encoder at its initialisation."""
    return trainer.init_state()


# ---- the run ---------------------------------------------------------------------------------------
def _progress(total: int, enabled: bool, unit: str = "meta-step"):
    """A rich progress bar: meta-step (or trial), PT loss, FT-val loss and meta-steps per second."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn(unit), MofNCompleteColumn(), BarColumn(),
                        TextColumn("pt {task.fields[pt]:.4f}  ft-val {task.fields[val]:.4f}  "
                                   f"{{task.fields[rate]:.1f}} {unit}s/s"), TimeElapsedColumn(),
                        disable=not enabled, transient=False)
    task = progress.add_task("meta", total=total, pt=float("nan"), val=float("nan"), rate=0.0)
    t0 = time.perf_counter()

    def update(m, pt, val):
        progress.update(task, completed=m, pt=pt, val=val, rate=m / max(time.perf_counter() - t0, 1e-9))
    return progress, update


def _module_state(prog: Program, params: dict, module: str):
    return {k: params[full].detach().clone() for k, full in prog.keys[module]}


def _encoder(trainer: Trainer, state: State) -> torch.nn.Module:
    import copy
    names = trainer.encoder_modules()
    if len(names) != 1:
        raise RunError(f"evaluation needs exactly one module shared by pretrain and finetune, found {names}")
    module = copy.deepcopy(trainer.prog.modules[names[0]])
    # run state holds parameters only; buffers (batch-norm running stats) are re-estimated by evaluation
    missing = module.load_state_dict(_module_state(trainer.prog, state.params, names[0]), strict=False).missing_keys
    if set(missing) - {n for n, _ in module.named_buffers()}:
        raise RunError(f"evaluation: the run state lacks parameters {sorted(missing)}")
    return module


def evaluate(trainer: Trainer, states: dict) -> dict:
    """The evaluation protocol over seeds for each method: {"method": {"metric", "mean", "stderr", "seeds"}}."""
    from mptc.runtime.evaluate import finetune_evaluate, summarize
    ev = trainer.plan.evaluate
    args = dict(ev.protocol.args)
    seeds = args.pop("seeds")
    splits = trainer.data.splits(trainer.plan.objective.data.dataset)
    if args.pop("tasks", "seen") == "heldout":  # partial FT access: the tasks meta-training never saw
        from mptc.runtime.data import heldout_splits
        splits = heldout_splits(splits, trainer.plan.objective.data.dataset)
    sizes = args.pop("labels", None)
    args.pop("search_trials", None)                       # the `search` baseline's, not fine-tuning's
    counts = sizes or [None]                              # None: the whole train split
    out = {}
    for method, state in states.items():
        encoder = _encoder(trainer, state)
        by_size = {}
        for n in counts:
            values = [finetune_evaluate(encoder, labelled(splits, n, s), seed=s, **args) for s in range(seeds)]
            by_size[n] = {**summarize(values), "values": values}
        out[method] = {"metric": args["metric"], **by_size[counts[0]]}
        if sizes:
            out[method]["by_labels"] = {str(n): r for n, r in by_size.items()}
    return out


def labels_table(results: dict) -> dict:
    """`{"<metric>_by_labels": {"100": {"meta": {mean, stderr, seeds}, ...}, ...}}` when the evaluation ran
    at several label counts (`finetune(labels: ...)`), else {}: the paper's table, one row per size.

        >>> r = {"meta": {"metric": "auroc", "by_labels": {"100": {"mean": 0.7, "stderr": 0.01, "seeds": 3}}}}
        >>> labels_table(r)
        {'auroc_by_labels': {'100': {'meta': {'mean': 0.7, 'stderr': 0.01, 'seeds': 3}}}}
    """
    rows: dict = {}
    for method, r in results.items():
        for n, cell in r.get("by_labels", {}).items():
            rows.setdefault(n, {})[method] = {k: cell[k] for k in ("mean", "stderr", "seeds")}
    return {f"{next(iter(results.values()))['metric']}_by_labels": rows} if rows else {}


def labelled(splits: dict, n: int | None, seed: int) -> dict:
    """The splits with "train" cut to n examples, a random subset drawn from `seed` (all when n is None)."""
    if n is None:
        return splits
    x, y = splits["train"]
    if n > len(x):
        raise RunError(f"evaluate finetune(labels: ...): {n} labelled examples asked, the FT train split has {len(x)}")
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].to(x.device)
    return {**splits, "train": (x[keep], y[keep])}


def diagnostics(trainer: Trainer, state: State) -> dict:
    """Weights against the planted relevant set, where the PT data knows it (synthetic benchmarks): each
    weight vector's AUROC as a classifier of it, and per weight vector the planted truth `mptc report`
    colours by: `planted` (1 relevant, 0 not) and, where the data names the kinds, `planted_kind`."""
    from mptc.runtime.evaluate import auroc
    info = trainer.data.info(trainer.plan.pretrain.data.dataset)
    relevant, kinds = info.get("relevant"), info.get("kind")
    if relevant is None:
        return {}
    out, planted, planted_kind = {}, {}, {}
    for name, value in trainer.prog.meta_values(state.metas).items():
        if value.dim() != 1 or value.numel() != len(relevant):
            continue
        planted[name] = [int(bool(r)) for r in relevant]
        if kinds is not None and len(kinds) == len(relevant):
            planted_kind[name] = list(kinds)
        if len(set(relevant)) == 2:
            y = torch.tensor(relevant, dtype=torch.float32)[:, None]
            out[f"{name}_vs_relevant_auroc"] = auroc(y, value.float().cpu()[:, None])
    return {**out, **({"planted": planted} if planted else {}),
            **({"planted_kind": planted_kind} if planted_kind else {})}


def _to_list(t: torch.Tensor):
    return t.cpu().tolist()


def run_plan(plan: ir.Plan, source: str, out=None, progress: bool = True) -> Path:
    """Runs a plan end to end and returns its run directory. A non-finite result (a meta-parameter, the
    final PT loss or parameters, an evaluation metric) is a RunError and leaves no run directory."""
    from mptc.compiler.ir import to_json
    out = Path(out) if out else default_out(plan.name)
    with staging(out) as tmp:
        (tmp / "spec.mpt").write_text(source)
        write_json(tmp / "ir.json", to_json(plan))
        device = pick_device(plan.train.device)
        torch.manual_seed(plan.train.seed)
        data = Data(plan, device)
        prog = Program(plan, device)
        trainer = Trainer(plan, prog, data)
        log = MetricsLog(tmp / "metrics.jsonl")
        search = trainer.estimator.name == "search"
        bar_ctx, bar = _progress(trainer.estimator.args["trials"] if search else plan.train.meta_steps,
                                 progress, "trial" if search else "meta-step")
        t_run = time.perf_counter()
        try:
            with bar_ctx:
                if search:
                    from mptc.runtime.search import random_search
                    state = random_search(trainer, log, bar)
                else:
                    state = meta_train(trainer, trainer.init_state(), log, bar)
        finally:
            log.close()
        train_s = {"search" if search else "meta": time.perf_counter() - t_run}   # wall time, for compare
        metas = {n: _to_list(v) for n, v in _check_trained(state, prog, log.last).items()}
        write_json(tmp / "meta.json", metas)
        torch.save({"params": {k: v.detach().cpu() for k, v in state.params.items()},
                    "metas": {k: v.detach().cpu() for k, v in state.metas.items()}}, tmp / "checkpoint.pt")
        write_json(tmp / "diagnostics.json", diagnostics(trainer, state))
        write_artifacts(tmp, trainer, state)                # per-example weights of a weighting network
        if plan.evaluate is not None and plan.evaluate.protocol.name == "finetune":
            states = {"search" if search else "meta": state}
            for name in plan.evaluate.baselines:
                data.reseed(plan.train.seed)
                torch.manual_seed(plan.train.seed)
                from mptc.components.registry import BASELINES
                t_run = time.perf_counter()
                states[name] = BASELINES.get(name).load()(trainer)
                train_s[name] = time.perf_counter() - t_run
            results = _check_evaluation(evaluate(trainer, states))
            write_json(tmp / "eval.json", {**{m: {**r, "train_s": round(train_s[m], 3)} for m, r in results.items()},
                                           **labels_table(results)})
        from mptc.runtime.headlines import add_headlines
        add_headlines(trainer, state, tmp / "eval.json")    # the paper's figures, where the data knows them
    return out


# ---- the end-of-run checks: a non-finite result stops the run with one named line ----------------------
def _check_trained(state: State | None, prog: Program, last: dict) -> dict:
    """The meta-parameters' values (meta.json), after checking that meta-training left finite ones, a
    finite final PT loss and finite parameters; `last` is the last metrics.jsonl row as logged."""
    if state is None:                                   # `search`: no trial had a finite meta-objective
        raise RunError("search: every trial's meta-objective was non-finite (nan or inf): no result")
    values = prog.meta_values(state.metas)
    for name, value in {**state.metas, **values}.items():   # raw (a network's weights too) and transformed
        _finite(value, f"meta-parameter '{name}'")
    if "pt_loss" in last and not math.isfinite(last["pt_loss"]):
        raise RunError(f"the PT loss is {last['pt_loss']} at the end of meta-training "
                       f"(meta-step {last.get('meta_step', '?')}): the run diverged")
    for key, value in state.params.items():
        _finite(value, f"parameter '{key}'")
    return values


def _finite(value: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(value.detach())
    if bad.any():
        first = value.detach().flatten()[bad.flatten()][0].item()
        raise RunError(f"{what} is not finite after meta-training ({int(bad.sum())} of {value.numel()} "
                       f"values, e.g. {first}): the run diverged or divides by zero")


def _check_evaluation(results: dict) -> dict:
    """`results`, after checking every method's metric at every seed is finite."""
    for method, r in results.items():
        cells = {None: r, **r.get("by_labels", {})}
        for n, cell in cells.items():
            bad = [s for s, v in enumerate(cell["values"]) if not math.isfinite(v)]
            if bad:
                at = f" with {n} labels" if n is not None else ""
                raise RunError(f"evaluation: the {r['metric']} of '{method}'{at} is not finite at seed"
                               f"{'s' * (len(bad) > 1)} {', '.join(map(str, bad))} "
                               f"({cell['values'][bad[0]]}): its encoder gives non-finite features, or "
                               "no test task has both classes")
    return results
