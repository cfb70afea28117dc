"""A user's own data files, read at their headers only: the shapes `mptc check` needs for `arrays(...)` and
`table(...)` data, without loading the data and without torch. The loaders (runtime/userdata.py) use the
same functions, so what the checker accepts is what the runtime reads.

Arrays come from `.npz`, a folder of `.npy` files (one array per file, named by its stem), `.pt` (a dict of
tensors, as `torch.save` writes it) or `.safetensors`; tables from `.csv`, `.tsv`, `.parquet` or `.jsonl`.
No file is ever unpickled into code: `.npy` headers are literal dicts, `.pt` pickles are walked by an
unpickler that knows only tensors and dicts, and `.safetensors` starts with a JSON header.

    >>> import numpy as np, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> np.savez(f"{folder}/d.npz", X=np.zeros((5, 3), "float32"), Y=np.ones(5))
    >>> {k: (h.shape, h.dtype) for k, h in array_headers(f"{folder}/d.npz").items()}
    {'X': ((5, 3), 'float32'), 'Y': ((5,), 'float64')}
    >>> array_pair(f"{folder}/d.npz", "X", "Y")[1].shape
    (5,)
"""
from __future__ import annotations

import collections.abc
import csv
import json
import os
import pickle
import zipfile
from pathlib import Path

import attrs

from mptc.errors import did_you_mean

ARRAY_FORMATS = (".npz", ".pt", ".pth", ".safetensors")
TABLE_FORMATS = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson")
SPLIT_FILES = ("train", "val", "test")   # the keyword arguments naming one file per split
_SAMPLE_ROWS = 100                       # rows of a text table read to tell numeric columns from others


class DataProblem(ValueError):
    """A data file that cannot be used as asked; the message names the file and the problem."""


@attrs.frozen
class Header:
    """One array as its file describes it: shape, dtype name, and whether it holds numbers."""

    shape: tuple
    dtype: str
    numeric: bool


def shown(path) -> str:
    """A path as messages show it: relative to the working directory when below it, else absolute.

        >>> shown(os.path.join(os.getcwd(), "data", "a.npz")) == os.path.join("data", "a.npz")
        True
    """
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def split_files(args: dict) -> dict[str, str]:
    """{split: file} from a call's `path` ({"all": path}) or its `train`/`val`/`test` files.

        >>> split_files({"path": "", "train": "/a.csv", "val": "", "test": "/b.csv"})
        {'train': '/a.csv', 'test': '/b.csv'}
    """
    own = {s: args[s] for s in SPLIT_FILES if args.get(s)}
    if args.get("path") and own:
        raise DataProblem(f"give either path or one file per split ({', '.join(own)}), not both")
    if not args.get("path") and not own:
        raise DataProblem("needs path (one file) or train/val/test files (one per split)")
    if own and args.get("split_by"):
        raise DataProblem("split_by reads the splits from a column of one file: give path, not train/val/test")
    return own or {"all": args["path"]}


def missing(what: str, name: str, path, have) -> DataProblem:
    have = list(have)
    guess = did_you_mean(name, have)
    listing = ", ".join(have) if have else "none"
    return DataProblem(f"no {what} '{name}' in {shown(path)} (has: {listing})"
                       + (f"; did you mean '{guess}'?" if guess else ""))


# ---- arrays ------------------------------------------------------------------------------------------
def array_headers(path) -> dict[str, Header]:
    """name -> Header of every array in an array file (or folder of .npy files), data left unread."""
    path = Path(path)
    if path.is_dir():
        return _NpyFolder(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return reading(path, _npz)
    if suffix in (".pt", ".pth"):
        return reading(path, _pt)
    if suffix == ".safetensors":
        return reading(path, _safetensors)
    hint = " (tables go to table(...))" if suffix in TABLE_FORMATS else ""
    raise DataProblem(f"{shown(path)}: arrays reads {', '.join(ARRAY_FORMATS)} files or a folder of .npy files, "
                      f"not '{suffix or path.name}'{hint}")


def weights_headers(path) -> dict[str, Header]:
    """name -> Header of a model's weights file: `.safetensors`, else a torch.save pickle (`pytorch_model.bin`),
    walked without running anything in it."""
    path = Path(path)
    return reading(path, _safetensors if path.suffix.lower() == ".safetensors" else _pt)


class _NpyFolder(collections.abc.Mapping):
    """name -> Header of the .npy files of a folder, each file's header read when its name is looked up
    (a damaged file the spec does not name is never read)."""

    def __init__(self, folder: Path):
        self.files = {f.stem: f for f in sorted(folder.glob("*.npy"))}

    def __getitem__(self, name: str) -> Header:
        return reading(self.files[name], _npy_file)

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def array_pair(path, x: str, y: str) -> tuple[Header, Header]:
    """The headers of arrays `x` and `y` of a file, checked: numbers, x 2-D or more, y 1-D or 2-D, one
    row per example in both (DataProblem otherwise)."""
    headers = array_headers(path)
    found = {}
    for role, name in (("x", x), ("y", y)):
        key = name[:-4] if Path(path).is_dir() and name.endswith(".npy") else name
        if key not in headers:
            raise missing("array", key, path, headers)
        h = found[role] = headers[key]
        if not h.numeric:
            raise DataProblem(f"{shown(path)}: {role} ('{key}') holds {h.dtype}, not numbers")
    hx, hy = found["x"], found["y"]
    if len(hx.shape) < 2:
        raise DataProblem(f"{shown(path)}: x ('{x}') must be [examples, features...], got shape {list(hx.shape)}")
    if len(hy.shape) not in (1, 2):
        raise DataProblem(f"{shown(path)}: y ('{y}') must be [examples] or [examples, tasks], "
                          f"got shape {list(hy.shape)}")
    if hx.shape[0] != hy.shape[0]:
        raise DataProblem(f"{shown(path)}: x ('{x}') has {hx.shape[0]} examples but y ('{y}') has {hy.shape[0]}")
    if hx.shape[0] == 0:
        raise DataProblem(f"{shown(path)}: x ('{x}') and y ('{y}') hold no examples (0 rows)")
    return hx, hy


def reading(path: Path, read):
    """read(path), any failure to parse the file reported as a DataProblem naming it (a truncated zip, a
    header that is not one, an I/O error): the libraries raise a dozen unrelated exception types."""
    try:
        return read(path)
    except DataProblem:
        raise
    except Exception as e:  # noqa: BLE001 (see the docstring)
        detail = " ".join(str(e).split())               # pandas' parser messages end in a newline
        raise DataProblem(f"{shown(path)}: cannot read it ({type(e).__name__}: {detail})") from None


def _npy_header(f) -> tuple[tuple, object]:
    from numpy.lib import format as npformat
    version = npformat.read_magic(f)
    read = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported")
    shape, _, dtype = read(f)
    return shape, dtype


def _npy_file(path: Path) -> Header:
    with open(path, "rb") as f:
        shape, dtype = _npy_header(f)
        start = f.tell()
    expected = start + dtype.itemsize * _count(shape)
    if not dtype.hasobject and path.stat().st_size < expected:
        raise DataProblem(f"{shown(path)}: truncated: its header promises {expected} bytes, it has "
                          f"{path.stat().st_size}")
    return _numpy_header(shape, dtype)


def _npz(path: Path) -> dict[str, Header]:
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".npy"):
                with z.open(name) as f:
                    out[name[:-4]] = _numpy_header(*_npy_header(f))
    return out


def _numpy_header(shape, dtype) -> Header:
    return Header(tuple(int(n) for n in shape), dtype.name if dtype.kind not in "OUSV" else dtype.str,
                  dtype.kind in "biuf")


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# .safetensors: an 8-byte little-endian header length, then a JSON header {name: {dtype, shape, data_offsets}}
_SAFE_MAX_HEADER = 100 << 20


def _safetensors(path: Path) -> dict[str, Header]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= min(_SAFE_MAX_HEADER, size - 8):
            raise ValueError("not a safetensors file (bad header length)")
        meta = json.loads(f.read(n))
    out, end = {}, 0
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        dtype = str(entry["dtype"])
        out[name] = Header(tuple(int(d) for d in entry["shape"]), dtype, not dtype.startswith("C"))
        end = max(end, int(entry["data_offsets"][1]))
    if 8 + n + end > size:
        raise DataProblem(f"{shown(path)}: truncated: its header promises {8 + n + end} bytes, it has {size}")
    return out


# .pt: torch.save's pickle (data.pkl inside a zip, or the legacy stream of pickles), walked by an unpickler
# that rebuilds tensors as Headers and refuses every other global: nothing in the file runs
_PT_DTYPES = {"Float": "float32", "Double": "float64", "Half": "float16", "BFloat16": "bfloat16", "Long": "int64",
              "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8", "Bool": "bool"}


@attrs.frozen
class _Storage:
    dtype: str


def _rebuild_tensor(storage, offset, size, *rest) -> Header:
    return Header(tuple(int(n) for n in size), storage.dtype, storage.dtype in _PT_DTYPES.values())


class _PtHeaders(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch" and name.endswith("Storage"):
            return _Storage(_PT_DTYPES.get(name[:-len("Storage")], name))
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise DataProblem(f"holds a {module}.{name}: save a dict of plain tensors")

    def persistent_load(self, pid):
        return pid[1]  # ("storage", storage type, key, location, numel): its type says the dtype


def _pt(path: Path) -> dict[str, Header]:
    try:
        obj = _pt_object(path)
    except DataProblem as e:
        raise DataProblem(f"{shown(path)}: {e}") from None
    if not isinstance(obj, dict):
        what = "a single tensor" if isinstance(obj, Header) else f"a {type(obj).__name__}"
        raise DataProblem(f"{shown(path)}: holds {what}, not a dict of named tensors "
                          f"(save one: torch.save({{'x': x, 'y': y}}, path))")
    return {str(k): v for k, v in obj.items() if isinstance(v, Header)}


def _pt_object(path: Path):
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if member is None:
                raise ValueError("no data.pkl in the archive: not a torch.save file")
            with z.open(member) as f:
                return _PtHeaders(f).load()
    with open(path, "rb") as f:  # the legacy format: magic number, protocol, system info, then the object
        for _ in range(3):
            _PtHeaders(f).load()
        return _PtHeaders(f).load()


# ---- tables ------------------------------------------------------------------------------------------
def table_format(path) -> str:
    """csv, tsv, parquet or jsonl, from the file's suffix."""
    suffix = Path(path).suffix.lower()
    kinds = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
             ".ndjson": "jsonl"}
    if suffix not in kinds:
        hint = " (arrays go to arrays(...))" if suffix in ARRAY_FORMATS else ""
        raise DataProblem(f"{shown(path)}: table reads {', '.join(TABLE_FORMATS)} files, "
                          f"not '{suffix or Path(path).name}'{hint}")
    return kinds[suffix]


def table_columns(path) -> dict[str, bool]:
    """column -> whether it holds numbers, in the file's order, from the header (csv: the header row and
    the first rows; parquet: the schema; jsonl: the first lines)."""
    kind = table_format(path)
    read = {"csv": _csv_columns, "tsv": _csv_columns, "parquet": _parquet_columns, "jsonl": _jsonl_columns}[kind]
    return reading(Path(path), read)


_MISSING = ("", "nan", "na", "n/a", "null", "none", "<na>")   # cells pandas reads as a missing value


def _cell(text: str) -> str:
    """What a csv cell is to pandas: "missing", "number" (booleans included) or "text".

        >>> [_cell(t) for t in ("", "NA", "3.5", "-inf", "True", "oops")]
        ['missing', 'missing', 'number', 'number', 'number', 'text']
    """
    text = text.strip()
    if text.lower() in _MISSING:
        return "missing"
    if text.lower() in ("true", "false"):
        return "number"
    try:
        float(text)
        return "number"
    except ValueError:
        return "text"


def _numeric(kinds: set) -> bool:
    """A column is numeric when one of its sampled cells is a number, or none holds anything: a column of
    numbers with a stray word is a numeric column with a bad cell (the loader names it and its line), not a
    text column to leave out of the features without a word."""
    return "number" in kinds or "text" not in kinds


def _csv_columns(path: Path) -> dict[str, bool]:
    with open(path, newline="", encoding="utf-8-sig") as f:           # -sig: a byte-order mark (Excel) dropped
        rows = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = next(rows, None)
        if not header:
            raise DataProblem(f"{shown(path)}: empty: no header row")
        _unique(path, header)
        kinds, seen = [set() for _ in header], 0
        for line, row in zip(range(2, 2 + _SAMPLE_ROWS), rows):
            if not row:                                 # a blank line: pandas skips it too
                continue
            if len(row) != len(header):
                raise DataProblem(f"{shown(path)}: line {line} has {len(row)} fields, the header {len(header)}")
            seen += 1
            for found, cell in zip(kinds, row):
                found.add(_cell(cell))
        if not seen:
            raise DataProblem(f"{shown(path)}: no rows below its header")
    return {name: _numeric(found) for name, found in zip(header, kinds)}


def _unique(path, names) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataProblem(f"{shown(path)}: column {', '.join(repr(n) for n in twice)} appears twice")


def jsonl_rows(path: Path, limit: int | None = None):
    """The JSON objects of a jsonl file, one per line (the first `limit` only when given); a line that is
    not one is a DataProblem naming it. Blank lines may only end the file (rows keep their line numbers)."""
    with open(path, encoding="utf-8-sig") as f:
        blank = None
        for line, text in enumerate(f, 1):
            if not text.strip():
                blank = blank or line
                continue
            if blank is not None:
                raise DataProblem(f"{shown(path)}: line {blank} is blank (blank lines may only end the file)")
            if limit is not None and line > limit:
                return
            try:
                row = json.loads(text)
            except ValueError as e:
                raise DataProblem(f"{shown(path)}: line {line} is not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise DataProblem(f"{shown(path)}: line {line} is not a JSON object, but {type(row).__name__} "
                                  f"{text.strip()[:40]}")
            yield row


def _jsonl_columns(path: Path) -> dict[str, bool]:
    kinds: dict[str, set] = {}
    for row in jsonl_rows(path, _SAMPLE_ROWS):
        for k, v in row.items():
            number = isinstance(v, (int, float))        # bool is an int: a 0/1 label
            kinds.setdefault(k, set()).add("missing" if v is None else "number" if number else "text")
    if not kinds:
        raise DataProblem(f"{shown(path)}: empty: no rows")
    return {k: _numeric(found) for k, found in kinds.items()}


def _parquet_columns(path: Path) -> dict[str, bool]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataProblem(f"{shown(path)}: reading parquet needs pyarrow (pip install pyarrow)") from None
    schema = pq.read_schema(path)
    _unique(path, schema.names)
    if pq.read_metadata(path).num_rows == 0:
        raise DataProblem(f"{shown(path)}: no rows")
    number = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    return {f.name: any(t(f.type) for t in number) for f in schema}


def table_layout(path, targets, features=None, split_by=None) -> tuple[list[str], list[str]]:
    """(features, targets) of a table, checked against its columns: both exist and hold numbers, neither
    is empty, none is both. `features` default to every other numeric column (not `split_by`)."""
    columns = table_columns(path)
    for name in [*targets, *(features or ()), *([split_by] if split_by else [])]:
        if name not in columns:
            raise missing("column", name, path, columns)
    if features is None:
        features = [c for c, numeric in columns.items() if numeric and c not in targets and c != split_by]
    for role, names in (("target", targets), ("feature", features)):
        for name in names:
            if not columns[name]:
                raise DataProblem(f"{shown(path)}: {role} column '{name}' does not hold numbers")
    if split_by in targets:
        raise DataProblem(f"{shown(path)}: column '{split_by}' is both a target and the split_by column")
    both = [c for c in features if c in targets or c == split_by]
    if both:
        raise DataProblem(f"{shown(path)}: column '{both[0]}' is both a feature and a "
                          f"{'target' if both[0] in targets else 'split column'}")
    if not features:
        raise DataProblem(f"{shown(path)}: no numeric feature column besides the targets")
    return list(features), list(targets)
