"""`mptc sweep`: expanding --set lists, validating every combination first, running, summarising."""
import json

import pytest

from mptc.cli import main
from mptc.errors import SpecErrors
from mptc.sweep import combinations, markdown, run_name, split_values, values_of

TINY = """
spec tiny "a tiny run"
data pt = synthetic.multitask(examples: 128, dim: 8, tasks: 6, related: 2, adversarial: 1, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 120, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [8, 4])
head pt_head = linear(out: 6)
head ft_head = linear(out: 2)
meta w: vector[6] = 0.0
pretrain { data pt batch 16  loss mean(2 * sigmoid(w) * bce(pt_head(encoder(x)), y))  steps 2 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
meta_optimizer adam(lr: 0.1)
train meta_steps 2 warmup 0 seed 0 device cpu log_every 1
evaluate finetune(epochs: 1, seeds: 1) against pretrain
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.mpt"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("text, items", [
    ("1", ["1"]), ("0.1,1, 10", ["0.1", "1", " 10"]), ("[64, 8],[32]", ["[64, 8]", "[32]"]),
    ('adam(lr: 1, beta1: 0.5),sgd()', ["adam(lr: 1, beta1: 0.5)", "sgd()"]), ('"a,b",c', ['"a,b"', "c"]),
])
def test_split_values_keeps_nested_commas(text, items):
    assert split_values(text) == items


def test_values_expand_ranges_and_combinations_vary_the_last_fastest():
    assert values_of("train.seed=0..2,7,-1..0", []) == ("train.seed", ["0", "1", "2", "7", "-1", "0"])
    assert combinations(["a=1,2", "b=x", "c=0..1"]) == [
        ["a=1", "b=x", "c=0"], ["a=1", "b=x", "c=1"], ["a=2", "b=x", "c=0"], ["a=2", "b=x", "c=1"]]
    assert combinations([]) == [[]]
    assert run_name(7, ["model.encoder.hidden=[8, 4]", "train.seed=1"]) == "007-hidden=_8_4_-seed=1"


def test_malformed_lists_are_all_reported():
    with pytest.raises(SpecErrors) as info:
        combinations(["train.seed=3..1", "meta_optimizer.lr=1,,2", "oops"])
    messages = [e.message for e in info.value.errors]
    assert any("empty range 3..1" in m for m in messages) and any("stray comma" in m for m in messages)
    assert any("KEY=VALUES" in m for m in messages)


def test_every_override_is_validated_before_anything_runs(spec, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", str(spec), "--set", "meta_optimizer.lr=0.1,-1,fast", "--set", "train.seed=0..3",
                 "--set", "pretrain.stepz=1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "--set meta_optimizer.lr=-1:1:19: error: 'lr' must be > 0, got -1" in err
    assert "'lr' must be a number, got a name" in err
    assert err.count("must be > 0") == 1                     # once, not once per seed
    assert "cannot override 'stepz' of pretrain" in err and "did you mean 'steps'?" in err
    assert "Traceback" not in err


def test_bad_ranges_exit_2_with_carets(spec, tmp_path, capsys):
    assert main(["sweep", str(spec), "--set", "train.seed=0..1,5..2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--set train.seed=0..1,5..2:1:17: error: empty range 5..2" in err and "^^^^" in err


def test_sweep_runs_each_combination_and_writes_a_sorted_summary(spec, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--set", "meta_optimizer.lr=0.1,10", "--set", "train.seed=1",
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert len(runs) == 2 and summary["sets"] == ["meta_optimizer.lr=0.1,10", "train.seed=1"]
    objectives = [r["meta_objective"] for r in runs]
    assert objectives == sorted(objectives)
    assert {r["overrides"]["meta_optimizer.lr"] for r in runs} == {"0.1", "10"}
    for r in runs:
        run = out / r["run"].rsplit("/", 1)[-1]
        ir = json.loads((run / "ir.json").read_text())
        assert ir["meta_optimizer"]["args"]["lr"] == float(r["overrides"]["meta_optimizer.lr"])
        assert ir["train"]["seed"] == 1
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert r["meta_objective"] == last["ft_val_loss"]
        assert set(r["eval"]) == {"meta", "pretrain"} and r["metric"] == "auroc"
    table = (out / "summary.md").read_text()
    assert table == markdown(runs, str(spec)) and table in capsys.readouterr().out
    assert table.count("\n| ") == 3                          # header and two rows


def test_an_existing_sweep_folder_is_refused(spec, tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep").write_text("")
    assert main(["sweep", str(spec), "--set", "train.seed=0", "--out", str(tmp_path / "s")]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("sets, runs", [
    (["train.seed=0..999999999999"], "1000000000000 runs"),
    (["train.seed=0..999999", "meta_optimizer.lr=1..1000000"], "1000000000000 runs"),
    (["train.seed=0..9999,10000"], "10001 runs"),
])
def test_a_sweep_over_the_limit_is_refused_before_anything_is_expanded(spec, tmp_path, capsys, sets, runs):
    args = [a for s in sets for a in ("--set", s)]
    assert main(["sweep", str(spec), *args, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mptc: error: the sweep has {runs}") and "more than the 10000 supported" in err
    assert err.count("\n") == 1 and not (tmp_path / "s").exists()


def test_a_range_bound_too_long_for_int_is_a_spec_error(spec, tmp_path, capsys):
    item = "train.seed=0.." + "9" * 5000
    assert main(["sweep", str(spec), "--set", item, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert f"--set {item}:1:12: error: range bound too long" in err and "Traceback" not in err
