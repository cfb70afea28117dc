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


def mse(pred, target):
    """Squared error, per element."""
    return (pred - target) ** 2


def ce(logits, target):
    """Softmax cross-entropy against class indices (or one-hot targets), per example."""
    if target.dim() == logits.dim():
        target = target.argmax(dim=-1)
    return F.cross_entropy(logits, target.long(), reduction="none")


def mean(t):
    return t.mean()


def sum(t):  # noqa: A001 - the spec's name
    return t.sum()


def detach(t):
    """The value without its gradient (e.g. a per-example loss fed to a weighting network as an input)."""
    return t.detach()
