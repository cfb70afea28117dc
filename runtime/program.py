"""A plan made executable: modules, flat parameter dicts, meta-parameters and compiled loss functions.

Parameters live in one flat dict `{"module.local_name": tensor}`; a loss is a pure function
`loss(params, metas, x, y)` that applies each module with the dict's tensors in place of its own
(`swapping_call`, what `torch.func.functional_call` does, with the module's slots found once), so estimators
can differentiate it with respect to any subset of parameters or meta-parameters.

A `meta n: network ...` lives in the metas dict the same way, flat (`"n.0.weight"`, ...): `n(expr)` is a
functional call over those tensors, so the meta-optimizer and the hypergradient (autograd over the
metas' values) treat its weights like any other meta-parameter.

Augmentations (`ir.Augmented`, from the `augment` clause) draw their noise from a generator seeded by
the run's seed, once per batch tensor (`NoiseMemo`): evaluating the loss again on the same batch object
(the meta-step's IFT on the last PT batch, Hessian-vector products, the PT `unroll` replay) reuses the
PT step's noise, so the hypergradient is taken at exactly the loss the PT step minimised.

A model, head or meta network gets its input shape from the checker (`in_dim`). A component without a
shape rule (your own, docs/components.md) is probed once after it is built, with a dummy batch of zeros:
a failure there is one RunError naming it; and a module whose input comes out of such a component gets
its input shape by evaluating that input on a dummy batch of the stage's data shape (`_probe_input`).
Probing runs in eval mode without gradients and leaves the random number generators as they were.
"""
from __future__ import annotations

import contextlib
import operator
import weakref
from typing import Callable

import attrs
import torch
from torch.func import functional_call
from torch.nn.utils import parametrize

from mptc.compiler import ir
from mptc.errors import RunError
from mptc.runtime import functions
from mptc.components.registry import (AUGMENTATIONS, FUNCTIONS, HEADS, MODELS, ComponentRaised, input_args,
                                      per_example, where_from)
from mptc.components.shapes import B

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}


@attrs.define
class Ctx:
    """What an expression reads: parameters, meta-parameters and the batch."""

    params: dict
    metas: dict
    x: torch.Tensor | None
    y: torch.Tensor | None


class Program:
    """Modules, parameters and compiled expressions of one plan on one device."""

    def __init__(self, plan: ir.Plan, device: torch.device, dtype: torch.dtype | None = None):
        self.plan, self.device, self.dtype = plan, device, dtype or torch_dtype(plan.train.dtype)
        self.noise_seed, self.memos, self.rank = plan.train.seed, [], 0
        self.modules, self.keys, self.networks, self.net_keys = {}, {}, {}, {}
        self._decls = {m.name: m for m in plan.modules} | {m.name: m for m in plan.metas if m.kind == "network"}
        self.in_dims = {name: m.in_dim for name, m in self._decls.items()}   # completed by probing
        self._sites, self._building = None, set()
        for name in self._decls:         # the plan's order (a probed module's inputs are built first)
            self._ensure(name)
        self.factored = {m.name: self._factored_index(m) for m in plan.metas if m.kind == "factored"}
        self.lets: dict[str, Callable] = {}
        self._meta_only = {let.name: let.meta_only for let in plan.lets}
        self._let_memo: tuple = (None, {})
        for let in plan.lets:
            self.lets[let.name] = self.compile(let.expr)
        self.aux = None
        if plan.auxiliary is not None:                  # AANG's objectives (runtime/aang.py)
            from mptc.runtime.aang import Auxiliary
            self.aux = Auxiliary(self, plan.auxiliary)

    def _factored_index(self, meta) -> torch.Tensor:
        """[stages + 1, objectives]: where each objective's W_all entry and its stage choices' weights sit in
        the flat tensor of a factored meta (W_all first, then each stage's choices, lower.factored_choices)."""
        from mptc.compiler.lower import factored_choices
        objectives = next(s.objectives for s in self.plan.spaces if s.name == meta.space)
        rows, offset = [list(range(len(objectives)))], len(objectives)
        for i, choices in enumerate(factored_choices(objectives)):
            rows.append([offset + choices.index(o.split(".")[i]) for o in objectives])
            offset += len(choices)
        return torch.tensor(rows, device=self.device)

    def factored_logits(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        """A factored meta's logit per objective: W_all[k] + W_d[d_k] + W_t[t_k] + W_r[r_k] + W_o[o_k]."""
        return raw[self.factored[name]].sum(0)
    def init_params(self) -> dict[str, torch.Tensor]:
        """The modules' initial parameters as fresh leaf tensors."""
        return _leaves(self.modules)

    def draw_params(self, seed: int) -> dict[str, torch.Tensor]:
        """New initial parameters, as `init_params`: every module built again with torch seeded by `seed`
        (torch's own generator is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            modules = {m.name: self._build(m) for m in self.plan.modules}
        return _leaves(modules)

    # ---- building, and probing what has no shape rule --------------------------------------------
    def _ensure(self, name: str) -> None:
        """Builds module or meta network `name` once; its input shape is probed first when the checker
        could not know it, and its output probed when its component has no shape rule."""
        if name in self.modules or name in self.networks:
            return
        if name in self._building:
            raise RunError(f"cannot infer the input shape of '{name}': its input depends on its own output")
        self._building.add(name)
        if self.in_dims[name] is None and name in self.sites():
            self.in_dims[name] = self._probe_input(name)
        decl, module = self._decls[name], self._build(self._decls[name])
        table, keys = (self.networks, self.net_keys) if isinstance(decl, ir.MetaParam) else (self.modules, self.keys)
        table[name], keys[name] = module, [(k, f"{name}.{k}") for k, _ in module.named_parameters()]
        self._building.discard(name)
        if _component(decl)[0].shape is None:
            self._probe_output(name)

    def _build(self, decl) -> torch.nn.Module:
        comp, call, what = _component(decl)
        fn = comp.load()
        try:
            module = fn(**comp.runtime_args(call.args), **input_args(fn, self.in_dims[decl.name]))
        except ComponentRaised as e:       # a user's own factory raised (components/registry.py)
            message = f"{what} '{decl.name}': {comp.name} ({where_from(comp)}) raised {e.detail}"
            raise RunError(message) from e.__cause__
        if not isinstance(module, torch.nn.Module):
            raise RunError(f"{what} '{decl.name}': {comp.name} ({where_from(comp)}) returned a "
                           f"{type(module).__name__}, not a torch.nn.Module")
        return module.to(device=self.device, dtype=self.dtype)

    def sites(self) -> dict:
        """module -> [(its input expression, lets inlined; the dataset of the stage it is applied in)]."""
        if self._sites is None:
            lets, self._sites = {let.name: let.expr for let in self.plan.lets}, {}
            for expr, data in ((self.plan.pretrain.loss, self.plan.pretrain.data), (self.plan.finetune.loss,
                               self.plan.finetune.data), (self.plan.objective.expr, self.plan.objective.data)):
                for node in _nodes(_inline(expr, lets)):
                    if isinstance(node, ir.Apply):
                        self._sites.setdefault(node.module, []).append((node.arg, data.dataset))
        return self._sites

    @contextlib.contextmanager
    def _probing(self):
        """Eval mode (no dropout, no BatchNorm statistics updated), no gradients, the RNGs untouched."""
        nets = [*self.modules.values(), *self.networks.values()]
        modes = [n.training for n in nets]
        for n in nets:
            n.eval()
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                yield
        finally:
            for n, mode in zip(nets, modes):
                n.train(mode)

    def _dummy(self, in_dim, what: str) -> torch.Tensor:
        shape = per_example(in_dim)
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise RunError(f"{what}: cannot make a dummy batch of shape {shape} to probe it (e.g. graphs): "
                           f"give the component a shape rule (docs/components.md)")
        return torch.zeros(2, *shape, device=self.device, dtype=self.dtype)

    def _probe_output(self, name: str) -> None:
        """Runs a component without a shape rule once on zeros of its input's shape: a failure is named."""
        if self.in_dims[name] is None:
            return
        comp, _, what = _component(self._decls[name])
        x = self._dummy(self.in_dims[name], f"{what} '{name}'")
        module = self.networks[name] if name in self.networks else self.modules[name]
        try:
            with self._probing():
                module(x)
        except Exception as e:
            from mptc.components.plugins import raised, user_frames
            path = comp.origin if comp.origin.endswith(".py") else None
            raise RunError(f"{what} '{name}': {comp.name} ({where_from(comp)}) has no shape rule, and probing it "
                           f"with a dummy batch of shape [2, {', '.join(map(str, x.shape[1:]))}] raised "
                           f"{raised(e, path)}") from user_frames(e)

    def _probe_input(self, name: str):
        """The input shape of `name` (features, or the per-example tuple): its input expression evaluated
        on a dummy batch of zeros shaped like the data of the stage where it is applied."""
        arg, dataset = self.sites()[name][0]
        for node in _nodes(arg):
            if isinstance(node, ir.Apply):
                self._ensure(node.module)
        source = next(d for d in self.plan.datasets if d.name == dataset)
        what = f"the input of {_component(self._decls[name])[2]} '{name}'"
        x = self._dummy(source.x_dim, what)
        y = torch.zeros(2, source.y_dim or 1, device=self.device, dtype=self.dtype)
        memos = len(self.memos)
        try:
            with self._probing():
                out = self.compile(arg)(Ctx(self._probe_params(), self._probe_metas(), x, y))
        except Exception as e:
            raise RunError(f"cannot infer {what}: evaluating it on a dummy batch raised "
                           f"{type(e).__name__}: {e}") from e
        finally:
            del self.memos[memos:]                        # the probe's augmentation noise streams
        return out.shape[1] if out.dim() == 2 else tuple(out.shape[1:])

    def _probe_params(self) -> dict:
        return {full: p for n, mod in self.modules.items() for (_, full), p in zip(self.keys[n], mod.parameters())}

    def _probe_metas(self) -> dict:
        out = {m.name: torch.full((m.size,) if m.kind != "scalar" else (), m.init, device=self.device,
                                  dtype=self.dtype) for m in self.plan.metas if m.kind != "network"}
        return out | {full: p for n, net in self.networks.items()
                      for (_, full), p in zip(self.net_keys[n], net.parameters())}

    def init_metas(self) -> dict[str, torch.Tensor]:
        """Each meta-parameter at its initial value; a network's weights (flat, `net.0.weight`) at the
        initialisation drawn when the program was built, the same on every call."""
        out = {}
        for m in self.plan.metas:
            if m.kind == "network":
                out.update({full: p.detach().clone().requires_grad_() for (_, full), p in
                            zip(self.net_keys[m.name], self.networks[m.name].parameters())})
            else:
                out[m.name] = torch.full((m.size,) if m.kind != "scalar" else (), m.init, device=self.device,
                                         dtype=self.dtype).requires_grad_()
        return out

    def value_names(self) -> dict:
        """meta.json's names of the values `meta_values` gives a factored meta: its objectives, and each stage's
        choices as `stage=choice`."""
        from mptc.compiler.lower import factored_choices
        out = {}
        for m in self.plan.metas:
            if m.kind == "factored":
                space = next(s for s in self.plan.spaces if s.name == m.space)
                objectives, stages = space.objectives, space.stages
                out[m.name] = list(objectives)
                out[f"{m.name}.stages"] = [f"{s}={c}" for s, cs in zip(stages, factored_choices(objectives)) for c in cs]
        return out

    def reseed_noise(self, seed: int | None = None) -> None:
        """Restarts every augmentation's noise stream (from the run's seed by default); the process of
        `rank` > 0 in a data-parallel run draws streams of its own (runtime/parallel.py: rank_seed)."""
        from mptc.runtime.parallel import rank_seed
        self.noise_seed = rank_seed(self.plan.train.seed if seed is None else seed, self.rank)
        for memo in self.memos:
            memo.reseed(self.noise_seed)

    def keys_of(self, modules) -> list[str]:
        return [full for m in modules for _, full in self.keys[m]]

    def compile(self, e) -> Callable[[Ctx], torch.Tensor]:
        """An IR expression as a closure over a Ctx."""
        return getattr(self, "_c_" + type(e).__name__)(e)

    def _c_Const(self, e):
        value = e.value if not isinstance(e.value, list) else torch.tensor(e.value, device=self.device,
                                                                            dtype=self.dtype)
        return lambda c: value

    def _c_Input(self, e):
        return (lambda c: c.x) if e.name == "x" else (lambda c: c.y)

    def _c_MetaRef(self, e):
        if e.name in self.factored:                     # its expressions read the logits over the objectives
            return lambda c: self.factored_logits(e.name, c.metas[e.name])
        return lambda c: c.metas[e.name]

    def _c_AuxTerm(self, e):
        return lambda c: self.aux.term(c)

    def _c_LetRef(self, e):
        if not self._meta_only[e.name]:
            return lambda c: self.lets[e.name](c)
        return lambda c: self._let_of_metas(e.name, c)

    def _let_of_metas(self, name: str, c: Ctx) -> torch.Tensor:
        """A `let` of meta-parameters alone (task weights over 10^6 entries, say): for the PT and online FT
        steps between meta-updates, which share one dict of detached meta-parameters marked `reusable`
        (loop.Stages.fixed), evaluated once per dict and reused; otherwise evaluated every time."""
        memo = self._let_memo
        if memo[0] is not c.metas:
            if not getattr(c.metas, "reusable", False):
                return self.lets[name](c)
            memo = self._let_memo = (c.metas, {})        # holds the dict: its id is not reused meanwhile
        if name not in memo[1]:
            memo[1][name] = self.lets[name](c)
        return memo[1][name]

    def _c_Apply(self, e):
        arg = self.compile(e.arg)
        comp, checked, what = _component(self._decls[e.module])
        if e.module in self.networks:                   # a meta network: its weights are meta-parameters
            call, fulls = swapping_call(self.networks[e.module], self.net_keys[e.module])
            apply = lambda c, a: call([c.metas[full] for full in fulls], a)  # noqa: E731
        else:
            call, fulls = swapping_call(self.modules[e.module], self.keys[e.module])
            apply = lambda c, a: call([c.params[full] for full in fulls], a)  # noqa: E731
        if comp.origin:                                 # a user's own: its failures named (its input's are not its)
            apply = _guarded(apply, f"{what} '{e.module}': {comp.name} ({where_from(comp)})", comp.origin,
                             self._rule_shape(comp, checked, e.module))
        return lambda c: apply(c, arg(c))

    def _rule_shape(self, comp, checked, name: str):
        """The per-example output shape a user's component declares by its shape rule at this module's
        input (ints and None for a dimension it leaves open); None without a rule or one that fails here."""
        shape = per_example(self.in_dims[name])
        if comp.shape is None or shape is None:
            return None
        try:
            out = comp.shape(checked.args, (B, *shape))
        except Exception:  # noqa: BLE001 (the checker reported it, or the rule cannot say)
            return None
        return tuple(d if isinstance(d, int) else None for d in out[1:]) if isinstance(out, tuple) else None

    def _c_Augmented(self, e):
        augment, body = self._augmenter(e), self.compile(e.body)
        return lambda c: body(Ctx(c.params, c.metas, augment(c, c.x), c.y))

    def _c_Augment(self, e):
        augment, value = self._augmenter(e), self.compile(e.input)
        return lambda c: augment(c, value(c))

    def _augmenter(self, e) -> Callable:
        """`augment(c, v)`: the augmentation `e.augment` applied to v with noise of its own stream, drawn
        once per raw batch `c.x`; tensor arguments are evaluated on the raw batch (e.g. a strength network
        of x)."""
        aug = AUGMENTATIONS.get(e.augment).load()
        consts = {k: v for k, v in e.args.items() if not attrs.has(type(v))}
        tensors = {k: self.compile(v) for k, v in e.args.items() if attrs.has(type(v))}
        memo = NoiseMemo(salt=17 + len(self.memos))
        memo.reseed(self.noise_seed)
        self.memos.append(memo)

        def augment(c, v):
            eps = memo.get(c.x, lambda: aug.noise(tuple(v.shape), memo.gen, **consts))
            args = {k: f(c) for k, f in tensors.items()}
            return aug.apply(v, eps.to(device=v.device, dtype=v.dtype), **consts, **args)
        return augment

    def _c_Norm(self, e):
        """`l2(module)` over the module's tensors in the params dict, so an estimator differentiating the
        loss in those parameters sees the penalty (e.g. IFT through a learned L2 strength)."""
        fn, keys = FUNCTIONS.get("l2").load(), [full for _, full in self.keys[e.module]]
        return lambda c: fn([c.params[k] for k in keys])

    def _c_Fn(self, e):
        """A function of tensors; a number argument (`sigmoid(-2)`) becomes a 0-d tensor once, here."""
        parts = mean_bce_parts(e)
        if parts is not None:
            return self._mean_bce(*parts)
        comp = FUNCTIONS.get(e.name)
        fn, args = comp.load(), [self._tensor_arg(a) for a in e.args]
        if not comp.origin:
            return lambda c: fn(*[a(c) for a in args])
        apply = _guarded(lambda c, values: fn(*values), f"function '{e.name}' ({where_from(comp)})", comp.origin)
        return lambda c: apply(c, [a(c) for a in args])  # its inputs evaluated outside: their failures are theirs

    def _mean_bce(self, logits, target, weight):
        """`mean(w * bce(z, y))` as `functions.mean_bce` (one call of torch's kernel where it can)."""
        fn, args = functions.mean_bce, [self._tensor_arg(a) for a in (logits, target)]
        w = None if weight is None else self.compile(weight)
        return lambda c: fn(*[a(c) for a in args], None if w is None else w(c))

    def _tensor_arg(self, e):
        arg = self.compile(e)
        if not _numeric(e):
            return arg
        value = torch.tensor(float(arg(None)), device=self.device, dtype=self.dtype)
        return lambda c: value

    def _c_Bin(self, e):
        op, left, right = _OPS[e.op], self.compile(e.left), self.compile(e.right)
        return lambda c: op(left(c), right(c))

    def _c_Neg(self, e):
        inner = self.compile(e.operand)
        return lambda c: -inner(c)

    def _c_Index(self, e):
        target, index = self.compile(e.target), self.compile(e.index)
        return lambda c: target(c)[_as_index(index(c))]

    def loss(self, expr) -> Callable:
        """`loss(params, metas, x, y) -> scalar tensor` for an IR expression."""
        fn = self.compile(expr)
        return lambda params, metas, x, y: fn(Ctx(params, metas, x, y))

    def meta_values(self, metas) -> dict[str, torch.Tensor]:
        """Raw meta-parameters and the `let` transforms that depend on them alone (e.g. task weights);
        a meta network's weights are left out (the checkpoint has them)."""
        nets = {full for keys in self.net_keys.values() for _, full in keys}
        out = {name: t.detach() for name, t in metas.items() if name not in nets and name not in self.factored}
        for name in self.factored:                      # the weights over the objectives, and per stage choice
            out[name] = torch.softmax(self.factored_logits(name, metas[name]).detach(), 0)
            out[f"{name}.stages"] = metas[name].detach()[self.factored[name].shape[1]:]
        ctx = Ctx({}, metas, None, None)
        with torch.no_grad():  # (a factored meta's weights: softmax over the valid objectives)
            out.update({let.name: self.lets[let.name](ctx).detach() for let in self.plan.lets if let.meta_only})
        return out


def swapping_call(module: torch.nn.Module, keys: list) -> tuple[Callable, list[str]]:
    """(call, fulls): `call(values, a)` applies `module` to `a` with its parameters replaced by `values`
    (tensors in the order of `fulls`, the full names of `keys`' (local, full) pairs), as
    `torch.func.functional_call` does: each tensor is put in its submodule's `_parameters` slot for the
    call and the module's own put back after it. The slots are found once, here; functional_call finds
    them and checks for tied weights on every call (~40 us per call on a two-layer MLP, a dozen calls per
    meta-step). A module with tied weights, a parametrization or a parameter outside a `_parameters` slot
    goes through functional_call itself."""
    fulls = [full for _, full in keys]
    slots = []
    for local, _ in keys:
        path, _, leaf = local.rpartition(".")
        owner = module.get_submodule(path)
        slots.append((owner._parameters, leaf))
    plain = (all(leaf in table for table, leaf in slots)
             and len(list(module.named_parameters(remove_duplicate=False))) == len(keys)
             and not any(parametrize.is_parametrized(m) for m in module.modules()))
    if not plain:
        locals_ = [local for local, _ in keys]
        return (lambda values, a: functional_call(module, dict(zip(locals_, values)), (a,))), fulls

    def call(values, a):
        own = [table[leaf] for table, leaf in slots]
        for (table, leaf), value in zip(slots, values):
            table[leaf] = value
        try:
            return module(a)
        finally:
            for (table, leaf), kept in zip(slots, own):
                table[leaf] = kept
    return call, fulls


def mean_bce_parts(e):
    """(z, y, w) when `e` is `mean(w * bce(z, y))` or `mean(bce(z, y) * w)`, (z, y, None) for
    `mean(bce(z, y))`, with mptc's own mean and bce and w not a number: what `functions.mean_bce`
    computes (the executor and the emitted script alike); else None."""
    if not (isinstance(e, ir.Fn) and e.name == "mean" and len(e.args) == 1):
        return None
    arg, weight = e.args[0], None
    if isinstance(arg, ir.Bin) and arg.op == "*":
        is_bce = [isinstance(s, ir.Fn) and s.name == "bce" for s in (arg.left, arg.right)]
        if is_bce.count(True) != 1:
            return None
        arg, weight = (arg.left, arg.right) if is_bce[0] else (arg.right, arg.left)
    if not (isinstance(arg, ir.Fn) and arg.name == "bce" and len(arg.args) == 2):
        return None
    if (weight is not None and _numeric(weight)) or FUNCTIONS.get("mean").origin or FUNCTIONS.get("bce").origin:
        return None
    return (*arg.args, weight)


def _numeric(e) -> bool:
    """An expression of number literals alone (`-2`, `1 / 3`): a constant known at compile time."""
    if isinstance(e, ir.Const):
        return isinstance(e.value, (int, float))
    if isinstance(e, ir.Neg):
        return _numeric(e.operand)
    return isinstance(e, ir.Bin) and _numeric(e.left) and _numeric(e.right)


def _as_index(i):
    return int(i) if isinstance(i, (int, float)) or (torch.is_tensor(i) and i.dim() == 0) else i.long()


class NoiseMemo:
    """An augmentation's noise: one draw from a seeded generator per batch tensor, reused for as long as
    that tensor lives (looked up by identity through weak references, so no batch is kept alive, and an
    entry is dropped once its batch is gone). No count limit: every batch something still holds (the
    PT `unroll` window of P batches, whatever P; the `mixed_batches` deque) keeps the noise its PT step
    saw, so a replay never draws fresh noise (nor advances the stream the next PT steps draw from)."""

    def __init__(self, salt: int):
        self.salt = salt
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        self.gen, self.entries = torch.Generator().manual_seed(seed * 1000 + self.salt), {}

    def get(self, x: torch.Tensor, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        entry = self.entries.get(id(x))
        if entry is not None and entry[0]() is x:
            return entry[1]
        # a new batch: forget the batches that died (an id may be reused by a new tensor), then draw
        self.entries = {key: (ref, eps) for key, (ref, eps) in self.entries.items() if ref() is not None}
        eps = draw()
        self.entries[id(x)] = (weakref.ref(x), eps)
        return eps


def _guarded(call: Callable, what: str, origin: str, shape: tuple | None = None) -> Callable:
    """`call(c, inputs)` (a user's own module or function applied, its inputs already evaluated) whose
    failures while the run executes are one RunError naming it, where it comes from and the raising line:
    an exception it raises, a result that is not a tensor, or (`shape`: its rule's per-example output) a
    tensor of another shape than its shape rule declares, which would otherwise fail later in a module it
    feeds."""
    from mptc.components.plugins import raised, user_frames
    path = origin if origin.endswith(".py") else None

    def checked(c, inputs):
        try:
            out = call(c, inputs)
        except RunError:
            raise
        except Exception as e:
            raise RunError(f"{what} raised {raised(e, path)}") from user_frames(e)
        if not isinstance(out, torch.Tensor):
            raise RunError(f"{what} returned a {type(out).__name__}, not a tensor")
        if shape is not None and (out.dim() != len(shape) + 1 or any(
                want is not None and have != want for have, want in zip(out.shape[1:], shape))):
            declared = ", ".join(["batch", *("?" if d is None else str(d) for d in shape)])
            raise RunError(f"{what} returned a tensor of shape [{', '.join(map(str, out.shape))}], but its shape "
                           f"rule declares [{declared}]")
        return out
    return checked


def _component(decl):
    """(registry component, its checked call, what it is) of an ir.Module or a network ir.MetaParam."""
    if isinstance(decl, ir.MetaParam):
        return MODELS.get(decl.network.name), decl.network, "meta network"
    return (MODELS if decl.role == "model" else HEADS).get(decl.component.name), decl.component, decl.role


def _nodes(e):
    """Every IR node in an expression (an augmentation's tensor arguments included)."""
    stack = [e]
    while stack:
        node = stack.pop()
        if not attrs.has(type(node)):
            continue
        yield node
        for f in attrs.fields(type(node)):
            value = getattr(node, f.name)
            stack += value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else [value]


def _inline(e, lets: dict):
    """`e` with each `let` reference replaced by the let's expression, so it compiles before the lets do."""
    if isinstance(e, ir.LetRef):
        return _inline(lets[e.name], lets)
    if not attrs.has(type(e)):
        return e
    changes = {}
    for f in attrs.fields(type(e)):
        value = getattr(e, f.name)
        if isinstance(value, dict):
            changes[f.name] = {k: _inline(v, lets) for k, v in value.items()}
        elif isinstance(value, tuple):
            changes[f.name] = tuple(_inline(v, lets) for v in value)
        elif attrs.has(type(value)):
            changes[f.name] = _inline(value, lets)
    return attrs.evolve(e, **changes) if changes else e


def _leaves(modules: dict) -> dict[str, torch.Tensor]:
    """`{"module.local_name": tensor}`: the modules' parameters copied as leaf tensors that require grad."""
    return {f"{n}.{k}": p.detach().clone().requires_grad_() for n, mod in modules.items()
            for k, p in mod.named_parameters()}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of `train dtype NAME` (the checker allows float32 and float64).

        >>> torch_dtype("float64")
        torch.float64
    """
    return {"float32": torch.float32, "float64": torch.float64}[name]


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda`/`cuda:N` without such a device is a RunError.

        >>> pick_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "it was built without CUDA" if torch.version.cuda is None else "no GPU is visible to it"
            raise RunError(f"device {name}: this torch has no CUDA ({why}, torch {torch.__version__}); "
                           "use device cpu or device auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RunError(f"device {name}: there is no such GPU (this machine has {torch.cuda.device_count()})")
    return device
