"""The paper's headline figures, written into `DIR/eval.json` where the data knows the planted truth.

* `rotation_error_deg` — with `evaluate restarts(inits: [...])` and a meta-objective on rotated data
  (`images.digits(rotate: 90, ...)`): meta-training is repeated from each initial value of the scalar
  meta-parameter (same data stream, model initialisation and augmentation noise each time) and the
  learned angle's distance to the data's rotation (modulo 360) is reported: mean, stderr, per init.
* `clean_over_noisy_weight` — when the PT data marks clean labels (`images.digits(corrupt: ...)`,
  `info["clean"]`) and the spec has a `let weight = ...`: that weight evaluated on every PT example
  (the final parameters and meta-parameters), the mean over clean examples divided by the mean over
  corrupted ones.

    >>> _summary([1.0, 3.0])
    {'mean': 2.0, 'stderr': 1.0, 'values': [1.0, 3.0]}
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mptc.errors import RunError
from mptc.runtime.program import Ctx
from mptc.runtime.rundir import write_json

EVAL_BATCH = 512


def _summary(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "stderr": sd / math.sqrt(n), "values": values}


def _scalar_meta(trainer, name: str | None) -> str:
    scalars = [m.name for m in trainer.plan.metas if m.kind == "scalar"]
    if name is None and len(scalars) == 1:
        return scalars[0]
    if name not in scalars:
        raise RunError(f"restarts: name one scalar meta-parameter with meta: ... (scalars: {', '.join(scalars)})")
    return name


def restarts(trainer, inits: list[float], meta: str | None = None) -> dict:
    """{"meta", "inits", "finals", "paths"}: meta-training repeated from each initial value of a scalar
    meta-parameter, each from `Trainer.fresh_start` (the same as the main run's, whatever ran before);
    `paths` holds each run's value after every meta-step."""
    from mptc.runtime.executor import meta_train
    name, seed, finals, paths = _scalar_meta(trainer, meta), trainer.plan.train.seed, [], []
    for init in inits:
        trainer.fresh_start(seed)
        state, path = trainer.init_state(), []
        state.metas[name] = torch.full_like(state.metas[name], init).requires_grad_()
        def record(*_):  # meta_train's progress callback, after each meta-step
            path.append(round(float(state.metas[name].detach()), 3))
        state = meta_train(trainer, state, None, bar=record)
        finals.append(float(state.metas[name].detach()))
        paths.append(path)
    return {"meta": name, "inits": list(inits), "finals": finals, "paths": paths}


def rotation_error(found: dict, target: float) -> dict:
    """|learned - target| in degrees (modulo 360) per init, summarised."""
    errors = [abs((f - target + 180.0) % 360.0 - 180.0) for f in found["finals"]]
    return {**_summary(errors), "target": target, "inits": found["inits"], "learned": found["finals"]}


def example_weights(trainer, state, dataset: str) -> torch.Tensor:
    """The `weight` let on every example of `dataset` (split all), one number per example."""
    x, y = trainer.data.splits(dataset)["all"]
    let, out = trainer.prog.lets["weight"], []
    with torch.no_grad():
        for i in range(0, len(x), EVAL_BATCH):
            w = let(Ctx(state.params, state.metas, x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]))
            w = torch.as_tensor(w).expand(len(x[i:i + EVAL_BATCH]), *torch.as_tensor(w).shape[1:])
            out.append(w.reshape(len(w), -1).mean(1).double().cpu())
    return torch.cat(out)


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
    plan, out = trainer.plan, {}
    ev = plan.evaluate
    if ev is not None and ev.protocol.name == "restarts":
        found = restarts(trainer, ev.protocol.args["inits"], ev.protocol.args.get("meta"))
        target = trainer.data.info(plan.objective.data.dataset).get("rotation")
        out["restarts"] = found
        if target:
            out["rotation_error_deg"] = rotation_error(found, target)
    clean = trainer.data.info(plan.pretrain.data.dataset).get("clean")
    if clean is not None and not all(clean) and "weight" in trainer.prog.lets:
        out["clean_over_noisy_weight"] = clean_over_noisy(example_weights(trainer, state, plan.pretrain.data.dataset),
                                                          clean)
    return out


def add_headlines(trainer, state, path: Path) -> None:
    """Merges `headlines` into the eval.json at `path` (written when there is anything to say)."""
    found = headlines(trainer, state)
    if not found:
        return
    before = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**before, **found})
