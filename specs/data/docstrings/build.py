"""Builds the docstrings task: real, labelled, offline text classification (5 classes).

Each example is the docstring of one public function of numpy, scipy, scikit-learn, torch or
pandas (as installed), labelled by its library. Writes, into --out (default: this folder):

    task.jsonl.gz   {"text", "label", "split", "name"} per line; test 2000, val 500, train 1000,
                    stratified by label (each split keeps the labels' overall proportions)
    domain.txt.gz   every other docstring, one per line, no labels: the in-domain unlabelled corpus
    manifest.json   library versions, counts per label and split, the seed, sha256 of both files

and, unless --fixtures '' is given, the small test fixtures tests/fixtures/docstrings_sample.jsonl
(60 train, 60 val, 180 test) and tests/fixtures/docstrings_domain.txt (200 lines).

    .venv/bin/python specs/data/docstrings/build.py [--out DIR] [--fixtures DIR]

What is collected (deterministic; same installed versions give the same bytes):
  * modules: each library's top-level package and, recursively, its submodules found by
    pkgutil.iter_modules whose every path component is public (no leading underscore) and is
    not a test suite (`tests`, `test`, `conftest`, `test_*`) nor vendored third-party code
    (sklearn.externals); modules that fail to import are skipped. Imports run with warnings, stdout and stderr silenced.
  * objects: every public attribute (no leading underscore) of those modules that is a routine
    (Python function, builtin function, numpy's array-function dispatchers) or a numpy ufunc, and
    is defined by the same library (its __module__ starts with the library's name; builtins with
    no __module__ count for the module they are found in). Classes and their methods are NOT
    collected: method docstrings are largely templated near-copies (pandas Series/DataFrame
    share templates; torch.Tensor methods say "See torch.x()"; estimators repeat fit/predict),
    which would put near-duplicates on both sides of a split.
  * one name per object: modules are visited by (depth, name), attributes in sorted order, and
    the first public path an object is found under is its name.
  * text: inspect.getdoc, whitespace (newlines included) collapsed to single spaces, library
    names (anywhere, also inside words such as TorchScript) and import aliases np, sp, pd (whole
    words) replaced by "LIB" (see LEAK below), then cut to at most 600 characters at the last
    space (no word is cut). Texts shorter than 40 characters are dropped. Identical texts are
    kept once (first by name); a text that occurs under two libraries is dropped entirely.
"""
import argparse
import contextlib
import gzip
import hashlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import sys
import warnings
from pathlib import Path

LIBS = {"numpy": "numpy", "scipy": "scipy", "sklearn": "sklearn", "torch": "torch", "pandas": "pandas"}
SEED = 0
MAX_CHARS = 600
MIN_CHARS = 40
SPLITS = {"test": 2000, "val": 500, "train": 1000}
SAMPLE = {"train": 60, "val": 60, "test": 180}
DOMAIN_SAMPLE = 200
TEST_NAMES = {"tests", "test", "conftest"}
# Label leaks, replaced by "LIB", case-insensitive: the library names anywhere, also inside longer
# words (`numpy.sum`, `__torch_function__`, `TorchScript`, `libtorch`, `PandasSQL`), and the short
# import aliases np, sp (scipy.sparse in scikit-learn's docs) and pd as whole words only, letters
# and digits being word characters (`np.sum` and `pd_frame` are caught, `input` is not).
LEAK_NAMES = ["scikit-learn", "scikits", "scikit", "sklearn", "pytorch", "torch", "numpy", "scipy", "pandas"]
LEAK_ALIASES = ["np", "sp", "pd"]
LEAK = re.compile("|".join([*map(re.escape, LEAK_NAMES)]
                           + [r"(?<![A-Za-z0-9])" + re.escape(a) + r"(?![A-Za-z0-9])" for a in LEAK_ALIASES]),
                  re.IGNORECASE)
# Subpackages that are other projects' code vendored into a library (scikit-learn vendors
# array_api_compat, array_api_extra and packaging under sklearn.externals): not the library's text.
VENDORED = {"externals"}
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


@contextlib.contextmanager
def quiet():
    """Silence warnings and Python-level stdout/stderr (import-time chatter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield


def try_import(name):
    try:
        with quiet():
            return importlib.import_module(name)
    except (Exception, SystemExit):  # a module that needs what is not installed, or exits
        return None


def public_modules(top):
    """(modules, failed names) reachable from `top`, visited breadth-first in sorted order."""
    root = try_import(top)
    mods, failed, frontier = [root], [], [root]
    while frontier:
        nxt = []
        for mod in frontier:
            path = getattr(mod, "__path__", None)
            if path is None:
                continue
            children = sorted(m.name for m in pkgutil.iter_modules(path))
            for child in children:
                if (child.startswith("_") or child in TEST_NAMES or child.startswith("test_")
                        or child in VENDORED):
                    continue
                name = f"{mod.__name__}.{child}"
                sub = try_import(name)
                if sub is None:
                    failed.append(name)
                else:
                    mods.append(sub)
                    nxt.append(sub)
        frontier = nxt
    return mods, failed


def is_function(obj):
    import numpy as np
    return (inspect.isroutine(obj) or isinstance(obj, np.ufunc)) and not inspect.isclass(obj)


def owned(obj, lib):
    m = getattr(obj, "__module__", None)
    if m is None:
        return True
    return isinstance(m, str) and (m == lib or m.startswith(lib + "."))


def clean(doc):
    text = " ".join(doc.split())
    text = LEAK.sub("LIB", text)
    if len(text) > MAX_CHARS:  # cut at the last space, so that no word is cut (a cut word may read as "np")
        text = text[: MAX_CHARS + 1].rsplit(" ", 1)[0][:MAX_CHARS]
    return text


def collect():
    """[(label, name, text)], {label: version}, {label: {modules walked, modules that failed}}."""
    records, versions, failed = [], {}, {}
    for label, top in LIBS.items():
        mods, bad = public_modules(top)
        versions[label] = mods[0].__version__
        failed[label] = {"modules_imported": len(mods), "failed_to_import": bad}
        seen = set()
        for mod in mods:
            try:
                names = sorted(n for n in dir(mod) if not n.startswith("_"))
            except Exception:
                continue
            for attr in names:
                try:
                    with quiet():
                        obj = getattr(mod, attr)
                except (Exception, SystemExit):
                    continue
                if not is_function(obj) or not owned(obj, top) or id(obj) in seen:
                    continue
                seen.add(id(obj))
                try:
                    doc = inspect.getdoc(obj)
                except Exception:
                    doc = None
                if not doc:
                    continue
                records.append((label, f"{mod.__name__}.{attr}", clean(doc)))
    return records, versions, failed


def dedup(records):
    labels_of = {}
    for label, _, text in records:
        labels_of.setdefault(text, set()).add(label)
    out, kept = [], set()
    for label, name, text in sorted(records):
        if len(text) < MIN_CHARS or len(labels_of[text]) > 1 or text in kept:
            continue
        kept.add(text)
        out.append({"text": text, "label": label, "name": name})
    return out


def quotas(counts, total):
    """Largest-remainder allocation of `total` proportional to `counts` (ties by label name)."""
    n = sum(counts.values())
    exact = {k: total * c / n for k, c in counts.items()}
    q = {k: int(v) for k, v in exact.items()}
    for k in sorted(counts, key=lambda k: (-(exact[k] - q[k]), k))[: total - sum(q.values())]:
        q[k] += 1
    return q


def split(rows, sizes, seed):
    """Seeded shuffle of rows (sorted by label, name), then per-label quotas in order of `sizes`."""
    import numpy as np
    rows = sorted(rows, key=lambda r: (r["label"], r["name"]))
    rows = [rows[i] for i in np.random.RandomState(seed).permutation(len(rows))]
    counts = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    need = {s: quotas(counts, k) for s, k in sizes.items()}
    taken, rest = {s: [] for s in sizes}, []
    for r in rows:
        for s in sizes:  # the first split (in the order of `sizes`) whose quota for r's label is open
            if need[s][r["label"]] > 0:
                need[s][r["label"]] -= 1
                taken[s].append(dict(r, split=s))
                break
        else:
            rest.append(r)
    return taken, rest


def write_gz(path, text):
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                compresslevel=9) as f:
        f.write(text.encode("utf-8"))


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def jsonl(rows):
    keys = ("text", "label", "split", "name")
    return "".join(json.dumps({k: r[k] for k in keys}, ensure_ascii=False) + "\n" for r in rows)


def sample(rows, k, label_order):
    """A stratified sample of k rows, in the rows' (already shuffled) order."""
    counts = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    q = quotas(counts, k)
    out, got = [], {label: 0 for label in label_order}
    for r in rows:
        if got[r["label"]] < q[r["label"]]:
            out.append(r)
            got[r["label"]] += 1
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--fixtures", default=str(ROOT / "tests" / "fixtures"),
                    help="folder for the small test fixtures; '' to skip them")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet():
        records, versions, failed = collect()
    rows = dedup(records)
    taken, rest = split(rows, SPLITS, SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    order = ["train", "val", "test"]
    task = [r for s in order for r in taken[s]]
    write_gz(out / "task.jsonl.gz", jsonl(task))
    write_gz(out / "domain.txt.gz", "".join(r["text"] + "\n" for r in rest))
    labels = sorted(LIBS)
    count = lambda rs: {label: sum(r["label"] == label for r in rs) for label in labels}
    manifest = {
        "what": "docstrings of public functions of five Python libraries, labelled by library",
        "versions": dict(sorted(versions.items()), python=".".join(map(str, sys.version_info[:3]))),
        "seed": SEED,
        "settings": {"max_chars": MAX_CHARS, "min_chars": MIN_CHARS, "leak_names_anywhere": LEAK_NAMES,
                     "leak_aliases_whole_word": LEAK_ALIASES, "skipped_subpackages": sorted(VENDORED),
                     "leak_token": "LIB", "objects": "module-level functions, builtins, ufuncs; no classes or methods"},
        "collected": {"functions_with_docstrings": len(records), "after_dedup_and_length": len(rows),
                      "modules": dict(sorted(failed.items()))},
        "counts": {
            "all": count(rows),
            **{s: count(taken[s]) for s in order},
            "domain": count(rest),
        },
        "sizes": {**{s: len(taken[s]) for s in order}, "domain": len(rest)},
        "files": {f: {"sha256": sha256(out / f), "bytes": (out / f).stat().st_size}
                  for f in ("task.jsonl.gz", "domain.txt.gz")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if args.fixtures:
        fx = Path(args.fixtures)
        fx.mkdir(parents=True, exist_ok=True)
        smp = [r for s in order for r in sample(taken[s], SAMPLE[s], labels)]
        (fx / "docstrings_sample.jsonl").write_text(jsonl(smp), encoding="utf-8")
        (fx / "docstrings_domain.txt").write_text(
            "".join(r["text"] + "\n" for r in rest[:DOMAIN_SAMPLE]), encoding="utf-8")
    print(json.dumps({"counts": manifest["counts"], "sizes": manifest["sizes"],
                      "files": manifest["files"]}, indent=1))


if __name__ == "__main__":
    main()
