"""Tests of mptc.runtime.images: scikit-learn's digits, and MNIST from idx files the tests write."""
import gzip
import struct

import numpy as np
import pytest
import torch

from mptc.compiler.lower import compile_spec
from mptc.errors import SpecErrors
from mptc.runtime.images import digits, mnist, parse_idx, read_idx, resize
from mptc.components.registry import DATASETS


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    """The idx encoding of a uint8 array: magic (0, 0, type, ndim), big-endian int32 sizes, the values."""
    return bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_mnist(root, n_train=6, n_test=4, compress=False, **override):
    """The four MNIST files with random 28x28 images and labels; returns {split: (images, labels)}."""
    rng, out = np.random.default_rng(0), {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for name, array in ((f"{stem}-images-idx3-ubyte", images), (f"{stem}-labels-idx1-ubyte", labels)):
            data = override.get(name, idx_bytes(array))
            path = root / (name + ".gz" if compress else name)
            path.write_bytes(gzip.compress(data) if compress else data)
        out[split] = (images, labels)
    return out


# ---- digits ------------------------------------------------------------------------------------------
def test_digits_shapes_and_ranges():
    x, y = digits().splits["all"]
    assert torch.equal(digits(flatten=True).splits["all"][0], x.flatten(1))
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797, 10) and x.dtype == y.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1 and torch.equal(y.sum(1), torch.ones(1797))
    assert y.sum(0).min() > 170  # every digit about 180 times
    big = digits(size=28).splits["all"][0]
    assert big.shape == (1797, 1, 28, 28) and 0 <= big.min() and big.max() <= 1
    # the upsampled image is the same picture: its mean intensity barely moves
    torch.testing.assert_close(big.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.03, rtol=0)


def test_resize_keeps_native_size():
    x = torch.rand(3, 1, 8, 8)
    assert resize(x, 8) is x and resize(x, 4).shape == (3, 1, 4, 4)


# ---- MNIST -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_plain_and_gzip(tmp_path, compress):
    written = write_mnist(tmp_path, compress=compress)
    ds = mnist(tmp_path)
    assert set(ds.splits) == {"train", "test"}
    for split, (images, labels) in written.items():
        x, y = ds.splits[split]
        assert x.shape == (len(images), 1, 28, 28) and y.shape == (len(images), 10)
        np.testing.assert_allclose(x[:, 0].numpy(), images / 255.0, atol=1e-7)
        assert y.argmax(1).tolist() == labels.tolist() and torch.equal(y.sum(1), torch.ones(len(images)))
    assert mnist(tmp_path, size=14).splits["test"][0].shape == (4, 1, 14, 14)
    assert mnist(tmp_path, flatten=True).splits["train"][0].shape == (6, 784)


def test_mnist_dotted_file_names(tmp_path):
    write_mnist(tmp_path)
    for path in list(tmp_path.iterdir()):
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    assert mnist(tmp_path).splits["train"][0].shape == (6, 1, 28, 28)


def test_parse_idx_types_and_errors():
    assert parse_idx(idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))).tolist() == [[0, 1, 2], [3, 4, 5]]
    ints = bytes([0, 0, 0x0C, 1]) + struct.pack(">i", 2) + struct.pack(">2i", -1, 70000)
    assert parse_idx(ints).tolist() == [-1, 70000]
    with pytest.raises(ValueError, match="not an idx file .bad magic number 504b0304"):
        parse_idx(b"PK\x03\x04 a zip file")
    with pytest.raises(ValueError, match=r"has 9 bytes, but its header \(3,\) says 11"):
        parse_idx(idx_bytes(np.arange(3, dtype=np.uint8))[:-2], "x")


@pytest.mark.parametrize("override, message", [
    ({"train-images-idx3-ubyte": b"\x00\x00\x08\x03garbage"}, "train-images-idx3-ubyte is truncated"),
    ({"t10k-labels-idx1-ubyte": b"\x12\x34\x08\x01\x00\x00\x00\x00"},
     "t10k-labels-idx1-ubyte is not an idx file (bad magic number 12340801)"),
    ({"train-labels-idx1-ubyte": idx_bytes(np.zeros(5, np.uint8))}, "has 6 images but train-labels-idx1-ubyte has 5"),
    ({"t10k-labels-idx1-ubyte": idx_bytes(np.full(4, 12, np.uint8))}, "labels outside 0..9"),
    ({"t10k-images-idx3-ubyte": idx_bytes(np.zeros((4, 784), np.uint8))}, "must hold [N, h, w] images"),
])
def test_mnist_bad_files(tmp_path, override, message):
    write_mnist(tmp_path, **override)
    with pytest.raises(ValueError) as info:
        mnist(tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_mnist_missing(tmp_path):
    with pytest.raises(OSError, match="MNIST folder '.*/absent' does not exist"):
        mnist(tmp_path / "absent")
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(OSError, match="has no t10k-images-idx3-ubyte .nor t10k-images-idx3-ubyte.gz."):
        mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="is not a valid gzip file"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


# ---- the catalog -------------------------------------------------------------------------------------
SPEC = """\
data pt = images.digits(size: 16)
data ft = images.mnist(root: "{root}", size: 16)
model encoder = mlp(hidden: [8])
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
pretrain {{
  data pt batch 16
  loss mean(bce(pt_head(encoder(x)), y))
}}
finetune {{
  data ft.train
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 1 update ft_head
}}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.test
"""


def test_catalog_shapes(tmp_path):
    with pytest.raises(SpecErrors) as info:  # an MLP takes [batch, features], not images
        compile_spec(SPEC.format(root=tmp_path), "s.mpt")
    assert any("[batch, 1, 16, 16]" in e.message for e in info.value.errors)
    with pytest.raises(SpecErrors) as info:
        compile_spec(SPEC.format(root=tmp_path / "absent"), "s.mpt")
    assert [(e.span.line, e.span.col) for e in info.value.errors if "no such file" in e.message] == [(2, 30)]
    assert DATASETS.get("images.mnist").shape({"size": 28, "flatten": True}, None) == {
        "x": ("B", 784), "y": ("B", 10), "splits": ("train", "test")}


FLAT = """\
data pt = images.digits(size: 16, flatten: true)
data ft = images.digits(size: 16, flatten: true) split train 0.5, val 0.5
model encoder = mlp(hidden: [8])
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta w: vector[10] = 0.0
pretrain {
  data pt batch 16
  loss mean(2 * sigmoid(w) * bce(pt_head(encoder(x)), y))
}
finetune {
  data ft.train
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 1 update ft_head
}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
"""


def test_flattened_digits_feed_an_mlp():
    assert [(m.name, m.in_dim) for m in compile_spec(FLAT, "s.mpt").modules][0] == ("encoder", 256)


# ---- the restarts protocol (rotation_error_deg) ----------------------------------------------------------
ROTATION = """\
data pt = images.digits(portion: [0.0, 0.3])
data ft = images.digits(portion: [0.7, 1.0], rotate: 90, rotate_sigma: 5, seed: 1) split train 0.3, val 0.7
model encoder = cnn2d(channels: [4], pool: flatten)
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta phi: scalar = 0 in [-180, 360]
pretrain { data pt batch 16  loss mean(ce(pt_head(encoder(x)), y))  steps 2  augment rotate(mean: phi, std: 5) }
finetune { data ft.train batch 16  loss mean(ce(ft_head(encoder(x)), y)) }
meta_objective mean(ce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: ift(neumann(terms: 2, scale: auto, rescale_every: 1, power_iters: 2))
meta_optimizer adam(lr: 5)
train meta_steps 3 warmup 2 seed 0 device cpu
"""


def test_every_restart_starts_afresh():
    """A restart from an angle lands where a restart from that angle lands first, even after other runs:
    the estimator's running state (here Neumann's lambda_max, whose power iteration is seeded by the
    meta-step count) is reset with the data streams and the noise."""
    from mptc.runtime.data import Data
    from mptc.runtime.loop import Trainer
    from mptc.runtime.headlines import restarts
    from mptc.runtime.program import Program
    plan = compile_spec(ROTATION, "r.mpt")
    device = torch.device("cpu")
    trainer = Trainer(plan, Program(plan, device), Data(plan, device))
    def protocol(inits):                                 # PROTOCOLS "restarts", after a main run's state
        return restarts(trainer, "meta", None, 0.0, (), inits=inits)["restarts"]
    found = protocol([30.0, 60.0, 30.0])
    assert found["finals"][0] == found["finals"][2] != 30.0
    assert protocol([30.0])["finals"] == found["finals"][:1]
    # each restart's path: the angle after every meta-step, ending at the final one
    assert [len(p) for p in found["paths"]] == [3, 3, 3]
    assert [p[-1] for p in found["paths"]] == [round(f, 3) for f in found["finals"]]
    assert found["paths"][0] == found["paths"][2] != found["paths"][1]


def test_scalar_meta_parameters_are_logged_every_meta_step(tmp_path):
    """metrics.jsonl follows a learned angle: `meta.phi` after each logged meta-step, the last = meta.json's."""
    import json

    from mptc.cli import main
    (tmp_path / "r.mpt").write_text(ROTATION)
    assert main(["run", str(tmp_path / "r.mpt"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    phis = [r["meta.phi"] for r in rows]
    assert len(phis) == 2 and phis[0] != 0.0 and phis[0] != phis[1]      # meta-steps 1 and 3 (the last)
    assert phis[-1] == pytest.approx(json.loads((tmp_path / "run" / "meta.json").read_text())["phi"])
