"""`python -m mptc` (and the `mptc` console script). Ctrl-C is handled from the first line: importing the
CLI (attrs, lark, then torch) takes a while, and an interrupt then is `mptc: interrupted`, exit 130,
like one during a run. (One that lands inside CPython's own start-up, before this file runs, is
CPython's.) Only `sys`, already loaded, is imported before the `try`.

A Ctrl-C inside a third-party import can come back as something else (numpy turns it into an
ImportError, and a later import fails with "cannot load module more than once"), or be printed as
"Exception ignored" and lost: so the SIGINT handler also notes that it ran, and whatever then ends the
program ends it as `mptc: interrupted`."""
import sys

_interrupted = False


def _on_sigint(signum, frame):
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _redeliver(unraisable, default=sys.unraisablehook):
    """A Ctrl-C that lands in a weakref callback or a __del__ (importing torch runs many) is printed as
    "Exception ignored" and lost: the run would go on to finish. Raise it again a millisecond later,
    where it stops the program (a timer: raising it here would only be ignored again)."""
    import signal
    if issubclass(unraisable.exc_type, KeyboardInterrupt) and hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, _on_sigint)
        signal.setitimer(signal.ITIMER_REAL, 0.001)
    else:
        default(unraisable)


def run() -> int:
    try:
        import signal
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _redeliver
        from mptc.cli import main
        code = main()
    except BaseException as e:
        if not (_interrupted or isinstance(e, KeyboardInterrupt)) or isinstance(e, SystemExit):
            raise
        code = -1                                       # an interrupt that came back as another exception
    if code == 130 or (_interrupted and code != 0):
        if code != 130:                                 # main printed it when it saw the KeyboardInterrupt
            print("mptc: interrupted", file=sys.stderr)
        import os
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # not sys.exit: CPython may end by killing itself with SIGINT (-2) once it saw one
    return code


if __name__ == "__main__":
    sys.exit(run())
