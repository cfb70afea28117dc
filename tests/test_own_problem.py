"""The whole user path of "your own problem": a new folder holding pt.npz, ft.csv, components.py (an
nn.Module) and a spec that imports it runs with `mptc run` from another folder, prints the summary, and
`mptc report` renders; the same spec runs in float64."""
import csv
import json
import re

import numpy as np
import pytest

from mptc.cli import main

COMPONENTS = '''
"""A user's encoder: a two-layer tanh network with a skip connection."""
from mptc.components import MODELS, B, Param, features


def _shape(args, in_shape):
    features(in_shape)
    return (B, args["width"])


@MODELS.register("skip_tanh", [Param("width", "int", min=1)], shape=_shape)
def skip_tanh(width, in_shape):
    import torch
    from torch import nn

    class SkipTanh(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(in_shape[0], width), nn.Linear(width, width)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            return h + torch.tanh(self.b(h))
    return SkipTanh()
'''

SPEC = '''
import "components.py"
spec own "task weights on data of my own, with my own encoder"
data pt = arrays(path: "data/pt.npz", x: "features", y: "labels")
data ft = table(path: "data/ft.csv", targets: ["a", "b"]) split train 0.3, val 0.3, test 0.4
model encoder = skip_tanh(width: 8)
head pt_head = linear(out: 10)
head ft_head = linear(out: 2)
meta w: vector[10] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 64  loss mean(task_weight * bce(pt_head(encoder(x)), y)) + 1e-4 * l2(encoder)  steps 3 }
finetune { data ft.train batch 32  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 update ft_head }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
meta_optimizer adam(lr: 0.1)
train meta_steps 4 warmup 3 seed 0 device cpu
evaluate finetune(epochs: 3, lr: 3e-3, metric: auroc, seeds: 2) against no_pretrain, pretrain
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    import mptc.components.catalog  # noqa: F401  (the built-ins, before the table is copied)
    from mptc.components.registry import MODELS
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))   # this test's registration is undone after
    rng = np.random.default_rng(0)
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    z = rng.normal(size=(700, 3))
    x = (z @ rng.normal(size=(3, 6)) + 0.3 * rng.normal(size=(700, 6))).astype("float32")
    y = (z @ rng.normal(size=(3, 10)) > 0).astype("float32")
    np.savez(root / "data" / "pt.npz", features=x[:500], labels=y[:500])
    with open(root / "data" / "ft.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{i}" for i in range(6)] + ["a", "b"])
        for row, t in zip(x[500:], (z[500:, :2] > 0).astype(int)):
            w.writerow([f"{v:.5f}" for v in row] + list(t))
    (root / "components.py").write_text(COMPONENTS)
    (root / "own.mpt").write_text(SPEC)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return root, elsewhere


def test_your_own_problem_runs_from_anywhere_prints_its_summary_and_reports(project, monkeypatch, capsys):
    root, elsewhere = project
    monkeypatch.chdir(elsewhere)                             # paths and the import resolve against the spec
    assert main(["run", "../proj/own.mpt", "--out", "run", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"meta +0\.\d+ ± 0\.\d+ +\(2 seeds\)", out) and "pretrain" in out
    meta = json.loads((elsewhere / "run" / "meta.json").read_text())
    assert meta["task_weight"]["names"] == [f"labels[{i}]" for i in range(10)]
    assert json.loads((elsewhere / "run" / "ir.json").read_text())["modules"][0]["component"]["name"] == "skip_tanh"
    assert main(["report", "run"]) == 0
    html = (elsewhere / "run" / "report.html").read_text()
    images = re.findall(r'src="([^"]+\.png)"', html)
    assert images and all((elsewhere / "run" / i).is_file() for i in images)


def test_your_own_problem_runs_in_float64(project, monkeypatch):
    root, elsewhere = project
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(root / "own.mpt"), "--out", "run64", "--quiet", "--set", "train.dtype=float64"]) == 0
    import torch
    state = torch.load(elsewhere / "run64" / "checkpoint.pt")
    assert {t.dtype for t in state["params"].values()} == {torch.float64}
