"""The golden corpus of broken specs: each `tests/fixtures/errors/NN_name.mpt` is the quickstart with one
mistake (a few with several), and `NN_name.err` is exactly what `mptc check NN_name.mpt` prints on stderr,
run from the fixture folder so that the paths in it are stable.

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_errors.py   # rewrites the .err files
"""
import os
from pathlib import Path

import pytest

from mptc.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "errors"
CASES = sorted(p.name for p in FIXTURES.glob("*.mpt"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def test_the_corpus_is_large_and_numbered():
    assert len(CASES) >= 30
    numbers = [int(name.split("_", 1)[0]) for name in CASES]
    assert numbers == list(range(1, len(CASES) + 1))


@pytest.mark.parametrize("name", CASES)
def test_rendered_error(name, capsys, monkeypatch):
    monkeypatch.chdir(FIXTURES)
    code = main(["check", name])
    out, err = capsys.readouterr()
    assert code == 2, f"{name} was accepted: {out}"
    assert "Traceback" not in err
    assert out == ""
    golden = FIXTURES / name.replace(".mpt", ".err")
    if UPDATE:
        golden.write_text(err, encoding="utf-8")
    assert golden.exists(), f"no {golden.name}: run with UPDATE_GOLDEN=1"
    assert err == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", CASES)
def test_each_error_names_this_file_with_a_position(name):
    # every located error starts `NN_name.mpt:LINE:COL: error:` and the count line closes the report
    text = (FIXTURES / name.replace(".mpt", ".err")).read_text(encoding="utf-8")
    heads = [line for line in text.splitlines() if ": error: " in line]
    assert heads and all(line.startswith(f"{name}:") for line in heads)
    n = len(heads)
    assert text.endswith(f"mptc: {n} error{'s' if n != 1 else ''}\n")
