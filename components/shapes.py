"""Compile-time shapes: what a component's shape rule receives and returns. Public and torch-free, so a
user's own component states its rule without importing private names.

A shape is a tuple whose first entry is `B` (the batch) for data: `(B, 32)` for 32 features,
`(B, 1, 28, 28)` for images, `(B, GraphFeatures(nodes, edges))` for graphs, `(B, Tokens(length, vocab))`
for token ids (text); `()` is one number. A rule raises `ShapeProblem` with a message; the checker reports
it at the call, with line and column.

    >>> def rule(args, in_shape):            # a model's: [batch, features] -> [batch, out]
    ...     return (B, args["out"])
    >>> fmt(rule({"out": 4}, (B, 32))), fmt((B, Tokens(64, 4000)))
    ('[batch, 4]', '[batch, tokens(64, vocab 4000)]')
    >>> broadcast((B, 5), (5,))
    ('B', 5)
"""
from __future__ import annotations

from mptc.components.graphshapes import JK_MODES, POOLS, GraphFeatures, gin_features, is_graph
from mptc.components.textshapes import Tokens, is_tokens

__all__ = ["B", "ShapeProblem", "fmt", "broadcast", "features", "GraphFeatures", "JK_MODES", "POOLS",
           "gin_features", "is_graph", "Tokens", "is_tokens"]

B = "B"  # the batch dimension in shapes


class ShapeProblem(ValueError):
    """Raised by a shape rule; the checker turns it into a ShapeMismatch at the call's span."""


def fmt(shape) -> str:
    """A shape as users read it: `[batch, 32]`; a marker entry (graphs, tokens) by its own str."""
    return "[" + ", ".join("batch" if d == B else str(d) for d in shape) + "]"


def features(in_shape) -> int | None:
    """The feature count of a `[batch, features]` input (None when unknown); ShapeProblem otherwise."""
    if in_shape is None:
        return None
    if len(in_shape) != 2 or is_graph(in_shape) or is_tokens(in_shape):
        raise ShapeProblem(f"expects inputs of shape [batch, features], got {fmt(in_shape)}")
    return in_shape[1]


def broadcast(a, b):
    """numpy broadcasting of two shapes ("B" only matches "B" or 1); None when they do not broadcast."""
    if a == b:
        return a
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(y if x == 1 else x)
    return tuple(reversed(out))
