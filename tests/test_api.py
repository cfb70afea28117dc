"""The Python API: a spec built in Python compiles to the same plan as the same spec written by hand."""
from pathlib import Path

import pytest

import mptc
from mptc import E, Spec, factored, network, scalar, vector, x, y
from mptc import space as sp
from mptc.compiler import ast
from mptc.compiler.ir import to_json
from mptc.compiler.lower import compile_spec
from mptc.compiler.parse import parse
from mptc.compiler.space import expand

SPECS = Path(__file__).resolve().parent.parent / "specs"


def quickstart(meta_optimizer=E.adam(lr=0.1)) -> Spec:
    """specs/quickstart.mpt, built in Python (docs/python.md shows the same code)."""
    s = Spec("quickstart", "Meta-learned PT task weights on a planted synthetic multitask problem")
    pt = s.data("pt", E.synthetic.multitask(examples=4096, dim=32, tasks=100, related=20, adversarial=10, seed=0))
    ft = s.data("ft", E.synthetic.multitask_ft(of=pt, examples=1536, tasks=5, seed=1),
                split={"train": 0.1, "val": 0.3, "test": 0.6})
    encoder = s.model("encoder", E.mlp(hidden=[64, 8], last_activation=False))
    pt_head = s.head("pt_head", E.linear(out=100))
    ft_head = s.head("ft_head", E.linear(out=5))
    w = s.meta("w", vector(100), init=0.0)
    task_weight = s.let("task_weight", 2 * E.sigmoid(w))
    s.pretrain(data=pt, batch=128, loss=E.mean(task_weight * E.bce(pt_head(encoder(x)), y)),
               optimizer=E.adam(lr=1e-3), steps=10)
    s.finetune(data=ft.train, batch=128, loss=E.mean(E.bce(ft_head(encoder(x)), y)),
               optimizer=E.sgd(lr=0.1), unroll=1, update=[ft_head])
    s.meta_objective(E.mean(E.bce(ft_head(encoder(x)), y)), on=ft.val)
    s.hypergradient(pretrain=E.ift(E.neumann(terms=5, scale=E.auto)), finetune="unroll")
    s.meta_optimizer(meta_optimizer)
    s.train(meta_steps=200, warmup=100, seed=0, device="auto")
    s.evaluate(E.finetune(epochs=300, lr=3e-3, patience=30, metric=E.auroc, seeds=5),
               against=["no_pretrain", "pretrain"])
    return s


def _strip(ast_node):
    """The spec's AST as text-free data: the printer's output, which ignores spans."""
    from mptc.compiler.printer import print_spec
    return print_spec(ast_node)


def test_quickstart_in_python_compiles_to_the_same_ir():
    text = (SPECS / "quickstart.mpt").read_text()
    by_hand = to_json(compile_spec(text, str(SPECS / "quickstart.mpt")))
    assert to_json(quickstart().compile()) == by_hand


def test_rendered_text_is_canonical_and_parses_back_to_the_built_tree():
    s = quickstart()
    text = s.render()
    assert text == str(s)
    assert _strip(parse(text, s.path)) == text          # printing its parse gives the same text back
    assert "optimizer adam(lr: 1e-3)" in text and "device auto" in text and "metric: auroc" in text


def test_expressions_from_python_operators():
    a, b = E.a, E.b
    cases = {
        a + 1: "a + 1", 1 + a: "1 + a", 2 - a: "2 - a", a - (b - 1): "a - (b - 1)", (a - b) - 1: "a - b - 1",
        a * b + 1: "a * b + 1", a * (b + 1): "a * (b + 1)", a / 2: "a / 2", 2 / a: "2 / a",
        -a ** 2: "-a ** 2", (-a) ** 2: "(-a) ** 2", a ** b ** 2: "a ** b ** 2", (a ** b) ** 2: "(a ** b) ** 2",
        a[0] * 3: "a[0] * 3", E.f(a, [1, 2.5], k=True, in_=-1): "f(a, [1, 2.5], k: true, in: -1)",
        E.f(s="two words"): 'f(s: "two words")', E.d.split.part: "d.split.part", E("x.y")(1e-5): "x.y(1e-5)",
    }
    for expr, text in cases.items():
        assert str(expr) == text
        assert _strip_expr(parse(text, "<t>", start="expr")) == _strip_expr(expr.node)


def _strip_expr(n):
    from mptc.compiler.printer import print_expr
    return print_expr(n)


def test_misuse_is_a_python_error():
    with pytest.raises(TypeError, match="only a name can be called"):
        (E.a + 1)(2)
    with pytest.raises(TypeError, match="cannot use"):
        E.f(object())
    with pytest.raises(AttributeError):
        (E.a + 1).b
    with pytest.raises(ValueError, match="NaN"):
        E.f(float("nan"))
    s = Spec("bad")
    with pytest.raises(ValueError, match="needs `unroll`"):
        s.finetune(update=["h"])
    with pytest.raises(TypeError, match="unknown meta type"):
        s.meta("w", "vectr")


def test_compile_errors_are_rendered_against_the_generated_text():
    s = quickstart(meta_optimizer=E.adamm(lr=-1))
    with pytest.raises(mptc.CompileError) as info:
        s.compile()
    report = str(info.value)
    assert "quickstart.mpt:" in report and "unknown optimizer 'adamm'" in report
    assert "did you mean 'adam'?" in report and "^^^^^" in report
    assert info.value.errors and "Traceback" not in report


def test_overrides_apply_to_a_python_spec():
    plan = quickstart().compile(overrides=["train.seed=3", "meta_optimizer.lr=0.5"])
    assert plan.train.seed == 3 and plan.meta_optimizer.args["lr"] == 0.5


def test_meta_types_and_all_clauses_render():
    s = Spec("kinds")
    s.meta("a", scalar(), init=1.0, bounds=(0, 2))
    s.meta("b", "scalar")
    s.meta("n", network(E.mlp(hidden=[8])))
    aux = s.space("aux", sp.product(data=["t", "d"], output=["o", "e"]))
    s.meta("f", factored(aux))
    s.pretrain(data="pt", loss=E.l, augment=E.noise(std=E.a))
    s.auxiliary(aux, data="pt", sample=2, weights=E.softmax(E.f), end_task_weight=1)
    s.hypergradient(check_every=5, pretrain="unroll")
    s.train(device="cuda:1", seed=-3)
    s.evaluate("finetune")
    assert s.render().splitlines() == [
        "spec kinds", "meta a: scalar = 1.0 in [0, 2]", "meta b: scalar", "meta n: network mlp(hidden: [8])",
        "space aux = data{t, d} x output{o, e}", "meta f: factored(aux)", "",
        "pretrain {", "  data pt", "  loss l", "  augment noise(std: a)", "}", "",
        "auxiliary aux {", "  data pt", "  sample 2 per step", "  weights softmax(f)", "  end_task_weight 1", "}", "",
        "hypergradient pretrain: unroll check every 5", 'train device "cuda:1" seed -3', "evaluate finetune()"]
    assert _strip(parse(s.render(), "k.mpt")) == s.render()


# ---- spaces ------------------------------------------------------------------------------------------
AANG = dict(data=["task", "domain", "neutral"], transform=["bert_op", "replace", "none"],
            represent=["bidirectional", "left_to_right", "right_to_left"], output=["denoise", "end_task"])


def test_space_rules_render_like_the_language():
    space = sp.product(**AANG, exclude=[sp.when(represent=["left_to_right", "right_to_left"], output="end_task"),
                                        sp.when(data=sp.not_("task"), transform="none")])
    decl = space.decl("aux")
    text = _strip(ast.Spec(decl.span, (decl,)))
    assert text == ("space aux = data{task, domain, neutral}\n  x transform{bert_op, replace, none}\n"
                    "  x represent{bidirectional, left_to_right, right_to_left}\n  x output{denoise, end_task}\n"
                    "  exclude represent in {left_to_right, right_to_left} and output == end_task\n"
                    "  exclude data != task and transform == none\n")
    by_hand = parse(text, "<t>").items[0]
    assert expand(by_hand, []).objectives == space.objectives
    assert space.objectives[0] == "task.bert_op.bidirectional.denoise" and len(space) == 54 - 18 - 12 + 4


@pytest.mark.parametrize("predicate", [
    lambda c: c.represent in ("left_to_right", "right_to_left") and c.output == "end_task",
    lambda c: c.data != "task" and c.transform == "none",
    lambda c: (c.data == "domain") != (c["output"] == "denoise"),       # not a product: several rules
    lambda c: c.objective.endswith("bidirectional.denoise"),
    lambda c: False,
    lambda c: True,
])
def test_predicates_become_rules_that_remove_exactly_the_same_objectives(predicate):
    space = sp.product(**AANG, exclude=[predicate])
    every = sp.product(**AANG)
    wanted = tuple(c.objective for c in every.combinations() if not predicate(c))
    assert space.objectives == wanted
    decl = space.decl("aux")
    reparsed = parse(_strip(ast.Spec(decl.span, (decl,))), "<t>").items[0]
    assert expand(reparsed, []).objectives == wanted


def test_a_simple_predicate_is_one_rule():
    space = sp.product(**AANG, exclude=[lambda c: c.represent != "bidirectional" and c.output == "end_task"])
    (rule,) = space.decl("aux").excludes
    assert [(c.stage, c.op, [v.name for v in c.values]) for c in rule.conditions] == [
        ("represent", "!=", ["bidirectional"]), ("output", "==", ["end_task"])]


def test_a_spec_with_a_factored_space_compiles_like_the_hand_written_one():
    def build():
        s = Spec("aang", "factored weights over a space")
        pt = s.data("pt", E.synthetic.multitask(examples=256, dim=8, tasks=12, related=4, adversarial=2, seed=0))
        ft = s.data("ft", E.synthetic.multitask_ft(of=pt, examples=240, tasks=2, seed=1),
                    split={"train": 0.4, "val": 0.3, "test": 0.3})
        encoder = s.model("encoder", E.mlp(hidden=[16, 4]))
        pt_head, ft_head = s.head("pt_head", E.linear(out=12)), s.head("ft_head", E.linear(out=2))
        aux = s.space("aux", sp.product(group=["a", "b", "c"], size=["s", "m"],
                                        exclude=[lambda c: c.group == "c" and c.size == "m"]))
        s.meta("w", vector(12), init=0.0)
        s.pretrain(data=pt, batch=32, loss=E.mean(2 * E.sigmoid(E.w) * E.bce(pt_head(encoder(x)), y)), steps=2)
        s.finetune(data=ft.train, batch=32, loss=E.mean(E.bce(ft_head(encoder(x)), y)))
        s.meta_objective(E.mean(E.bce(ft_head(encoder(x)), y)), on=ft.val)
        s.train(meta_steps=2, seed=0, device="cpu")
        return s, aux
    s, aux = build()
    text = s.render()
    assert "space aux = group{a, b, c} x size{s, m}\n  exclude group == c and size == m\n" in text
    assert to_json(s.compile()) == to_json(compile_spec(text, "aang.mpt"))
    from mptc.commands import expansions
    (found,) = expansions(parse(text, "aang.mpt"))
    assert found["objectives"] == ["a.s", "a.m", "b.s", "b.m", "c.s"]


TINY = """
spec tiny "a tiny run"
data pt = synthetic.multitask(examples: 256, dim: 8, tasks: 12, related: 4, adversarial: 2, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 240, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [16, 4])
head pt_head = linear(out: 12)
head ft_head = linear(out: 2)
meta w: vector[12] = 0.0
pretrain { data pt batch 32  loss mean(2 * sigmoid(w) * bce(pt_head(encoder(x)), y))  steps 2 }
finetune { data ft.train batch 32  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 1 warmup 0 seed 0 device cpu
"""


def test_run_returns_the_run_directory(tmp_path):
    path = tmp_path / "tiny.mpt"
    path.write_text(TINY)
    out = mptc.run(path, out=tmp_path / "run", overrides=["train.seed=1"])
    assert out == tmp_path / "run" and (out / "meta.json").exists()
    assert "seed 0" in (out / "spec.mpt").read_text() and '"seed": 1' in (out / "ir.json").read_text()
