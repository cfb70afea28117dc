"""`mptc compile --emit python`: the standalone script gives the same meta.json as `mptc run`."""
import ast
import json
import math
import py_compile
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mptc.cli import main
from mptc.compiler.lower import QUICKSTART

SMALL = "train meta_steps 3 warmup 5 seed 0 device cpu log_every 1"

TINY = """
spec tiny "cg, encoder Hessian, sgd meta-steps, bounds, a scalar"
data pt = synthetic.multitask(examples: 256, dim: 8, tasks: 12, related: 4, adversarial: 2, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 240, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [16, 4], activation: tanh)
head pt_head = linear(out: 12)
head ft_head = mlp(hidden: [3], out: 2)
meta w: vector[12] = 0.5 in [-1, 1]
meta s: scalar = 1.0
let task_weight = softplus(w) * s
pretrain { data pt batch 32  loss mean(task_weight * bce(pt_head(encoder(x)), y) ** 2) / 2 + -mean(-bce(pt_head(encoder(x)), y)) * 0.5
           steps 3
           optimizer sgd(lr: 0.05, momentum: 0.9) }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  unroll 2  optimizer adam(lr: 0.01) }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: ift(cg(iters: 3, damping: 0.1), hessian: encoder), finetune: unroll
meta_optimizer sgd(lr: 2.0)
train meta_steps 4 warmup 2 seed 3 device cpu log_every 2
"""


def _run_both(spec: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """`mptc run` here and the emitted script in a subprocess, each on one thread: float reductions in the
    same order in both, whatever the machine's load or core count."""
    import os
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    script = tmp_path / "standalone.py"
    result = subprocess.run([sys.executable, "-m", "mptc", "compile", str(spec), "--emit", "python"],
                            capture_output=True, text=True, check=True)
    script.write_text(result.stdout)
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "emit")], check=True, capture_output=True,
                   cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return tmp_path / "run", tmp_path / "emit", result.stdout


def _rows(run: Path, *keys):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keys} for r in rows]


def test_the_quickstart_script_reproduces_mptc_run_exactly(tmp_path):
    text = Path(QUICKSTART).read_text()
    text = re.sub(r"^train .*$", SMALL, text, flags=re.M)
    text = re.sub(r"^evaluate .*$", "", text, flags=re.M)
    text = text.replace("scale: auto", "scale: auto, rescale_every: 2")  # lambda_max re-estimated too
    spec = tmp_path / "quickstart.mpt"
    spec.write_text(text)
    run, emit, script = _run_both(spec, tmp_path)
    assert (emit / "meta.json").read_text() == (run / "meta.json").read_text()
    keys = ("step", "meta_step", "pt_loss", "ft_val_loss", "hypergrad_norm", "solver_iters")
    assert _rows(emit, *keys) == _rows(run, *keys)
    assert not re.search(r"^\s*(import|from) mptc", script, flags=re.M)   # torch only
    assert "def loss_pretrain(params, metas, x, y):\n    return fn_mean_bce(apply('pt_head', params, " \
           "apply('encoder', params, x)), y, let_task_weight(params, metas, x, y))" in script


def test_other_solvers_optimizers_and_bounds_reproduce_too(tmp_path):
    spec = tmp_path / "tiny.mpt"
    spec.write_text(TINY)
    run, emit, script = _run_both(spec, tmp_path)
    assert (emit / "meta.json").read_text() == (run / "meta.json").read_text()
    meta = json.loads((emit / "meta.json").read_text())
    assert set(meta) == {"w", "s", "task_weight"} and max(map(abs, meta["w"]["values"])) <= 1
    assert meta["w"]["names"] == [f"task {i}" for i in range(12)] and isinstance(meta["s"], float)
    assert "IFT(hessian='encoder', hessian_batch=None, hvp='reverse-over-reverse', fused=False, mixed_batches=1, " \
           "mixed_mode='reverse-over-reverse', solver=CG(iters=3, damping=0.1, tol=1e-10))" in script


@pytest.mark.parametrize("change", [
    ("ift(cg(iters: 3, damping: 0.1), hessian: encoder)", "unroll"),                 # the PT replay
    ("hessian: encoder)", "hvp: auto, fused: true, mixed_batches: 2)"),              # a kept graph, timed hvp
    ("log_every 2", "log_every 2 reset_every 2"),                                    # cycles
    ("train meta_steps", "hypergradient pretrain: ift(neumann(terms: 3, scale: auto, rescale_every: 1)), "
                         "finetune: unroll check every 2\ntrain meta_steps"),
], ids=["pt-unroll", "fused-auto-hvp", "cycles", "check-every"])
def test_the_script_runs_mptcs_own_loop_so_every_loop_feature_reproduces(tmp_path, change):
    """The script copies runtime/loop.py and the estimators rather than a twin of them: what the loop
    does (replayed windows, kept graphs, cycles, checks) the script does, to the same meta.json."""
    spec = tmp_path / "tiny.mpt"
    text = TINY.replace(*change)
    if change[1].startswith("hypergradient"):
        text = re.sub(r"^hypergradient pretrain: ift\(cg.*$\n", "", text, flags=re.M)
    spec.write_text(text)
    run, emit, script = _run_both(spec, tmp_path)
    assert (emit / "meta.json").read_text() == (run / "meta.json").read_text()
    assert "def meta_train(trainer: Stages, state: State" in script


@pytest.mark.parametrize("change, message", [
    (("mlp(hidden: [16, 4], activation: tanh)", "mlp(hidden: [16, 4], dropout: 0.1)"), "dropout"),
    (("ift(cg(iters: 3, damping: 0.1), hessian: encoder)", "search(random, trials: 2)"),
     "pretrain estimator 'search'"),
    (("log_every 2", "log_every 2 dtype float64"), "train dtype float64"),
    (("loss mean(bce(ft_head(encoder(x)), y))", "loss mean(bce(ft_head(encoder(x)), y)) + 0.1 * l2(ft_head)"),
     "l2(ft_head) (a module's parameter norm)"),
])
def test_plans_outside_the_subset_are_a_clear_error(tmp_path, capsys, change, message):
    spec = tmp_path / "tiny.mpt"
    spec.write_text(TINY.replace(*change))
    assert main(["compile", str(spec), "--emit", "python"]) == 2
    err = capsys.readouterr().err
    assert f"emit python does not support {message}" in err and "Traceback" not in err


# ---- spec strings and numbers enter the script as literals, never as code ---------------------------------
ROOT = Path(__file__).resolve().parent.parent
QUICK = Path(QUICKSTART).read_text()
HEADER = re.search(r"^spec quickstart .*$", QUICK, flags=re.M)[0]
INJECTION = 'x"""\nimport os; os.system("echo INJECTED")\n"""'
WINDOWS = " C:\\Users\\N"


def _mpt_string(text: str) -> str:
    """`text` as a .mpt STRING token (the parser decodes \\" \\\\ \\n \\t)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _emit(text: str, path: str = "q.mpt") -> str:
    from mptc.compiler.lower import compile_spec
    from mptc.emit import emit_python
    return emit_python(compile_spec(text, path), path)


def _calls(tree, name: str) -> list:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
            (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)]


@pytest.mark.parametrize("doc", [INJECTION + WINDOWS, INJECTION, "ends in a quote\"", "ends in a backslash \\",
                                 "tab\tnul\x00 cr\r ff\x0c ls\u2028 caf\xe9 \U0001F600"])
def test_a_hostile_description_stays_inside_the_docstring(doc):
    script = _emit(QUICK.replace(HEADER, f"spec quickstart {_mpt_string(doc)}"))
    tree = ast.parse(script)                                 # compiles: no SyntaxError
    assert not _calls(tree, "system") and "os" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert ast.get_docstring(tree, clean=False).startswith(f"quickstart: {doc}\n")   # the same text, unchanged
    compile(script, "standalone.py", "exec")


def test_odd_spec_paths_give_a_script_that_compiles(tmp_path, capsys):
    folder = tmp_path / 'a "quoted" dir \\ with spaces'
    folder.mkdir()
    spec = folder / "spéc 'q' \"\"\" \\.mpt"
    spec.write_text(QUICK, encoding="utf-8")
    assert main(["compile", str(spec), "--emit", "python"]) == 0
    script = capsys.readouterr().out
    out = tmp_path / "standalone.py"
    out.write_text(script, encoding="utf-8")
    py_compile.compile(str(out), doraise=True)
    assert f"Generated by `mptc compile {spec} --emit python`" in ast.get_docstring(ast.parse(script), clean=False)


def test_infinite_numbers_are_written_as_float_calls(tmp_path):
    """A literal that overflows (1e999) is a check error now, but a plan built otherwise (the Python API,
    a plan edited in code) can hold inf: it is written as float('inf'), never a bare `inf` name."""
    import attrs
    from mptc.compiler import ir
    from mptc.compiler.lower import compile_spec
    from mptc.emit import emit_python
    plan = compile_spec(QUICK, "q.mpt")
    inf = float("inf")
    est = plan.estimators[0]
    solver = attrs.evolve(est.method.args["solver"], args={"terms": 5, "scale": inf})
    plan = attrs.evolve(plan, metas=(attrs.evolve(plan.metas[0], bounds=(-inf, inf)),),
                        estimators=(attrs.evolve(est, method=attrs.evolve(est.method, args={**est.method.args,
                                                                                         "solver": solver})),
                                    *plan.estimators[1:]),
                        lets=(attrs.evolve(plan.lets[0], expr=ir.Bin("*", plan.lets[0].expr, ir.Const(inf))),))
    script = emit_python(plan, "q.mpt")
    tree = ast.parse(script)
    assert not {"inf", "nan"} & {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}   # no NameError at run time
    assert "BOUNDS = {'w': [float('-inf'), float('inf')]}" in script
    assert "Neumann(terms=5, scale=float('inf')" in script


@pytest.mark.parametrize("value", [1.5, -0.0, float("inf"), -float("inf"), [1, [2.5, -float("inf")]], (1,), (),
                                   {"a\"'\\": None, "in": True}, "x\"\"\"\n\\", 10 ** 30])
def test_literal_round_trips(value):
    from mptc.emit import literal
    assert eval(literal(value), {"__builtins__": {"float": float}}) == value
    assert math.isnan(eval(literal(float("nan")), {"__builtins__": {"float": float}}))


def test_a_value_without_a_literal_is_an_emit_error():
    from mptc.emit import EmitError, literal
    with pytest.raises(EmitError, match="as a Python literal"):
        literal(object())


# Today's refusals, kept: each spec of specs/ either emits a script that compiles or is refused with this
REFUSED = {"ecg_simclr.mpt": "data 'ecg.synthetic'",
           "noisy_labels.mpt": "data 'images.digits'", "rotation.mpt": "data 'images.digits'",
           "ppi_full_access.mpt": "data 'graphs.synthetic'", "ppi_partial_access.mpt": "data 'graphs.synthetic'",
           "own.mpt": "data 'arrays'", "aang_td.mpt": "data 'text.jsonl'", "aang_td_ed.mpt": "data 'text.jsonl'"}


@pytest.mark.parametrize("spec", sorted(ROOT.glob("specs/**/*.mpt")), ids=lambda p: p.name)
def test_every_shipped_spec_emits_a_compiling_script_or_a_subset_error(spec, capsys):
    code = main(["compile", str(spec), "--emit", "python"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if spec.name in REFUSED:
        assert code == 2 and err.startswith(f"mptc: error: emit python does not support {REFUSED[spec.name]} yet")
        return
    assert code == 0, err
    compile(out, "standalone.py", "exec")
    assert not {"inf", "nan"} & {n.id for n in ast.walk(ast.parse(out)) if isinstance(n, ast.Name)}


def test_copied_definitions_are_cut_at_the_lines_python_counts(tmp_path, monkeypatch):
    """A form feed (an editor's page break) or U+2028 in a module must not shift the copied definitions."""
    from mptc.emit import _read_module
    (tmp_path / "ff_module.py").write_text('A = 1\n\x0c\n# a comment\u2028with a separator\nB = "x\x85y"\n\n\n'
                                           'def f(v):\n    return v + A\n', encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    defs = _read_module("ff_module").defs
    assert defs["f"][1] == "def f(v):\n    return v + A" and defs["B"][1] == 'B = "x\x85y"'
