"""Page faults and time of mptc's meta-step on the reference problem (`../shared/bench/common.py`) with
glibc's malloc at its defaults and with `runtime/memory.py`'s `keep_freed_memory` (what `mptc run` sets
on the CPU): child processes, the two settings alternated `--pairs` times, each running `--steps`
meta-steps of the `--variant` estimator at `--width`, each meta-step followed by the harness's 10 plain PT
steps (torch.optim.Adam, loss.backward()) on the same batches. Per setting: the medians over meta-steps
(the first three aside) of the PT phase, the hypergradient phase (FT unroll, solve, mixed term, meta update),
the 10 plain steps, the minor page faults of the meta-step and of the plain steps, and the
ratio (PT phase + hypergradient phase) / plain, then the medians of those over the pairs.

    .venv/bin/python benchmarks/page_faults.py [--width 1024 --variant fused --pairs 3 --steps 24]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meta_step import BENCH, make_mptc  # noqa: E402

KEYS = ("pt_ms", "hg_ms", "plain_ms", "meta_faults", "plain_faults", "ratio")


def child(width: int, variant: str, steps: int, keep: bool) -> dict:
    """(In a child process) the medians of one setting (module docstring)."""
    if keep:
        from mptc.runtime.memory import keep_freed_memory
        assert keep_freed_memory(), "glibc's thresholds could not be set here"
    sys.path.insert(0, str(BENCH))
    import common
    common.HERE = tempfile.mkdtemp(prefix="mptc-bench-")
    S = common.Setup(width)
    meta_step = make_mptc(variant)(S)                  # benchmarks/meta_step.py's meta-step, as timed there
    base = S.new_net()
    opt = torch.optim.Adam(base.parameters(), lr=common.LR_PT)
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt   # noqa: E731
    rows = []
    for step in range(steps):
        m = step % common.N_META                        # the harness's batch schedule, cycled
        t0, f0 = time.perf_counter(), faults()
        meta_step(m)
        t2, f2 = time.perf_counter(), faults()
        for p in range(common.P_STEPS):
            x, y = S.pt_batch(m, p)
            opt.zero_grad(set_to_none=True)
            common.pt_loss(base(x), y, S.phi0).backward()
            opt.step()
        t3, f3 = time.perf_counter(), faults()
        if step >= 3:
            rows.append(((S.t_pt_end - t0) * 1e3, (t2 - S.t_pt_end) * 1e3, (t3 - t2) * 1e3, f2 - f0, f3 - f2))
    med = [statistics.median(col) for col in zip(*rows)]
    return dict(zip(KEYS, [*med, (med[0] + med[1]) / med[2]]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--variant", default="fused", help="a variant of benchmarks/meta_step.py (plain, fused, ...)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--child", choices=("default", "keep"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.width, args.variant, args.steps, args.child == "keep")))
        return
    runs = {"default": [], "keep": []}
    for _ in range(args.pairs):
        for setting in runs:
            out = subprocess.run([sys.executable, __file__, "--child", setting, "--width", str(args.width),
                                  "--variant", args.variant, "--steps", str(args.steps)],
                                 check=True, capture_output=True, text=True).stdout
            runs[setting].append(json.loads(out.strip().splitlines()[-1]))
    print(f"width {args.width}, {args.variant}, {args.pairs} pairs of {args.steps} meta-steps; medians over pairs")
    print("| malloc | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
    for setting, rows in runs.items():
        print(f"| {setting} | " + " | ".join(f"{statistics.median(r[k] for r in rows):.3f}" for k in KEYS) + " |")
    ratio = statistics.median(r["ratio"] for r in runs["keep"]) / statistics.median(r["ratio"] for r in runs["default"])
    print(f"ratio keep / default: {ratio:.3f}")


if __name__ == "__main__":
    main()
