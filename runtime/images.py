"""Handwritten-digit images: scikit-learn's 8x8 digits (bundled, no download) and MNIST from local idx files.

Both return :class:`mptc.runtime.datasets.Dataset` with ``x [N, 1, size, size]`` float32 in [0, 1]
(``[N, size * size]`` with ``flatten``) and one-hot ``y [N, 10]`` float32 (ten binary tasks, "is it
digit d", for the multi-label losses).

    >>> ds = digits(size=16)
    >>> tuple(ds.splits["all"][0].shape), tuple(ds.splits["all"][1].shape)
    ((1797, 1, 16, 16), (1797, 10))
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from mptc.runtime.datasets import Dataset

__all__ = ["digits", "mnist", "one_hot", "parse_idx", "read_idx", "resize"]

# idx type byte -> big-endian numpy dtype (yann.lecun.com/exdb/mnist, "the IDX file format")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def one_hot(labels: np.ndarray, classes: int = 10) -> torch.Tensor:
    """``[N, classes]`` float32 0/1 rows from integer labels.

        >>> one_hot(np.array([2, 0]), 3).tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    return torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), classes).float()


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, 1, h, w]`` images bilinearly resampled to ``size x size`` (unchanged at their own size),
    clamped to [0, 1].

        >>> resize(torch.ones(2, 1, 8, 8), 28).shape
        torch.Size([2, 1, 28, 28])
    """
    if x.shape[-2:] == (size, size):
        return x
    out = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=size < x.shape[-1])
    return out.clamp_(0, 1)


def digits(size: int = 8, flatten: bool = False, portion=(0.0, 1.0), rotate: float = 0.0,
           rotate_sigma: float = 0.0, corrupt: float = 0.0, seed: int = 0) -> Dataset:
    """scikit-learn's 1797 handwritten digits (UCI optdigits test set), split ``"all"``, at ``size x size``
    (``flatten``: as ``[N, size * size]`` vectors, for MLPs). ``portion``, ``rotate``/``rotate_sigma``
    (degrees) and ``corrupt`` (label noise) select and alter them: see
    :func:`mptc.runtime.augment.image_variant`.

        >>> digits().info["classes"][:3], tuple(digits(flatten=True).splits["all"][0].shape)
        (['0', '1', '2'], (1797, 64))
    """
    from sklearn.datasets import load_digits

    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # pixel values 0..16
    from mptc.runtime.augment import image_variant
    x, labels, extra = image_variant(resize(x, size), torch.from_numpy(bunch.target), portion, rotate,
                                     rotate_sigma, corrupt, seed)
    return Dataset({"all": (_shaped(x, flatten), one_hot(labels))}, {**_info("sklearn.digits", size), **extra})


def _shaped(x: torch.Tensor, flatten: bool) -> torch.Tensor:
    return x.flatten(1) if flatten else x


def _info(source: str, size: int) -> dict:
    return {"classes": [str(d) for d in range(10)], "size": size, "source": source}


# ---- MNIST ----------------------------------------------------------------------------------------------
def parse_idx(data: bytes, what: str = "idx data") -> np.ndarray:
    """An idx-format array: two zero bytes, a type byte, the number of dimensions, the sizes as big-endian
    int32, then the values. ``ValueError`` naming ``what`` on a bad magic number or a wrong length.

        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])).tolist()
        [7, 8, 9]
    """
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES or data[3] == 0:
        raise ValueError(f"{what} is not an idx file (bad magic number {data[:4].hex() or 'none'})")
    ndim, dtype = data[3], np.dtype(_IDX_TYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{what} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, 4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{what} has {len(data)} bytes, but its header {shape} says {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """:func:`parse_idx` of a file, gunzipped first when it ends in ``.gz``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OSError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    try:
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        cause = "it ends early" if isinstance(e, EOFError) else str(e) or type(e).__name__
        raise ValueError(f"{path} is not a valid gzip file ({cause})") from None
    return parse_idx(data, str(path))


def _find(root: Path, stem: str) -> Path:
    """The file for ``stem`` in ``root``: plain or ``.gz``, with ``-idx`` or ``.idx`` (both spellings are
    common)."""
    names = [stem, stem.replace("-idx", ".idx")]
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise OSError(f"MNIST folder '{root}' has no {stem} (nor {stem}.gz)")


def _split(root: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's ``(images [N, h, w] uint8, labels [N])``, checked against each other."""
    x_path, y_path = _find(root, images), _find(root, labels)
    x, y = read_idx(x_path), read_idx(y_path)
    if x.ndim != 3 or y.ndim != 1:
        raise ValueError(f"{x_path.name} must hold [N, h, w] images and {y_path.name} [N] labels, "
                         f"got shapes {list(x.shape)} and {list(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{x_path.name} has {len(x)} images but {y_path.name} has {len(y)} labels")
    if len(x) == 0 or 0 in x.shape[1:]:
        raise ValueError(f"{x_path} holds no images (its header says {len(x)} of {x.shape[1]}x{x.shape[2]} pixels)")
    if len(y) and not 0 <= y.min() <= y.max() <= 9:
        raise ValueError(f"{y_path.name} has labels outside 0..9")
    return x, y


def mnist(root, size: int = 28, flatten: bool = False) -> Dataset:
    """MNIST (or Fashion-MNIST, same files) from the idx files in folder ``root``: splits ``"train"`` and
    ``"test"``, images scaled to [0, 1] and resampled to ``size x size`` (``flatten``: ``[N, size * size]``).

        >>> ds = mnist("~/data/mnist")                                        # doctest: +SKIP
        >>> {k: tuple(v[0].shape) for k, v in ds.splits.items()}              # doctest: +SKIP
        {'train': (60000, 1, 28, 28), 'test': (10000, 1, 28, 28)}
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise OSError(f"MNIST folder '{root}' does not exist")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    splits = {}
    for name, (images, labels) in _MNIST.items():
        x, y = _split(root, images, labels)
        pixels = torch.from_numpy(x.astype(np.float32) / 255.0)[:, None]
        splits[name] = (_shaped(resize(pixels, size), flatten), one_hot(y))
    return Dataset(splits, {**_info("mnist", size), "root": str(root)})
