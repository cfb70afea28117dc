"""Graph data and the GIN encoder for the graph pre-training experiment (Raghu et al. 2021 on the
pretrain-gnns "bio" benchmark of Hu et al. 2020), on torch-geometric.

**Data.** A graph dataset is the usual :class:`~mptc.runtime.datasets.Dataset` whose splits map a
name to ``(graphs, y)``: ``graphs`` a :class:`Graphs` (all graphs stored collated once, CSR-style,
plus the ids of the graphs this split holds) and ``y [N, T]`` float 0/1. ``Graphs`` is indexed like
a tensor (``graphs[idx]`` with a tensor, list or slice is a view, no copy; ``graphs[i]`` one PyG
``Data``), has ``len`` and ``.to(device)``, and ``graphs.collate()`` gathers the selected graphs
into one PyG ``Batch`` with vectorised index arithmetic (no per-graph Python loop), so batch
sampling and the random ``split`` of :mod:`mptc.runtime.datasets` work on it unchanged.

**Encoder.** :func:`gin` is the pretrain-gnns GIN: a linear node embedding, ``layers`` GIN layers
``h' = MLP(sum_{j in N(i) + self} (h_j + W e_ij))`` (edge features embedded per layer, a
self-loop flag as an extra edge feature), batch norm, ReLU except after the last layer, dropout;
jumping knowledge ``last|concat|sum|max`` over the input embedding and all layers; readout
``mean_center`` = mean pooling concatenated with the **centre node's** embedding. The centre of
graph ``g`` in a batch is node ``ptr[g] + center_node_idx[g]`` (the published code indexes with the
un-offset ``center_node_idx``, so every graph but the first reads a node of the first graphs).

**Bio** (:func:`bio`): ``root/supervised/processed/geometric_data_processed.pt``, the
pretrain-gnns file written by PyG 1.x: a pickled ``(data, slices)`` collate of old
``torch_geometric.data.Data`` objects, which PyG 2.x unpickles but cannot use. It is read with torch's
weights-only unpickler (tensors, containers and PyG's ``Data``, whose old fields land in its
``__dict__``; no other class or function, so the file cannot run code), converted (vectorised) and
cached next to it as ``geometric_data_processed.mptc.pt`` (plain tensors, also weights-only). Splits
replicate the published species split (``splitters.species_split`` + ``random_split``, Python
``random`` with the same seed): PT = non-human graphs + the human "broad" half; FT ``train``/``val``
= 85/15 of the non-human graphs, ``test`` = the human half never seen in PT (published
``test_hard``), ``test_easy`` = the other half.

**Synthetic** (:func:`synthetic_graphs`), the planted mechanism (all randomness from
``torch.Generator`` streams derived from ``seed``):

* **Graphs.** A base graph of ``n ~ U{min_nodes..max_nodes}`` nodes: a random recursive tree
  (node ``i`` joins a uniform earlier node) plus ``round(extra_edges * n)`` uniform extra edges.
  Six motif types, ``triangle, cycle4, cycle6, star (hub + 4 leaves), clique4, house`` (a square
  with a roof), are planted ``c_k ~ U{0..max_count}`` times each, every copy on fresh nodes joined
  to a uniform base node by one edge. Node ids are shuffled; the centre is a uniform base node
  (no label depends on it; it is there so the bio readout runs unchanged). Node features
  ``x = [1, N(0,1) noise...]`` (``node_dim`` columns) and edge features (``edge_dim`` random bits,
  the same in both directions) carry no label information: only the structure does.
* **Latents.** ``z = standardise(c)``, the motif counts scaled by their known mean and std. The
  motif types are shuffled with the seed into ``related_motifs`` *related* types, ``z_rel``, and
  the rest, ``z_unrel`` (``info["related_motifs"]``).
* **PT tasks** (``task="pretrain"``, split ``"all"``): ``pt_tasks = related + unrelated +
  adversarial``, shuffled; with unit vectors ``u, v`` per task and ``eps ~ N(0, 1)``:

  - *related*: ``y = 1[u . z_rel + ((v . z_rel)^2 - 1) + noise * eps > 0]``;
  - *unrelated*: ``y = 1[u . z_unrel + noise * eps > 0]``, other motifs only;
  - *adversarial*: random bits, independent of the graph.

* **FT tasks** (``task="finetune"``, splits ``train/val/test`` by ``ft_split`` and ``all``):
  fresh graphs, the related family with new ``u, v``. So PT tasks that help FT are exactly the
  related ones (``info["relevant"]``), as in :mod:`mptc.runtime.datasets`.

    >>> pt = synthetic_graphs(graphs=64, pt_tasks=10, related=3, adversarial=2, ft_tasks=2)
    >>> g, y = pt.splits["all"]
    >>> len(g), y.shape, sum(pt.info["relevant"])
    (64, torch.Size([64, 10]), 3)
    >>> enc = gin(layers=2, hidden=8, in_dim=g.node_dim, edge_dim=g.edge_dim)
    >>> enc(g[:4]).shape
    torch.Size([4, 16])
"""
from __future__ import annotations

import math
import pickle
import random
import re
import sys
import warnings
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MessagePassing, global_add_pool, global_max_pool, global_mean_pool

from mptc.runtime.datasets import Dataset, _kinds, _related, _units, split
from mptc.components.catalog import BIO_EDGE_DIM, BIO_NODE_DIM   # the bio file's widths, as `mptc check` declares them
from mptc.components.graphshapes import JK_MODES, POOLS, GraphFeatures

__all__ = ["GIN", "Graphs", "bio", "center_index", "gin", "graphs_from_data", "readout", "synthetic_graphs"]


# ---- graph storage -------------------------------------------------------------------------------
def _ranges(starts: Tensor, lengths: Tensor) -> Tensor:
    """The concatenated ranges ``starts[i] .. starts[i] + lengths[i] - 1``.

        >>> _ranges(torch.tensor([5, 0]), torch.tensor([2, 3])).tolist()
        [5, 6, 0, 1, 2]
    """
    before = torch.cumsum(lengths, 0) - lengths  # exclusive cumsum: where each range begins in the output
    total = int(lengths.sum())
    shift = torch.repeat_interleave(starts - before, lengths, output_size=total)
    return torch.arange(total, device=starts.device) + shift


def _ptr(sizes: Tensor) -> Tensor:
    """Boundaries ``[0, s0, s0 + s1, ...]`` of consecutive blocks of the given sizes."""
    return torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])


@attrs.frozen(eq=False, repr=False)
class Graphs:
    """Graphs stored collated (node/edge tensors with per-graph boundaries), viewed through ``ids``."""

    x: Tensor           # [all nodes, node_dim] float
    edge_index: Tensor  # [2, all edges] long, node indices local to each graph
    edge_attr: Tensor   # [all edges, edge_dim] (float or uint8; collate gives float)
    node_ptr: Tensor    # [stored graphs + 1]
    edge_ptr: Tensor    # [stored graphs + 1]
    center: Tensor      # [stored graphs] long, local index of each graph's centre node
    ids: Tensor         # [len] the stored graphs this view holds, in order

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Graphs({len(self)} graphs, {self.node_dim} node / {self.edge_dim} edge features)"

    def __getitem__(self, idx):
        """``graphs[i]`` is one PyG ``Data``; a tensor, list or slice gives a ``Graphs`` view."""
        if isinstance(idx, int) or (torch.is_tensor(idx) and idx.dim() == 0):
            return self.data(int(idx))
        if torch.is_tensor(idx):
            idx = idx.to(self.ids.device)
        return attrs.evolve(self, ids=self.ids[idx])

    @property
    def node_dim(self) -> int:
        return self.x.shape[1]

    @property
    def edge_dim(self) -> int:
        return self.edge_attr.shape[1]

    @property
    def features(self) -> GraphFeatures:
        return GraphFeatures(self.node_dim, self.edge_dim)

    def to(self, device) -> Graphs:
        """The same graphs with every tensor on ``device``."""
        return Graphs(*(t.to(device) for t in attrs.astuple(self, recurse=False)))

    def collate(self) -> Batch:
        """The selected graphs as one PyG ``Batch`` (``x, edge_index, edge_attr, batch, ptr,
        center_node_idx``; edge indices offset per graph, centre indices local)."""
        ids = self.ids
        n = self.node_ptr[ids + 1] - self.node_ptr[ids]
        e = self.edge_ptr[ids + 1] - self.edge_ptr[ids]
        ptr, edges = _ptr(n), _ranges(self.edge_ptr[ids], e)
        shift = torch.repeat_interleave(ptr[:-1], e, output_size=len(edges))
        graph_of = torch.repeat_interleave(torch.arange(len(ids), device=ids.device), n, output_size=int(ptr[-1]))
        return Batch(x=self.x[_ranges(self.node_ptr[ids], n)], edge_index=self.edge_index[:, edges] + shift,
                     edge_attr=self.edge_attr[edges].float(), batch=graph_of, ptr=ptr,
                     center_node_idx=self.center[ids])

    def compact(self) -> Graphs:
        """The graphs of this view stored alone, in order (``ids`` 0..len-1): what a checkpoint keeps of a
        batch, whose view would otherwise carry the whole store. ``collate`` gives the same tensors.

            >>> g = synthetic_graphs(graphs=6, pt_tasks=2, related=1, ft_tasks=1).splits["all"][0][[4, 1]]
            >>> c = g.compact(); len(c.center), torch.equal(c.collate().x, g.collate().x)
            (2, True)
        """
        ids = self.ids
        n = self.node_ptr[ids + 1] - self.node_ptr[ids]
        e = self.edge_ptr[ids + 1] - self.edge_ptr[ids]
        nodes, edges = _ranges(self.node_ptr[ids], n), _ranges(self.edge_ptr[ids], e)
        return Graphs(self.x[nodes], self.edge_index[:, edges], self.edge_attr[edges], _ptr(n), _ptr(e),
                      self.center[ids], torch.arange(len(ids), device=ids.device))

    def data(self, i: int) -> Data:
        """Graph ``i`` of this view as a PyG ``Data``."""
        g = int(self.ids[i])
        (a, b), (c, d) = self.node_ptr[g:g + 2].tolist(), self.edge_ptr[g:g + 2].tolist()
        return Data(x=self.x[a:b], edge_index=self.edge_index[:, c:d], edge_attr=self.edge_attr[c:d].float(),
                    center_node_idx=self.center[g:g + 1])

    def data_list(self) -> list[Data]:
        """All graphs of this view as PyG ``Data`` objects."""
        return [self.data(i) for i in range(len(self))]


def graphs_from_data(data: list[Data]) -> Graphs:
    """Store a list of PyG ``Data`` (``x``, ``edge_index``, optional ``edge_attr`` and
    ``center_node_idx``, default 0) as :class:`Graphs`.

        >>> d = Data(x=torch.ones(3, 1), edge_index=torch.tensor([[0, 1], [1, 2]]))
        >>> g = graphs_from_data([d, d]); len(g), g.edge_dim, g.collate().edge_index.tolist()
        (2, 0, [[0, 1, 3, 4], [1, 2, 4, 5]])
    """
    def attr(d):
        return d.edge_attr if d.edge_attr is not None else torch.zeros(d.edge_index.shape[1], 0)
    center = [int(d.center_node_idx) if "center_node_idx" in d else 0 for d in data]
    return Graphs(torch.cat([d.x.float() for d in data]), torch.cat([d.edge_index for d in data], 1),
                  torch.cat([attr(d) for d in data]), _ptr(torch.tensor([d.num_nodes for d in data])),
                  _ptr(torch.tensor([d.edge_index.shape[1] for d in data])), torch.tensor(center),
                  torch.arange(len(data)))


# ---- the GIN encoder -----------------------------------------------------------------------------
class GINConv(MessagePassing):
    """One pretrain-gnns GIN layer: ``MLP(sum_{j in N(i) + self} (h_j + W e_ij))``; the self-loop
    edge gets the extra flag feature (pretrain-gnns reserves column 7 of the bio features for it)."""

    def __init__(self, hidden: int, edge_dim: int):
        super().__init__(aggr="add")
        self.edge_encoder = nn.Linear(edge_dim + 1, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """The self-loop term is added directly: its edge feature is the flag alone, so its embedding
        is one column of the edge encoder plus its bias, the same for every node (no loop edges built)."""
        w, b = self.edge_encoder.weight, self.edge_encoder.bias
        e = F.linear(edge_attr.to(h.dtype), w[:, :-1], b)               # real edges: flag 0
        return self.mlp(self.propagate(edge_index, x=h, e=e, size=(len(h), len(h))) + h + (w[:, -1] + b))

    def message(self, x_j: Tensor, e: Tensor) -> Tensor:
        return x_j + e


def center_index(batch: Batch) -> Tensor:
    """Each graph's centre node as an index into the batch's nodes: ``ptr[:-1] + center_node_idx``.

        >>> b = Batch.from_data_list([Data(x=torch.ones(3, 1), center_node_idx=torch.tensor([2])),
        ...                           Data(x=torch.ones(2, 1), center_node_idx=torch.tensor([1]))])
        >>> center_index(b).tolist()
        [2, 4]
    """
    ptr = batch.ptr if getattr(batch, "ptr", None) is not None else _ptr(torch.bincount(batch.batch))
    return ptr[:-1] + batch.center_node_idx.view(-1).to(ptr.device)


def jump(hs: list[Tensor], jk: str) -> Tensor:
    """Jumping knowledge over the per-layer node embeddings ``hs`` (input embedding first).

        >>> hs = [torch.ones(2, 3), 2 * torch.ones(2, 3)]
        >>> [jump(hs, m).shape[1] for m in ("last", "concat", "sum", "max")], jump(hs, "sum")[0, 0].item()
        ([3, 6, 3, 3], 3.0)
    """
    if jk == "last":
        return hs[-1]
    if jk == "concat":
        return torch.cat(hs, 1)
    if jk == "sum":
        return torch.stack(hs).sum(0)
    if jk == "max":
        return torch.stack(hs).max(0).values
    raise ValueError(f"unknown jk {jk!r}; choose one of {list(JK_MODES)}")


def readout(h: Tensor, batch: Batch, pool: str) -> Tensor:
    """Graph representations ``[graphs, ...]`` from node embeddings ``h``.

        >>> b = Batch.from_data_list([Data(x=torch.ones(2, 1), center_node_idx=torch.tensor([1])),
        ...                           Data(x=torch.ones(1, 1), center_node_idx=torch.tensor([0]))])
        >>> readout(torch.tensor([[1.], [3.], [5.]]), b, "mean_center").tolist()
        [[2.0, 3.0], [5.0, 5.0]]
    """
    size = len(batch.ptr) - 1 if getattr(batch, "ptr", None) is not None else batch.num_graphs
    pools = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}
    if pool in pools:
        return pools[pool](h, batch.batch, size)
    if pool == "center":
        return h[center_index(batch)]
    if pool == "mean_center":
        return torch.cat([global_mean_pool(h, batch.batch, size), h[center_index(batch)]], 1)
    raise ValueError(f"unknown pool {pool!r}; choose one of {list(POOLS)}")


class GIN(nn.Module):
    """The pretrain-gnns GIN encoder with a graph readout; ``forward`` takes a PyG ``Batch`` or a
    :class:`Graphs` (collated on the fly)."""

    def __init__(self, node_dim: int, edge_dim: int, layers: int, hidden: int, jk: str, pool: str,
                 dropout: float, norm: str):
        super().__init__()
        if jk not in JK_MODES or pool not in POOLS or norm not in ("batch", "none") or layers < 1:
            raise ValueError(f"gin: bad jk {jk!r}, pool {pool!r}, norm {norm!r} or layers {layers}")
        self.jk, self.pool, self.dropout = jk, pool, dropout
        self.node_encoder = nn.Linear(node_dim, hidden)
        self.convs = nn.ModuleList(GINConv(hidden, edge_dim) for _ in range(layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) if norm == "batch" else nn.Identity()
                                   for _ in range(layers))

    def forward(self, graphs) -> Tensor:
        batch = graphs.collate() if isinstance(graphs, Graphs) else graphs
        h = self.node_encoder(batch.x.to(self.node_encoder.weight.dtype))   # the run's dtype (train dtype)
        hs = [h]
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h, batch.edge_index, batch.edge_attr))
            if i < len(self.convs) - 1:  # no ReLU after the last layer (pretrain-gnns)
                h = F.relu(h)
            h = F.dropout(h, self.dropout, self.training)
            hs.append(h)
        return readout(jump(hs, self.jk), batch, self.pool)


def gin(layers: int = 5, hidden: int = 300, jk: str = "last", pool: str = "mean_center", dropout: float = 0.2,
        norm: str = "batch", in_dim=None, edge_dim: int | None = None) -> GIN:
    """The GIN encoder. ``in_dim`` is the node feature size, or the ``GraphFeatures`` the compiler
    infers from graph data (which also gives ``edge_dim``); the spec's ``in`` is checked against it.

        >>> gin(layers=2, hidden=4, in_dim=GraphFeatures(1, 9)).convs[0].edge_encoder.in_features
        10
    """
    if isinstance(in_dim, GraphFeatures):
        in_dim, edge_dim = in_dim.nodes, in_dim.edges if edge_dim is None else edge_dim
    if in_dim is None:
        raise ValueError("gin needs its node feature size: apply it to graph data or give in: N")
    return GIN(in_dim, edge_dim or 0, layers, hidden, jk, pool, dropout, norm)


# ---- the pretrain-gnns bio dataset ---------------------------------------------------------------
BIO_FILE = Path("supervised", "processed", "geometric_data_processed.pt")
BIO_CACHE = "geometric_data_processed.mptc.pt"
HUMAN = 9606  # the FT test species of the published species split
_BIO_FIELDS = ("x", "edge_index", "edge_attr", "center_node_idx", "species_id", "go_target_pretrain",
               "go_target_downstream")
def _fields(obj) -> dict:
    """The tensor fields of a collated ``Data``: a PyG 1.x one (its old attributes are plain
    ``__dict__`` entries), a PyG 2.x one, or a plain dict."""
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if isinstance(obj, Data):
        if "_store" in vars(obj):
            return {k: v for k, v in obj.to_dict().items() if torch.is_tensor(v)}
        return {k: v for k, v in vars(obj).items() if torch.is_tensor(v)}
    raise ValueError(f"expected a collated Data object, got {type(obj).__name__}")


def _refused(e: Exception) -> str:
    """What torch's weights-only unpickler refused, in one line (its message is a page)."""
    text = str(e)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return (f"it refers to {found[1]}, which is not a tensor, a container or PyG's Data; "
                "mptc never runs code from a data file")
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return (f"torch's weights-only reader refused it: {detail[1].strip() if detail else 'unsafe pickle'}; "
            "mptc never runs code from a data file")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _read_collated(path: Path) -> tuple[dict, dict]:
    """``(fields, slices)`` of a pickled ``(data, slices)`` InMemoryDataset file (PyG 1.x or 2.x).

    Read by torch's weights-only unpickler (tensors and plain containers) with PyG's ``Data`` as the
    one class allowed: a PyG 1.x ``Data`` comes back with its old fields in ``__dict__``. Nothing in
    the file can run code: any other class or function it names is refused."""
    torch.serialization.add_safe_globals([Data])     # as PyG does on import; said here for older PyG
    try:
        with warnings.catch_warnings():              # "pickle protocol 4 ...": noise beside our own error
            warnings.simplefilter("ignore")
            out = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: cannot read it as a pretrain-gnns processed file ({_refused(e)})") from None
    except (PermissionError, FileNotFoundError, IsADirectoryError) as e:
        raise OSError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    except Exception as e:  # a damaged file: torch's readers raise assorted types (IndexError, KeyError, ...)
        raise ValueError(f"{path}: cannot read it as a pretrain-gnns processed file ({_first_line(e)})") from None
    if not (isinstance(out, (tuple, list)) and len(out) >= 2 and isinstance(out[1], dict)):
        raise ValueError(f"{path}: expected a pickled (data, slices) pair, got {type(out).__name__}")
    try:
        return _fields(out[0]), dict(out[1])
    except (AttributeError, TypeError, RuntimeError, KeyError) as e:  # a Data whose fields are not fields
        raise ValueError(f"{path}: its Data object is malformed ({type(e).__name__}: {e})") from None


def _per_graph(values: Tensor, slices: Tensor, name: str) -> Tensor:
    """A graph-level field concatenated over graphs, as ``[graphs, width]`` (all widths equal)."""
    widths = slices[1:] - slices[:-1]
    if len(widths) and not (widths == widths[0]).all():
        raise ValueError(f"field '{name}' has different lengths per graph")
    return values.reshape(len(widths), -1)


def _convert_bio(fields: dict, slices: dict) -> dict:
    """Plain per-graph tensors from the collated bio fields (vectorised; edge indices stay local)."""
    missing = [k for k in _BIO_FIELDS if k not in fields or k not in slices]
    if missing:
        raise ValueError(f"not a pretrain-gnns bio file: missing field(s) {', '.join(missing)}")
    edge_attr = fields["edge_attr"]
    if edge_attr.shape[1] not in (7, BIO_EDGE_DIM):
        raise ValueError(f"bio edge features must have 7 or 9 columns, got {edge_attr.shape[1]}")
    edge_attr = F.pad(edge_attr, (0, BIO_EDGE_DIM - edge_attr.shape[1]))  # 7 -> 9: the two flags are 0
    binary = bool(((edge_attr == 0) | (edge_attr == 1)).all())
    out = {"x": fields["x"].float().reshape(len(fields["x"]), -1), "edge_index": fields["edge_index"].long(),
           "edge_attr": edge_attr.to(torch.uint8) if binary else edge_attr.float(),
           "node_ptr": slices["x"].long(), "edge_ptr": slices["edge_index"].long()}
    for key in ("center_node_idx", "species_id"):
        out[key] = _per_graph(fields[key], slices[key], key)[:, 0].long()
    for key in ("go_target_pretrain", "go_target_downstream"):
        labels = _per_graph(fields[key], slices[key], key)
        bad = (labels != 0) & (labels != 1)
        if bad.any():                                   # a cast to uint8 would make -1 a label of 255
            raise ValueError(f"'{key}' holds {int(bad.sum())} label{'s' if int(bad.sum()) != 1 else ''} other than 0 and 1 "
                             f"(e.g. {labels[bad][0].item():g})")
        out[key] = labels.to(torch.uint8)
    return out


def _check_bio(t) -> dict:
    """`t` when it is a consistent set of bio tensors (:func:`_convert_bio`'s), else ValueError: a
    damaged file must stop here with its name, not as an IndexError inside a batch."""
    needed = ("x", "edge_index", "edge_attr", "node_ptr", "edge_ptr", *_BIO_FIELDS[3:])
    if not (isinstance(t, dict) and all(torch.is_tensor(t.get(k)) for k in needed)):
        raise ValueError("not a pretrain-gnns bio file: a field is missing or not a tensor")
    graphs, ei = len(t["species_id"]), t["edge_index"]
    for ptr, total, name in ((t["node_ptr"], len(t["x"]), "x"), (t["edge_ptr"], ei.shape[-1], "edge_index")):
        if ptr.dim() != 1 or len(ptr) != graphs + 1 or ptr[0] != 0 or ptr[-1] != total or (ptr.diff() < 0).any():
            raise ValueError(f"the slices of '{name}' do not cut its {total} entries into {graphs} graphs")
    nodes = t["node_ptr"].diff()
    if ei.dim() != 2 or len(ei) != 2 or len(t["edge_attr"]) != ei.shape[1] or \
            ((ei < 0) | (ei >= nodes.repeat_interleave(t["edge_ptr"].diff()))).any():
        raise ValueError("'edge_index' refers to nodes its graph does not have")
    if len(t["center_node_idx"]) != graphs or ((t["center_node_idx"] < 0) | (t["center_node_idx"] >= nodes)).any():
        raise ValueError("'center_node_idx' names a node its graph does not have")
    if any(len(t[k]) != graphs for k in _BIO_FIELDS[5:]):
        raise ValueError("the GO targets do not have one row per graph")
    if t["x"].dim() != 2 or t["x"].shape[1] != BIO_NODE_DIM:
        raise ValueError(f"bio node features must have {BIO_NODE_DIM} column, got shape {list(t['x'].shape)}")
    for key in ("x", "edge_attr"):
        if t[key].is_floating_point() and not torch.isfinite(t[key]).all():
            bad = int((~torch.isfinite(t[key])).sum())
            raise ValueError(f"'{key}' holds {bad} NaN or infinite value{'s' if bad != 1 else ''}")
    return t


def _bio_tensors(root: Path) -> dict:
    """The bio tensors, from the cache or converted from the PyG 1.x file (then cached, once)."""
    source = Path(root).expanduser() / BIO_FILE
    if not source.is_file():
        where = f"'{root}' does not exist" if not Path(root).exists() else f"there is no {source}"
        raise FileNotFoundError(f"bio: {where}; expected the pretrain-gnns layout <root>/{BIO_FILE} "
                                "(unzip the published bio dataset there; mptc downloads nothing)")
    cache = source.with_name(BIO_CACHE)
    if cache.is_file() and cache.stat().st_mtime >= source.stat().st_mtime:
        cached = _read_cache(cache)
        if cached is not None:
            return cached
    fields, slices = _read_collated(source)
    try:
        tensors = _check_bio(_convert_bio(fields, slices))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    except (RuntimeError, IndexError, TypeError) as e:   # tensors of the wrong shape or type
        raise ValueError(f"{source}: not a pretrain-gnns bio file ({_first_line(e)})") from None
    try:
        torch.save(tensors, cache)
        note = f"cached as {cache}"
    except OSError as e:
        note = f"not cached ({e.strerror}); it is converted again next time"
    print(f"mptc: converted the PyG 1.x bio file {source} ({len(tensors['species_id'])} graphs); {note}",
          file=sys.stderr)
    return tensors


def _read_cache(cache: Path) -> dict | None:
    """The cached bio tensors, or None (then converted again) when the cache is damaged or foreign."""
    try:
        return _check_bio(torch.load(cache, map_location="cpu", weights_only=True))
    except Exception:  # damaged, foreign or inconsistent: the source is the truth
        pass
    print(f"mptc: the bio cache {cache} is unreadable; converting the bio file again", file=sys.stderr)
    return None


def _published_split(idx: list[int], train: float, valid: float, seed: int) -> tuple[list, list, list]:
    """pretrain-gnns ``random_split``: ``random.seed(seed)``, shuffle, cut at ``int(frac * n)``.

        >>> _published_split(list(range(10)), 0.5, 0.5, seed=0)[0]
        [7, 8, 1, 5, 3]
    """
    order = list(idx)
    random.Random(seed).shuffle(order)
    a, b = int(train * len(order)), int(valid * len(order)) + int(train * len(order))
    return order[:a], order[a:b], order[b:]


def bio_splits(species: Tensor, seed: int = 42) -> dict[str, list[int]]:
    """The published species split as graph indices: ``pretrain`` (non-human + the human "broad"
    half), FT ``train``/``val`` (85/15 of non-human), ``test`` (the human half PT never sees) and
    ``test_easy`` (the half PT sees).

        >>> s = bio_splits(torch.tensor([9606] * 4 + [3702] * 20), seed=0)
        >>> {k: len(v) for k, v in s.items()}
        {'pretrain': 22, 'train': 17, 'val': 3, 'test': 2, 'test_easy': 2}
    """
    human = (species == HUMAN).nonzero().view(-1).tolist()
    others = (species != HUMAN).nonzero().view(-1).tolist()
    train, val, _ = _published_split(others, 0.85, 0.15, seed)
    broad, none, _ = _published_split(human, 0.5, 0.5, seed)
    return {"pretrain": others + broad, "train": train, "val": val, "test": none, "test_easy": broad}


def bio(root: str, task: str = "pretrain", seed: int = 42) -> Dataset:
    """The pretrain-gnns bio dataset under ``root`` (the folder holding ``supervised/``).

    ``task="pretrain"``: split ``"all"`` = the PT graphs with the 5000 GO PT targets.
    ``task="finetune"``: splits ``train, val, test, test_easy`` (see :func:`bio_splits`) and ``all``
    with the 40 downstream GO targets. ``x`` is :class:`Graphs` (node features: 1 constant column;
    edge features: 9 columns). Raises ``FileNotFoundError``/``ValueError`` with the expected layout.
    """
    if task not in ("pretrain", "finetune"):
        raise ValueError(f"bio: task must be pretrain or finetune, got {task!r}")
    t = _bio_tensors(Path(root))
    store = Graphs(t["x"], t["edge_index"], t["edge_attr"], t["node_ptr"], t["edge_ptr"],
                   t["center_node_idx"], torch.arange(len(t["species_id"])))
    parts = bio_splits(t["species_id"], seed)
    target = t["go_target_pretrain" if task == "pretrain" else "go_target_downstream"]

    for name, ids in parts.items():
        if not ids and (task == "finetune" or name == "pretrain"):
            human = int((t["species_id"] == HUMAN).sum())
            raise ValueError(f"bio: split '{name}' has no graphs (train/val take the non-human species, test and "
                             f"test_easy the human ones, {HUMAN}: this file has {human} human graphs of "
                             f"{len(t['species_id'])})")

    def part(ids):
        ids = torch.tensor(ids, dtype=torch.long)
        return store[ids], target[ids].float()
    if task == "pretrain":
        splits = {"all": part(parts["pretrain"])}
    else:
        splits = {k: part(parts[k]) for k in ("train", "val", "test", "test_easy")}
        splits["all"] = (store, target.float())
    info = {"kind": [task] * target.shape[1], "relevant": None, "task": task, "seed": seed,
            "species": t["species_id"], "sizes": {k: len(v[0]) for k, v in splits.items()}}
    return Dataset(splits, info)


# ---- the synthetic graph benchmark ---------------------------------------------------------------
def _cycle(k: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % k) for i in range(k)]


MOTIFS: dict[str, list[tuple[int, int]]] = {
    "triangle": _cycle(3),
    "cycle4": _cycle(4),
    "cycle6": _cycle(6),
    "star": [(0, i) for i in range(1, 5)],
    "clique4": [(i, j) for i in range(4) for j in range(i + 1, 4)],
    "house": _cycle(4) + [(0, 4), (1, 4)],
}
_TEMPLATES = {k: torch.tensor(v) for k, v in MOTIFS.items()}
_SIZES = {k: int(t.max()) + 1 for k, t in _TEMPLATES.items()}
_STREAM = {"map": 21, "pt": 22, "ft": 23}


def _stream(seed: int, salt: str) -> torch.Generator:
    """An independent generator stream for ``(seed, salt)`` (disjoint from the dense datasets')."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + _STREAM[salt] * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def _base_edges(n: int, extra: float, gen: torch.Generator) -> Tensor:
    """A random recursive tree on ``n`` nodes plus ``round(extra * n)`` uniform extra edges, ``[E, 2]``."""
    child = torch.arange(1, n)
    parent = (torch.rand(n - 1, generator=gen) * child).long()
    more = torch.randint(0, n, (round(extra * n), 2), generator=gen)
    return torch.cat([torch.stack([child, parent], 1), more[more[:, 0] != more[:, 1]]])


def _motif_edges(counts: list[int], start: int, n_base: int, gen: torch.Generator) -> tuple[Tensor, int]:
    """Edges of ``counts[k]`` copies of each motif on fresh nodes from ``start``, each joined to a
    uniform base node; the edges ``[E, 2]`` and the next free node."""
    parts = []
    for (name, template), count in zip(_TEMPLATES.items(), counts):
        if count:
            first = start + _SIZES[name] * torch.arange(count)             # node 0 of each copy
            parts += [(template[None] + first[:, None, None]).reshape(-1, 2),
                      torch.stack([first, torch.randint(0, n_base, (count,), generator=gen)], 1)]
            start += _SIZES[name] * count
    return (torch.cat(parts) if parts else torch.zeros(0, 2, dtype=torch.long)), start


def _one_graph(counts: list[int], n_base: int, extra: float, node_dim: int, edge_dim: int,
               gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, int]:
    """One synthetic graph: ``(x, edge_index [2, 2E] both directions, edge_attr, centre)``."""
    motif, n = _motif_edges(counts, n_base, n_base, gen)
    und = torch.cat([_base_edges(n_base, extra, gen), motif]).sort(1).values.unique(dim=0)
    relabel = torch.randperm(n, generator=gen)                            # shuffle the node ids
    und = relabel[und]
    attr = (torch.rand(len(und), edge_dim, generator=gen) < 0.5).float()
    x = torch.cat([torch.ones(n, 1), torch.randn(n, node_dim - 1, generator=gen)], 1)
    center = int(relabel[torch.randint(0, n_base, (1,), generator=gen)])
    return x, torch.cat([und.T, und.T.flip(0)], 1), torch.cat([attr, attr]), center


def _make_graphs(n: int, extra: float, sizes: tuple[int, int], max_count: int, node_dim: int,
                 edge_dim: int, gen: torch.Generator) -> tuple[Graphs, Tensor]:
    """``n`` synthetic graphs and their motif counts ``[n, motifs]``."""
    counts = torch.randint(0, max_count + 1, (n, len(MOTIFS)), generator=gen)
    n_base = torch.randint(sizes[0], sizes[1] + 1, (n,), generator=gen).tolist()
    made = [_one_graph(c, b, extra, node_dim, edge_dim, gen) for c, b in zip(counts.tolist(), n_base)]
    xs, eis, eas, centers = zip(*made)
    graphs = Graphs(torch.cat(xs), torch.cat(eis, 1), torch.cat(eas), _ptr(torch.tensor([len(x) for x in xs])),
                    _ptr(torch.tensor([ei.shape[1] for ei in eis])), torch.tensor(centers), torch.arange(n))
    return graphs, counts


def _standardise(counts: Tensor, max_count: int) -> Tensor:
    """Counts ``~ U{0..m}`` scaled to mean 0, variance 1 by the distribution's own moments."""
    var = ((max_count + 1) ** 2 - 1) / 12
    return (counts.float() - max_count / 2) / math.sqrt(var)


def _pt_score(kind: str, z_rel: Tensor, z_unrel: Tensor, gen: torch.Generator) -> Tensor:
    """The noiseless score of one PT task of ``kind`` (module docstring), drawing its directions."""
    if kind == "related":
        return _related(z_rel, _units(1, z_rel.shape[1], gen), _units(1, z_rel.shape[1], gen))[:, 0]
    if kind == "unrelated":
        return z_unrel @ _units(1, z_unrel.shape[1], gen)[0]
    return torch.randn(len(z_rel), generator=gen)  # adversarial: random bits per graph


def _check_synthetic(graphs, pt_tasks, related, adversarial, ft_tasks, related_motifs, min_nodes, max_nodes,
                     max_count, node_dim, task) -> None:
    """Raise ``ValueError`` on inconsistent sizes."""
    if min(graphs, pt_tasks, ft_tasks, node_dim, max_count, min_nodes - 1) < 1 or min(related, adversarial) < 0:
        raise ValueError("sizes must be positive (related, adversarial non-negative, min_nodes >= 2)")
    if related + adversarial > pt_tasks:
        raise ValueError(f"related + adversarial = {related + adversarial} exceeds pt_tasks = {pt_tasks}")
    if not 1 <= related_motifs < len(MOTIFS):
        raise ValueError(f"related_motifs must be in 1..{len(MOTIFS) - 1}, got {related_motifs}")
    if max_nodes < min_nodes:
        raise ValueError(f"max_nodes = {max_nodes} < min_nodes = {min_nodes}")
    if task not in ("pretrain", "finetune"):
        raise ValueError(f"task must be pretrain or finetune, got {task!r}")


def synthetic_graphs(*, graphs: int, pt_tasks: int, related: int, ft_tasks: int, adversarial: int = 0,
                     task: str = "pretrain", related_motifs: int = 3, min_nodes: int = 10, max_nodes: int = 20,
                     extra_edges: float = 0.2, max_count: int = 3, node_dim: int = 3, edge_dim: int = 2,
                     noise: float = 0.1, ft_split=(0.2, 0.2, 0.6), seed: int = 0) -> Dataset:
    """The synthetic graph multitask benchmark (module docstring). ``task="pretrain"``: split ``"all"``
    with ``pt_tasks`` labels; ``task="finetune"``: fresh graphs with ``ft_tasks`` labels, splits
    ``train/val/test`` by ``ft_split`` plus ``all``. Same ``seed``, same related motifs.

        >>> ft = synthetic_graphs(graphs=50, pt_tasks=4, related=2, ft_tasks=3, task="finetune", seed=1)
        >>> {k: len(v[0]) for k, v in ft.splits.items()}, ft.splits["test"][1].shape
        ({'train': 10, 'val': 10, 'test': 30, 'all': 50}, torch.Size([30, 3]))
    """
    _check_synthetic(graphs, pt_tasks, related, adversarial, ft_tasks, related_motifs, min_nodes, max_nodes,
                     max_count, node_dim, task)
    names = list(MOTIFS)
    order = torch.randperm(len(names), generator=_stream(seed, "map")).tolist()
    rel, unrel = sorted(order[:related_motifs]), sorted(order[related_motifs:])
    gen = _stream(seed, "pt" if task == "pretrain" else "ft")
    kinds = _kinds(pt_tasks, related, adversarial, gen) if task == "pretrain" else ["finetune"] * ft_tasks
    store, counts = _make_graphs(graphs, extra_edges, (min_nodes, max_nodes), max_count, node_dim, edge_dim, gen)
    z = _standardise(counts, max_count)
    if task == "pretrain":
        score = torch.stack([_pt_score(k, z[:, rel], z[:, unrel], gen) for k in kinds], 1)
    else:
        score = _related(z[:, rel], _units(ft_tasks, len(rel), gen), _units(ft_tasks, len(rel), gen))
    y = (score + noise * torch.randn(score.shape, generator=gen) > 0).float()
    info = {"kind": kinds, "relevant": [k in ("related", "finetune") for k in kinds], "task": task,
            "seed": seed, "motifs": names, "related_motifs": [names[i] for i in rel],
            "unrelated_motifs": [names[i] for i in unrel], "motif_counts": counts, "noise": noise}
    ds = Dataset({"all": (store, y)}, info)
    if task == "pretrain":
        return ds
    parts = split(ds, dict(zip(("train", "val", "test"), ft_split)), seed=seed).splits
    return Dataset({**parts, "all": (store, y)}, info)

