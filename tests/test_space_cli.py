"""`mptc space SPEC [--json]`: the objectives of each space declaration, their count and what each exclude rule
removed; errors rendered like every spec error (exit 2). In process, through `mptc.cli.main`."""
import json

import pytest

from mptc.cli import main
from mptc.compiler.space import MAX_COMBINATIONS

AANG = """# the AANG space of the design sketch
space aux = data{task, domain} x transform{bert_op, mask, replace, none}
            x represent{bidirectional, left_to_right, right_to_left, random_factorized}
            x output{denoise, end_task}
            exclude represent in {left_to_right, right_to_left} and output == end_task
space tiny = a{p, q} x b{u, v} exclude a == p and b == v exclude b != u
"""


@pytest.fixture
def spec(tmp_path):
    def write(text, name="s.mpt"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)
    return write


def test_space_lists_objectives_counts_and_removals(spec, capsys):
    assert main(["space", spec(AANG)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == ""
    assert lines[0] == "space aux: 48 objectives of 64 combinations (data x transform x represent x output)"
    assert lines[1] == "  removed 16: exclude represent in {left_to_right, right_to_left} and output == end_task"
    assert lines[2:4] == ["  task.bert_op.bidirectional.denoise", "  task.bert_op.bidirectional.end_task"]
    assert "  task.bert_op.left_to_right.end_task" not in lines
    # each combination counts against the first rule that removes it
    assert lines[-5:] == ["space tiny: 2 objectives of 4 combinations (a x b)",
                          "  removed 1: exclude a == p and b == v",
                          "  removed 1: exclude b != u",
                          "  p.u", "  q.u"]


def test_space_json(spec, capsys):
    assert main(["space", spec(AANG), "--json"]) == 0
    spaces = json.loads(capsys.readouterr().out)["spaces"]
    aux, tiny = spaces
    assert aux["name"] == "aux" and aux["combinations"] == 64 and len(aux["objectives"]) == 48
    assert aux["stages"]["represent"] == ["bidirectional", "left_to_right", "right_to_left", "random_factorized"]
    assert aux["excludes"] == [{"rule": "exclude represent in {left_to_right, right_to_left} and output == end_task",
                                "removed": 16}]
    assert aux["objectives"][0] == "task.bert_op.bidirectional.denoise"
    assert tiny == {"name": "tiny", "stages": {"a": ["p", "q"], "b": ["u", "v"]}, "combinations": 4,
                    "excludes": [{"rule": "exclude a == p and b == v", "removed": 1},
                                 {"rule": "exclude b != u", "removed": 1}],
                    "objectives": ["p.u", "q.u"]}


def test_a_spec_without_spaces(spec, capsys):
    path = spec("let a = 1\n")
    assert main(["space", path]) == 0
    assert capsys.readouterr().out == f"{path}: no space declarations\n"
    assert main(["space", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"spaces": []}


def test_the_quickstart_has_no_space(capsys, monkeypatch):
    from pathlib import Path
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    assert main(["space", "specs/quickstart.mpt"]) == 0
    assert capsys.readouterr().out == "specs/quickstart.mpt: no space declarations\n"


@pytest.mark.parametrize("text, first_line", [
    ("space s = a{p} exclude b == p\n", "s.mpt:1:24: error: exclude names unknown stage 'b'"),
    ("space s = a{p, q} exclude a == r\n", "s.mpt:1:32: error: 'r' is not a choice of a"),
    ("space s = a{p, p}\n", "s.mpt:1:13: error: choice 'p' is listed twice"),
    ("space s = a{p} exclude\n", "s.mpt:1:23: error: syntax error: unexpected end of file"),
    ("space s = " + " x ".join(f"f{i}{{a, b, c, d, e, f, g, h, i, j}}" for i in range(6)) + "\n",
     f"s.mpt:1:7: error: space 's' has 1000000 combinations, more than the {MAX_COMBINATIONS} supported"),
])
def test_space_errors_exit_2_rendered(spec, capsys, monkeypatch, text, first_line):
    path = spec(text)
    monkeypatch.chdir(path.rsplit("/", 1)[0])
    assert main(["space", "s.mpt"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.startswith(first_line)
    assert err.splitlines()[1] == f"1 | {text.rstrip()}"


def test_space_of_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["space", str(tmp_path / "nope.mpt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_space_declared_twice_is_the_error_check_gives(spec, capsys, monkeypatch):
    path = spec("space s = a{p, q}\nspace s = b{u, v}\n")
    monkeypatch.chdir(path.rsplit("/", 1)[0])
    assert main(["space", "s.mpt"]) == 2
    assert capsys.readouterr().err.startswith("s.mpt:2:7: error: 's' is already declared")
