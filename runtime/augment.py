"""Differentiable augmentations: the implementations behind the `augment` clause (registry AUGMENTATIONS).

An augmentation is a pair: `noise(shape, gen, **consts)` draws its randomness on the CPU from a seeded
generator, and `apply(x, eps, **args)` is a pure function of the batch, that noise and its arguments,
differentiable in x and in every tensor argument (a meta-parameter, a meta network's output). The
randomness enters by reparameterisation, so the hypergradient flows through it: an angle
`a ~ N(phi, sigma^2)` is `a = phi + sigma * eps` with `eps ~ N(0, 1)` held fixed.

    >>> x = torch.zeros(2, 1, 8, 8); x[:, :, 0, :] = 1           # a bar along the top
    >>> eps = ROTATE.noise(x.shape, torch.Generator().manual_seed(0))
    >>> y = ROTATE.apply(x, eps, mean=torch.tensor(90.0), std=0.0)
    >>> bool(torch.allclose(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5))
    True

Which noise a loss evaluation gets is decided in `runtime/program.py` (`NoiseMemo`): one draw per batch
tensor, reused whenever the same batch is evaluated again.
"""
from __future__ import annotations

import math
from typing import Callable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Augmentation", "CROP", "JITTER", "ROTATE", "WARP", "per_example", "rotate_images"]


@attrs.frozen
class Augmentation:
    """`noise(shape, gen, **consts) -> eps` (CPU) and `apply(x, eps, **args) -> x'` (differentiable)."""

    noise: Callable
    apply: Callable


def per_example(value, x: Tensor) -> Tensor:
    """A constant, a scalar tensor or one value per example, shaped to broadcast over x's example dims.

        >>> per_example(torch.ones(3, 1), torch.zeros(3, 2, 5)).shape
        torch.Size([3, 1, 1])
    """
    t = torch.as_tensor(value, device=x.device, dtype=x.dtype)
    if t.numel() > 1 or (t.dim() and t.shape[0] == x.shape[0]):
        t = t.reshape(x.shape[0])
    else:
        t = t.reshape(())
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim())) if t.dim() else t


def _normal(shape, gen, **_):
    return torch.randn(tuple(shape), generator=gen)


def _per_row_normal(shape, gen, **_):
    return torch.randn(shape[0], generator=gen)


def _per_row_uniform(shape, gen, **_):
    return torch.rand(shape[0], generator=gen)


# ---- rotation ---------------------------------------------------------------------------------------
def rotate_images(x: Tensor, degrees) -> Tensor:
    """`[B, C, H, W]` images rotated counter-clockwise by `degrees` (one angle or one per image) about
    their centre, by bilinear sampling with zeros outside (`torch.rot90(x, 1, dims=(2, 3))` at 90).
    Differentiable in x and in the angles."""
    rad = per_example(degrees, x).reshape(-1) * (math.pi / 180)
    rad = rad.expand(x.shape[0]) if rad.numel() == 1 else rad
    cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
    # output pixel (u, v) reads input pixel R^-1 (u, v): for a counter-clockwise turn of the picture
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], -2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _rotate(x, eps, mean=0.0, std=0.0):
    """Angle a = mean + std * eps degrees per image, eps ~ N(0, 1)."""
    return rotate_images(x, per_example(mean, x[:, 0, 0, 0]) + per_example(std, x[:, 0, 0, 0]) * eps)


ROTATE = Augmentation(_per_row_normal, _rotate)


# ---- Gaussian jitter --------------------------------------------------------------------------------
def _jitter(x, eps, std):
    """x + std * eps, eps ~ N(0, I) of x's shape."""
    return x + per_example(std, x) * eps


JITTER = Augmentation(_normal, _jitter)


# ---- random crop of a signal (the rest zeroed) ------------------------------------------------------
def _window(x, u, width, softness):
    """A soft 0/1 mask over the last axis, 1 on a window of `width` (fraction of the length) starting at
    u * (1 - width); edges are sigmoids `softness` samples wide, so the mask is differentiable in width."""
    length = x.shape[-1]
    w = per_example(width, x) * length
    start = per_example(u, x) * (length - w)
    t = torch.arange(length, device=x.device, dtype=x.dtype) + 0.5
    s = max(float(softness), 1e-6)
    return torch.sigmoid((t - start) / s) * torch.sigmoid((start + w - t) / s)


def _crop(x, u, keep=0.5, softness=2.0, mode="keep"):
    """Keep a random window of `keep` of the signal and zero the rest (`mode: zero` zeroes the window)."""
    mask = _window(x, u, keep, softness)
    return x * (mask if mode == "keep" else 1 - mask)


CROP = Augmentation(_per_row_uniform, _crop)


# ---- temporal warp ----------------------------------------------------------------------------------
def _knots(shape, gen, knots=8, **_):
    return torch.randn(shape[0], int(knots), generator=gen)


def _warp(x, eps, strength, knots=8):
    """Resample x[..., t] at t + strength * d(t): d is the random field eps [B, knots] (N(0, 1) at evenly
    spaced knots, linearly interpolated, so smooth), in units of the signal's length; linear resampling
    with the border value outside. Differentiable in x and in `strength` (one number or one per example)."""
    batch, length = x.shape[0], x.shape[-1]
    field = F.interpolate(eps.reshape(batch, 1, -1), size=length, mode="linear", align_corners=True)[:, 0]
    shift = per_example(strength, field) * field * 2                     # [-1, 1] spans the length: x2
    pos = torch.linspace(-1 + 1 / length, 1 - 1 / length, length, device=x.device, dtype=x.dtype) + shift
    grid = torch.stack([pos, torch.zeros_like(pos)], -1)[:, None]       # [B, 1, L, 2]
    flat = x.reshape(batch, -1, 1, length)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(x.shape)


WARP = Augmentation(_knots, _warp)


# ---- dataset-side variants (images.digits(portion, rotate, rotate_sigma, corrupt, seed)) -------------
PERMUTATION_SEED = 1797  # fixed: PT and FT declarations with different seeds slice the same permutation


def image_variant(x: Tensor, labels: Tensor, portion=(0.0, 1.0), rotate: float = 0.0, rotate_sigma: float = 0.0,
                  corrupt: float = 0.0, seed: int = 0, classes: int = 10):
    """(x, labels, info) for the slice `portion` of a fixed permutation of the examples, each image
    rotated by an angle ~ N(rotate, rotate_sigma^2) degrees (fixed per image), and a fraction `corrupt`
    of the labels replaced by a different class drawn uniformly; info["clean"] marks the untouched labels.

        >>> x, y, info = image_variant(torch.rand(10, 1, 4, 4), torch.arange(10) % 10, (0.0, 0.5), corrupt=1.0)
        >>> x.shape[0], sum(info["clean"])
        (5, 0)
    """
    lo, hi = portion
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"portion must be [start, stop) with 0 <= start < stop <= 1, got {list(portion)}")
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(PERMUTATION_SEED))
    keep = order[int(round(lo * n)):int(round(hi * n))]
    x, labels = x[keep], torch.as_tensor(labels)[keep].clone()
    gen = torch.Generator().manual_seed(seed)
    angles = rotate + rotate_sigma * torch.randn(len(keep), generator=gen)
    if rotate or rotate_sigma:
        with torch.no_grad():
            x = rotate_images(x, angles).clamp_(0, 1)
    flip = torch.rand(len(keep), generator=gen) < corrupt
    labels[flip] = (labels[flip] + torch.randint(1, classes, (int(flip.sum()),), generator=gen)) % classes
    info = {"clean": (~flip).tolist(), "angles": angles.tolist(), "rotation": rotate, "rotation_sigma": rotate_sigma,
            "corrupt": corrupt, "indices": keep.tolist()}
    return x, labels, info
