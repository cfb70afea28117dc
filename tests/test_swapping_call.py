"""runtime/program.py `swapping_call`: a module applied with its parameters replaced, as
torch.func.functional_call, with the slots found once; tied weights and parametrizations go through
functional_call itself."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.nn.utils import parametrize

from mptc.runtime.program import swapping_call


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.b.weight = self.a.weight                    # one Parameter under two names

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class Scaled(nn.Module):
    def forward(self, w):
        return 2 * w


def _parametrized():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    parametrize.register_parametrization(net[0], "weight", Scaled())
    return net


MODULES = {"mlp": lambda: nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)),
           "tied": Tied, "parametrized": _parametrized}


@pytest.mark.parametrize("kind", MODULES)
def test_it_is_functional_call(kind):
    torch.manual_seed(0)
    module = MODULES[kind]().double()
    keys = [(k, f"m.{k}") for k, _ in module.named_parameters()]
    own = {k: t.detach().clone() for k, t in module.named_parameters()}
    values = [torch.randn_like(t).requires_grad_() for _, t in module.named_parameters()]
    x = torch.randn(4, 3, dtype=torch.float64)
    call, fulls = swapping_call(module, keys)
    assert fulls == [full for _, full in keys]
    ours, theirs = call(values, x), functional_call(module, {k: v for (k, _), v in zip(keys, values)}, (x,))
    assert torch.equal(ours, theirs) and not torch.equal(ours, module(x))
    g_ours = torch.autograd.grad(ours.square().sum(), values)
    g_theirs = torch.autograd.grad(theirs.square().sum(), values)
    assert all(torch.equal(a, b) for a, b in zip(g_ours, g_theirs))
    assert all(torch.equal(t, own[k]) for k, t in module.named_parameters())     # its own put back


def test_its_own_parameters_come_back_after_a_failure():
    module = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    keys = [(k, k) for k, _ in module.named_parameters()]
    own = [t for _, t in module.named_parameters()]
    call, _ = swapping_call(module, keys)
    with pytest.raises(RuntimeError):
        call([torch.zeros(5, 3), torch.zeros(5), torch.zeros(2, 5), torch.zeros(2)], torch.zeros(4, 7))  # wrong width
    assert all(a is b for a, b in zip(own, [t for _, t in module.named_parameters()]))


def test_under_torch_func_transforms():
    """Forward-over-reverse through it (runtime/hvp.py's `forward-over-reverse`) equals the Hessian."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    keys = [(k, k) for k, _ in module.named_parameters()]
    call, _ = swapping_call(module, keys)
    x = torch.randn(6, 3, dtype=torch.float64)
    theta = tuple(t.detach().clone() for _, t in module.named_parameters())
    u = tuple(torch.randn_like(t) for t in theta)

    def loss(*ts):
        return call(list(ts), x).square().mean()
    hu = jvp(grad(loss, argnums=tuple(range(len(theta)))), theta, u)[1]
    ts = [t.clone().requires_grad_() for t in theta]
    g = torch.autograd.grad(loss(*ts), ts, create_graph=True)
    expected = torch.autograd.grad(g, ts, grad_outputs=list(u))
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(hu, expected))
    assert max(float(h.abs().max()) for h in hu) > 1e-3
