"""lower(checked) -> ir.Plan, and compile_spec(text, path) running the whole chain.

    >>> plan = compile_spec(open(QUICKSTART).read(), QUICKSTART)
    >>> plan.pretrain.steps, plan.finetune.unroll
    (10, 1)
"""
from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import attrs

from mptc.compiler import ast, ir
from mptc.compiler.check import TRAIN_OPTIONS, Checked, _calls, _free, check, default_optimizer
from mptc.compiler.parse import parse
from mptc.compiler.values import check_value, defaults, fold
from mptc.components.catalog import ESTIMATOR_DEFAULTS
from mptc.components.registry import ESTIMATORS

QUICKSTART = str(Path(__file__).resolve().parent.parent / "specs" / "quickstart.mpt")
DEFAULT_BATCH = 128
DEFAULT_STEPS = {"pretrain": 10, "finetune": 1}


def _component(checked: dict | None) -> ir.Component | None:
    if checked is None:
        return None
    args = {k: _component(v) if isinstance(v, dict) and "name" in v else v for k, v in checked["args"].items()}
    return ir.Component(checked["name"], args)


class _Lower:
    """Builds the plan from a checked spec (which guarantees every lookup here succeeds)."""

    def __init__(self, c: Checked):
        self.c = c
        self.metas = {n for n, d in c.decls.items() if isinstance(d, ast.MetaDecl)}
        self.lets = {n: d for n, d in c.decls.items() if isinstance(d, ast.LetDecl)}
        self.applied = {n for n, d in c.decls.items()        # what `name(input)` applies (not a let's name)
                        if isinstance(d, (ast.ModelDecl, ast.HeadDecl)) or isinstance(getattr(d, "type", None),
                                                                                      ast.NetworkType)}

    def expr(self, e) -> ir.IExpr:
        kind = type(e)  # the commonest kinds first: a 1,000-line spec lowers thousands of these
        if kind is ast.BinOp:
            return ir.Bin(e.op, self.expr(e.left), self.expr(e.right))
        if kind is ast.Ref:
            name = e.dotted
            return ir.Input(name) if name in ("x", "y") else ir.MetaRef(name) if name in self.metas else ir.LetRef(name)
        if kind is ast.Number:
            return ir.Const(e.value)
        if kind is ast.Call:
            name = e.func.dotted
            if name in self.applied:
                return ir.Apply(name, self.expr(e.args[0]))
            if id(e) in self.c.args:                     # an augmentation called on its input
                return ir.Augment(*self.augment_args(e), self.expr(e.args[0]))
            if name == "l2":                             # of a module, named (the checker saw to it)
                return ir.Norm(e.args[0].dotted)
            return ir.Fn(name, tuple(self.expr(a) for a in e.args))
        if kind is ast.ListExpr:
            return ir.Const(fold(e))
        if kind is ast.Neg:
            return ir.Neg(self.expr(e.operand))
        return ir.Index(self.expr(e.target), self.expr(e.index))

    def datasets(self):
        for name, d in self.c.decls.items():
            if isinstance(d, ast.DataDecl):
                shapes = self.c.data_shapes[name]
                splits = tuple((p.name, float(fold(p.fraction))) for p in d.split)
                yield ir.DataSource(name, _component(self.c.args[id(d.source)]), splits,
                                    _per_example(shapes["x"]), shapes["y"][1])

    def modules(self):
        for name, d in self.c.decls.items():
            if isinstance(d, (ast.ModelDecl, ast.HeadDecl)):
                comp = _component(self.c.args[id(d.component)])
                role = "model" if isinstance(d, ast.ModelDecl) else "head"
                yield ir.Module(name, role, comp, self.c.in_dims.get(name))

    def meta_params(self):
        for name, d in self.c.decls.items():
            if isinstance(d, ast.MetaDecl):
                yield self.meta(name, d)

    def meta(self, name, d):
        t = d.type
        kind = type(t).__name__.removesuffix("Type").lower()
        size = t.length if isinstance(t, ast.VectorType) else 1
        space = t.space if isinstance(t, ast.FactoredType) else None
        if space is not None:                           # W_all over the objectives, then each stage's choices
            size = len(self.c.spaces[space]) + sum(len(c) for c in factored_choices(self.c.spaces[space]))
        network = _component(self.c.args[id(t.component)]) if isinstance(t, ast.NetworkType) else None
        bounds = tuple(float(fold(b)) for b in d.bounds) if d.bounds else None
        init = float(fold(d.init)) if d.init is not None else 0.0
        rate = float(fold(d.rate)) if d.rate is not None else None
        return ir.MetaParam(name, kind, size, init, bounds, network, self.c.in_dims.get(name) if network else None,
                            space, rate)

    def data_ref(self, clause_or_ref, batch):
        ref = clause_or_ref.ref if isinstance(clause_or_ref, ast.DataClause) else clause_or_ref
        split = ".".join(ref.parts[1:]) or None
        return ir.DataRef(ref.parts[0], split, batch or DEFAULT_BATCH)

    def _stage_parts(self, kind: str, trains: tuple[str, ...]):
        """(data, loss, optimizer) of a stage; an `augment` clause wraps the loss (x augmented first). A
        weight decay given as an expression of meta-parameters, lambda(phi), becomes the loss term
        lambda(phi) / 2 * sum of l2(module) over the modules the stage trains, with the optimizer's own
        decay 0: the same gradient, lambda theta, so the same steps and fixed point, and every estimator
        differentiates lambda(phi) through it (IFT: H + lambda I and the mixed term theta dlambda/dphi)."""
        found = self.c.stages[kind]
        checked = self.c.args[id(found["optimizer"].call)] if "optimizer" in found else default_optimizer(kind)
        loss = self.expr(found["loss"].expr)
        decay = checked["args"].get("weight_decay")
        if attrs.has(type(decay)):
            checked = {**checked, "args": {**checked["args"], "weight_decay": 0.0}}
            norms = [ir.Norm(m) for m in trains]
            total = norms[0]
            for n in norms[1:]:
                total = ir.Bin("+", total, n)
            loss = ir.Bin("+", loss, ir.Bin("*", ir.Bin("/", self.expr(decay), ir.Const(2.0)), total))
        if "augment" in found:
            loss = self.augmented(found["augment"].call, loss)
        return self.data_ref(found["data"], found["data"].batch), loss, _component(checked)

    def pretrain(self) -> ir.PretrainPlan:
        """With an auxiliary block, the loss is `end_task_weight * loss + the auxiliary term` and the stage
        also trains the auxiliary heads."""
        found = self.c.stages["pretrain"]
        steps = found["steps"].n if "steps" in found else DEFAULT_STEPS["pretrain"]
        trains = self.modules_in(found["loss"].expr)
        aux = self.auxiliary_plan()
        if aux is not None:
            trains += tuple(head for _, head in aux.heads)
        data, loss, optimizer = self._stage_parts("pretrain", trains)
        if aux is not None:
            loss = ir.Bin("+", ir.Bin("*", aux.end_task_weight, loss), ir.AuxTerm(aux.space))
        return ir.PretrainPlan(data, loss, optimizer, steps, trains)

    def auxiliary_plan(self) -> ir.AuxiliaryPlan | None:
        """The auxiliary block (at most one), its heads named `_SPACE_OUTPUT`."""
        blocks = [f for f in self.c.stages.values() if f["_node"].kind == "auxiliary"]
        if not blocks:
            return None
        found = blocks[0]
        space, info = found["_node"].name, self.c.aux[found["_node"].name]
        objectives = tuple(self.c.spaces[space])
        evaluate = _single(self.c.spec, ast.EvaluateDecl)
        from mptc.components.catalog_aang import SINGLE_OBJECTIVES
        extra = tuple(dict.fromkeys(SINGLE_OBJECTIVES[i.name] for i in (evaluate.against if evaluate else ())
                                    if i.name in SINGLE_OBJECTIVES and SINGLE_OBJECTIVES[i.name] not in objectives))
        outputs = dict.fromkeys(o.split(".")[3] for o in (*objectives, *extra))
        heads = tuple((o, f"_{space}_{o}") for o in outputs)
        end_weight = self.expr(found["end_task_weight"].expr) if "end_task_weight" in found else ir.Const(1.0)
        data = self.data_ref(found["data"], found["data"].batch) if "data" in found else None
        sample = found["sample"].n if "sample" in found else len(objectives)
        return ir.AuxiliaryPlan(space, objectives, extra, info["encoder"], heads, self.expr(found["weights"].expr),
                                end_weight, self.expr(self.c.stages["pretrain"]["loss"].expr), info["end_task_data"],
                                sample, data)

    def aux_heads(self):
        """A linear head per output of the auxiliary objectives: vocabulary-sized, or class-sized (labels)."""
        aux = self.auxiliary_plan()
        if aux is None:
            return
        from mptc.components.registry import OUTPUTS
        info = self.c.aux[aux.space]
        for output, name in aux.heads:
            out = info["classes"] if "labels" in OUTPUTS.get(output).traits else info["vocab"]
            yield ir.Module(name, "head", ir.Component("linear", {"out": out, "bias": True}), info["hidden"])

    def finetune(self) -> ir.FinetunePlan:
        """`trains`: the modules `unroll K update ...` names, else those the FT loss uses that PT does not."""
        found = self.c.stages["finetune"]
        unroll = found["unroll"].k if "unroll" in found else DEFAULT_STEPS["finetune"]
        update = tuple(i.name for i in found["unroll"].update) if "unroll" in found else ()
        pt_modules = set(self.modules_in(self.c.stages["pretrain"]["loss"].expr))
        trains = update or tuple(m for m in self.modules_in(found["loss"].expr) if m not in pt_modules)
        return ir.FinetunePlan(*self._stage_parts("finetune", trains), unroll, trains)

    def augmented(self, call, body) -> ir.Augmented:
        return ir.Augmented(*self.augment_args(call), body)

    def augment_args(self, call) -> tuple[str, dict]:
        checked = self.c.args[id(call)]
        return checked["name"], {k: self.expr(v) if attrs.has(type(v)) else v for k, v in checked["args"].items()}

    def modules_in(self, expr) -> tuple[str, ...]:
        names = _free(expr, self.c.let_free) | _calls(expr)
        return tuple(n for n, d in self.c.decls.items()
                     if n in names and isinstance(d, (ast.ModelDecl, ast.HeadDecl)))

    def estimators(self):
        hg = _single(self.c.spec, ast.HypergradientDecl)
        given = {e.stage: _component(self.c.args[id(e.estimator)]) for e in (hg.entries if hg else ())}
        stages = dict(ESTIMATOR_DEFAULTS)
        if any(f["_node"].kind == "auxiliary" for f in self.c.stages.values()):
            from mptc.components.catalog_aang import AUX_ESTIMATOR_DEFAULT
            stages["auxiliary"] = AUX_ESTIMATOR_DEFAULT
        for stage, default in stages.items():
            method = given.get(stage) or _component(defaults(ESTIMATORS, default))
            yield ir.Estimator(stage, method)

    def train(self) -> ir.Train:
        decl = _single(self.c.spec, ast.TrainDecl)
        given = {o.key: o.value for o in decl.options} if decl else {}
        values = {p.name: check_value(p, given[p.name], [], {}) if p.name in given else p.default
                  for p in TRAIN_OPTIONS}
        return ir.Train(**values)

    def evaluate(self) -> ir.Evaluate | None:
        decl = _single(self.c.spec, ast.EvaluateDecl)
        if decl is None:
            return None
        return ir.Evaluate(_component(self.c.args[id(decl.call)]), tuple(i.name for i in decl.against))

    def plan(self) -> ir.Plan:
        header = _single(self.c.spec, ast.SpecHeader)
        objective = _single(self.c.spec, ast.ObjectiveDecl)
        meta_opt = _single(self.c.spec, ast.MetaOptimizerDecl)
        ft_batch = self.c.stages["finetune"]["data"].batch
        hg = _single(self.c.spec, ast.HypergradientDecl)
        return ir.Plan(
            name=header.name if header else Path(self.c.spec.span.path).stem,
            doc=(header.doc or "") if header else "",
            datasets=tuple(self.datasets()),
            modules=(*self.modules(), *self.aux_heads()),
            metas=tuple(self.meta_params()),
            spaces=tuple(ir.Space(n, tuple(objectives), tuple(dict.fromkeys(f.stage for f in self.c.decls[n].factors)))
                         for n, objectives in self.c.spaces.items()),
            lets=tuple(ir.Let(n, self.expr(self.lets[n].value), n in self.c.meta_only_lets)
                       for n in self.c.let_order),
            pretrain=self.pretrain(),
            finetune=self.finetune(),
            objective=ir.Objective(self.expr(objective.expr), self.data_ref(objective.on, ft_batch)),
            estimators=tuple(self.estimators()),
            meta_optimizer=_component(self.c.args[id(meta_opt.call)] if meta_opt else default_optimizer("meta")),
            train=self.train(),
            evaluate=self.evaluate(),
            hg_check_every=hg.check_every if hg else None,
            imports=self.c.imports,
            auxiliary=self.auxiliary_plan(),
        )


def factored_choices(objectives) -> list[list[str]]:
    """Each stage's choices that some objective makes, in order of appearance: the stage weights of a
    factored meta (W_d, W_t, W_r, W_o).

        >>> factored_choices(["a.u", "b.u", "b.v"])
        [['a', 'b'], ['u', 'v']]
    """
    parts = [o.split(".") for o in objectives]
    return [list(dict.fromkeys(p[i] for p in parts)) for i in range(len(parts[0]))] if parts else []


def _per_example(shape):
    """The per-example part of a batch shape: features, or (channels, ...) for signals and images."""
    return shape[1] if len(shape) == 2 else tuple(shape[1:])


def _single(spec, kind):
    return next((i for i in spec.items if isinstance(i, kind)), None)


def lower(checked: Checked) -> ir.Plan:
    """The IR plan of a checked spec."""
    return _Lower(checked).plan()


@contextlib.contextmanager
def _no_cycle_collection():
    """Compiling builds trees without reference cycles, which reference counting frees, so the cyclic
    collector has nothing to find; left on, its passes over the tens of thousands of new nodes of a
    long spec cost a third of the compile time (benchmarks/compiler_speed.py)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def compile_spec(text: str, path: str = "<spec>", overrides: list[str] = (), notes: list | None = None) -> ir.Plan:
    """parse -> (overrides) -> check -> lower. Raises SyntaxProblem or SpecErrors on user mistakes; the
    checker's Notes (not errors) are appended to `notes` when a list is given."""
    with _no_cycle_collection():
        spec = parse(text, path)
        if overrides:
            from mptc.compiler.overrides import apply_overrides
            spec = apply_overrides(spec, overrides)
        checked = check(spec)
        if notes is not None:
            notes.extend(checked.notes)
        return lower(checked)
