"""The fine-tuning (FT) evaluation protocol: how good is a pre-trained encoder for the target tasks?

:func:`finetune_evaluate` fits a fresh linear head (and, in ``mode="full"``, the encoder) on split
``"train"`` with Adam and BCE-with-logits, early-stops on the ``"val"`` metric and reports the
``"test"`` metric of the best state. It works on a deep copy, so the caller's encoder is untouched,
and inside ``torch.random.fork_rng``, so the global RNG is untouched.

The seed draws the fresh head's initial values and the order of the training batches (and, with the
protocol's ``resplit: true``, the train/val/test split itself), so seeds measure how much the result
depends on the fine-tuning's randomness.

The fresh head starts near zero: PyTorch's default initialisation of a linear layer times ``head_init``
(:data:`HEAD_INIT`, 0.01). With a head at full scale the first full-mode steps backpropagate the random
head's errors into the encoder and distort pre-trained features (Kumar et al. 2022, "Fine-Tuning can
Distort Pretrained Features"); with a zero head (as in big_vision's ViT fine-tuning) the encoder gets no
gradient until the head has learned something, a cheap linear-probe-then-fine-tune, but every seed then
starts from the same point, and with full-batch steps (or frozen features and one batch) gives the same
number. A head at 1% of the default scale keeps the near-zero start (on the quickstart the means move by
under 0.002 AUROC from the zero head's, while the default scale costs the meta-learned encoder 0.009 and
shrinks its lead over a random encoder from 0.021 to 0.008) and lets seeds differ. ``head_init: 0`` is
the zero head.

    >>> import torch
    >>> x = torch.randn(300, 4); y = (x[:, :2] > 0).float()
    >>> data = {"train": (x[:100], y[:100]), "val": (x[100:200], y[100:200]), "test": (x[200:], y[200:])}
    >>> enc = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    >>> finetune_evaluate(enc, data, epochs=30, lr=1e-2) > 0.9
    True
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from mptc.runtime.parallel import SOLO

__all__ = ["HEAD_INIT", "METRICS", "accuracy", "auroc", "finetune", "finetune_evaluate", "reshuffled", "summarize"]

MODES = ("full", "linear")
HEAD_INIT = 0.01  # the fresh head's scale, relative to PyTorch's default initialisation (module docstring)
RESPLIT_STREAM = 7_000_003  # reshuffled()'s seeds, apart from labelled()'s subsets and the fine-tuning's own


def auroc(y: Tensor, scores: Tensor) -> float:
    """Macro AUROC over the tasks (columns) that have both classes; ``nan`` if none has.

    Per task this is the Mann-Whitney statistic with ties counted 1/2, the same number as
    ``sklearn.metrics.roc_auc_score`` (tests check it) without its per-call overhead (~1 ms a task),
    which would otherwise dominate the per-epoch validation of :func:`finetune_evaluate`.

        >>> auroc(torch.tensor([[0.], [0.], [1.], [1.]]), torch.tensor([[0.1], [0.4], [0.35], [0.8]]))
        0.75
    """
    y_np = y.detach().cpu().numpy().astype(bool).reshape(len(y), -1)
    s_np = scores.detach().cpu().double().numpy().reshape(len(y), -1)
    pos = y_np.sum(0)
    cols = (pos > 0) & (pos < len(y_np))
    if not cols.any():
        return math.nan
    ranks = rankdata(s_np[:, cols], axis=0)
    n_pos, n_neg = pos[cols], len(y_np) - pos[cols]
    u = (ranks * y_np[:, cols]).sum(0) - n_pos * (n_pos + 1) / 2
    return float(np.mean(u / (n_pos * n_neg)))


def accuracy(y: Tensor, scores: Tensor) -> float:
    """Mean accuracy over all (example, task) pairs of logits thresholded at 0.

        >>> accuracy(torch.tensor([[0., 1.], [1., 1.]]), torch.tensor([[-1., 2.], [-0.5, 3.]]))
        0.75
    """
    return float(((scores > 0).float() == y).float().mean())


def top1(y: Tensor, scores: Tensor) -> float:
    """Multi-class accuracy: the fraction of examples whose highest-scoring class is the labelled one (y
    one-hot, e.g. text.jsonl's classes). Fine-tuning for it minimises softmax cross-entropy.

        >>> top1(torch.tensor([[0., 1.], [1., 0.]]), torch.tensor([[-1., 2.], [-0.5, 3.]]))
        0.5
    """
    return float((scores.argmax(-1) == y.argmax(-1)).float().mean())


METRICS: dict[str, Callable[[Tensor, Tensor], float]] = {"auroc": auroc, "accuracy": accuracy, "top1": top1}
MULTICLASS = {"top1"}  # metrics whose fine-tuning is a softmax over the classes (else a sigmoid per task)


def summarize(values: list[float]) -> dict:
    """Mean, standard error (``std(ddof=1) / sqrt(n)``, 0 for one value) and count of per-seed results;
    ``"degenerate": True`` when several seeds gave one identical value: the stderr of 0 then says nothing
    about the spread (the seeds did not vary what decides the result), and is not to be shown as ``± 0``.

        >>> summarize([0.7, 0.8, 0.9])
        {'mean': 0.8, 'stderr': 0.057735, 'seeds': 3}
        >>> summarize([0.7, 0.7])
        {'mean': 0.7, 'stderr': 0.0, 'seeds': 2, 'degenerate': True}
    """
    if not values:
        raise ValueError("summarize needs at least one value")
    arr = np.asarray(values, dtype=np.float64)
    stderr = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    out = {"mean": round(float(arr.mean()), 6), "stderr": round(stderr, 6), "seeds": len(arr)}
    return {**out, "degenerate": True} if len(arr) > 1 and bool((arr == arr[0]).all()) else out


def finetune_evaluate(encoder: torch.nn.Module, splits: dict[str, tuple[Tensor, Tensor]], *,
                      epochs: int = 50, lr: float = 1e-3, batch: int = 128, metric: str = "auroc",
                      mode: str = "full", patience: int = 10, seed: int = 0,
                      head_init: float = HEAD_INIT) -> float:
    """Fine-tune a copy of ``encoder`` plus a fresh linear head; the test ``metric`` of the best-on-val state.

    ``splits`` needs ``"train"``, ``"val"`` and ``"test"``, each ``(x, y)`` with ``y [N, T]`` 0/1.
    ``mode="full"`` trains encoder and head, ``mode="linear"`` only the head (on frozen features).
    ``seed`` draws the head's initial values (PyTorch's default times ``head_init``; 0: a zero head)
    and the batch order.

        >>> x = torch.randn(300, 4); y = (x[:, :1] > 0).float()
        >>> data = {"train": (x[:100], y[:100]), "val": (x[100:200], y[100:200]), "test": (x[200:], y[200:])}
        >>> 0.0 <= finetune_evaluate(torch.nn.Linear(4, 3), data, epochs=5, mode="linear") <= 1.0
        True
    """
    _check_args(splits, metric, mode)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = copy.deepcopy(encoder)
        recalibrate(encoder, splits["train"][0], batch)
        model, data = _prepare(encoder, splits, mode, head_init)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        best = _fit(model, opt, data, METRICS[metric], epochs, batch, patience, gen, metric in MULTICLASS)
        model.load_state_dict(best)
        return _score(model, data["test"], METRICS[metric])


def recalibrate(encoder: torch.nn.Module, x, batch: int = 128) -> None:
    """Re-estimate the batch-norm running statistics of ``encoder`` in place from ``x`` (the average
    over batches of ``batch`` examples, other layers in eval mode); a no-op without batch norm.

    A run's state holds parameters only, so an encoder rebuilt from it carries whatever running
    statistics its module last saw (another method's, or none): evaluation re-estimates them for the
    weights at hand before fine-tuning or extracting frozen features.

        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
        >>> recalibrate(net, torch.randn(64, 2) + 5); bool(net[1].running_mean.abs().sum() > 0)
        True
    """
    norms = [m for m in encoder.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    was_training, momenta = encoder.training, [m.momentum for m in norms]
    encoder.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    with torch.no_grad():
        for idx in torch.arange(len(x)).split(batch):
            if len(idx) > 1:  # batch norm needs two examples
                encoder(x[idx])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    encoder.train(was_training)


def _check_args(splits: dict, metric: str, mode: str) -> None:
    """Raise ``ValueError`` on an unknown metric or mode or missing splits."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise ValueError(f"finetune_evaluate needs splits {sorted(missing)}")


def _prepare(encoder: torch.nn.Module, splits: dict, mode: str, head_init: float) -> tuple[torch.nn.Module, dict]:
    """Encoder + fresh head (``"full"``), or a head on precomputed frozen features (``"linear"``)."""
    encoder.eval()
    with torch.no_grad():
        probe = splits["train"][0][:2]                  # two examples, or the one a tiny split has
        features = encoder(probe).reshape(len(probe), -1)
    # the head in the encoder's dtype (a `train dtype float64` run's) and device, not torch's defaults
    head = torch.nn.Linear(features.shape[1], splits["train"][1].shape[1], dtype=features.dtype,
                           device=features.device)
    with torch.no_grad():                           # near zero: see the module docstring
        head.weight.mul_(head_init)
        head.bias.mul_(head_init)
    if mode == "full":
        return torch.nn.Sequential(encoder, torch.nn.Flatten(), head), dict(splits)
    encoder.requires_grad_(False)
    with torch.no_grad():
        feats = {k: (encoder(x).reshape(len(x), -1), y) for k, (x, y) in splits.items()}
    return head, feats


def _fit(model: torch.nn.Module, opt: torch.optim.Optimizer, data: dict, score: Callable,
         epochs: int, batch: int, patience: int, gen: torch.Generator, softmax: bool = False) -> dict:
    """Train with early stopping on the val score; the best state dict."""
    best, best_state, waited = -math.inf, None, 0
    for _ in range(epochs):
        _epoch(model, opt, *data["train"], batch, gen, softmax)
        val = _score(model, data["val"], score)
        val = -math.inf if math.isnan(val) else val
        if best_state is None or val > best:
            best, best_state, waited = val, _snapshot(model), 0
        else:
            waited += 1
            if waited >= patience:
                break
    return best_state if best_state is not None else _snapshot(model)


def _epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, batch: int,
           gen: torch.Generator, softmax: bool = False) -> None:
    """One shuffled pass of Adam steps on BCE-with-logits (softmax cross-entropy for a multi-class metric)."""
    model.train()
    for idx in torch.randperm(len(x), generator=gen).split(batch):
        logits = model(x[idx])
        if softmax:
            loss = torch.nn.functional.cross_entropy(logits, y[idx].argmax(-1))
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx].to(logits.dtype))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _score(model: torch.nn.Module, split: tuple[Tensor, Tensor], score: Callable) -> float:
    """The metric of ``model`` on one split."""
    model.eval()
    with torch.no_grad():
        return score(split[1], model(split[0]))


def _snapshot(model: torch.nn.Module) -> dict:
    """A detached copy of the model's state."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- the `finetune` protocol (PROTOCOLS "finetune"): every method's encoder fine-tuned over seeds ----------
def finetune(trainer, method: str, state, train_s: float, baselines: tuple, *, epochs: int = 50,
             metric: str = "auroc", seeds: int = 5, lr: float = 1e-3, batch: int = 128, mode: str = "full",
             patience: int = 10, tasks: str = "seen", labels=None, search_trials: int = 2,
             resplit: bool = False, head_init: float = HEAD_INIT) -> dict:
    """eval.json: `method`'s trained `state` and each baseline (trained here through the BASELINES
    registry, from the run's seed) fine-tuned by `finetune_evaluate` on the meta-objective's data over
    `seeds` seeds: {method: {"metric", "mean", "stderr", "seeds", "values", "train_s"}, ...} (and
    "degenerate" where the seeds gave one value). `tasks: heldout` fine-tunes on the held-out task
    columns; `labels` at several label counts (`by_labels`); `search_trials` is the `search` baseline's
    budget in PT runs; `resplit` draws train/val/test anew at each seed (`reshuffled`); `head_init` scales
    the fresh head (module docstring). Seed s is the same draw for every method: the methods are paired."""
    from mptc.components.registry import BASELINES
    from mptc.runtime.progress import progress_of
    progress = progress_of(trainer)
    states, times = {method: state}, {method: train_s}
    for name in baselines:
        with progress.phase(f"baseline {name}: training") as done:
            trainer.data.reseed(trainer.plan.train.seed)    # the main run's batches, from the run's seed
            torch.manual_seed(trainer.plan.train.seed)
            start = time.perf_counter()
            states[name] = BASELINES.get(name).load()(trainer)
            times[name] = time.perf_counter() - start
            done(f"baseline {name}: trained in {times[name]:.1f} s")
    splits = _splits(trainer, tasks)
    args = {"epochs": epochs, "metric": metric, "lr": lr, "batch": batch, "mode": mode, "patience": patience,
            "head_init": head_init}
    counts = labels or [None]                             # None: the whole train split
    out = {}
    for name, trained in states.items():
        encoder = _encoder(trainer, trained)
        by_size = {n: over_seeds(encoder, splits, seeds, args, labels=n, resplit=resplit, progress=progress,
                                 name=name, world=trainer.world) for n in counts}
        out[name] = {"metric": metric, **by_size[counts[0]]}
        if labels:
            out[name]["by_labels"] = {str(n): r for n, r in by_size.items()}
    results = _check_evaluation(out)
    return {**{m: {**r, "train_s": round(times[m], 3)} for m, r in results.items()}, **labels_table(results)}


def _splits(trainer, tasks: str) -> dict:
    """The meta-objective data's splits `finetune` fine-tunes on (`tasks: heldout`, partial FT access: the
    task columns meta-training never saw)."""
    splits = trainer.data.splits(trainer.plan.objective.data.dataset)
    if tasks == "heldout":
        from mptc.runtime.data import heldout_splits
        splits = heldout_splits(splits, trainer.plan.objective.data.dataset)
    return splits


def _check_finetune(trainer, *, labels=None, tasks: str = "seen", **_) -> None:
    """`finetune`'s arguments against the data, before meta-training (`check`, which the executor calls):
    label counts the FT train split cannot give would only fail after the whole run."""
    if labels:
        labelled(_splits(trainer, tasks), max(labels), 0)


finetune.check = _check_finetune  # what the executor checks before meta-training (runtime/executor.py)


def over_seeds(encoder: torch.nn.Module, splits: dict, seeds: int, args: dict, labels: int | None = None,
               resplit: bool = False, progress=None, name: str = "encoder", world=SOLO) -> dict:
    """`finetune_evaluate` at seeds 0..seeds-1, each on the splits the seed gives (`labels` examples of
    train by `labelled`, after `reshuffled` when `resplit`): `summarize`'s numbers and the per-seed
    "values"; a line per seed on `progress`. Under several processes (`world`) seed s runs on process
    s mod N and every process gathers the values (each seed is its own draw: the same values)."""
    from mptc.runtime.progress import Progress
    progress = progress or Progress(enabled=False)
    mine = {}
    for s in range(world.rank, seeds, world.size):
        what = f"evaluate {name}: seed {s + 1}/{seeds}" + (f", {labels} labels" if labels is not None else "")
        with progress.phase(what) as done:
            start = time.perf_counter()
            at = labelled(reshuffled(splits, s) if resplit else splits, labels, s)
            mine[s] = finetune_evaluate(encoder, at, seed=s, **args)
            done(f"{what}: {args.get('metric', 'auroc')} {mine[s]:.4f} ({time.perf_counter() - start:.1f} s)")
    for part in world.gathered(mine) if world.size > 1 else ():
        mine.update(part)
    values = [mine[s] for s in range(seeds)]
    return {**summarize(values), "values": values}


def reshuffled(splits: dict, seed: int) -> dict:
    """`finetune(resplit: true)`: the "train", "val" and "test" splits pooled and drawn again at random
    from `seed` (a stream of its own), each keeping its size (the fractions as declared).

        >>> x = torch.arange(10.0)[:, None]
        >>> s = reshuffled({"train": (x[:5], x[:5]), "val": (x[5:7], x[5:7]), "test": (x[7:], x[7:])}, seed=1)
        >>> [len(s[k][0]) for k in ("train", "val", "test")], sorted(torch.cat([s[k][0] for k in s]).flatten().tolist())
        ([5, 2, 3], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    """
    names = ("train", "val", "test")
    x = torch.cat([splits[k][0] for k in names])
    y = torch.cat([splits[k][1] for k in names])
    gen = torch.Generator().manual_seed(RESPLIT_STREAM + seed)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    out, start = dict(splits), 0
    for k in names:
        idx = perm[start:start + len(splits[k][0])]
        out[k], start = (x[idx], y[idx]), start + len(idx)
    return out



def _module_state(prog, params: dict, module: str):
    return {k: params[full].detach().clone() for k, full in prog.keys[module]}


def _encoder(trainer, state) -> torch.nn.Module:
    from mptc.errors import RunError
    names = trainer.encoder_modules()
    if len(names) != 1:
        raise RunError(f"evaluation needs exactly one module shared by pretrain and finetune, found {names}")
    module = copy.deepcopy(trainer.prog.modules[names[0]])
    # run state holds parameters only; buffers (batch-norm running stats) are re-estimated by evaluation
    missing = module.load_state_dict(_module_state(trainer.prog, state.params, names[0]), strict=False).missing_keys
    if set(missing) - {n for n, _ in module.named_buffers()}:
        raise RunError(f"evaluation: the run state lacks parameters {sorted(missing)}")
    return module


def labels_table(results: dict) -> dict:
    """`{"<metric>_by_labels": {"100": {"meta": {mean, stderr, seeds}, ...}, ...}}` when the evaluation ran
    at several label counts (`finetune(labels: ...)`), else {}: the paper's table, one row per size.

        >>> r = {"meta": {"metric": "auroc", "by_labels": {"100": {"mean": 0.7, "stderr": 0.01, "seeds": 3}}}}
        >>> labels_table(r)
        {'auroc_by_labels': {'100': {'meta': {'mean': 0.7, 'stderr': 0.01, 'seeds': 3}}}}
    """
    rows: dict = {}
    for method, r in results.items():
        for n, cell in r.get("by_labels", {}).items():
            kept = ("mean", "stderr", "seeds", "degenerate")
            rows.setdefault(n, {})[method] = {k: cell[k] for k in kept if k in cell}
    return {f"{next(iter(results.values()))['metric']}_by_labels": rows} if rows else {}


def labelled(splits: dict, n: int | None, seed: int) -> dict:
    """The splits with "train" cut to n examples, a random subset drawn from `seed` (all when n is None)."""
    if n is None:
        return splits
    x, y = splits["train"]
    if n > len(x):
        from mptc.errors import RunError
        raise RunError(f"evaluate finetune(labels: ...): {n} labelled examples asked, the FT train split has {len(x)}")
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].to(x.device)
    return {**splits, "train": (x[keep], y[keep])}


def _check_evaluation(results: dict) -> dict:
    from mptc.errors import RunError
    """`results`, after checking every method's metric at every seed is finite."""
    for method, r in results.items():
        cells = {None: r, **r.get("by_labels", {})}
        for n, cell in cells.items():
            bad = [s for s, v in enumerate(cell["values"]) if not math.isfinite(v)]
            if bad:
                at = f" with {n} labels" if n is not None else ""
                raise RunError(f"evaluation: the {r['metric']} of '{method}'{at} is not finite at seed"
                               f"{'s' * (len(bad) > 1)} {', '.join(map(str, bad))} "
                               f"({cell['values'][bad[0]]}): its encoder gives non-finite features, or "
                               "no test task has both classes")
    return results
