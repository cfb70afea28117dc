"""Your own data: `arrays(...)` and `table(...)` loaded from files into a :class:`Dataset` (docs/data.md).

Every value is checked before it is used: numbers only, no NaN or infinity, one row per example in x and
y, labels 0 or 1 unless `labels: any`. A problem is a ValueError naming the file and what is wrong (the
runtime reports it as `mptc: error: data 'NAME': ...`), never a traceback and never silently used. No
file runs code: `np.load(allow_pickle=False)`, `torch.load(weights_only=True)`, safetensors.

    >>> import numpy as np, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> np.savez(f"{folder}/d.npz", X=np.ones((4, 3)), Y=np.eye(4, 2))
    >>> ds = arrays(f"{folder}/d.npz", x="X", y="Y")
    >>> tuple(ds.splits["all"][0].shape), ds.info["task_names"]
    ((4, 3), ['Y[0]', 'Y[1]'])
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mptc.components.datafiles import (DataProblem, array_pair, jsonl_rows, missing, reading, shown, split_files,
                                       table_format, table_layout)
from mptc.runtime.datasets import Dataset

__all__ = ["arrays", "table"]


def arrays(path: str = "", x: str = "x", y: str = "y", train: str = "", val: str = "", test: str = "",
           tasks=None, labels: str = "binary", seed: int = 0) -> Dataset:
    """x and y from a .npz, .pt or .safetensors file or a folder of .npy files (split ``"all"``), or from
    one such file per split (``train``/``val``/``test``). ``info["task_names"]``: ``tasks`` or ``y[i]``."""
    files = split_files({"path": path, "train": train, "val": val, "test": test})
    splits, one_task = {}, False
    for split, file in files.items():
        _, hy = array_pair(file, x, y)                        # names, dtypes, ranks and lengths
        xs, ys = _read_arrays(file, _key(file, x), _key(file, y))
        _check_values(file, f"x ('{x}')", xs)
        _check_values(file, f"y ('{y}')", ys, binary=labels == "binary")
        splits[split], one_task = (_tensor(xs), _tensor(ys.reshape(len(ys), -1))), len(hy.shape) == 1
    name = _key(next(iter(files.values())), y)
    width = next(iter(splits.values()))[1].shape[1]
    names = list(tasks) if tasks else [name] if one_task else [f"{name}[{i}]" for i in range(width)]
    return Dataset(splits, _info("arrays", files, names, x=x, y=y))


def table(path: str = "", targets=(), features=None, split_by=None, splits=("train", "val", "test"),
          train: str = "", val: str = "", test: str = "", tasks=None, labels: str = "binary",
          seed: int = 0) -> Dataset:
    """Feature and target columns of a csv, tsv, parquet or jsonl file: split ``"all"``, the splits a
    ``split_by`` column names, or one file per split (each read with the first file's features, by name).
    ``info["task_names"]``: ``tasks`` or the targets."""
    files = split_files({"path": path, "train": train, "val": val, "test": test, "split_by": split_by})
    out, used = {}, None
    for split, file in files.items():
        used, targets = table_layout(file, list(targets), features if used is None else used, split_by)
        frame = reading(Path(file), _frame)
        xs = _columns(file, frame, used, "feature")
        ys = _columns(file, frame, targets, "target", binary=labels == "binary")
        if split_by:
            out.update(_by_column(file, frame, split_by, list(splits), xs, ys))
        else:
            out[split] = (_tensor(xs), _tensor(ys))
    info = _info("table", files, list(tasks) if tasks else list(targets), features=used, split_by=split_by)
    return Dataset(out, info)


def _info(source, files, names, **more) -> dict:
    return {"source": source, "task_names": names, "files": {s: str(f) for s, f in files.items()}, **more}


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# ---- arrays ------------------------------------------------------------------------------------------
def _key(file, name: str) -> str:
    return name[:-4] if Path(file).is_dir() and name.endswith(".npy") else name


def _read_arrays(file, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(file)
    if path.is_dir():
        return tuple(reading(path / f"{k}.npy", lambda p: np.load(p, allow_pickle=False)) for k in (x, y))
    read = {".npz": _npz, ".safetensors": _safetensors}.get(path.suffix.lower(), _pt)
    found = reading(path, lambda p: read(p, (x, y)))
    return found[x], found[y]


def _npz(path: Path, names) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {n: z[n] for n in names}


def _safetensors(path: Path, names) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {n: _numpy(f.get_tensor(n)) for n in names}


def _pt(path: Path, names) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise DataProblem(f"{shown(path)}: holds a {type(obj).__name__}, not a dict of named tensors")
    for n in names:
        if not isinstance(obj.get(n), torch.Tensor):
            raise missing("tensor", n, path, [k for k, v in obj.items() if isinstance(v, torch.Tensor)])
    return {n: _numpy(obj[n]) for n in names}


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _check_values(file, what: str, a: np.ndarray, binary: bool = False) -> None:
    """NaN, infinities and (binary) labels other than 0/1, each named with its count and first index."""
    if a.dtype.kind == "f":
        for bad, kind in ((np.isnan(a), _NAN), (np.isinf(a), _INF)):
            _report(file, what, bad, kind)
    if binary:
        _report(file, what, (a != 0) & (a != 1), _LABEL, values=a,
                note=" (labels: any takes real targets)")


def _report(file, what, bad: np.ndarray, kind: tuple, values=None, note: str = "") -> None:
    count = int(bad.sum())
    if count == 0:
        return
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    at = "[" + ", ".join(str(int(i)) for i in first) + "]"
    shown_value = f" ({values[first].item():g})" if values is not None else ""
    raise DataProblem(f"{shown(file)}: {what} has {_count(count, kind)}, the first at {at}{shown_value}{note}")


def _count(n: int, kind: tuple[str, str, str]) -> str:
    """`1 NaN value`, `2 labels other than 0 and 1`: kind = (before, the noun, after)."""
    before, noun, after = kind
    return f"{n} {before}{noun}{'s' if n != 1 else ''}{after}"


_NAN, _INF, _LABEL = ("NaN ", "value", ""), ("infinite ", "value", ""), ("", "label", " other than 0 and 1")


# ---- tables ------------------------------------------------------------------------------------------
def _frame(path: Path):
    import pandas as pd
    kind = table_format(path)
    if kind == "parquet":
        return pd.read_parquet(path)
    if kind == "jsonl":                                 # read here, so a bad line is named by its number
        return pd.DataFrame.from_records(list(jsonl_rows(path)))
    return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", encoding="utf-8-sig")


def _where(file, row: int) -> str:
    """Row `row` (0-based, of the data) as its file numbers it: a line of a text file, else a row."""
    kind = table_format(file)
    return f"line {row + 2}" if kind in ("csv", "tsv") else f"line {row + 1}" if kind == "jsonl" else f"row {row}"


def _columns(file, frame, names, role: str, binary: bool = False) -> np.ndarray:
    """[rows, len(names)] float64 of the named columns, each checked to hold finite numbers."""
    import pandas as pd
    out = np.empty((len(frame), len(names)))
    typed = table_format(file) == "jsonl"                # JSON says what is a number: "3.0" is a string there
    for j, name in enumerate(names):
        column = frame[name]
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        text = np.isnan(values) & column.notna().to_numpy()
        if typed:
            text |= column.map(lambda v: not (v is None or isinstance(v, (int, float)))).to_numpy(dtype=bool)
        if text.any():
            row = int(np.argmax(text))
            raise DataProblem(f"{shown(file)}: {role} column '{name}' does not hold numbers: "
                              f"{column.iloc[row]!r} on {_where(file, row)}")
        _check_column(file, f"{role} column '{name}'", values, binary)
        out[:, j] = values
    return out


def _check_column(file, what: str, values: np.ndarray, binary: bool) -> None:
    """NaN, infinities and (binary) labels other than 0/1 in one column, named with the first line."""
    checks = [(np.isnan(values), _NAN, " (an empty cell?)"), (np.isinf(values), _INF, "")]
    if binary:
        checks.append(((values != 0) & (values != 1), _LABEL, None))
    for bad, kind, note in checks:
        if bad.any():
            row = int(np.argmax(bad))
            note = f" ({values[row]:g}; labels: any takes real targets)" if note is None else note
            raise DataProblem(f"{shown(file)}: {what} has {_count(int(bad.sum()), kind)}, the first on "
                              f"{_where(file, row)}{note}")


def _by_column(file, frame, column: str, names: list[str], xs, ys) -> dict:
    """The rows of each split that column `column` names; every value must be one of `names`."""
    from mptc.errors import did_you_mean
    values = frame[column].astype("string").fillna("").to_numpy()
    known = set(names)
    for row, value in enumerate(values):
        if value not in known:
            guess = did_you_mean(value, names)
            shown_value = f"'{value}'" if value else "an empty cell"
            raise DataProblem(f"{shown(file)}: split_by column '{column}' holds {shown_value} on {_where(file, row)}, "
                              f"not one of the splits {', '.join(names)}"
                              + (f"; did you mean '{guess}'?" if guess else " (declare them with splits: [...])"))
    out = {}
    for name in names:
        rows = values == name
        if not rows.any():
            raise DataProblem(f"{shown(file)}: split_by column '{column}' names no row '{name}' "
                              f"(declared in splits: {', '.join(names)})")
        out[name] = (_tensor(xs[rows]), _tensor(ys[rows]))
    return out
