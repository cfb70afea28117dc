"""The one grid engine of `mptc sweep` and `mptc compare`: a list of runs, each a spec with overrides
going into its own run directory. Every run is compiled before the first one starts, so every mistake is
reported at once (each distinct error once, however many runs carry it); then the runs go in order, with
one line per run on stderr.

    >>> jobs = [Job("specs/quickstart.mpt", ("train.seed=0",), Path("runs/x/seed-0"))]
    >>> jobs[0].label
    'specs/quickstart.mpt train.seed=0'
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import attrs

from mptc.errors import SpecError, SpecErrors


@attrs.frozen
class Job:
    """One run of the grid: `spec` compiled with the `sets` overrides, written to `out`."""

    spec: str
    sets: tuple[str, ...]
    out: Path

    @property
    def label(self) -> str:
        return " ".join([self.spec, *self.sets])


def compile_all(jobs: list[Job], texts: dict[str, str]) -> list:
    """The plan of every job; raises one SpecErrors with every distinct error of all of them."""
    from mptc.compiler.lower import compile_spec
    errors: dict = {}                       # (span, message) -> error
    plans = []
    for job in jobs:
        try:
            plans.append(compile_spec(texts[job.spec], job.spec, list(job.sets)))
        except (SpecErrors, SpecError) as e:
            errors.update(((x.span, x.message), x) for x in (e.errors if isinstance(e, SpecErrors) else [e]))
    if errors:
        raise SpecErrors(list(errors.values()), "")
    return plans


def run_all(jobs: list[Job], plans: list, texts: dict[str, str], quiet: bool,
            describe: Callable[[Path], str] = lambda run: "") -> list[Path]:
    """Runs the jobs in order; after each, unless `quiet`, a line `[i/n] label: describe(run), seconds`."""
    from mptc.runtime.executor import run_plan
    runs = []
    for i, (job, plan) in enumerate(zip(jobs, plans), 1):
        start = time.perf_counter()
        runs.append(run_plan(plan, texts[job.spec], job.out, progress=False))
        if not quiet:
            print(f"[{i}/{len(jobs)}] {job.label}: {describe(runs[-1])}, {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
    return runs
