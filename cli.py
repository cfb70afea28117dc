"""The `mptc` command line. The only place errors are rendered; user mistakes exit 2, never a traceback.

    mptc check SPEC                      parse and check (never imports torch)
    mptc compile SPEC --emit ir          the IR plan as JSON
    mptc run SPEC [--out DIR] [--set key=value ...] [--report]
    mptc fmt [--check] FILES...          rewrite specs in canonical layout, comments kept (commands.py)
    mptc space SPEC [--json]             the objectives each space declaration expands to (commands.py)
    mptc compare SPEC... [--seeds N]     specs (and their baselines) over seeds: markdown + CSV table (commands.py)
    mptc sweep SPEC --set KEY=V1,V2 --set KEY=A..B [--out DIR]   one run per combination, summary table (sweep.py)
    mptc report RUN_DIR... [--out DIR]   report.html with plots of one or several runs (report.py)

Every command takes --debug (an error's Python traceback, e.g. of your own code, after the error); those
that compile specs take --plugin MODULE_OR_FILE (your own components, docs/components.md), repeatable.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from mptc.errors import RunError, SpecError, SpecErrors
from mptc.sources import Sources, read_spec, render  # noqa: F401  (render: the CLI's renderer)

EXIT_USER = 2


def _fail_user(errors: list[SpecError], sources: Sources) -> int:
    for e in errors:
        print(render(e, sources), file=sys.stderr)
    n = len(errors)
    print(f"mptc: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
    return EXIT_USER


def _compile(args):
    from mptc.compiler.lower import compile_spec
    text, notes = read_spec(args.spec), []
    plan = compile_spec(text, args.spec, getattr(args, "set", None) or [], notes=notes)
    sources = Sources({args.spec: text})
    for note in notes:
        print(render(note, sources), file=sys.stderr)
    return text, plan


def _resumed(args):
    """(source, plan, out, staging folder) of `mptc run --resume DIR`: the run's own copy of the spec compiled
    with its overrides against the original path (relative data paths); a given SPEC or --set must match.
    A finished run (resumed already, or it ended before it could be stopped) gives (None, None, DIR, None):
    nothing to resume, and its summary as for any run, so a scheduler may repeat the same command."""
    from mptc.compiler.lower import compile_spec
    from mptc.runtime.checkpoint import read_origin, spec_hash
    from mptc.runtime.rundir import finished, resumable
    if args.out:
        raise RunError("--resume continues in the interrupted run's own folder: drop --out")
    if finished(args.resume):                           # resumed already, or it ended before it was killed
        if args.spec is not None or args.set:           # its resume.json went with the staging folder
            raise RunError(f"--resume '{args.resume}': the run has finished, so there is no spec to check "
                           "against; leave out the SPEC and --set")
        return None, None, Path(args.resume), None
    out, staged = resumable(args.resume)
    origin = read_origin(staged)
    text = (staged / "spec.mpt").read_text()
    if spec_hash(text, origin["overrides"]) != origin["sha256"]:
        raise RunError(f"--resume: '{staged / 'spec.mpt'}' was changed since the run started")
    if args.spec is not None or args.set:
        given = read_spec(args.spec) if args.spec is not None else text
        if spec_hash(given, args.set or origin["overrides"]) != origin["sha256"]:
            raise RunError("--resume: this spec (or its --set overrides) differs from the interrupted run's; "
                           "resume without a spec, or start a new run")
    return text, compile_spec(text, origin["spec"], origin["overrides"]), out, staged


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
    from mptc.runtime.executor import run_plan
    if args.nproc is not None and args.nproc > 1:
        return _launch(args)
    if args.resume:
        text, plan, out, staged = _resumed(args)
        if staged is None:
            print(f"--resume '{args.resume}': the run has finished; nothing to resume", file=sys.stderr)
        else:
            out = run_plan(plan, text, out, progress=not args.quiet, tensorboard=args.tensorboard, resume=staged)
    else:
        if args.spec is None:
            raise RunError("mptc run needs a SPEC (or --resume DIR)")
        text, plan = _compile(args)
        out = run_plan(plan, text, args.out, progress=not args.quiet, tensorboard=args.tensorboard,
                       origin=(args.spec, args.set or []))      # progress on stderr (runtime/progress.py)
    if out is None:                                     # a data-parallel job's rank > 0: rank 0 reports
        return 0
    from mptc.runtime.summary import for_stream
    print(for_stream((out / "summary.txt").read_text(encoding="utf-8"), sys.stdout.encoding))  # even --quiet
    print(f"run directory: {out}", flush=True)
    if args.report:
        from mptc.report import write_report
        print(f"report: {write_report([out])}")
    return 0


def _launch(args) -> int:
    """`mptc run --nproc N`: the spec checked here (its errors printed once), then N processes (launch.py)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise RunError("--nproc starts processes of its own: under torchrun, leave it out")
    if args.resume:
        _, plan, _, staged = _resumed(args)
        if staged is None:                              # finished: nothing to launch
            return cmd_run(argparse.Namespace(**{**vars(args), "nproc": None}))
    elif args.spec is None:
        raise RunError("mptc run needs a SPEC (or --resume DIR)")
    else:
        _, plan = _compile(args)
    from mptc.runtime.executor import parallel_refusal
    refusal = parallel_refusal(plan, args.nproc)
    if refusal is not None:                             # said once, before any process starts
        raise RunError(refusal)
    if args.out and os.path.lexists(args.out):        # rank 0 would refuse it, after the others started
        raise RunError(f"run directory '{args.out}' already exists; choose another --out")
    from mptc.launch import launch, without_nproc
    return launch(args.nproc, without_nproc(args.argv))


def path_arg(text: str) -> str:
    """A flag's file or folder: any non-empty string (`--out ''` was taken for no --out at all)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes >= 1, got '{text}'")
    return n


def check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the spec")
    p.set_defaults(fn=cmd_check)


def compile_arguments(p: argparse.ArgumentParser) -> None:
    check_arguments(p)
    p.add_argument("--emit", choices=["ir", "python"], default="ir", help="ir: the plan as JSON; python: a "
                   "standalone PyTorch script of the run (emit.py)")
    p.set_defaults(fn=cmd_compile)


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="the spec (with --resume: optional, checked against the run's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the spec")
    p.add_argument("--resume", type=path_arg, default=None, metavar="DIR",
                   help="continue an interrupted run from its last checkpoint (train checkpoint_every N): its "
                        "folder NAME or its staging folder .NAME.partial-PID")
    p.add_argument("--out", type=path_arg, default=None, help="run directory (default runs/<spec name>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress (the summary is still printed)")
    p.add_argument("--report", action="store_true", help="also write DIR/report.html, as `mptc report DIR`")
    p.add_argument("--tensorboard", type=path_arg, default=None, metavar="DIR",
                   help="also write every metrics.jsonl field as TensorBoard scalars into DIR (needs tensorboard)")
    p.add_argument("--nproc", type=_positive, default=None, metavar="N",
                   help="data-parallel on N processes of this machine, as `torchrun --nproc-per-node N -m mptc "
                        "run` (gloo on the CPU, nccl on CUDA; docs/runtime.md)")
    p.set_defaults(fn=cmd_run)


# Every subcommand, in the order `mptc --help` and the README list them: name -> (its help line, the
# "module:function" that adds its arguments and handler). Nothing else registers a command.
COMMANDS = {
    "check": ("parse and check a spec (never imports torch)", "mptc.cli:check_arguments"),
    "compile": ("compile a spec and print its IR (or a standalone PyTorch script)", "mptc.cli:compile_arguments"),
    "run": ("compile and execute a spec, writing a run directory", "mptc.cli:run_arguments"),
    "fmt": ("rewrite specs in canonical layout (comments kept)", "mptc.commands:fmt_arguments"),
    "space": ("list the objectives of each space declaration", "mptc.commands:space_arguments"),
    "compare": ("run specs over seeds and print their methods' table (markdown, CSV)",
                "mptc.commands:compare_arguments"),
    "sweep": ("run a spec over the cartesian product of --set values", "mptc.sweep:sweep_arguments"),
    "report": ("an HTML page of plots of one or several run directories", "mptc.report:report_arguments"),
}


PLUGIN_COMMANDS = ("check", "compile", "run", "sweep", "compare")  # those that compile specs: --plugin


def build_parser() -> argparse.ArgumentParser:
    import importlib
    parser = argparse.ArgumentParser(prog="mptc", description="The meta-parameterized pre-training compiler.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_line, target) in COMMANDS.items():
        module, _, function = target.partition(":")
        p = sub.add_parser(name, help=help_line)
        getattr(importlib.import_module(module), function)(p)
        p.add_argument("--debug", action="store_true", help="after an error, print the Python traceback behind "
                       "it (e.g. of your own code)")
        if name in PLUGIN_COMMANDS:
            p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                           help="import your own components first: a module on the Python path or a .py file "
                                "(docs/components.md); repeatable")
    return parser


def _plugins(args) -> None:
    """Imports the `--plugin` modules and files, before the command compiles anything."""
    targets = getattr(args, "plugin", None) or []
    if not targets:
        return
    from mptc.components.plugins import PluginProblem, load
    for target in targets:
        try:
            load(target)
        except PluginProblem as problem:
            hint = f" (did you mean {problem.hint}?)" if problem.hint else ""
            raise RunError(f"--plugin {target}: {problem.message}{hint}") from problem.__cause__


def _traceback(errors: list[BaseException]) -> None:
    """`--debug`: the Python traceback behind each error: its cause's (your code's), else its own."""
    import traceback
    for e in errors:
        if e.__cause__ is not None or isinstance(e, RunError):
            print("".join(traceback.format_exception(e.__cause__ or e)), end="", file=sys.stderr)


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
        args.argv = list(sys.argv[1:] if argv is None else argv)   # what `--nproc` passes on
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
    """Runs the command; user mistakes and faults become one rendered error and exit 2 (with `--debug`,
    the traceback behind it follows)."""
    try:
        _plugins(args)
        return args.fn(args)
    except (SpecError, SpecErrors, RunError) as e:
        if isinstance(e, RunError):
            print(f"mptc: error: {e}", file=sys.stderr)
            code = EXIT_USER
        else:
            code = _fail_user(e.errors if isinstance(e, SpecErrors) else [e], Sources())
        if getattr(args, "debug", False):
            _traceback(e.errors if isinstance(e, SpecErrors) else [e])
        return code
    except BrokenPipeError:
        raise
    except OSError as e:  # a file system fault no check named (disk full, a folder gone): still one line
        where = f"'{e.filename}': " if e.filename else ""
        print(f"mptc: error: {where}{e.strerror or type(e).__name__}", file=sys.stderr)
        return EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
