"""The committed docstrings task (specs/data/docstrings): files, checksums, splits, leak removal, fixtures."""
import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "specs" / "data" / "docstrings"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LABELS = {"numpy", "scipy", "sklearn", "torch", "pandas"}
SIZES = {"train": 1000, "val": 500, "test": 2000}
# a library name or import alias as a whole word (letters and digits are word characters)
WHOLE = re.compile(r"(?<![A-Za-z0-9])(?:scikit-learn|scikit|sklearn|pytorch|torch|numpy|scipy|pandas|np|sp|pd)"
                   r"(?![A-Za-z0-9])", re.IGNORECASE)
ANYWHERE = re.compile(r"scikit|sklearn|torch|numpy|scipy|pandas", re.IGNORECASE)


@pytest.fixture(scope="module")
def task():
    with gzip.open(DATA / "task.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def domain():
    with gzip.open(DATA / "domain.txt.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def manifest():
    return json.loads((DATA / "manifest.json").read_text())


def test_files_exist_and_checksums_match(manifest):
    for name in ("build.py", "baseline.py", "README.md", "task.jsonl.gz", "domain.txt.gz", "manifest.json"):
        assert (DATA / name).is_file(), name
    for name, info in manifest["files"].items():
        blob = (DATA / name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == info["sha256"], name
        assert len(blob) == info["bytes"], name
    assert sum(info["bytes"] for info in manifest["files"].values()) < 2_000_000


def test_splits_labels_and_counts(task, domain, manifest):
    assert all(set(r) == {"text", "label", "split", "name"} for r in task)
    assert Counter(r["split"] for r in task) == SIZES
    assert len(domain) == manifest["sizes"]["domain"]
    for split in SIZES:
        got = Counter(r["label"] for r in task if r["split"] == split)
        assert set(got) == LABELS
        assert dict(got) == manifest["counts"][split]
    texts = [r["text"] for r in task] + domain
    assert len(set(texts)) == len(texts)  # deduplicated, and no overlap between task and domain
    assert len({r["name"] for r in task}) == len(task)
    assert all(40 <= len(t) <= 600 and "\n" not in t and "  " not in t for t in texts)


def test_no_library_name_in_text(task, domain):
    for text in [r["text"] for r in task] + domain:
        assert not WHOLE.search(text), text
        assert not ANYWHERE.search(text), text


def test_fixtures_are_a_subset(task, domain):
    lines = (FIXTURES / "docstrings_sample.jsonl").read_text(encoding="utf-8").splitlines()
    sample = [json.loads(line) for line in lines]
    assert Counter(r["split"] for r in sample) == {"train": 60, "val": 60, "test": 180}
    assert {r["label"] for r in sample} == LABELS
    full = {json.dumps(r, sort_keys=True) for r in task}
    assert all(json.dumps(r, sort_keys=True) in full for r in sample)
    dom = (FIXTURES / "docstrings_domain.txt").read_text(encoding="utf-8").splitlines()
    assert len(dom) == 200 and set(dom) <= set(domain)
