"""Does task weighting matter on the synthetic data? Oracle vs uniform PT task weights vs no PT.

For each seed: pre-train an MLP encoder (dim -> 64 -> 8, ReLU) with a linear PT head on
``synthetic_multitask`` under (a) uniform task weights, (b) oracle weights (1 on the planted related
tasks, 0 elsewhere), both for the same Adam steps, and (c) no pre-training; then fine-tune each with
:func:`mptc.runtime.evaluate.finetune_evaluate` on the FT companion and report test AUROC.

FT protocol: 1536 FT examples split train 10% (154) / val 30% / test 60%: few-shot training, so
that pre-training matters, with val and test large enough for low-variance early stopping and
scores. FT runs to convergence (lr 3e-3, up to 300 epochs, patience 30), so the arms' gaps are about
what the representation makes learnable, not about how fast each converges (with the
``finetune_evaluate`` defaults, lr 1e-3 and 50 epochs, FT is unconverged and the gaps are larger).

    .venv/bin/python benchmarks/oracle_weights.py            # the defaults below, ~15 s on 2 cores
    .venv/bin/python benchmarks/oracle_weights.py --seeds 3 --steps 500
"""
from __future__ import annotations

import argparse
import time

import torch

from mptc.runtime.datasets import split, synthetic_multitask, synthetic_multitask_ft
from mptc.runtime.evaluate import finetune_evaluate, summarize

ARMS = ("oracle", "uniform", "none")


def encoder(dim: int, hidden: int, width: int) -> torch.nn.Module:
    """The MLP encoder ``dim -> hidden -> width`` with a ReLU between."""
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, width))


def pretrain(enc: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, *,
             steps: int, batch: int, lr: float, gen: torch.Generator) -> torch.nn.Module:
    """Adam on the task-weighted BCE of a linear PT head over ``enc``; returns ``enc`` trained."""
    head = torch.nn.Linear(enc[-1].out_features, y.shape[1])
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=lr)
    w = weights / weights.sum()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=gen)
        per_task = torch.nn.functional.binary_cross_entropy_with_logits(
            head(enc(x[idx])), y[idx], reduction="none").mean(0)
        opt.zero_grad(set_to_none=True)
        (per_task * w).sum().backward()
        opt.step()
    return enc


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """FT test AUROC of each arm for one seed."""
    pt = synthetic_multitask(examples=args.examples, dim=args.dim, tasks=args.tasks, related=args.related,
                             adversarial=args.adversarial, factors=args.factors,
                             related_factors=args.related_factors, noise=args.noise, seed=seed)
    ft = split(synthetic_multitask_ft(of=pt, examples=args.ft_examples, tasks=args.ft_tasks, seed=seed),
               {"train": args.ft_train, "val": args.ft_val, "test": 1 - args.ft_train - args.ft_val}, seed)
    x, y = pt.splits["all"]
    weights = {"uniform": torch.ones(args.tasks), "oracle": torch.tensor(pt.info["relevant"]).float()}
    out = {}
    for arm in ARMS:
        torch.manual_seed(seed)  # same encoder init for every arm
        enc = encoder(args.dim, args.hidden, args.width)
        if arm != "none":
            pretrain(enc, x, y, weights[arm], steps=args.steps, batch=args.batch, lr=args.lr,
                     gen=torch.Generator().manual_seed(seed))
        out[arm] = finetune_evaluate(enc, ft.splits, epochs=args.ft_epochs, lr=args.ft_lr, seed=seed,
                                     mode=args.mode, patience=args.patience)
    return out


def parse() -> argparse.Namespace:
    """Command-line options; the defaults are the setting described in the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("seeds", 5), ("examples", 4096), ("dim", 32), ("tasks", 100), ("related", 20),
                          ("adversarial", 10), ("factors", 6), ("related_factors", 3), ("hidden", 64),
                          ("width", 8), ("steps", 2000), ("batch", 128), ("ft_examples", 1536),
                          ("ft_tasks", 5), ("ft_epochs", 300), ("patience", 30)]:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    for name, default in [("noise", 0.1), ("lr", 1e-3), ("ft_lr", 3e-3), ("ft_train", 0.1), ("ft_val", 0.3)]:
        p.add_argument("--" + name.replace("_", "-"), type=float, default=default)
    p.add_argument("--mode", choices=("full", "linear"), default="full")
    return p.parse_args()


def main() -> None:
    """Run every seed and print per-seed numbers and mean +- stderr per arm."""
    args, start = parse(), time.time()
    results = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        row = run_seed(args, seed)
        print(f"seed {seed}: " + "  ".join(f"{a} {row[a]:.4f}" for a in ARMS), flush=True)
        for arm in ARMS:
            results[arm].append(row[arm])
    for arm in ARMS:
        s = summarize(results[arm])
        print(f"{arm:8s} AUROC {s['mean']:.4f} +- {s['stderr']:.4f}  (n={s['seeds']})")
    for a, b in (("oracle", "uniform"), ("uniform", "none")):
        diff = summarize([x - y for x, y in zip(results[a], results[b])])
        wins = sum(x > y for x, y in zip(results[a], results[b]))
        print(f"{a} - {b}: {diff['mean']:+.4f} +- {diff['stderr']:.4f} (paired), {a} wins {wins}/{args.seeds}")
    print(f"{time.time() - start:.0f} s")

if __name__ == "__main__":
    main()
