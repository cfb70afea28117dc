"""What a run writes beside its metrics for `mptc report` to plot, from the final state.

* `example_weights.json` — for each weighting network (`meta NAME: network ...`), the weight it gives
  every example of the PT data (the split the PT stage draws from) with the final parameters and
  meta-parameters: `{"n": {"of": "weight", "dataset": "pt", "split": "all", "values": [...]}}`, with
  `"clean": [1, 0, ...]` where the data marks corrupted labels (`images.digits(corrupt: ...)`). What is
  evaluated is the outermost `let` that applies the network (`weight = 2 * sigmoid(n(...))`: the weight
  the PT loss uses), else the network's own output where the PT loss applies it; an output of more than
  one number per example is averaged to one.

Evaluating leaves the run as it was: the augmentations' noise streams and torch's generator are restored.

    >>> _rounded([0.1234567891, 2.0])
    [0.123457, 2.0]
"""
from __future__ import annotations

from pathlib import Path

import attrs
import torch

from mptc.compiler import ir
from mptc.runtime.program import Ctx
from mptc.runtime.rundir import write_json

EVAL_BATCH = 512


def write_artifacts(out: Path, trainer, state) -> None:
    """Writes every artifact the plan allows into the run directory `out` (nothing when none applies)."""
    weights = example_weights(trainer.plan, trainer.prog, trainer.data, state.params, state.metas)
    if weights:
        write_json(Path(out) / "example_weights.json", weights)
    from mptc.runtime.text import write_tokenizers     # text data's tokenizer: tokenizer.json (docs/text.md)
    write_tokenizers(out, trainer.data)


def example_weights(plan: ir.Plan, prog, data, params: dict, metas: dict, rounded: bool = True) -> dict:
    """`{network: {"of", "dataset", "split", "values"[, "clean"]}}` over the PT data (module docstring);
    a network whose output is not one value per example is left out."""
    ref, out = plan.pretrain.data, {}
    split = ref.split or "all"
    x, y = data.splits(ref.dataset)[split]
    clean = data.info(ref.dataset).get("clean")
    for m in plan.metas:
        found = weighting_expr(plan, m.name) if m.kind == "network" else None
        if found is None:
            continue
        of, expr = found
        values = _per_example(prog, prog.compile(expr), params, metas, x, y)
        if values is None:
            continue
        out[m.name] = {"of": of, "dataset": ref.dataset, "split": split,
                       "values": _rounded(values.tolist()) if rounded else values.tolist()}
        if clean is not None and split == "all" and len(clean) == len(values):
            out[m.name]["clean"] = [int(bool(c)) for c in clean]
    return out


def weighting_expr(plan: ir.Plan, network: str):
    """(name, expression) giving `network`'s per-example weights: the outermost `let` applying it
    (directly or through other lets) that no other such let uses, preferring one the PT loss uses; else
    the network's first application in the PT loss, named `network(...)`; None when neither exists."""
    lets = {let.name: let.expr for let in plan.lets}
    applying = [n for n in lets if _applies(lets[n], network, lets)]
    used_by_others = {r for n in applying for r in _refs(lets[n])}
    outermost = [n for n in applying if n not in used_by_others]
    in_loss = [n for n in outermost if _uses(plan.pretrain.loss, n, lets)]
    for name in in_loss or outermost:
        return name, lets[name]
    calls = [e for e in _nodes(plan.pretrain.loss) if isinstance(e, ir.Apply) and e.module == network]
    return (f"{network}(...)", calls[0]) if calls else None


def _per_example(prog, fn, params: dict, metas: dict, x: torch.Tensor, y: torch.Tensor):
    """fn over (x, y) in batches, one float64 per example (the mean of a wider output), or None when
    fn's output is not per example. Noise streams and torch's generator are put back afterwards, so
    the run's later stages (baselines, evaluation) draw what they would have drawn."""
    saved = [(memo.gen.get_state(), dict(memo.entries)) for memo in prog.memos]
    out = []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for i in range(0, len(x), EVAL_BATCH):
                xb, yb = x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]
                w = fn(Ctx(params, metas, xb, yb))
                if not torch.is_tensor(w) or w.dim() == 0 or w.shape[0] != len(xb):
                    return None
                out.append(w.reshape(len(xb), -1).double().mean(1).cpu())
    finally:
        for memo, (state, entries) in zip(prog.memos, saved):
            memo.gen.set_state(state)
            memo.entries = entries
    return torch.cat(out) if out else None


def _rounded(values: list[float]) -> list[float]:
    # six significant digits: a histogram needs no more, and 100k examples stay a small file
    return [float(f"{v:.6g}") for v in values]


# ---- walking IR expressions ----------------------------------------------------------------------
def _nodes(e):
    """Every IR node of an expression, `e` first (augmentation arguments included)."""
    yield e
    if not attrs.has(type(e)):
        return
    for f in attrs.fields(type(e)):
        child = getattr(e, f.name)
        children = child.values() if isinstance(child, dict) else child if isinstance(child, tuple) else (child,)
        for c in children:
            if attrs.has(type(c)):
                yield from _nodes(c)


def _refs(e) -> set[str]:
    """The lets an expression names directly."""
    return {n.name for n in _nodes(e) if isinstance(n, ir.LetRef)}


def _applies(e, network: str, lets: dict, seen: frozenset = frozenset()) -> bool:
    """Whether `e` applies `network`, directly or through the lets it names."""
    if any(isinstance(n, ir.Apply) and n.module == network for n in _nodes(e)):
        return True
    return any(_applies(lets[r], network, lets, seen | {r}) for r in _refs(e) - seen if r in lets)


def _uses(e, let: str, lets: dict, seen: frozenset = frozenset()) -> bool:
    """Whether `e` names the let `let`, directly or through other lets."""
    refs = _refs(e)
    return let in refs or any(_uses(lets[r], let, lets, seen | {r}) for r in refs - seen if r in lets)
