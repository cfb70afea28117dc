"""The graph study of Raghu et al. (2021), Table 1: a GIN spec end to end, the co-training baselines,
partial FT access (tasks.heldout) and `mptc compare`'s table."""
import csv
import io
import json
from pathlib import Path

import pytest
import torch

from mptc.cli import main
from mptc.commands import compare_rows, csv_table, default_vary, markdown_table, seed_overrides
from mptc.compiler.lower import compile_spec
from mptc.errors import SpecErrors
from mptc.runtime.baselines import cotrain, cotrain_pcgrad, pcgrad
from mptc.components.catalog import ShapeProblem, heldout_columns
from mptc.runtime.data import Data, heldout_tasks
from mptc.runtime.datasets import Dataset
from mptc.runtime.evaluate import recalibrate
from mptc.runtime.loop import Trainer
from mptc.runtime.program import Program

GRAPH = """
spec gtiny "a tiny graph study"
data pt = graphs.synthetic(graphs: 48, pt_tasks: 6, related: 2, adversarial: 2, ft_tasks: 4, min_nodes: 4, max_nodes: 6, max_count: 1, seed: 0)
data ft_all = graphs.synthetic(graphs: 60, pt_tasks: 6, related: 2, ft_tasks: 4, task: finetune, min_nodes: 4, max_nodes: 6, max_count: 1, ft_split: [0.4, 0.3, 0.3], seed: 0)
data ft = tasks.heldout(of: ft_all, groups: 2, fold: 1)
model encoder = gin(layers: 1, hidden: 4)
head pt_head = linear(out: 6)
head ft_head = linear(out: 2)
meta w: vector[6] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 8  loss mean(task_weight * bce(pt_head(encoder(x)), y))  steps 2 }
finetune { data ft.train batch 8  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
meta_optimizer adam(lr: 0.1)
train meta_steps 2 warmup 1 seed 0 device cpu
evaluate finetune(epochs: 1, seeds: 1, tasks: heldout, search_trials: 2) against no_pretrain, pretrain, cotrain, cotrain_pcgrad, search
"""
METHODS = {"meta", "no_pretrain", "pretrain", "cotrain", "cotrain_pcgrad", "search"}


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    (root / "g.mpt").write_text(GRAPH)
    assert main(["run", str(root / "g.mpt"), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def test_graph_spec_runs_end_to_end_with_every_baseline(graph_run):
    ev = json.loads((graph_run / "eval.json").read_text())
    methods = {m: e for m, e in ev.items() if isinstance(e, dict) and "metric" in e}
    assert set(methods) == METHODS
    for e in methods.values():
        assert e["metric"] == "auroc" and e["seeds"] == 1 and 0 <= e["mean"] <= 1 and e["train_s"] >= 0
    assert len(json.loads((graph_run / "meta.json").read_text())["task_weight"]["values"]) == 6
    assert "task_weight_vs_relevant_auroc" in json.loads((graph_run / "diagnostics.json").read_text())


def _trainer(text=GRAPH):
    plan = compile_spec(text, "g.mpt")
    torch.manual_seed(0)
    return Trainer(plan, Program(plan, torch.device("cpu")), Data(plan, torch.device("cpu")))


def test_search_baseline_keeps_the_best_of_its_trials(monkeypatch):
    """`search` runs search_trials PT runs, the first at the initial meta-parameters, the others drawn in
    [-3, 3], and keeps the one the meta-objective scores best."""
    from mptc.runtime import search
    trainer, scored = _trainer(), []
    real = search.score
    monkeypatch.setattr(search, "score", lambda t, state: scored.append((state, real(t, state))) or scored[-1][1])
    best = search.search_baseline(trainer)
    assert len(scored) == 2 and best is min(scored, key=lambda s: s[1])[0]
    first, second = (s[0].metas["w"].detach() for s in scored)
    assert torch.equal(first, torch.zeros(6)) and (second.abs() <= 3).all() and not torch.equal(second, first)


@pytest.mark.parametrize("baseline", [cotrain, cotrain_pcgrad])
def test_cotrain_baselines_train_encoder_and_both_heads_within_the_budget(baseline, monkeypatch):
    trainer = _trainer()
    calls = []
    real = trainer.data.batch
    monkeypatch.setattr(trainer.data, "batch", lambda stream: calls.append(stream) or real(stream))
    start = trainer.init_state().params
    state = baseline(trainer)
    budget = 1 + 2 * 2                                  # warmup + meta_steps * P
    assert calls.count("pretrain") == calls.count("finetune") == budget and "objective" not in calls
    for prefix in ("encoder.", "pt_head.", "ft_head."):
        assert any(not torch.equal(state.params[k], start[k]) for k in start if k.startswith(prefix))


def test_pcgrad_projects_only_conflicting_gradients():
    a, b = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])], [torch.tensor([-1.0, 1.0]), torch.tensor([0.0])]
    merged = torch.cat([g.flatten() for g in pcgrad(a, b)])
    a_p = torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([-1.0, 1.0])   # a minus its component along b
    b_p = torch.tensor([-1.0, 1.0]) + torch.tensor([1.0, 0.0])         # b minus its component along a
    assert torch.allclose(merged[:2], a_p + b_p) and float(a_p @ torch.tensor([-1.0, 1.0])) == 0
    same = [torch.tensor([1.0, 2.0])]
    assert torch.equal(pcgrad(same, same)[0], torch.tensor([2.0, 4.0]))  # no conflict: the plain sum


def test_heldout_columns_cover_the_tasks_once_per_fold():
    assert heldout_columns(40, 4, 2) == list(range(20, 30))
    folds = [heldout_columns(10, 3, f) for f in range(3)]
    assert sorted(sum(folds, [])) == list(range(10)) and [len(f) for f in folds] == [4, 3, 3]
    assert heldout_columns(10, 3, 4) == folds[1]                  # fold is taken mod groups
    with pytest.raises(ShapeProblem):
        heldout_columns(3, 4, 0)


def test_heldout_tasks_splits_seen_and_heldout_columns():
    y = torch.arange(12.0).reshape(2, 6)
    ds = heldout_tasks(Dataset({"train": (torch.zeros(2, 1), y), "val": (torch.ones(2, 1), y)}, {"a": 1}),
                       groups=3, fold=1)
    assert set(ds.splits) == {"train", "val", "heldout_train", "heldout_val"}
    assert ds.splits["train"][1][0].tolist() == [0, 1, 4, 5] and ds.splits["heldout_val"][1][0].tolist() == [2, 3]
    assert ds.info["seen"] == [0, 1, 4, 5] and ds.info["heldout"] == [2, 3] and ds.info["a"] == 1


def test_partial_access_the_meta_objective_sees_only_the_seen_tasks():
    trainer = _trainer()
    splits = trainer.data.splits("ft")
    whole = trainer.data.splits("ft_all")
    assert splits["train"][1].shape[1] == 2 and torch.equal(splits["heldout_test"][1], whole["test"][1][:, 2:])
    assert trainer.data.batch("objective")[1].shape[1] == 2


def test_partial_access_mistakes_are_spec_errors():
    with pytest.raises(SpecErrors) as e:
        compile_spec(GRAPH.replace("groups: 2, fold: 1", "groups: 9"), "g.mpt")
    assert any("groups must be in 2..4" in err.message for err in e.value.errors)
    no_heldout = GRAPH.replace("data ft = tasks.heldout(of: ft_all, groups: 2, fold: 1)\n", "").replace(
        "ft_all", "ft").replace("linear(out: 2)", "linear(out: 4)")
    with pytest.raises(SpecErrors) as e:
        compile_spec(no_heldout, "g.mpt")
    assert any("held-out tasks" in err.message for err in e.value.errors)


@pytest.mark.parametrize("tasks, message", [("9" * 26, "'ft_tasks' is too large: 26 digits"),
                                            ("9" * 18, "'ft_tasks' must be <= 100000")])
def test_a_huge_task_count_is_one_spec_error_not_a_crash(tasks, message):
    """Found by tests/test_fuzz.py: a 26-digit count overflowed building the held-out column list (an
    OverflowError out of the checker); an 18-digit one fits in 64 bits and must not allocate it either."""
    big = GRAPH.replace("ft_tasks: 4, task: finetune", f"ft_tasks: {tasks}, task: finetune")
    assert big != GRAPH
    with pytest.raises(SpecErrors) as e:
        compile_spec(big, "g.mpt")
    assert message in e.value.errors[0].message and "held-out" not in str(e.value)  # no cascade error


def test_recalibrate_sets_batch_norm_statistics_from_the_data():
    net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0), net[0].bias.zero_()
    x = torch.arange(8.0)[:, None]
    recalibrate(net, x, batch=4)
    assert net[1].running_mean.item() == pytest.approx(3.5) and net[1].momentum == 0.1 and net.training


# ---- mptc compare --------------------------------------------------------------------------------
ROWS = [{"spec": "s", "method": m, "metric": "auroc", "mean": v, "stderr": 0.01, "seeds": 2, "train_s": t,
         "values": [v - 0.01, v + 0.01], "runs": ["runs/s/seed-0", "runs/s/seed-1"]}
        for m, v, t in (("meta", 0.8, 3.0), ("pretrain", 0.7, 2.0))]


def test_compare_markdown_table_format():
    text = markdown_table(ROWS, [{"spec": "s", "name": "w_vs_relevant_auroc", "mean": 0.9, "stderr": 0.02,
                                  "seeds": 2}])
    lines = text.splitlines()
    assert lines[:4] == ["| spec | method | auroc (mean ± stderr) | seeds | train s |", "|---|---|---|---|---|",
                         "| s | meta | 80.00 ± 1.00 | 2 | 3.0 |", "| s | pretrain | 70.00 ± 1.00 | 2 | 2.0 |"]
    assert "s: meta / pretrain wall time = 1.50x" in text
    assert "| s | w_vs_relevant_auroc | 0.900 ± 0.020 | 2 |" in text


def test_compare_csv_has_the_run_directories():
    rows = list(csv.DictReader(io.StringIO(csv_table(ROWS))))
    assert [r["method"] for r in rows] == ["meta", "pretrain"]
    assert rows[0]["runs"] == "runs/s/seed-0;runs/s/seed-1" and rows[0]["values"] == "0.79;0.81"
    assert float(rows[1]["mean"]) == 0.7


def test_compare_rows_and_seed_variation():
    run = lambda d, v: {"dir": d, "diagnostics": {},  # noqa: E731
                        "eval": {"meta": {"metric": "auroc", "mean": v, "train_s": 1.0}, "headline": 3}}
    rows = compare_rows({"s": [run("a", 0.6), run("b", 0.8)]})
    assert len(rows) == 1 and rows[0]["mean"] == 0.7 and rows[0]["runs"] == ["a", "b"]
    plan = compile_spec(GRAPH.replace("seed 0 device", "seed 7 device"), "g.mpt")
    vary = default_vary(plan)
    assert vary == ["train.seed+7", "data.pt.seed+0", "data.ft_all.seed+0", "data.ft.fold+1"]
    assert seed_overrides(vary, 2) == ["train.seed=9", "data.pt.seed=2", "data.ft_all.seed=2", "data.ft.fold=3"]


DENSE = """
spec tiny "a tiny dense run"
data pt = synthetic.multitask(examples: 128, dim: 4, tasks: 6, related: 2, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 90, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [4])
head pt_head = linear(out: 6)
head ft_head = linear(out: 2)
meta w: vector[6] = 0.0
pretrain { data pt batch 16  loss mean(2 * sigmoid(w) * bce(pt_head(encoder(x)), y))  steps 2 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 2 warmup 1 seed 0 device cpu
evaluate finetune(epochs: 1, seeds: 1) against no_pretrain, pretrain
"""


def test_compare_command_end_to_end(tmp_path, capsys):
    spec = tmp_path / "tiny.mpt"
    spec.write_text(DENSE)
    assert main(["compare", str(spec), "--seeds", "2", "--out", str(tmp_path / "runs"), "--quiet",
                 "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert "| tiny | meta |" in out and "spec,method,metric,mean,stderr,seeds,train_s,values,runs" in out
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["method"] for r in rows] == ["meta", "no_pretrain", "pretrain"]
    assert all(r["seeds"] == "2" for r in rows)
    assert rows[0]["runs"].split(";") == [str(tmp_path / "runs" / "tiny" / f"seed-{s}") for s in range(2)]


# ---- the study on the real data: pretrain-gnns bio in place of the stand-in --------------------------
@pytest.mark.parametrize("spec, ft", [("ppi_full_access", "ft"), ("ppi_partial_access", "ft_all")])
def test_paper_specs_run_on_the_bio_layout_with_set(spec, ft, tmp_path):
    """The recipe in the specs' headers: the real data's task counts (5000 PT, 40 FT) replace the stand-in's
    with --set alone. A miniature file in the real layout, shrunken training."""
    from tests.test_graphs import _write_legacy_bio
    _write_legacy_bio(tmp_path, pt_tasks=5000, ft_tasks=40)
    seen = 40 if ft == "ft" else 30                       # partial access: 10 of the 40 held out
    sets = [f'data.pt=graphs.bio(root: "{tmp_path}")', f'data.{ft}=graphs.bio(root: "{tmp_path}", task: finetune)',
            "head.pt_head.out=5000", f"head.ft_head.out={seen}", "meta.w.length=5000",
            "model.encoder.layers=1", "model.encoder.hidden=4", "train.meta_steps=1", "train.warmup=0",
            "pretrain.data.batch=4", "finetune.data.batch=2", "evaluate.epochs=1", "evaluate.seeds=1"]
    out = tmp_path / "run"
    path = Path(__file__).resolve().parent.parent / "specs" / "paper" / f"{spec}.mpt"
    args = ["run", str(path), "--out", str(out), "--quiet"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert set(m for m, e in ev.items() if isinstance(e, dict) and "metric" in e) == METHODS
    assert len(json.loads((out / "meta.json").read_text())["task_weight"]["values"]) == 5000
