"""`mptc run --nproc N`: N processes of `mptc run` on this machine, a data-parallel job as torchrun starts
it (runtime/parallel.py; docs/runtime.md, "Several processes").

Each process gets torchrun's environment -- RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, and the rendezvous store hosted here as torchrun's agent hosts it (`_store`) -- so `torchrun
--nproc-per-node N -m mptc run SPEC` runs the same job, and OMP_NUM_THREADS (the machine's cores divided
among the processes, unless set). Rank 0 prints what `mptc run` prints; the
others print nothing unless they fail. When one process fails, the others are stopped and the launcher
exits with its status, naming it; SIGINT, SIGTERM and SIGHUP are passed on to every process (a run with
checkpoints then stays resumable, with `--resume DIR --nproc N`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time


def without_nproc(argv: list[str]) -> list[str]:
    """The command line less its `--nproc N` (or `--nproc=N`).

        >>> without_nproc(["run", "a.mpt", "--nproc", "2", "--quiet"])
        ['run', 'a.mpt', '--quiet']
    """
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _store():
    """The job's rendezvous store, hosted here as torchrun's agent hosts it: bound to a port the system picks
    and held for the whole job (a port found free and handed to rank 0 to bind could be taken in between);
    TORCHELASTIC_USE_AGENT_STORE makes every process, rank 0 included, its client."""
    from torch.distributed import TCPStore
    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


def launch(nproc: int, argv: list[str]) -> int:
    """Runs `python -m mptc ARGV` as `nproc` processes of one job; their exit status (0, or the first
    failure's)."""
    store, threads = _store(), str(max(1, (os.cpu_count() or 1) // nproc))
    procs, logs = [], []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
               "TORCHELASTIC_USE_AGENT_STORE": "True"}
        env.setdefault("OMP_NUM_THREADS", threads)
        log = None if rank == 0 else tempfile.TemporaryFile()   # a rank > 0's stderr, shown if it fails
        procs.append(subprocess.Popen([sys.executable, "-m", "mptc", *argv], env=env, preexec_fn=_orphan_stops,
                                      start_new_session=True,     # a terminal's Ctrl-C reaches them once: ours
                                      stdout=None if rank == 0 else subprocess.DEVNULL, stderr=log))
        logs.append(log)
    passed = {s: signal.signal(s, lambda signum, frame: _send(procs, signum))
              for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        first = _wait(procs)
    finally:
        for s, handler in passed.items():
            signal.signal(s, handler)
    code = 0 if first is None else procs[first].returncode
    if first and procs[0].returncode in _STOPPED:     # rank 0 printed its own error; another's, named here
        logs[first].seek(0)
        lines = logs[first].read().decode(errors="replace").strip().splitlines()
        print(f"mptc: process {first} of {nproc} failed (exit {code})" + (f": {lines[-1]}" if lines else ""),
              file=sys.stderr)
    for log in logs:
        if log is not None:
            log.close()
    return code if code is None or code >= 0 else 128 - code


_STOPPED = (0, 128 + signal.SIGTERM, -signal.SIGTERM, -signal.SIGKILL)   # rank 0 finished or was stopped


def _orphan_stops() -> None:
    """In each process before it starts: SIGTERM when the launcher dies (even by SIGKILL), so a killed job
    stops as a whole and a run with checkpoints stays resumable (Linux's PR_SET_PDEATHSIG; elsewhere
    nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


def _send(procs, signum) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)


GRACE = 2.0  # seconds the others have to end on their own after one fails (the same error, found by each)


def _wait(procs) -> int | None:
    """Waits for every process; when one fails, gives the others GRACE seconds to end on their own (an error
    every process finds, such as a batch that does not shard, is then printed once, by rank 0), stops the
    rest (SIGTERM, then SIGKILL after 10 s) and returns its rank (None: all succeeded)."""
    while True:
        codes = [p.poll() for p in procs]
        first = next((r for r, c in enumerate(codes) if c not in (0, None)), None)
        if first is not None:
            deadline = time.monotonic() + GRACE
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.05)
            _send(procs, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.05)
            _send(procs, signal.SIGKILL)
            for p in procs:
                p.wait()
            return first
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.05)
