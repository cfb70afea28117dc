"""Text: `text.jsonl` and `text.lines` data, their tokenizers, and the `transformer` encoder (declared in
components/catalog_text.py; docs/text.md). Importing this module costs torch only: `tokenizers` and
`transformers` are imported where they are used.

Data. x holds token ids [examples, max_length] as a long tensor: [CLS] the text's tokens [SEP], truncated
to max_length, padded with [PAD], whose id is 0. y is one-hot [examples, classes] (float), the classes the
sorted labels. A tokenizer is trained on the train split's texts (and `corpus`), deterministically: the
same files give the same ids in every process (WordPiece's training order is pinned, below), or loaded
from a tokenizer.json. `info` carries `classes`, `task_names`, `tokenizer_json` (the tokenizer as
`Tokenizer.to_str()`), `special` (ids of pad, unk, cls, sep, mask; None where a loaded tokenizer has
none), `vocab_size` and `max_length`; the run directory gets the tokenizer as `tokenizer.json`.

Encoders. `forward(x, attention=None, tokens=False)` is the contract the auxiliary objectives rely on:
x ids [batch, length] (long, or floats holding integers: rounded); padding (id 0) is never attended to;
`attention`, a 0/1 tensor [batch, length, length] or [length, length], says which keys j each query i may
attend to (1: it may), replacing full attention; `tokens=True` returns the last hidden states
[batch, length, hidden], else the pooled [batch, hidden]. Attention is transformers' "eager"
implementation: the hypergradient differentiates the loss twice, which fused kernels do not support.

    >>> texts = ["a good film", "a bad film", "good", "bad"]
    >>> tok, special = train_tokenizer(texts, "wordpiece", 60, True)
    >>> encode(tok, ["a good film"], special, 6).tolist()[0][0] == special["cls"], special["pad"]
    (True, 0)
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mptc.components.catalog_text import (SPECIAL, TRAINED_SPECIAL, by_split, classes_of, min_vocab, read_jsonl,
                                          read_lines, tokenizer_layout)
from mptc.components.datafiles import DataProblem, shown, split_files
from mptc.components.textshapes import Tokens
from mptc.errors import RunError
from mptc.runtime.datasets import Dataset

__all__ = ["text_jsonl", "text_lines", "train_tokenizer", "load_tokenizer", "encode", "transformer",
           "TransformerEncoder", "attention_mask", "write_tokenizers"]


# ---- data ----------------------------------------------------------------------------------------
def text_jsonl(path: str = "", text: str = "text", label: str = "label", split_by=None, train: str = "",
               val: str = "", test: str = "", tokenizer: str = "wordpiece", tokenizer_path: str = "",
               vocab: int = 4000, max_length: int = 64, lowercase: bool = True, corpus: str = "",
               labels=None, seed: int = 0) -> Dataset:
    """Labelled text from JSON lines (module docstring): split "all" (a spec's split clause splits it), the
    splits a `split_by` field names, or one file per split."""
    files = split_files({"path": path, "train": train, "val": val, "test": test, "split_by": split_by})
    rows = {split: read_jsonl(file, text, label, split_by) for split, file in files.items()}
    classes = classes_of(rows)
    if split_by:
        r = rows["all"]
        parts = {s: ([r.texts[i] for i in idx], [r.labels[i] for i in idx]) for s, idx in by_split(r).items()}
    else:
        parts = {s: (r.texts, r.labels) for s, r in rows.items()}
    if tokenizer_path:
        if corpus:
            raise DataProblem("corpus is text a trained tokenizer learns from; with tokenizer_path none is trained")
        tok, special = load_tokenizer(tokenizer_path)
        size = tokenizer_layout(tokenizer_path)["vocab_size"]
    else:
        learn = parts.get("train", parts.get("all"))
        if learn is None:
            raise DataProblem(f"the tokenizer is trained on the train split, and there is none (splits: "
                              f"{', '.join(parts)}): give one, or tokenizer_path")
        extra = read_lines(corpus, "corpus") if corpus else []
        tok, special = train_tokenizer([*learn[0], *extra], tokenizer, vocab, lowercase)
        size = tok.get_vocab_size()
        if size > vocab:
            raise DataProblem(f"the {tokenizer} tokenizer needs {size} tokens for the training text's characters "
                              f"alone, more than vocab: {vocab}: raise vocab")
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, (texts, names) in parts.items():
        y = torch.zeros(len(names), len(classes))
        y[torch.arange(len(names)), torch.tensor([index[c] for c in names], dtype=torch.long)] = 1.0
        splits[split] = (encode(tok, texts, special, max_length), y)
    if labels is not None:                       # a label budget: a random subset of the train split
        if "train" not in splits:
            raise DataProblem("labels keeps a subset of the train split, and there is none")
        x, y = splits["train"]
        if labels > len(x):
            raise DataProblem(f"labels: {labels} exceeds the {len(x)} examples of the train split")
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:labels].sort().values
        splits["train"] = (x[keep], y[keep])
    info = {"source": "text.jsonl", "files": {s: str(f) for s, f in files.items()}, "classes": classes,
            "task_names": [str(c) for c in classes], "text": text, "label": label,
            "tokenizer": tokenizer_path or tokenizer, **_tokenizer_info(tok, special, size, max_length)}
    return Dataset(splits, info)


def text_lines(path: str, of: Dataset, seed: int = 0) -> Dataset:
    """Unlabelled documents, one per non-blank line of a .txt (.txt.gz) file, tokenized with `of`'s
    tokenizer to `of`'s max_length: x token ids, y [examples, 0]; split "all"."""
    info = of.info
    if not isinstance(info.get("tokenizer_json"), str):
        raise DataProblem("of must be text data (text.jsonl), whose tokenizer text.lines uses")
    tok = _tokenizers("text.lines").Tokenizer.from_str(info["tokenizer_json"])
    texts = read_lines(path)
    x = encode(tok, texts, info["special"], info["max_length"])
    own = {k: info[k] for k in ("tokenizer_json", "special", "vocab_size", "max_length")}
    return Dataset({"all": (x, torch.zeros(len(x), 0))},
                   {"source": "text.lines", "files": {"all": str(path)}, "classes": [], "task_names": [],
                    "tokenizer": info.get("tokenizer"), **own})


def _tokenizer_info(tok, special: dict, size: int, max_length: int) -> dict:
    return {"tokenizer_json": tok.to_str(), "special": dict(special), "vocab_size": int(size),
            "max_length": int(max_length)}


# ---- tokenizers ----------------------------------------------------------------------------------
def _tokenizers(who: str):
    try:
        import tokenizers
    except ImportError:
        raise RunError(f"{who} needs the tokenizers package (it comes with transformers): "
                       f"pip install tokenizers") from None
    return tokenizers


def train_tokenizer(texts: list[str], kind: str, vocab: int, lowercase: bool):
    """(tokenizer, special ids) trained on `texts`: BERT's WordPiece (`kind="wordpiece"`: BERT's
    normalizer and pre-tokenizer) or byte-level BPE (`"bpe"`), at most `vocab` tokens, the special tokens
    [PAD] (id 0), [UNK], [CLS], [SEP], [MASK] first; [CLS] text [SEP] as its post-processor.

    Deterministic: the tokenizers library numbers a WordPiece trainer's continuation symbols (`##a`) in
    hash-map order, which differs between processes, and breaks ties between equally frequent merges by
    those numbers. Here they are numbered first, sorted (given as special tokens to the trainer, then
    made ordinary vocabulary again), so every merge is decided the same way. Byte-level BPE starts from
    the 256 bytes in order and needs nothing more."""
    tk = _tokenizers("a text tokenizer")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
    names = [TRAINED_SPECIAL[r] for r in SPECIAL]
    if vocab < min_vocab(kind):
        raise DataProblem(f"a {kind} tokenizer needs vocab >= {min_vocab(kind)}, got {vocab}")
    try:
        if kind == "wordpiece":
            norm = normalizers.BertNormalizer(lowercase=lowercase)
            pre = pre_tokenizers.BertPreTokenizer()
            inner = set()                  # the characters after a word's first: each a `##c` symbol
            for start in range(0, len(texts), 512):   # (both steps act per character: texts joined by
                chunk = norm.normalize_str("\n".join(texts[start:start + 512]))  # whitespace stay apart)
                for word, _ in pre.pre_tokenize_str(chunk):
                    inner.update(word[1:])
            continuing = [f"##{c}" for c in sorted(inner)]
            tok = tk.Tokenizer(models.WordPiece(unk_token="[UNK]"))
            tok.normalizer, tok.pre_tokenizer = norm, pre
            trainer = trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=names + continuing,
                                                show_progress=False)
            tok.train_from_iterator(texts, trainer)
            learned = tok.get_vocab()
            tok = tk.Tokenizer(models.WordPiece(vocab=learned, unk_token="[UNK]"))
            tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
            tok.add_special_tokens(names)
        elif kind == "bpe":
            tok = tk.Tokenizer(models.BPE(unk_token="[UNK]"))
            tok.normalizer = normalizers.Sequence([normalizers.NFC(), *([normalizers.Lowercase()] if lowercase
                                                                        else [])])
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=names, show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tok.train_from_iterator(texts, trainer)
        else:
            raise DataProblem(f"unknown tokenizer '{kind}' (wordpiece or bpe)")
    except DataProblem:
        raise
    except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exceptions
        raise DataProblem(f"training the {kind} tokenizer failed ({type(e).__name__}: {e})") from None
    special = {r: tok.token_to_id(TRAINED_SPECIAL[r]) for r in SPECIAL}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", special["cls"]), ("[SEP]", special["sep"])])
    if special["pad"] != 0:                      # the trainer puts the special tokens first, [PAD] first
        raise DataProblem(f"the trained tokenizer's [PAD] has id {special['pad']}, not 0")
    return tok, special


def load_tokenizer(path: str):
    """(tokenizer, special ids) from a folder holding a tokenizer.json (or that file): read by the
    tokenizers library (plain JSON: nothing in it runs), the special tokens as tokenizer_layout finds them."""
    layout = tokenizer_layout(path)
    tk = _tokenizers("tokenizer_path")
    try:
        tok = tk.Tokenizer.from_file(layout["file"])
    except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exceptions
        raise DataProblem(f"{shown(layout['file'])}: not a tokenizer the tokenizers library reads ({e})") from None
    return tok, layout["special"]


def encode(tok, texts: list[str], special: dict, max_length: int) -> torch.Tensor:
    """Token ids [len(texts), max_length] (long): [CLS] tokens [SEP], truncated, padded with the pad id."""
    tok.no_truncation()
    tok.no_padding()
    try:
        encoded = tok.encode_batch(list(texts), add_special_tokens=False)
    except Exception as e:  # noqa: BLE001
        raise DataProblem(f"the tokenizer failed on the text ({type(e).__name__}: {e})") from None
    out = np.full((len(encoded), max_length), special["pad"], dtype=np.int64)
    out[:, 0] = special["cls"]
    for i, enc in enumerate(encoded):
        ids = enc.ids[:max_length - 2]
        out[i, 1:len(ids) + 1] = ids
        out[i, len(ids) + 1] = special["sep"]
    return torch.from_numpy(out)


def write_tokenizers(out, data) -> list[str]:
    """Writes each distinct tokenizer of the run's data (`info["tokenizer_json"]`) into the run directory:
    the first data declaration's as `tokenizer.json`, another data's own as `tokenizer.NAME.json`."""
    found = {}
    for name, ds in data.sets.items():
        text = ds.info.get("tokenizer_json")
        if isinstance(text, str) and text not in found.values():
            found[name] = text
    written = []
    for i, (name, text) in enumerate(found.items()):
        file = "tokenizer.json" if i == 0 else f"tokenizer.{name}.json"
        (Path(out) / file).write_text(text, encoding="utf-8")
        written.append(file)
    return written


# ---- encoders ------------------------------------------------------------------------------------
def _transformers(who: str):
    try:
        import transformers
    except ImportError:
        raise RunError(f"{who} needs the transformers package: pip install transformers") from None
    from transformers.utils import logging
    logging.disable_progress_bar()
    return transformers


def token_ids(x: torch.Tensor) -> torch.Tensor:
    """x as long token ids: floats holding integers (mptc's data may be float) are rounded."""
    return (x.round() if x.is_floating_point() else x).long()


def attention_mask(keys: torch.Tensor, attention: torch.Tensor | None, dtype: torch.dtype):
    """The `attention_mask` a transformers encoder takes: `keys` [batch, length] (bool: may be attended to,
    i.e. not padding) alone as the usual 0/1 [batch, length] mask when `attention` is None; else combined
    with `attention` ([batch, length, length] or [length, length], nonzero: query i may attend key j) into
    the additive float mask [batch, 1, length, length] (0 kept, the dtype's minimum masked) that transformers
    5 passes to the attention unchanged (transformers 4 takes the 0/1 [batch, length, length] form)."""
    if attention is None:
        return keys.long()
    batch, length = keys.shape
    if attention.dim() not in (2, 3) or tuple(attention.shape[-2:]) != (length, length) or \
            (attention.dim() == 3 and attention.shape[0] not in (1, batch)):
        raise ValueError(f"attention must be [batch, length, length] or [length, length] with batch {batch}, "
                         f"length {length}; got {list(attention.shape)}")
    keep = (attention.to(keys.device) != 0) & keys[:, None, :]
    if _transformers_major() < 5:
        return keep.to(dtype)
    return torch.zeros(keep.shape, dtype=dtype, device=keys.device).masked_fill(~keep, torch.finfo(dtype).min)[:, None]


@functools.cache
def _transformers_major() -> int:
    import transformers
    return int(transformers.__version__.split(".")[0])


def pooled(hidden: torch.Tensor, keys: torch.Tensor, pool: str) -> torch.Tensor:
    """[batch, hidden] from the last hidden states: the first position's ([CLS]), or the mean over `keys`."""
    if pool == "first":
        return hidden[:, 0]
    weights = keys.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TransformerEncoder(nn.Module):
    """A transformers encoder of token ids with the forward contract of the module docstring."""

    def __init__(self, model: nn.Module, pool: str, pad: int = 0):
        super().__init__()
        self.model, self.pool, self.pad = model, pool, pad

    def forward(self, x: torch.Tensor, attention: torch.Tensor | None = None, tokens: bool = False) -> torch.Tensor:
        ids = token_ids(x)
        keys = ids != self.pad
        dtype = next(self.model.parameters()).dtype
        hidden = self.model(input_ids=ids, attention_mask=attention_mask(keys, attention, dtype)).last_hidden_state
        return hidden if tokens else pooled(hidden, keys, self.pool)


def transformer(layers: int = 2, hidden: int = 64, heads: int = 2, intermediate=None, dropout: float = 0.1,
                pool: str = "first", max_length=None, in_dim=None) -> TransformerEncoder:
    """A RobertaModel (no pooler layer) initialised at random, its vocabulary and positions from the input's
    Tokens (`in_dim`: the checker's), in train mode."""
    if not isinstance(in_dim, Tokens):
        raise RunError(f"transformer reads token ids (text data: text.jsonl, text.lines), not inputs of "
                       f"{in_dim if in_dim is not None else 'unknown'} shape")
    if hidden % heads:
        raise RunError(f"transformer: hidden: {hidden} is not a multiple of heads: {heads}")
    transformers = _transformers("transformer(...)")
    length = max(max_length or 0, in_dim.length)
    config = transformers.RobertaConfig(
        vocab_size=in_dim.vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, max_position_embeddings=length + 2, type_vocab_size=1,
        pad_token_id=0, bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    model = transformers.RobertaModel(config, add_pooling_layer=False)
    model.train()
    return TransformerEncoder(model, pool)
