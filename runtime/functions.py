"""The functions a loss expression may call. Losses are per element or per example; reduce with mean/sum.

    >>> import torch
    >>> float(mean(bce(torch.zeros(2, 3), torch.ones(2, 3))))  # log 2
    0.6931471805599453
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

sigmoid, exp, log, tanh, relu, abs, sqrt = torch.sigmoid, torch.exp, torch.log, torch.tanh, torch.relu, torch.abs, torch.sqrt
softplus = F.softplus


def softmax(t):
    return torch.softmax(t, dim=-1)


def log_softmax(t):
    return torch.log_softmax(t, dim=-1)


def bce(logits, target):
    """Binary cross-entropy with logits, per element."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def mean_bce(logits, target, weight=None):
    """`mean(weight * bce(logits, target))` (no weight: `mean(bce(logits, target))`), which a loss of that
    form computes (runtime/program.py `mean_bce_parts`): one call of torch's kernel, weighting and
    averaging in the same pass, when the weight is a tensor that needs no gradient and broadcasts to the
    logits' shape (every PT step between meta-updates: the task weights are fixed there). The same value
    with one elementwise pass and one full-size gradient fewer; otherwise the expression as written.

        >>> z, y, w = torch.randn(4, 3), torch.ones(4, 3), torch.rand(3)
        >>> bool(torch.isclose(mean_bce(z, y, w), mean(w * bce(z, y))))
        True
    """
    if weight is None or (isinstance(weight, torch.Tensor) and not weight.requires_grad
                          and weight.dtype == logits.dtype
                          and torch.broadcast_shapes(weight.shape, logits.shape) == logits.shape):
        return F.binary_cross_entropy_with_logits(logits, target, weight=weight)
    return (weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).mean()


def mse(pred, target):
    """Squared error, per element."""
    return (pred - target) ** 2


def ce(logits, target):
    """Softmax cross-entropy against class indices [B] or [B, 1], or one-hot targets [B, C], per example."""
    if target.dim() == logits.dim():
        target = target.squeeze(-1) if target.shape[-1] == 1 else target.argmax(dim=-1)
    return F.cross_entropy(logits, target.long(), reduction="none")


def mean(t):
    return t.mean()


def sum(t):  # noqa: A001 - the spec's name
    return t.sum()


def l2(module):
    """``l2(encoder)``: the sum of the squares of a module's parameters, biases included (``module`` is
    the list of its parameter tensors, read from the parameter dict: runtime/program.py).

        >>> float(l2([torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]))
        14.0
    """
    total = 0  # (`sum` is the spec's function here)
    for t in module:
        total = total + (t * t).sum()
    return total


def detach(t):
    """The value without its gradient (e.g. a per-example loss fed to a weighting network as an input)."""
    return t.detach()


def column(t):
    """One number per example as a one-feature input, ``[batch] -> [batch, 1]`` (e.g. a detached
    per-example loss fed to a weighting network).

        >>> column(torch.tensor([1.0, 2.0])).tolist()
        [[1.0], [2.0]]
    """
    return t.unsqueeze(-1)


def concat(a, b):
    """``a`` and ``b`` side by side along the last axis (e.g. ``concat(x, y)``: an example and its label
    as one network input).

        >>> concat(torch.zeros(2, 3), torch.ones(2, 1)).shape
        torch.Size([2, 4])
    """
    return torch.cat([a, b], dim=-1)


def nt_xent(a, b, temperature):
    """SimCLR's normalized-temperature cross-entropy (Chen et al. 2020), per example: row i of `a` and
    row i of `b` are two views of example i; each of the 2B projections must pick out its partner among
    the other 2B - 1 by cosine similarity / temperature. Example i's loss is the mean of its two views'.

        >>> z = torch.eye(4)
        >>> bool(nt_xent(z, z, 0.1).mean() < nt_xent(z, z.flip(0), 0.1).mean())
        True
    """
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]).reshape(2 * n, -1), dim=-1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -1e4)  # not itself
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(sim, partner, reduction="none")
    return (loss[:n] + loss[n:]) / 2
