"""`search(random, trials)`: the gradient-free baseline over the same meta-parameters.

Each trial draws every raw meta-parameter uniformly in [low, high] (clipped to its declared bounds;
trial 0 keeps the initial values, so the search never does worse on FT-val than plain pre-training),
runs the whole PT stage with the FT head trained online beside it, exactly as long as a meta run
(warmup + meta_steps * P PT steps) but with no meta-steps, and scores the result by the meta-objective
on `SCORE_BATCHES` batches of its data. The best trial's state is kept. A run of T trials costs about
T plain pre-training runs: what the hypergradient buys is this search at the price of one.
"""
from __future__ import annotations

import torch

SCORE_BATCHES = 8


def _draw(trainer, gen: torch.Generator, low: float, high: float) -> dict:
    bounds = {m.name: m.bounds for m in trainer.plan.metas}
    out = {}
    for name, t in trainer.prog.init_metas().items():
        lo, hi = bounds.get(name) or (low, high)        # a declared `in [lo, hi]` replaces the search range
        draw = lo + (hi - lo) * torch.rand(t.shape, generator=gen, dtype=t.dtype)
        out[name] = draw.to(t.device).requires_grad_()
    return out


def score(trainer, state) -> float:
    """The meta-objective averaged over SCORE_BATCHES batches of its data (lower is better)."""
    with torch.no_grad():
        losses = [trainer.loss_val(state.params, state.metas, *trainer.data.batch("objective"))
                  for _ in range(SCORE_BATCHES)]
    return float(torch.stack(losses).mean())


def search_baseline(trainer):
    """The `search` baseline of `evaluate ... against`: random search beside a hypergradient method, with
    the evaluation's `search_trials` trials (equal compute when it is the meta run's cost in PT runs) in
    the search estimator's default range."""
    from mptc.components.registry import ESTIMATORS
    defaults = {p.name: p.default for p in ESTIMATORS.get("search").params}
    return search(trainer, trainer.plan.evaluate.protocol.args["search_trials"], defaults["low"], defaults["high"])


def search(trainer, trials: int, low: float, high: float, on_trial=None):
    """The best of `trials` PT runs at random meta-parameters (module docstring); `on_trial(trial,
    score)` after each (a metrics line, the progress)."""
    from mptc.runtime.loop import meta_train
    seed = trainer.plan.train.seed
    gen = torch.Generator().manual_seed(seed)
    best, best_score = None, float("inf")
    for trial in range(trials):
        trainer.data.reseed(seed)                       # every trial sees the same batches
        state = trainer.init_state()
        metas = _draw(trainer, gen, low, high)
        if trial:
            state.metas = metas
        state = meta_train(trainer, state, mode="online")
        value = score(trainer, state)
        if on_trial:
            on_trial(trial, value)
        if value < best_score:
            best, best_score = state, value
    return best
