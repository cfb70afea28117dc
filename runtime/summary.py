"""The summary of a run, in plain text: what `mptc run` prints on stdout at the end (with `--quiet` too) and
writes to DIR/summary.txt (docs/runtime.md, "The summary").

    quickstart: Meta-learned PT task weights on a planted synthetic multitask problem

    Evaluation: auroc on ft (test split), fine-tuned over 5 seeds
      meta         0.8586 ± 0.0004  (5 seeds)
      no_pretrain  0.8386 ± 0.0014  (5 seeds)
      pretrain     0.8527 ± 0.0007  (5 seeds)
      meta - pretrain (the best baseline): +0.0059 ± 0.0004, paired over 5 seeds

    Learned meta-parameters
      task_weight: 100 values, one per PT task, mean 0.6423 (1 at the start)
        highest: task 12 1.955, task 39 1.944, task 15 1.94, task 26 1.933, task 5 1.828
        lowest:  task 1 0.01407, task 90 0.02025, task 36 0.02339, task 96 0.02749, task 18 0.03466

    Time: meta-training 3.7 s, baseline no_pretrain 0 s, baseline pretrain 1.8 s, evaluation 5.7 s (total 11.1 s)

    Files in runs/quickstart-20250101-120000:
      spec.mpt ir.json metrics.jsonl meta.json checkpoint.pt diagnostics.json eval.json summary.txt

A scalar meta-parameter is shown as `phi: 0 → 87.31` (at the start → at the end). A mean ± stderr over
seeds whose values are all equal is shown as `0.7312 (all 3 seeds equal)`: a stderr of 0 there says
nothing about the spread (`evaluate.summarize`'s "degenerate").
"""
from __future__ import annotations

from pathlib import Path

from mptc.runtime.metajson import vectors

SHOWN = 5           # task weights shown at each end of a vector
FILES = ("spec.mpt", "ir.json", "metrics.jsonl", "meta.json", "checkpoint.pt", "diagnostics.json",
         "example_weights.json", "eval.json", "summary.txt")   # the order the summary lists them in
ASCII = {"±": "+-", "→": "->"}                                  # for a stream that cannot write them


def summary_text(plan, method: str, evals: dict, meta: dict, start: dict, times: dict, out: Path,
                 files: list[str]) -> str:
    """The summary (module docstring) of run `out` of `plan`: `method` ("meta", or "search") and its
    eval.json `evals`, the meta.json content `meta` and the same at the start, `times` (phase -> seconds,
    in order) and the names of the files in the run directory."""
    parts = [_header(plan), _evaluation(plan, method, evals), _learned(plan, meta, start), _times(times),
             _files(out, files)]
    return "\n\n".join(p for p in parts if p) + "\n"


def for_stream(text: str, encoding: str | None) -> str:
    """`text`, with ± and → spelt +- and -> where `encoding` cannot write them (a C locale).

        >>> for_stream("0.7 ± 0.1", "ascii"), for_stream("0.7 ± 0.1", "utf-8")
        ('0.7 +- 0.1', '0.7 ± 0.1')
    """
    try:
        text.encode(encoding or "utf-8")
        return text
    except (UnicodeEncodeError, LookupError):
        for char, spelt in ASCII.items():
            text = text.replace(char, spelt)
        return text


def result(entry: dict, unit: str = "seed", signed: bool = False) -> str:
    """A mean over seeds as shown: with its stderr, or saying why it has none.

        >>> result({"mean": 0.73123, "stderr": 0.0012, "seeds": 3})
        '0.7312 ± 0.0012  (3 seeds)'
        >>> result({"mean": 0.73123, "stderr": 0.0, "seeds": 3, "degenerate": True})
        '0.7312  (all 3 seeds equal)'
        >>> result({"mean": 0.01, "stderr": 0.0, "seeds": 1}, signed=True)
        '+0.0100  (1 seed)'
    """
    n = entry.get("seeds", len(entry.get("values", ())))
    mean = f"{entry['mean']:+.4f}" if signed else f"{entry['mean']:.4f}"
    if entry.get("degenerate"):
        return f"{mean}  (all {n} {unit}s equal)"
    if n == 1:
        return f"{mean}  (1 {unit})"
    return f"{mean} ± {entry['stderr']:.4f}  ({n} {unit}s)"


def paired(a: list[float], b: list[float]) -> dict:
    """`summarize` of the per-seed differences a - b (seed s of each method is the same draw).

        >>> paired([0.8, 0.9], [0.7, 0.7])
        {'mean': 0.15, 'stderr': 0.05, 'seeds': 2}
    """
    from mptc.runtime.evaluate import summarize
    return summarize([x - y for x, y in zip(a, b)])


def methods(evals: dict) -> dict:
    """The per-method entries of an eval.json (its other keys are the run's headline figures)."""
    return {m: e for m, e in evals.items() if isinstance(e, dict) and {"metric", "mean"} <= set(e)}


# ---- the sections ---------------------------------------------------------------------------------------
def _header(plan) -> str:
    return f"{plan.name}: {plan.doc}" if plan.doc else plan.name


def _evaluation(plan, method: str, evals: dict) -> str:
    found = methods(evals)
    lines = []
    if found:
        first = next(iter(found.values()))
        args = plan.evaluate.protocol.args if plan.evaluate else {}
        split = "held-out tasks' test split" if args.get("tasks") == "heldout" else "test split"
        labelled = f", on {args['labels'][0]} labelled examples" if args.get("labels") else ""
        labelled += ", linear probe (encoder frozen)" if args.get("mode") == "linear" else ""
        lines.append(f"Evaluation: {first['metric']} on {plan.objective.data.dataset} ({split}), fine-tuned over "
                     f"{first['seeds']} seed{'s' * (first['seeds'] != 1)}{labelled}")
        width = max(map(len, found))
        lines += [f"  {m:<{width}}  {result(e)}" for m, e in found.items()]
        lines += _versus(method, found)
        lines += _by_labels(evals, first["metric"])
    lines += _headlines(evals)
    return "\n".join(lines)


def _versus(method: str, found: dict) -> list[str]:
    """meta - the best baseline (highest mean), paired over seeds."""
    baselines = {m: e for m, e in found.items() if m != method}
    if method not in found or not baselines:
        return []
    best = max(baselines, key=lambda m: baselines[m]["mean"])
    diff = paired(found[method]["values"], found[best]["values"])
    if diff.get("degenerate") or diff["seeds"] == 1:
        text = result(diff, signed=True)
    else:
        text = f"{diff['mean']:+.4f} ± {diff['stderr']:.4f}, paired over {diff['seeds']} seeds"
    return [f"  {method} - {best} (the best baseline): {text}"]


def _by_labels(evals: dict, metric: str) -> list[str]:
    """`finetune(labels: [...])`: a line per label count, each method's mean ± stderr."""
    rows = evals.get(f"{metric}_by_labels") or {}
    if not rows:
        return []
    def short(c):
        return f"{c['mean']:.4f}" + (" (all equal)" if c.get("degenerate") else
                                     f" ± {c['stderr']:.4f}" if c["seeds"] > 1 else "")
    return ["  by the number of labelled FT-train examples:"] + [
        f"    {n}: " + ", ".join(f"{m} {short(c)}" for m, c in cells.items()) for n, cells in rows.items()]


def _headlines(evals: dict) -> list[str]:
    """The headline figures beside the methods' (headlines.py): restarts, rotation error, weight ratio."""
    lines = []
    if "restarts" in evals:
        r = evals["restarts"]
        ends = ", ".join(f"{i:g} → {f:.4g}" for i, f in zip(r["inits"], r["finals"]))
        lines.append(f"Restarts of {r['meta']} (from → to): {ends}")
    if "rotation_error_deg" in evals:
        lines.append(f"Rotation error (degrees): {result(evals['rotation_error_deg'], unit='init')}")
    if "clean_over_noisy_weight" in evals:
        w = evals["clean_over_noisy_weight"]
        lines.append(f"Weights of clean over noisy examples: {w['ratio']:.4g} (mean {w['clean_mean']:.4g} over "
                     f"{w['noisy_mean']:.4g}; AUROC of the weights for clean {w['auroc_clean']:.4f})")
    return lines


def _learned(plan, meta: dict, start: dict) -> str:
    lets = {let.name for let in plan.lets if let.meta_only}
    vecs, before = vectors(meta), vectors(start)
    lengths = {len(v) for n, (_, v) in vecs.items() if n in lets}
    lines = []
    for name, (names, values) in vecs.items():
        if name not in lets and len(values) in lengths:   # the raw vector a `let` transforms: that `let` says it
            continue
        factored = next((m for m in plan.metas if m.kind == "factored" and name in (m.name, f"{m.name}.stages")), None)
        what = None if factored is None else ("one per objective of space " + factored.space
                                              if name == factored.name else "one per stage choice (logits)")
        lines += _vector(name, names, values, before.get(name, (None, None))[1], what)
    for name, value in meta.items():
        if isinstance(value, (int, float)):
            was = start.get(name)
            lines.append(f"  {name}: {_num(was)} → {_num(value)}" if isinstance(was, (int, float))
                         else f"  {name}: {_num(value)}")
    lines += [f"  {m.name}: a network (its weights are in checkpoint.pt)" for m in plan.metas if m.kind == "network"]
    return "\n".join(["Learned meta-parameters", *lines]) if lines else ""


def _vector(name: str, names: list[str], values: list[float], before, what: str | None = None) -> list[str]:
    """A vector in brief: its mean (and at the start), then the highest and lowest values by name; `what`
    says what its values are (default: one per PT task, when they are named)."""
    tasks = not all(n == str(i) for i, n in enumerate(names))
    what = what or ("one per PT task" if tasks else None)
    mean = sum(values) / len(values)
    was = ""
    if before:
        first = before[0]
        was = f" ({_num(first)} at the start)" if all(b == first for b in before) else \
            f" ({_num(sum(before) / len(before))} at the start)"
    head = f"  {name}: {len(values)} values{', ' + what if what else ''}, mean {_num(mean)}{was}"
    order = sorted(range(len(values)), key=lambda i: -values[i])
    named = [f"{names[i]} {_num(values[i])}" for i in order]
    if len(values) <= 2 * SHOWN:
        return [head, "    " + ", ".join(named)]
    return [head, "    highest: " + ", ".join(named[:SHOWN]), "    lowest:  " + ", ".join(named[-SHOWN:][::-1])]


def _times(times: dict) -> str:
    if not times:
        return ""
    parts = ", ".join(f"{what} {_duration(s)}" for what, s in times.items())
    return f"Time: {parts}" + (f" (total {_duration(sum(times.values()))})" if len(times) > 1 else "")


def _files(out: Path, files: list[str]) -> str:
    order = sorted(files, key=lambda f: (FILES.index(f) if f in FILES else len(FILES), f))
    return f"Files in {out}:\n  " + " ".join(order)


def _num(v) -> str:
    """A meta-parameter's value: four significant digits.

        >>> _num(1.72634), _num(0.0), _num(87.314)
        ('1.726', '0', '87.31')
    """
    return f"{v:.4g}"


def _duration(seconds: float) -> str:
    """Seconds as shown: tenths under a minute, whole seconds beyond.

        >>> _duration(7.84), _duration(133.2), _duration(0.004)
        ('7.8 s', '2 min 13 s', '0 s')
    """
    if seconds >= 59.5:
        whole = int(round(seconds))
        return f"{whole // 60} min {whole % 60} s"
    return f"{seconds:.1f} s" if seconds >= 0.05 else "0 s"
