"""`mptc fmt` and `mptc space`: the commands that read specs without compiling them (cli.py wires them in).

    mptc fmt [--check] FILES...   rewrite specs in canonical layout, comments kept; --check: exit 1 if one would change
    mptc space SPEC [--json]      the objectives each `space` declaration expands to, what each exclude removed
    mptc compare SPEC... [--seeds N]   run specs over seeds; the methods' table in markdown and CSV
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

from mptc.cli import path_arg
from mptc.errors import DuplicateName, RunError, SpecError, SpecErrors

EXIT_CHANGED = 1


def fmt_arguments(p: argparse.ArgumentParser) -> None:
    """`mptc fmt`'s arguments (registered in cli.COMMANDS)."""
    p.description = ("Rewrites each spec in place in canonical layout, keeping its comments. A folder stands "
                     "for the .mpt files under it.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would be reformatted")
    p.set_defaults(fn=cmd_fmt)


def space_arguments(p: argparse.ArgumentParser) -> None:
    """`mptc space`'s arguments."""
    p.add_argument("spec")
    p.add_argument("--json", action="store_true", help="print the expansion as JSON")
    p.set_defaults(fn=cmd_space)


def compare_arguments(p: argparse.ArgumentParser) -> None:
    """`mptc compare`'s arguments."""
    p.description, p.formatter_class = COMPARE_DOC, argparse.RawDescriptionHelpFormatter
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--seeds", type=int, default=5, help="seeds per spec (default 5)")
    p.add_argument("--vary", nargs="+", action="extend", default=None, metavar="KEY[+K]",
                   help="keys set to the seed (+K) per run (default: train.seed and every data seed and fold)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fixed override for every run")
    p.add_argument("--out", type=path_arg, default="runs/compare",
                   help="parent of the run directories (default runs/compare)")
    p.add_argument("--csv", type=path_arg, default=None, metavar="FILE", help="also write the CSV table to FILE")
    p.add_argument("--quiet", action="store_true", help="no per-run lines on stderr")
    p.set_defaults(fn=cmd_compare)


# ---- mptc fmt ------------------------------------------------------------------------------------
def _spec_files(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        p = Path(path)
        out += [str(f) for f in sorted(p.rglob("*.mpt")) if f.is_file()] if p.is_dir() else [path]
    return out


def _write_atomically(path: str, text: str) -> None:
    """Replaces the file's content in one rename: an interrupted fmt leaves the old file or the new one."""
    target = Path(path).resolve()  # through a symlink: the link stays a link
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _format_one(path: str, check: bool) -> str:
    """'changed', 'same' or 'failed' (after printing why)."""
    from mptc.sources import Sources, read_spec, render
    from mptc.compiler.printer import format_text
    text = ""
    try:
        text = read_spec(path)
        new = format_text(text, path)
        if new == text:
            return "same"
        if not check:
            _write_atomically(path, new)
    except SpecError as e:
        print(render(e, Sources({path: text})), file=sys.stderr)
        return "failed"
    except (RunError, OSError) as e:
        print(f"mptc: error: {e}" if isinstance(e, RunError) else f"mptc: error: cannot write '{path}': "
              f"{e.strerror or e}", file=sys.stderr)
        return "failed"
    print(f"would reformat {path}" if check else f"reformatted {path}")
    return "changed"


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def cmd_fmt(args: argparse.Namespace) -> int:
    results = [_format_one(path, args.check) for path in _spec_files(args.files)]
    changed, same, failed = (results.count(k) for k in ("changed", "same", "failed"))
    done = "would be reformatted" if args.check else "reformatted"
    kept = "already formatted" if args.check else "left unchanged"
    parts = [f"{_files(changed)} {done}"] * bool(changed) + [f"{_files(same)} {kept}"] * bool(same)
    parts += [f"{_files(failed)} with errors"] * bool(failed)
    print("mptc: " + (", ".join(parts) or "no .mpt files found"), file=sys.stderr)
    if failed:
        return 2
    return EXIT_CHANGED if args.check and changed else 0


# ---- mptc space ----------------------------------------------------------------------------------
def expansions(spec) -> list[dict]:
    """Each space declaration of a parsed spec, expanded: name, stages with their choices, combinations,
    each exclude rule with how many objectives it removed, and the objectives; raises SpecErrors."""
    from mptc.compiler import ast
    from mptc.compiler.printer import print_expr
    from mptc.compiler.space import expand
    errors, out = [], []
    _import_code(spec, errors)                      # a user's own primitives, registered by the spec's imports
    if errors:
        raise SpecErrors(errors, "")
    seen = set()
    for decl in (i for i in spec.items if isinstance(i, ast.SpaceDecl)):
        if decl.name in seen:                           # as `mptc check` says it
            errors.append(DuplicateName(decl.name_span, f"'{decl.name}' is already declared"))
            continue
        seen.add(decl.name)
        found = expand(decl, errors)
        stages = {}
        for factor in decl.factors:
            stages.setdefault(factor.stage, list(dict.fromkeys(c.name for c in factor.choices)))
        rules = [{"rule": print_expr(x), "removed": n} for x, n in zip(decl.excludes, found.removed)]
        rules += [{"rule": print_expr(x), "removed": n, "default": why}
                  for (why, x), n in zip(found.defaults, found.removed[len(decl.excludes):])]
        out.append({"name": decl.name, "stages": stages, "combinations": math.prod(map(len, stages.values())),
                    "excludes": rules, "objectives": list(found.objectives)})
    if errors:
        raise SpecErrors(errors, "")
    return out


def _import_code(spec, errors: list) -> None:
    """Runs the spec's `import`s (the check's first pass), so primitives they register can be named."""
    from mptc.compiler.check import _Checker
    checker = _Checker(spec)
    checker.imports()
    errors += checker.errors


def cmd_space(args: argparse.Namespace) -> int:
    from mptc.sources import read_spec
    from mptc.compiler.parse import parse
    spaces = expansions(parse(read_spec(args.spec), args.spec))
    if args.json:
        print(json.dumps({"spaces": spaces}, indent=2))
        return 0
    if not spaces:
        print(f"{args.spec}: no space declarations")
    for s in spaces:
        n = len(s["objectives"])
        print(f"space {s['name']}: {n} objective{'s' if n != 1 else ''} of {s['combinations']} combinations "
              f"({' x '.join(s['stages'])})")
        for rule in s["excludes"]:
            why = f"   (default: {rule['default']})" if "default" in rule else ""
            print(f"  removed {rule['removed']}: {rule['rule']}{why}")
        for name in s["objectives"]:
            print(f"  {name}")
    return 0


# ---- mptc compare --------------------------------------------------------------------------------
COMPARE_DOC = """Runs each spec once per seed and prints every method of its `evaluate ... against` list (the
meta-learned run first) as mean +- stderr over the seeds: a markdown table, then the same as CSV with
the run directories, like Table 1 of Raghu et al. (2021).

Seed S (0..N-1) sets every varied key to its value in the spec plus S: by default `train.seed` and the
`seed` and `fold` arguments of every data declaration (so the data, the training and, with
tasks.heldout, the held-out task group change together; datasets that share a seed keep sharing it).
`--vary KEY[+K]` instead sets exactly the keys given, KEY to S+K (K an integer, default 0). Every spec,
with its varied keys at the first and the last seed, is checked before the first run starts. Run
directories: OUT/<spec>/seed-S.

    mptc compare specs/paper/ppi_full_access.mpt specs/paper/ppi_partial_access.mpt --seeds 5
"""
VARIED_DATA_ARGS = ("seed", "fold")


def default_vary(plan) -> list[str]:
    """`train.seed+BASE` and `data.NAME.ARG+BASE` for each data seed/fold argument, BASE its value in the plan."""
    out = [f"train.seed+{plan.train.seed}"]
    for ds in plan.datasets:
        for arg in VARIED_DATA_ARGS:
            value = ds.source.args.get(arg)
            if isinstance(value, int) and not isinstance(value, bool):
                out.append(f"data.{ds.name}.{arg}+{value}")
    return out


VARY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*(?:\+\s*(-?[0-9]{1,4000}))?\s*")


def parse_vary(vary: list[str]) -> list[tuple[str, int]]:
    """(key, K) of each `--vary KEY[+K]` item; raises RunError naming the form for one that is not.

        >>> parse_vary(["train.seed", "data.ft.seed+100"])
        [('train.seed', 0), ('data.ft.seed', 100)]
    """
    out = []
    for item in vary:
        m = VARY.fullmatch(item)  # K's digits bounded: int() refuses 4300 and more
        if m is None:
            raise RunError(f"--vary {item!r}: expected KEY or KEY+K with K an integer, "
                           "e.g. --vary train.seed data.pt.seed+100")
        if any(key == m[1] for key, _ in out):
            raise RunError(f"--vary names {m[1]} twice: one offset per key")
        out.append((m[1], int(m[2] or 0)))
    return out


def seed_overrides(vary: list[str], seed: int) -> list[str]:
    """`--set` strings for one seed: `key` -> `key=seed`, `key+k` -> `key=seed+k`.

        >>> seed_overrides(["train.seed", "data.ft.seed+100"], 2)
        ['train.seed=2', 'data.ft.seed=102']
    """
    return [f"{key}={seed + offset}" for key, offset in parse_vary(vary)]


def _methods(evals: dict) -> dict:
    """The per-method entries of an eval.json (other keys are the run's headline figures)."""
    return {m: e for m, e in evals.items() if isinstance(e, dict) and {"metric", "mean"} <= set(e)}


def compare_rows(runs: dict) -> list[dict]:
    """Table rows from `{spec: [{"dir", "eval", "diagnostics"}, ...per seed]}`: one per (spec, method)
    with the mean and stderr over seeds of the method's FT-test mean, its training wall time, the runs.

        >>> run = {"dir": "r0", "eval": {"meta": {"metric": "auroc", "mean": 0.8, "train_s": 2.0}}, "diagnostics": {}}
        >>> compare_rows({"s": [run, {**run, "dir": "r1"}]})[0]["mean"]
        0.8
    """
    from mptc.runtime.evaluate import summarize
    rows = []
    for spec, seeds in runs.items():
        methods = _methods(seeds[0]["eval"])
        for method, first in methods.items():
            values = [_methods(r["eval"])[method]["mean"] for r in seeds]
            times = [_methods(r["eval"])[method].get("train_s", math.nan) for r in seeds]
            rows.append({"spec": spec, "method": method, "metric": first["metric"], **summarize(values),
                         "values": values, "train_s": round(sum(times) / len(times), 3),
                         "runs": [str(r["dir"]) for r in seeds]})
    return rows


def diagnostic_rows(runs: dict) -> list[dict]:
    """Mean and stderr over seeds of each numeric diagnostic (e.g. task weights vs planted relevance)."""
    from mptc.runtime.evaluate import summarize
    rows = []
    for spec, seeds in runs.items():
        for key, value in seeds[0]["diagnostics"].items():
            if isinstance(value, (int, float)):
                rows.append({"spec": spec, "name": key, **summarize([r["diagnostics"][key] for r in seeds])})
    return rows


def markdown_table(rows: list[dict], diagnostics: list[dict] = ()) -> str:
    """The methods as a markdown table (Table 1 style), then the diagnostics and the wall-time ratio.

        >>> print(markdown_table([{"spec": "s", "method": "meta", "metric": "auroc", "mean": 0.8,
        ...     "stderr": 0.01, "seeds": 5, "train_s": 3.0, "runs": []}]))
        | spec | method | auroc (mean ± stderr) | seeds | train s |
        |---|---|---|---|---|
        | s | meta | 80.00 ± 1.00 | 5 | 3.0 |
    """
    metric = rows[0]["metric"] if rows else "metric"
    scale = 100 if metric in ("auroc", "accuracy") else 1  # the paper's points
    out = [f"| spec | method | {metric} (mean ± stderr) | seeds | train s |", "|---|---|---|---|---|"]
    out += [f"| {r['spec']} | {r['method']} | {_spread(r, scale, 2)} | "
            f"{r['seeds']} | {r['train_s']:.1f} |" for r in rows]
    for spec in dict.fromkeys(r["spec"] for r in rows):
        by = {r["method"]: r for r in rows if r["spec"] == spec}
        first = next(iter(by))
        if "pretrain" in by and first != "pretrain" and by["pretrain"]["train_s"] > 0:
            out.append(f"\n{spec}: {first} / pretrain wall time = "
                       f"{by[first]['train_s'] / by['pretrain']['train_s']:.2f}x")
    if diagnostics:
        out += ["", "| spec | diagnostic | mean ± stderr | seeds |", "|---|---|---|---|"]
        out += [f"| {d['spec']} | {d['name']} | {_spread(d, 1, 3)} | {d['seeds']} |" for d in diagnostics]
    return "\n".join(out)


def _spread(row: dict, scale: float, digits: int) -> str:
    """mean ± stderr, or the mean alone where every seed gave it (`summarize`'s "degenerate").

        >>> _spread({"mean": 1.0, "stderr": 0.0, "seeds": 3, "degenerate": True}, 1, 3)
        '1.000 (all equal)'
    """
    if row.get("degenerate"):
        return f"{scale * row['mean']:.{digits}f} (all equal)"
    return f"{scale * row['mean']:.{digits}f} ± {scale * row['stderr']:.{digits}f}"


CSV_FIELDS = ("spec", "method", "metric", "mean", "stderr", "seeds", "train_s", "values", "runs")


def csv_table(rows: list[dict]) -> str:
    """The rows as CSV; `values` and `runs` (the run directories) joined with ';'.

        >>> print(csv_table([{"spec": "s", "method": "meta", "metric": "auroc", "mean": 0.8, "stderr": 0.01,
        ...     "seeds": 2, "train_s": 3.0, "values": [0.79, 0.81], "runs": ["a", "b"]}]), end="")
        spec,method,metric,mean,stderr,seeds,train_s,values,runs
        s,meta,auroc,0.8,0.01,2,3.0,0.79;0.81,a;b
    """
    import csv
    import io
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "values": ";".join(f"{v:.6g}" for v in r["values"]), "runs": ";".join(r["runs"])})
    return buf.getvalue()


def seed_jobs(spec: str, text: str, seeds: int, sets: list[str], vary: list[str] | None, out: Path) -> list:
    """The grid's jobs of one spec: one per seed (see COMPARE_DOC), into OUT/<spec>/seed-S."""
    from mptc.compiler.lower import compile_spec
    from mptc.grid import Job
    base = compile_spec(text, spec, sets)
    if base.evaluate is None:
        raise RunError(f"compare: '{spec}' has no evaluate clause, so its runs have nothing to compare")
    vary = default_vary(base) if vary is None else vary
    return [Job(spec, (*sets, *seed_overrides(vary, seed)), out / Path(spec).stem / f"seed-{seed}")
            for seed in range(seeds)]


def _results(run: Path, sets) -> dict:
    return {"dir": run, "eval": json.loads((run / "eval.json").read_text()),
            "diagnostics": json.loads((run / "diagnostics.json").read_text()), "sets": list(sets)}


def _means(run: Path) -> str:
    return "  ".join(f"{m} {e['mean']:.4f}" for m, e in _methods(json.loads((run / "eval.json").read_text())).items())


def cmd_compare(args: argparse.Namespace) -> int:
    import time
    from mptc.grid import compile_all, run_all
    from mptc.sources import read_spec
    if args.seeds < 1:
        raise RunError(f"--seeds must be >= 1, got {args.seeds}")
    names = [Path(s).stem for s in args.specs]
    if len(set(names)) != len(names):
        raise RunError("compare: two specs share a file name; their run directories would collide")
    if args.vary is not None:
        parse_vary(args.vary)
    if args.csv:                                        # refused now, not after every seed has run
        csv_file = Path(args.csv)
        if csv_file.is_dir() or not csv_file.parent.resolve().is_dir():
            raise RunError(f"--csv '{args.csv}': " + ("a folder, not a file" if csv_file.is_dir() else
                                                      f"no folder '{csv_file.parent}' to write it in"))
    texts = {spec: read_spec(spec) for spec in args.specs}
    jobs = [job for spec in args.specs
            for job in seed_jobs(spec, texts[spec], args.seeds, args.set or [], args.vary, Path(args.out))]
    plans = compile_all(jobs, texts)      # every spec at every seed checked before the first run starts
    start, cpu = time.perf_counter(), time.process_time()
    done = run_all(jobs, plans, texts, args.quiet, _means)
    runs: dict = {}
    for job, run in zip(jobs, done):
        runs.setdefault(Path(job.spec).stem, []).append(_results(run, job.sets))
    rows = compare_rows(runs)
    print(markdown_table(rows, diagnostic_rows(runs)))
    print()
    text = csv_table(rows)
    print(text, end="")
    if args.csv:
        Path(args.csv).write_text(text)
    print(f"\n{len(args.specs)} spec(s) x {args.seeds} seed(s): {time.perf_counter() - start:.0f} s wall, "
          f"{time.process_time() - cpu:.0f} s CPU")
    return 0
