"""A/B of one runtime change on a benchmark ratio: the harness's ratio (`common.run_benchmark`, a meta-step
over 10 plain PT steps, alternated) with the change and without it, alternated run by run in one process.

    .venv/bin/python benchmarks/ab_runtime.py --change mean_bce --runs 8
    .venv/bin/python benchmarks/ab_runtime.py --change swapping_call --runs 8 --variant hessian_batch_64

`mean_bce`: `mean(w * bce(z, y))` as one call of torch's weighted BCE (runtime/functions.py) against the
expression as written. `swapping_call`: modules applied by swapping tensors into slots found once
(runtime/program.py) against `torch.func.functional_call` on every call. Prints each arm's mean, standard
deviation and runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import meta_step as M

sys.path.insert(0, str(M.BENCH))


def _functional_call(module, keys):
    from torch.func import functional_call
    locals_ = [local for local, _ in keys]
    return (lambda values, a: functional_call(module, dict(zip(locals_, values)), (a,))), [f for _, f in keys]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--change", choices=["mean_bce", "swapping_call"], required=True)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--variant", default="hessian_batch_64", choices=list(M.VARIANTS))
    p.add_argument("--width", type=int, default=256)
    args = p.parse_args()
    from mptc.runtime import program
    from mptc.runtime.memory import keep_freed_memory
    keep_freed_memory()
    import common
    common.HERE = tempfile.mkdtemp(prefix="mptc-ab-")
    name = "mean_bce_parts" if args.change == "mean_bce" else "swapping_call"
    arms = {"with": getattr(program, name),
            "without": (lambda e: None) if args.change == "mean_bce" else _functional_call}
    ratios = {arm: [] for arm in arms}
    for _ in range(args.runs):
        for arm, impl in arms.items():
            setattr(program, name, impl)                 # read when the trainer compiles its losses
            ratios[arm].append(common.run_benchmark(arm, args.width, M.make_mptc(args.variant))["ratio_med"])
    setattr(program, name, arms["with"])
    for arm, rs in ratios.items():
        print(f"{args.change} {arm}: mean {statistics.mean(rs):.3f} sd {statistics.stdev(rs):.3f} runs "
              + " ".join(f"{r:.3f}" for r in rs))


if __name__ == "__main__":
    main()
