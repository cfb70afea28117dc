"""Compile-time shapes of text data: token ids. Torch-free, like the catalog that uses it.

A text dataset's ``x`` has the shape ``(B, Tokens(length, vocab))``: a batch of ``length`` token ids,
each below ``vocab`` (an upper bound: a tokenizer trained at run time may end up smaller). The checker
records that second entry as the encoder's ``in_dim``, so ``transformer`` is built with the right
vocabulary and positions, and dense models reject it (docs/text.md).

    >>> str(Tokens(64, 4000))
    'tokens(64, vocab 4000)'
    >>> is_tokens(("B", Tokens(64, 4000))), is_tokens(("B", 64)), is_tokens(None)
    (True, False, False)
"""
from __future__ import annotations

import attrs

__all__ = ["Tokens", "is_tokens"]


@attrs.frozen
class Tokens:
    """The feature entry of a batch of token-id sequences: their length and the vocabulary size (every
    id is below it; the padding id is 0)."""

    length: int
    vocab: int

    def __str__(self) -> str:
        return f"tokens({self.length}, vocab {self.vocab})"


def is_tokens(shape) -> bool:
    """Whether a data shape is a batch of token-id sequences."""
    return shape is not None and len(shape) == 2 and isinstance(shape[1], Tokens)
