"""Results a person can read: meta.json names the PT tasks, `mptc run` ends with a summary (stdout and
DIR/summary.txt, with --quiet too), progress reaches stderr through every phase (lines off a terminal, a
bar on one), and evaluation seeds vary the FT head's initialisation and the batch order (and the split with
`resplit: true`), a stderr over identical values being flagged as degenerate."""
import doctest
import io
import json

import numpy as np
import pytest
import torch

from mptc.cli import main
from mptc.runtime import evaluate, metajson, progress, summary
from mptc.runtime.evaluate import finetune_evaluate, over_seeds, reshuffled, summarize
from mptc.runtime.metajson import meta_json, task_names, vectors
from mptc.runtime.progress import Progress

SPEC = """
spec own "task weights on data of my own"
data pt = arrays(path: "pt.npz", x: "features", y: "labels")
data ft = table(path: "ft.csv", targets: ["a", "b"]) split train 0.3, val 0.3, test 0.4
model encoder = mlp(hidden: [8, 4])
head pt_head = linear(out: 6)
head ft_head = linear(out: 2)
meta w: vector[6] = 0.0
meta s: scalar = 1.0 in [0.5, 2]
let task_weight = s * 2 * sigmoid(w)
pretrain { data pt batch 32  loss mean(task_weight * bce(pt_head(encoder(x)), y))  steps 2 }
finetune { data ft.train batch 32  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
meta_optimizer adam(lr: 0.1)
train meta_steps 4 warmup 2 seed 0 device cpu log_every 2
evaluate finetune(epochs: 3, seeds: 3, lr: 3e-3EXTRA) against no_pretrain, pretrain
"""


@pytest.fixture
def project(tmp_path):
    """A spec over an .npz (PT: 6 tasks `labels[i]`) and a csv (FT: targets a, b) in its own folder."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 6)) > 0).astype("float32")
    np.savez(tmp_path / "pt.npz", features=x[:200], labels=y[:200])
    ft = (x[200:, :2] > 0).astype(int)
    rows = ["f0,f1,f2,f3,f4,a,b"] + [",".join([*(f"{v:.4f}" for v in xr), *map(str, yr)])
                                     for xr, yr in zip(x[200:], ft)]
    (tmp_path / "ft.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _spec(project, extra: str = "") -> str:
    path = project / "own.mpt"
    path.write_text(SPEC.replace("EXTRA", extra))
    return str(path)


def _run(project, name: str, *args, extra: str = "") -> int:
    return main(["run", _spec(project, extra), "--out", str(project / name), *args])


# ---- meta.json names the tasks ----------------------------------------------------------------------------
def test_meta_json_names_each_vector_by_the_pt_tasks_and_keeps_scalars_numbers(project):
    assert _run(project, "run", "--quiet") == 0
    meta = json.loads((project / "run" / "meta.json").read_text())
    names = [f"labels[{i}]" for i in range(6)]
    assert meta["w"]["names"] == meta["task_weight"]["names"] == names
    assert len(meta["w"]["values"]) == 6 and isinstance(meta["s"], float)
    assert set(meta) == {"w", "s", "task_weight"}


def test_a_vector_of_another_length_is_named_by_its_indices_and_names_default_to_task_i():
    values = {"w": torch.tensor([1.0, 2.0, 3.0]), "v": torch.tensor([4.0, 5.0]), "m": torch.ones(2, 2)}
    out = meta_json(values, task_names({"task_names": ["a", "b", "c"]}, 3))
    assert out == {"w": {"names": ["a", "b", "c"], "values": [1.0, 2.0, 3.0]},
                   "v": {"names": ["0", "1"], "values": [4.0, 5.0]}, "m": [[1.0, 1.0], [1.0, 1.0]]}
    assert task_names({}, 2) == ["task 0", "task 1"]
    assert task_names({"task_names": ["a"]}, 2) == ["task 0", "task 1"]       # names of other columns: unused
    assert task_names({"classes": ["NORM", "MI"]}, 2) == ["NORM", "MI"]


def test_readers_take_the_new_format_and_the_old():
    assert vectors({"s": 1.0, "w": {"names": ["a", "b"], "values": [1.0, 2.0]}, "old": [3.0]}) == {
        "w": (["a", "b"], [1.0, 2.0]), "old": (["0"], [3.0])}


# ---- the summary ----------------------------------------------------------------------------------------------
def test_the_summary_is_printed_with_quiet_and_written_to_summary_txt(project, capsys):
    assert _run(project, "run", "--quiet") == 0
    out, err = capsys.readouterr()
    text = (project / "run" / "summary.txt").read_text(encoding="utf-8")
    assert out == text + "\n" + f"run directory: {project / 'run'}\n"
    assert err == ""                                                    # --quiet: no progress
    for line in ("Evaluation: auroc on ft (test split), fine-tuned over 3 seeds", "  meta ", "  no_pretrain ",
                 "  pretrain ", "(the best baseline): ", "Learned meta-parameters",
                 "  task_weight: 6 values, one per PT task, mean ", "  s: 1 → ", "Time: meta-training ",
                 "baseline no_pretrain ", "baseline pretrain ", "evaluation ", f"Files in {project / 'run'}:"):
        assert line in text, line
    assert " ± " in text and "labels[" in text
    assert "  w: " not in text                         # the raw vector behind task_weight is left to meta.json
    files = text.split(f"Files in {project / 'run'}:\n  ")[1].split()
    assert sorted(files) == sorted(p.name for p in (project / "run").iterdir())


def _plan():
    from mptc.compiler.lower import QUICKSTART, compile_spec
    text = open(QUICKSTART).read()
    return compile_spec(text, QUICKSTART)


def test_summary_text_numbers():
    plan = _plan()
    evals = {"meta": {"metric": "auroc", "mean": 0.8, "stderr": 0.01, "seeds": 3, "values": [0.79, 0.8, 0.81]},
             "pretrain": {"metric": "auroc", "mean": 0.77, "stderr": 0.01, "seeds": 3, "values": [0.76, 0.78, 0.77]},
             "no_pretrain": {"metric": "auroc", "mean": 0.7, "stderr": 0.0, "seeds": 3, "values": [0.7] * 3,
                             "degenerate": True}}
    names = [f"task {i}" for i in range(100)]
    meta = {"w": {"names": names, "values": [0.0] * 100},
            "task_weight": {"names": names, "values": [i / 100 for i in range(100)]}}
    start = {"w": {"names": names, "values": [0.0] * 100}, "task_weight": {"names": names, "values": [1.0] * 100}}
    text = summary.summary_text(plan, "meta", evals, meta, start, {"meta-training": 2.0, "evaluation": 61.0},
                                "runs/x", ["meta.json", "spec.mpt"])
    assert "  meta         0.8000 ± 0.0100  (3 seeds)" in text
    assert "  no_pretrain  0.7000  (all 3 seeds equal)" in text and "0.7000 ± 0.0000" not in text
    # paired: the differences 0.03, 0.02, 0.04 (not the means' stderrs combined)
    assert "  meta - pretrain (the best baseline): +0.0300 ± 0.0058, paired over 3 seeds" in text
    assert "task_weight: 100 values, one per PT task, mean 0.495 (1 at the start)" in text
    assert "    highest: task 99 0.99, task 98 0.98, task 97 0.97, task 96 0.96, task 95 0.95" in text
    assert "    lowest:  task 0 0, task 1 0.01, task 2 0.02, task 3 0.03, task 4 0.04" in text
    assert "Time: meta-training 2.0 s, evaluation 1 min 1 s (total 1 min 3 s)" in text
    assert text.endswith("Files in runs/x:\n  spec.mpt meta.json\n")


def test_a_paired_difference_over_identical_seeds_is_flagged_not_shown_as_plus_minus_zero():
    plan = _plan()
    same = {"metric": "auroc", "mean": 0.7, "stderr": 0.0, "seeds": 3, "values": [0.7] * 3, "degenerate": True}
    text = summary.summary_text(plan, "meta", {"meta": same, "pretrain": dict(same)}, {}, {}, {}, "d", [])
    assert "  meta - pretrain (the best baseline): +0.0000  (all 3 seeds equal)" in text
    assert "± 0.0000" not in text


def test_the_summary_of_label_counts_restarts_and_scalars():
    cell = {"mean": 0.6, "stderr": 0.02, "seeds": 2}
    evals = {"meta": {"metric": "auroc", **cell, "values": [0.58, 0.62]},
             "auroc_by_labels": {"100": {"meta": cell}, "250": {"meta": {**cell, "stderr": 0.0, "degenerate": True}}},
             "restarts": {"meta": "phi", "inits": [0.0, 90.0], "finals": [12.2, 87.5], "paths": [[], []]},
             "rotation_error_deg": {"mean": 40.15, "stderr": 37.6, "values": [77.8, 2.5]}}
    text = summary.summary_text(_plan(), "meta", evals, {"phi": 12.2}, {"phi": 0.0}, {}, "d", [])
    assert "  by the number of labelled FT-train examples:\n    100: meta 0.6000 ± 0.0200\n" \
           "    250: meta 0.6000 (all equal)\n" in text
    assert "Restarts of phi (from → to): 0 → 12.2, 90 → 87.5" in text
    assert "Rotation error (degrees): 40.1500 ± 37.6000  (2 inits)" in text
    assert "Learned meta-parameters\n  phi: 0 → 12.2\n" in text


def test_compare_and_report_show_a_degenerate_spread_as_all_equal():
    from mptc.commands import compare_rows, markdown_table
    from mptc.report import _mean_cell
    run = {"dir": "r0", "eval": {"meta": {"metric": "auroc", "mean": 0.8, "train_s": 2.0}}, "diagnostics": {}}
    rows = compare_rows({"s": [run, {**run, "dir": "r1"}]})
    assert rows[0]["degenerate"] is True and "| s | meta | 80.00 (all equal) | 2 |" in markdown_table(rows)
    assert _mean_cell({"mean": 0.7, "stderr": 0.0, "seeds": 3, "degenerate": True}) == "0.7 (all 3 seeds equal)"
    assert _mean_cell({"mean": 0.7, "stderr": 0.01, "seeds": 3}) == "0.7 ± 0.01 (3 seeds)"


def test_a_terminal_that_cannot_write_plus_minus_gets_ascii():
    assert summary.for_stream("a ± b → c", "ascii") == "a +- b -> c"
    assert summary.for_stream("a ± b", "utf-8") == "a ± b"


# ---- progress -------------------------------------------------------------------------------------------------
def _progress_run(project, live: bool) -> str:
    from mptc.compiler.lower import compile_spec
    from mptc.runtime.executor import run_plan
    stream = io.StringIO()
    path = _spec(project)
    run_plan(compile_spec(open(path).read(), path), open(path).read(), project / f"run-{live}",
             progress=Progress(stream=stream, live=live))
    return stream.getvalue()


def test_off_a_terminal_progress_is_plain_lines_through_every_phase(project):
    lines = _progress_run(project, live=False).splitlines()
    steps = [line for line in lines if line.startswith("meta-step ")]
    assert [line.split()[1] for line in steps] == ["1/4", "2/4", "4/4"]          # log_every 2, first and last
    assert all("  pt " in line and "  ft-val " in line and "meta-steps/s" in line for line in steps)
    for phase in ("meta-training: 4 meta-steps", "meta-training: done in", "baseline no_pretrain: training",
                  "baseline pretrain: trained in", "evaluate meta: seed 1/3", "evaluate pretrain: seed 3/3: auroc "):
        assert any(line.startswith(phase) for line in lines), phase
    ended = next(i for i, x in enumerate(lines) if x.startswith("evaluate meta: seed 2/3: auroc"))
    assert lines.index("evaluate meta: seed 2/3") < ended                    # a line as it starts, one as it ends
    assert "\x1b" not in "".join(lines)                                       # no terminal codes in a file


def test_on_a_terminal_progress_is_the_bar_and_a_line_per_phase(project):
    text = _progress_run(project, live=True)
    assert "\x1b[" in text and "meta-step" in text and "4/4" in text          # rich's bar, drawn
    assert "baseline pretrain: trained in" in text and "evaluate meta: seed 3/3: auroc" in text


def test_progress_goes_to_stderr_and_the_summary_to_stdout(project, capsys):
    assert _run(project, "run") == 0
    out, err = capsys.readouterr()
    assert "meta-step 4/4" in err and "evaluate meta: seed 1/3" in err
    assert "meta-step" not in out and "± " in out and out.endswith(f"run directory: {project / 'run'}\n")


# ---- evaluation seeds ---------------------------------------------------------------------------------------
def _data(n: int = 90, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = torch.stack([x[:, 0] + x[:, 1] > 0, x[:, 2] > 0], 1).float()
    return {"train": (x[:30], y[:30]), "val": (x[30:60], y[30:60]), "test": (x[60:], y[60:])}


def _encoder():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())


@pytest.mark.parametrize("mode", ["full", "linear"])
def test_seeds_give_different_values_even_with_full_batch_steps(mode):
    args = {"epochs": 5, "lr": 1e-2, "batch": 1000, "mode": mode}              # one batch: order cannot matter
    values = [finetune_evaluate(_encoder(), _data(), seed=s, **args) for s in range(3)]
    assert len(set(values)) == 3
    zero = [finetune_evaluate(_encoder(), _data(), seed=s, head_init=0.0, **args) for s in range(3)]
    assert len(set(zero)) == 1                                   # the zero head of before: every seed the same
    assert summarize(zero)["degenerate"] is True and "degenerate" not in summarize(values)


def test_the_batch_order_depends_on_the_seed():
    args = {"epochs": 3, "lr": 1e-2, "batch": 8, "head_init": 0.0}               # the head alike at every seed
    values = [finetune_evaluate(_encoder(), _data(), seed=s, **args) for s in range(3)]
    assert len(set(values)) == 3


def test_the_head_starts_near_zero_at_a_seeded_draw():
    from mptc.runtime.evaluate import _prepare
    heads = []
    for seed in (0, 0, 1):
        encoder = _encoder()
        torch.manual_seed(seed)
        head, _ = _prepare(encoder, _data(), "linear", evaluate.HEAD_INIT)
        heads.append(head.weight.detach().clone())
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
    assert 0 < heads[0].abs().max() <= evaluate.HEAD_INIT / 8 ** 0.5           # PyTorch's bound 1/sqrt(8), scaled


def test_a_forced_identical_evaluation_is_flagged_in_eval_json_and_the_summary(project, capsys):
    assert _run(project, "zero", "--quiet", extra=", head_init: 0, batch: 1000, mode: linear") == 0
    ev = json.loads((project / "zero" / "eval.json").read_text())
    assert ev["meta"]["degenerate"] is True and len(set(ev["meta"]["values"])) == 1
    out = capsys.readouterr().out
    assert f"  meta         {ev['meta']['mean']:.4f}  (all 3 seeds equal)" in out
    assert _run(project, "seeded", "--quiet", extra=", batch: 1000, mode: linear") == 0
    ev = json.loads((project / "seeded" / "eval.json").read_text())
    assert len(set(ev["meta"]["values"])) == 3 and "degenerate" not in ev["meta"]


def test_resplit_draws_train_val_and_test_anew_at_each_seed_with_their_sizes():
    splits = _data()
    a, b, again = reshuffled(splits, 0), reshuffled(splits, 1), reshuffled(splits, 0)
    assert all(len(a[k][0]) == len(splits[k][0]) for k in ("train", "val", "test"))
    pooled = lambda s: sorted(torch.cat([s[k][0] for k in ("train", "val", "test")])[:, 0].tolist())  # noqa: E731
    assert pooled(a) == pooled(splits)                                         # the same examples, each once
    assert not torch.equal(a["test"][0], b["test"][0]) and torch.equal(a["test"][0], again["test"][0])
    assert not torch.equal(a["test"][0], splits["test"][0])
    seen = []
    args = {"epochs": 2, "lr": 1e-2, "batch": 1000, "mode": "linear", "head_init": 0.0}
    orig = evaluate.finetune_evaluate
    try:
        evaluate.finetune_evaluate = lambda enc, s, **kw: seen.append(s["test"][0]) or orig(enc, s, **kw)
        over_seeds(_encoder(), splits, 2, args, resplit=True)
        assert not torch.equal(seen[0], seen[1])
        seen.clear()
        over_seeds(_encoder(), splits, 2, args)
        assert torch.equal(seen[0], seen[1]) and torch.equal(seen[0], splits["test"][0])
    finally:
        evaluate.finetune_evaluate = orig


def test_resplit_is_a_finetune_option_that_runs(project):
    assert _run(project, "resplit", "--quiet", extra=", resplit: true, head_init: 0, batch: 1000, mode: linear") == 0
    ev = json.loads((project / "resplit" / "eval.json").read_text())
    assert len(set(ev["meta"]["values"])) == 3                    # the zero head, full batch: the split varies


# ---- the docstrings' examples ---------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [metajson, summary, progress, evaluate])
def test_docstring_examples(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
