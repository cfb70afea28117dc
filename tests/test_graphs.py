"""Graph data and the GIN encoder: batching, the centre-node readout, the PyG 1.x bio file, the
synthetic benchmark's planted structure, and the catalog entries."""
import random
import sys
import types

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from mptc.compiler.lower import compile_spec
from mptc.errors import RunError, SpecErrors
from tests.test_faults import BIO_SPEC
from mptc.runtime import graphs as G
from mptc.components.graphshapes import GraphFeatures, gin_features

SMALL = dict(pt_tasks=12, related=4, adversarial=4, ft_tasks=3)


@pytest.fixture(scope="module")
def pt():
    return G.synthetic_graphs(graphs=400, seed=0, **SMALL)


def small_gin(g, **kw):
    torch.manual_seed(0)
    return G.gin(**{"layers": 3, "hidden": 8, "in_dim": g.features, **kw})


# ---- storage and batching ------------------------------------------------------------------------
def test_collate_matches_pyg(pt):
    g = pt.splits["all"][0][torch.tensor([5, 0, 17])]
    ours, theirs = g.collate(), Batch.from_data_list(g.data_list())
    for key in ("x", "edge_index", "edge_attr", "batch", "ptr", "center_node_idx"):
        assert torch.equal(ours[key], theirs[key]), key


def test_views_share_storage_and_compose(pt):
    g = pt.splits["all"][0]
    view = g[torch.arange(10, 20)][2:5]
    assert view.x is g.x and view.ids.tolist() == [12, 13, 14]
    assert torch.equal(view[1].edge_index, g[13].edge_index)


def test_graphs_from_data_round_trip(pt):
    g = pt.splits["all"][0][:6]
    back = G.graphs_from_data(g.data_list())
    assert torch.equal(back.collate().edge_index, g.collate().edge_index)
    assert torch.equal(back.center, g.center[g.ids])


# ---- the GIN encoder -----------------------------------------------------------------------------
@pytest.mark.parametrize("jk", ["last", "concat", "sum", "max"])
@pytest.mark.parametrize("pool", ["mean_center", "mean", "center"])
def test_gin_output_size(pt, jk, pool):
    g = pt.splits["all"][0][:5]
    out = small_gin(g, jk=jk, pool=pool)(g)
    assert out.shape == (5, gin_features(8, 3, jk, pool))


def test_gin_backward_and_pyg_batch_input(pt):
    g = pt.splits["all"][0][:32]
    enc = small_gin(g).eval()
    out = enc(g)
    assert torch.allclose(out, enc(Batch.from_data_list(g.data_list())))
    enc.train()
    enc(g).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_gin_layer_is_the_pretrain_gnns_formula(pt, float64):
    """One layer, written out node by node in float64: MLP(sum over j in N(i) and i itself of
    h_j + W e_ij + b), where a real edge's e_ij is its features with a 0 flag and the self-loop's is
    the flag alone (what the layer computes without building the loop edges)."""
    g = pt.splits["all"][0][:4].collate()
    torch.manual_seed(0)
    conv = G.GINConv(hidden=6, edge_dim=g.edge_attr.shape[1]).double()
    h = torch.randn(len(g.x), 6, dtype=torch.float64)
    enc = conv.edge_encoder
    agg = h + enc(torch.nn.functional.one_hot(torch.tensor(g.edge_attr.shape[1]), g.edge_attr.shape[1] + 1).double())
    for (src, dst), attr in zip(g.edge_index.T.tolist(), g.edge_attr.double()):
        agg[dst] = agg[dst] + h[src] + enc(torch.cat([attr, torch.zeros(1, dtype=torch.float64)]))
    assert torch.allclose(conv(h, g.edge_index, g.edge_attr), conv.mlp(agg), rtol=1e-12, atol=1e-12)


def test_center_node_is_offset_per_graph(pt, monkeypatch):
    """Each graph's representation in a batch equals its representation alone; the published
    un-offset index (``h[center_node_idx]``) reads nodes of the first graphs instead."""
    g = pt.splits["all"][0][:6]
    enc = small_gin(g, pool="center").eval()  # eval: batch norm uses running stats, graphs independent
    alone = torch.cat([enc(g[i:i + 1]) for i in range(len(g))])
    assert torch.allclose(enc(g), alone, atol=1e-5)
    monkeypatch.setattr(G, "center_index", lambda batch: batch.center_node_idx)
    assert not torch.allclose(enc(g), alone, atol=1e-3)


def test_mean_center_concatenates_mean_and_center(pt):
    g = pt.splits["all"][0][:4]
    both, mean, center = (small_gin(g, pool=p).eval()(g) for p in ("mean_center", "mean", "center"))
    assert torch.allclose(both, torch.cat([mean, center], 1))


# ---- the bio dataset: a miniature PyG 1.x file ---------------------------------------------------
def _old_data_class():
    """A class pickled under PyG 1.x's path: pickle writes `torch_geometric.data.data.Data`."""
    cls = type("Data", (), {})
    cls.__module__, cls.__qualname__ = "torch_geometric.data.data", "Data"
    return cls


SPECIES = [9606, 3702, 9606, 6239, 10090, 9606, 3702, 9606, 7227, 9606, 4932, 9606, 7955, 3702]


def _write_legacy_bio(root, edge_width=9, zipfile=False, pt_tasks=6, ft_tasks=3, species=SPECIES, edit=None):
    """A (data, slices) collate like pretrain-gnns' file, objects of the old Data class in `__dict__`
    (the real file has pt_tasks=5000, ft_tasks=40); `edit(fields)` changes the fields before saving."""
    gen = torch.Generator().manual_seed(0)
    old = _old_data_class()
    xs, eis, eas, slices = [], [], [], {k: [0] for k in G._BIO_FIELDS}
    for n in [3 + i % 4 for i in range(len(species))]:
        src = torch.randint(0, n, (2 * n,), generator=gen)
        dst = (src + 1 + torch.randint(0, n - 1, (2 * n,), generator=gen)) % n
        ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
        xs.append(torch.ones(n, 1)), eis.append(ei)
        eas.append((torch.rand(ei.shape[1], edge_width, generator=gen) < 0.3).float())
        for key, size in (("x", n), ("edge_index", ei.shape[1]), ("edge_attr", ei.shape[1]),
                          ("center_node_idx", 1), ("species_id", 1), ("go_target_pretrain", pt_tasks),
                          ("go_target_downstream", ft_tasks)):
            slices[key].append(slices[key][-1] + size)
    graphs = len(species)
    data = old()
    data.__dict__.update(
        x=torch.cat(xs), edge_index=torch.cat(eis, 1), edge_attr=torch.cat(eas), y=None, pos=None,
        center_node_idx=torch.tensor([i % 3 for i in range(graphs)]), species_id=torch.tensor(species),
        go_target_pretrain=torch.randint(0, 2, (graphs * pt_tasks,), generator=gen),
        go_target_downstream=torch.randint(0, 2, (graphs * ft_tasks,), generator=gen))
    if edit is not None:
        edit(data.__dict__)
    folder = root / "supervised" / "processed"
    folder.mkdir(parents=True)
    fake = types.ModuleType("torch_geometric.data.data")
    fake.Data = old
    saved = sys.modules.get("torch_geometric.data.data")
    sys.modules["torch_geometric.data.data"] = fake  # only while pickling: the pickler looks the class up
    try:
        torch.save((data, {k: torch.tensor(v) for k, v in slices.items()}), folder / "geometric_data_processed.pt",
                   _use_new_zipfile_serialization=zipfile)
    finally:
        sys.modules["torch_geometric.data.data"] = saved
    return data


@pytest.fixture()
def bio_root(tmp_path):
    return tmp_path, _write_legacy_bio(tmp_path)


def _x_nan(f):
    f["x"][2, 0] = float("nan")


@pytest.mark.parametrize("edit, species, task, message", [
    (lambda f: f["go_target_downstream"].__setitem__(4, -1), SPECIES, "finetune",
     "'go_target_downstream' holds 1 label other than 0 and 1 (e.g. -1)"),      # uint8 made it 255
    (_x_nan, SPECIES, "pretrain", "'x' holds 1 NaN or infinite value"),
    (lambda f: f.__setitem__("x", f["x"].repeat(1, 3)), SPECIES, "pretrain",
     "bio node features must have 1 column, got shape"),
    (None, [9606] * 14, "finetune", "bio: split 'train' has no graphs (train/val take the non-human species"),
    (None, [3702] * 14, "finetune", "bio: split 'test' has no graphs"),
], ids=["label-minus-1", "nan-x", "three-node-features", "all-human", "no-human"])
def test_a_bio_file_the_model_cannot_use_is_a_named_error(tmp_path, edit, species, task, message):
    _write_legacy_bio(tmp_path, species=species, edit=edit)
    with pytest.raises(ValueError) as info:
        G.bio(str(tmp_path), task=task)
    assert message in str(info.value), info.value


def test_data_wider_or_narrower_than_its_check_is_named_at_load(tmp_path):
    """graphs.bio's check declares the published 5000 / 40 tasks: a file with 6 is named, not a shape error in a loss."""
    from mptc.compiler.lower import compile_spec
    from mptc.runtime.data import _build
    _write_legacy_bio(tmp_path)
    text = BIO_SPEC.format(root=tmp_path)
    plan = compile_spec(text, str(tmp_path / "s.mpt"))
    source = next(d for d in plan.datasets if d.name == "pt")
    with pytest.raises(RunError, match=r"data 'pt': its split 'all' has 6 tasks \(y columns\), but the spec was "
                                       r"checked with 5000"):
        _build(source, {})


def test_legacy_file_is_broken_under_plain_pyg2(bio_root):
    """The symptom the converter exists for: PyG 2.x unpickles the old object but cannot use it."""
    data, _ = torch.load(bio_root[0] / G.BIO_FILE, weights_only=True)
    with pytest.raises(RuntimeError, match="older version of PyG"):
        data.num_nodes


def test_bio_converts_once_and_caches(bio_root, capsys):
    root, old = bio_root
    ft = G.bio(str(root), task="finetune")
    err = capsys.readouterr().err
    assert "converted the PyG 1.x bio file" in err and err.count("\n") == 1
    assert (root / "supervised" / "processed" / G.BIO_CACHE).is_file()
    again = G.bio(str(root), task="finetune")
    assert capsys.readouterr().err == ""
    g, y = ft.splits["all"]
    assert torch.equal(g.collate().edge_index, again.splits["all"][0].collate().edge_index)
    first = g[1]  # graph 1: its own slice of the collated fields, edge indices local
    e0 = first.edge_index.shape[1]
    assert torch.equal(first.edge_index, old.edge_index[:, 2 * 3 * 2:2 * 3 * 2 + e0])
    assert first.num_nodes == 4 and int(first.center_node_idx) == 1
    assert g.edge_dim == 9 and g.node_dim == 1
    assert torch.equal(y, old.go_target_downstream.view(-1, 3).float())


def test_bio_zipfile_and_seven_edge_columns(tmp_path):
    old = _write_legacy_bio(tmp_path, edge_width=7, zipfile=True)
    g = G.bio(str(tmp_path)).splits["all"][0]
    assert g.edge_dim == 9 and torch.equal(g.edge_attr[:, :7].float(), old.edge_attr)
    assert not g.edge_attr[:, 7:].any()


def test_bio_species_split_is_the_published_one(bio_root):
    root, old = bio_root
    ft, pt = G.bio(str(root), task="finetune", seed=42), G.bio(str(root), task="pretrain", seed=42)
    ids = {k: v[0].ids.tolist() for k, v in ft.splits.items()}
    human = [i for i, s in enumerate(SPECIES) if s == 9606]
    others = [i for i, s in enumerate(SPECIES) if s != 9606]

    def published(subset, frac_train, frac_valid):  # splitters.random_split on a species_split subset
        random.seed(42)
        all_idx = list(range(len(subset)))
        random.shuffle(all_idx)
        a, b = int(frac_train * len(subset)), int(frac_valid * len(subset)) + int(frac_train * len(subset))
        return [subset[i] for i in all_idx[:a]], [subset[i] for i in all_idx[a:b]]
    assert (ids["train"], ids["val"]) == published(others, 0.85, 0.15)
    assert (ids["test_easy"], ids["test"]) == published(human, 0.5, 0.5)
    assert sorted(pt.splits["all"][0].ids.tolist()) == sorted(others + ids["test_easy"])
    assert torch.equal(pt.splits["all"][1], old.go_target_pretrain.view(-1, 6)[pt.splits["all"][0].ids].float())


def test_gin_runs_on_bio(bio_root):
    g, y = G.bio(str(bio_root[0])).splits["all"]
    assert small_gin(g)(g[:4]).shape == (4, 16)


def test_bio_missing_or_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*supervised/processed/geometric_data_processed.pt"):
        G.bio(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="there is no"):
        G.bio(str(tmp_path))
    (tmp_path / "supervised" / "processed").mkdir(parents=True)
    (tmp_path / G.BIO_FILE).write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read it"):
        G.bio(str(tmp_path))
    torch.save(({"x": torch.ones(2, 1)}, {"x": torch.tensor([0, 1, 2])}), tmp_path / G.BIO_FILE)
    with pytest.raises(ValueError, match="missing field"):
        G.bio(str(tmp_path))


@pytest.mark.parametrize("tamper, message", [
    (lambda f, s: f["edge_index"].__setitem__((0, 0), 99), "'edge_index' refers to nodes its graph does not have"),
    (lambda f, s: s.__setitem__("x", s["x"][:-1]), "the slices of 'x' do not cut"),
    (lambda f, s: f["center_node_idx"].__setitem__(0, -1), "'center_node_idx' names a node"),
])
def test_bio_inconsistent_tensors_are_named(bio_root, tamper, message):
    """A file that unpickles but whose tensors disagree stops at loading with the file's name, not as
    an IndexError inside a batch; a cache that disagrees is converted again."""
    root, _ = bio_root
    fields, slices = G._read_collated(root / G.BIO_FILE)
    tamper(fields, slices)
    torch.save((fields, slices), root / G.BIO_FILE)
    with pytest.raises(ValueError) as info:
        G.bio(str(root))
    assert message in str(info.value) and str(root / G.BIO_FILE) in str(info.value)


def test_bio_damaged_bytes_are_a_value_error(bio_root, tmp_path):
    """Bytes flipped or cut anywhere: a ValueError (or a good load), never another exception type."""
    root, _ = bio_root
    data, rng = (root / G.BIO_FILE).read_bytes(), random.Random(0)
    for _ in range(60):
        damaged = bytearray(data)
        for _ in range(rng.choice([1, 3])):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        (root / G.BIO_FILE).write_bytes(bytes(damaged[:rng.randrange(len(data))] if rng.random() < .2 else damaged))
        (root / G.BIO_FILE).with_name(G.BIO_CACHE).unlink(missing_ok=True)
        try:
            g, _ = G.bio(str(root)).splits["all"]
            g.collate()
        except ValueError:
            pass


class Stranger:
    """Not a class a pretrain-gnns file contains."""


def test_unpickler_refuses_unexpected_classes(tmp_path):
    path = tmp_path / "f.pt"
    torch.save((Stranger(), {}), path)
    with pytest.raises(ValueError, match="refers to .*Stranger.*never runs code"):
        G._read_collated(path)


# ---- the synthetic benchmark ---------------------------------------------------------------------
def test_synthetic_shapes(pt):
    g, y = pt.splits["all"]
    assert len(g) == 400 and y.shape == (400, 12) and y.dtype == torch.float32
    assert g.features == GraphFeatures(3, 2) and (g.center < g.node_ptr[1:] - g.node_ptr[:-1]).all()
    assert pt.info["kind"].count("related") == 4 and pt.info["kind"].count("adversarial") == 4
    ft = G.synthetic_graphs(graphs=100, task="finetune", seed=0, **SMALL)
    assert {k: len(v[0]) for k, v in ft.splits.items()} == {"train": 20, "val": 20, "test": 60, "all": 100}
    assert ft.info["related_motifs"] == pt.info["related_motifs"] and ft.splits["test"][1].shape == (60, 3)


def test_synthetic_deterministic_by_seed(pt):
    again = G.synthetic_graphs(graphs=400, seed=0, **SMALL)
    other = G.synthetic_graphs(graphs=400, seed=1, **SMALL)
    (a, ya), (b, yb) = pt.splits["all"], again.splits["all"]
    assert torch.equal(ya, yb) and torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    assert not torch.equal(ya, other.splits["all"][1])


def test_planted_motifs_are_in_the_graphs(pt):
    g = pt.splits["all"][0]
    counts, names = pt.info["motif_counts"], pt.info["motifs"]
    sizes = torch.tensor([G._SIZES[k] for k in names])
    nodes = g.node_ptr[1:] - g.node_ptr[:-1]
    assert ((nodes - counts @ sizes >= 10) & (nodes - counts @ sizes <= 20)).all()
    for i in range(5):  # each planted triangle and 4-clique adds triangles: 1 and 4
        d = g[i]
        adj = torch.zeros(d.num_nodes, d.num_nodes)
        adj[d.edge_index[0], d.edge_index[1]] = 1
        triangles = int(torch.trace(adj @ adj @ adj)) // 6
        planted = int(counts[i, names.index("triangle")] + 4 * counts[i, names.index("clique4")]
                      + counts[i, names.index("house")])
        assert triangles >= planted


def _fit_accuracy(z: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-task held-out accuracy of least squares on [1, z, z_i z_j] (the related family's features)."""
    pairs = [z[:, i] * z[:, j] for i in range(z.shape[1]) for j in range(i, z.shape[1])]
    f = torch.cat([torch.ones(len(z), 1), z, torch.stack(pairs, 1)], 1).double().numpy()
    half = len(f) // 2
    w, *_ = np.linalg.lstsq(f[:half], 2 * y[:half].double().numpy() - 1, rcond=None)
    return ((f[half:] @ w > 0) == y[half:].numpy().astype(bool)).mean(0)


def test_planted_task_relevance(pt):
    y, info = pt.splits["all"][1], pt.info
    z = G._standardise(info["motif_counts"], 3)
    rel = [info["motifs"].index(m) for m in info["related_motifs"]]
    unrel = [info["motifs"].index(m) for m in info["unrelated_motifs"]]
    from_rel, from_unrel = _fit_accuracy(z[:, rel], y), _fit_accuracy(z[:, unrel], y)
    kind = np.array(info["kind"])
    assert from_rel[kind == "related"].min() > 0.85
    assert from_unrel[kind == "unrelated"].min() > 0.85
    assert from_rel[kind == "unrelated"].max() < 0.75
    assert max(from_rel[kind == "adversarial"].max(), from_unrel[kind == "adversarial"].max()) < 0.7
    assert info["relevant"] == list(kind == "related")


def test_ft_tasks_depend_on_related_motifs(pt):
    ft = G.synthetic_graphs(graphs=400, task="finetune", seed=0, **SMALL)
    y, info = ft.splits["all"][1], ft.info
    z = G._standardise(info["motif_counts"], 3)
    rel = [info["motifs"].index(m) for m in info["related_motifs"]]
    unrel = [info["motifs"].index(m) for m in info["unrelated_motifs"]]
    assert _fit_accuracy(z[:, rel], y).min() > 0.85 and _fit_accuracy(z[:, unrel], y).max() < 0.75


def test_synthetic_bad_sizes():
    with pytest.raises(ValueError, match="exceeds"):
        G.synthetic_graphs(graphs=10, pt_tasks=2, related=2, adversarial=1, ft_tasks=1)
    with pytest.raises(ValueError, match="related_motifs"):
        G.synthetic_graphs(graphs=10, pt_tasks=2, related=1, ft_tasks=1, related_motifs=6)


# ---- the catalog ---------------------------------------------------------------------------------
SPEC = """\
data pt = graphs.synthetic(graphs: 64, pt_tasks: 4, related: 2, ft_tasks: 2)
data ft = graphs.synthetic(graphs: 64, pt_tasks: 4, related: 2, ft_tasks: 2, task: finetune)
model encoder = gin(layers: 2, hidden: 8, jk: concat)
head pt_head = linear(out: 4)
head ft_head = linear(out: 2)
meta w: vector[4] = 0.0
pretrain {
  data pt batch 16
  loss mean(w * bce(pt_head(encoder(x)), y))
}
finetune {
  data ft.train
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 1 update ft_head
}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
"""


def test_catalog_gin_on_graph_data():
    plan = compile_spec(SPEC, "g.mpt")
    modules = {m.name: m for m in plan.modules}
    assert modules["encoder"].in_dim == GraphFeatures(3, 2)
    assert modules["pt_head"].in_dim == 2 * 3 * 8  # concat of input + 2 layers, mean ++ centre
    from mptc.components.registry import MODELS
    args = MODELS.get("gin").runtime_args(modules["encoder"].component.args)   # `in` is the checker's
    enc = G.gin(**args, in_dim=modules["encoder"].in_dim)
    g = G.synthetic_graphs(**plan.datasets[0].source.args).splits["all"][0]
    assert enc(g[:3]).shape == (3, 48)


PT_DECL = "graphs.synthetic(graphs: 64, pt_tasks: 4, related: 2, ft_tasks: 2)\n"


@pytest.mark.parametrize("old, new, message", [
    ("gin(layers: 2, hidden: 8, jk: concat)", "mlp(hidden: [8])",
     "expects inputs of shape [batch, features], got [batch, graphs(node features 3, edge features 2)]"),
    (PT_DECL, "synthetic.multitask(examples: 64, dim: 8, tasks: 4, related: 2)\n",
     "expects a batch of graphs (graphs.* data), got [batch, 8]"),
    (PT_DECL, 'graphs.bio(root: "/no/such/bio")\n', "'root': no such file or folder '/no/such/bio'"),
])
def test_catalog_shape_and_path_errors(old, new, message):
    with pytest.raises(SpecErrors) as info:
        compile_spec(SPEC.replace(old, new), "g.mpt")
    assert any(message in e.message for e in info.value.errors), [e.message for e in info.value.errors]
