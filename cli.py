"""The `mptc` command line. The only place errors are rendered; user mistakes exit 2, never a traceback.

    mptc check SPEC                      parse and check (never imports torch)
    mptc compile SPEC --emit ir          the IR plan as JSON
    mptc run SPEC [--out DIR] [--set key=value ...] [--report]
    mptc fmt [--check] FILES...          rewrite specs in canonical layout, comments kept (commands.py)
    mptc space SPEC [--json]             the objectives each space declaration expands to (commands.py)
    mptc compare SPEC... [--seeds N]     specs (and their baselines) over seeds: markdown + CSV table (commands.py)
    mptc sweep SPEC --set KEY=V1,V2 --set KEY=A..B [--out DIR]   one run per combination, summary table (sweep.py)
    mptc report RUN_DIR... [--out DIR]   report.html with plots of one or several runs (report.py)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from mptc.errors import MptcError, RunError, SpecError, SpecErrors

EXIT_USER = 2


def render(error: SpecError, sources: dict[str, str]) -> str:
    """`path:line:col: message`, the source line, carets under the span, a did-you-mean and a note."""
    s = error.span
    out = [f"{s.path}:{s.line}:{s.col}: error: {error.message}"]
    lines = source_lines(sources.get(s.path, ""))
    if 1 <= s.line <= len(lines):
        text = "".join(ch if ch.isprintable() else " " for ch in lines[s.line - 1])  # a tab, \x0c: one column
        end = s.end_col if s.end_line == s.line else len(text) + 1
        width = max(1, min(end, len(text) + 1) - s.col)
        gutter = " " * len(str(s.line))
        out += [f"{s.line} | {text}", f"{gutter} | {' ' * (s.col - 1)}{'^' * width}"]
    if error.hint:
        out.append(f"  = did you mean '{error.hint}'?")
    if error.note:
        out.append(f"  = note: {error.note}")
    return "\n".join(out)


def source_lines(text: str) -> list[str]:
    r"""The lines of a spec as the parser numbers them: lark counts "\n" alone, where str.splitlines also
    splits at \x0c, \x1c-\x1e, \x85, U+2028 and U+2029; a CRLF line's "\r" is not shown.

    >>> source_lines("a\x0cb\r\nc\u2028d")
    ['a\x0cb', 'c\u2028d']
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def _sources(path: str, text: str) -> dict[str, str]:
    from mptc.compiler.overrides import SOURCES
    return {path: text, **SOURCES}


def _fail_user(errors: list[SpecError], sources: dict[str, str]) -> int:
    for e in errors:
        print(render(e, sources), file=sys.stderr)
    n = len(errors)
    print(f"mptc: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
    return EXIT_USER


def _read(path: str) -> str:
    """The text of a spec file, without a UTF-8 byte-order mark; a RunError naming the file otherwise.
    The one reader of spec files (cli, commands, sweep, api)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"cannot read spec '{path}': no such file") from None
    except IsADirectoryError:
        raise RunError(f"cannot read spec '{path}': it is a directory") from None
    except UnicodeDecodeError as e:
        raise RunError(f"cannot read spec '{path}': not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise RunError(f"cannot read spec '{path}': {e.strerror or type(e).__name__}") from None
    return text.removeprefix("\ufeff")


def _compile(args):
    from mptc.compiler.lower import compile_spec
    text = _read(args.spec)
    return text, compile_spec(text, args.spec, getattr(args, "set", None) or [])


def cmd_check(args) -> int:
    _compile(args)
    print(f"{args.spec}: ok")
    return 0


def cmd_compile(args) -> int:
    from mptc.compiler.ir import to_json
    _, plan = _compile(args)
    if args.emit == "python":
        from mptc.emit import cmd_emit
        return cmd_emit(args, plan)
    print(json.dumps(to_json(plan), indent=2))
    return 0


def cmd_run(args) -> int:
    text, plan = _compile(args)
    from mptc.runtime.executor import run_plan
    out = run_plan(plan, text, args.out, progress=not args.quiet)
    print(f"run directory: {out}")
    if args.report:
        from mptc.report import write_report
        print(f"report: {write_report([out])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mptc", description="The meta-parameterized pre-training compiler.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="parse and check a spec")
    p.add_argument("spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the spec")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("compile", help="compile a spec and print its IR")
    p.add_argument("spec")
    p.add_argument("--emit", choices=["ir", "python"], default="ir", help="ir: the plan as JSON; python: a "
                   "standalone PyTorch script of the run (emit.py)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the spec")
    p.set_defaults(fn=cmd_compile)
    p = sub.add_parser("run", help="compile and execute a spec, writing a run directory")
    p.add_argument("spec")
    p.add_argument("--out", default=None, help="run directory (default runs/<spec name>-<time>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the spec")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--report", action="store_true", help="also write DIR/report.html, as `mptc report DIR`")
    p.set_defaults(fn=cmd_run)
    from mptc.commands import add_commands
    add_commands(sub)
    from mptc.sweep import add_sweep
    add_sweep(sub)
    from mptc.report import add_report
    add_report(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM (a scheduler's kill, `timeout`) or SIGHUP (the terminal closed), raised where the run is, so
    every `staging` folder is removed on the way out like after Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_STOPS = {signal.SIGTERM: "terminated", getattr(signal, "SIGHUP", signal.SIGTERM): "terminated (hang-up)"}


def _terminate(signum, frame):
    raise Terminated(signum)


def main(argv=None) -> int:
    if threading.current_thread() is threading.main_thread():
        for signum in _STOPS:
            signal.signal(signum, _terminate)
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except KeyboardInterrupt:
        print("mptc: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"mptc: {_STOPS[e.signum]}", file=sys.stderr)
        return 128 + e.signum
    except BrokenPipeError:  # `mptc space s.mpt | head`: the reader has gone; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush is silent
        return 1


def _dispatch(args) -> int:
    """Runs the command; user mistakes and faults become one rendered error and exit 2."""
    try:
        return args.fn(args)
    except SpecError as e:
        return _fail_user([e], _sources(args.spec, _safe_read(args.spec)))
    except SpecErrors as e:
        return _fail_user(e.errors, _sources(args.spec, _safe_read(args.spec)))
    except RunError as e:
        print(f"mptc: error: {e}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:
        raise
    except OSError as e:  # a file system fault no check named (disk full, a folder gone): still one line
        where = f"'{e.filename}': " if e.filename else ""
        print(f"mptc: error: {where}{e.strerror or type(e).__name__}", file=sys.stderr)
        return EXIT_USER


def _safe_read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").removeprefix("\ufeff")
    except (OSError, UnicodeDecodeError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
