"""The checks, `--set` overrides and AANG space expansion, table-driven: each negative case is one edit
of a small valid spec and the exact errors it must produce (class, line, column, message, hint)."""
import pytest

from mptc.compiler.lower import compile_spec
from mptc.compiler.parse import parse
from mptc.compiler.space import expand
from mptc.errors import (Unsupported, UnusedMeta, BadArgument, Cycle, DuplicateName, MissingPart, OutOfRange, ShapeMismatch, SpecErrors,
                         SyntaxProblem, UnknownComponent, UnknownName)

P = "s.mpt"
BASE = """\
data pt = synthetic.multitask(examples: 64, dim: 8, tasks: 4, related: 2)
data ft = synthetic.multitask_ft(of: pt, examples: 32, tasks: 2) split train 0.5, val 0.5
model encoder = mlp(hidden: [8, 4])
head pt_head = linear(out: 4)
head ft_head = linear(out: 2)
meta w: vector[4] = 0.0
let tw = 2 * sigmoid(w)
pretrain {
  data pt batch 16
  loss mean(tw * bce(pt_head(encoder(x)), y))
}
finetune {
  data ft.train
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 1 update ft_head
}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def errors_of(text: str, overrides=()):
    with pytest.raises(SpecErrors) as info:
        compile_spec(text, P, list(overrides))
    return info.value.errors


# ---- specs that check ----------------------------------------------------------------------------
def test_base_compiles_with_defaults():
    plan = compile_spec(BASE, P)
    assert plan.name == "s"  # no spec header: the file's stem
    assert (plan.pretrain.optimizer.name, plan.finetune.optimizer.name) == ("adam", "sgd")
    assert (plan.pretrain.steps, plan.finetune.unroll, plan.finetune.data.batch) == (10, 1, 128)
    assert [(e.stage, e.method.name) for e in plan.estimators] == [("pretrain", "ift"), ("finetune", "unroll")]
    assert plan.estimators[0].method.args["solver"].name == "neumann"
    assert (plan.train.meta_steps, plan.train.device, plan.evaluate) == (100, "auto", None)
    assert [(m.name, m.in_dim) for m in plan.modules] == [("encoder", 8), ("pt_head", 4), ("ft_head", 4)]
    assert plan.pretrain.trains == ("encoder", "pt_head") and plan.finetune.trains == ("ft_head",)


RICH = """\
spec rich "every feature at once"
data pt = synthetic.multitask(examples: 64, dim: 8, tasks: 4, related: 2, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 32, tasks: 2) split train 0.5, val 0.25, test 0.25
model encoder = mlp(hidden: [8, 4], activation: tanh, dropout: 0.1)
head pt_head = mlp(hidden: [4], out: 4)
head ft_head = linear(out: 2, bias: false)
meta s: scalar = 1 in [0, 2]
meta v: vector[4] = 0.5
meta n: network mlp(hidden: [4, 4])
let tw = s * softmax(v) + 0.1 ** 2
let feats = encoder(x)
let per_example = mean(feats)
pretrain {
  data pt batch 16
  loss mean(tw * bce(pt_head(feats), y)) + mean(n(feats)) * 0.0 - -1
  optimizer sgd(lr: 0.1, momentum: 0.9)
  steps 2
}
finetune {
  data ft.train
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 2 update ft_head, encoder
}
meta_objective mean(bce(ft_head(encoder(x)), y)[0]) on ft.val
hypergradient pretrain: ift(cg(iters: 3, damping: 0.1), hessian: encoder), finetune: unroll check every 5
meta_optimizer sgd(lr: 1)
train meta_steps 3 warmup 0 seed 1 device "cuda:0" log_every 1
evaluate finetune(epochs: 2, metric: accuracy, mode: linear) against pretrain
"""


def test_every_feature_at_once():
    plan = compile_spec(RICH, P)
    metas = {m.name: (m.kind, m.size, m.init, m.bounds) for m in plan.metas}
    assert metas == {"s": ("scalar", 1, 1.0, (0.0, 2.0)), "v": ("vector", 4, 0.5, None),
                     "n": ("network", 1, 0.0, None)}
    assert plan.estimators[0].method.args == {"solver": plan.estimators[0].method.args["solver"], "hessian": "encoder",
                                              "hessian_batch": None, "hvp": "reverse-over-reverse", "fused": False,
                                              "mixed_batches": 1, "mixed_mode": "reverse-over-reverse"}
    assert plan.estimators[0].method.args["solver"].args == {"iters": 3, "damping": 0.1, "tol": 1e-10}
    assert (plan.hg_check_every, plan.train.device, plan.finetune.trains) == (5, "cuda:0", ("ft_head", "encoder"))
    assert [(l.name, l.meta_only) for l in plan.lets] == [("tw", True), ("feats", False), ("per_example", False)]


def test_a_space_alone_is_lowered_with_its_objectives():
    plan = compile_spec(BASE + "space aux = task{mlm, cls} x rep{full, half} exclude task == mlm and rep != full", P)
    assert [(s.name, s.objectives) for s in plan.spaces] == [("aux", ("mlm.full", "cls.full", "cls.half"))]


@pytest.mark.parametrize("old, new", [
    ("let tw = 2 * sigmoid(w)", "let feats = encoder(x)\nlet g = mean(feats)\nlet tw = 2 * sigmoid(w)"),  # via a let
    ("unroll 1 update ft_head", "unroll 3"),
    ("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss sum(tw * mse(pt_head(encoder(x)), y)) / 4"),
    ("meta w: vector[4] = 0.0", "meta w: vector[4] = -1 in [-2, 2]"),
    ("meta w: vector[4] = 0.0", "meta w: vector[1]"),  # one weight broadcasts over every task
    ("data pt batch 16", "data pt batch 1"),
    ("on ft.val", "on ft.val\ntrain device cuda seed -1"),
])
def test_valid_variants(old, new):
    compile_spec(edit(old, new), P)


# ---- errors at exact positions -------------------------------------------------------------------
NEGATIVE = [
    # (old, new), [(class, line, col, end_col, message, hint)]
    (("mlp(hidden: [8, 4])", "mlp(hidden: [8, 4], in: 7)"),
     [(ShapeMismatch, 10, 30, 40, "encoder declared in: 7 but its input has 8 features", None),
      (ShapeMismatch, 14, 25, 35, "encoder declared in: 7 but its input has 8 features", None),
      (ShapeMismatch, 17, 33, 43, "encoder declared in: 7 but its input has 8 features", None)]),
    (("loss mean(bce(ft_head(encoder(x)), y))", "loss mean(bce(ft_head(x), y))"),
     [(ShapeMismatch, 17, 25, 44, "'ft_head' is applied to 4 features here but to 8 elsewhere", None)]),
    (("loss mean(bce(ft_head(encoder(x)), y))", "loss mean(bce(ft_head(encoder(x), x), y))"),
     [(BadArgument, 14, 17, 39, "'ft_head' is applied to exactly one input", None)]),
    (("loss mean(bce(ft_head(encoder(x)), y))", "loss mean(bce(ft_head(encoder(x))))"),
     [(BadArgument, 14, 13, 37, "bce takes 2 arguments, got 1", None)]),
    (("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss mean(tw * ce(pt_head(encoder(x)), y))"),
     [(ShapeMismatch, 10, 13, 44, "cannot combine shapes [4] and [batch] with '*'", None)]),
    (("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss mean(tw * bce(pt_head(encoder(x)), y)) + [1, 2]"),
     [(ShapeMismatch, 10, 8, 55, "the pretrain loss must be a single number, but has shape [2]", "mean(...)")]),
    (("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss mean(tw * bce(pt_head(encoder(x)), y)) + encoder"),
     [(BadArgument, 10, 49, 56, "'encoder' is a model: apply it, e.g. encoder(x)", None)]),
    (("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss mean(tww * bce(pt_head(encoder(x)), y))"),
     [(UnknownName, 10, 13, 16, "unknown name 'tww'", "tw")]),
    (("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss mean(tw * bce(pt_haed(encoder(x)), y))"),
     [(UnknownName, 10, 22, 29, "unknown function or module 'pt_haed'", "pt_head")]),
    (("meta w: vector[4] = 0.0", "meta w: vector[4] = 0.0 in [1, 0]"),
     [(OutOfRange, 6, 29, 30, "bounds must be two numbers [low, high] with low < high", None)]),
    (("meta w: vector[4] = 0.0", "meta w: vector[4] = 5 in [0, 1]"),
     [(OutOfRange, 6, 21, 22, "initial value 5 lies outside [0, 1]", None)]),
    (("meta w: vector[4] = 0.0", "meta w: vector[4] = x"),
     [(BadArgument, 6, 21, 22, "a meta-parameter's initial value must be a number", None)]),
    (("meta w: vector[4] = 0.0", "meta w: vector[3]"),
     [(ShapeMismatch, 10, 13, 45, "cannot combine shapes [3] and [batch, 4] with '*'", None)]),
    (("split train 0.5, val 0.5", "split train 1.5, val 0.5"),
     [(OutOfRange, 2, 72, 90, "split fractions must sum to 1, they sum to 0.5", None),
      (OutOfRange, 2, 78, 81, "split fraction must be in (0, 1), got 1.5", None)]),
    (("split train 0.5, val 0.5", "split train 0.5, val 0.5, train 0.1"),
     [(OutOfRange, 2, 72, 101, "split fractions must sum to 1, they sum to 1.1", None),
      (DuplicateName, 2, 92, 101, "split 'train' is given twice", None)]),
    (("data pt batch 16", "data pt.train batch 16"),
     [(UnknownName, 9, 8, 16, "'pt' has no split 'train' (it has no splits)", None)]),
    (("on ft.val", "on ft"),
     [(MissingPart, 17, 53, 55, "'ft' is split into train, val: name one, e.g. ft.train", None)]),
    (("on ft.val", "on ft.vall"),
     [(UnknownName, 17, 53, 60, "'ft' has no split 'vall' (its splits are train, val)", "ft.val")]),
    (("data pt batch 16", "data ptt batch 16"),
     [(UnknownName, 9, 8, 11, "unknown data 'ptt' (declared: pt, ft)", "pt")]),
    (("  data pt batch 16\n", "  data pt batch 16\n  augment noise()\n"),
     [(UnknownComponent, 10, 11, 16, "unknown augmentation 'noise' (known: crop, jitter, rotate, warp)", None)]),
    (("unroll 1 update ft_head", "unroll 1 update tw"),
     [(UnknownName, 15, 19, 21, "'tw' is not a model or head", None)]),
    (("unroll 1 update ft_head", "steps 3"),
     [(BadArgument, 15, 3, 10, "'steps' is not a clause of finetune (it takes data, loss, optimizer, unroll)", None)]),
    (("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w) + tw"),
     [(Cycle, 7, 5, 7, "'let tw' refers to itself: tw -> tw", None)]),
    (("head ft_head = linear(out: 2)", "head ft_head = linear(out: 2)\nmodel ft_head = mlp(hidden: [2])"),
     [(DuplicateName, 6, 7, 14, "'ft_head' is already declared", None)]),
    (("on ft.val", "on ft.val\nhypergradient pretrain: ift check every 0"),
     [(OutOfRange, 18, 1, 42, "check every must be >= 1, got 0", None)]),
    (("on ft.val", "on ft.val\nhypergradient pretrain: ift(cg(iters: 0))"),
     [(OutOfRange, 18, 39, 40, "'iters' must be >= 1, got 0", None)]),
    (("on ft.val", "on ft.val\nhypergradient finetune: unroll(steps: 2)"),
     [(BadArgument, 18, 32, 40, "unroll has no parameter 'steps' (it takes none)", None)]),
    (("on ft.val", "on ft.val\nhypergradient pretrain: 3"),
     [(BadArgument, 18, 25, 26, "expected a estimator name", None)]),
    (("on ft.val", "on ft.val\ntrain seed 0 seed 1 device tpu"),
     [(DuplicateName, 18, 14, 18, "train option 'seed' is given twice", None),
      (BadArgument, 18, 28, 31, "device must be auto, cpu, cuda or cuda:N, got tpu", "cpu")]),
    (("on ft.val", "on ft.val\nevaluate finetune(metric: auroc, metric: accuracy) against nothing"),
     [(MissingPart, 18, 1, 67, "evaluate fine-tunes on 'ft', which needs the splits train, val and test "
                                "(missing: test)", None),
      (DuplicateName, 18, 34, 50, "'metric' is given twice", None),
      (UnknownComponent, 18, 60, 67, "unknown baseline 'nothing' (known: bert, bilevel, cotrain, cotrain_pcgrad, gpt, meta_tartan, no_auxiliary, no_pretrain, pretrain, search, static_multitask, tapt, xlnet)", None)]),
    (("data pt = synthetic.multitask(examples: 64, dim: 8, tasks: 4, related: 2)",
      "data pt = synthetic.multitask(examples: 64, tasks: 4, related: 2)"),
     [(BadArgument, 1, 11, 66, "synthetic.multitask needs 'dim'", None)]),
    (("synthetic.multitask_ft(of: pt,", "synthetic.multitask_ft(of: ptt,"),
     [(BadArgument, 2, 38, 41, "'of' must name a data declaration", "pt")]),
    (("synthetic.multitask_ft(of: pt,", "synthetic.multitask_ft(of: ft,"),
     [(Cycle, 2, 6, 8, "'data ft' is built from itself: ft -> ft", None)]),
    (("head pt_head = linear(out: 4)", "head pt_head = linear(out: 4.5)"),
     [(BadArgument, 4, 28, 31, "'out' must be an integer, got 4.5", None)]),
    (("head pt_head = linear(out: 4)", "head pt_head = linear(out: 4, bias: maybe)"),
     [(BadArgument, 4, 37, 42, "'bias' must be true or false, got a name", None)]),
    (("head pt_head = linear(out: 4)", "head pt_head = linear(out: 4, bias: \"yes\")"),
     [(BadArgument, 4, 37, 42, "'bias' must be true or false, got 'yes'", None)]),
    (("model encoder = mlp(hidden: [8, 4])", "model encoder = mlp(hidden: [8, 4], activation: relu6)"),
     [(BadArgument, 3, 49, 54, "'activation' must be one of relu, tanh, gelu, sigmoid, identity", "relu")]),
    (("model encoder = mlp(hidden: [8, 4])", "model encoder = mlp(hidden: [8, 4.5])"),
     [(BadArgument, 3, 29, 37, "'hidden' must be a list of integers, got [8, 4.5]", None)]),
    (("model encoder = mlp(hidden: [8, 4])", "model encoder = mlp(hidden: w)"),
     [(BadArgument, 3, 29, 30, "'hidden' must be a list of integers, got a name", None)]),
    (("model encoder = mlp(hidden: [8, 4])", "model encoder = mlp(hidden: 2 * 4)"),
     [(BadArgument, 3, 29, 34, "'hidden' must be a constant value", None)]),
]


def _ids():
    return [f"{i:02d}-{new.split()[-1][:20]}" for i, ((_, new), _) in enumerate(NEGATIVE)]


@pytest.mark.parametrize("change, expected", NEGATIVE, ids=_ids())
def test_error_class_position_message_hint(change, expected):
    got = [(type(e), e.span.line, e.span.col, e.span.end_col, e.message, e.hint) for e in errors_of(edit(*change))]
    assert got == expected
    assert all(e.span.path == P for e in errors_of(edit(*change)))


def test_all_errors_are_collected_and_sorted_by_position():
    text = edit("data pt batch 16", "data pt batch 0", edit("mlp(hidden", "mlpp(hidden", edit("on ft.val", "on ft.vl")))
    errors = errors_of(text)
    assert [(e.span.line, e.span.col) for e in errors] == [(3, 17), (9, 3), (17, 53)]
    assert [type(e) for e in errors] == [UnknownComponent, OutOfRange, UnknownName]


def test_missing_parts_point_at_the_end_of_the_file():
    errors = errors_of("data pt = synthetic.multitask(examples: 64, dim: 8, tasks: 4, related: 2)\n")
    assert [e.message for e in errors] == ["the spec has no pretrain block", "the spec has no finetune block",
                                           "the spec has no meta_objective",
                                           "the spec declares no meta-parameter: nothing to learn"]
    assert {(e.span.line, e.span.col) for e in errors} == {(1, 74)}  # just after the last character


def test_an_empty_spec_is_an_error_not_a_crash():
    assert len(errors_of("")) == 4


def test_errors_in_an_unused_let_are_still_reported():
    errors = errors_of(edit("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w)\nlet unused = encoder(q)"))
    assert [(e.span.line, e.span.col, e.message) for e in errors] == [(8, 22, "unknown name 'q'")]


def test_a_syntax_error_stops_before_the_checks():
    with pytest.raises(SyntaxProblem):
        compile_spec(edit("model encoder =", "model encoder :"), P)


# ---- --set overrides -----------------------------------------------------------------------------
OVERRIDES = [
    ("train.seed=3", lambda p: p.train.seed, 3),
    ("train.device=cpu", lambda p: p.train.device, "cpu"),
    ('train.device="cuda:1"', lambda p: p.train.device, "cuda:1"),
    ("pretrain.optimizer.lr=1e-4", lambda p: p.pretrain.optimizer.args["lr"], 1e-4),
    ("finetune.optimizer.lr=0.5", lambda p: p.finetune.optimizer.args["lr"], 0.5),
    ("data.pt.seed=2", lambda p: p.datasets[0].source.args["seed"], 2),
    ("data.pt.dim=16", lambda p: (p.datasets[0].x_dim, p.modules[0].in_dim), (16, 16)),
    ("finetune.unroll=3", lambda p: p.finetune.unroll, 3),
    ("pretrain.steps=4", lambda p: p.pretrain.steps, 4),
    ("pretrain.data.batch=64", lambda p: p.pretrain.data.batch, 64),
    ("finetune.data.batch=8", lambda p: (p.finetune.data.batch, p.objective.data.batch), (8, 8)),
    ("model.encoder.hidden=[16, 2]", lambda p: (p.modules[0].component.args["hidden"], p.modules[1].in_dim),
     ([16, 2], 2)),
    ("head.pt_head.bias=false", lambda p: p.modules[1].component.args["bias"], False),
    ("meta.w.init=-0.5", lambda p: p.metas[0].init, -0.5),
    # a whole component in place of the one written
    ("meta_optimizer=sgd(lr: 1e6)", lambda p: (p.meta_optimizer.name, p.meta_optimizer.args["lr"]), ("sgd", 1e6)),
    ("pretrain.optimizer=sgd(lr: 0.2, momentum: 0.9)", lambda p: (p.pretrain.optimizer.name,
                                                                  p.pretrain.optimizer.args["momentum"]), ("sgd", 0.9)),
    ("finetune.optimizer=adam", lambda p: p.finetune.optimizer.name, "adam"),
    ("model.encoder=linear(out: 3)", lambda p: (p.modules[0].component.name, p.modules[1].in_dim), ("linear", 3)),
]


def test_a_vector_length_follows_other_data():
    """The real dataset has other task counts than its stand-in: the data, the head and the weights change
    together; the length alone leaves the shapes at odds, reported against the spec."""
    plan = compile_spec(BASE, P, ["data.pt.tasks=6", "head.pt_head.out=6", "meta.w.length=6"])
    assert (plan.metas[0].size, plan.datasets[0].y_dim, plan.modules[1].component.args["out"]) == (6, 6, 6)
    assert "cannot combine shapes" in str(errors_of(BASE, ["meta.w.length=6"])[0].message)
    scalar = edit("meta w: vector[4] = 0.0", "meta w: scalar = 0.0", BASE)
    assert errors_of(scalar, ["meta.w.length=3"])[0].message == "'w' is not a vector: only a vector has a length"
    zero = errors_of(BASE, ["meta.w.length=0"])[0]          # a range error points at the override
    assert (zero.message, zero.span.path) == ("a vector needs at least one entry, got 0", "--set meta.w.length=0")


def test_a_whole_evaluation_can_be_overridden():
    from mptc.compiler.lower import QUICKSTART
    text = open(QUICKSTART).read()
    plan = compile_spec(text, QUICKSTART, ["evaluate=finetune(seeds: 2, mode: linear)"])
    assert (plan.evaluate.protocol.args["seeds"], plan.evaluate.protocol.args["mode"]) == (2, "linear")
    assert plan.evaluate.baselines == compile_spec(text, QUICKSTART).evaluate.baselines      # `against` is kept


# an override changes a clause the spec has: `pretrain.steps` needs a `steps` clause, `.optimizer.lr` an optimizer
WITH_OPTIMIZERS = edit("  data ft.train\n", "  data ft.train\n  optimizer sgd(lr: 0.1)\n",
                       edit("  data pt batch 16\n", "  data pt batch 16\n  steps 10\n  optimizer adam()\n"))


@pytest.mark.parametrize("item, read, value", OVERRIDES, ids=[o[0] for o in OVERRIDES])
def test_override_changes_the_plan(item, read, value):
    assert read(compile_spec(WITH_OPTIMIZERS, P, [item])) == value


def test_override_of_a_clause_the_spec_lacks():
    with pytest.raises(SpecErrors) as info:
        compile_spec(BASE, P, ["pretrain.optimizer.lr=1e-4"])
    assert info.value.errors[0].message == "'pretrain' has no 'optimizer' clause"


def test_later_overrides_win_and_the_spec_text_is_untouched():
    plan = compile_spec(BASE, P, ["train.seed=1", "train.seed=2"])
    assert plan.train.seed == 2
    assert compile_spec(BASE, P).train.seed == 0


BAD_OVERRIDES = [
    # item, class, (col, end_col) in `--set ITEM`, message, hint
    ("train.sede=3", BadArgument, (7, 11),
     "unknown train option 'sede' (known: meta_steps, warmup, seed, device, log_every, max_nonfinite, reset_every, dtype, precision, checkpoint_every)", "seed"),
    ("train.seed=x", BadArgument, (12, 13), "'seed' must be an integer, got a name", None),
    ("train.seed=1.5", BadArgument, (12, 15), "'seed' must be an integer, got 1.5", None),
    ('train.seed="3"', BadArgument, (12, 15), "'seed' must be an integer, got '3'", None),
    ("train.meta_steps=0", OutOfRange, (18, 19), "'meta_steps' must be >= 1, got 0", None),
    ("train.reset_every=-1", OutOfRange, (19, 21), "'reset_every' must be >= 0, got -1", None),
    ("train.reset_evry=4", BadArgument, (7, 17),
     "unknown train option 'reset_evry' (known: meta_steps, warmup, seed, device, log_every, max_nonfinite, "
     "reset_every, dtype, precision, checkpoint_every)", "reset_every"),
    ("train.device=gpu", BadArgument, (14, 17), "device must be auto, cpu, cuda or cuda:N, got gpu", "cuda"),
    ("trian.seed=1", UnknownName, (1, 11),
     "unknown override root 'trian' (known: data, model, head, train, meta_optimizer, evaluate, pretrain, finetune, "
     "meta, hypergradient)", "train"),
    ("train=3", BadArgument, (1, 6), "use --set train.KEY=VALUE", None),
    ("meta_optimizer=3", BadArgument, (16, 17), "--set meta_optimizer=... takes a component, e.g. NAME(ARG: VALUE)",
     None),
    ("meta_optimizer=sgdd(lr: 1)", UnknownComponent, (16, 20),
     "unknown optimizer 'sgdd' (known: adam, sgd)", "sgd"),
    ("model.encoder=mlp(hiden: [4])", BadArgument, (19, 29), "mlp has no parameter 'hiden' (it takes hidden, in, activation, dropout, last_activation)", "hidden"),
    ("train.seed", BadArgument, (1, 11), "--set takes KEY=VALUE, e.g. --set train.seed=3", None),
    ("train.seed=", BadArgument, (1, 11), "--set takes KEY=VALUE, e.g. --set train.seed=3", None),
    ("pretrain.optimizer.lr=0", OutOfRange, (23, 24), "'lr' must be > 0, got 0", None),
    ("pretrain.optimizer.lr=-1e-3", OutOfRange, (23, 28), "'lr' must be > 0, got -0.001", None),
    ("pretrain.optimizer.lrr=1e-4", BadArgument, (20, 28),
     "adam has no parameter 'lrr' (it takes lr, beta1, beta2, eps, weight_decay, halflife)", "lr"),
    ("pretrain.optimiser.lr=1", UnknownName, (1, 22),
     "cannot override 'optimiser.lr' of pretrain (try: optimizer.lr, optimizer, steps, data.batch)", "optimizer.lr"),
    ("data.pt.seed=x", BadArgument, (14, 15), "'seed' must be an integer, got a name", None),
    ("data.pt.sed=2", BadArgument, (9, 14),
     "synthetic.multitask has no parameter 'sed' (it takes examples, dim, tasks, related, adversarial, factors, "
     "related_factors, noise, prototypes, spread, seed)", "seed"),
    ("data.ptt.seed=2", UnknownName, (1, 14), "no data 'ptt' in the spec", "pt"),
    ("data.pt=2", BadArgument, (9, 10), "--set data.pt=... takes a component, e.g. NAME(ARG: VALUE)", None),
    ("data=2", BadArgument, (1, 5),
     "use --set data.NAME.ARGUMENT=VALUE, data.NAME=COMPONENT(ARGS) or data.NAME.split.PART=FRACTION", None),
    ("finetune.unroll=0", OutOfRange, (10, 18), "unroll must be >= 1, got 0", None),
    ("finetune.unroll=2.5", BadArgument, (17, 20), "'unroll' must be an integer", None),
    ("finetune.steps=2", UnknownName, (1, 15), "'finetune' has no 'steps' clause to override", None),
    ("pretrain.data.batch=0", OutOfRange, (15, 22), "batch must be >= 1, got 0", None),
    ("pretrain.data.batch=x", BadArgument, (21, 22), "'data.batch' must be an integer", None),
    ("meta.w=1", BadArgument, (1, 7), "use --set meta.NAME.init=VALUE or meta.NAME.length=N", None),
    ("meta.w.length=2.5", BadArgument, (15, 18), "'length' must be an integer", None),
    ("meta.v.init=1", UnknownName, (1, 12), "no meta-parameter 'v' in the spec", None),
    ("evaluate.seeds=3", UnknownName, (1, 15), "the spec has no 'evaluate' to override", None),
    ("train.seed=(", SyntaxProblem, (13, 14),
     "syntax error: unexpected end of file; expected one of '(', '-', '[', a name, a number, a string", None),
    ("train.seed=f(1", SyntaxProblem, (15, 16), "syntax error: missing ')'", None),
]


@pytest.mark.parametrize("item, cls, cols, message, hint", BAD_OVERRIDES, ids=[b[0] for b in BAD_OVERRIDES])
def test_bad_override(item, cls, cols, message, hint):
    with pytest.raises((SpecErrors, SyntaxProblem)) as info:
        compile_spec(WITH_OPTIMIZERS, P, [item])
    errors = info.value.errors if isinstance(info.value, SpecErrors) else [info.value]
    assert len(errors) == 1
    e = errors[0]
    assert (type(e), e.span.path, e.span.line, (e.span.col, e.span.end_col), e.message, e.hint) == (
        cls, f"--set {item}", 1, cols, message, hint)


# ---- AANG spaces ---------------------------------------------------------------------------------
def _space(text):
    errors = []
    result = expand(parse(text, P).items[0], errors)
    return result, errors


@pytest.mark.parametrize("text, objectives, removed", [
    ("space s = a{p}", ("p",), ()),
    ("space s = a{p, q} x b{u, v}", ("p.u", "p.v", "q.u", "q.v"), ()),
    ("space s = a{p, q} x b{u, v} exclude a == p", ("q.u", "q.v"), (2,)),
    ("space s = a{p, q} x b{u, v} exclude a == p and b == v", ("p.u", "q.u", "q.v"), (1,)),
    ("space s = a{p, q} x b{u, v} exclude a != p", ("p.u", "p.v"), (2,)),
    ("space s = a{p, q, r} x b{u} exclude a in {p, r}", ("q.u",), (2,)),
    # the first rule that matches removes a combination; later rules count only what is left
    ("space s = a{p, q} x b{u, v} exclude a == p exclude b == u", ("q.v",), (2, 1)),
    ("space s = a{p, q} x b{u, v} exclude a == p exclude a == p and b == u", ("q.u", "q.v"), (2, 0)),
    ("space s = t{x, y} x o{m, c} x r{f, h}",
     ("x.m.f", "x.m.h", "x.c.f", "x.c.h", "y.m.f", "y.m.h", "y.c.f", "y.c.h"), ()),
])
def test_space_expansion(text, objectives, removed):
    result, errors = _space(text)
    assert errors == []
    assert result.objectives == objectives
    assert result.removed == removed
    assert len(set(result.objectives)) == len(result.objectives)


def test_space_counts_and_stable_names_at_scale():
    stages = " x ".join(f"s{i}{{{', '.join(f'c{i}{j}' for j in range(4))}}}" for i in range(4))
    result, _ = _space(f"space big = {stages} exclude s0 == c00 and s1 != c10")
    assert len(result.objectives) == 4 ** 4 - 1 * 3 * 4 * 4
    assert result.objectives[0] == "c00.c10.c20.c30"
    assert result.objectives == _space(f"space big = {stages} exclude s0 == c00 and s1 != c10")[0].objectives
    assert result.stages == ("s0", "s1", "s2", "s3")


@pytest.mark.parametrize("text, expected", [
    ("space s = a{p} x a{q}", [(DuplicateName, 1, 18, "stage 'a' appears twice in space 's'", None)]),
    ("space s = a{p, p}", [(DuplicateName, 1, 13, "choice 'p' is listed twice", None),
                           (DuplicateName, 1, 16, "choice 'p' is listed twice", None)]),
    ("space s = a{p} exclude b == p", [(UnknownName, 1, 24, "exclude names unknown stage 'b'", None)]),
    ("space s = task{p} exclude tsk == p", [(UnknownName, 1, 27, "exclude names unknown stage 'tsk'", "task")]),
    ("space s = a{pq, r} exclude a in {pqq, r}", [(UnknownName, 1, 34, "'pqq' is not a choice of a", "pq")]),
])
def test_space_errors(text, expected):
    _, errors = _space(text)
    assert [(type(e), e.span.line, e.span.col, e.message, e.hint) for e in errors] == expected


# ---- specs that checked once and then crashed the run (each a located error now) -------------------
CRASHED = [
    # a meta-parameter no loss uses: its hypergradient would always be zero
    (("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss mean(bce(pt_head(encoder(x)), y))"),
     UnusedMeta, (6, 6), "meta-parameter 'w' is used by no loss"),
    # a let that uses it, but that no loss uses, does not count
    (("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss mean(bce(pt_head(encoder(x)), y))\n  steps 2"),
     UnusedMeta, (6, 6), "meta-parameter 'w' is used by no loss"),
    (("unroll 1 update ft_head", "unroll 1 update pt_head"), BadArgument, (15, 19),
     "'pt_head' is not used by the finetune loss: the unrolled FT steps cannot update it (the loss uses encoder, "
     "ft_head)"),
    (("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w[200])"), OutOfRange, (7, 24),
     "index 200 is out of range for a length of 4 (0 to 3)"),
    (("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w[-5])"), OutOfRange, (7, 24),
     "index -5 is out of range for a length of 4 (0 to 3)"),
    (("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w[1.5])"), BadArgument, (7, 24),
     "an index must be an integer, got 1.5"),
    (("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w[0][0])"), ShapeMismatch, (7, 22),
     "cannot index a single number"),
    (("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w) / 0"), OutOfRange, (7, 27), "division by zero"),
    (("let tw = 2 * sigmoid(w)", "let tw = 2e400 * sigmoid(w)"), OutOfRange, (7, 10),
     "the number 2e400 is too large (it overflows to infinity)"),
    (("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(t: w)"), BadArgument, (7, 22),
     "sigmoid takes 1 positional argument and no keywords, got 't: ...'"),
    (("data pt batch 16", "data pt batch 100000001"), OutOfRange, (9, 3), "batch must be <= 100000000"),
    (("  data pt batch 16", "  data pt batch 16\n  steps 1000001"), OutOfRange, (10, 3), "steps must be <= 1000000"),
    (("unroll 1 update", "unroll 10001 update"), OutOfRange, (15, 3), "unroll must be <= 10000"),
    (("tasks: 4, related: 2", "tasks: 4, related: 5"), BadArgument, (1, 11),
     "synthetic.multitask: related + adversarial = 5 exceeds tasks = 4"),
    (("examples: 64", "examples: 10000000000"), OutOfRange, (1, 41), "'examples' must be <= 100000000"),
]


@pytest.mark.parametrize("change, cls, where, message", CRASHED, ids=[c[3][:30] for c in CRASHED])
def test_what_used_to_crash_the_run_is_a_located_error(change, cls, where, message):
    errors = errors_of(edit(*change))
    assert len(errors) == 1, [e.message for e in errors]
    e = errors[0]
    assert (type(e), (e.span.line, e.span.col)) == (cls, where) and e.message.startswith(message), e.message


@pytest.mark.parametrize("option, message", [("meta_steps 1000000000", "'meta_steps' must be <= 100000000, got 1000000000"),
                                             ("warmup 10000000000", "'warmup' must be <= 1000000000, got 10000000000")])
def test_train_counts_beyond_any_run_are_errors(option, message):
    errors = errors_of(BASE + f"train {option}\n")
    assert [e.message for e in errors] == [message]


def test_an_index_selects_along_the_first_axis():
    plan = compile_spec(edit("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w[3]) + 0 * w"), P)
    assert plan.lets[0].meta_only


# ---- lowering is total: every AST node type reaches the plan, or the checker rejects it ---------------
def _ir_text(text):
    import json
    from mptc.compiler.ir import to_json
    return json.dumps(to_json(compile_spec(text, P)), sort_keys=True)


_SCALAR = "meta w: vector[4] = 0.0"
TOTAL = {  # AST class -> a change of BASE that uses it (None: BASE itself uses it)
    "Number": ("let tw = 2 * sigmoid(w)", "let tw = 3 * sigmoid(w)"),
    "String": ("head ft_head = linear(out: 2)", 'head ft_head = linear(out: 2)\nspec s "a description"'),
    "Ref": ("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w) + w"),
    "Kwarg": ("linear(out: 2)", "linear(out: 2, bias: false)"),
    "Call": ("let tw = 2 * sigmoid(w)", "let tw = 2 * softplus(w)"),
    "BinOp": ("let tw = 2 * sigmoid(w)", "let tw = 2 + sigmoid(w)"),
    "Neg": ("let tw = 2 * sigmoid(w)", "let tw = -2 * sigmoid(w)"),
    "Index": ("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w[1]) + 0 * w"),
    "ListExpr": ("model encoder = mlp(hidden: [8, 4])", "model encoder = mlp(hidden: [8, 8, 4])"),
    "Ident": ("unroll 1 update ft_head", "unroll 1 update ft_head, encoder"),
    "SpecHeader": ("head ft_head = linear(out: 2)", 'head ft_head = linear(out: 2)\nspec renamed'),
    "SplitPart": ("split train 0.5, val 0.5", "split train 0.6, val 0.4"),
    "DataDecl": ("data pt = synthetic.multitask(examples: 64,", "data pt = synthetic.multitask(examples: 80,"),
    "ModelDecl": ("model encoder = mlp(hidden: [8, 4])", "model encoder = linear(out: 4)"),
    "HeadDecl": ("head pt_head = linear(out: 4)", "head pt_head = mlp(hidden: [3], out: 4)"),
    "ScalarType": (_SCALAR, "meta w: scalar = 0.0"),
    "VectorType": (_SCALAR, "meta w: vector[1] = 0.0"),
    "NetworkType": ("let tw = 2 * sigmoid(w)", "meta n: network mlp(hidden: [2, 1])\n"
                    "let tw = 2 * sigmoid(w) * mean(n(x))"),
    "FactoredType": ("aang", "meta aux_w: factored(aux) = 0.0", "meta aux_w: vector[24] = 0.0"),
    "MetaDecl": (_SCALAR, "meta w: vector[4] = 0.5 in [0, 1]"),
    "LetDecl": ("let tw = 2 * sigmoid(w)", "let tw = 2 * sigmoid(w)\nlet unused = 1"),
    "DataClause": ("data pt batch 16", "data pt batch 8"),
    "LossClause": ("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss sum(tw * bce(pt_head(encoder(x)), y))"),
    "OptimizerClause": ("data pt batch 16", "data pt batch 16\n  optimizer sgd(lr: 0.1)"),
    "StepsClause": ("data pt batch 16", "data pt batch 16\n  steps 3"),
    "UnrollClause": ("unroll 1 update ft_head", "unroll 2 update ft_head"),
    "AugmentClause": ("data pt batch 16", "data pt batch 16\n  augment jitter(std: 0.1)"),
    "SampleClause": ("aang", "sample 3 per step", "sample 2 per step"),
    "WeightsClause": ("aang", "weights softmax(aux_w)", "weights exp(aux_w)"),
    "EndTaskWeightClause": ("aang", "end_task_weight 2 * sigmoid(end_w)", "end_task_weight sigmoid(end_w)"),
    "Stage": None,
    "Factor": ("head ft_head = linear(out: 2)", "head ft_head = linear(out: 2)\nspace s = a{p, q}"),
    "Condition": ("head ft_head = linear(out: 2)", "head ft_head = linear(out: 2)\nspace s = a{p, q} exclude a == p"),
    "Exclude": ("head ft_head = linear(out: 2)", "head ft_head = linear(out: 2)\nspace s = a{p, q} exclude a in {p}"),
    "SpaceDecl": ("head ft_head = linear(out: 2)", "head ft_head = linear(out: 2)\nspace s = a{p}"),
    "ObjectiveDecl": ("meta_objective mean(", "meta_objective sum("),
    "HgEntry": ("meta_objective mean(", "hypergradient pretrain: ift(cg)\nmeta_objective mean("),
    "HypergradientDecl": ("meta_objective mean(", "hypergradient finetune: unroll check every 3\nmeta_objective mean("),
    "MetaOptimizerDecl": ("meta_objective mean(", "meta_optimizer sgd(lr: 1)\nmeta_objective mean("),
    "Option": ("meta_objective mean(", "train seed 4\nmeta_objective mean("),
    "TrainDecl": ("meta_objective mean(", "train warmup 3\nmeta_objective mean("),
    "EvaluateDecl": ("meta_objective mean(", "evaluate restarts(inits: [0])\nmeta_objective mean("),
    "ImportDecl": ("head ft_head = linear(out: 2)", "head ft_head = linear(out: 2)\nimport json"),
    "Spec": None,
}


def test_every_ast_node_type_is_lowered_or_rejected():
    """A node type the grammar builds either changes the plan when a spec uses it (it is lowered, not
    dropped), or is a located `unsupported` error; a new node type without an entry here fails."""
    import attrs as _attrs
    from mptc.compiler import ast as A
    kinds = {n for n, v in vars(A).items() if isinstance(v, type) and _attrs.has(v) and v.__module__ == A.__name__}
    assert kinds == set(TOTAL)
    from tests.conftest import aang_spec
    base, aang = _ir_text(BASE), _ir_text(aang_spec())
    for name, change in TOTAL.items():
        if change is not None and change[0] == "aang":   # the auxiliary block's parts, in a text spec
            assert _ir_text(edit(*change[1:], text=aang_spec())) != aang, f"{name} is not lowered into the plan"
        elif change is not None:
            assert _ir_text(edit(*change)) != base, f"{name} is not lowered into the plan"


def test_baselines_with_a_protocol_that_compares_none_are_a_located_error():
    """`evaluate restarts(...) against pretrain, cotrain` passed check and its baselines never ran."""
    errors = errors_of(BASE + "evaluate restarts(inits: [0, 1]) against pretrain, cotrain\n")
    assert [(e.span.line, e.span.col, e.message) for e in errors] == [
        (BASE.count("\n") + 1, 42, "restarts compares no baselines: drop 'against pretrain, cotrain'")]


def test_a_baseline_named_twice_is_a_located_error():
    """`against no_pretrain, no_pretrain` ran the baseline once and said nothing."""
    errors = errors_of(edit("split train 0.5, val 0.5", "split train 0.4, val 0.3, test 0.3")
                       + "evaluate finetune(epochs: 2) against no_pretrain, no_pretrain\n")
    assert [(type(e), e.span.line, e.span.col, e.message) for e in errors] == [
        (DuplicateName, BASE.count("\n") + 1, 51, "baseline 'no_pretrain' is named twice")]


def test_a_module_applied_to_data_of_two_widths_names_both_data():
    text = BASE.replace("data ft = synthetic.multitask_ft(of: pt, examples: 32, tasks: 2)",
                        "data ft = synthetic.multitask(examples: 32, dim: 6, tasks: 2, related: 1)")
    messages = {e.message for e in errors_of(text)}
    assert messages == {"'encoder' is applied to 6 features here (on data 'ft') but to 8 elsewhere (on data 'pt')"}


def test_ce_compares_the_head_width_with_one_hot_targets():
    """A head narrower than the one-hot targets' classes failed at run (an index past the logits); a wider one
    trained silently against classes that never occur."""
    text = BASE.replace("loss mean(tw * bce(pt_head(encoder(x)), y))", "loss mean(tw[0] * ce(pt_head(encoder(x)), y))")
    compile_spec(text, P)                                                   # 4 classes, one-hot over 4
    for out in (3, 5):
        messages = [e.message for e in errors_of(text.replace("linear(out: 4)", f"linear(out: {out})"))]
        assert f"ce has {out} classes (its logits [batch, {out}]) but one-hot targets over 4 ([batch, 4]): make " \
               "the head's out 4" in messages, messages


def test_ce_takes_class_indices_as_a_column():
    import torch
    from mptc.runtime.functions import ce
    logits, index = torch.randn(3, 5, dtype=torch.float64), torch.tensor([1, 4, 0])
    expected = torch.nn.functional.cross_entropy(logits, index, reduction="none")
    assert torch.equal(ce(logits, index[:, None].double()), expected)             # [B, 1]: indices, not argmax
    assert torch.equal(ce(logits, torch.nn.functional.one_hot(index, 5).double()), expected)
