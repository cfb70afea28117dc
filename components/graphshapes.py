"""Compile-time shapes of graph data and the GIN encoder. Torch-free, like the catalog that uses it.

A graph dataset's ``x`` has the shape ``(B, GraphFeatures(nodes, edges))``: a batch of graphs whose
nodes carry ``nodes`` features and whose edges carry ``edges`` features. The checker records that
second entry as the encoder's ``in_dim``, so ``gin`` is built with the right input sizes, and dense
models reject it.

    >>> str(GraphFeatures(1, 9))
    'graphs(node features 1, edge features 9)'
    >>> gin_features(hidden=300, layers=5, jk="concat", pool="mean_center")
    3600
"""
from __future__ import annotations

import attrs

__all__ = ["GraphFeatures", "JK_MODES", "POOLS", "gin_features", "is_graph"]

JK_MODES = ("last", "concat", "sum", "max")
POOLS = ("mean_center", "mean", "sum", "max", "center")


@attrs.frozen
class GraphFeatures:
    """The feature entry of a graph batch's shape: node and edge feature sizes."""

    nodes: int
    edges: int

    def __str__(self) -> str:
        return f"graphs(node features {self.nodes}, edge features {self.edges})"


def is_graph(shape) -> bool:
    """Whether a data shape is a batch of graphs.

        >>> is_graph(("B", GraphFeatures(3, 2))), is_graph(("B", 16)), is_graph(None)
        (True, False, False)
    """
    return shape is not None and len(shape) == 2 and isinstance(shape[1], GraphFeatures)


def gin_features(hidden: int, layers: int, jk: str, pool: str) -> int:
    """The size of a GIN's graph representation: per-node size (``(layers + 1) * hidden`` for
    ``jk="concat"``, which keeps the input embedding, else ``hidden``), doubled by ``mean_center``.

        >>> gin_features(hidden=300, layers=5, jk="last", pool="mean_center")
        600
    """
    per_node = (layers + 1) * hidden if jk == "concat" else hidden
    return 2 * per_node if pool == "mean_center" else per_node
