"""A plan made executable: modules, flat parameter dicts, meta-parameters and compiled loss functions.

Parameters live in one flat dict `{"module.local_name": tensor}`; a loss is a pure function
`loss(params, metas, x, y)` evaluated with `torch.func.functional_call`, so estimators can differentiate
it with respect to any subset of parameters or meta-parameters.
"""
from __future__ import annotations

import operator
from typing import Callable

import attrs
import torch
from torch.func import functional_call

from mptc.compiler import ir
from mptc.runtime.registry import FUNCTIONS, HEADS, MODELS

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

    def __init__(self, plan: ir.Plan, device: torch.device, dtype=torch.float32):
        self.plan, self.device, self.dtype = plan, device, dtype
        self.modules = {m.name: _build_module(m).to(device=device, dtype=dtype) for m in plan.modules}
        self.keys = {n: [(k, f"{n}.{k}") for k, _ in mod.named_parameters()] for n, mod in self.modules.items()}
        self.lets: dict[str, Callable] = {}
        for let in plan.lets:
            self.lets[let.name] = self.compile(let.expr)

    def init_params(self) -> dict[str, torch.Tensor]:
        """The modules' initial parameters as fresh leaf tensors."""
        return {f"{n}.{k}": p.detach().clone().requires_grad_() for n, mod in self.modules.items()
                for k, p in mod.named_parameters()}

    def init_metas(self) -> dict[str, torch.Tensor]:
        """Each meta-parameter at its initial value (networks: issue of their own, not yet here)."""
        return {m.name: torch.full((m.size,) if m.kind != "scalar" else (), m.init, device=self.device,
                                   dtype=self.dtype).requires_grad_() for m in self.plan.metas}

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
        return lambda c: c.metas[e.name]

    def _c_LetRef(self, e):
        return lambda c: self.lets[e.name](c)

    def _c_Apply(self, e):
        module, keys, arg = self.modules[e.module], self.keys[e.module], self.compile(e.arg)
        return lambda c: functional_call(module, {k: c.params[full] for k, full in keys}, (arg(c),))

    def _c_Fn(self, e):
        fn, args = FUNCTIONS.get(e.name).load(), [self.compile(a) for a in e.args]
        return lambda c: fn(*[a(c) for a in args])

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
        """Raw meta-parameters and the `let` transforms that depend on them alone (e.g. task weights)."""
        out = {name: t.detach() for name, t in metas.items()}
        ctx = Ctx({}, metas, None, None)
        with torch.no_grad():
            out.update({let.name: self.lets[let.name](ctx).detach() for let in self.plan.lets if let.meta_only})
        return out


def _as_index(i):
    return int(i) if isinstance(i, (int, float)) or (torch.is_tensor(i) and i.dim() == 0) else i.long()


def _build_module(m: ir.Module) -> torch.nn.Module:
    registry = MODELS if m.role == "model" else HEADS
    return registry.get(m.component.name).load()(**m.component.args, in_dim=m.in_dim)


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
