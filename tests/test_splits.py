"""Datasets that come with their own splits (PTB-XL folds, MNIST train/test): the checker knows their
split names without a `split` clause, refuses a clause that would re-split them, and reports a missing
data folder at its argument."""
import pytest

from mptc.compiler.lower import compile_spec
from mptc.errors import SpecErrors

SPEC = """
data pt = images.digits(size: 8, flatten: true)
data ft = images.mnist(root: "{root}", size: 8, flatten: true){clause}
model encoder = mlp(hidden: [8])
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta w: vector[10] = 0.0
pretrain {{ data pt  loss mean(w * bce(pt_head(encoder(x)), y)) }}
finetune {{ data ft.{split}  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 update ft_head }}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.test
"""


def _errors(root, clause="", split="train"):
    try:
        compile_spec(SPEC.format(root=root, clause=clause, split=split), "s.mpt")
    except SpecErrors as e:
        return [(e.span.line, e.span.col, e.message, e.hint) for e in e.errors]
    return []


def test_built_in_splits_are_known_without_a_clause(tmp_path):
    assert _errors(tmp_path) == []


def test_an_unknown_built_in_split_gets_a_did_you_mean(tmp_path):
    assert _errors(tmp_path, split="trian") == [
        (9, 17, "'ft' has no split 'trian' (its splits are train, test)", "ft.train")]


def test_a_split_clause_on_a_dataset_with_its_own_splits_is_refused(tmp_path):
    (line, col, message, _), = _errors(tmp_path, clause=" split a 0.5, b 0.5")
    assert (line, message) == (3, "images.mnist comes with its own splits (train, test): drop the split clause")


def test_a_missing_data_folder_is_a_spec_error_at_its_argument(tmp_path):
    errors = _errors(tmp_path / "mnits")
    assert len(errors) == 1 and errors[0][0] == 3 and "no such file or folder" in errors[0][2]
    (tmp_path / "mnist").mkdir()
    assert _errors(tmp_path / "mnits")[0][3] == str(tmp_path / "mnist")


def test_a_split_too_small_for_the_data_is_one_named_run_error(tmp_path, capsys):
    """`split train 0.0001` of 1536 examples leaves train empty: a named error at data-building time (it
    was a ValueError traceback out of the run)."""
    from pathlib import Path
    from mptc.cli import main
    quick = (Path(__file__).resolve().parent.parent / "specs" / "quickstart.mpt").read_text()
    spec = tmp_path / "s.mpt"
    spec.write_text(quick.replace("split train 0.1, val 0.3, test 0.6", "split train 0.0001, val 0.3999, test 0.6"))
    assert main(["run", str(spec), "--out", str(tmp_path / "r"), "--quiet", "--set", "train.meta_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "data 'ft'" in err and "would be empty" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
