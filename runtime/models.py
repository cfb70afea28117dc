"""Model and head factories. Each takes its checked arguments plus `in_dim` (inferred by the compiler).

    >>> net = mlp(hidden=[16, 4], in_dim=8)
    >>> net(__import__("torch").zeros(2, 8)).shape
    torch.Size([2, 4])
"""
from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "identity": nn.Identity}


def _layers(sizes, activation: str, dropout: float, last_activation: bool):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def mlp(hidden, in_dim: int, activation: str = "relu", dropout: float = 0.0, last_activation: bool = True,
        **_) -> nn.Module:
    """An MLP; the last layer's output is the feature vector, activated unless ``last_activation`` is off."""
    return _layers([in_dim, *hidden], activation, dropout, last_activation)


def mlp_head(hidden, out: int, in_dim: int, activation: str = "relu", **_) -> nn.Module:
    """An MLP head: hidden layers with activations, then a linear output."""
    return _layers([in_dim, *hidden, out], activation, 0.0, last_activation=False)


def linear(out: int, in_dim: int, bias: bool = True, **_) -> nn.Module:
    """One linear map."""
    return nn.Linear(in_dim, out, bias=bias)
