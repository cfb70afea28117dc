"""`column` / `concat` (a per-example loss or an (x, y) pair as a network input) and a short run of the
noisy-label example-weighting spec (specs/paper/noisy_labels.mpt), whose headline must be reported."""
import json
from pathlib import Path

import pytest
import torch

from mptc.cli import main
from mptc.compiler.lower import compile_spec
from mptc.errors import SpecErrors
from mptc.runtime.functions import column, concat

SPEC = Path(__file__).resolve().parents[1] / "specs" / "paper" / "noisy_labels.mpt"

NET_ON = """
spec s "shapes"
data pt = images.digits(flatten: true, portion: [0.0, 0.5], corrupt: 0.5, seed: 0)
data ft = images.digits(flatten: true, portion: [0.5, 1.0], seed: 1) split train 0.5, val 0.5
model encoder = mlp(hidden: [8])
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta n: network mlp(hidden: [4, 1], last_activation: false)
let losses = column(ce(pt_head(encoder(x)), y))
let weight = 2 * sigmoid(n(INPUT))
pretrain { data pt batch 16  loss mean(weight * losses) / mean(weight)  steps 1 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y)) }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 2 warmup 1 seed 0 device cpu
"""


def test_column_and_concat():
    assert column(torch.tensor([1.0, 2.0])).shape == (2, 1)
    assert concat(torch.zeros(3, 64), torch.ones(3, 10)).shape == (3, 74)


@pytest.mark.parametrize("inp, in_dim", [("detach(losses)", 1), ("concat(x, y)", 74),
                                         ("concat(detach(losses), y)", 11)])
def test_network_input_size_is_inferred(inp, in_dim):
    plan = compile_spec(NET_ON.replace("INPUT", inp))
    assert [m.in_dim for m in plan.metas if m.name == "n"] == [in_dim]


def test_concat_needs_matching_leading_axes():
    with pytest.raises(SpecErrors) as info:
        compile_spec(NET_ON.replace("INPUT", "concat(x, mean(losses))"))
    assert any("side by side" in e.message for e in info.value.errors)


def test_noisy_labels_spec_reports_the_clean_over_noisy_weight(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(SPEC), "--out", str(out), "--quiet", "--set", "train.meta_steps=5",
                 "--set", "train.warmup=5"]) == 0
    found = json.loads((out / "eval.json").read_text())["clean_over_noisy_weight"]
    assert found["clean"] + found["noisy"] == 1258          # every PT example weighted, 70% of 1797
    assert found["ratio"] > 0 and 0 <= found["auroc_clean"] <= 1
