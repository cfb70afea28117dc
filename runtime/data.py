"""The plan's data: datasets built through the registry, split, moved to the device, and read in batches.

Each stream (pretrain, finetune, objective) samples its batches with its own generator seeded from the
run's seed, so a run is reproducible and a baseline can replay the same batches (`reseed`).
"""
from __future__ import annotations

import torch

from mptc.compiler import ir
from mptc.errors import RunError
from mptc.components.registry import DATASETS
from mptc.runtime.program import torch_dtype

_STREAMS = ("pretrain", "finetune", "objective", "auxiliary")  # auxiliary: an auxiliary block's in-domain data


def heldout_tasks(of, groups: int = 4, fold: int = 0):
    """Partial FT access (Raghu et al. 2021, Table 1): the task columns of ``of`` divided into
    ``groups`` contiguous groups, group ``fold mod groups`` held out of meta-training. Every split
    ``S`` of ``of`` becomes ``S`` with the seen columns and ``heldout_S`` with the held-out ones;
    ``info["seen"]`` and ``info["heldout"]`` name the columns.

        >>> from mptc.runtime.datasets import Dataset
        >>> ds = heldout_tasks(Dataset({"train": (torch.zeros(3, 2), torch.eye(3, 4))}, {}), groups=2, fold=1)
        >>> {k: tuple(y.shape) for k, (x, y) in ds.splits.items()}, ds.info["heldout"]
        ({'train': (3, 2), 'heldout_train': (3, 2)}, [2, 3])
    """
    from mptc.components.catalog import ShapeProblem, heldout_columns
    from mptc.runtime.datasets import Dataset
    tasks = next(iter(of.splits.values()))[1].shape[1]
    try:
        held = heldout_columns(tasks, groups, fold)
    except ShapeProblem as e:
        raise ValueError(str(e)) from None
    seen = [c for c in range(tasks) if c not in set(held)]
    splits = {s: (x, y[:, seen]) for s, (x, y) in of.splits.items()}
    splits.update({f"heldout_{s}": (x, y[:, held]) for s, (x, y) in of.splits.items()})
    names = of.info.get("task_names")  # one per column of `of` (your own data): those of the seen columns
    named = {"task_names": [names[c] for c in seen], "heldout_task_names": [names[c] for c in held]} if names else {}
    return Dataset(splits, {**of.info, "seen": seen, "heldout": held, **named})


def _build(source: ir.DataSource, built: dict):
    comp = DATASETS.get(source.source.name)
    args = dict(source.source.args)
    for p in comp.params:
        if p.kind == "dataset":
            args[p.name] = built[args[p.name]]
    try:
        ds = comp.load()(**args)
    except (OSError, ValueError) as e:  # a missing or malformed file, a size that cannot be split
        raise RunError(f"data '{source.name}': {e}") from None
    _as_declared(source, ds)
    if source.splits and "all" not in ds.splits:
        raise RunError(f"data '{source.name}': it comes with splits {', '.join(ds.splits)}; drop its split clause")
    if source.splits:
        from mptc.runtime.datasets import split
        try:
            ds = split(ds, dict(source.splits), seed=args.get("seed", 0) or 0)
        except ValueError as e:                          # a fraction too small for the data's size
            raise RunError(f"data '{source.name}': {e}") from None
    return ds


def _as_declared(source: ir.DataSource, ds) -> None:
    """The loaded data's widths are those `mptc check` took from the declaration (the shape rule: a file's
    header, a published dataset's documented sizes): a file that says otherwise is named here, not as a shape
    error inside a loss. Held-out splits keep their own widths."""
    for split, (x, y) in ds.splits.items():
        if split.startswith("heldout_"):
            continue
        found = {"y": y.shape[1] if torch.is_tensor(y) and y.dim() == 2 else None,
                 "x": x.shape[1] if torch.is_tensor(x) and x.dim() == 2 else None}
        for part, declared in (("y", source.y_dim), ("x", source.x_dim)):
            if isinstance(declared, int) and found[part] is not None and found[part] != declared:
                what = "tasks (y columns)" if part == "y" else "features (x columns)"
                raise RunError(f"data '{source.name}': its split '{split}' has {found[part]} {what}, but the spec was "
                               f"checked with {declared}")


def heldout_splits(splits: dict, name: str) -> dict:
    """``{S: heldout_S}``: the held-out task columns of a :func:`heldout_tasks` dataset's splits."""
    out = {s[len("heldout_"):]: xy for s, xy in splits.items() if s.startswith("heldout_")}
    if not out:
        raise RunError(f"evaluate(tasks: heldout) needs held-out tasks, but data '{name}' has none: "
                       f"build it with tasks.heldout(of: ...)")
    return out


def _placed(t, device: torch.device, dtype: torch.dtype):
    """`t` on the device; a float tensor (x, multi-label y) also in the run's dtype. Class indices keep
    their integer type, and a graph store (graphs.Graphs) its own: the GIN reads its node features in
    its weights' dtype."""
    if torch.is_tensor(t) and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device)


class Data:
    """Datasets by name and the batch streams of the plan's stages."""

    def __init__(self, plan: ir.Plan, device: torch.device, dtype: torch.dtype | None = None):
        self.plan, self.device, self.sets = plan, device, {}
        self.dtype = dtype or torch_dtype(plan.train.dtype)
        for source in plan.datasets:
            self.sets[source.name] = _build(source, self.sets)
        self.tensors = {n: {s: tuple(_placed(t, device, self.dtype) for t in xy) for s, xy in ds.splits.items()}
                        for n, ds in self.sets.items()}
        self.refs = {"pretrain": plan.pretrain.data, "finetune": plan.finetune.data, "objective": plan.objective.data}
        if plan.auxiliary is not None and plan.auxiliary.data is not None:
            self.refs["auxiliary"] = plan.auxiliary.data
        self.rank, self.size = 0, 1
        self.reseed(plan.train.seed)

    def shard(self, rank: int, size: int) -> None:
        """Process `rank` of `size` (a data-parallel run, runtime/parallel.py) takes the `rank`-th of
        `size` equal parts of every batch; every process draws the same global batch, so the job sees what
        one process sees. A batch that does not split into equal parts is a RunError."""
        for stream, ref in self.refs.items():
            held = len(self._split(ref)[0])
            n = min(ref.batch, held)
            if n % size:
                cut = "" if n == ref.batch else f", all its split holds (the spec asks {ref.batch})"
                raise RunError(f"several processes: the {stream} batch of data '{ref.dataset}' has {n} examples"
                               f"{cut}, which does not split into {size} equal shards; make it a multiple of "
                               f"{size}")
        self.rank, self.size = rank, size

    def reseed(self, seed: int) -> None:
        """Restarts every batch stream from `seed`."""
        self.gens = {s: torch.Generator().manual_seed(seed * 1000 + i) for i, s in enumerate(_STREAMS)}

    def _split(self, ref: ir.DataRef):
        splits = self.tensors[ref.dataset]
        name = ref.split or "all"
        if name not in splits:
            raise RunError(f"data '{ref.dataset}' has no split '{name}' (it has {', '.join(splits)})")
        return splits[name]

    def batch(self, stream: str):
        """A random batch (with replacement across batches) from a stage's data."""
        ref = self.refs[stream]
        x, y = self._split(ref)
        idx = torch.randint(0, len(x), (min(ref.batch, len(x)),), generator=self.gens[stream])
        if self.size > 1:
            idx = idx.view(self.size, -1)[self.rank]    # this process's shard (`shard`)
        idx = idx.to(self.device)
        return x[idx], y[idx]

    def splits(self, name: str) -> dict:
        """All splits of a dataset (for evaluation)."""
        return self.tensors[name]

    def info(self, name: str) -> dict:
        return self.sets[name].info
