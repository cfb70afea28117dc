"""What the language can now say, each against exact values in float64:

1. `train dtype float64`: modules, meta-parameters and the data's float tensors in float64; a whole run
   works, and differs from the float32 run only at float32's rounding level.
2. `l2(module)`: the sum of squares of a module's parameters, so a loss carries a learned L2 strength.
   On ridge regression the IFT hypergradient of the validation loss in log(lambda), taken through
   compile_spec -> Program -> estimators.ift at the exact PT optimum, equals the closed form.
3. `--set` reaches a stage's estimator (`hypergradient.STAGE=...`), the FT unroll's update list
   (`finetune.update=a,b`) and split fractions (`data.NAME.split.PART=f`); bad overrides are located
   errors in the `--set` text.
"""
import json
import os
from pathlib import Path

import pytest
import torch

from mptc.cli import main
from mptc.compiler.ir import to_json
from mptc.compiler.lower import compile_spec
from mptc.errors import (BadArgument, DuplicateName, MissingPart, OutOfRange, SpecErrors, UnknownComponent,
                         UnknownName)
from mptc.runtime.data import Data
from mptc.runtime.estimators import ift
from mptc.runtime.program import Program
from mptc.runtime.solvers import cg

CPU = torch.device("cpu")

TINY = """
spec tiny "a tiny run"
data pt = synthetic.multitask(examples: 256, dim: 8, tasks: 12, related: 4, adversarial: 2, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 240, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [16, 4])
head pt_head = linear(out: 12)
head ft_head = linear(out: 2)
meta w: vector[12] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 32  loss mean(task_weight * bce(pt_head(encoder(x)), y))  optimizer sgd(lr: 0.1)  steps 2 }
finetune { data ft.train batch 32  loss mean(bce(ft_head(encoder(x)), y))  unroll 2 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: ift(cg(iters: 10))
meta_optimizer sgd(lr: 1.0)
train meta_steps 4 warmup 2 seed 0 device cpu log_every 1
"""


def errors_of(text: str, overrides=()):
    with pytest.raises(SpecErrors) as info:
        compile_spec(text, "s.mpt", list(overrides))
    return info.value.errors


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


# ---- 1. train dtype --------------------------------------------------------------------------------
def test_dtype_is_a_checked_train_option_lowered_into_the_plan():
    assert compile_spec(TINY, "s.mpt").train.dtype == "float32"
    assert compile_spec(TINY, "s.mpt", ["train.dtype=float64"]).train.dtype == "float64"
    assert compile_spec(TINY.replace("device cpu", "device cpu dtype float64"), "s.mpt").train.dtype == "float64"
    [e] = errors_of(TINY, ["train.dtype=float16"])
    assert (type(e), e.span.path, (e.span.col, e.span.end_col), e.message, e.hint) == (
        BadArgument, "--set train.dtype=float16", (13, 20), "'dtype' must be one of float32, float64", "float64")


def test_a_float64_program_and_its_data_are_float64_throughout():
    plan = compile_spec(TINY, "s.mpt", ["train.dtype=float64"])
    prog, data = Program(plan, CPU), Data(plan, CPU)
    assert {t.dtype for t in prog.init_params().values()} == {torch.float64}
    assert {t.dtype for t in prog.init_metas().values()} == {torch.float64}
    assert {t.dtype for xy in data.tensors["pt"].values() for t in xy} == {torch.float64}
    x, y = data.batch("finetune")
    assert x.dtype == y.dtype == torch.float64
    loss = prog.loss(plan.pretrain.loss)(prog.init_params(), prog.init_metas(), *data.batch("pretrain"))
    assert loss.dtype == torch.float64
    # float32 stays the default, and an explicit dtype still wins over the plan's
    assert Program(compile_spec(TINY, "s.mpt"), CPU).dtype == torch.float32
    assert Program(plan, CPU, dtype=torch.float32).dtype == torch.float32


def test_class_index_targets_keep_their_integer_type():
    from mptc.runtime.data import _placed
    assert _placed(torch.arange(3), CPU, torch.float64).dtype == torch.int64
    assert _placed(torch.zeros(3, dtype=torch.float32), CPU, torch.float64).dtype == torch.float64


def _run(spec_path, out, *sets):
    args = ["run", str(spec_path), "--out", str(out), "--quiet"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "meta.json").read_text()), metrics


def test_a_float64_run_differs_from_float32_only_at_float32_rounding(tmp_path):
    """Both runs start from the same values (modules and data are drawn in float32, then cast), so the
    float64 run is the float32 run computed exactly: equal to float32's rounding, and not bit for bit."""
    spec = tmp_path / "tiny.mpt"
    spec.write_text(TINY)
    m32, rows32 = _run(spec, tmp_path / "f32")
    m64, rows64 = _run(spec, tmp_path / "f64", "train.dtype=float64")
    w32, w64 = (torch.tensor(m["w"]["values"], dtype=torch.float64) for m in (m32, m64))
    assert w64.abs().max() > 1e-2                              # the meta-parameters moved
    assert 0 < _rel(w32, w64) < 1e-5                           # float32 rounding, not another computation
    for a, b in zip(rows32, rows64):
        assert abs(a["ft_val_loss"] - b["ft_val_loss"]) < 1e-5 * abs(b["ft_val_loss"])
    ckpt = torch.load(tmp_path / "f64" / "checkpoint.pt")
    assert {t.dtype for part in ckpt.values() for t in part.values()} == {torch.float64}


def test_the_quickstart_runs_in_float64_with_its_evaluation(tmp_path):
    from mptc.compiler.lower import QUICKSTART
    meta, _ = _run(QUICKSTART, tmp_path / "q", "train.dtype=float64", "train.meta_steps=3", "evaluate.seeds=1",
                   "evaluate.epochs=2")
    assert len(meta["w"]["values"]) == 100 and len(meta["task_weight"]["values"]) == 100
    ev = json.loads((tmp_path / "q" / "eval.json").read_text())
    assert set(ev) == {"meta", "no_pretrain", "pretrain"} and all(0 <= r["mean"] <= 1 for r in ev.values())


def test_a_float32_run_works_when_torchs_default_dtype_is_float64(tmp_path, float64):
    """What used to crash: data drawn in the default dtype met float32 modules."""
    spec = tmp_path / "tiny.mpt"
    spec.write_text(TINY + "evaluate finetune(epochs: 2, seeds: 1) against no_pretrain\n")
    _run(spec, tmp_path / "r", "train.meta_steps=2")
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt")
    assert {t.dtype for t in ckpt["params"].values()} == {torch.float32}


# ---- 2. l2(module) ------------------------------------------------------------------------------------
RIDGE = """
data pt = synthetic.multitask(examples: 64, dim: 5, tasks: 1, related: 1)
data ft = synthetic.multitask_ft(of: pt, examples: 32, tasks: 1) split train 0.5, val 0.5
model encoder = linear(out: 1, bias: false)
head ft_head = linear(out: 1)
meta log_lambda: scalar = -1.0
pretrain { data pt  loss mean((encoder(x) - y) ** 2) + exp(log_lambda) * l2(encoder) }
finetune { data ft.train  loss mean(bce(ft_head(encoder(x)), y)) }
meta_objective mean((encoder(x) - y) ** 2) on ft.val
hypergradient pretrain: ift(cg(iters: 100, tol: 1e-14))
train dtype float64
"""


@pytest.fixture
def ridge():
    """L_PT = |X t - y|^2 / n + lambda |t|^2, so t*(lambda) = (X^T X / n + lambda I)^-1 X^T y / n, and
    L_val = |Xv t - yv|^2 / m; d L_val / d log(lambda) = lambda * grad L_val(t*)^T dt*/dlambda with
    dt*/dlambda = -(X^T X / n + lambda I)^-1 t* (the implicit function theorem on the stationarity
    condition, here exact)."""
    plan = compile_spec(RIDGE, "ridge.mpt")
    prog = Program(plan, CPU)                                   # float64 from `train dtype float64`
    g = torch.Generator().manual_seed(0)
    n, m, d = 40, 30, 5
    X, Xv = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64)
    t_true = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = X @ t_true + 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    yv = Xv @ t_true + 0.5 * torch.randn(m, 1, generator=g, dtype=torch.float64)
    log_lam = torch.tensor(-1.0, dtype=torch.float64)

    def optimum(log_lam):
        A = X.T @ X / n + log_lam.exp() * torch.eye(d, dtype=torch.float64)
        return A, torch.linalg.solve(A, X.T @ y / n)

    def val(t):
        return ((Xv @ t - yv) ** 2).mean()

    A, t = optimum(log_lam)
    exact = log_lam.exp() * (2 * Xv.T @ (Xv @ t - yv) / m).flatten() @ -torch.linalg.solve(A, t).flatten()
    eps = 1e-5                                                  # the closed form, checked by differences
    fd = (val(optimum(log_lam + eps)[1]) - val(optimum(log_lam - eps)[1])) / (2 * eps)
    assert abs(float(exact - fd)) < 1e-8 * abs(float(exact)) and abs(float(exact)) > 1e-3
    params, metas = prog.init_params(), prog.init_metas()     # the spec's log_lambda, -1, in the plan's dtype
    assert metas["log_lambda"].dtype == params["encoder.weight"].dtype == torch.float64
    params["encoder.weight"] = t.T.clone().requires_grad_()
    return dict(plan=plan, prog=prog, params=params, metas=metas, pt=(X, y), val=(Xv, yv), exact=exact, t=t)


def test_l2_is_the_sum_of_squares_of_the_modules_parameters(ridge):
    plan, prog = ridge["plan"], ridge["prog"]
    assert plan.pretrain.trains == ("encoder",)                # named by l2 only, it is differentiated
    assert to_json(plan.pretrain.loss.right.right) == {"node": "Norm", "module": "encoder"}   # exp(.) * l2(.)
    loss = prog.loss(plan.pretrain.loss)
    params, metas = ridge["params"], ridge["metas"]
    X, y = ridge["pt"]
    t = ridge["t"]
    expected = ((X @ t - y) ** 2).mean() + metas["log_lambda"].exp() * (t ** 2).sum()
    assert torch.allclose(loss(params, metas, X, y), expected, rtol=1e-14, atol=0)
    g = torch.autograd.grad(loss(params, metas, X, y), params["encoder.weight"])[0]
    assert float(g.norm()) < 1e-12                             # t is the PT loss's exact minimiser


def test_the_ift_hypergradient_of_a_learned_l2_strength_is_the_closed_form(ridge):
    plan, prog, params, metas = ridge["plan"], ridge["prog"], ridge["params"], ridge["metas"]
    keys = prog.keys_of(plan.pretrain.trains)
    l_val = prog.loss(plan.objective.expr)(params, metas, *ridge["val"])
    v = list(torch.autograd.grad(l_val, [params[k] for k in keys]))
    hg, info = ift(prog.loss(plan.pretrain.loss), params, metas, ridge["pt"], v, keys, cg,
                   {"iters": 100, "tol": 1e-14})
    assert hg["log_lambda"].dtype == torch.float64
    assert _rel(hg["log_lambda"], ridge["exact"]) < 1e-9 and info["residual"] < 1e-12


def test_the_executors_meta_step_gives_the_same_hypergradient(ridge):
    """Through the Trainer: FT unroll (the objective does not read the FT head, so v is dL_val/dt), then
    the plan's `ift(cg(iters: 100, tol: 1e-14))`."""
    from mptc.runtime.executor import Trainer
    plan, prog = ridge["plan"], ridge["prog"]
    trainer = Trainer(plan, prog, data=None)
    state = trainer.init_state()
    state.params["encoder.weight"] = ridge["params"]["encoder.weight"]
    state.metas = ridge["metas"]
    ft = (ridge["val"][0], (ridge["val"][1] > 0).double())
    _, hg, _ = trainer.hypergradient(state, ridge["pt"], [ft], ridge["val"])
    assert _rel(hg["log_lambda"], ridge["exact"]) < 1e-9


def test_a_learned_l2_strength_meta_trains_end_to_end(tmp_path):
    spec = tmp_path / "reg.mpt"
    spec.write_text(TINY.replace("meta w: vector[12] = 0.0", "meta w: vector[12] = 0.0\nmeta log_lambda: scalar = -2.0")
                    .replace("bce(pt_head(encoder(x)), y))  optimizer", "bce(pt_head(encoder(x)), y)) + "
                             "exp(log_lambda) * l2(encoder)  optimizer"))
    meta, rows = _run(spec, tmp_path / "r", "train.dtype=float64")
    assert meta["log_lambda"] != -2.0 and len(rows) == 4


L2_ERRORS = [
    # the argument, error class, message, hint
    ("encodr", UnknownName, "unknown model or head 'encodr'", "encoder"),
    ("log_lambda", BadArgument, "l2 takes a model or head, and 'log_lambda' is a meta-parameter", None),
    ("x", BadArgument, "l2 takes a model or head, and 'x' is the batch's input", None),
    ("pt", BadArgument, "l2 takes a model or head, and 'pt' is a dataset", None),
    ("encoder(x)", BadArgument, "l2 takes a model or head by name, e.g. l2(encoder)", "l2(encoder)"),
    ("2", BadArgument, "l2 takes a model or head by name, e.g. l2(encoder)", None),
]


@pytest.mark.parametrize("arg, cls, message, hint", L2_ERRORS, ids=[e[0] for e in L2_ERRORS])
def test_l2_takes_one_model_or_head_by_name(arg, cls, message, hint):
    text = RIDGE.replace("l2(encoder)", f"l2({arg})")
    [e] = errors_of(text)
    line = text.splitlines().index(next(s for s in text.splitlines() if "l2(" in s)) + 1
    col = text.splitlines()[line - 1].index(f"l2({arg})") + 4
    assert (type(e), e.span.line, e.span.col, e.span.end_col, e.message, e.hint) == (
        cls, line, col, col + len(arg), message, hint)


def test_l2_arity_a_meta_network_and_a_module_applied_nowhere_are_errors():
    [e] = errors_of(RIDGE.replace("l2(encoder)", "l2(encoder, ft_head)"))
    assert e.message == "l2 takes 1 argument, got 2"
    net = RIDGE.replace("meta log_lambda", "meta n: network mlp(hidden: [2, 1])\nmeta log_lambda").replace(
        "l2(encoder)", "l2(n) * mean(n(x))")
    [e] = errors_of(net)
    assert e.message.startswith("l2 takes a model or head, and 'n' is a meta network")
    [e] = errors_of(RIDGE.replace("head ft_head", "head extra = linear(out: 2)\nhead ft_head").replace(
        "l2(encoder)", "l2(extra)"))
    assert (type(e), e.span.line, e.span.col, e.message) == (
        MissingPart, 5, 6, "head 'extra' is applied to no input, so its input size is unknown: apply it in a "
        "loss, e.g. extra(encoder(x)), or remove it")


# ---- 3. what --set reaches ------------------------------------------------------------------------------
BARE = "\n".join(line for line in TINY.splitlines() if not line.startswith("hypergradient")).replace(
    "  unroll 2 }", " }")                                      # no hypergradient declaration, no unroll clause
GOLDEN = Path(__file__).resolve().parent / "fixtures" / "ir" / "overrides.json"

# (case, spec, overrides, the part of the plan they change)
GOOD_OVERRIDES = [
    ("estimator added", BARE, ["hypergradient.pretrain=ift(cg(iters: 20))"], "estimators"),
    ("estimator replaced", TINY, ["hypergradient.pretrain=unroll"], "estimators"),
    ("finetune estimator", BARE, ["hypergradient.finetune=unroll"], "estimators"),
    ("estimator argument", TINY, ["hypergradient.pretrain.hvp=auto"], "estimators"),
    ("default estimator's argument", BARE, ["hypergradient.pretrain.solver=cg(iters: 5)"], "estimators"),
    ("update list", TINY, ["finetune.update=ft_head,encoder"], "finetune"),
    ("update list, brackets", TINY, ["finetune.update=[encoder, ft_head]"], "finetune"),
    ("update list, unroll clause added", BARE, ["finetune.update=ft_head,encoder"], "finetune"),
    ("split fractions", TINY, ["data.ft.split.train=0.2", "data.ft.split.test=0.5"], "splits"),
]


def _part(plan, part):
    if part == "estimators":
        return to_json(plan.estimators)
    if part == "finetune":
        return {"unroll": plan.finetune.unroll, "trains": list(plan.finetune.trains)}
    return {d.name: [list(s) for s in d.splits] for d in plan.datasets}


def test_overrides_change_the_plan_as_the_golden_file_says():
    """`UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_language_features.py` rewrites the file."""
    got = {case: _part(compile_spec(spec, "s.mpt", items), part) for case, spec, items, part in GOOD_OVERRIDES}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n", encoding="utf-8")
    assert got == json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_what_the_golden_file_holds():
    """The golden file read back in words: each override changed its part and nothing else."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    methods = {case: {e["stage"]: e["method"] for e in golden[case]} for case, *_, part in GOOD_OVERRIDES
               if part == "estimators"}
    assert methods["estimator added"]["pretrain"]["args"]["solver"]["args"]["iters"] == 20
    assert methods["estimator replaced"]["pretrain"]["name"] == "unroll"
    assert methods["estimator argument"]["pretrain"]["args"]["hvp"] == "auto"
    assert methods["estimator argument"]["pretrain"]["args"]["solver"]["args"]["iters"] == 10   # kept
    assert methods["default estimator's argument"]["pretrain"]["args"]["solver"]["name"] == "cg"
    assert golden["update list"] == {"unroll": 2, "trains": ["ft_head", "encoder"]}
    assert golden["update list, brackets"] == {"unroll": 2, "trains": ["encoder", "ft_head"]}
    assert golden["update list, unroll clause added"] == {"unroll": 1, "trains": ["ft_head", "encoder"]}
    assert golden["split fractions"]["ft"] == [["train", 0.2], ["val", 0.3], ["test", 0.5]]
    bare = compile_spec(BARE, "s.mpt")
    assert [e.method.args["solver"].name for e in bare.estimators[:1]] == ["neumann"]    # the defaults, untouched
    assert (bare.finetune.unroll, bare.finetune.trains) == (1, ("ft_head",))


def test_the_overridden_plan_runs(tmp_path):
    spec = tmp_path / "bare.mpt"
    spec.write_text(BARE)
    out = tmp_path / "r"
    _run(spec, out, "hypergradient.pretrain=ift(cg(iters: 20))", "finetune.update=ft_head,encoder",
         "data.ft.split.train=0.3", "data.ft.split.val=0.4")
    ir = json.loads((out / "ir.json").read_text())
    assert ir["finetune"]["trains"] == ["ft_head", "encoder"] and ir["datasets"][1]["splits"][0] == ["train", 0.3]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["solver_iters"] <= 20 and rows[-1]["solver_residual"] is not None


# item, error class, (col, end_col) in `--set ITEM`, message, hint
BAD_OVERRIDES = [
    ("hypergradient.pretrian=unroll", UnknownName, (15, 23),
     "unknown stage 'pretrian' (hypergradients pass through pretrain, finetune, auxiliary)", "pretrain"),
    ("hypergradient.finetune=ift", BadArgument, (24, 27), "'ift' does not apply to the finetune stage (use unroll)",
     None),
    ("hypergradient.pretrain=ift(cg(itres: 20))", BadArgument, (31, 40),
     "cg has no parameter 'itres' (it takes iters, damping, tol)", "iters"),
    ("hypergradient.pretrain=iftt", UnknownComponent, (24, 28),
     "unknown estimator 'iftt' (known: alignment, bilevel, ift, search, unroll)", "ift"),
    ("hypergradient.pretrain=3", BadArgument, (24, 25),
     "--set hypergradient.pretrain=... takes a component, e.g. NAME(ARG: VALUE)", None),
    ("hypergradient.pretrain.hvp=autoo", BadArgument, (28, 33),
     "'hvp' must be one of reverse-over-reverse, forward-over-reverse, finite-difference, auto", "auto"),
    ("hypergradient=ift", BadArgument, (1, 14),
     "use --set hypergradient.STAGE=ESTIMATOR or hypergradient.STAGE.ARGUMENT=VALUE", None),
    ("finetune.update=ft_head,encodr", UnknownName, (25, 31), "'encodr' is not a model or head", "encoder"),
    ("finetune.update=ft_head,pt_head", BadArgument, (25, 32),
     "'pt_head' is not used by the finetune loss: the unrolled FT steps cannot update it (the loss uses encoder, "
     "ft_head)", None),
    ("finetune.update=ft_head,ft_head", DuplicateName, (25, 32), "'ft_head' is named twice in the update list", None),
    ("finetune.update=ft_head,,encoder", BadArgument, (17, 33),
     "--set finetune.update takes module names separated by commas, e.g. finetune.update=ft_head,encoder", None),
    ("finetune.update=ft_head,2", BadArgument, (25, 26),
     "--set finetune.update takes module names separated by commas, e.g. finetune.update=ft_head,encoder", None),
    ("finetune.update=[]", BadArgument, (17, 19),
     "--set finetune.update takes module names separated by commas, e.g. finetune.update=ft_head,encoder", None),
    ("data.ft.split.train=0.2", OutOfRange, (15, 24), "split fractions must sum to 1, they sum to 0.8", None),
    ("data.ft.split.trian=0.2", UnknownName, (15, 20),
     "data 'ft' has no split 'trian' (its splits are train, val, test)", "train"),
    ("data.pt.split.train=0.5", UnknownName, (1, 20), "data 'pt' has no split clause to override", None),
    ("data.ftt.split.train=0.5", UnknownName, (1, 21), "no data 'ftt' in the spec", "ft"),
    ("data.ft.splits.train=0.4", BadArgument, (1, 21),
     "use --set data.NAME.ARGUMENT=VALUE, data.NAME=COMPONENT(ARGS) or data.NAME.split.PART=FRACTION",
     "data.ft.split.train"),
]


@pytest.mark.parametrize("item, cls, cols, message, hint", BAD_OVERRIDES, ids=[b[0] for b in BAD_OVERRIDES])
def test_a_bad_override_is_an_error_located_in_its_text(item, cls, cols, message, hint):
    [e] = errors_of(TINY, [item])
    assert (type(e), e.span.path, e.span.line, (e.span.col, e.span.end_col), e.message, e.hint) == (
        cls, f"--set {item}", 1, cols, message, hint)


def test_a_fraction_out_of_range_is_located_at_the_override():
    """(The sum of the fractions left is reported too, as for a spec's own split clause.)"""
    errors = errors_of(TINY, ["data.ft.split.train=0"])
    assert [(e.span.path, e.span.col, e.span.end_col, e.message) for e in errors] == [
        ("--set data.ft.split.train=0", 15, 22, "split fractions must sum to 1, they sum to 0.6"),
        ("--set data.ft.split.train=0", 21, 22, "split fraction must be in (0, 1), got 0")]


RENDERED = {
    "finetune.update=ft_head,encodr": """\
--set finetune.update=ft_head,encodr:1:25: error: 'encodr' is not a model or head
1 | finetune.update=ft_head,encodr
  |                         ^^^^^^
  = did you mean 'encoder'?
mptc: 1 error
""",
    "data.ft.split.train=0.2": """\
--set data.ft.split.train=0.2:1:15: error: split fractions must sum to 1, they sum to 0.8
1 | data.ft.split.train=0.2
  |               ^^^^^^^^^
  = note: with the other fractions of line 4 of tiny.mpt
mptc: 1 error
""",
    "hypergradient.pretrian=unroll": """\
--set hypergradient.pretrian=unroll:1:15: error: unknown stage 'pretrian' (hypergradients pass through pretrain, finetune, auxiliary)
1 | hypergradient.pretrian=unroll
  |               ^^^^^^^^
  = did you mean 'pretrain'?
mptc: 1 error
""",
}


@pytest.mark.parametrize("item", RENDERED)
def test_a_bad_override_renders_with_carets_under_its_text(item, tmp_path, capsys, monkeypatch):
    (tmp_path / "tiny.mpt").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "tiny.mpt", "--set", item]) == 2
    assert capsys.readouterr().err == RENDERED[item]


# ---- a learned weight decay: `weight_decay` as an expression of meta-parameters ------------------------
RIDGE_DECAY = RIDGE.replace("loss mean((encoder(x) - y) ** 2) + exp(log_lambda) * l2(encoder) }",
                            "loss mean((encoder(x) - y) ** 2)  optimizer sgd(lr: 0.1, weight_decay: 2 * exp(log_lambda)) }")


def test_a_learned_weight_decay_is_the_closed_form_ridge_hypergradient(ridge):
    """Coupled decay lambda(phi) adds lambda theta to the gradient, as lambda / 2 |theta|^2 in the loss
    does: the plan's loss carries that term (its optimizer's own decay 0), so the fixed point is the
    ridge solution and IFT gives the closed form in log_lambda (2 exp(a) here is the l2 spec's 2 lambda)."""
    assert RIDGE_DECAY != RIDGE
    from mptc.runtime.executor import Trainer
    plan = compile_spec(RIDGE_DECAY, "decay.mpt")
    assert plan.pretrain.optimizer.args["weight_decay"] == 0.0 and plan.pretrain.trains == ("encoder",)
    prog = Program(plan, CPU)
    X, y = ridge["pt"]
    loss = prog.loss(plan.pretrain.loss)(ridge["params"], ridge["metas"], X, y)
    same = ridge["prog"].loss(ridge["plan"].pretrain.loss)(ridge["params"], ridge["metas"], X, y)
    assert torch.allclose(loss, same, rtol=1e-14, atol=0)
    trainer = Trainer(plan, prog, data=None)
    state = trainer.init_state()
    state.params["encoder.weight"] = ridge["params"]["encoder.weight"]
    state.metas = ridge["metas"]
    ft = (ridge["val"][0], (ridge["val"][1] > 0).double())
    _, hg, _ = trainer.hypergradient(state, ridge["pt"], [ft], ridge["val"])
    assert _rel(hg["log_lambda"], ridge["exact"]) < 1e-9


@pytest.mark.parametrize("change, message", [
    (("weight_decay: 2 * exp(log_lambda)", "weight_decay: mean(x)"),
     "'x' is the batch of a stage and cannot appear here"),
    (("meta log_lambda: scalar = -1.0", "meta log_lambda: scalar = -1.0\nmeta v: vector[3] = 0.0"),
     None),
    (("weight_decay: 2 * exp(log_lambda)", "weight_decay: exp(v) + 0 * log_lambda"),
     "the pretrain optimizer's weight_decay must be a single number, but has shape [3]"),
    (("hypergradient", "meta_optimizer adam(lr: 0.1, weight_decay: exp(log_lambda))\nhypergradient"),
     "the meta-optimizer's weight_decay must be a number (an expression of meta-parameters is for a stage's "
     "optimizer)"),
])
def test_a_learned_weight_decay_is_checked(change, message):
    text = RIDGE_DECAY.replace("meta log_lambda: scalar = -1.0", "meta log_lambda: scalar = -1.0\nmeta v: vector[3] = 0.0")
    text = text.replace(*change) if change[0] in text and message else text
    if message is None:                                        # v is used by no loss: an error of its own
        assert any("'v' is used by no loss" in e.message for e in errors_of(text))
        return
    assert any(e.message == message or message in e.message for e in errors_of(text)), [e.message for e in errors_of(text)]


def test_a_meta_parameter_used_only_by_a_learned_weight_decay_counts_as_used():
    plan = compile_spec(RIDGE_DECAY, "decay.mpt")
    assert [m.name for m in plan.metas] == ["log_lambda"]
