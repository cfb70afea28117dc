"""Two processes against one (issue 17, section 2): meta-training wall time of the quickstart under
`mptc run --nproc 2` (gloo, each process one thread, each its half of every batch) against `mptc run` on one
process (all cores; and one thread, for the per-core view), measured in one invocation, best of `--repeats`.

    .venv/bin/python benchmarks/ddp.py [--meta-steps 40] [--batch 128 2048] [--wide 512] [--repeats 2]

Two configurations per batch: the quickstart's encoder (mlp [64, 8]) and a wide one (mlp [W, W]).

Prints one line per configuration and a JSON object (the last line): seconds per meta-step and the ratios
one-process time / two-process time (> 1: two processes are faster). Time is the `elapsed_s` between the first and
the last metrics.jsonl rows: meta-steps 2.. alone, not start-up, warm-up or evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "quickstart.mpt"


def meta_seconds(extra: list[str], env: dict, meta_steps: int, batch: int, hidden: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "mptc", "run", str(SPEC), "--out", str(out), "--quiet",
               "--set", f"train.meta_steps={meta_steps}", "--set", "train.warmup=10", "--set", "train.log_every=1",
               "--set", f"pretrain.data.batch={batch}", "--set", "train.device=cpu",
               "--set", f"model.encoder.hidden={hidden}",
               "--set", "evaluate.seeds=1", "--set", "evaluate.epochs=1", *extra]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (meta_steps - 1)   # warm-up and step 1 aside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta-steps", type=int, default=40)
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 2048])
    ap.add_argument("--wide", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK")}
    cores = os.cpu_count() or 1
    out = {"cores": cores}
    for batch, (model, hidden) in [(b, m) for b in args.batch
                                   for m in (("mlp64x8", "[64, 8]"), (f"mlp{args.wide}x{args.wide}", f"[{args.wide}, {args.wide}]"))]:
        runs = {"one_all_cores": ([], base), "one_one_thread": ([], {**base, "OMP_NUM_THREADS": "1"}),
                "two_processes": (["--nproc", "2"], base)}
        t = {name: min(meta_seconds(extra, env, args.meta_steps, batch, hidden) for _ in range(args.repeats))
             for name, (extra, env) in runs.items()}
        print(f"PT batch {batch}, {model}: s/meta-step " + ", ".join(f"{k} {v:.4f}" for k, v in t.items()), flush=True)
        out[f"batch_{batch}_{model}"] = {**{k: round(v, 5) for k, v in t.items()},
                                 "speedup_vs_all_cores": round(t["one_all_cores"] / t["two_processes"], 3),
                                 "speedup_vs_one_thread": round(t["one_one_thread"] / t["two_processes"], 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
