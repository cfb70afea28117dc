"""The command line as a user meets it: exit codes (0 ok, 2 for every user mistake, argparse's 2 for misuse),
no traceback ever, and `mptc check` staying torch-free. Runs the venv's `mptc` in subprocesses."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mptc.cli import main
from mptc.sources import Sources, render
from mptc.errors import Span, SpecError

ROOT = Path(__file__).resolve().parent.parent
MPTC = Path(sys.executable).with_name("mptc")
BROKEN = ROOT / "tests" / "fixtures" / "errors" / "42_shape_mismatch.mpt"


def mptc(*args, cwd=ROOT):
    if not MPTC.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    done = subprocess.run([str(MPTC), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    return done


def test_check_quickstart_exits_0():
    done = mptc("check", "specs/quickstart.mpt")
    assert (done.returncode, done.stdout, done.stderr) == (0, "specs/quickstart.mpt: ok\n", "")


def test_compile_prints_the_ir_as_json():
    done = mptc("compile", "specs/quickstart.mpt", "--emit", "ir", "--set", "train.seed=5")
    assert done.returncode == 0
    assert json.loads(done.stdout)["train"]["seed"] == 5


def test_broken_spec_exits_2_with_the_rendered_error():
    done = mptc("check", BROKEN.name, cwd=BROKEN.parent)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == BROKEN.with_suffix(".err").read_text(encoding="utf-8")


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.mpt", "no such file"),
    (lambda d: d, "it is a directory"),
    (lambda d: _write(d / "latin1.mpt", "spec caf\xe9\n".encode("latin-1")), "not UTF-8 text (byte 8)"),
])
def test_unreadable_spec_exits_2(tmp_path, make, message):
    path = make(tmp_path)
    done = mptc("check", path)
    assert done.returncode == 2
    assert done.stderr == f"mptc: error: cannot read spec '{path}': {message}\n"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("item, first_line", [
    ("train.sede=3", "--set train.sede=3:1:7: error: unknown train option 'sede'"),
    ("pretrain.optimizer.lr=0", "--set pretrain.optimizer.lr=0:1:23: error: 'lr' must be > 0, got 0"),
    ("train.seed", "--set train.seed:1:1: error: --set takes KEY=VALUE"),
    ("train.seed=f(", "--set train.seed=f(:1:14: error: syntax error: unexpected end of file"),
])
def test_bad_set_exits_2(item, first_line):
    done = mptc("check", "specs/quickstart.mpt", "--set", item)
    assert done.returncode == 2
    assert done.stderr.startswith(first_line)
    assert done.stderr.splitlines()[1] == f"1 | {item}"
    assert done.stderr.endswith("mptc: 1 error\n")


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("check",), ("compile", "specs/quickstart.mpt", "--emit", "xml"),
                                  ("check", "specs/quickstart.mpt", "--sett", "a=1")])
def test_argparse_misuse_exits_2(args):
    done = mptc(*args)
    assert done.returncode == 2
    assert "usage: mptc" in done.stderr


def test_check_does_not_import_torch():
    code = ("import sys; from mptc.cli import main; rc = main(['check', 'specs/quickstart.mpt']); "
            "assert rc == 0, rc; heavy = sorted(m for m in ('torch', 'numpy', 'sklearn') if m in sys.modules); "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "mptc", "check", "specs/quickstart.mpt"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "specs/quickstart.mpt: ok\n")


# ---- in process ----------------------------------------------------------------------------------
def test_main_returns_2_for_user_mistakes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.mpt"
    bad.write_text("let a =\n", encoding="utf-8")
    assert main(["check", str(bad)]) == 2
    assert main(["check", str(tmp_path / "nope.mpt")]) == 2
    assert main(["check", "specs/quickstart.mpt", "--set", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{bad}:1:8: error: syntax error: unexpected end of file" in err
    assert "--set nope=1:1:1: error: unknown override root 'nope'" in err


def _render(line, col, end_line, end_col, text, hint=None, note=None):
    return render(SpecError(Span("f.mpt", line, col, end_line, end_col), "oops", hint, note), Sources({"f.mpt": text}))


def test_render_carets_hint_and_note():
    assert _render(1, 5, 1, 8, "let abc = 1", hint="abd", note="see there") == (
        "f.mpt:1:5: error: oops\n1 | let abc = 1\n  |     ^^^\n  = did you mean 'abd'?\n  = note: see there")


def test_render_multiline_span_underlines_to_the_end_of_its_first_line():
    assert _render(2, 3, 4, 2, "a\nb { c\nd\n}").splitlines()[1:] == ["2 | b { c", "  |   ^^^"]


def test_render_at_end_of_line_and_outside_the_file():
    assert _render(1, 4, 1, 5, "abc").splitlines()[2] == "  |    ^"
    assert _render(9, 1, 9, 2, "abc") == "f.mpt:9:1: error: oops"  # no such line: the header alone


# ---- mptc compare --vary -------------------------------------------------------------------------
TINY = """
spec tiny "a tiny run"
data pt = synthetic.multitask(examples: 128, dim: 8, tasks: 6, related: 2, adversarial: 1, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 120, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [8, 4])
head pt_head = linear(out: 6)
head ft_head = linear(out: 2)
meta w: vector[6] = 0.0
pretrain { data pt batch 16  loss mean(2 * sigmoid(w) * bce(pt_head(encoder(x)), y))  steps 2 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 1 warmup 0 seed 0 device cpu log_every 1
evaluate finetune(epochs: 1, seeds: 1) against pretrain
"""


@pytest.mark.parametrize("vary", ["train.seed+abc", "train.seed+", "+3", "", "train.seed+1.5", "train.seed+1+2",
                                  "train.seed=3", "train seed", "train.seed+" + "9" * 5000])
def test_a_malformed_vary_is_a_named_error(tmp_path, capsys, vary):
    spec = tmp_path / "tiny.mpt"
    spec.write_text(TINY)
    out = tmp_path / "runs"
    code = main(["compare", str(spec), "--seeds", "1", "--vary", "train.seed", vary, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err == (f"mptc: error: --vary {vary!r}: expected KEY or KEY+K with K an integer, "
                   "e.g. --vary train.seed data.pt.seed+100\n")


def test_vary_without_keys_is_argparse_misuse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compare", "specs/quickstart.mpt", "--vary"])
    assert info.value.code == 2 and "expected at least one argument" in capsys.readouterr().err


def test_every_varied_key_is_checked_on_every_spec_before_the_first_run(tmp_path, capsys):
    first, second = tmp_path / "a.mpt", tmp_path / "b.mpt"
    first.write_text(TINY)
    second.write_text(TINY.replace("data pt =", "data src =").replace("of: pt", "of: src").replace("data pt ", "data src "))
    out = tmp_path / "runs"
    code = main(["compare", str(first), str(second), "--seeds", "2", "--vary", "data.pt.seed+5", "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()                     # b.mpt's mistake found before a.mpt ran
    assert err.startswith("--set data.pt.seed=5:1:1: error: no data 'pt' in the spec") and "Traceback" not in err


# ---- the source line under an error: lines as the parser counts them ("\n" only) -------------------
BREAKS = ["\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]  # str.splitlines splits at all
# (and at a lone "\r", which reading a spec file turns into "\n", as the parser then sees it)


@pytest.mark.parametrize("brk", BREAKS, ids=ascii)
def test_a_line_break_of_str_splitlines_before_the_error_does_not_shift_the_shown_line(tmp_path, capsys, brk):
    text = f'# a comment{brk}with a break\nspec tiny "a{brk}b"\n' + TINY.split("\n", 2)[2].replace("sigmoid(w)", "sigmoid(ww)")
    spec = tmp_path / "tiny.mpt"
    spec.write_text(text, encoding="utf-8", newline="")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err.split("\n")
    line = next(n for n, t in enumerate(text.split("\n"), 1) if "sigmoid(ww)" in t)
    source = text.split("\n")[line - 1]
    col = source.index("ww") + 1
    assert err[:3] == [f"{spec}:{line}:{col}: error: unknown name 'ww'", f"{line} | {source}",
                       f"{' ' * len(str(line))} | {' ' * (col - 1)}^^"]


@pytest.mark.parametrize("brk", [*BREAKS, "\r", "\t"], ids=ascii)
def test_render_shows_a_line_break_inside_the_error_line_as_one_space(brk):
    assert _render(1, 5, 1, 7, f"a{brk}b ww\nnext").split("\n")[1:] == ["1 | a b ww", "  |     ^^"]


def test_render_drops_the_carriage_return_of_a_crlf_line():
    assert _render(2, 1, 2, 3, "a\r\nbc\r\nd").split("\n")[1:] == ["2 | bc", "  | ^^"]


def test_fmt_shows_the_parser_line_after_a_form_feed(tmp_path, capsys):
    spec = tmp_path / "ff.mpt"
    spec.write_text('# page one\x0c page two\u2028\nspec s "a\x85b"\nlet a = 2 * * 3\n', encoding="utf-8")
    assert main(["fmt", "--check", str(spec)]) == 2
    err = capsys.readouterr().err.split("\n")
    assert err[0].startswith(f"{spec}:3:13: error: syntax error: unexpected '*'")
    assert err[1:3] == ["3 | let a = 2 * * 3", "  |             ^"]


def test_every_command_is_registered_once_and_listed_in_the_readme():
    """cli.COMMANDS is the one registration place; the README's command table lists exactly those."""
    import re
    from mptc.cli import COMMANDS, build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    listed = dict.fromkeys(re.findall(r"^\| `mptc (\w+)", readme, flags=re.M))
    assert list(listed) == list(COMMANDS)


@pytest.mark.parametrize("argv", [["run", "SPEC", "--out", ""], ["run", "SPEC", "--tensorboard", " "],
                                  ["run", "--resume", ""], ["sweep", "SPEC", "--set", "train.seed=0,1", "--out", ""],
                                  ["compare", "SPEC", "--csv", ""]])
def test_an_empty_path_flag_is_a_usage_error_not_the_default(argv, capsys):
    """`--out ''` used to mean no --out: the run went to runs/<name>-<time>."""
    spec = str(Path(__file__).resolve().parents[1] / "specs" / "quickstart.mpt")
    with pytest.raises(SystemExit) as info:
        main([spec if a == "SPEC" else a for a in argv])
    assert info.value.code == 2 and "expected a path, got an empty string" in capsys.readouterr().err


def test_compare_refuses_an_unwritable_csv_before_running_anything(tmp_path, capsys):
    spec = str(Path(__file__).resolve().parents[1] / "specs" / "quickstart.mpt")
    assert main(["compare", spec, "--seeds", "1", "--csv", str(tmp_path), "--out", str(tmp_path / "runs")]) == 2
    assert f"--csv '{tmp_path}': a folder, not a file" in capsys.readouterr().err
    assert main(["compare", spec, "--seeds", "1", "--csv", str(tmp_path / "no" / "t.csv")]) == 2
    assert "no folder" in capsys.readouterr().err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["compare", "SPEC", "--seeds", "1", "--vary", "train.seed", "--vary", "train.seed+1"],
     "mptc: error: --vary names train.seed twice: one offset per key\n"),        # the first was dropped
    (["compare", "SPEC", "--seeds", "1", "--vary", "train.seed", "data.pt.seed", "train.seed+3"],
     "mptc: error: --vary names train.seed twice: one offset per key\n"),
    (["sweep", "SPEC", "--set", "train.seed=0,1", "--set", "train.seed=2,3"],    # 4 runs, 2 of them duplicates
     "mptc: error: --set train.seed is given twice: give its values in one --set (train.seed=A,B,...)\n"),
])
def test_a_key_given_twice_to_compare_or_sweep_is_refused(tmp_path, capsys, argv, message):
    spec = tmp_path / "tiny.mpt"
    spec.write_text(TINY)
    out = tmp_path / "runs"
    assert main([str(spec) if a == "SPEC" else a for a in argv] + ["--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == message and not out.exists()


def test_vary_may_be_given_more_than_once(tmp_path, capsys):
    spec = tmp_path / "tiny.mpt"
    spec.write_text(TINY)
    out = tmp_path / "runs"
    assert main(["compare", str(spec), "--seeds", "1", "--vary", "train.seed", "--vary", "data.pt.seed+5",
                 "--out", str(out), "--quiet"]) == 0
    ir = json.loads((out / "tiny" / "seed-0" / "ir.json").read_text())
    assert ir["train"]["seed"] == 0 and [d for d in ir["datasets"] if d["name"] == "pt"][0]["source"]["args"]["seed"] == 5
