"""`python -m mptc` (and the `mptc` console script). Ctrl-C is handled from the first line: importing the
CLI (attrs, lark, then torch) takes a while, and an interrupt then is `mptc: interrupted`, exit 130,
like one during a run. (One that lands inside CPython's own start-up, before this file runs, is
CPython's.) Only `sys`, already loaded, is imported before the `try`."""
import sys


def _redeliver(unraisable, default=sys.unraisablehook):
    """A Ctrl-C that lands in a weakref callback or a __del__ (importing torch runs many) is printed as
    "Exception ignored" and lost: the run would go on to finish. Raise it again a millisecond later,
    where it stops the program (a timer: raising it here would only be ignored again)."""
    import signal
    if issubclass(unraisable.exc_type, KeyboardInterrupt) and hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, signal.default_int_handler)
        signal.setitimer(signal.ITIMER_REAL, 0.001)
    else:
        default(unraisable)


def run() -> int:
    try:
        sys.unraisablehook = _redeliver
        from mptc.cli import main
        code = main()
    except KeyboardInterrupt:
        print("mptc: interrupted", file=sys.stderr)
        code = 130
    if code == 130:  # CPython may end by killing itself with SIGINT once it saw one (exit -2): say 130
        import os
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return code


if __name__ == "__main__":
    sys.exit(run())
