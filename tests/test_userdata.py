"""Your own data (docs/data.md): `arrays(...)` over .npz, .npy folders, .pt and .safetensors, `table(...)`
over csv, tsv, parquet and jsonl; splits by fraction, by a column or by file; paths relative to the spec;
and every bad file a named error (exit 2, no traceback), at check time where the header tells, else at run.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mptc.cli import main
from mptc.compiler.lower import compile_spec
from mptc.components.datafiles import DataProblem, array_headers
from mptc.runtime.data import _build
from mptc.runtime.userdata import arrays, table

N, D, T = 40, 4, 3          # pre-training examples, features, tasks
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D)).astype("float32")
Y = (RNG.random((N, T)) > 0.5).astype("float32")
FT = pd.DataFrame(RNG.normal(size=(30, D)), columns=[f"f{i}" for i in range(D)]).assign(
    id=[f"row{i}" for i in range(30)], a=RNG.integers(0, 2, 30), b=RNG.integers(0, 2, 30),
    fold=["train"] * 10 + ["val"] * 10 + ["test"] * 10)

SPEC = """spec own "test"
data pt = {pt}
data ft = {ft}
model encoder = mlp(hidden: [8])
head pt_head = linear(out: {tasks})
head ft_head = linear(out: 2)
meta w: vector[{tasks}] = 0.0
pretrain {{
  data pt batch 16
  loss mean(2 * sigmoid(w) * bce(pt_head(encoder(x)), y))
  steps 2
}}
finetune {{
  data ft.train batch 8
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 1
}}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 2 device cpu
"""
PT = 'arrays(path: "data/pt.npz")'
FT_CSV = 'table(path: "data/ft.csv", targets: ["a", "b"]) split train 0.4, val 0.3, test 0.3'


def write_arrays(path: Path, x=X, y=Y, **more) -> None:
    """x and y (and `more`) in the format `path`'s suffix names (a folder without one: .npy files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    named = {"x": x, "y": y, **more}
    if path.suffix == ".npz":
        np.savez(path, **named)
    elif path.suffix == ".pt":
        torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in named.items()}, path)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in named.items()}, str(path))
    else:
        path.mkdir(exist_ok=True)
        for k, v in named.items():
            np.save(path / f"{k}.npy", v)


def write_table(path: Path, frame=FT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.suffix
    if kind == ".csv":
        frame.to_csv(path, index=False)
    elif kind == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif kind == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)


@pytest.fixture
def proj(tmp_path, monkeypatch):
    """A project folder with data/pt.npz and data/ft.csv; the tests run from another folder."""
    root = tmp_path / "proj"
    write_arrays(root / "data" / "pt.npz")
    write_table(root / "data" / "ft.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def spec(root: Path, pt=PT, ft=FT_CSV, tasks=T, name="own.mpt", extra="") -> Path:
    path = root / name
    path.write_text(SPEC.format(pt=pt, ft=ft, tasks=tasks) + extra, encoding="utf-8")
    return path


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def built(path: Path, overrides=()) -> dict:
    """name -> Dataset of every data declaration of a spec, as the runtime builds them."""
    plan = compile_spec(path.read_text(encoding="utf-8"), str(path), list(overrides))
    sets = {}
    for source in plan.datasets:
        sets[source.name] = _build(source, sets)
    return sets


# ---- every format reads the same data ----------------------------------------------------------------
@pytest.mark.parametrize("file", ["pt.npz", "pt.pt", "pt.safetensors", "pt_npy"])
def test_every_array_format(proj, file):
    write_arrays(proj / "data" / file)
    decl = f'arrays(path: "data/{file}", x: "x{".npy" if file == "pt_npy" else ""}", y: "y")'
    ds = built(spec(proj, pt=decl))["pt"]
    x, y = ds.splits["all"]
    assert (x.dtype, x.numpy().tolist(), y.numpy().tolist()) == (torch.float32, X.tolist(), Y.tolist())
    assert ds.info["task_names"] == ["y[0]", "y[1]", "y[2]"]


@pytest.mark.parametrize("file", ["ft.csv", "ft.tsv", "ft.parquet", "ft.jsonl"])
def test_every_table_format(proj, file):
    """Features default to every other numeric column: not the string `id`, the `fold`, nor the targets."""
    write_table(proj / "data" / file)
    ds = built(spec(proj, ft=f'table(path: "data/{file}", targets: ["a", "b"], split_by: "fold")'))["ft"]
    assert sorted(ds.splits) == ["test", "train", "val"]
    x, y = ds.splits["val"]
    rows = FT[FT.fold == "val"]
    assert np.allclose(x.numpy(), rows[["f0", "f1", "f2", "f3"]].to_numpy(), atol=1e-6)
    assert y.numpy().tolist() == rows[["a", "b"]].to_numpy().tolist()
    assert (ds.info["task_names"], ds.info["features"]) == (["a", "b"], ["f0", "f1", "f2", "f3"])


def test_features_tasks_and_y_shapes(proj):
    write_arrays(proj / "data" / "one.npz", x=X[:, :2], y=Y[:, 0])  # a 1-D y: one task, named after its array
    ft = 'table(path: "data/ft.csv", targets: ["a", "b"], features: ["f1", "f3"], tasks: ["t_a", "t_b"]) ' \
         'split train 0.4, val 0.3, test 0.3'
    sets = built(spec(proj, pt='arrays(path: "data/one.npz")', ft=ft, tasks=1))
    assert tuple(sets["pt"].splits["all"][1].shape) == (N, 1) and sets["pt"].info["task_names"] == ["y"]
    assert tuple(sets["ft"].splits["train"][0].shape) == (12, 2)
    assert sets["ft"].info["task_names"] == ["t_a", "t_b"]


def test_split_files(proj):
    for split, rows in (("train", slice(0, 20)), ("val", slice(20, 30)), ("test", slice(30, 40))):
        write_arrays(proj / "data" / f"{split}.npz", x=X[rows], y=Y[rows, :2])
    ft = 'arrays(train: "data/train.npz", val: "data/val.npz", test: "data/test.npz")'
    ds = built(spec(proj, ft=ft))["ft"]
    assert {s: len(xy[0]) for s, xy in ds.splits.items()} == {"train": 20, "val": 10, "test": 10}
    assert ds.splits["val"][0].numpy().tolist() == X[20:30].tolist()


def test_table_split_files_read_features_by_name(proj, capsys):
    """The val file's columns in another order: read by the train file's feature names, not positions."""
    write_table(proj / "data" / "tr.csv", FT.iloc[:15])
    write_table(proj / "data" / "va.csv", FT.iloc[15:][["b", "f3", "a", "f1", "f0", "f2"]])
    ft = 'table(train: "data/tr.csv", val: "data/va.csv", test: "data/va.csv", targets: ["a", "b"])'
    ds = built(spec(proj, ft=ft))["ft"]
    assert np.allclose(ds.splits["val"][0].numpy(), FT.iloc[15:][["f0", "f1", "f2", "f3"]].to_numpy(), atol=1e-6)
    write_table(proj / "data" / "va.csv", FT.iloc[15:][["b", "f3", "a", "f1", "f0"]])
    code, err = cli(capsys, "check", spec(proj, ft=ft))
    assert (code, "no column 'f2' in" in err) == (2, True), err


def test_a_whole_run_from_another_folder(proj, capsys):
    code, err = cli(capsys, "run", spec(proj), "--out", "run", "--quiet")
    assert code == 0, err
    assert (Path("run") / "metrics.jsonl").exists()


def test_the_ir_carries_absolute_paths(proj):
    plan = compile_spec(spec(proj).read_text(), str(spec(proj)))
    assert plan.datasets[0].source.args["path"] == str(proj / "data" / "pt.npz")


def test_existing_path_arguments_resolve_against_the_spec_too(proj, capsys):
    (proj / "mnist").mkdir()
    path = spec(proj, ft='images.mnist(root: "mnist", size: 8, flatten: true)')
    code, err = cli(capsys, "check", path)
    assert "no such file" not in err and "bce cannot compare shapes [batch, 2] and [batch, 10]" in err, err


def test_paths_on_the_command_line_resolve_against_the_working_directory(proj, capsys):
    write_arrays(Path("here.npz"))
    sets = built(spec(proj), ['data.pt=arrays(path: "here.npz")'])
    assert sets["pt"].info["files"]["all"] == str(Path("here.npz").resolve())


# ---- missing files and names: located at check time ------------------------------------------------------
def test_missing_file_is_located(proj, capsys):
    path = spec(proj, pt='arrays(path: "data/missing.npz", x: "x", y: "y")')
    code, err = cli(capsys, "check", path)
    assert code == 2
    assert err.splitlines()[0] == (f"{path}:2:24: error: 'path': no such file or folder 'data/missing.npz' "
                                   f"(resolved against the spec's folder: {proj})")


def test_missing_folder_and_did_you_mean(proj, capsys):
    code, err = cli(capsys, "check", spec(proj, pt='arrays(path: "data/pt.nz")'))
    assert (code, "did you mean 'data/pt.npz'?" in err) == (2, True)
    code, err = cli(capsys, "check", spec(proj, pt='arrays(path: "dat/pt.npz")'))
    assert (code, "(nor does its folder 'dat')" in err) == (2, True)


CHECK_ERRORS = [
    # (files to write: name -> writer, the pt declaration, the expected message)
    ({}, 'arrays(path: "data/pt.npz", x: "feature")',
     "no array 'feature' in data/pt.npz (has: x, y)"),
    ({"pt.npz": lambda p: write_arrays(p, features=X)}, 'arrays(path: "data/pt.npz", x: "feature")',
     "did you mean 'features'?"),
    ({}, 'arrays(path: "data/ft.csv")', "arrays reads .npz, .pt, .pth, .safetensors files or a folder of .npy "
     "files, not '.csv' (tables go to table(...))"),
    ({"pt.npz": lambda p: write_arrays(p, x=X[:, 0])}, PT, "x ('x') must be [examples, features...], got shape [40]"),
    ({"pt.npz": lambda p: write_arrays(p, y=Y[:, :, None])}, PT, "y ('y') must be [examples] or [examples, tasks]"),
    ({"pt.npz": lambda p: write_arrays(p, y=Y[:39])}, PT, "x ('x') has 40 examples but y ('y') has 39"),
    ({"pt.npz": lambda p: write_arrays(p, x=np.full((N, D), "a"))}, PT, "x ('x') holds <U1, not numbers"),
    ({"pt.npz": lambda p: write_arrays(p, x=np.empty((N, D), object))}, PT, "x ('x') holds |O, not numbers"),
    ({"pt.npz": lambda p: (write_arrays(p), p.write_bytes(p.read_bytes()[:300]))}, PT,
     "data/pt.npz: cannot read it (BadZipFile"),
    ({"pt_npy": lambda p: (write_arrays(p), (p / "x.npy").write_bytes((p / "x.npy").read_bytes()[:200]))},
     'arrays(path: "data/pt_npy")', "data/pt_npy/x.npy: truncated: its header promises 768 bytes, it has 200"),
    ({"pt.safetensors": lambda p: (write_arrays(p), p.write_bytes(p.read_bytes()[:-10]))},
     'arrays(path: "data/pt.safetensors")', "data/pt.safetensors: truncated"),
    ({"pt.pt": lambda p: p.write_bytes(b"not a torch file at all")}, 'arrays(path: "data/pt.pt")',
     "data/pt.pt: cannot read it (UnpicklingError"),
    ({"pt.pt": lambda p: torch.save([torch.zeros(2)], p)}, 'arrays(path: "data/pt.pt")',
     "data/pt.pt: holds a list, not a dict of named tensors"),
    ({}, 'arrays(path: "data/pt.npz", tasks: ["a", "b"])', "tasks names 2 tasks, the data has 3"),
    ({"pt.npz": lambda p: write_arrays(p, x=X[:0], y=Y[:0])}, PT,
     "data/pt.npz: x ('x') and y ('y') hold no examples (0 rows)"),
    ({"pt.pt": lambda p: torch.save(torch.zeros(3, 2), p)}, 'arrays(path: "data/pt.pt")',
     "data/pt.pt: holds a single tensor, not a dict of named tensors (save one: torch.save({'x': x, 'y': y}, path))"),
    ({}, 'arrays(path: "data/pt.npz", train: "data/pt.npz")', "give either path or one file per split (train)"),
    ({}, "arrays()", "needs path (one file) or train/val/test files (one per split)"),
    ({"a.npz": lambda p: write_arrays(p, x=X[:, :3]), "b.npz": write_arrays},
     'arrays(train: "data/a.npz", val: "data/b.npz")',
     "the val file has x [batch, 4] and 3 tasks, the train file x [batch, 3] and 3 tasks"),
]


@pytest.mark.parametrize("files, decl, message", CHECK_ERRORS, ids=[m[:40] for _, _, m in CHECK_ERRORS])
def test_bad_arrays_are_located_errors_at_check_time(proj, capsys, files, decl, message):
    for name, write in files.items():
        write(proj / "data" / name)
    path = spec(proj, pt=decl)
    os.chdir(proj)                    # messages name files relative to the working directory
    code, err = cli(capsys, "check", path.name)
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith("own.mpt:2:11: error: arrays: ") and message in first, err


FT_CHECK_ERRORS = [
    ({}, 'table(path: "data/ft.csv", targets: ["a", "bb"])', "no column 'bb' in data/ft.csv "
     "(has: f0, f1, f2, f3, id, a, b, fold); did you mean 'b'?"),
    ({}, 'table(path: "data/ft.csv", targets: ["a", "id"])', "target column 'id' does not hold numbers"),
    ({}, 'table(path: "data/ft.csv", targets: ["a", "b"], features: ["f0", "fold"])',
     "feature column 'fold' does not hold numbers"),
    ({}, 'table(path: "data/ft.csv", targets: ["a", "b"], features: ["f0", "a"])',
     "column 'a' is both a feature and a target"),
    ({"ft.csv": lambda p: p.write_text("f0,a,b\n1,0,1\n2,1\n")}, 'table(path: "data/ft.csv", targets: ["a", "b"])',
     "data/ft.csv: line 3 has 2 fields, the header 3"),
    ({"ft.csv": lambda p: p.write_text("")}, 'table(path: "data/ft.csv", targets: ["a", "b"])',
     "data/ft.csv: empty: no header row"),
    ({"ft.csv": lambda p: p.write_text("a,a,b\n1,0,1\n")}, 'table(path: "data/ft.csv", targets: ["a", "b"])',
     "data/ft.csv: column 'a' appears twice"),
    ({"ft.csv": lambda p: p.write_text("a,b\n1,0\n")}, 'table(path: "data/ft.csv", targets: ["a", "b"])',
     "data/ft.csv: no numeric feature column besides the targets"),
    ({"ft.jsonl": lambda p: p.write_text("[1, 2]\n")}, 'table(path: "data/ft.jsonl", targets: ["a", "b"])',
     "data/ft.jsonl: line 1 is not a JSON object"),
    ({"ft.parquet": lambda p: p.write_bytes(b"PAR1 not really")}, 'table(path: "data/ft.parquet", targets: ["a"])',
     "data/ft.parquet: cannot read it"),
    ({}, 'table(path: "data/ft.csv", targets: ["a", "b"], splits: ["x", "y"])',
     "splits names the values of a split_by column: give split_by too"),
    ({}, 'table(path: "data/pt.npz", targets: ["a"])', "table reads .csv, .tsv, .parquet, .pq, .jsonl, .ndjson "
     "files, not '.npz' (arrays go to arrays(...))"),
    ({"ft.csv": lambda p: p.write_text("f0,a,b\n")}, 'table(path: "data/ft.csv", targets: ["a", "b"])',
     "data/ft.csv: no rows below its header"),
    ({"ft.parquet": lambda p: FT.iloc[:0].to_parquet(p)}, 'table(path: "data/ft.parquet", targets: ["a", "b"])',
     "data/ft.parquet: no rows"),
    ({}, 'table(path: "data/ft.csv", targets: ["a", "b"], split_by: "a")',
     "column 'a' is both a target and the split_by column"),
]


@pytest.mark.parametrize("files, decl, message", FT_CHECK_ERRORS, ids=[m[:40] for _, _, m in FT_CHECK_ERRORS])
def test_bad_tables_are_located_errors_at_check_time(proj, capsys, files, decl, message):
    for name, write in files.items():
        write(proj / "data" / name)
    os.chdir(proj)
    code, err = cli(capsys, "check", spec(proj, ft=decl + " split train 0.4, val 0.3, test 0.3").name)
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith("own.mpt:3:11: error: table: ") and message in first, err


def test_a_split_clause_beside_own_splits(proj, capsys):
    code, err = cli(capsys, "check", spec(proj, ft='table(path: "data/ft.csv", targets: ["a", "b"], '
                                                   'split_by: "fold") split train 0.5, val 0.5'))
    assert (code, "comes with its own splits (train, val, test): drop the split clause" in err) == (2, True)


@pytest.mark.parametrize("decl, message", [
    ('table(path: "data/ft.csv", targets: ["a", "a"])', "'targets' names 'a' twice"),
    ('table(path: "data/ft.csv", targets: ["a", "b"], features: ["f0", "f1", "f0"])', "'features' names 'f0' twice"),
    ('table(path: "data/ft.csv", targets: ["a", "b"], features: [])', "'features' must be a list of names or "
     "strings, got an empty list"),
])
def test_a_name_list_names_each_column_once(proj, capsys, decl, message):
    code, err = cli(capsys, "check", spec(proj, ft=decl + " split train 0.4, val 0.3, test 0.3"))
    assert (code, message in err) == (2, True), err


def test_a_csv_with_a_byte_order_mark_reads_like_one_without(proj):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark: the first column keeps its name."""
    plain = built(spec(proj))["ft"]
    (proj / "data" / "ft.csv").write_bytes(b"\xef\xbb\xbf" + (proj / "data" / "ft.csv").read_bytes())
    marked = built(spec(proj))["ft"]
    assert torch.equal(plain.splits["train"][0], marked.splits["train"][0])


def test_a_word_among_numbers_early_in_a_column_is_named_not_the_column_dropped(proj, capsys):
    """A numeric column with one stray word in the rows the checker samples is still a feature, and the run
    names the cell (it used to be left out as a text column, and the error was a count of features)."""
    _ft_cells({(2, "f2"): "oops"})(proj / "data" / "ft.csv")
    path = spec(proj)
    code, err = cli(capsys, "run", path, "--out", proj / "run", "--quiet")
    assert code == 2 and "data/ft.csv: feature column 'f2' does not hold numbers: 'oops' on line 4" in err, err


def test_a_folder_of_npy_files_reads_only_the_files_it_names(proj, capsys):
    write_arrays(proj / "data" / "npys")
    (proj / "data" / "npys" / "broken.npy").write_bytes(b"\x93NUMPY")      # an unrelated damaged file
    path = spec(proj, pt='arrays(path: "data/npys")')
    assert built(path)["pt"].splits["all"][0].shape == (N, D)
    code, err = cli(capsys, "check", spec(proj, pt='arrays(path: "data/npys", x: "xx")'))
    assert code == 2 and "no array 'xx' in" in err and "did you mean 'x'?" in err, err


JSONL_ERRORS = [
    (lambda rows: rows[:150] + ["{not json"] + rows[150:], "data/ft.jsonl: line 151 is not valid JSON"),
    (lambda rows: rows[:150] + ["[1, 2, 3]"] + rows[150:], "data/ft.jsonl: line 151 is not a JSON object, but list"),
    (lambda rows: rows[:150] + [""] + rows[150:], "data/ft.jsonl: line 151 is blank"),
    (lambda rows: rows[:150] + [json.dumps({**json.loads(rows[150]), "f0": "3.0"})] + rows[151:],
     "data/ft.jsonl: feature column 'f0' does not hold numbers: '3.0' on line 151"),
]


@pytest.mark.parametrize("edit, message", JSONL_ERRORS, ids=[m[15:45] for _, m in JSONL_ERRORS])
def test_a_bad_jsonl_line_anywhere_is_named_by_its_number(proj, capsys, edit, message):
    rows = pd.concat([FT] * 6, ignore_index=True).drop(columns=["id"]).to_json(orient="records", lines=True)
    (proj / "data" / "ft.jsonl").write_text("\n".join(edit(rows.strip().splitlines())) + "\n\n")  # a blank end
    path = spec(proj, ft='table(path: "data/ft.jsonl", targets: ["a", "b"], split_by: "fold")')
    code, err = cli(capsys, "run", path, "--out", proj / "run", "--quiet")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_wrong_value_kinds(proj, capsys):
    code, err = cli(capsys, "check", spec(proj, ft='table(path: "data/ft.csv", targets: [1, 2])'))
    assert (code, "'targets' must be a list of names or strings, got [1, 2]" in err) == (2, True)


# ---- bad values: named errors when the run loads them --------------------------------------------------
def _nan(p):
    x = X.copy()
    x[17, 3] = np.nan
    write_arrays(p, x=x)


def _inf_y(p):
    y = Y.copy()
    y[5, 1], y[9, 2] = np.inf, -np.inf
    write_arrays(p, y=y)


def _labels(p):
    y = Y.copy()
    y[3, 0], y[4, 1] = 2.0, 0.5
    write_arrays(p, y=y)


def _ft_cells(cells=None):
    def write(p):
        frame = FT.astype({"f2": object}).copy()
        for (row, col), value in (cells or {}).items():
            frame.loc[row, col] = value
        write_table(p, frame)
    return write


RUN_ERRORS = [
    ("pt.npz", _nan, PT, "data 'pt': data/pt.npz: x ('x') has 1 NaN value, the first at [17, 3]"),
    ("pt.safetensors", _nan, 'arrays(path: "data/pt.safetensors")', "x ('x') has 1 NaN value, the first at [17, 3]"),
    ("pt.pt", _nan, 'arrays(path: "data/pt.pt")', "x ('x') has 1 NaN value, the first at [17, 3]"),
    ("pt.npz", _inf_y, PT, "data/pt.npz: y ('y') has 2 infinite values, the first at [5, 1]"),
    ("pt.npz", _labels, PT, "data/pt.npz: y ('y') has 2 labels other than 0 and 1, the first at [3, 0] (2) "
     "(labels: any takes real targets)"),
    ("ft.csv", _ft_cells({(3, "a"): 2}), None, "data 'ft': data/ft.csv: target column 'a' has 1 label other "
     "than 0 and 1, the first on line 5 (2; labels: any takes real targets)"),
    ("ft.csv", lambda p: write_table(p, pd.concat([FT] * 5, ignore_index=True).astype({"f2": object}).assign(
        f2=lambda f: f.f2.where(f.index != 120, "oops"))), None,    # past the rows check reads
     "data/ft.csv: feature column 'f2' does not hold numbers: 'oops' on line 122"),
    ("ft.csv", _ft_cells({(7, "f2"): None}), None,
     "data/ft.csv: feature column 'f2' has 1 NaN value, the first on line 9 (an empty cell?)"),
    ("ft.jsonl", _ft_cells({(7, "f2"): None}), 'table(path: "data/ft.jsonl", targets: ["a", "b"])',
     "data/ft.jsonl: feature column 'f2' has 1 NaN value, the first on line 8 (an empty cell?)"),
    ("ft.parquet", _ft_cells({(7, "a"): float("nan")}), 'table(path: "data/ft.parquet", targets: ["a", "b"])',
     "data/ft.parquet: target column 'a' has 1 NaN value, the first on row 7 (an empty cell?)"),
    ("ft.csv", _ft_cells({(4, "fold"): "tset"}), 'table(path: "data/ft.csv", targets: ["a", "b"], split_by: "fold")',
     "data/ft.csv: split_by column 'fold' holds 'tset' on line 6, not one of the splits train, val, test; "
     "did you mean 'test'?"),
    ("ft.csv", _ft_cells(), 'table(path: "data/ft.csv", targets: ["a", "b"], split_by: "fold", '
     'splits: ["train", "val", "test", "extra"])', "split_by column 'fold' names no row 'extra'"),
]


@pytest.mark.parametrize("file, write, decl, message", RUN_ERRORS, ids=[m[:50] for *_, m in RUN_ERRORS])
def test_bad_values_are_named_errors_at_run_time(proj, capsys, file, write, decl, message):
    write(proj / "data" / file)
    if file.startswith("pt"):
        path = spec(proj, pt=decl)
    else:
        decl = decl or 'table(path: "data/ft.csv", targets: ["a", "b"])'
        path = spec(proj, ft=decl + ("" if "split_by" in decl else " split train 0.4, val 0.3, test 0.3"))
    os.chdir(proj)
    code, err = cli(capsys, "run", path.name, "--out", "run", "--quiet")
    assert code == 2
    assert err.startswith("mptc: error: data '") and message in err, err
    assert not (proj / "run").exists()


def test_labels_any_takes_real_targets(proj):
    _labels(proj / "data" / "pt.npz")
    ds = built(spec(proj, pt='arrays(path: "data/pt.npz", labels: any)'))["pt"]
    assert ds.splits["all"][1][3, 0].item() == 2.0


# ---- nothing in a file runs ----------------------------------------------------------------------------
class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_with_code_is_refused_and_never_run(proj, capsys):
    torch.save({"x": torch.zeros(N, D), "y": torch.zeros(N, T), "evil": Evil()}, proj / "data" / "pt.pt")
    os.chdir(proj)
    for command in (["check", "own.mpt"], ["run", "own.mpt", "--out", "run", "--quiet"]):
        spec(proj, pt='arrays(path: "data/pt.pt")')
        code, err = cli(capsys, *command)
        assert code == 2 and "holds a posix.system: save a dict of plain tensors" in err, err
    assert not Path("pwned").exists()


def test_object_arrays_are_never_unpickled(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([[{"a": 1}]] * 3, dtype=object), y=np.zeros(3))
    with pytest.raises(DataProblem, match="holds |O, not numbers"):
        arrays(str(tmp_path / "o.npz"))


def test_the_loaders_themselves_refuse_code(tmp_path, monkeypatch):
    """Past the checker's header gate too: np.load without pickles, torch.load with weights only."""
    import pickle
    from mptc.runtime import userdata
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "o.npz", x=np.array([Evil()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        userdata._npz(tmp_path / "o.npz", ["x"])
    torch.save({"x": Evil()}, tmp_path / "e.pt")
    with pytest.raises(pickle.UnpicklingError):
        userdata._pt(tmp_path / "e.pt", ["x"])
    assert not (tmp_path / "pwned").exists()


def test_headers_are_read_without_the_data(tmp_path):
    """A 400 MB .npy is described from its first bytes: the header reader never touches the data."""
    path = tmp_path / "big"
    path.mkdir()
    with open(path / "x.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 1000)})
        f.seek(400_000_000 + f.tell() - 1)
        f.write(b"\0")
    assert array_headers(path)["x"].shape == (100_000, 1000)


def test_check_imports_no_torch(proj):
    import subprocess
    import sys
    code = ("import sys; from mptc.cli import main; rc = main(['check', sys.argv[1]]); "
            "sys.exit(rc or (3 if 'torch' in sys.modules or 'pandas' in sys.modules else 0))")
    for ft in (FT_CSV, 'table(path: "data/ft.csv", targets: ["a", "b"], split_by: "fold")'):
        done = subprocess.run([sys.executable, "-c", code, str(spec(proj, ft=ft))], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_heldout_tasks_keep_their_names(proj):
    from mptc.runtime.data import heldout_tasks
    ds = heldout_tasks(table(str(proj / "data" / "ft.csv"), targets=["a", "b", "f0"], labels="any"), groups=3, fold=1)
    assert (ds.info["task_names"], ds.info["heldout_task_names"]) == (["a", "f0"], ["b"])


def test_the_example_spec_checks(capsys):
    path = Path(__file__).resolve().parent.parent / "specs" / "own_data" / "own.mpt"
    assert cli(capsys, "check", path)[0] == 0
