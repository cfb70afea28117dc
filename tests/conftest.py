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


@pytest.fixture
def restored_registries(tmp_path_factory):
    """Undoes every registration a test's user code makes (registries, imported files, sys.path, entry points)."""
    import sys
    from mptc.components import plugins
    from mptc.components.registry import ALL, FILE_MODULE_PREFIX
    tmp_base = tmp_path_factory.getbasetemp()
    entries = {kind: dict(r._entries) for kind, r in ALL.items()}
    modules, path = set(sys.modules), list(sys.path)
    loaded, entry_points = dict(plugins.LOADED), dict(plugins._ENTRY_POINTS)
    yield
    for kind, r in ALL.items():
        r._entries.clear()
        r._entries.update(entries[kind])
    for name in set(sys.modules) - modules:       # the tests' own code (not what a test imported of numpy)
        if name.startswith(FILE_MODULE_PREFIX) or str(tmp_base) in str(getattr(sys.modules[name], "__file__", "")):
            del sys.modules[name]
    sys.path[:] = path
    plugins.LOADED.clear()
    plugins.LOADED.update(loaded)
    plugins._ENTRY_POINTS.update(entry_points)


FIXTURES = __import__("pathlib").Path(__file__).resolve().parent / "fixtures"
_AANG = """
spec aang_tiny "AANG on the docstrings sample"
data task = text.jsonl(path: "SAMPLE", split_by: "split", vocab: 400, max_length: 24)
model encoder = transformer(layers: 1, hidden: 16, heads: 2, dropout: 0.0)
head task_head = linear(out: 5)
head ft_head = linear(out: 5)
space aux = data{end_task} x transform{bert_op, mask, replace, none}
          x represent{bidirectional, left_to_right, right_to_left, random_factorized}
          x output{denoise_token, end_task}
meta aux_w: factored(aux) = 0.0
meta end_w: scalar = 0.0 rate 0.05
pretrain { data task.train batch 16  loss mean(ce(task_head(encoder(x)), y))  optimizer adam(lr: 1e-3)  steps 1 }
auxiliary aux { sample 3 per step  weights softmax(aux_w)  end_task_weight 2 * sigmoid(end_w) }
finetune { data task.train batch 16  loss mean(ce(ft_head(encoder(x)), y))  unroll 1 update ft_head }
meta_objective mean(ce(ft_head(encoder(x)), y)) on task.val
hypergradient auxiliary: alignment
meta_optimizer adam(lr: 0.05)
train meta_steps META_STEPS warmup 0 seed 0 device cpu
evaluate finetune(epochs: 2, metric: top1, seeds: 1) against AGAINST
"""


def aang_spec(meta_steps: int = 3, against: str = "no_auxiliary") -> str:
    """An AANG spec over the committed docstrings sample (24 objectives, a 1-layer transformer): seconds."""
    return (_AANG.replace("SAMPLE", str(FIXTURES / "docstrings_sample.jsonl"))
            .replace("META_STEPS", str(meta_steps)).replace("AGAINST", against))
