"""The golden IR: `mptc compile specs/quickstart.mpt --emit ir` must print exactly
`tests/fixtures/ir/quickstart.json`.

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_ir.py   # rewrites the golden file
"""
import json
import os
from pathlib import Path

from mptc.cli import main
from mptc.compiler.ir import to_json
from mptc.compiler.lower import compile_spec

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.mpt"
GOLDEN = ROOT / "tests" / "fixtures" / "ir" / "quickstart.json"


def test_quickstart_ir_is_golden(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["compile", "specs/quickstart.mpt", "--emit", "ir"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(out, encoding="utf-8")
    assert out == GOLDEN.read_text(encoding="utf-8")


def test_the_ir_is_plain_json_and_matches_compile_spec():
    # what the CLI prints is exactly the plan of compile_spec, as JSON values
    plan = compile_spec(QUICKSTART.read_text(encoding="utf-8"), str(QUICKSTART))
    assert json.loads(GOLDEN.read_text(encoding="utf-8")) == json.loads(json.dumps(to_json(plan)))


def test_ir_does_not_depend_on_the_path_or_comments():
    text = QUICKSTART.read_text(encoding="utf-8")
    stripped = "\n".join(line.split("#")[0].rstrip() for line in text.splitlines() if not line.startswith("#"))
    a = to_json(compile_spec(text, "specs/quickstart.mpt"))
    b = to_json(compile_spec(stripped, "/elsewhere/renamed.mpt"))
    assert a == b


def test_overrides_show_up_in_the_ir():
    text = QUICKSTART.read_text(encoding="utf-8")
    plan = compile_spec(text, "q.mpt", ["train.seed=7", "pretrain.optimizer.lr=1e-4", "data.pt.seed=3",
                                        "finetune.unroll=4", "pretrain.data.batch=64", "meta_optimizer.lr=0.5",
                                        "evaluate.seeds=2", "pretrain.steps=3", "meta.w.init=0.25"])
    assert plan.train.seed == 7
    assert plan.pretrain.optimizer.args["lr"] == 1e-4
    assert plan.datasets[0].source.args["seed"] == 3
    assert plan.finetune.unroll == 4
    assert plan.pretrain.data.batch == 64
    assert plan.meta_optimizer.args["lr"] == 0.5
    assert plan.evaluate.protocol.args["seeds"] == 2
    assert plan.pretrain.steps == 3
    assert plan.metas[0].init == 0.25
    base = compile_spec(text, "q.mpt")
    assert (base.train.seed, base.finetune.unroll, base.pretrain.data.batch) == (0, 1, 128)
