"""`mptc sweep SPEC --set KEY=V1,V2 --set KEY=A..B [--out DIR]`: one run per combination of the values.

Each `--set` gives a key (any `mptc run --set` key) and a comma list of values, where an item `A..B` is
every integer from A to B inclusive; the runs are the cartesian product of the lists, the first `--set`
varying slowest; at most 10,000 runs, counted before any range is expanded. Every combination is compiled
before anything runs, so a bad value fails the sweep at once (rendered like any spec error, exit 2). The
runs go one after another into DIR/NNN-key=value-..., and DIR/summary.json and DIR/summary.md list them
sorted by the meta-objective: the final FT-validation loss of the run's metrics.jsonl (lower first).

    mptc sweep specs/quickstart.mpt --set meta_optimizer.lr=0.1,1,10 --set train.seed=0..4 --out runs/lr
"""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

from mptc.cli import path_arg
from mptc.errors import BadArgument, RunError, Span, SpecError, SpecErrors

RANGE = re.compile(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*")
MAX_RUNS = 10_000  # a typo such as 0..100000 should fail before compiling a hundred thousand plans
MAX_DIGITS = 4000  # a range bound's digits: below the 4300 that int() accepts


def sweep_arguments(p) -> None:
    """`mptc sweep`'s arguments (registered in cli.COMMANDS)."""
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("spec")
    p.add_argument("--set", action="append", metavar="KEY=V1,V2|A..B", default=[],
                   help="a key and its values: a comma list, A..B for the integers A to B (repeatable)")
    p.add_argument("--out", type=path_arg, default=None, help="folder of the runs and the summary (default runs/sweep-<spec>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no per-run lines on stderr")
    p.set_defaults(fn=cmd_sweep)


# ---- expanding the --set lists ------------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """The top-level comma items of a value list: commas inside brackets, parentheses or strings stay.

    >>> split_values('0.1,1, 10'), split_values('[64, 8],[32]'), split_values('adam(lr: 1, beta1: 0.5)')
    (['0.1', '1', ' 10'], ['[64, 8]', '[32]'], ['adam(lr: 1, beta1: 0.5)'])
    """
    items, depth, start, quoted = [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch in "([{":
            depth += 1
        elif not quoted and ch in ")]}":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            items.append(text[start:i])
            start = i + 1
    return items + [text[start:]]


def _error(item: str, start: int, end: int, message: str) -> SpecError:
    """An error in the command line's `--set ITEM`, rendered with carets under ITEM[start:end]."""
    from mptc.compiler.language import OVERRIDE_PREFIX
    path = OVERRIDE_PREFIX + item
    return BadArgument(Span(path, 1, start + 1, 1, max(end, start + 1) + 1), message)


def values_of(item: str, errors: list) -> tuple[str, list[str]]:
    """(key, values) of one `KEY=VALUES` item, ranges expanded; a malformed part is appended to `errors`.

    >>> values_of("train.seed=0..2,7", [])
    ('train.seed', ['0', '1', '2', '7'])
    """
    key, parts = _parts(item, errors)
    return key, _expand(parts)


def _parts(item: str, errors: list) -> tuple[str, list]:
    """(key, parts) of one `KEY=VALUES` item, each part a value or an unexpanded range(A, B + 1)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip() or not text.strip():
        errors.append(_error(item, 0, len(item), "--set takes KEY=VALUES, e.g. --set train.seed=0..4"))
        return key, []
    parts, at = [], len(key) + 1
    for part in split_values(text):
        m = RANGE.fullmatch(part)
        if not part.strip():
            errors.append(_error(item, at, at + 1, "empty value in the list (a stray comma?)"))
        elif m and max(len(m[1]), len(m[2])) > MAX_DIGITS:  # int() refuses 4300 digits and more
            errors.append(_error(item, at, at + len(part), f"range bound too long (more than {MAX_DIGITS} digits)"))
        elif m and int(m[1]) > int(m[2]):
            errors.append(_error(item, at, at + len(part), f"empty range {part.strip()}: A..B needs A <= B"))
        else:
            parts.append(range(int(m[1]), int(m[2]) + 1) if m else part.strip())
        at += len(part) + 1
    return key.strip(), parts


def _count(parts: list) -> int:
    """How many values the parts give, by arithmetic (len() of a range over sys.maxsize overflows)."""
    return sum(p.stop - p.start if isinstance(p, range) else 1 for p in parts)


def _expand(parts: list) -> list[str]:
    return [v for p in parts for v in (map(str, p) if isinstance(p, range) else [p])]


def combinations(items: list[str]) -> list[list[str]]:
    """Every combination as a list of `KEY=VALUE` overrides, the first item varying slowest. The number of
    combinations is counted before any list is expanded, so a typo such as 0..999999999 fails at once.

    >>> combinations(["a.b=1,2", "c.d=0..1"])
    [['a.b=1', 'c.d=0'], ['a.b=1', 'c.d=1'], ['a.b=2', 'c.d=0'], ['a.b=2', 'c.d=1']]
    """
    errors: list = []
    lists = [_parts(item, errors) for item in items]
    if errors:
        raise SpecErrors(errors, "")
    keys = [key for key, _ in lists]
    twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if twice is not None:                               # the later value would win in every run: duplicates
        raise RunError(f"--set {twice} is given twice: give its values in one --set ({twice}=A,B,...)")
    counts = [_count(parts) for _, parts in lists]
    if math.prod(counts) > MAX_RUNS:
        sizes = ", ".join(f"{key}: {n} values" for (key, _), n in zip(lists, counts))
        raise RunError(f"the sweep has {math.prod(counts)} runs ({sizes}), more than the {MAX_RUNS} supported")
    values = [(key, _expand(parts)) for key, parts in lists]
    return [[f"{k}={v}" for (k, _), v in zip(values, combo)] for combo in itertools.product(*(v for _, v in values))]


def validate(text: str, path: str, combos: list[list[str]], out: Path) -> tuple[list, list]:
    """(jobs, plans) of every combination; raises SpecErrors with every distinct error of all of them.
    Each value is compiled alone first, so that a bad value is reported once without compiling the
    product of all the others with it."""
    from mptc.grid import Job, compile_all
    singles = [Job(path, (item,), out) for item in dict.fromkeys(s for sets in combos for s in sets)]
    compile_all(singles, {path: text})
    jobs = [Job(path, tuple(sets), out / run_name(i, sets)) for i, sets in enumerate(combos)]
    return jobs, compile_all(jobs, {path: text})


# ---- running and summarising ----------------------------------------------------------------------
def run_name(index: int, sets: list[str]) -> str:
    """A run folder's name: its number and its overrides, e.g. `003-lr=10-seed=0`.

    >>> run_name(3, ["meta_optimizer.lr=10", "train.seed=0"])
    '003-lr=10-seed=0'
    """
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in (s.partition("=") for s in sets)]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "-".join([f"{index:03d}", *parts]))[:120]


def final_objective(run: Path) -> float | None:
    """The last logged FT-validation loss (the meta-objective) of a run, or None if none was logged."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [r["ft_val_loss"] for r in rows if r.get("ft_val_loss") is not None]
    return values[-1] if values else None


def summary_row(sets: list[str], run: Path) -> dict:
    """One run's line of the summary: overrides, meta-objective, eval.json means, run directory."""
    evals_path = run / "eval.json"
    evals = json.loads(evals_path.read_text()) if evals_path.exists() else {}
    means = {m: e["mean"] for m, e in evals.items() if isinstance(e, dict) and "mean" in e}
    metric = next((e["metric"] for e in evals.values() if isinstance(e, dict) and "metric" in e), None)
    return {"overrides": dict(s.split("=", 1) for s in sets), "meta_objective": final_objective(run),
            "metric": metric, "eval": means, "run": str(run)}


def _order(row: dict):
    value = row["meta_objective"]
    return (value is None or not math.isfinite(value), value if value is not None else 0.0)


def markdown(rows: list[dict], spec: str) -> str:
    """The summary table, rows as given (sorted by the caller)."""
    keys = list(rows[0]["overrides"]) if rows else []
    methods = list(dict.fromkeys(m for r in rows for m in r["eval"]))
    metric = next((r["metric"] for r in rows if r["metric"]), "")
    head = ["#", *keys, "meta-objective (final ft_val_loss)", *(f"{m} {metric}".strip() for m in methods), "run"]
    lines = [f"# Sweep of {spec}", "", f"{len(rows)} runs, best meta-objective first.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        obj = "n/a" if r["meta_objective"] is None else f"{r['meta_objective']:.6g}"
        evals = [f"{r['eval'][m]:.4f}" if m in r["eval"] else "" for m in methods]
        lines.append("| " + " | ".join([str(i), *r["overrides"].values(), obj, *evals, r["run"]]) + " |")
    return "\n".join(lines) + "\n"


def sweep(spec: str, text: str, items: list[str], out: Path, quiet: bool = True) -> list[dict]:
    """Validates every combination, runs them in order, writes out/summary.{json,md}; returns the rows sorted."""
    from mptc.grid import run_all
    combos = combinations(items)
    jobs, plans = validate(text, spec, combos, out)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"sweep folder '{out}' already exists and is not empty; choose another --out")
    runs = run_all(jobs, plans, {spec: text}, quiet, lambda run: f"meta-objective {final_objective(run)}")
    rows = [summary_row(sets, run) for sets, run in zip(combos, runs)]
    rows.sort(key=_order)
    summary = {"spec": spec, "sets": items, "objective": "final ft_val_loss (metrics.jsonl), lower is better",
               "runs": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(rows, spec))
    return rows


def cmd_sweep(args) -> int:
    from mptc.sources import read_spec
    from mptc.runtime.rundir import default_out
    text = read_spec(args.spec)
    out = Path(args.out) if args.out else default_out(f"sweep-{Path(args.spec).stem}")
    rows = sweep(args.spec, text, args.set, out, quiet=args.quiet)
    print(markdown(rows, args.spec), end="")
    print(f"summary: {out / 'summary.md'}")
    return 0
