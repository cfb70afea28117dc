"""Run one spec over several seeds and print each method's FT-test metric as mean +- stderr.

Seed S sets every key given with ``--vary`` to ``S`` plus the key's offset (``data.ft.seed+100`` sets
``data.ft.seed=S+100``), so the data *and* the training change from seed to seed. The spec is compiled
through the same path as ``mptc run``; the run directories are kept under ``--out``.

    .venv/bin/python benchmarks/seeds.py specs/quickstart.mpt --seeds 5 \\
        --vary train.seed data.pt.seed data.ft.seed+100
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mptc.commands import _methods, seed_overrides
from mptc.compiler.lower import compile_spec
from mptc.runtime.evaluate import summarize
from mptc.runtime.executor import run_plan


def run_seed(spec: str, text: str, sets: list[str], out: Path) -> dict:
    """One run: its eval.json means and numeric diagnostics (not the planted labels `mptc report` colours by)."""
    run = run_plan(compile_spec(text, spec, sets), text, out, progress=False)
    evals = json.loads((run / "eval.json").read_text())
    diag = {k: v for k, v in json.loads((run / "diagnostics.json").read_text()).items() if isinstance(v, (int, float))}
    return {"eval": means(evals), "diag": diag}


def means(evals: dict) -> dict:
    """Each method's FT-test mean, and `method@N` for each label count of `finetune(labels: ...)`.

        >>> means({"meta": {"metric": "auroc", "mean": 0.8, "by_labels": {"100": {"mean": 0.8}}}, "x_deg": {}})
        {'meta': 0.8, 'meta@100': 0.8}
    """
    out = {}
    for method, e in _methods(evals).items():
        out[method] = e["mean"]
        out.update({f"{method}@{n}": cell["mean"] for n, cell in e.get("by_labels", {}).items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--vary", nargs="+", default=["train.seed"])
    p.add_argument("--set", nargs="+", default=[], help="fixed overrides for every seed")
    p.add_argument("--out", default="runs/seeds")
    args = p.parse_args()
    text, start, rows = Path(args.spec).read_text(), time.time(), []
    for seed in range(args.seeds):
        sets = [*args.set, *seed_overrides(args.vary, seed)]
        row = run_seed(args.spec, text, sets, Path(args.out) / f"{Path(args.spec).stem}-{seed}")
        rows.append(row)
        print(f"seed {seed} ({' '.join(sets)}): "
              + "  ".join(f"{m} {v:.4f}" for m, v in row["eval"].items())
              + "  " + "  ".join(f"{k} {v:.3f}" for k, v in row["diag"].items()), flush=True)
    print(f"\n| method | mean +- stderr over {args.seeds} seeds |\n|---|---|")
    for method in rows[0]["eval"]:
        s = summarize([r["eval"][method] for r in rows])
        print(f"| {method} | {s['mean']:.4f} +- {s['stderr']:.4f} |")
    methods = list(rows[0]["eval"])
    sizes = [""] + sorted({m.partition("@")[2] for m in methods if "@" in m}, key=int)
    for (a, b), n in ((pair, n) for n in sizes for pair in (("meta", "pretrain"), ("pretrain", "no_pretrain"))):
        a, b = (a + "@" + n, b + "@" + n) if n else (a, b)
        if a in methods and b in methods:
            d = summarize([r["eval"][a] - r["eval"][b] for r in rows])
            wins = sum(r["eval"][a] > r["eval"][b] for r in rows)
            print(f"| {a} - {b} (paired) | {d['mean']:+.4f} +- {d['stderr']:.4f}, {a} ahead {wins}/{len(rows)} |")
    for key in rows[0]["diag"]:
        s = summarize([r["diag"][key] for r in rows])
        print(f"| {key} | {s['mean']:.3f} +- {s['stderr']:.3f} |")
    print(f"\n{time.time() - start:.0f} s in all")


if __name__ == "__main__":
    main()
