"""The run directory: built in a hidden staging folder and renamed into place only when complete, so a
crashed or interrupted run never leaves a half-written directory or file.

    DIR/spec.mpt  DIR/ir.json  DIR/metrics.jsonl  DIR/meta.json  DIR/eval.json  DIR/checkpoint.pt
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from mptc.errors import RunError


def default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextlib.contextmanager
def staging(out: Path):
    """Yields a staging folder beside `out`; renames it to `out` on success, deletes it on any failure."""
    out = Path(out)
    if out.exists():
        raise RunError(f"run directory '{out}' already exists; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, out)


def write_json(path: Path, obj) -> None:
    """Writes JSON through a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, flushed as it goes."""

    def __init__(self, path: Path):
        self.file = open(path, "w")

    def log(self, **row) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
