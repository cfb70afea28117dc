"""Components are declared once: a registration is checked against its implementation's signature (the
same parameter names, the same defaults, no **kwargs that would swallow a parameter), for every built-in
and for a user's own component as it registers."""
import importlib

import pytest

import mptc.components.catalog  # noqa: F401  (the built-ins)
from mptc.components.registry import ALL, DeclarationError, Param, Registry, signature_problems


def _builtins():
    for kind, registry in ALL.items():
        for comp in registry.entries():
            if isinstance(comp.target, str):
                yield pytest.param(comp, id=f"{kind}:{comp.name}")


@pytest.mark.parametrize("comp", list(_builtins()))
def test_every_builtin_declaration_matches_its_implementation(comp):
    module, _, attr = comp.target.partition(":")
    assert signature_problems(comp, getattr(importlib.import_module(module), attr)) == []


def test_compile_only_parameters_are_not_passed_on():
    from mptc.components.registry import MODELS
    assert MODELS.get("mlp").runtime_args({"hidden": [4], "in": 8, "activation": "relu"}) == {
        "hidden": [4], "activation": "relu"}


@pytest.mark.parametrize("fn, problem", [
    (lambda width, in_dim, **rest: None, "takes **kwargs"),
    (lambda width, in_dim, depth=3: None, "'depth': declared default 2, the implementation's 3"),
    (lambda in_dim, depth=2: None, "'width' is declared but the implementation does not take it"),
    (lambda width, in_dim, depth=2, *, extra: None, "takes 'extra', which is not declared"),
])
def test_a_user_component_that_disagrees_with_its_declaration_is_refused_as_it_registers(fn, problem):
    models = Registry("model")
    with pytest.raises(DeclarationError, match=problem.replace("*", r"\*")):
        models.register("net", [Param("width", "int"), Param("depth", "int", 2)], target=fn)
    assert "net" not in models


def test_a_matching_user_component_registers():
    models = Registry("model")
    models.register("net", [Param("width", "int"), Param("depth", "int", 2)], target=lambda width, in_dim, depth=2: 1)
    assert models.names() == ["net"]


def test_a_mismatched_builtin_fails_at_first_load(monkeypatch):
    """A lazily imported implementation is checked the first time it loads."""
    from mptc.components.registry import Component
    comp = Component("model", "odd", (Param("width", "int"),), "mptc.runtime.models:linear")
    with pytest.raises(DeclarationError, match="'width' is declared"):
        comp.load()


def test_name_lists_declared_in_the_catalog_are_the_runtimes():
    """Choices the checker accepts are the ones the implementation knows (no second list to drift)."""
    from mptc.components.catalog import HVP_MODES, _ACTS
    from mptc.runtime.hvp import MODES
    from mptc.runtime.models import _ACTIVATIONS
    assert set(_ACTS) == set(_ACTIVATIONS)
    assert set(HVP_MODES) == set(MODES) | {"auto"}


def test_a_stage_without_an_optimizer_gets_the_registrys_defaults():
    from mptc.compiler.check import default_optimizer
    from mptc.components.registry import OPTIMIZERS
    adam = {p.name: p.default for p in OPTIMIZERS.get("adam").params}
    assert default_optimizer("pretrain") == {"name": "adam", "args": adam}
    assert default_optimizer("meta")["args"] == {**adam, "lr": 1.0}
    assert default_optimizer("finetune")["args"]["lr"] == 0.1
