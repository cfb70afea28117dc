"""`mean(w * bce(z, y))` computed by one call of torch's kernel (runtime/functions.py `mean_bce`): the
same values and derivatives as the expression as written, in float64, and the forms it applies to."""
import pytest
import torch

from mptc.compiler import ir
from mptc.compiler.lower import compile_spec
from mptc.runtime.functions import bce, mean, mean_bce
from mptc.runtime.loop import Trainer
from mptc.runtime.program import Program, mean_bce_parts

G = torch.Generator().manual_seed(0)
Z, Y = torch.randn(6, 4, generator=G, dtype=torch.float64), (torch.rand(6, 4, generator=G) > 0.5).double()


@pytest.mark.parametrize("weight", [None, torch.rand(4, generator=G, dtype=torch.float64) * 2,
                                    torch.rand(6, 4, generator=G, dtype=torch.float64), torch.tensor(1.7).double()])
def test_one_call_has_the_values_gradients_and_curvature_of_the_expression(weight):
    def written(z):
        return mean(bce(z, Y)) if weight is None else mean(weight * bce(z, Y))

    def fused(z):
        return mean_bce(z, Y, weight)

    z = Z.clone().requires_grad_()
    u = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for f in (written, fused):
        g, = torch.autograd.grad(f(z), z, create_graph=True)
        hu, = torch.autograd.grad(g, z, grad_outputs=u)              # the Hessian along u
        results.append((f(z).detach(), g.detach(), hu))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-16)
    assert results[0][2].abs().max() > 1e-3                          # the curvature is not 0: the test can fail


def test_a_weight_that_needs_a_gradient_gets_it_and_the_mixed_term():
    phi = torch.randn(4, generator=G, dtype=torch.float64).requires_grad_()
    z = Z.clone().requires_grad_()
    loss = mean_bce(z, Y, 2 * torch.sigmoid(phi))
    g_z, = torch.autograd.grad(loss, z, create_graph=True)
    u = torch.ones_like(z)
    mixed, = torch.autograd.grad(g_z, phi, grad_outputs=u)            # d/dphi (u . dL/dz)
    s = torch.sigmoid(phi).detach()
    per = (torch.sigmoid(Z) - Y) / Z.numel()                         # dL/dz = w * per
    assert torch.allclose(mixed, (2 * s * (1 - s)) * per.sum(0), rtol=1e-13)
    g_phi, = torch.autograd.grad(mean_bce(Z, Y, 2 * torch.sigmoid(phi)), phi)
    assert torch.allclose(g_phi, 2 * s * (1 - s) * bce(Z, Y).sum(0) / Z.numel(), rtol=1e-13)


def test_a_weight_wider_than_the_logits_averages_over_its_shape_as_written():
    wide = torch.rand(3, 6, 4, generator=G, dtype=torch.float64)
    assert torch.allclose(mean_bce(Z, Y, wide), mean(wide * bce(Z, Y)), rtol=1e-15)
    assert mean_bce(Z, Y, 2.0) == mean(2.0 * bce(Z, Y))


def _loss(text):
    """`text` lowered: the first term of a small spec's pretrain loss `text + mean(task_weight)`."""
    return compile_spec(SPEC.format(loss=f"{text} + mean(task_weight)", pretrain="ift(cg)"), "t.mpt").pretrain.loss.left


@pytest.mark.parametrize("text, weighted", [("mean(task_weight * bce(pt_head(encoder(x)), y))", True),
                                            ("mean(bce(pt_head(encoder(x)), y) * task_weight)", True),
                                            ("mean(bce(pt_head(encoder(x)), y))", False)])
def test_the_forms_it_applies_to(text, weighted):
    z, y, w = mean_bce_parts(_loss(text))
    assert isinstance(z, ir.Apply) and isinstance(y, ir.Input) and (w is not None) == weighted


@pytest.mark.parametrize("text", ["mean(2 * bce(pt_head(encoder(x)), y))", "sum(task_weight * bce(pt_head(encoder(x)), y))",
                                  "mean(bce(pt_head(encoder(x)), y) * bce(pt_head(encoder(x)), y))",
                                  "mean(task_weight * bce(pt_head(encoder(x)), y) * 1)"])
def test_and_the_forms_it_leaves_as_written(text):
    assert mean_bce_parts(_loss(text)) is None


SPEC = """
spec t "mean_bce"
data pt = synthetic.multitask(examples: 64, dim: 5, tasks: 3, related: 1, seed: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 64, tasks: 2, seed: 1) split train 0.5, val 0.5
model encoder = mlp(hidden: [7], activation: tanh)
head pt_head = linear(out: 3)
head ft_head = linear(out: 2)
meta w: vector[3] = 0.0
let task_weight = 2 * sigmoid(w)
pretrain {{ data pt batch 16  loss {loss}  optimizer adam(lr: 0.05)  steps 3 }}
finetune {{ data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y))  optimizer sgd(lr: 0.1)  unroll 2 }}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: {pretrain}, finetune: unroll
meta_optimizer adam(lr: 0.01)
train meta_steps 1 seed 0 device cpu
"""


@pytest.mark.parametrize("estimator", ["ift(neumann(terms: 10, scale: 0.1))",
                                       "ift(neumann(terms: 10, scale: 0.1), fused: true, hessian_batch: 8)", "unroll"])
def test_a_meta_step_is_the_one_of_the_expression_as_written(estimator):
    """PT steps, the FT unroll and the hypergradient of the fused form against the same spec written so
    the form does not apply (`* 1`), on the same batches in float64."""
    g = torch.Generator().manual_seed(2)
    pt = [(torch.randn(16, 5, generator=g, dtype=torch.float64),
           (torch.rand(16, 3, generator=g) > 0.5).double()) for _ in range(3)]
    ft = [(torch.randn(16, 5, generator=g, dtype=torch.float64), (torch.rand(16, 2, generator=g) > 0.5).double())]
    val = (torch.randn(16, 5, generator=g, dtype=torch.float64), (torch.rand(16, 2, generator=g) > 0.5).double())
    out, start = [], None
    for loss in ("mean(task_weight * bce(pt_head(encoder(x)), y))", "mean(task_weight * bce(pt_head(encoder(x)), y) * 1)"):
        plan = compile_spec(SPEC.format(loss=loss, pretrain=estimator).replace(
            "meta w: vector[3] = 0.0", "meta w: vector[3] = 0.5"), "t.mpt")
        torch.manual_seed(0)
        trainer = Trainer(plan, Program(plan, torch.device("cpu"), dtype=torch.float64), data=None)
        state = trainer.init_state()
        start = start or {k: t.detach().clone() for k, t in state.params.items()}    # one start for both
        state.params = {k: t.clone().requires_grad_() for k, t in start.items()}
        trainer.pt.open_window(trainer, state)
        for i, batch in enumerate(pt):
            trainer.pt.record(state, batch)
            trainer.pt_step(state, batch, keep=trainer.pt.keeps_last_step and i == len(pt) - 1)
        _, hg, _ = trainer.hypergradient(state, pt[-1], ft, val)
        out.append((hg["w"], state.params["encoder.0.weight"].detach()))
    (hg_fused, theta_fused), (hg_written, theta_written) = out
    assert torch.allclose(theta_fused, theta_written, rtol=1e-12, atol=1e-15)
    assert torch.allclose(hg_fused, hg_written, rtol=1e-9, atol=1e-15)
    assert hg_written.abs().max() > 1e-6
