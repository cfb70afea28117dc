"""The run directory: claimed at once, built in a hidden staging folder and renamed into place only when
complete, so a crashed or interrupted run never leaves a half-written directory or file.

    DIR/spec.mpt  DIR/ir.json  DIR/metrics.jsonl  DIR/meta.json  DIR/eval.json  DIR/checkpoint.pt

1. **Claim.** `os.mkdir(DIR)` (atomic: of two runs given one `--out`, the second is refused at once)
   holding only `DIR/RUNNING`, `{"pid", "host", "staging"}` of the run writing it.
2. **Stage.** The files are written into `.DIR.partial-PID` beside it.
3. **Finish.** RUNNING is removed and the staging folder renamed onto the (then empty) DIR.

So DIR is either a finished run or a folder holding only RUNNING. A failure, Ctrl-C, SIGTERM or SIGHUP
removes both; a run killed where it cannot clean up (SIGKILL, a power cut) leaves both, and the next run
into the same parent folder removes them when that PID is no longer alive on this host, saying so.

Every JSON file is standard JSON (no `NaN`/`Infinity`): `write_json` refuses a non-finite number with a
RunError naming the file and the key; a metrics.jsonl row writes one as `null`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from mptc.errors import RunError, Unresumable

MARKER = "RUNNING"
RESUMABLE = "resume.pt"  # a staging folder holding it is a checkpointed run (runtime/checkpoint.py), never removed
_STAGING = re.compile(r"\.(?P<name>.+)\.partial-(?P<pid>\d+)")


def default_out(name: str) -> Path:
    """`runs/NAME-YYYYmmdd-HHMMSS`, with `-2`, `-3`, ... when a run of the same second has it."""
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _fail(what: str, path: Path, e: OSError) -> RunError:
    """One line naming the path and the cause (never the exception's repr)."""
    cause = e.strerror or type(e).__name__
    if isinstance(e, (FileExistsError, NotADirectoryError)) and not path.is_dir():
        cause = "a part of the path is a file, not a folder"
    return RunError(f"cannot {what} '{path}': {cause}")


# ---- leftovers of killed runs -------------------------------------------------------------------------
def _alive(pid) -> bool:
    """Whether process `pid` exists here (a marker's pid that is not a positive int counts as gone)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):     # another user's process (alive); a pid out of range
        return True
    return True


def _claim_of(folder: Path) -> dict | None:
    """The RUNNING marker of a claimed folder, or None (no marker, unreadable, not ours)."""
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _stale(parent: Path, entry: str) -> tuple[Path, int] | None:
    """(staging folder, pid) when `entry` is a staging folder left by a run no longer alive here."""
    m = _STAGING.fullmatch(entry)
    if not m or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
        return None
    if (parent / entry / RESUMABLE).exists():          # an interrupted run with a checkpoint: kept
        print(f"mptc: '{parent / entry}' is an interrupted run; continue it with "
              f"mptc run --resume '{parent / entry}'", file=sys.stderr)
        return None
    claim = _claim_of(parent / m["name"])
    if claim and claim.get("host") not in (None, socket.gethostname()):  # a run on another machine
        return None
    return parent / entry, int(m["pid"])


def clean_stale(parent: Path) -> list[Path]:
    """Removes the staging folders in `parent` whose run (its PID, on this host) is gone, and the claimed
    folder beside each when it holds nothing but that run's RUNNING; says so on stderr. Returns them."""
    try:
        entries = [e for e in os.listdir(parent) if e.startswith(".") and ".partial-" in e]
    except OSError:
        return []
    removed = []
    for staging, pid in filter(None, (_stale(parent, e) for e in entries)):
        shutil.rmtree(staging, ignore_errors=True)
        if staging.exists():                           # another user's, or a read-only file system
            continue
        _unclaim(parent / _STAGING.fullmatch(staging.name)["name"], pid)
        print(f"mptc: removed '{staging}', left by run {pid} which is no longer running", file=sys.stderr)
        removed.append(staging)
    return removed


def _unclaim(claimed: Path, pid: int) -> None:
    """Removes a dead run's claim: `claimed` when it holds nothing but a RUNNING naming `pid` (or none)."""
    with contextlib.suppress(OSError):
        if claimed.is_dir() and set(os.listdir(claimed)) <= {MARKER} and \
                (_claim_of(claimed) or {"pid": pid}).get("pid") == pid:
            shutil.rmtree(claimed)


# ---- the claim and the staging folder -----------------------------------------------------------------
def _claim(out: Path) -> None:
    """Creates `out` holding only RUNNING; refuses when it exists (a finished run or a live one's claim)."""
    try:
        os.mkdir(out)
    except FileExistsError:
        claim = _claim_of(out) if out.is_dir() else None
        if claim and _alive(claim.get("pid")):
            raise RunError(f"run directory '{out}' is being written by another run (PID {claim['pid']}); "
                           "choose another --out") from None
        raise RunError(f"run directory '{out}' already exists; choose another --out") from None
    except OSError as e:
        raise _fail("create the run directory", out, e) from None


def _release(out: Path, tmp: Path) -> None:
    """Undoes a claim: the staging folder and `out` (still holding only our RUNNING)."""
    shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        (out / MARKER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        out.rmdir()                                     # only when empty: never a user's files


def finished(path) -> bool:
    """Whether `path` is a finished run directory: not a staging folder (which holds meta.json from the end
    of meta-training on, while the evaluation runs), no RUNNING marker, and summary.txt, written last."""
    path = Path(path)
    return (path.is_dir() and not _STAGING.fullmatch(path.name) and not (path / MARKER).exists()
            and (path / "summary.txt").is_file())


def resumable(path: Path) -> tuple[Path, Path]:
    """(out, staging folder) of an interrupted run, given either: its staging folder `.NAME.partial-PID`
    or `NAME` holding its RUNNING marker. A RunError when it is finished, alive or not a run."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"--resume '{path}': no such folder")
    m = _STAGING.fullmatch(path.name)
    if m:
        out, tmp = path.parent / m["name"], path
    else:
        claim = _claim_of(path)
        if claim is None:
            what = "a finished run" if (path / "meta.json").exists() else "not a run directory"
            raise RunError(f"--resume '{path}': it is {what}, not an interrupted one")
        out, tmp = path, path.parent / str(claim.get("staging"))
    m = _STAGING.fullmatch(tmp.name)
    if not m or not tmp.is_dir() or not (tmp / "resume.json").exists():
        raise RunError(f"--resume '{path}': its staging folder '{tmp.name}' is gone or holds no resume.json")
    if int(m["pid"]) != os.getpid() and _alive(int(m["pid"])):
        raise RunError(f"--resume '{path}': run {m['pid']} is still writing it")
    return out, tmp


def _adopt(out: Path, old: Path, tmp: Path) -> None:
    """A resumed run takes over an interrupted run's staging folder and claim."""
    try:
        if old != tmp:
            shutil.rmtree(tmp, ignore_errors=True)
            os.replace(old, tmp)
        out.mkdir(exist_ok=True)
        (out / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "staging": tmp.name}) + "\n")
    except OSError as e:
        raise _fail("take over the interrupted run", old, e) from None


def _interrupted(out: Path, tmp: Path, hint: bool = True) -> None:
    """Keeps a checkpointed run's staging folder; its claim says it was interrupted (module docstring)."""
    with contextlib.suppress(OSError):
        (out / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "staging": tmp.name, "interrupted": True}) + "\n")
    if hint:                                            # not after a checkpoint no resume can read
        print(f"mptc: the run is incomplete; continue it with mptc run --resume '{out}'", file=sys.stderr)


@contextlib.contextmanager
def staging(out: Path, resume: Path | None = None):
    """Claims `out` and yields a staging folder beside it; renames it onto `out` on success, removes both
    on any failure (module docstring) -- but keeps them, marked interrupted, once the run has written a
    checkpoint. `resume`: an interrupted run's staging folder (`resumable`) to continue in."""
    out = Path(out)
    if resume is not None:
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
        _adopt(out, Path(resume), tmp)
        yield from _staged(out, tmp)
        return
    clean_stale(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail("create the folder", out.parent, e) from None
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    longest = _name_max(out.parent)
    if len(os.fsencode(tmp.name)) > longest:
        raise RunError(f"run directory name '{out.name}' is too long: its staging folder '.NAME.partial-PID' "
                       f"would have {len(os.fsencode(tmp.name))} bytes, over the file system's {longest}")
    _claim(out)
    try:
        (out / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "staging": tmp.name}) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)   # a dead run's, whose PID this process now has
        tmp.mkdir()
    except OSError as e:
        _release(out, tmp)
        raise _fail("create the staging folder", tmp, e) from None
    except BaseException:                         # Ctrl-C between the claim and the run: nothing left
        _release(out, tmp)
        raise
    yield from _staged(out, tmp)


@contextlib.contextmanager
def private(resume: Path | None = None):
    """The throwaway staging folder of a data-parallel run's process of rank > 0 (rank 0 writes the run
    directory); `resume`: the interrupted run's folder, copied in first, so the process reads its
    checkpoint."""
    with tempfile.TemporaryDirectory(prefix="mptc-rank-") as tmp:
        if resume is not None:
            shutil.copytree(resume, tmp, dirs_exist_ok=True)
        yield Path(tmp)


def _staged(out: Path, tmp: Path):
    try:
        yield tmp
    except BaseException as e:
        if (tmp / RESUMABLE).exists():
            _interrupted(out, tmp, hint=not isinstance(e, Unresumable))
        else:
            _release(out, tmp)
        raise
    try:
        (out / MARKER).unlink()
        os.replace(tmp, out)
    except OSError as e:
        _release(out, tmp)
        raise _fail("move the finished run into", out, e) from None


def _name_max(folder: Path) -> int:
    """The longest file name the folder's file system takes (255 where it cannot say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


# ---- files ----------------------------------------------------------------------------------------------
def _nonfinite(obj, where: str = "") -> str | None:
    """The key path of the first non-finite float in `obj` (`a.b[2]`), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(the value)"
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    return next((p for p in (_nonfinite(v, k) for k, v in items) if p), None)


def write_json(path: Path, obj) -> None:
    """Writes standard JSON through a temporary file and an atomic rename; a non-finite number is a
    RunError naming the file and the key."""
    bad = _nonfinite(obj)
    if bad:
        raise RunError(f"cannot write {path.name}: {bad} is not a finite number, which JSON cannot hold")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def finite_or_none(row: dict) -> dict:
    """The row with each non-finite float as None (JSON `null`).

        >>> finite_or_none({"pt_loss": float("nan"), "step": 3})
        {'pt_loss': None, 'step': 3}
    """
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _board(folder):
    """A TensorBoard SummaryWriter on `folder` (the optional `tensorboard` package; a RunError without it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError("--tensorboard needs the tensorboard package: pip install tensorboard "
                       "(or pip install 'mptc[tensorboard]')") from None
    try:
        return SummaryWriter(log_dir=str(folder))
    except OSError as e:                                # a file there, no permission, a read-only disk
        raise RunError(f"--tensorboard '{folder}': cannot write a folder there ({e.strerror or e})") from None


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, flushed as it goes; a non-finite value is `null`.
    `last` is the last row as logged (non-finite values kept), for the end-of-run checks. With
    `tensorboard` (a folder; `mptc run --tensorboard DIR`) every numeric field of every row (the scalar
    meta-parameters are the `meta.NAME` fields) is also a TensorBoard scalar at the row's meta-step (or
    trial); metrics.jsonl is the same either way."""

    def __init__(self, path: Path, tensorboard: str | Path | None = None, rows: int = 0):
        self.file = open(path, "a" if rows else "w")    # rows: a resumed run's, kept (runtime/checkpoint.py)
        self.last: dict = {}
        self.rows = rows
        self.board = _board(tensorboard) if tensorboard else None

    def log(self, **row) -> None:
        self.last, self.rows = row, self.rows + 1
        self.file.write(json.dumps(finite_or_none(row), allow_nan=False) + "\n")
        self.file.flush()
        if self.board is not None:
            step = row.get("meta_step", row.get("trial", 0))
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("meta_step", "trial"):
                    self.board.add_scalar(key, value, step)
            self.board.flush()

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
