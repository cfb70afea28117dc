"""Your own components (docs/components.md): `import` in a spec, `--plugin`, entry points, the registration
contract (in_shape, shape rules, probing at run time), and one named error for each way user code fails.

Each test leaves the registries, sys.modules, sys.path and the plugin record as it found them."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mptc.cli import build_parser, main
from mptc.compiler import ast
from mptc.compiler.lower import compile_spec
from mptc.compiler.parse import parse
from mptc.compiler.printer import format_text
from mptc.components import plugins
from mptc.components.registry import ALL, FILE_MODULE_PREFIX, MODELS, DeclarationError, Param, Registry, input_args
from mptc.errors import RunError, SpecErrors

ROOT = Path(__file__).resolve().parent.parent

COMPONENTS = '''
from mptc.components import DATASETS, FUNCTIONS, HEADS, MODELS, B, Param, ShapeProblem, features

SEEN = []   # the in_shape each factory call received


def _net(width, in_shape, extra=0, norm=False):
    import torch

    class Noisy(torch.nn.Module):         # draws from torch's generator on every call
        def forward(self, h):
            return h + 0.0 * torch.randn_like(h)

    SEEN.append(in_shape)
    layers = [torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(in_shape).prod()) + extra, width), Noisy()]
    return torch.nn.Sequential(*layers, *([torch.nn.BatchNorm1d(width)] if norm else []), torch.nn.Tanh())


@MODELS.register("wide", [Param("width", "int", min=1)], shape=lambda args, in_shape: (B, args["width"]))
def wide(width, in_shape):
    return _net(width, in_shape)


@MODELS.register("plain", [Param("width", "int", min=1), Param("norm", "bool", False)])
def plain(width, in_shape, norm=False):
    return _net(width, in_shape, norm=norm)


@MODELS.register("ruled", [Param("width", "int", min=1), Param("norm", "bool", False)],
                 shape=lambda args, in_shape: (B, args["width"]))
def ruled(width, in_shape, norm=False):
    return _net(width, in_shape, norm=norm)


@MODELS.register("bad_rule", [Param("width", "int", min=1)], shape=lambda args, in_shape: (B, args["widht"]))
def bad_rule(width, in_shape):
    return _net(width, in_shape)


def _picky(args, in_shape):
    if features(in_shape) != 7:
        raise ShapeProblem(f"wants 7 features, got {features(in_shape)}")
    return (B, args["width"])


@MODELS.register("picky", [Param("width", "int", min=1)], shape=_picky)
def picky(width, in_shape):
    return _net(width, in_shape)


@MODELS.register("boom", [Param("width", "int", min=1)], shape=lambda args, in_shape: (B, args["width"]))
def boom(width, in_shape):
    raise ValueError(f"width {width} is not supported")


@MODELS.register("mismatch", [Param("width", "int", min=1)])
def mismatch(width, in_shape):
    return _net(width, in_shape, extra=1)


@MODELS.register("notmodule", [Param("width", "int", min=1)], shape=lambda args, in_shape: (B, args["width"]))
def notmodule(width, in_shape):
    return width


@MODELS.register("raises_later", [Param("width", "int", min=1)], shape=lambda args, in_shape: (B, args["width"]))
def raises_later(width, in_shape):
    import torch

    class Later(torch.nn.Module):          # builds, then fails in its forward pass
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(in_shape[0], width)

        def forward(self, x):
            raise ValueError("forward failed")
    return Later()


@MODELS.register("lies", [Param("width", "int", min=1)], shape=lambda args, in_shape: (B, args["width"]))
def lies(width, in_shape):
    return _net(width + 3, in_shape)       # its rule says width, it gives width + 3


@FUNCTIONS.register("fails", [Param("a", "tensor"), Param("b", "tensor")], shape=lambda args, shapes: shapes[0])
def fails(a, b):
    raise ZeroDivisionError("no way")


@FUNCTIONS.register("nothing", [Param("a", "tensor"), Param("b", "tensor")], shape=lambda args, shapes: shapes[0])
def nothing(a, b):
    return None


@HEADS.register("open_head", [Param("out", "int", min=1)])
def open_head(out, in_shape):
    import torch
    SEEN.append(in_shape)
    return torch.nn.Linear(in_shape[0], out)
'''

BODY = """spec t
data pt = synthetic.multitask(examples: 256, dim: 16, tasks: 10, related: 3, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 128, tasks: 3, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = {encoder}
head pt_head = linear(out: 10)
head ft_head = {ft_head}
meta w: vector[10] = 0.0
pretrain {{
  data pt batch 32
  loss mean(2 * sigmoid(w) * bce(pt_head(encoder(x)), y))
  steps 2
}}
finetune {{
  data ft.train batch 32
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 1 update ft_head
}}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 2 seed 0 device cpu
"""


def spec_text(encoder="wide(width: 6)", ft_head="linear(out: 3)", imports=('import "components.py"',)):
    return "".join(f"{i}\n" for i in imports) + BODY.format(encoder=encoder, ft_head=ft_head)


@pytest.fixture(autouse=True)
def restore(restored_registries):
    """Every registration, import and entry point a test makes is undone after it (tests/conftest.py)."""
    yield


@pytest.fixture
def proj(tmp_path):
    """A project folder with components.py in it; returns a function writing spec files there."""
    (tmp_path / "components.py").write_text(COMPONENTS)

    def write(text, name="s.mpt"):
        (tmp_path / name).write_text(text)
        return tmp_path / name
    return write


def cli(*args):
    return main([str(a) for a in args])


def errors_of(text, path):
    with pytest.raises(SpecErrors) as info:
        compile_spec(text, str(path))
    return info.value.errors


def loaded_module(origin: str):
    """The module a file import ran as (to read what its factories saw)."""
    return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == origin)


# ---- the syntax ----------------------------------------------------------------------------------
def test_import_parses_a_quoted_file_or_a_dotted_module_with_exact_spans():
    spec = parse('import "lib/components.py"\nimport my_pkg.components\n', "t.mpt")
    file, module = spec.items
    assert isinstance(file, ast.ImportDecl) and isinstance(file.source, ast.String)
    assert file.source.value == "lib/components.py"
    s = file.source.span
    assert (s.line, s.col, s.end_line, s.end_col) == (1, 8, 1, 27)
    assert isinstance(module.source, ast.Ref) and module.source.dotted == "my_pkg.components"
    s = module.source.span
    assert (s.line, s.col, s.end_col) == (2, 8, 25)


def test_fmt_prints_imports_back_with_their_comments():
    text = 'import   "components.py"   # mine\nimport  a.b\nmodel m = mlp(hidden: [3])\n'
    assert format_text(text) == 'import "components.py"  # mine\nimport a.b\nmodel m = mlp(hidden: [3])\n'


def test_a_spec_may_import_many_times_but_not_the_same_code_twice(proj, tmp_path):
    text = spec_text(imports=('import "components.py"', 'import "./components.py"'))
    [e] = errors_of(text, proj(text))
    assert (e.span.line, e.span.col, e.message) == (2, 8, "this code is imported twice")


def test_python_api_import_compiles_to_the_plan_of_the_text(proj, tmp_path, monkeypatch):
    from mptc import E, Spec, vector, x, y
    monkeypatch.chdir(tmp_path)
    s = Spec("t")
    pt = s.data("pt", E.synthetic.multitask(examples=256, dim=16, tasks=10, related=3, seed=0))
    encoder = s.model("encoder", E.wide(width=6))
    s.import_("components.py")
    head = s.head("pt_head", E.linear(out=10))
    w = s.meta("w", vector(10), init=0.0)
    assert str(s).splitlines()[:2] == ["spec t", 'import "components.py"']
    s.pretrain(data=pt, loss=E.mean(2 * E.sigmoid(w) * E.bce(head(encoder(x)), y)))
    s.finetune(data=pt, loss=E.mean(E.bce(head(encoder(x)), y)))
    s.meta_objective(E.mean(E.bce(head(encoder(x)), y)), on=pt)
    plan = s.compile()
    assert plan.imports == (str(tmp_path / "components.py"),)
    assert plan.modules[0].component.name == "wide"


# ---- missing code, code that raises --------------------------------------------------------------
def test_a_missing_file_is_located_at_the_import_and_exits_2(tmp_path, capsys):
    """The acceptance script's case: `import "nowhere.py"` prepended to a spec that checks."""
    quickstart = (ROOT / "specs" / "quickstart.mpt").read_text()
    (tmp_path / "imp.mpt").write_text('import "nowhere.py"\n' + quickstart)
    assert cli("check", tmp_path / "imp.mpt") == 2
    err = capsys.readouterr().err
    first = next(line for line in err.splitlines() if "error" in line)
    assert first == (f'{tmp_path / "imp.mpt"}:1:8: error: cannot import "nowhere.py": no such file '
                     f"(resolved against the spec's folder: {tmp_path})")


def test_a_misspelt_file_gets_a_did_you_mean(proj, tmp_path):
    text = spec_text(imports=('import "compnents.py"',))
    [e] = errors_of(text, proj(text))
    assert (e.span.line, e.span.col, e.hint) == (1, 8, "components.py")


def test_a_missing_module_and_an_unquoted_file_are_located(proj):
    text = spec_text(imports=("import no_such_pkg.components",))
    [e] = errors_of(text, proj(text))
    assert (e.span.col, e.message) == (8, "cannot import no_such_pkg.components: no such module on the Python path")
    text = spec_text(imports=("import components.py",))
    [e] = errors_of(text, proj(text))
    assert e.hint == '"components.py"' and "has no .py" in e.message


def test_a_file_that_raises_is_one_error_naming_it_and_the_message(tmp_path, capsys):
    (tmp_path / "components.py").write_text("from mptc.components import MODELS, Param\n\n"
                                            "MODELS.register('half', [], target=lambda in_shape: None)\n"
                                            "raise ValueError('no GPU here')\n")
    (tmp_path / "s.mpt").write_text(spec_text())
    assert cli("check", tmp_path / "s.mpt") == 2
    err = capsys.readouterr().err
    assert 'cannot import "components.py": it raised ValueError: no GPU here (components.py:4)' in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert MODELS.get("half") is None            # what it registered before raising is gone
    assert cli("check", tmp_path / "s.mpt", "--debug") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "raise ValueError('no GPU here')" in err and "plugins.py" not in err


def test_a_registration_that_disagrees_with_its_function_fails_the_import(tmp_path):
    (tmp_path / "components.py").write_text("from mptc.components import MODELS, Param\n\n"
                                            "@MODELS.register('net', [Param('width', 'int')])\n"
                                            "def net(depth, in_shape):\n    pass\n")
    text = spec_text()
    (tmp_path / "s.mpt").write_text(text)
    [e] = errors_of(text, tmp_path / "s.mpt")
    assert e.span.line == 1 and "DeclarationError" in e.message
    assert "'width' is declared but the implementation does not take it" in e.message


# ---- what is imported, and when ------------------------------------------------------------------
def test_a_module_beside_the_spec_is_imported_by_name(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "parts.py").write_text(COMPONENTS)
    text = spec_text(imports=("import mypkg.parts",))
    (tmp_path / "s.mpt").write_text(text)
    plan = compile_spec(text, str(tmp_path / "s.mpt"))
    assert plan.imports == ("mypkg.parts",) and MODELS.get("wide").origin == "mypkg.parts"


def _python(code: str, cwd: Path, env: dict | None = None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)
    return done


def test_check_imports_torch_only_when_the_users_file_does(proj, tmp_path):
    proj(spec_text())
    probe = """
        import sys
        from mptc.cli import main
        rc = main(["check", "s.mpt"])
        print(rc, "torch" in sys.modules)
    """
    assert _python(probe, tmp_path).stdout.split()[-2:] == ["0", "False"]
    (tmp_path / "components.py").write_text("import torch\n" + COMPONENTS)   # the file imports torch itself
    assert _python(probe, tmp_path).stdout.split()[-2:] == ["0", "True"]


def test_a_spec_cannot_use_code_it_does_not_name(proj, tmp_path):
    """In a fresh process, the file beside the spec is not imported unless the spec (or --plugin) names it."""
    (tmp_path / "components.py").write_text("open('imported', 'w').close()\n" + COMPONENTS)
    proj(spec_text(imports=()))
    done = _python("from mptc.cli import main; raise SystemExit(main(['check', 's.mpt']))", tmp_path)
    assert done.returncode == 2 and "unknown model 'wide'" in done.stderr
    assert not (tmp_path / "imported").exists()
    done = _python("from mptc.cli import main; raise SystemExit(main(['check', 's.mpt', '--plugin', 'components.py']))",
                   tmp_path)
    assert done.returncode == 0 and (tmp_path / "imported").exists()


def test_plugin_option_loads_a_module_or_a_file_before_compiling(proj, tmp_path, monkeypatch, capsys):
    path = proj(spec_text(imports=()))
    assert cli("check", path) == 2
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert cli("check", path, "--plugin", "components.py") == 0
    assert plugins.LOADED[str(tmp_path / "components.py")] == "--plugin"
    assert json.loads(_compile_json(path, "--plugin", "components.py"))["imports"] == [str(tmp_path / "components.py")]


def _compile_json(*args):
    from contextlib import redirect_stdout
    from io import StringIO
    out = StringIO()
    with redirect_stdout(out):
        assert cli("compile", *args) == 0
    return out.getvalue()


@pytest.mark.parametrize("command", ["check", "compile", "run", "sweep", "compare"])
def test_every_command_that_compiles_takes_plugin_and_debug(command, capsys):
    args = build_parser().parse_args([command, "s.mpt", "--plugin", "a.b", "--plugin", "c.py", "--debug"])
    assert args.plugin == ["a.b", "c.py"] and args.debug
    assert cli(command, "s.mpt", "--plugin", "no_such_module_here") == 2      # before anything is read or run
    assert capsys.readouterr().err == "mptc: error: --plugin no_such_module_here: cannot import no_such_module_here: " \
                                      "no such module on the Python path\n"


ENTRY_POINT = """
open("loaded", "w").close()
from mptc.components import MODELS, B, Param

@MODELS.register("from_package", [Param("width", "int", min=1)], shape=lambda args, in_shape: (B, args["width"]))
def from_package(width, in_shape):
    import torch
    return torch.nn.Linear(in_shape[0], width)
"""


def _installed(tmp_path, module_text):
    """A package installed in tmp_path/site: mptc_fake_pkg, with an entry point of group mptc.components."""
    site = tmp_path / "site"
    (site / "mptc_fake_pkg-1.0.dist-info").mkdir(parents=True)
    (site / "mptc_fake_pkg-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mptc-fake-pkg\n"
                                                                   "Version: 1.0\n")
    (site / "mptc_fake_pkg-1.0.dist-info" / "entry_points.txt").write_text(
        "[mptc.components]\nfake = mptc_fake_pkg\n")
    (site / "mptc_fake_pkg.py").write_text(module_text)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def _check_in(tmp_path, env):
    return subprocess.run([sys.executable, "-m", "mptc", "check", "s.mpt"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_entry_points_load_when_a_name_is_not_found_and_only_then(proj, tmp_path):
    env = _installed(tmp_path, ENTRY_POINT)
    proj(spec_text(encoder="mlp(hidden: [6])", imports=()))
    done = _check_in(tmp_path, env)
    assert done.returncode == 0 and not (tmp_path / "loaded").exists()     # known names: not loaded
    proj(spec_text(encoder="from_package(width: 6)", imports=()))
    done = _check_in(tmp_path, env)
    assert (done.returncode, done.stdout) == (0, "s.mpt: ok\n") and (tmp_path / "loaded").exists()
    done = _check_in(tmp_path, {**env, "MPTC_NO_ENTRY_POINTS": "1"})
    assert done.returncode == 2 and "unknown model 'from_package'" in done.stderr


def test_an_entry_point_that_raises_is_one_line_naming_it(proj, tmp_path):
    env = _installed(tmp_path, "raise ImportError('needs a GPU build')\n")
    proj(spec_text(encoder="from_package(width: 6)", imports=()))
    done = _check_in(tmp_path, env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == ("mptc: error: entry point 'fake = mptc_fake_pkg' (mptc.components of package "
                           "mptc-fake-pkg) raised ImportError: needs a GPU build; MPTC_NO_ENTRY_POINTS=1 turns "
                           "entry points off\n")


# ---- registration --------------------------------------------------------------------------------
def test_a_name_is_registered_once_per_origin(tmp_path):
    models = Registry("model")
    models.register("net", [Param("width", "int")], target=lambda width, in_shape: None)
    models.register("net", [Param("width", "int")], target=lambda width, in_shape: 1)   # the same module again
    assert models.get("net").target(1, None) == 1
    with pytest.raises(DeclarationError, match=r"model 'mlp' is already registered \(built in\)"):
        MODELS.register("mlp", [Param("width", "int")], target=lambda width, in_shape: None)
    (tmp_path / "other.py").write_text("from mptc.components import MODELS, Param\n"
                                       "MODELS.register('mlp2', [], target=lambda in_shape: None)\n")
    plugins.load(str(tmp_path / "other.py"))
    with pytest.raises(DeclarationError, match=r"already registered \(.*other.py\)"):
        MODELS.register("mlp2", [], target=lambda in_shape: None)


def test_a_user_dataset_needs_a_shape_rule():
    from mptc.components import DATASETS
    with pytest.raises(DeclarationError, match="a dataset needs a shape rule"):
        DATASETS.register("mine", [], target=lambda: None)


def test_factories_receive_in_shape_per_example_and_builtins_in_dim():
    assert input_args(lambda width, in_shape: 0, 16) == {"in_shape": (16,)}
    assert input_args(lambda width, in_shape: 0, (1, 8, 8)) == {"in_shape": (1, 8, 8)}
    assert input_args(lambda hidden, in_dim: 0, 16) == {"in_dim": 16}
    assert input_args(lambda path: 0, 16) == {}
    assert MODELS.get("mlp").load().__name__ == "mlp"      # a built-in loads as itself, not wrapped


# ---- shape rules and probing ---------------------------------------------------------------------
def test_a_shape_rule_that_raises_is_one_error_naming_the_component_and_its_file(proj):
    text = spec_text(encoder="bad_rule(width: 6)")
    [e] = errors_of(text, proj(text))       # applied three times, reported once, at its first use
    assert (e.span.line, e.span.col) == (11, 42)
    assert re.fullmatch(r"model 'bad_rule' \(.*components\.py\): its shape rule raised KeyError: 'widht' "
                        r"\(components\.py:\d+\)", e.message)


def test_a_shape_problem_of_a_user_rule_is_a_located_shape_error(proj):
    text = spec_text(encoder="picky(width: 6)")
    errors = errors_of(text, proj(text))
    assert [(e.span.line, e.span.col) for e in errors] == [(11, 42), (16, 25), (19, 33)]
    assert errors[0].message == "encoder wants 7 features, got 16"


def test_no_shape_rule_is_a_note_and_the_runtime_probes_the_shapes(proj, tmp_path, capsys):
    from mptc.runtime.program import Program
    path = proj(spec_text(encoder="plain(width: 6)", ft_head="open_head(out: 3)"))
    assert cli("check", path) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok\n"
    assert err.count("note:") == 2 and "error" not in err
    assert f"{path}:5:17: note: model 'encoder': plain (" in err
    plan = compile_spec(path.read_text(), str(path))
    assert [m.in_dim for m in plan.modules] == [16, None, None]      # the heads' inputs: unknown at check time
    prog = Program(plan, torch.device("cpu"))
    assert prog.in_dims == {"encoder": 16, "pt_head": 6, "ft_head": 6}
    assert loaded_module(plan.imports[0]).SEEN == [(16,), (6,)]
    assert set(prog.draw_params(3)) == set(prog.init_params())      # rebuilt with the probed shapes


def test_probing_changes_neither_the_random_streams_nor_batchnorm_statistics(proj):
    from mptc.runtime.program import Program
    built = {}
    for name in ("ruled", "plain"):
        path = proj(spec_text(encoder=f"{name}(width: 6, norm: true)"), f"{name}.mpt")
        torch.manual_seed(0)
        prog = Program(compile_spec(path.read_text(), str(path)), torch.device("cpu"))
        built[name] = (prog.init_params(), prog.modules["encoder"][3].running_mean.clone(), torch.rand(3))
    (p1, stats1, next1), (p2, stats2, next2) = built["ruled"], built["plain"]
    assert p1.keys() == p2.keys() and all(torch.equal(p1[k], p2[k]) for k in p1)
    assert torch.equal(stats1, stats2) and torch.equal(stats2, torch.zeros(6)) and torch.equal(next1, next2)


def test_a_factory_gets_the_per_example_shape_of_images(tmp_path):
    from mptc.runtime.program import Program
    (tmp_path / "components.py").write_text(COMPONENTS)
    text = spec_text(encoder="plain(width: 6)", ft_head="linear(out: 10)")
    text = re.sub(r"data pt = .*", "data pt = images.digits(size: 8)", text)
    text = re.sub(r"data ft = \S+\(.*?\)", "data ft = images.digits(size: 8, seed: 1)", text)
    (tmp_path / "s.mpt").write_text(text)
    plan = compile_spec(text, str(tmp_path / "s.mpt"))
    Program(plan, torch.device("cpu"))
    assert loaded_module(plan.imports[0]).SEEN[0] == (1, 8, 8)


@pytest.mark.parametrize("encoder, message", [
    ("boom(width: 6)", r"model 'encoder': boom \(.*components\.py\) raised ValueError: width 6 is not supported "
                       r"\(components\.py:\d+\)"),
    ("mismatch(width: 6)", r"model 'encoder': mismatch \(.*components\.py\) has no shape rule, and probing it with "
                           r"a dummy batch of shape \[2, 16\] raised RuntimeError: mat1 and mat2 shapes cannot be "
                           r"multiplied .*"),
    ("notmodule(width: 6)", r"model 'encoder': notmodule \(.*components\.py\) returned a int, not a torch\.nn\.Module"),
])
def test_a_component_that_fails_at_build_is_one_run_error_naming_it(proj, encoder, message):
    from mptc.runtime.program import Program
    path = proj(spec_text(encoder=encoder))
    with pytest.raises(RunError) as info:
        Program(compile_spec(path.read_text(), str(path)), torch.device("cpu"))
    assert re.fullmatch(message, str(info.value))


def test_run_reports_a_build_failure_in_one_line_and_debug_adds_the_users_traceback(proj, tmp_path, capsys):
    path = proj(spec_text(encoder="boom(width: 6)"))
    assert cli("run", path, "--out", tmp_path / "run", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("mptc: error: model 'encoder': boom (") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    assert cli("run", path, "--out", tmp_path / "run", "--quiet", "--debug") == 2
    err = capsys.readouterr().err
    assert 'raise ValueError(f"width {width} is not supported")' in err and "program.py" not in err


@pytest.mark.parametrize("encoder, loss, message", [
    ("raises_later(width: 6)", None, r"model 'encoder': raises_later \(.*components\.py\) raised ValueError: forward "
                                     r"failed \(components\.py:\d+\)"),
    ("lies(width: 6)", None, r"model 'encoder': lies \(.*components\.py\) returned a tensor of shape \[32, 9\], but its "
                             r"shape rule declares \[batch, 6\]"),
    ("wide(width: 6)", "fails", r"function 'fails' \(.*components\.py\) raised ZeroDivisionError: no way "
                                r"\(components\.py:\d+\)"),
    ("wide(width: 6)", "nothing", r"function 'nothing' \(.*components\.py\) returned a NoneType, not a tensor"),
])
def test_user_code_failing_while_the_run_executes_is_one_named_line_and_exit_2(proj, tmp_path, capsys, encoder, loss,
                                                                               message):
    text = spec_text(encoder=encoder)
    if loss:
        text = text.replace("2 * sigmoid(w) * bce(pt_head(encoder(x)), y)", f"2 * sigmoid(w) * {loss}(pt_head(encoder(x)), y)")
    path = proj(text)
    assert cli("run", path, "--out", tmp_path / "run", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.fullmatch("mptc: error: " + message + "\n", err), err
    assert not (tmp_path / "run" / "summary.txt").exists()


def test_a_file_that_calls_sys_exit_is_refused_at_its_import(tmp_path, capsys):
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "s.mpt").write_text('import "quits.py"\n' + BODY.format(encoder="mlp(hidden: [6])", ft_head="linear(out: 3)"))
    assert cli("check", tmp_path / "s.mpt") == 2
    err = capsys.readouterr().err
    assert 's.mpt:1:8: error: cannot import "quits.py": it called sys.exit(3)' in err


def test_a_run_with_probed_shapes_records_the_imports(proj, tmp_path):
    path = proj(spec_text(encoder="plain(width: 6)", ft_head="open_head(out: 3)"))
    assert cli("run", path, "--out", tmp_path / "run", "--quiet") == 0
    ir = json.loads((tmp_path / "run" / "ir.json").read_text())
    assert ir["imports"] == [str(tmp_path / "components.py")]
    assert all(isinstance(v, float) for v in json.loads((tmp_path / "run" / "meta.json").read_text())["w"]["values"])


def test_sweep_honours_the_specs_imports(proj, tmp_path, capsys):
    path = proj(spec_text(encoder="plain(width: 6)"))
    assert cli("sweep", path, "--set", "model.encoder.width=3,5", "--out", tmp_path / "sweep", "--quiet") == 0
    runs = json.loads((tmp_path / "sweep" / "summary.json").read_text())["runs"]
    assert sorted(r["overrides"]["model.encoder.width"] for r in runs) == ["3", "5"]
    assert all(json.loads((Path(r["run"]) / "ir.json").read_text())["imports"] == [str(tmp_path / "components.py")]
               for r in runs)


# ---- the documentation's worked example ------------------------------------------------------------
def _doc_files():
    text = (ROOT / "docs" / "components.md").read_text()
    return text, re.findall(r"```\w*\n(# (\S+\.(?:py|mpt))\n.*?)```", text, re.S)


def test_the_worked_example_of_the_docs_checks_and_runs_as_written(tmp_path, monkeypatch, capsys):
    text, files = _doc_files()
    assert [name for _, name in files] == ["components.py", "spec.mpt"]
    for body, name in files:
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    assert cli("check", "spec.mpt") == 0
    out, err = capsys.readouterr()
    shown = re.search(r"\$ mptc check spec.mpt\n(.*?)\$ mptc run", text, re.S).group(1)
    assert err + out == shown                           # the output the doc shows, exactly
    assert cli("run", "spec.mpt", "--out", "run", "--quiet", "--set", "train.meta_steps=2") == 0
    assert json.loads(Path("run/ir.json").read_text())["imports"] == [str(tmp_path / "components.py")]
