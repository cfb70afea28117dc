"""`mptc fmt` and `mptc space`: the commands that read specs without compiling them (cli.py wires them in).

    mptc fmt [--check] FILES...   rewrite specs in canonical layout, comments kept; --check: exit 1 if one would change
    mptc space SPEC [--json]      the objectives each `space` declaration expands to, what each exclude removed
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from mptc.errors import RunError, SpecError, SpecErrors

EXIT_CHANGED = 1


def add_commands(sub) -> None:
    """Registers `fmt` and `space` on the CLI's subparsers."""
    p = sub.add_parser("fmt", help="rewrite specs in canonical layout (comments kept)",
                       description="Rewrites each spec in place in canonical layout, keeping its comments. "
                                   "A folder stands for the .mpt files under it.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would be reformatted")
    p.set_defaults(fn=cmd_fmt)
    p = sub.add_parser("space", help="list the objectives of each space declaration")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true", help="print the expansion as JSON")
    p.set_defaults(fn=cmd_space)


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
    from mptc.cli import _read, render
    from mptc.compiler.printer import format_text
    text = ""
    try:
        text = _read(path)
        new = format_text(text, path)
        if new == text:
            return "same"
        if not check:
            _write_atomically(path, new)
    except SpecError as e:
        print(render(e, {path: text}), file=sys.stderr)
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
    for decl in (i for i in spec.items if isinstance(i, ast.SpaceDecl)):
        found = expand(decl, errors)
        stages = {}
        for factor in decl.factors:
            stages.setdefault(factor.stage, list(dict.fromkeys(c.name for c in factor.choices)))
        rules = [{"rule": print_expr(x), "removed": n} for x, n in zip(decl.excludes, found.removed)]
        out.append({"name": decl.name, "stages": stages, "combinations": math.prod(map(len, stages.values())),
                    "excludes": rules, "objectives": list(found.objectives)})
    if errors:
        raise SpecErrors(errors, "")
    return out


def cmd_space(args: argparse.Namespace) -> int:
    from mptc.cli import _read
    from mptc.compiler.parse import parse
    spaces = expansions(parse(_read(args.spec), args.spec))
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
            print(f"  removed {rule['removed']}: {rule['rule']}")
        for name in s["objectives"]:
            print(f"  {name}")
    return 0
