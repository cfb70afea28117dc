"""`train precision bf16` (issue 17, section 3): every loss's forward pass under autocast to bfloat16, the
solver, gradients and meta-parameters in float32; on the quickstart the hypergradient at one state stays
within a stated cosine of float32's."""
import torch

from mptc.compiler.lower import QUICKSTART, compile_spec
from mptc.runtime.data import Data
from mptc.runtime.loop import Trainer
from mptc.runtime.program import Program

COSINE_BOUND = 0.999  # measured 0.999992 on CPU (docs/runtime.md, "Devices and dtype")


def _trainer(precision):
    plan = compile_spec(open(QUICKSTART).read(), QUICKSTART, [f"train.precision={precision}", "train.device=cpu"])
    torch.manual_seed(0)
    return Trainer(plan, Program(plan, torch.device("cpu")), Data(plan, torch.device("cpu")))


def _flat(hg):
    return torch.cat([g.flatten() for g in hg.values()]).double()


def test_bf16_hypergradient_is_close_to_float32_at_the_same_state():
    fp32, bf16 = _trainer("fp32"), _trainer("bf16")
    state = fp32.init_state()
    for _ in range(30):
        fp32.pt_step(state, fp32.data.batch("pretrain"))
        fp32.ft_online_step(state, fp32.data.batch("finetune"))
    batches = (fp32.data.batch("pretrain"), [fp32.data.batch("finetune")], fp32.data.batch("objective"))
    twin = bf16.init_state({k: v.detach().clone().requires_grad_() for k, v in state.params.items()})
    twin.ft_opt = state.ft_opt
    _, hg32, _ = fp32.hypergradient(state, *batches)
    loss16, hg16, _ = bf16.hypergradient(twin, *batches)
    a, b = _flat(hg32), _flat(hg16)
    cosine = float(a @ b / (a.norm() * b.norm()))
    assert all(g.dtype == torch.float32 for g in hg16.values()) and loss16.dtype == torch.float32
    assert cosine > COSINE_BOUND, cosine
    assert not torch.equal(a, b)                      # bf16 did run: not the same numbers


def test_a_bf16_run_finishes(tmp_path):
    from mptc.cli import main
    assert main(["run", QUICKSTART, "--out", str(tmp_path / "r"), "--quiet", "--set", "train.precision=bf16",
                 "--set", "train.meta_steps=3", "--set", "evaluate.seeds=1", "--set", "evaluate.epochs=2"]) == 0
