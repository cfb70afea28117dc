"""Compiler speed: the issue's three targets, each the best of several repeats (the machine is shared).

1. parse + check + lower of a generated 1,000-line spec (the quickstart plus `let` declarations): < 50 ms
2. expanding a 10,000-objective space (12,000 combinations, one exclude rule removing 2,000): < 0.5 s
3. `mptc check specs/quickstart.mpt` as a whole process, wall time: < 0.3 s; it never imports torch

    .venv/bin/python benchmarks/compiler_speed.py [--repeat 15]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.mpt"
TARGETS = {"compile_1000_lines": 0.050, "expand_10000_objectives": 0.5, "mptc_check_process": 0.3}


def best(fn, repeat: int) -> float:
    """The least wall time of `repeat` calls (noise on a shared machine only ever adds time)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def long_spec(lines: int = 1000) -> str:
    """The quickstart with `let` declarations added until it has `lines` lines, let i using let i // 10 (a
    tree three levels deep: check.py shapes lets recursively, and a chain of ~1,000 lets exhausts Python's
    recursion limit) and the last one weighting the PT loss."""
    base = QUICKSTART.read_text().replace("let task_weight = 2 * sigmoid(w)", "let t0 = 2 * sigmoid(w)")
    n = lines - len(base.splitlines())
    lets = [f"let t{i} = 0.5 * t{i // 10} + sigmoid(w) / {i % 7 + 1}" for i in range(1, n + 1)]
    text = base.replace("let t0 = 2 * sigmoid(w)", "\n".join(["let t0 = 2 * sigmoid(w)", *lets]))
    return text.replace("mean(task_weight *", f"mean(t{n} *")


def big_space() -> str:
    """A space of 10 x 10 x 10 x 12 combinations, minus 2,000: 10,000 objectives."""
    names = lambda p, k: ", ".join(f"{p}{i}" for i in range(k))  # noqa: E731
    return (f"space big = data{{{names('d', 10)}}} x transform{{{names('t', 10)}}} x represent{{{names('r', 10)}}}"
            f" x output{{{names('o', 12)}}} exclude output in {{o10, o11}}")


def compile_1000_lines(repeat: int) -> dict:
    """parse + check + lower, and each stage alone (the best of each, with the cyclic garbage collector
    off as compile_spec runs them)."""
    from mptc.compiler.check import check
    from mptc.compiler.lower import _no_cycle_collection, compile_spec, lower
    from mptc.compiler.parse import parse
    text = long_spec()
    assert len(text.splitlines()) == 1000
    compile_spec(text, "long.mpt")  # warm: the grammar is loaded once per process
    tree = parse(text, "long.mpt")
    checked = check(tree)
    total = best(lambda: compile_spec(text, "long.mpt"), repeat)
    with _no_cycle_collection():
        return {"compile_1000_lines": total,
                "  parse": best(lambda: parse(text, "long.mpt"), repeat),
                "  check": best(lambda: check(tree), repeat),
                "  lower": best(lambda: lower(checked), repeat)}


def expand_10000_objectives(repeat: int) -> float:
    from mptc.compiler.parse import parse
    from mptc.compiler.space import expand
    text = big_space()
    assert len(expand(parse(text, "s.mpt").items[0], []).objectives) == 10_000
    return best(lambda: expand(parse(text, "s.mpt").items[0], []), repeat)


def check_process(repeat: int) -> float:
    cmd = [sys.executable, "-m", "mptc", "check", str(QUICKSTART)]
    probe = ("import sys, runpy; sys.argv = ['mptc', 'check', %r]\ntry: runpy.run_module('mptc', run_name='__main__')\n"
             "except SystemExit: pass\nassert 'torch' not in sys.modules, 'mptc check imported torch'" % str(QUICKSTART))
    subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True)
    return best(lambda: subprocess.run(cmd, check=True, capture_output=True), repeat)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args()
    rows = {**compile_1000_lines(args.repeat),
            "expand_10000_objectives": expand_10000_objectives(args.repeat),
            "mptc_check_process": check_process(args.repeat)}
    print(f"| measurement | best of {args.repeat} | target | |\n|---|---|---|---|")
    for name, seconds in rows.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"< {target * 1000:.0f} ms | {'ok' if seconds < target else 'OVER'}"
        print(f"| {name} | {seconds * 1000:.1f} ms | {verdict or ' |'} |")


if __name__ == "__main__":
    main()
