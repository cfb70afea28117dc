"""Shared fixtures, and the tiny spec several end-to-end tests run (`tiny_spec`)."""
import pytest
import torch

_TINY = """
spec tiny "a tiny run"
data pt = synthetic.multitask(examples: 256, dim: 8, tasks: 12, related: 4, adversarial: 2, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 240, tasks: 2, seed: 1) split train 0.4, val 0.3, test 0.3
model encoder = mlp(hidden: [16, 4])
head pt_head = linear(out: 12)
head ft_head = linear(out: 2)
meta w: vector[12] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain { data pt batch 32  loss mean(task_weight * bce(pt_head(encoder(x)), y))  steps 2 }
finetune { data ft.train batch 32  loss mean(bce(ft_head(encoder(x)), y))  unroll 1 }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
meta_optimizer adam(lr: 0.1)
train meta_steps META_STEPS warmup 2 seed 0 device cpu log_every LOG_EVERY
evaluate finetune(epochs: 2, seeds: 2) against AGAINST
"""


def tiny_spec(meta_steps: int = 3, log_every: int = 2, against: str = "no_pretrain") -> str:
    """A spec whose whole run (meta-training, baselines, evaluation) takes a second or two."""
    return (_TINY.replace("META_STEPS", str(meta_steps)).replace("LOG_EVERY", str(log_every))
            .replace("AGAINST", against))


@pytest.fixture
def float64():
    """Every tensor of the test in float64; the default dtype is restored afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
