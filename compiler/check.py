"""check(spec) -> Checked: names, components, keyword arguments, shapes and ranges. Collects every error
of the file and raises one SpecErrors. Never imports torch.

    >>> from mptc.compiler.parse import parse
    >>> from mptc.errors import SpecErrors
    >>> try:
    ...     check(parse("model encoder = mlpp(hidden: [8])", "q.mpt"))
    ... except SpecErrors as e:
    ...     print(e.errors[0].message, "| did you mean", e.errors[0].hint)
    unknown model 'mlpp' (known: linear, mlp) | did you mean mlp
"""
from __future__ import annotations

import math
from pathlib import Path

import attrs

from mptc.compiler import ast
from mptc.compiler.language import CLAUSE_NAME, NAMED, SINGLE_KEYWORD, STAGE_CLAUSES
from mptc.compiler.space import expand
from mptc.compiler.values import check_component, defaults, fits_float, fold, spec_folder
from mptc.errors import (BadArgument, Cycle, DuplicateName, MissingPart, Note, OutOfRange, PluginError, ShapeMismatch,
                         Span, SpecErrors, UnknownComponent, UnknownName, Unsupported, UnusedMeta, did_you_mean)
from mptc.components.catalog import ESTIMATOR_DEFAULTS
from mptc.components.shapes import B, ShapeProblem, broadcast, fmt
from mptc.components.registry import (AUGMENTATIONS, BASELINES, DATASETS, ESTIMATORS, FUNCTIONS, HEADS, MODELS, OPTIMIZERS,
                                   PROTOCOLS, Param, where_from)

# Upper bounds far beyond any run this machine or a GPU finishes, so that a typo (a 10-digit step count)
# is an error at its place rather than a MemoryError or a run of years.
LIMITS = {"steps": 10 ** 6, "unroll": 10 ** 4, "batch": 10 ** 8}
TRAIN_OPTIONS = (Param("meta_steps", "int", 100, min=1, max=10 ** 8), Param("warmup", "int", 0, min=0, max=10 ** 9),
                 Param("seed", "int", 0), Param("device", "str", "auto"), Param("log_every", "int", 10, min=1),
                 Param("max_nonfinite", "int", 5, min=1, doc="non-finite hypergradients in a row that stop a run"),
                 Param("reset_every", "int", 0, min=0,
                       doc="meta-steps per cycle: then the PT model and FT head restart from new initial values "
                           "and warm up again (0: never)"),
                 Param("dtype", "choice", "float32", choices=("float32", "float64"),
                       doc="the floating-point type of the modules, meta-parameters and data"),
                 Param("precision", "choice", "fp32", choices=("fp32", "bf16"),
                       doc="bf16: every loss's forward pass under autocast to bfloat16 (parameters, gradients, the "
                           "solver's vectors and the meta-parameters stay float32)"),
                 Param("checkpoint_every", "int", 0, min=0, max=10 ** 8,
                       doc="meta-steps between checkpoints a killed run resumes from (mptc run --resume DIR; 0: none)"))
# The optimizer of a stage (or of the meta-parameters) that names none: the registry's defaults with these
# arguments (the published ones: Adam for PT, SGD 0.1 for the FT head, Adam lr 1 for task weights).
DEFAULT_OPTIMIZER = {"pretrain": ("adam", {}), "finetune": ("sgd", {"lr": 0.1}), "meta": ("adam", {"lr": 1.0})}


def default_optimizer(kind: str) -> dict:
    """{"name", "args"} of the default optimizer of `kind` (pretrain, finetune or meta)."""
    name, given = DEFAULT_OPTIMIZER[kind]
    checked = defaults(OPTIMIZERS, name)
    return {"name": name, "args": {**checked["args"], **given}}


INPUTS = ("x", "y")


@attrs.frozen
class Checked:
    """A spec that passed every check, with what the checks learned (arguments, shapes, dimensions)."""

    spec: ast.Spec
    decls: dict            # name -> declaration node
    args: dict             # id(call node) -> {"name", "args"} of a checked component
    stages: dict           # kind -> {clause name -> clause}
    in_dims: dict          # module name -> inferred input features
    data_shapes: dict      # dataset name -> {"x": shape, "y": shape}
    spaces: dict           # space name -> its objectives' names, in order
    let_order: tuple       # let names, dependencies first
    meta_only_lets: frozenset
    let_free: dict         # let name -> the names it depends on, through other lets (inputs, metas, modules)
    imports: tuple = ()    # the user code the plan needs: the spec's imports, then other origins of its components
    notes: tuple = ()      # Notes for `mptc check` to print (e.g. an output shape known only at run time)
    aux: dict = {}         # space -> what lowering needs of its auxiliary block (encoder, hidden, vocab, classes)


class _Checker:
    """Runs the passes in order over one spec, collecting errors."""

    def __init__(self, spec: ast.Spec):
        self.spec, self.errors = spec, []
        self.decls, self.singles, self.stages, self.args = {}, {}, {}, {}
        self.in_dims, self.data_shapes, self.spaces_of = {}, {}, {}
        self.in_data, self.data_now = {}, None        # module -> the data of its first use; the data being checked
        self.let_shapes: dict = {}
        self.scoped_shapes: dict = {}  # (let, (x shape, y shape)) -> shape, for lets that read the batch
        self.let_deps: dict = {}
        self.batch_lets: set = set()
        self._of: dict = {}
        self.origins: dict = {}   # the origins of the spec's imports and of the user components it uses, in order
        self.notes: list = []
        self.raised: set = set()  # user components whose shape rule raised (reported once)

    # ---- pass 0: the code the spec imports, before any component is looked up ---------------------
    def imports(self):
        """Imports each `import` (a file relative to the spec's folder, or a module), in order; a missing
        file or module, or one that raises, is an error at its name (and the check stops there)."""
        seen = {}
        for item in self.spec.items:
            if not isinstance(item, ast.ImportDecl):
                continue
            from mptc.components.plugins import PluginProblem, import_code   # only for a spec that imports
            src = item.source
            file = isinstance(src, ast.String)
            try:
                origin = import_code(src.value if file else src.dotted, spec_folder(src.span.path), file=file)
            except PluginProblem as problem:
                error = PluginError(src.span, problem.message, hint=problem.hint,
                                    note=DEBUG_NOTE if problem.__cause__ else None)
                error.__cause__ = problem.__cause__
                self.err(error)
                continue
            if origin in seen:
                self.err(DuplicateName(src.span, "this code is imported twice",
                                       note=f"first imported on line {seen[origin].span.line}"))
            seen.setdefault(origin, item)
            self.origins.setdefault(origin, None)

    def err(self, e):
        self.errors.append(e)

    # ---- pass 1: declarations ----------------------------------------------------------------------
    def collect(self):
        for item in self.spec.items:
            if isinstance(item, NAMED):
                self._declare(item, self.decls, item.name, f"'{item.name}' is already declared")
            elif isinstance(item, ast.ImportDecl):
                continue                                 # imported by the `imports` pass
            elif isinstance(item, ast.Stage):
                key = item.kind if item.kind != "auxiliary" else f"auxiliary {item.name}"
                self._declare(item, self.stages, key, f"a second {key} block")
            else:
                kw = SINGLE_KEYWORD[type(item)]
                self._declare(item, self.singles, kw, f"'{kw}' is given twice")

    def _declare(self, item, table, key, message):
        if key in table:
            line = table[key].span.line
            span = item.name_span if isinstance(item, NAMED) else key_span(item.span, key.split()[0])
            self.err(DuplicateName(span, message, note=f"first declared on line {line}"))
        else:
            table[key] = item

    def of(self, kind):
        """The declarations of a kind (or tuple of kinds), by name; computed once per kind (read-only)."""
        found = self._of.get(kind)
        if found is None:
            found = self._of[kind] = {n: d for n, d in self.decls.items() if isinstance(d, kind)}
        return found

    # ---- pass 2: components and their arguments ----------------------------------------------------
    def component(self, registry, expr, ctx=None, node=None):
        """Checks `expr` against `registry`; the result is kept for lowering under `node` (default expr)."""
        checked = check_component(registry, expr, self.errors, ctx or {"datasets": self.of(ast.DataDecl)})
        if checked is not None:
            self.args[id(expr if node is None else node)] = checked
            self.used(registry.get(checked["name"]))
        return checked

    def used(self, comp):
        """Notes a component the spec uses: a user's own one's origin goes into the plan's imports."""
        if comp is not None and comp.origin:
            self.origins.setdefault(comp.origin, None)

    def datasets(self):
        pending = {}
        for name, decl in self.of(ast.DataDecl).items():
            checked = self.component(DATASETS, decl.source)
            self._splits(decl)
            if checked is not None and not _incomplete(DATASETS.get(checked["name"]), checked):
                pending[name] = checked
        # a dataset built from another (`of: pt`) waits for that one's shapes, wherever it is declared
        while pending:
            ready = [n for n, c in pending.items() if not _sources(c) & set(pending)]
            for name in ready:
                self._data_shape(name, pending.pop(name))
            if not ready:
                break
        for name, checked in pending.items():
            path = _data_cycle(name, pending)
            if path:
                self.err(Cycle(self.decls[name].name_span, f"'data {name}' is built from itself: {path}"))

    def _data_shape(self, name, checked):
        comp, args = DATASETS.get(checked["name"]), dict(checked["args"])
        for source in _sources(checked):
            if source not in self.data_shapes:  # its own error is reported
                return
        for p in comp.params:
            if p.kind == "dataset" and args.get(p.name) is not None:
                args[p.name] = self.data_shapes[args[p.name]]
        decl = self.decls[name]
        try:
            self.data_shapes[name] = shape = comp.shape(args, None)
        except ShapeProblem as problem:
            self.err(BadArgument(decl.source.span, f"{comp.name}: {problem}"))
            return
        except Exception as e:
            if not comp.origin:
                raise
            self.err(_rule_raised(comp, decl.source.span, e))
            return
        if decl.split and shape and shape.get("splits"):
            first = decl.split[0].span
            self.err(BadArgument(first, f"{comp.name} comes with its own splits "
                                 f"({', '.join(shape['splits'])}): drop the split clause"))
        elif decl.split and shape:  # a dataset built from this one (`of: NAME`) sees its split names
            self.data_shapes[name] = {**shape, "splits": tuple(p.name for p in decl.split)}

    def splits_of(self, decl) -> list[str]:
        """The split names of a data declaration: those its dataset comes with, else its `split` clause."""
        own = (self.data_shapes.get(decl.name) or {}).get("splits")  # a clause beside them is an error
        return list(own) if own else [p.name for p in decl.split]

    def _splits(self, decl):
        seen, total = set(), 0.0
        for part in decl.split:
            value = fold(part.fraction)
            if part.name in seen:
                self.err(DuplicateName(part.span, f"split '{part.name}' is given twice"))
            if not isinstance(value, (int, float)) or isinstance(value, str) or not 0 < value < 1:
                self.err(OutOfRange(part.fraction.span, f"split fraction must be in (0, 1), got {value!s}"))
                continue
            seen.add(part.name)
            total += value
        if decl.split and seen and abs(total - 1) > 1e-6:
            # the split clause; or the last fraction a `--set data.NAME.split.PART=...` gave, in its own text
            given = [p.span for p in decl.split if p.span.path != decl.span.path]
            first, last = decl.split[0].span, decl.split[-1].span
            whole = given[-1] if given else Span(first.path, first.line, first.col, last.end_line, last.end_col)
            note = f"with the other fractions of line {decl.span.line} of {decl.span.path}" if given else None
            self.err(OutOfRange(whole, f"split fractions must sum to 1, they sum to {total:g}", note=note))

    def modules(self):
        for name, decl in self.of(ast.ModelDecl).items():
            self._shape_note(decl, self.component(MODELS, decl.component), MODELS)
        for name, decl in self.of(ast.HeadDecl).items():
            self._shape_note(decl, self.component(HEADS, decl.component), HEADS)

    def _shape_note(self, decl, checked, registry):
        """A component without a shape rule: its output shape is known at run time, when the runtime probes
        the built module with a dummy batch (runtime/program.py); the checks that need it are skipped."""
        comp = registry.get(checked["name"]) if checked else None
        if comp is not None and comp.shape is None:
            what = f"meta network '{decl.name}'" if isinstance(decl, ast.MetaDecl) else f"{_role(decl)} '{decl.name}'"
            call = decl.type.component if isinstance(decl, ast.MetaDecl) else decl.component
            self.notes.append(Note(call.func.span, f"{what}: {comp.name} ({where_from(comp)}) has no shape rule, so "
                                   f"its output shape is known at run time (the runtime probes it with a dummy "
                                   f"batch); shape checks that need it are skipped"))

    def spaces(self):
        for name, decl in self.of(ast.SpaceDecl).items():
            self.spaces_of[name] = expand(decl, self.errors).objectives

    def metas(self):
        for name, decl in self.of(ast.MetaDecl).items():
            t = decl.type
            if isinstance(t, ast.VectorType) and t.length < 1:
                self.err(OutOfRange(t.span, f"a vector needs at least one entry, got {t.length}"))
            if isinstance(t, ast.NetworkType):
                self._shape_note(decl, self.component(MODELS, t.component), MODELS)
            if isinstance(t, ast.FactoredType) and t.space not in self.of(ast.SpaceDecl):
                self.err(UnknownName(t.span, f"unknown space '{t.space}'",
                                     hint=did_you_mean(t.space, self.of(ast.SpaceDecl))))
            if decl.init is not None and not _is_number(fold(decl.init)):
                self.err(BadArgument(decl.init.span, "a meta-parameter's initial value must be a number"))
            if decl.rate is not None and not (_is_number(fold(decl.rate)) and fold(decl.rate) > 0):
                self.err(OutOfRange(decl.rate.span, "a meta-parameter's rate (its meta-optimizer learning rate) "
                                    "must be a number > 0"))
            self._bounds(decl)

    def _bounds(self, decl):
        if decl.bounds is None:
            return
        lo, hi = (fold(b) for b in decl.bounds)
        if not (_is_number(lo) and _is_number(hi)) or lo >= hi:
            self.err(OutOfRange(decl.bounds[0].span, "bounds must be two numbers [low, high] with low < high"))
        elif decl.init is not None and _is_number(fold(decl.init)) and not lo <= fold(decl.init) <= hi:
            self.err(OutOfRange(decl.init.span, f"initial value {fold(decl.init)} lies outside [{lo}, {hi}]"))

    # ---- pass 3: lets (cycles), stages and expressions ---------------------------------------------
    def let_order(self) -> tuple:
        lets, order, state, self.cyclic = self.of(ast.LetDecl), [], {}, set()
        self.let_names = {name: _names(decl.value) for name, decl in lets.items()}  # (refs, calls)
        self.let_uses = {name: refs | calls for name, (refs, calls) in self.let_names.items()}

        def visit(name, path):
            if state.get(name) == "done":
                return
            if state.get(name) == "open":
                cycle = " -> ".join(path[path.index(name):] + [name])
                self.err(Cycle(lets[name].name_span, f"'let {name}' refers to itself: {cycle}"))
                self.cyclic.add(name)
                state[name] = "done"
                return
            state[name] = "open"
            for dep in self.let_names[name][0]:
                if dep in lets:
                    visit(dep, path + [name])
            state[name] = "done"
            order.append(name)

        for name in lets:
            visit(name, [])
        return tuple(order)

    def stage_clauses(self):
        for key, stage in self.stages.items():
            allowed, found = STAGE_CLAUSES[stage.kind], {}
            for clause in stage.clauses:
                cname = CLAUSE_NAME[type(clause)]
                if cname not in allowed:
                    self.err(BadArgument(clause.span, f"'{cname}' is not a clause of {stage.kind} "
                                         f"(it takes {', '.join(allowed)})", hint=did_you_mean(cname, allowed)))
                elif cname in found:
                    self.err(DuplicateName(clause.span, f"'{cname}' is given twice in {stage.kind}",
                                           note=f"first given on line {found[cname].span.line}"))
                else:
                    found[cname] = clause
            self.stages[key] = found | {"_node": stage}
            self._stage_values(stage, found)

    def _stage_values(self, stage, found):
        if stage.kind == "auxiliary":
            return self._auxiliary_values(stage, found)
        for need in ("data", "loss"):
            if need not in found:
                self.err(MissingPart(stage.span, f"{stage.kind} needs a '{need}' clause"))
        if "optimizer" in found:
            self.component(OPTIMIZERS, found["optimizer"].call)
            for name, expr in _meta_args(self.args.get(id(found["optimizer"].call))).items():
                self.meta_scalar(expr, f"the {stage.kind} optimizer's {name}")
        if "steps" in found:
            self._count(found["steps"].span, "steps", found["steps"].n)
        if "unroll" in found:
            self._count(found["unroll"].span, "unroll", found["unroll"].k)
        if "data" in found:
            self.data_ref(found["data"].ref, found["data"].batch, found["data"].span)
        named = set()
        for ident in found["unroll"].update if "unroll" in found else ():
            if ident.name not in self.of((ast.ModelDecl, ast.HeadDecl)):
                self.err(UnknownName(ident.span, f"'{ident.name}' is not a model or head",
                                     hint=did_you_mean(ident.name, self.of((ast.ModelDecl, ast.HeadDecl)))))
            elif ident.name in named:
                self.err(DuplicateName(ident.span, f"'{ident.name}' is named twice in the update list"))
            named.add(ident.name)

    def _auxiliary_values(self, stage, found):
        """An `auxiliary SPACE { ... }` block: a space over AANG's primitives, its weights, the sample size.
        A spec has at most one (the PT stage trains one set of auxiliary objectives)."""
        first = next(f["_node"] for f in self.stages.values() if isinstance(f, dict) and f["_node"].kind == "auxiliary")
        if first is not stage:
            self.err(DuplicateName(key_span(stage.span, "auxiliary"), "a second auxiliary block: a spec has one "
                                   "(put every objective in its space)", note=f"the first is on line {first.span.line}"))
        spaces = self.of(ast.SpaceDecl)
        if stage.name not in spaces:
            at = Span(stage.span.path, stage.span.line, stage.span.col + len("auxiliary "), stage.span.line,
                      stage.span.col + len("auxiliary ") + len(stage.name))
            self.err(UnknownName(at, f"unknown space '{stage.name}' (an auxiliary block weights the objectives of a "
                                 f"space declaration)", hint=did_you_mean(stage.name, spaces)))
        else:
            self._aang_space(spaces[stage.name])
        if "weights" not in found:
            self.err(MissingPart(stage.span, f"auxiliary {stage.name} needs a 'weights' clause, e.g. "
                                 f"weights softmax(w) with meta w: factored({stage.name})"))
        if "sample" in found and found["sample"].n < 1:
            self.err(OutOfRange(found["sample"].span, f"sample must be >= 1, got {found['sample'].n}"))
        if "data" in found:
            self.data_ref(found["data"].ref, found["data"].batch, found["data"].span)

    def _aang_space(self, decl):
        """The space an auxiliary block weights: stages data, transform, represent and output, each choice a
        registered primitive of its stage (components/catalog_aang.py)."""
        from mptc.components.registry import AUX_STAGES
        stages = [f.stage for f in decl.factors]
        if sorted(stages) != sorted(AUX_STAGES) or len(stages) != len(AUX_STAGES):
            self.err(BadArgument(decl.name_span, f"space '{decl.name}' must have the stages "
                                 f"{', '.join(AUX_STAGES)} to be an auxiliary block's (it has {', '.join(stages)})"))
            return
        for factor in decl.factors:
            registry = AUX_STAGES[factor.stage]
            for choice in factor.choices:
                comp = registry.get(choice.name)
                if comp is None:
                    self.err(UnknownComponent(choice.span, f"unknown {factor.stage} primitive '{choice.name}' "
                                              f"(known: {', '.join(registry.names())})",
                                              hint=did_you_mean(choice.name, registry.names())))
                else:
                    self.used(comp)

    def auxiliary(self):
        """What lowering needs of each auxiliary block: the encoder (the one model the pretrain loss applies
        to x), its width, the token vocabulary and the end task's classes; the weights' and end-task weight's
        shapes (meta-parameters alone, [objectives] and one number)."""
        self.aux_info = {}
        pt = self.stages.get("pretrain", {})
        for key, found in self.stages.items():
            node = found["_node"]
            if node.kind != "auxiliary" or node.name not in self.spaces_of:
                continue
            count = len(self.spaces_of[node.name])
            if "weights" in found:
                shape = self.shape(found["weights"].expr, {})
                if shape is not None and shape != (count,):
                    self.err(ShapeMismatch(found["weights"].expr.span, f"the weights must have one entry per "
                                           f"objective of space '{node.name}' ([{count}]), but have shape {fmt(shape)}"))
            if "end_task_weight" in found:
                self.meta_scalar(found["end_task_weight"].expr, "the end task's weight")
            if "sample" in found and found["sample"].n > count:
                self.err(OutOfRange(found["sample"].span, f"sample {found['sample'].n} exceeds the {count} objectives "
                                    f"of space '{node.name}'"))
            self._aux_data(node, found)
            if "loss" not in pt or "data" not in pt:
                continue
            encoders = [c for c in _walk(pt["loss"].expr) if type(c) is ast.Call and isinstance(
                self.decls.get(c.func.dotted), ast.ModelDecl) and len(c.args) == 1 and type(c.args[0]) is ast.Ref
                and c.args[0].dotted == "x"]
            names = list(dict.fromkeys(c.func.dotted for c in encoders))
            if len(names) != 1:
                self.err(BadArgument(pt["loss"].expr.span, f"auxiliary {node.name}: the pretrain loss must apply "
                                     f"one model to x, the encoder the auxiliary objectives share "
                                     f"(it applies {', '.join(names) or 'none'})"))
                continue
            shapes = self.data_shapes.get(pt["data"].ref.parts[0])
            if shapes is None:
                continue
            x, y = shapes["x"], shapes["y"]
            vocab = getattr(x[1], "vocab", None) if len(x) == 2 else None
            if vocab is None:
                self.err(ShapeMismatch(pt["data"].ref.span, f"auxiliary {node.name}: AANG's primitives need token ids "
                                       f"(text.jsonl, text.lines data), but '{pt['data'].ref.dotted}' has x {fmt(x)}"))
                continue
            out = self.shape(encoders[0], {"x": x, "y": y})
            if out is None or len(out) != 2 or not isinstance(out[1], int):
                continue
            self._aux_tokens(node, found, pt["data"].ref.parts[0])
            self.aux_info[node.name] = {"encoder": names[0], "hidden": out[1], "vocab": vocab, "classes": y[1],
                                        "end_task_data": pt["data"].ref.parts[0]}

    def _aux_tokens(self, node, found, end_task: str):
        """The auxiliary data clause's data: token ids from the end task's own tokenizer (the end task's data,
        or text.lines(of: <it>)), since AANG's objectives feed them to the encoder's one embedding."""
        if "data" not in found:
            return
        ref = found["data"].ref
        name = ref.parts[0]
        decl, shapes = self.of(ast.DataDecl).get(name), self.data_shapes.get(name)
        if decl is None or shapes is None or name == end_task:
            return
        checked = self.args.get(id(decl.source)) or {}
        if checked.get("name") == "text.lines" and checked.get("args", {}).get("of") == end_task:
            return
        self.err(ShapeMismatch(ref.span, f"auxiliary {node.name}: '{name}' must be token ids from the end task's "
                               f"tokenizer (its encoder has one embedding), e.g. data {name} = "
                               f"text.lines(path: \"...\", of: {end_task})"))

    def _aux_data(self, node, found):
        """A data clause iff the space has an unlabelled (in-domain) data choice."""
        from mptc.components.registry import AUX_DATA
        decl = self.of(ast.SpaceDecl)[node.name]
        stream = [c for f in decl.factors if f.stage == "data" for c in f.choices
                  if c.name in AUX_DATA and "labelled" not in AUX_DATA.get(c.name).traits]
        if stream and "data" not in found:
            self.err(MissingPart(node.span, f"auxiliary {node.name}: objectives on '{stream[0].name}' data need a "
                                 f"data clause naming that data, e.g. data domain batch 32"))
        elif "data" in found and not stream:
            self.err(BadArgument(found["data"].span, f"auxiliary {node.name}: its space has no in_domain data "
                                 f"choice, so its data clause would be read by no objective"))

    def data_ref(self, ref: ast.Ref, batch, span):
        """The data shapes a `data.split` reference reads, or None."""
        decls = self.of(ast.DataDecl)
        name, split = ref.parts[0], ".".join(ref.parts[1:]) or None
        if name not in decls:
            known = f"declared: {', '.join(decls)}" if decls else "no data is declared"
            self.err(UnknownName(ref.span, f"unknown data '{name}' ({known})", hint=did_you_mean(name, decls)))
            return None
        if not decls[name].split and name not in self.data_shapes:
            return None                                 # its dataset did not check: its own error says why
        splits = self.splits_of(decls[name])
        if split is None and splits:
            self.err(MissingPart(ref.span, f"'{name}' is split into {', '.join(splits)}: name one, "
                                 f"e.g. {name}.{splits[0]}"))
        elif split is not None and split not in splits:
            have = f"its splits are {', '.join(splits)}" if splits else "it has no splits"
            self.err(UnknownName(ref.span, f"'{name}' has no split '{split}' ({have})",
                                 hint=did_you_mean(split, splits) and f"{name}.{did_you_mean(split, splits)}"))
        if batch is not None:
            self._count(span, "batch", batch)
        return self.data_shapes.get(name)

    def _count(self, span, what: str, n: int):
        """A step, unroll or batch count: at least 1, at most LIMITS[what]."""
        if n < 1:
            self.err(OutOfRange(span, f"{what} must be >= 1, got {n}"))
        elif n > LIMITS[what]:
            self.err(OutOfRange(span, f"{what} must be <= {LIMITS[what]}, got {n}"))

    def let_table(self):
        """Per let, in dependency order: the lets it depends on (transitively) and whether it reads the
        batch; then the shape of every let that does not (computed once, so chains never recurse deep)."""
        lets, self.let_deps, self.batch_lets = self.of(ast.LetDecl), {}, set()
        for name in self.let_order_names:
            direct = self.let_uses[name]
            deps = set()
            for d in direct & lets.keys():
                deps |= {d} | self.let_deps.get(d, set())
            self.let_deps[name] = deps
            if direct & set(INPUTS) or deps & self.batch_lets:
                self.batch_lets.add(name)
        for name in self.let_order_names:
            decl = self.decls[name]
            if name in self.batch_lets:  # its shape depends on the stage using it: names and arity only
                self.shape(decl.value, {"x": None, "y": None})
            else:
                self.let_shapes[name] = self.shape(decl.value, {})

    def expressions(self):
        self.let_table()
        for key, found in self.stages.items():
            if found["_node"].kind == "auxiliary":
                continue                                # its clauses: the auxiliary pass
            shapes = self.data_ref_shapes(found.get("data"))
            self.data_now = found["data"].ref.parts[0] if found.get("data") else None
            if "loss" in found:
                self.scalar(found["loss"].expr, shapes, f"the {found['_node'].kind} loss")
            if "augment" in found:
                self.augment(found["augment"].call, shapes)
        objective = self.singles.get("meta_objective")
        if objective is not None:
            self.data_now = objective.on.parts[0]
            shapes = self.data_shapes.get(objective.on.parts[0]) if self.data_ref(objective.on, None, None) else None
            self.scalar(objective.expr, shapes, "the meta-objective")

    def augment(self, call, data_shapes):
        """An `augment` clause: its constants checked like any component's, its tensor parameters (a
        meta-parameter, a meta network of x) as expressions giving one number or one per example."""
        scope = {"x": data_shapes["x"], "y": data_shapes["y"]} if data_shapes else {"x": None, "y": None}
        return self.augment_args(call, scope)

    def augment_args(self, call, scope, node=None):
        checked = self.component(AUGMENTATIONS, call, node=node)
        for name, value in (checked or {"args": {}})["args"].items():
            if not attrs.has(type(value)):        # a constant (or a default)
                continue
            shape = self.shape(value, scope)
            if shape is not None and shape not in ((), (1,), (B,), (B, 1)):
                self.err(ShapeMismatch(value.span, f"'{name}' must be one number or one per example, "
                                       f"but has shape {fmt(shape)}"))
        return checked

    def augment_call(self, expr, scope):
        """`warp(x, strength: s)` inside an expression: the augmentation of its one positional input
        (same shape), with the clause's parameters as keywords. Each call draws its own noise, so two
        calls on x are two independent views (SimCLR)."""
        name = expr.func.dotted
        if len(expr.args) != 1:
            self.err(BadArgument(expr.span, f"{name} augments one input, e.g. {name}(x, ...), "
                                 f"got {len(expr.args)} positional arguments"))
            return None
        in_shape = self.shape(expr.args[0], scope)
        self.augment_args(attrs.evolve(expr, args=()), scope, node=expr)   # the keywords only
        return in_shape

    def data_ref_shapes(self, clause):
        return None if clause is None else self.data_shapes.get(clause.ref.parts[0])

    def scalar(self, expr, data_shapes, what):
        scope = {"x": data_shapes["x"], "y": data_shapes["y"]} if data_shapes else {"x": None, "y": None}
        shape = self.shape(expr, scope)
        if shape is not None and shape != ():
            self.err(ShapeMismatch(expr.span, f"{what} must be a single number, but has shape {fmt(shape)}",
                                   hint="mean(...)"))

    def meta_scalar(self, expr, what):
        """One number computed from meta-parameters alone (no batch: `x` and `y` are errors here)."""
        shape = self.shape(expr, {})
        if shape is not None and shape != ():
            self.err(ShapeMismatch(expr.span, f"{what} must be a single number, but has shape {fmt(shape)}"))

    # ---- shape inference ---------------------------------------------------------------------------
    def shape(self, expr, scope):
        """The shape of an expression (a tuple, "B" for the batch), None when unknown."""
        return _SHAPERS[type(expr)](self, expr, scope)

    def shape_Number(self, expr, scope):
        return ()

    def shape_String(self, expr, scope):
        self.err(BadArgument(expr.span, "a string cannot be used in an expression"))

    def shape_ListExpr(self, expr, scope):
        return (len(expr.items),)

    def shape_Index(self, expr, scope):
        """`t[i]` selects along the first axis: a vector's entry, a matrix's row."""
        target, index = self.shape(expr.target, scope), self.shape(expr.index, scope)
        if target == ():
            self.err(ShapeMismatch(expr.span, "cannot index a single number"))
            return None
        k = fold(expr.index)
        if isinstance(k, (int, float)) and not isinstance(k, (bool, str)):
            if not isinstance(k, int):
                self.err(BadArgument(expr.index.span, f"an index must be an integer, got {k}"))
                return None
            n = target[0] if target else None
            if isinstance(n, int) and not -n <= k < n:
                self.err(OutOfRange(expr.index.span, f"index {k} is out of range for a length of {n} "
                                    f"(0 to {n - 1})"))
                return None
        elif index is not None and index != ():
            self.err(ShapeMismatch(expr.index.span, f"an index must be one number, but has shape {fmt(index)}"))
            return None
        return None if target is None else target[1:]

    def shape_Neg(self, expr, scope):
        return self.shape(expr.operand, scope)

    def shape_BinOp(self, expr, scope):
        left, right = self.shape(expr.left, scope), self.shape(expr.right, scope)
        if expr.op == "/" and _is_number(fold(expr.right)) and fold(expr.right) == 0:
            self.err(OutOfRange(expr.right.span, "division by zero"))
        if left is None or right is None:
            return None
        out = broadcast(left, right)
        if out is None:
            self.err(ShapeMismatch(expr.span, f"cannot combine shapes {fmt(left)} and {fmt(right)} with "
                                   f"'{expr.op}'", note=_mismatch_note(expr, left, right)))
        return out

    def shape_Ref(self, expr, scope):
        name = expr.dotted
        if name in INPUTS:
            return scope.get(name) if name in scope else self._no_input(expr)
        decl = self.decls.get(name)
        if isinstance(decl, ast.MetaDecl):
            return self._meta_shape(decl)
        if isinstance(decl, ast.LetDecl):
            return self.let_shape(decl, scope)
        if isinstance(decl, (ast.ModelDecl, ast.HeadDecl)):
            self.err(BadArgument(expr.span, f"'{name}' is a {_role(decl)}: apply it, e.g. {name}(x)"))
            return None
        names = [n for n, d in self.decls.items() if isinstance(d, (ast.MetaDecl, ast.LetDecl))] + list(scope)
        self.err(UnknownName(expr.span, f"unknown name '{name}'", hint=did_you_mean(name, names)))
        return None

    def _no_input(self, expr):
        self.err(UnknownName(expr.span, f"'{expr.dotted}' is the batch of a stage and cannot appear here"))
        return None

    def _meta_shape(self, decl):
        t = decl.type
        if isinstance(t, ast.VectorType):
            return (t.length,)
        if isinstance(t, ast.FactoredType):
            return (len(self.spaces_of[t.space]),) if t.space in self.spaces_of else None
        return () if isinstance(t, ast.ScalarType) else None

    def let_shape(self, decl, scope):
        if decl.name in self.let_shapes:
            return self.let_shapes[decl.name]
        if decl.name in self.cyclic:
            return None
        key = (scope.get("x"), scope.get("y"))
        try:
            hash(key)
        except TypeError:
            return self.shape(decl.value, scope)
        for name in [*(n for n in self.let_order_names if n in self.let_deps.get(decl.name, ())), decl.name]:
            if (name, key) not in self.scoped_shapes:  # dependencies first: the recursion stays shallow
                self.scoped_shapes[name, key] = self.shape(self.decls[name].value, scope)
        return self.scoped_shapes[decl.name, key]

    def shape_Call(self, expr, scope):
        name = expr.func.dotted
        decl = self.decls.get(name)
        if isinstance(decl, (ast.ModelDecl, ast.HeadDecl)) or _is_network(decl):
            return self._apply(expr, decl, scope)
        if name not in FUNCTIONS and name in AUGMENTATIONS:   # (a miss of get() loads the entry points)
            self.used(AUGMENTATIONS.get(name))
            return self.augment_call(expr, scope)
        comp = FUNCTIONS.get(name)
        if comp is None:
            known = FUNCTIONS.names() + AUGMENTATIONS.names() + list(self.of((ast.ModelDecl, ast.HeadDecl)))
            self.err(UnknownName(expr.func.span, f"unknown function or module '{name}'",
                                 hint=did_you_mean(name, known)))
            return None
        n = len(comp.params)
        if expr.kwargs:
            kw = expr.kwargs[0]
            self.err(BadArgument(kw.span, f"{name} takes {n} positional argument{'s' if n != 1 else ''} and no "
                                 f"keywords, got '{kw.name}: ...'"))
            return None
        if len(expr.args) != n:
            self.err(BadArgument(expr.span, f"{name} takes {n} argument{'s' if n != 1 else ''}, "
                                 f"got {len(expr.args)}"))
            return None
        shapes = [self.module_arg(name, a) if p.kind == "module" else self.shape(a, scope)
                  for p, a in zip(comp.params, expr.args)]
        self.used(comp)
        return self._rule(comp, expr, None, shapes)

    def module_arg(self, fn: str, expr):
        """A function's module argument, `l2(encoder)`: a model or head, by name (it has no shape)."""
        modules = self.of((ast.ModelDecl, ast.HeadDecl))
        name = expr.dotted if type(expr) is ast.Ref else None
        if name in modules:
            return None
        decl = self.decls.get(name)
        if name is None:
            applied = expr.func.dotted if type(expr) is ast.Call and expr.func.dotted in modules else None
            self.err(BadArgument(expr.span, f"{fn} takes a model or head by name, e.g. "
                                 f"{fn}({applied or next(iter(modules), 'encoder')})",
                                 hint=applied and f"{fn}({applied})"))
        elif decl is not None or name in INPUTS:
            what = ("the batch's input" if name in INPUTS else "a meta network, whose weights are meta-parameters "
                    "(the meta_optimizer's weight_decay decays them)" if _is_network(decl) else _KIND_OF[type(decl)])
            self.err(BadArgument(expr.span, f"{fn} takes a model or head, and '{name}' is {what}"))
        else:
            self.err(UnknownName(expr.span, f"unknown model or head '{name}'", hint=did_you_mean(name, modules)))
        return None

    def _apply(self, expr, decl, scope):
        if len(expr.args) != 1 or expr.kwargs:
            self.err(BadArgument(expr.span, f"'{decl.name}' is applied to exactly one input"))
            return None
        in_shape = self.shape(expr.args[0], scope)
        node = decl.type.component if isinstance(decl, ast.MetaDecl) else decl.component
        checked = self.args.get(id(node))
        if checked is None:
            return None
        comp = (MODELS if not isinstance(decl, ast.HeadDecl) else HEADS).get(checked["name"])
        if _incomplete(comp, checked):
            return None
        out = self._rule(comp, expr, checked["args"], in_shape)
        self._record_in_dim(decl.name, in_shape, expr)
        return out

    def _record_in_dim(self, name, in_shape, expr):
        if in_shape is None or len(in_shape) < 2:
            return
        dim = in_shape[1] if len(in_shape) == 2 else tuple(in_shape[1:])  # features, or (channels, ...)
        previous = self.in_dims.setdefault(name, dim)
        data = self.in_data.setdefault(name, self.data_now)
        if previous != dim:
            on = (f" (on data '{self.data_now}')", f" (on data '{data}')") if data and self.data_now != data else ("", "")
            self.err(ShapeMismatch(expr.span, f"'{name}' is applied to {dim} features here{on[0]} but to "
                                   f"{previous} elsewhere{on[1]}"))

    def _rule(self, comp, expr, args, shapes):
        """The output shape by `comp`'s shape rule (None without one); a ShapeProblem is a located error,
        and so is any exception of a user's own rule (an exception of a built-in one is a bug: raised)."""
        try:
            return comp.shape(args, shapes) if comp.shape else None
        except ShapeProblem as problem:
            self.err(ShapeMismatch(expr.span, f"{expr.func.dotted} {problem}"))
        except Exception as e:
            if not comp.origin:
                raise
            if (comp.kind, comp.name) not in self.raised:   # one error per component, at its first use
                self.raised.add((comp.kind, comp.name))
                self.err(_rule_raised(comp, expr.span, e))
        return None

    # ---- pass 4: the meta level --------------------------------------------------------------------
    def meta_level(self):
        hg = self.singles.get("hypergradient")
        for entry in hg.entries if hg else ():
            self._estimator(entry)
        if hg is not None and hg.check_every is not None and hg.check_every < 1:
            self.err(OutOfRange(hg.span, f"check every must be >= 1, got {hg.check_every}"))
        if "meta_optimizer" in self.singles:
            call = self.singles["meta_optimizer"].call
            for name, expr in _meta_args(self.component(OPTIMIZERS, call)).items():
                self.err(BadArgument(expr.span, f"the meta-optimizer's {name} must be a number (an expression of "
                                     f"meta-parameters is for a stage's optimizer)"))
        train = self.singles.get("train")
        if train is not None:
            self._train(train)
        ev = self.singles.get("evaluate")
        if ev is not None:
            protocol = self.component(PROTOCOLS, ev.call)
            traits = PROTOCOLS.get(protocol["name"]).traits if protocol else ("baselines", "splits")
            if ev.against and "baselines" not in traits:
                self.err(BadArgument(ev.against[0].span, f"{protocol['name']} compares no baselines: drop "
                                     f"'against {', '.join(i.name for i in ev.against)}'"))
            has_aux = any(k.startswith("auxiliary ") for k in self.stages)
            for i, ident in enumerate(ev.against):
                if any(other.name == ident.name for other in ev.against[:i]):
                    self.err(DuplicateName(ident.span, f"baseline '{ident.name}' is named twice"))
                elif BASELINES.get(ident.name) is None:
                    self.err(UnknownComponent(ident.span, f"unknown baseline '{ident.name}' "
                                              f"(known: {', '.join(BASELINES.names())})",
                                              hint=did_you_mean(ident.name, BASELINES.names())))
                elif "auxiliary" in BASELINES.get(ident.name).traits and not has_aux:
                    self.err(MissingPart(ident.span, f"baseline '{ident.name}' compares auxiliary objectives: the "
                                         f"spec has no auxiliary block"))
            if "splits" in traits:                      # it fine-tunes on train, val and test
                self._evaluation_splits(ev)

    def _evaluation_splits(self, ev):
        """The protocol fine-tunes on the meta-objective's dataset: it needs train, val and test splits."""
        objective = self.singles.get("meta_objective")
        decl = self.of(ast.DataDecl).get(objective.on.parts[0]) if objective else None
        if decl is None:
            return
        checked = self.args.get(id(ev.call)) or {}
        prefix = "heldout_" if (checked.get("args") or {}).get("tasks") == "heldout" else ""
        if decl.name not in self.data_shapes and not decl.split:   # its source failed: reported there
            return
        if prefix and not any(s.startswith(prefix) for s in self.splits_of(decl)):
            self.err(MissingPart(ev.span, f"evaluate(tasks: heldout) fine-tunes on the held-out tasks of "
                                 f"'{decl.name}', which has none",
                                 note=f"e.g. data {decl.name} = tasks.heldout(of: ft_all, groups: 4, fold: 0)"))
            return
        missing = [s for s in ("train", "val", "test") if prefix + s not in self.splits_of(decl)]
        if missing:
            self.err(MissingPart(ev.span, f"evaluate fine-tunes on '{decl.name}', which needs the splits "
                                 f"train, val and test (missing: {', '.join(missing)})",
                                 note=f"e.g. data {decl.name} = ... split train 0.2, val 0.3, test 0.5"))

    def _estimator(self, entry):
        if entry.stage == "auxiliary" and not any(k.startswith("auxiliary ") for k in self.stages):
            self.err(MissingPart(key_span(entry.span, entry.stage), "hypergradient auxiliary: the spec has no "
                                 "auxiliary block"))
            return
        if entry.stage not in ESTIMATOR_DEFAULTS and entry.stage != "auxiliary":
            stages = ", ".join([*ESTIMATOR_DEFAULTS, "auxiliary"])
            self.err(UnknownName(key_span(entry.span, entry.stage), f"unknown stage '{entry.stage}' (hypergradients "
                                 f"pass through {stages})", hint=did_you_mean(entry.stage, ESTIMATOR_DEFAULTS)))
            return
        checked = self.component(ESTIMATORS, entry.estimator)
        if checked and entry.stage not in ESTIMATORS.get(checked["name"]).traits:
            fits = [c.name for c in ESTIMATORS.entries() if entry.stage in c.traits]
            self.err(BadArgument(entry.estimator.span, f"'{checked['name']}' does not apply to the "
                                 f"{entry.stage} stage (use {', '.join(fits)})"))

    def _train(self, train):
        seen = {}
        for opt in train.options:
            param = next((p for p in TRAIN_OPTIONS if p.name == opt.key), None)
            if param is None:
                names = [p.name for p in TRAIN_OPTIONS]
                self.err(BadArgument(key_span(opt.span, opt.key), f"unknown train option '{opt.key}' "
                                     f"(known: {', '.join(names)})", hint=did_you_mean(opt.key, names)))
            elif opt.key in seen:
                self.err(DuplicateName(key_span(opt.span, opt.key), f"train option '{opt.key}' is given twice",
                                       note=f"first given on line {seen[opt.key].span.line}"))
            else:
                seen[opt.key] = opt
        from mptc.compiler.values import check_value
        for key, opt in seen.items():
            value = check_value(next(p for p in TRAIN_OPTIONS if p.name == key), opt.value, self.errors, {})
            if key == "precision" and value == "bf16" and "dtype" in seen and \
                    check_value(next(p for p in TRAIN_OPTIONS if p.name == "dtype"), seen["dtype"].value, [], {}) == "float64":
                self.err(BadArgument(opt.value.span, "precision bf16 autocasts float32 modules: it does not go "
                                     "with dtype float64"))
            if key == "checkpoint_every" and value and self._drives():
                self.err(BadArgument(opt.value.span, "checkpoint_every: the search estimator's trials are whole "
                                     "runs, which are not checkpointed; drop it or use ift/unroll"))
            if key == "device" and value is not None and not _valid_device(value):
                self.err(BadArgument(opt.value.span, f"device must be auto, cpu, cuda or cuda:N, got {value}",
                                     hint=_DEVICE_ALIASES.get(value) or did_you_mean(value, ["auto", "cpu", "cuda"])))

    def _drives(self) -> bool:
        """Whether the pretrain estimator drives the whole run (search) instead of the loop."""
        hg = self.singles.get("hypergradient")
        for entry in hg.entries if hg else ():
            if entry.stage == "pretrain" and type(entry.estimator).__name__ in ("Ref", "Call"):
                name = entry.estimator.dotted if hasattr(entry.estimator, "dotted") else entry.estimator.func.dotted
                return name == "search"
        return False

    def required(self):
        end = _end_span(self.spec)
        for kind in ("pretrain", "finetune"):
            if kind not in self.stages:
                self.err(MissingPart(end, f"the spec has no {kind} block"))
        if "meta_objective" not in self.singles:
            self.err(MissingPart(end, "the spec has no meta_objective"))
        if not self.of(ast.MetaDecl):
            self.err(MissingPart(end, "the spec declares no meta-parameter: nothing to learn"))

    # ---- pass 0: what the language can say but mptc does not run yet, and literals -------------------
    def supported(self):
        """Every construct of the language runs now (auxiliary blocks and factored metas since issue 16)."""

    def literals(self):
        """A number literal beyond float's range (`1e400`) is an error, not infinity."""
        stack = list(self.spec.items)
        while stack:
            node = stack.pop()
            if type(node) is ast.Number and isinstance(node.value, float) and not math.isfinite(node.value):
                self.err(OutOfRange(node.span, f"the number {node.text} is too large (it overflows to infinity)"))
            elif type(node) is not ast.Number:
                stack += _kids(node)

    # ---- pass 5: what uses what --------------------------------------------------------------------
    def uses(self, let_free):
        """Every meta-parameter reaches a loss; `unroll ... update` names modules the FT loss uses."""
        pt, ft = self.stages["pretrain"], self.stages["finetune"]
        used = _free(self.singles["meta_objective"].expr, let_free)
        for found in (pt, ft):
            used |= _free(found["loss"].expr, let_free)
            if "optimizer" in found:                    # a learned weight decay
                for expr in _meta_args(self.args.get(id(found["optimizer"].call))).values():
                    used |= _free(expr, let_free)
        if "augment" in pt:
            used |= _free(pt["augment"].call, let_free)
        for found in self.stages.values():              # an auxiliary block's weights
            if found["_node"].kind == "auxiliary":
                for clause in ("weights", "end_task_weight"):
                    if clause in found:
                        used |= _free(found[clause].expr, let_free)
        for name, decl in self.of(ast.MetaDecl).items():
            if name not in used:
                self.err(UnusedMeta(decl.name_span, f"meta-parameter '{name}' is used by no loss (nor by a let "
                                    f"that a loss uses): its hypergradient would always be zero"))
        modules = self.of((ast.ModelDecl, ast.HeadDecl))
        self._applied_somewhere(modules)
        ft_uses = [m for m in modules if m in _free(ft["loss"].expr, let_free)]
        for ident in ft["unroll"].update if "unroll" in ft else ():
            if ident.name in modules and ident.name not in ft_uses:
                self.err(BadArgument(ident.span, f"'{ident.name}' is not used by the finetune loss: the unrolled "
                                     f"FT steps cannot update it (the loss uses {', '.join(ft_uses) or 'no module'})"))

    def _applied_somewhere(self, modules):
        """A module's input size is inferred from where it is applied: one applied nowhere (declared, or
        only named by `l2(...)`) could not be built."""
        applied = set().union(*(calls for _, calls in self.let_names.values()))
        for found in self.stages.values():
            applied |= set().union(*(_calls(c) for key, c in found.items() if key != "_node"))
        applied |= _calls(self.singles["meta_objective"].expr)
        for name, decl in modules.items():
            if name not in applied:
                model = next(iter(self.of(ast.ModelDecl)), "encoder")
                example = f"{name}(x)" if isinstance(decl, ast.ModelDecl) else f"{name}({model}(x))"
                self.err(MissingPart(decl.name_span, f"{_role(decl)} '{name}' is applied to no input, so its "
                                     f"input size is unknown: apply it in a loss, e.g. {example}, or remove it"))

    def run(self) -> Checked:
        self.imports()
        if self.errors:                  # the components of code that did not load would all be unknown
            raise SpecErrors(_dedupe(self.errors), "")
        self.supported()
        self.literals()
        self.collect()
        self.datasets()
        self.modules()
        self.spaces()
        self.metas()
        self.let_order_names = self.let_order()
        self.stage_clauses()
        self.expressions()
        self.auxiliary()
        self.meta_level()
        self.required()
        if self.errors:
            raise SpecErrors(_dedupe(self.errors), "")
        let_free = {}  # dependencies first, so each let's names are resolved once
        for name in self.let_order_names:
            let_free[name] = _through(self.let_uses[name], let_free)
        self.uses(let_free)
        if self.errors:
            raise SpecErrors(_dedupe(self.errors), "")
        metas = self.of(ast.MetaDecl).keys()
        meta_only = frozenset(n for n in self.let_order_names if let_free[n] <= metas)
        return Checked(self.spec, self.decls, self.args, self.stages, self.in_dims, self.data_shapes,
                       self.spaces_of, self.let_order_names, meta_only, let_free, tuple(self.origins),
                       tuple(self.notes), self.aux_info)


# ---- helpers -------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, (bool, str)) and fits_float(v)


def _incomplete(comp, checked) -> bool:
    """Whether an argument was missing or rejected (already reported): its shape rule cannot run."""
    return any(checked["args"].get(p.name) is None and p.default is not None for p in comp.params)


def _sources(checked) -> set:
    """The data declarations a checked dataset is built from (its `dataset` arguments)."""
    comp = DATASETS.get(checked["name"])
    return {checked["args"][p.name] for p in comp.params if p.kind == "dataset" and checked["args"].get(p.name)}


def _data_cycle(name, pending) -> str | None:
    """`a -> b -> a` when following sources from `name` leads back to it, else None."""
    path, current = [name], name
    while current in pending:
        nxt = next(iter(sorted(_sources(pending[current]))), None)
        if nxt == name:
            return " -> ".join(path + [name])
        if nxt is None or nxt in path:
            return None
        path.append(nxt)
        current = nxt
    return None


def _meta_args(checked) -> dict:
    """The arguments of a checked component given as expressions of meta-parameters (`weight_decay:
    exp(log_wd)`), by name."""
    return {k: v for k, v in ((checked or {}).get("args") or {}).items() if attrs.has(type(v))}


def _is_network(decl) -> bool:
    return isinstance(decl, ast.MetaDecl) and isinstance(decl.type, ast.NetworkType)


DEBUG_NOTE = "run again with --debug for its traceback"


def _rule_raised(comp, span, e) -> PluginError:
    """A user's own shape rule that raised something else than ShapeProblem: one error at the call."""
    from mptc.components.plugins import raised, user_frames
    path = Path(comp.origin) if comp.origin.endswith(".py") else None
    message = f"{comp.kind} '{comp.name}' ({where_from(comp)}): its shape rule raised {raised(e, path)}"
    error = PluginError(span, message, note=DEBUG_NOTE)
    error.__cause__ = user_frames(e)
    return error


def _role(decl) -> str:
    return "model" if isinstance(decl, ast.ModelDecl) else "head"


_KIND_OF = {ast.DataDecl: "a dataset", ast.MetaDecl: "a meta-parameter", ast.LetDecl: "a let",
            ast.SpaceDecl: "a space"}  # what a name that is no module names, for `l2(name)`
_DEVICE_ALIASES = {"gpu": "cuda", "cuda0": "cuda:0", "gpu:0": "cuda:0"}  # what people write for cuda


def key_span(span, key: str):
    """The span of the name a node starts with (`warmup` of `warmup 100`, `finetune` of `finetune: unroll`)."""
    return Span(span.path, span.line, span.col, span.line, span.col + len(key))


def _valid_device(value: str) -> bool:
    return value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())


def _mismatch_note(expr, left, right) -> str | None:
    vec, mat = (left, right) if len(left) == 1 else (right, left)
    if len(vec) == 1 and len(mat) == 2 and mat[0] == B:
        return f"a vector of {vec[0]} weights needs {vec[0]} outputs per example, here there are {mat[1]}"
    return None


_FIELDS: dict = {}  # node type -> its fields that can hold nodes (spans excluded)
_NODES = frozenset(v for v in vars(ast).values() if isinstance(v, type) and attrs.has(v) and v is not Span)


def _walk(node):
    """Every node of an expression tree."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack += _kids(n)


def _kids(node) -> list:
    """The AST nodes directly inside `node`."""
    names = _FIELDS.get(type(node))
    if names is None:
        names = _FIELDS[type(node)] = tuple(f.name for f in attrs.fields(type(node))
                                            if f.name not in ("span", "name_span"))
    out = []
    for name in names:
        child = getattr(node, name)
        if type(child) is tuple:
            out += [c for c in child if type(c) in _NODES]
        elif type(child) in _NODES:
            out.append(child)
    return out


def _names(expr) -> tuple[set, set]:
    """(single names referenced, names called) in an expression, in one walk. A call's function name
    counts as called, not referenced: models, heads, network meta-parameters, functions."""
    refs, calls, stack = set(), set(), [expr] if type(expr) in _NODES else []
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is ast.Ref:
            refs.add(node.dotted)
        elif kind is ast.BinOp:  # the commonest node, walked without the generic _kids
            stack.append(node.left)
            stack.append(node.right)
        elif kind is ast.Call:
            calls.add(node.func.dotted)
            stack += node.args
            stack += [k.value for k in node.kwargs]
        elif kind is not ast.Number:
            stack += _kids(node)
    return refs, calls


def _calls(expr) -> set:
    return _names(expr)[1]


def _free(expr, let_free: dict) -> set:
    """Names an expression depends on, through lets (inputs, metas, modules), given what each let
    depends on (`Checked.let_free`)."""
    refs, calls = _names(expr)
    return _through(refs | calls, let_free)


def _through(names, let_free: dict) -> set:
    out = set()
    for n in names:
        if n in let_free:
            out |= let_free[n]
        else:
            out.add(n)
    return {n for n in out if n not in FUNCTIONS}


_SHAPERS = {getattr(ast, name[len("shape_"):]): method for name, method in vars(_Checker).items()
            if name.startswith("shape_")}  # node type -> its shape rule


def _end_span(spec):
    last = spec.items[-1].span if spec.items else spec.span
    path = last.path
    return Span(path, last.end_line, last.end_col, last.end_line, last.end_col + 1)


def _dedupe(errors):
    seen, out = set(), []
    for e in errors:
        key = (e.span, e.message)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def check(spec: ast.Spec) -> Checked:
    """Every check over a parsed spec; raises SpecErrors listing all problems in source order."""
    import mptc.components.catalog  # noqa: F401  (registers the built-in components)
    return _Checker(spec).run()
