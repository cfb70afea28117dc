"""Is there room for task weighting on the synthetic graph benchmark? Oracle PT task weights against the
uniform weights of supervised PT, under the graph study's own protocol.

For each seed S, the spec (default `specs/paper/ppi_full_access.mpt`) runs with train.seed, data.pt.seed
and data.ft.seed (and, for partial access, the held-out fold) set as `mptc compare --seeds` sets them,
its task weights replaced by the oracle: 200/R on the R planted related PT tasks (`info["relevant"]` of
the PT data), 0 elsewhere (the same mean weight, 1, as supervised PT). The `pretrain` baseline then
*is* oracle-weighted PT with the study's PT budget, evaluated by the spec's own `evaluate` protocol.
The spec as written (evaluated against `pretrain` only) gives the uniform and meta arms of the same
seed, so the table is paired: how far above uniform PT the planted structure lets weighting go, and
how much of that meta-learning gets.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/oracle_graphs.py --seeds 5
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from mptc.commands import default_vary, seed_overrides
from mptc.compiler.lower import compile_spec
from mptc.runtime.evaluate import summarize
from mptc.runtime.executor import run_plan
from mptc.components.registry import DATASETS


def oracle_text(text: str, relevant: list[bool]) -> str:
    """The spec with `let task_weight = ...` replaced by the oracle weights and only `pretrain` to evaluate.

        >>> oracle_text("let task_weight = 2 * sigmoid(w)\\nevaluate finetune() against no_pretrain, pretrain",
        ...             [True, False])
        'let task_weight = 0 * w + [2.0, 0.0]\\nevaluate finetune() against pretrain'
    """
    scale = len(relevant) / sum(relevant)
    weights = ", ".join(str(scale if r else 0.0) for r in relevant)
    text = re.sub(r"let task_weight = .*", f"let task_weight = 0 * w + [{weights}]", text)
    return re.sub(r"against .*", "against pretrain", text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", default="specs/paper/ppi_full_access.mpt")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    text, start, rows = Path(args.spec).read_text(), time.time(), []
    vary = default_vary(compile_spec(text, args.spec))         # what `mptc compare --seeds` varies
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            sets = seed_overrides(vary, seed)
            plan = compile_spec(text, args.spec, sets)
            pt = next(d for d in plan.datasets if d.name == plan.pretrain.data.dataset)
            relevant = DATASETS.get(pt.source.name).load()(**pt.source.args).info["relevant"]
            row = {}
            for arm, spec_text in (("uniform", re.sub(r"against .*", "against pretrain", text)),
                                   ("oracle", oracle_text(text, relevant))):
                run = run_plan(compile_spec(spec_text, args.spec, sets), spec_text, Path(tmp) / f"{arm}-{seed}",
                               progress=False)
                found = json.loads((run / "eval.json").read_text())
                row[arm] = found["pretrain"]["mean"]
                row.setdefault("meta", found["meta"]["mean"])       # the uniform run's meta arm
            rows.append(row)
            print(f"seed {seed} ({' '.join(sets)}): " + "  ".join(f"{k} {v:.4f}" for k, v in row.items())
                  + f"  ({sum(relevant)} of {len(relevant)} PT tasks related)", flush=True)
    for arm in ("oracle", "uniform", "meta"):
        s = summarize([100 * r[arm] for r in rows])
        print(f"| {arm} | {s['mean']:.2f} +- {s['stderr']:.2f} |")
    for a, b in (("oracle", "uniform"), ("meta", "uniform")):
        s = summarize([100 * (r[a] - r[b]) for r in rows])
        wins = sum(r[a] > r[b] for r in rows)
        print(f"| {a} - {b} (paired) | {s['mean']:+.2f} +- {s['stderr']:.2f}, {a} ahead {wins}/{len(rows)} |")
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
