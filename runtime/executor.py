"""Runs a compiled plan end to end: build the data, the program and the trainer; meta-train (the loop in
runtime/loop.py, or an estimator that drives the run, such as `search`); write the run directory
(runtime/rundir.py); evaluate by the plan's protocol, reached through the PROTOCOLS registry; write the
summary (runtime/summary.py). Progress through every phase goes to stderr (runtime/progress.py).

    DIR/spec.mpt  ir.json  metrics.jsonl  meta.json  checkpoint.pt  diagnostics.json  eval.json  summary.txt
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch

from mptc.compiler import ir
from mptc.components.registry import PROTOCOLS
from mptc.errors import RunError
from mptc.runtime.artifacts import write_artifacts
from mptc.runtime.data import Data
from mptc.runtime.loop import MetaStep, State, Trainer, meta_train
from mptc.runtime.memory import keep_freed_memory
from mptc.runtime.metajson import meta_json, task_names
from mptc.runtime.parallel import join, leave, rank_seed
from mptc.runtime.program import Program, pick_device
from mptc.runtime.progress import Progress
from mptc.runtime.rundir import MetricsLog, default_out, private, staging, write_json


def run_plan(plan: ir.Plan, source: str, out=None, progress: bool | Progress = True, tensorboard=None,
             origin: tuple | None = None, resume: Path | None = None) -> Path | None:
    """Runs a plan end to end and returns its run directory, whose summary.txt holds the summary that
    `mptc run` prints. `progress`: True for progress on stderr (a bar on a terminal, else lines), False for
    none, or a Progress of the caller's. A non-finite result (a meta-parameter, the final PT loss or
    parameters, an evaluation metric) is a RunError and leaves no run directory.

    Under torchrun (runtime/parallel.py) every process runs this same function on its shard of every
    batch; rank 0 alone writes the run directory and reports progress, and the others return None."""
    world, device = join(pick_device(plan.train.device))
    if device.type == "cpu":
        keep_freed_memory()                             # a meta-step's buffers reused, not faulted in again
    try:
        if world.rank > 0:
            progress, tensorboard = False, None
        report = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
        out = Path(out) if out else default_out(plan.name)
        with contextlib.ExitStack() as folder:
            if world.rank > 0:                          # a throwaway folder (a resumed run's copied first)
                tmp = folder.enter_context(private(resume))
            world.same(None)                            # ... before rank 0 adopts the resumed run's folder
            if world.rank == 0:
                tmp = folder.enter_context(staging(out, resume))
            _run(plan, source, out, tmp, report, tensorboard, origin, resume, world, device)
    finally:
        leave(world)
    return out if world.rank == 0 else None


def _run(plan, source, out, tmp, report, tensorboard, origin, resume, world, device) -> None:
    """The run in its staging folder `tmp` (module docstring)."""
    if resume is None:
        (tmp / "spec.mpt").write_text(source)
        write_json(tmp / "ir.json", ir.to_json(plan))
        from mptc.runtime.checkpoint import write_origin
        spec_path, overrides = origin or (str(out / "spec.mpt"), ())
        write_origin(tmp, spec_path, source, overrides)     # what --resume compiles again
    torch.manual_seed(plan.train.seed)
    trainer = Trainer(plan, Program(plan, device), Data(plan, device))
    if world.size > 1:
        data_parallel(trainer, world)
    trainer.progress = report                       # the protocols' phases report through it
    protocol = PROTOCOLS.get(plan.evaluate.protocol.name).load() if plan.evaluate is not None else None
    if hasattr(protocol, "check"):                  # what it would refuse after the run, refused before it
        protocol.check(trainer, **plan.evaluate.protocol.args)
    method = "search" if trainer.pt.drives else "meta"
    state, train_s, last = train(trainer, tmp, report, tensorboard, resuming=resume is not None)
    tasks = _task_names(trainer)
    meta = meta_json(_check_trained(state, trainer.prog, last), tasks, trainer.prog.value_names())
    write_json(tmp / "meta.json", meta)
    torch.save({"params": {k: v.detach().cpu() for k, v in state.params.items()},
                "metas": {k: v.detach().cpu() for k, v in state.metas.items()}}, tmp / "checkpoint.pt")
    write_json(tmp / "diagnostics.json", diagnostics(trainer, state))
    write_artifacts(tmp, trainer, state)                # per-example weights of a weighting network
    found, eval_s = {}, 0.0
    if protocol is not None:                            # the protocol, through its registry entry
        start = time.perf_counter()
        found = protocol(trainer, method, state, train_s, plan.evaluate.baselines, **plan.evaluate.protocol.args)
        eval_s = time.perf_counter() - start
    from mptc.runtime.headlines import headlines
    found = {**found, **headlines(trainer, state)}     # the paper's figures, where the data knows them
    if found:
        write_json(tmp / "eval.json", found)
    for name in ("resume.pt", "resume.json"):          # finished: checkpoint.pt has the final state
        (tmp / name).unlink(missing_ok=True)
    write_summary(tmp, out, trainer, method, found, meta, tasks, _times(method, train_s, found, eval_s))


def parallel_refusal(plan, size: int) -> str | None:
    """Why `plan` cannot run on `size` processes, from the plan alone (None: it can): `mptc run --nproc`
    checks it before any process starts, and each process again (torchrun starts them without us). A
    batch that does not split into equal shards shows only with the data (runtime/data.py)."""
    from mptc.runtime.loop import build
    pt = build("estimator", next(e.method for e in plan.estimators if e.stage == "pretrain"))
    if pt.drives:
        return (f"several processes: estimator '{plan.estimators[0].method.name}' drives whole PT runs of its "
                "own; run it on one process")
    if plan.auxiliary is not None:
        return "several processes: auxiliary blocks (AANG) run on one process only"
    hb = getattr(pt, "hessian_batch", None)
    if hb is not None and hb % size:
        return f"several processes: hessian_batch {hb} does not split into {size} equal shards"
    return None


def data_parallel(trainer: Trainer, world) -> None:
    """The trainer of one process of several: its world, its shard of every batch, its own random streams
    (augmentation noise, torch's generator: `rank_seed`); what runs on one process only is a named error."""
    refusal = parallel_refusal(trainer.plan, world.size)
    if refusal is not None:
        raise RunError(refusal)
    trainer.world = world
    trainer.data.shard(world.rank, world.size)
    trainer.prog.rank = world.rank
    trainer.prog.reseed_noise()
    torch.manual_seed(rank_seed(trainer.plan.train.seed, world.rank))


def write_summary(tmp: Path, out: Path, trainer: Trainer, method: str, found: dict, meta: dict, tasks: list,
                  times: dict) -> None:
    """DIR/summary.txt (runtime/summary.py): the run's results, the learned meta-parameters against their
    initial values, the time split and the files."""
    from mptc.runtime.summary import summary_text
    start = meta_json(trainer.prog.meta_values(trainer.prog.init_metas()), tasks,   # the same on every call
                      trainer.prog.value_names())
    files = sorted({*os.listdir(tmp), "summary.txt"})
    text = summary_text(trainer.plan, method, found, meta, start, times, out, files)
    (tmp / "summary.txt").write_text(text, encoding="utf-8")


def _times(method: str, train_s: float, found: dict, eval_s: float) -> dict:
    """The time split: meta-training, each baseline's training (its `train_s`), the rest of evaluation."""
    from mptc.runtime.summary import methods
    baselines = {f"baseline {m}": e["train_s"] for m, e in methods(found).items() if m != method and "train_s" in e}
    rest = {"evaluation": max(eval_s - sum(baselines.values()), 0.0)} if eval_s else {}
    return {"meta-training": train_s, **baselines, **rest}


def _task_names(trainer: Trainer) -> list[str]:
    """The names of the PT data's tasks (the columns of its labels), for meta.json (runtime/metajson.py)."""
    ref = trainer.plan.pretrain.data
    y = trainer.data.splits(ref.dataset)[ref.split or "all"][1]
    return task_names(trainer.data.info(ref.dataset), y.shape[1] if y.dim() == 2 else 0)


def train(trainer: Trainer, tmp: Path, progress: Progress, tensorboard=None,
          resuming: bool = False) -> tuple[State | None, float, dict]:
    """(state, wall seconds, last metrics row): meta-training with metrics.jsonl and the progress (a bar,
    or a line every `log_every` meta-steps) as hooks, or the run of an estimator that drives it (`search`,
    one row a trial). With `train checkpoint_every N`, a checkpoint every N meta-steps; `resuming`
    continues from the staging folder's last one (runtime/checkpoint.py)."""
    from mptc.runtime import checkpoint
    plan, drives = trainer.plan, trainer.pt.drives
    total, unit = (trainer.pt.trials, "trial") if drives else (plan.train.meta_steps, "meta-step")
    start, every, metrics = time.perf_counter(), plan.train.checkpoint_every, tmp / "metrics.jsonl"
    state = None if drives else trainer.init_state()
    rows = checkpoint.load(tmp, trainer, state) if resuming and not drives else None
    if rows is not None:
        checkpoint.truncate_rows(metrics, rows)
        progress.say(f"resuming after meta-step {state.meta_step} (PT step {state.step})")
    progress.say(f"meta-training: {total} {unit}s" + ("" if drives else
                 f" of {plan.pretrain.steps} PT steps each, after {plan.train.warmup} warm-up steps"))
    with MetricsLog(metrics, tensorboard, rows or 0) as log, \
            progress.steps(total, unit, 1 if drives else plan.train.log_every) as bar:
        if drives:
            def on_trial(trial, score):
                log.log(trial=trial, ft_val_loss=score)
                bar(trial + 1, float("nan"), score)
            state = trainer.pt.train(trainer, on_trial)
        else:
            def hook(m: MetaStep, state: State):
                due = m.meta_step % plan.train.log_every == 0 or m.meta_step in (1, plan.train.meta_steps)
                if due or m.skipped:                    # a skipped meta-step is always logged
                    log.log(**metrics_row(m, state))
                if every and m.meta_step % every == 0 and m.meta_step < plan.train.meta_steps:
                    checkpoint.save(tmp, trainer, state, log.rows)
                bar(m.meta_step, m.pt_loss, m.ft_val_loss)
            state = meta_train(trainer, state, hook)
    elapsed = time.perf_counter() - start
    progress.say(f"meta-training: done in {elapsed:.1f} s")
    return state, elapsed, log.last


def metrics_row(m: MetaStep, state: State) -> dict:
    """One metrics.jsonl row: the meta-step's losses, hypergradient norm, solver diagnostics, timings
    and each scalar meta-parameter after the step."""
    row = {"step": m.step, "meta_step": m.meta_step, "pt_loss": m.pt_loss, "ft_val_loss": m.ft_val_loss,
           "hypergrad_norm": m.hypergrad_norm, "solver_iters": m.info["iters"],
           "solver_residual": m.info["residual"], "skipped": m.skipped, "elapsed_s": m.elapsed_s, "pt_s": m.pt_s,
           **_timings(m.info), **_scalars(state)}
    if "check_p_cosine" in m.info:
        row["check_p_cosine"] = m.info["check_p_cosine"]
    return row if m.check_cosine is None else {**row, "check_cosine": m.check_cosine}


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
    steps = prog.plan.train.meta_steps
    if steps and state.nonfinite >= steps:              # a run shorter than max_nonfinite that never moved
        raise RunError(f"non-finite hypergradient at every meta-step ({steps} of {steps}): the meta-parameters "
                       f"never moved, the run stopped")
    return values


def _finite(value: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(value.detach())
    if bad.any():
        first = value.detach().flatten()[bad.flatten()][0].item()
        raise RunError(f"{what} is not finite after meta-training ({int(bad.sum())} of {value.numel()} "
                       f"values, e.g. {first}): the run diverged or divides by zero")


