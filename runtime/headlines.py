"""The paper's headline figures, written into `DIR/eval.json` where the data knows the planted truth.

* `rotation_error_deg` — the `restarts` protocol, `evaluate restarts(inits: [...])` and a meta-objective on rotated data
  (`images.digits(rotate: 90, ...)`): meta-training is repeated from each initial value of the scalar
  meta-parameter (same data stream, model initialisation and augmentation noise each time) and the
  learned angle's distance to the data's rotation (modulo 360) is reported: mean, stderr, per init.
* `clean_over_noisy_weight` — when the PT data marks clean labels (`images.digits(corrupt: ...)`,
  `info["clean"]`) and a weighting network weighs the PT examples: its per-example weights
  (runtime/artifacts.py, the final parameters and meta-parameters), the mean over clean examples divided
  by the mean over corrupted ones.

    >>> _summary([1.0, 3.0])
    {'mean': 2.0, 'stderr': 1.0, 'values': [1.0, 3.0]}
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mptc.errors import RunError
from mptc.runtime.rundir import write_json

EVAL_BATCH = 512


def _summary(values: list[float]) -> dict:
    """Mean, stderr and the values; "degenerate" where several are one value (evaluate.summarize)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    out = {"mean": mean, "stderr": sd / math.sqrt(n), "values": values}
    return {**out, "degenerate": True} if n > 1 and len(set(values)) == 1 else out


def _scalar_meta(trainer, name: str | None) -> str:
    scalars = [m.name for m in trainer.plan.metas if m.kind == "scalar"]
    if name is None and len(scalars) == 1:
        return scalars[0]
    if name not in scalars:
        raise RunError(f"restarts: name one scalar meta-parameter with meta: ... (scalars: {', '.join(scalars)})")
    return name


def restarts(trainer, method: str, state, train_s: float, baselines: tuple, *, inits: list[float],
             meta: str | None = None) -> dict:
    """PROTOCOLS "restarts" (eval.json): meta-training repeated from each initial value of a scalar
    meta-parameter, each from `Trainer.fresh_start` (the same as the main run's, whatever ran before):
    {"restarts": {"meta", "inits", "finals", "paths"}} with each run's value after every meta-step, and
    `rotation_error_deg` where the meta-objective's data is rotated. It compares no baselines (the
    checker rejects `against` with it); the main run's state is the caller's."""
    from mptc.runtime.loop import meta_train
    from mptc.runtime.progress import progress_of
    name, seed, finals, paths = _scalar_meta(trainer, meta), trainer.plan.train.seed, [], []
    for i, init in enumerate(inits, 1):
        with progress_of(trainer).phase(f"restart {i}/{len(inits)}: {name} from {init:g}") as done:
            trainer.fresh_start(seed)
            start, path = trainer.init_state(), []
            start.metas[name] = torch.full_like(start.metas[name], init).requires_grad_()
            end = meta_train(trainer, start, lambda step, s: path.append(round(float(s.metas[name].detach()), 3)))
            finals.append(float(end.metas[name].detach()))
            paths.append(path)
            done(f"restart {i}/{len(inits)}: {name} from {init:g} ended at {finals[-1]:.4g}")
    found = {"meta": name, "inits": list(inits), "finals": finals, "paths": paths}
    target = trainer.data.info(trainer.plan.objective.data.dataset).get("rotation")
    return {"restarts": found, **({"rotation_error_deg": rotation_error(found, target)} if target else {})}


def rotation_error(found: dict, target: float) -> dict:
    """|learned - target| in degrees (modulo 360) per init, summarised."""
    errors = [abs((f - target + 180.0) % 360.0 - 180.0) for f in found["finals"]]
    return {**_summary(errors), "target": target, "inits": found["inits"], "learned": found["finals"]}


def clean_over_noisy(weights: torch.Tensor, clean: list[bool]) -> dict:
    from mptc.runtime.evaluate import auroc
    mask = torch.tensor(clean)
    c, n = float(weights[mask].mean()), float(weights[~mask].mean())
    score = auroc(mask.float()[:, None], weights.float()[:, None])
    return {"ratio": c / n if n > 0 else math.inf, "clean_mean": c, "noisy_mean": n,
            "clean_median": float(weights[mask].median()), "noisy_median": float(weights[~mask].median()),
            "auroc_clean": score, "clean": int(mask.sum()), "noisy": int((~mask).sum())}


def headlines(trainer, state) -> dict:
    """Every figure the plan and its data allow (module docstring)."""
    from mptc.runtime.artifacts import example_weights
    clean = trainer.data.info(trainer.plan.pretrain.data.dataset).get("clean")
    if clean is None or all(clean):
        return {}
    weights = example_weights(trainer.plan, trainer.prog, trainer.data, state.params, state.metas, rounded=False)
    for found in weights.values():                      # the first weighting network's per-example weights
        if "clean" in found:
            return {"clean_over_noisy_weight": clean_over_noisy(torch.tensor(found["values"]), clean)}
    return {}


def add_headlines(trainer, state, path: Path) -> None:
    """Merges `headlines` into the eval.json at `path` (written when there is anything to say)."""
    found = headlines(trainer, state)
    if not found:
        return
    before = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**before, **found})
