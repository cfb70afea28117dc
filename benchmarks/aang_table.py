"""AANG's Table 2 on the offline docstrings task (specs/paper/aang_td.mpt): every method at two label
budgets over several seeds, one printed markdown report (mean +- stderr, paired differences, the learned
weight of each stage primitive, wall time per method, the meta-step / static-step time ratio).

Seed S sets `train.seed=S` (initialisation, batches, the objectives sampled) and `data.task.seed=S` (which
labelled examples a budget keeps); every method of one seed shares them, so the differences are paired.
Each run evaluates one fine-tuning seed (`evaluate.seeds=1`): the spread is over whole runs. `--jobs 2`
runs two at a time, one torch thread each (the recorded table: 2 CPU cores).

    .venv/bin/python benchmarks/aang_table.py --seeds 5 --labels 200 1000 --jobs 2  # the recorded table
    .venv/bin/python benchmarks/aang_table.py --quick                              # a smoke test (~1 min)
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import statistics
import time
from pathlib import Path

from mptc.compiler.lower import compile_spec
from mptc.runtime.executor import run_plan

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "paper" / "aang_td.mpt"
NAMES = {"meta": "AANG-TD (alignment)", "bilevel": "AANG-TD (IFT + FT unroll)", "static_multitask": "static multitask",
         "meta_tartan": "META-TARTAN", "tapt": "TAPT", "no_auxiliary": "no auxiliary"}


def mean_se(values: list[float]) -> str:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{100 * m:.2f} ± {100 * se:.2f}"


def one_run(spec: Path, labels: int, seed: int, sets: list[str], out: Path) -> dict:
    text = spec.read_text()
    overrides = [f"data.task.labels={labels}", f"train.seed={seed}", f"data.task.seed={seed}",
                 "evaluate.seeds=1", *sets]
    run = run_plan(compile_spec(text, str(spec), overrides), text, out, progress=False)
    evals = json.loads((run / "eval.json").read_text())
    meta = json.loads((run / "meta.json").read_text())
    return {"acc": {m: e["mean"] for m, e in evals.items() if isinstance(e, dict) and "mean" in e},
            "train_s": {m: e.get("train_s") for m, e in evals.items() if isinstance(e, dict)},
            "stages": dict(zip(meta["aux_w.stages"]["names"], meta["aux_w.stages"]["values"])),
            "end_w": meta.get("end_w")}


def _one_thread() -> None:
    import torch
    torch.set_num_threads(1)


def report(runs: dict, seeds: int, command: str, wall: float) -> str:
    lines = [f"Command: `{command}` ({wall / 60:.1f} min in all)", ""]
    budgets = sorted(runs)
    methods = [m for m in NAMES if all(m in r["acc"] for b in budgets for r in runs[b])]
    head = " | ".join(f"{b} labels" for b in budgets)
    lines += [f"| method | {head} | wall time per run (s) |", "|---|" + "---|" * len(budgets) + "---|"]
    for m in methods:
        cells = [mean_se([r["acc"][m] for r in runs[b]]) for b in budgets]
        times = [r["train_s"][m] for b in budgets for r in runs[b] if r["train_s"].get(m) is not None]
        lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + f" | {statistics.fmean(times):.1f} |")
    lines += ["", f"Accuracy (%) on the 2,000 test docstrings, mean ± stderr over {seeds} seeds.", "",
              "Paired differences, AANG-TD (alignment) minus each method (points, mean ± stderr over seeds):", "",
              f"| minus | {head} |", "|---|" + "---|" * len(budgets)]
    for m in methods[1:]:
        cells = [mean_se([r["acc"]["meta"] - r["acc"][m] for r in runs[b]]) for b in budgets]
        lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    lines += ["", "Learned stage weights W_stage of AANG-TD (logits, mean over seeds; higher = weighted up):", "",
              f"| primitive | {head} |", "|---|" + "---|" * len(budgets)]
    for name in runs[budgets[0]][0]["stages"]:
        cells = [f"{statistics.fmean(r['stages'][name] for r in runs[b]):+.3f}" for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    end = [f"{statistics.fmean(r['end_w'] for r in runs[b]):+.3f}" for b in budgets]
    lines.append(f"| end_w (end task weight 2 sigmoid(end_w)) | " + " | ".join(end) + " |")
    ratios = [r["train_s"]["meta"] / r["train_s"]["static_multitask"] for b in budgets for r in runs[b]]
    lines += ["", f"Meta-run / static-multitask wall-time ratio, the same PT steps (the cost of alignment's "
                  f"per-objective gradients and dev head): {statistics.fmean(ratios):.2f} "
                  f"(min {min(ratios):.2f}, max {max(ratios):.2f})"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default=str(SPEC))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--labels", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run")
    p.add_argument("--quick", action="store_true", help="2 seeds, 10 meta-steps, 1 budget: a smoke test")
    p.add_argument("--out", default="runs/aang_table")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each on one torch thread (1: all threads)")
    args = p.parse_args()
    seeds, budgets, sets = args.seeds, args.labels, list(args.set)
    if args.quick:
        seeds, budgets, sets = 2, budgets[:1], [*sets, "train.meta_steps=10", "evaluate.epochs=2"]
    start, runs = time.perf_counter(), {}
    jobs = [(labels, seed) for labels in budgets for seed in range(seeds)]
    import multiprocessing
    pool = concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_one_thread) if args.jobs > 1 else None
    submit = pool.submit if pool else lambda f, *a: _Done(f(*a))
    futures = {submit(one_run, Path(args.spec), labels, seed, sets, Path(args.out) / f"l{labels}-s{seed}"):
               (labels, seed) for labels, seed in jobs}
    done = {}
    for future in (concurrent.futures.as_completed(futures) if pool else futures):
        labels, seed = futures[future]
        r = done[labels, seed] = future.result()
        print(f"labels {labels} seed {seed}: " + "  ".join(f"{m} {v:.4f}" for m, v in r["acc"].items())
              + f"  (at {time.perf_counter() - start:.0f} s)", flush=True)
    for labels, seed in jobs:
        runs.setdefault(labels, []).append(done[labels, seed])
    command = "python benchmarks/aang_table.py " + " ".join(
        [f"--seeds {seeds}", "--labels " + " ".join(map(str, budgets)), f"--jobs {args.jobs}",
         *(["--set " + " ".join(sets)] if sets else [])])
    print()
    print(report(runs, seeds, command, time.perf_counter() - start))


class _Done:
    """A finished future's result (runs in this process, one after another)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


if __name__ == "__main__":
    main()
