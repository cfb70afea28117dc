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


def mlp(hidden, in_dim: int, activation: str = "relu", dropout: float = 0.0,
        last_activation: bool = True) -> nn.Module:
    """An MLP; the last layer's output is the feature vector, activated unless ``last_activation`` is off."""
    return _layers([in_dim, *hidden], activation, dropout, last_activation)


def mlp_head(hidden, out: int, in_dim: int, activation: str = "relu") -> nn.Module:
    """An MLP head: hidden layers with activations, then a linear output."""
    return _layers([in_dim, *hidden, out], activation, 0.0, last_activation=False)


def linear(out: int, in_dim: int, bias: bool = True) -> nn.Module:
    """One linear map."""
    return nn.Linear(in_dim, out, bias=bias)


# ---- convolutional encoders (images: cnn2d, signals such as 12-lead ECGs: cnn1d) -------------------
def conv_out(size: int, kernel: int, stride: int) -> int:
    """The length of one spatial axis after a convolution with padding kernel // 2 (odd kernels keep the
    size at stride 1).

        >>> conv_out(1000, 7, 2), conv_out(8, 3, 1)
        (500, 8)
    """
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


class _Readout(nn.Module):
    """Global average or max pooling over the spatial axes, or flattening them (keeps where things are)."""

    def __init__(self, pool: str):
        super().__init__()
        self.pool = pool

    def forward(self, h):
        if self.pool == "flatten":
            return h.flatten(1)
        dims = tuple(range(2, h.dim()))
        return h.mean(dims) if self.pool == "avg" else h.amax(dims)


def _cnn(conv, in_dim, channels, kernel, stride, pool, activation, norm, out=None) -> nn.Module:
    c_in = in_dim[0] if isinstance(in_dim, (tuple, list)) else in_dim
    layers = []
    for c in channels:
        layers.append(conv(c_in, c, kernel, stride=stride, padding=kernel // 2))
        if norm == "batch":
            layers.append((nn.BatchNorm1d if conv is nn.Conv1d else nn.BatchNorm2d)(c))
        layers.append(_ACTIVATIONS[activation]())
        c_in = c
    net = nn.Sequential(*layers, _Readout(pool))
    if out is None:
        return net
    with torch.no_grad():   # the readout's width (flatten depends on the input's length)
        width = net(torch.zeros(1, *in_dim)).shape[1] if pool == "flatten" else channels[-1]
    return nn.Sequential(*net, nn.Linear(width, out))


def cnn2d(in_dim, channels=(16, 32, 32, 32), kernel: int = 3, stride: int = 1, pool: str = "avg",
          activation: str = "relu", norm: str = "none", out: int | None = None) -> nn.Module:
    """Conv2d layers (padding kernel // 2) each followed by the activation, then `pool` (avg, max or
    flatten). `in_dim` is the per-example shape (channels, height, width), or the channels alone.

        >>> cnn2d(in_dim=(1, 8, 8), channels=[4, 6])(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 6])
    """
    return _cnn(nn.Conv2d, in_dim, channels, kernel, stride, pool, activation, norm, out)


def cnn1d(in_dim, channels=(32, 32, 32, 32), kernel: int = 7, stride: int = 2, pool: str = "avg",
          activation: str = "relu", norm: str = "none", out: int | None = None) -> nn.Module:
    """Conv1d layers over time (e.g. 12 ECG leads as channels), then `pool` (avg, max or flatten), then
    a linear map to `out` features when given (e.g. `out: 1`, one number per example).

        >>> cnn1d(in_dim=(12, 1000))(torch.zeros(2, 12, 1000)).shape
        torch.Size([2, 32])
        >>> cnn1d(in_dim=(12, 100), channels=[4], pool="flatten", out=1)(torch.zeros(2, 12, 100)).shape
        torch.Size([2, 1])
    """
    return _cnn(nn.Conv1d, in_dim, channels, kernel, stride, pool, activation, norm, out)
