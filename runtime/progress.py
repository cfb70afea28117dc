"""A run's progress on stderr, through every phase: meta-training (or a `search` run's trials), each
baseline's training, each evaluation seed (docs/runtime.md, "Progress").

* stderr a terminal: rich's bar over the meta-steps, and each other phase as a spinner while it runs and
  one line when it ends.
* stderr a file or a pipe: plain lines, flushed as written: `meta-step 20/200  pt 0.6912  ft-val 0.6801
  3.2 meta-steps/s` every `log_every` meta-steps (and at the first and the last), and a line when each
  phase starts and when it ends.

Progress goes to stderr so that stdout holds the result alone (the summary and the run directory):
`mptc run s.mpt > result.txt` keeps the progress on the terminal and the result in the file. `--quiet`
(`Progress(enabled=False)`) shows none; the summary is still printed.

    >>> import io; out = io.StringIO()
    >>> p = Progress(stream=out)
    >>> with p.phase("baseline pretrain: training") as done:
    ...     done("baseline pretrain: trained in 0.1 s")
    >>> with p.steps(3, "meta-step", every=2) as update:
    ...     for i in (1, 2, 3): update(i, 0.5, 0.25)
    >>> print(out.getvalue(), end="")  # doctest: +ELLIPSIS
    baseline pretrain: training
    baseline pretrain: trained in 0.1 s
    meta-step 1/3  pt 0.5000  ft-val 0.2500  ... meta-steps/s
    meta-step 2/3  pt 0.5000  ft-val 0.2500  ... meta-steps/s
    meta-step 3/3  pt 0.5000  ft-val 0.2500  ... meta-steps/s
"""
from __future__ import annotations

import contextlib
import math
import sys
import time


class Progress:
    """Where a run reports its progress: lines, a bar on a terminal, or nothing (module docstring). `live`
    (default: whether `stream` is a terminal) chooses the bar and spinners over plain lines."""

    def __init__(self, enabled: bool = True, stream=None, live: bool | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.live = enabled and (_is_terminal(self.stream) if live is None else live)
        self._rich = None

    def say(self, text: str) -> None:
        """One line, flushed at once (nothing when disabled)."""
        if self.enabled:
            print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def phase(self, start: str):
        """A phase: `start` as a line (on a terminal, a spinner while the phase runs); yields `done(text)`,
        which sets the line shown when the phase ends."""
        ends: list[str] = []
        status = self._console().status(start) if self.live else None
        if status is None:
            self.say(start)
        else:
            status.start()
        try:
            yield ends.append
        finally:
            if status is not None:
                status.stop()
        for text in ends:
            self.say(text)

    @contextlib.contextmanager
    def steps(self, total: int, unit: str = "meta-step", every: int = 10):
        """Steps 1..total of `unit` (meta-steps, or a `search` run's trials): yields `update(i, pt, val)`,
        drawn as rich's bar on a terminal, else as a line at every `every`-th step, the first and the last."""
        t0 = time.perf_counter()

        def rate(i: int) -> float:
            return i / max(time.perf_counter() - t0, 1e-9)

        if not self.live:
            def line(i, pt, val):
                if i % every == 0 or i in (1, total):
                    self.say(step_line(i, total, unit, pt, val, rate(i)))
            yield line
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn
        bar = Bar(TextColumn(unit), MofNCompleteColumn(), BarColumn(),
                  TextColumn("pt {task.fields[pt]:.4f}  ft-val {task.fields[val]:.4f}  "
                             f"{{task.fields[rate]:.1f}} {unit}s/s"), TimeElapsedColumn(),
                  console=self._console(), transient=False)
        task = bar.add_task(unit, total=total, pt=math.nan, val=math.nan, rate=0.0)
        with bar:
            yield lambda i, pt, val: bar.update(task, completed=i, pt=pt, val=val, rate=rate(i))

    def _console(self):
        if self._rich is None:
            from rich.console import Console
            self._rich = Console(file=self.stream, force_terminal=True)
        return self._rich


def step_line(i: int, total: int, unit: str, pt: float, val: float, rate: float) -> str:
    """A progress line of a meta-step (a trial has no PT loss of its own: left out).

        >>> step_line(20, 200, "meta-step", 0.69123, 0.68007, 3.21)
        'meta-step 20/200  pt 0.6912  ft-val 0.6801  3.2 meta-steps/s'
        >>> step_line(2, 8, "trial", float("nan"), 0.5, 0.5)
        'trial 2/8  ft-val 0.5000  0.5 trials/s'
    """
    pt_part = f"  pt {pt:.4f}" if math.isfinite(pt) else ""
    return f"{unit} {i}/{total}{pt_part}  ft-val {val:.4f}  {rate:.1f} {unit}s/s"


def progress_of(trainer) -> Progress:
    """The run's Progress (the executor sets `trainer.progress`), or a silent one: a protocol is also
    called on a trainer of its own (tests, a user's script)."""
    return getattr(trainer, "progress", None) or Progress(enabled=False)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):        # no isatty, or a closed file
        return False
