"""Extending mptc is one registration in one file: a user's estimator, written outside the package,
registers itself and runs through the same loop (docs/extending.md shows this file)."""
import importlib
import json
import sys
import re
from pathlib import Path

import pytest

from mptc.cli import main
import mptc.components.catalog  # noqa: F401  (the built-ins registered before the fixture copies the tables)
from mptc.components.registry import BASELINES, ESTIMATORS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"
USER_FILE = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)   # the doc's example
SHORT = ["--set", "train.meta_steps=3", "--set", "train.warmup=2", "--set", "evaluate.seeds=1",
         "--set", "evaluate.epochs=2", "--quiet"]


@pytest.fixture
def user_components(tmp_path, monkeypatch):
    (tmp_path / "user_estimators.py").write_text(USER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ESTIMATORS, "_entries", dict(ESTIMATORS._entries))   # the registration is undone after
    monkeypatch.setattr(BASELINES, "_entries", dict(BASELINES._entries))
    sys.modules.pop("user_estimators", None)
    importlib.import_module("user_estimators")
    yield
    sys.modules.pop("user_estimators", None)


def _run(tmp_path, name, estimator, against="no_pretrain, init_twice"):
    spec = tmp_path / f"{name}.mpt"
    text = (ROOT / "specs" / "quickstart.mpt").read_text()
    text = text.replace("ift(neumann(terms: 5, scale: auto))", estimator)
    text = text.replace("against no_pretrain, pretrain", f"against {against}")
    spec.write_text(text)
    assert main(["run", str(spec), "--out", str(tmp_path / name), *SHORT]) == 0
    return json.loads((tmp_path / name / "meta.json").read_text()), json.loads((tmp_path / name / "eval.json").read_text())


def test_a_users_estimator_and_baseline_register_from_outside_and_run(user_components, tmp_path):
    mine, evals = _run(tmp_path, "mine", "first_order")
    builtin, _ = _run(tmp_path, "builtin", "ift(solver: identity)", against="no_pretrain")
    assert mine == builtin                                   # the same hypergradient, through the same loop
    assert evals["init_twice"]["values"] == evals["no_pretrain"]["values"]
    flipped, _ = _run(tmp_path, "flipped", "first_order(sign: -1)")
    assert flipped != mine                                   # its declared argument reaches it


def test_a_users_estimator_is_checked_like_a_builtin(user_components, tmp_path, capsys):
    spec = tmp_path / "bad.mpt"
    text = (ROOT / "specs" / "quickstart.mpt").read_text()
    spec.write_text(text.replace("finetune: unroll", "finetune: first_order(sgn: 1)"))
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "first_order has no parameter 'sgn'" in err and "did you mean 'sign'?" in err
    assert "'first_order' does not apply to the finetune stage (use unroll)" in err
