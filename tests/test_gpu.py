"""Tests marked `gpu` (issue 17, section 3): the quickstart and a hypergradient check on CUDA, in float32
and bf16. Skipped where torch sees no CUDA device; run them with `pytest -m gpu` on a GPU machine."""
import json

import pytest
import torch

from mptc.cli import main
from mptc.compiler.lower import QUICKSTART, compile_spec
from mptc.runtime.data import Data
from mptc.runtime.loop import Trainer
from mptc.runtime.program import Program

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_quickstart_runs_on_cuda(tmp_path, precision):
    assert main(["run", QUICKSTART, "--out", str(tmp_path / "r"), "--quiet", "--set", "train.device=cuda",
                 "--set", f"train.precision={precision}", "--set", "train.meta_steps=20",
                 "--set", "evaluate.seeds=2"]) == 0
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["meta"]["mean"] > 0.5


def test_the_cuda_hypergradient_matches_the_cpu_one():
    """The same state and batches on CUDA and on the CPU: the IFT hypergradient agrees to float32 rounding."""
    out = {}
    for device in ("cpu", "cuda"):
        plan = compile_spec(open(QUICKSTART).read(), QUICKSTART, [f"train.device={device}"])
        torch.manual_seed(0)
        dev = torch.device(device)
        trainer = Trainer(plan, Program(plan, dev), Data(plan, dev))
        state = trainer.init_state()
        for _ in range(10):
            trainer.pt_step(state, trainer.data.batch("pretrain"))
        batches = (trainer.data.batch("pretrain"), [trainer.data.batch("finetune")], trainer.data.batch("objective"))
        _, hg, _ = trainer.hypergradient(state, *batches)
        out[device] = torch.cat([g.flatten().double().cpu() for g in hg.values()])
    a, b = out["cpu"], out["cuda"]
    assert float(a @ b / (a.norm() * b.norm())) > 0.999
