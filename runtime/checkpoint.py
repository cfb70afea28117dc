"""Resumable checkpoints: `train checkpoint_every N` and `mptc run --resume DIR` (docs/runtime.md, "Resume").

Every N meta-steps the run writes `resume.pt` into its staging folder, atomically (a temporary file and a
rename): the loop's whole `State` (parameters, meta-parameters, every optimizer's state, the estimator's
state: the kept window, recent batches, lambda_max, ...; the counters), every random stream (torch's
generator, each data stream's, each augmentation noise stream's and the auxiliary objectives', numpy's) and
how many metrics.jsonl rows were written. `resume.json`, written when the run starts, holds the spec's
path, the `--set` overrides and the hash of both, so `--resume` compiles the same plan and a changed spec
is a named error.

An interrupted run (Ctrl-C, SIGTERM, SIGHUP, an error) with a checkpoint keeps its staging folder
`.NAME.partial-PID`, and `NAME` keeps its RUNNING marker, now saying `"interrupted": true`: neither looks
like a finished run, which is `NAME` holding meta.json and no RUNNING. After SIGKILL the same two
remain. `mptc run --resume DIR` (DIR either of them) continues from the last checkpoint, or from the
start when there is none, and moves the finished run onto `NAME` as any run. On CPU, the finished run's
meta.json, eval.json (wall times aside) and checkpoint.pt are those of an uninterrupted run.

The file is read with `torch.load(weights_only=True)`: plain tensors, numbers, strings, lists and dicts,
no code (deques are stored as `{"__deque__": [...], "maxlen": n}`).
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
from pathlib import Path

import attrs
import numpy as np
import torch

from mptc.errors import RunError, Unresumable

CHECKPOINT, ORIGIN = "resume.pt", "resume.json"
_FIELDS = ("params", "metas", "pt_opt", "ft_opt", "meta_opt", "est", "meta_step", "cycle", "nonfinite", "step")


def spec_hash(source: str, overrides) -> str:
    """sha256 of the spec's text and its overrides: what a resumed run must match."""
    return hashlib.sha256(json.dumps([source, list(overrides)]).encode()).hexdigest()


def write_origin(tmp: Path, spec_path: str, source: str, overrides) -> None:
    (tmp / ORIGIN).write_text(json.dumps({"spec": str(Path(spec_path).resolve()), "overrides": list(overrides),
                                          "sha256": spec_hash(source, overrides)}, indent=2) + "\n")


def read_origin(tmp: Path) -> dict:
    try:
        origin = json.loads((tmp / ORIGIN).read_text())
        assert isinstance(origin, dict) and {"spec", "overrides", "sha256"} <= set(origin)
        return origin
    except (OSError, ValueError, AssertionError):
        raise RunError(f"'{tmp}' holds no readable {ORIGIN}: it is not a run mptc can resume") from None


def _plain(obj, cpu: bool = False):
    """`obj` as what weights_only loading accepts (tensors detached and cloned, on the CPU when `cpu`;
    deques as dicts; a graph batch as the dict of its own graphs' tensors: runtime/graphs.py
    `Graphs.compact`)."""
    from mptc.runtime.graphs import Graphs
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True) if cpu else obj.detach().clone()
    if isinstance(obj, Graphs):
        own = obj.compact()
        return {"__graphs__": {f.name: _plain(getattr(own, f.name), cpu) for f in attrs.fields(Graphs)}}
    if isinstance(obj, collections.deque):
        return {"__deque__": [_plain(v, cpu) for v in obj], "maxlen": obj.maxlen}
    if isinstance(obj, dict):
        return {k: _plain(v, cpu) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, cpu) for v in obj)
    return obj


def _restored(obj):
    if isinstance(obj, dict) and "__graphs__" in obj:
        from mptc.runtime.graphs import Graphs
        return Graphs(**obj["__graphs__"])
    if isinstance(obj, dict) and "__deque__" in obj:
        return collections.deque((_restored(v) for v in obj["__deque__"]), maxlen=obj["maxlen"])
    if isinstance(obj, dict):
        return {k: _restored(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_restored(v) for v in obj)
    return obj


def _streams(trainer) -> list:
    """Every seeded generator the run draws from, in a fixed order: the data streams, then the noise memos."""
    gens = [trainer.data.gens[s] for s in sorted(trainer.data.gens)]
    return gens + [memo.gen for memo in trainer.prog.memos]


def _random(trainer) -> dict:
    """This process's random streams: torch's generator(s), the data and noise streams, numpy's."""
    out = {"torch_rng": torch.get_rng_state(), "streams": [g.get_state() for g in _streams(trainer)],
           "numpy_rng": _numpy_state()}
    if torch.cuda.is_available() and trainer.prog.device.type == "cuda":
        out["cuda_rng"] = torch.cuda.get_rng_state_all()
    return out


def save(tmp: Path, trainer, state, rows: int) -> None:
    """Writes the checkpoint atomically (module docstring). In a data-parallel run every process calls it,
    and rank 0 writes the state (the same on every process) with every process's random streams and
    estimator state (its own shards of the PT batches the estimator keeps, `mixed_batches`)."""
    world = trainer.world
    own = _random(trainer)
    if world.size > 1:                                  # on the CPU for the gather: any device, any backend
        own["est"] = _plain(state.est, cpu=True)
    ranks = world.gathered(own)
    if world.rank > 0:
        return
    payload = {"version": 1, "state": {f: _plain(getattr(state, f)) for f in _FIELDS}, **ranks[0], "rows": rows}
    if world.size > 1:
        payload["ranks"] = ranks
    part = tmp / (CHECKPOINT + ".tmp")
    torch.save(payload, part)
    os.replace(part, tmp / CHECKPOINT)


def load(tmp: Path, trainer, state) -> int | None:
    """Restores `state` and every stream from the checkpoint in `tmp`; the metrics rows it had, or None
    when there is no checkpoint (the run starts from the beginning)."""
    path = tmp / CHECKPOINT
    if not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True, map_location=trainer.prog.device)
    except Exception as e:   # a truncated or foreign file: named, never a traceback
        raise Unresumable(f"cannot read the checkpoint '{path}': {type(e).__name__}: {e}") from None
    world, ranks = trainer.world, payload.get("ranks", [payload])
    if len(ranks) != world.size:
        again = f"--nproc {len(ranks)}" if len(ranks) > 1 else "one process (no --nproc)"
        raise RunError(f"the checkpoint '{path}' was written by {len(ranks)} process(es): resume it with {again}")
    payload = {**payload, **ranks[world.rank]}           # this process's own random streams
    saved = _restored(payload["state"])
    if "est" in payload:                                 # this process's own (several processes)
        saved["est"] = _restored(payload["est"])
    for f in _FIELDS:
        setattr(state, f, saved[f])
    state.params = {k: t.requires_grad_() for k, t in state.params.items()}
    state.metas = {k: t.requires_grad_() for k, t in state.metas.items()}
    torch.set_rng_state(payload["torch_rng"].cpu())
    for gen, s in zip(_streams(trainer), payload["streams"], strict=True):
        gen.set_state(s.cpu())
    np.random.set_state(_numpy_restored(payload["numpy_rng"]))
    if "cuda_rng" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
    return payload["rows"]


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_restored(s: dict):
    return s["name"], s["keys"].cpu().numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]


def truncate_rows(path: Path, rows: int) -> None:
    """metrics.jsonl cut back to the rows the checkpoint had (a killed run may have logged more)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)[:rows]
    path.write_text("".join(lines))
