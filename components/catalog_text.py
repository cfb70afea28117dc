"""Text: the `text.jsonl` and `text.lines` datasets and the `transformer` encoder, declared with their shape
rules (docs/text.md); runtime/text.py implements them. components/catalog.py imports this module last.

Torch-, transformers- and tokenizers-free, like the rest of the catalog: `mptc check` reads the data files
as JSON lines and a tokenizer folder's `tokenizer.json` as JSON, nothing more. The file readers here are
the ones the runtime uses too, so what the checker accepts is what a run loads, and every problem is a
DataProblem naming the file and the line (the checker reports it at the call, the runtime as
`mptc: error: data 'NAME': ...`).

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "d.jsonl"), "w") as f:
    ...     _ = f.write('{"text": "good", "label": "pos"}\\n{"text": "bad", "label": "neg"}\\n')
    >>> rows = read_jsonl(os.path.join(folder, "d.jsonl"), "text", "label")
    >>> rows.texts, classes_of({"all": rows})
    (['good', 'bad'], ['neg', 'pos'])
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path

import attrs

from mptc.components.datafiles import DataProblem, shown, split_files
from mptc.components.registry import DATASETS, MODELS, Param
from mptc.components.shapes import B, ShapeProblem, Tokens, fmt, is_tokens
from mptc.errors import did_you_mean

__all__ = ["SPECIAL", "TRAINED_SPECIAL", "Rows", "read_jsonl", "read_lines", "classes_of", "by_split",
           "tokenizer_layout", "min_vocab"]

SPECIAL = ("pad", "unk", "cls", "sep", "mask")      # info["special"]'s keys, in the trained vocabulary's order
TRAINED_SPECIAL = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
_CONVENTIONAL = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>", "<cls>"),
                 "sep": ("[SEP]", "</s>", "<sep>"), "mask": ("[MASK]", "<mask>")}
SPLITS = ("train", "val", "test")
JSONL = (".jsonl", ".ndjson")
LINES = (".txt",)
BYTES = 256                                          # a byte-level BPE's initial alphabet


# ---- reading files -------------------------------------------------------------------------------
def _kind(path) -> str:
    """The suffix that says the format, below a .gz: `.jsonl` for `a.jsonl.gz`."""
    name = Path(path).name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return os.path.splitext(name)[1]


def _format(path, allowed: tuple[str, ...], who: str) -> None:
    if _kind(path) not in allowed:
        want = " or ".join(f"{s} ({s}.gz)" for s in allowed)
        raise DataProblem(f"{shown(path)}: {who} reads {want} files, not '{_kind(path) or Path(path).name}'")


def _open(path):
    """A text file as UTF-8 lines; `.gz` files decompressed on the fly."""
    if str(path).lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _lines(path):
    """(line number, text) of a file, an unreadable, undecodable or truncated file a DataProblem naming it
    and the line it stopped at."""
    number = 0
    try:
        with _open(path) as f:
            for number, text in enumerate(f, 1):
                yield number, text
    except DataProblem:
        raise
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as e:
        at = f" at line {number + 1}" if number else ""
        raise DataProblem(f"{shown(path)}: cannot read it{at} ({type(e).__name__}: {e})") from None


@attrs.define
class Rows:
    """What a jsonl file holds: each row's text (None when not kept), label and (split_by) split; the
    first label of each kind (str, int, bool) with its line, for a mixed-kinds error."""

    texts: list | None
    labels: list
    splits: list | None
    kinds: dict
    path: str = ""


def _json_type(value) -> str:
    return {str: "a string", bool: "true/false", int: "a number", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _field(path, number: int, row: dict, name: str, role: str):
    if name not in row:
        guess = did_you_mean(name, row)
        has = ", ".join(row) or "no fields"
        raise DataProblem(f"{shown(path)}: line {number} has no {role} field '{name}' (it has: {has})"
                          + (f"; did you mean '{guess}'?" if guess else ""))
    return row[name]


def _label(path, number: int, name: str, value):
    """A label as a class: a string, an integer (an integral float is one) or true/false."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (str, int)) and not (isinstance(value, str) and not value.strip()):
        return value
    what = "empty" if isinstance(value, str) else f"{_json_type(value)} ({json.dumps(value)[:40]})"
    raise DataProblem(f"{shown(path)}: line {number}: label field '{name}' is {what}, not a class "
                      f"(a string or an integer)")


def read_jsonl(path, text: str, label: str, split_by: str | None = None, keep_text: bool = True) -> Rows:
    """Every row of a .jsonl (.jsonl.gz) file, checked: JSON objects (blank lines skipped), the text field a
    non-empty string, the label a class, the split_by field one of train, val, test."""
    _format(path, JSONL, "text.jsonl")
    texts, labels, splits, kinds = [], [], [] if split_by else None, {}
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (ValueError, RecursionError) as e:
            where = f" ({e.msg} at column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
            raise DataProblem(f"{shown(path)}: line {number} is not valid JSON{where}") from None
        if not isinstance(row, dict):
            raise DataProblem(f"{shown(path)}: line {number} is {_json_type(row)}, not a JSON object")
        value = _field(path, number, row, text, "text")
        if not isinstance(value, str):
            raise DataProblem(f"{shown(path)}: line {number}: text field '{text}' holds {_json_type(value)}, "
                              f"not a string")
        if not value.strip():
            raise DataProblem(f"{shown(path)}: line {number}: text field '{text}' is empty")
        cls = _label(path, number, label, _field(path, number, row, label, "label"))
        kinds.setdefault(type(cls).__name__, (number, cls))
        if split_by:
            splits.append(_split(path, number, split_by, _field(path, number, row, split_by, "split_by")))
        if keep_text:
            texts.append(value)
        labels.append(cls)
    if not labels:
        raise DataProblem(f"{shown(path)}: empty: no rows")
    return Rows(texts if keep_text else None, labels, splits, kinds, str(path))


def _split(path, number: int, column: str, value) -> str:
    if isinstance(value, str) and value in SPLITS:
        return value
    guess = did_you_mean(value, SPLITS) if isinstance(value, str) else None
    shown_value = f"'{value}'" if isinstance(value, str) and value else "an empty value" if value in ("", None) \
        else _json_type(value)
    raise DataProblem(f"{shown(path)}: line {number}: split_by field '{column}' holds {shown_value}, not one of "
                      f"{', '.join(SPLITS)}" + (f"; did you mean '{guess}'?" if guess else ""))


def read_lines(path, who: str = "text.lines") -> list[str]:
    """The non-blank lines of a .txt (.txt.gz) file, one document each (their line ends stripped)."""
    _format(path, LINES, who)
    out = [raw.rstrip("\r\n") for _, raw in _lines(path) if raw.strip()]
    if not out:
        raise DataProblem(f"{shown(path)}: no text: every line is blank")
    return out


def classes_of(rows: dict) -> list:
    """The sorted classes of every file's labels (strings, integers or true/false: one kind); at least two."""
    kinds, values = {}, set()
    for r in rows.values():
        values.update(r.labels)
        for kind, (number, value) in r.kinds.items():
            kinds.setdefault(kind, (r.path, number, value))
    if len(kinds) > 1:
        (k1, (p1, n1, v1)), (k2, (p2, n2, v2)) = sorted(kinds.items())[:2]
        raise DataProblem(f"the labels mix kinds: {json.dumps(v1)} ({shown(p1)}, line {n1}) and "
                          f"{json.dumps(v2)} ({shown(p2)}, line {n2}); a label is a string or an integer, "
                          f"the same kind throughout")
    classes = sorted(values)
    if len(classes) < 2:
        files = ", ".join(shown(r.path) for r in rows.values())
        raise DataProblem(f"{files}: every label is {json.dumps(classes[0])}: one class only, nothing to tell apart")
    return classes


def by_split(rows: Rows) -> dict[str, list[int]]:
    """The row indices of each split a split_by field names, in the order train, val, test."""
    out = {s: [] for s in SPLITS}
    for i, s in enumerate(rows.splits):
        out[s].append(i)
    return {s: idx for s, idx in out.items() if idx}


_SCANNED: dict = {}  # (file, size, mtime, fields) -> Rows without texts: `mptc run` checks, then loads


def _scan(path, text, label, split_by) -> Rows:
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns, text, label, split_by)
    if key not in _SCANNED:
        if len(_SCANNED) >= 16:
            _SCANNED.pop(next(iter(_SCANNED)))
        _SCANNED[key] = read_jsonl(path, text, label, split_by, keep_text=False)
    return _SCANNED[key]


# ---- tokenizer folders ---------------------------------------------------------------------------
def _tokenizer_file(path) -> Path:
    p = Path(path)
    if p.is_dir():
        if not (p / "tokenizer.json").is_file():
            raise DataProblem(f"{shown(p)}: no tokenizer.json in it (a tokenizers library Tokenizer's "
                              f"save(), or the folder a transformers fast tokenizer's save_pretrained writes)")
        return p / "tokenizer.json"
    if p.suffix.lower() != ".json":
        raise DataProblem(f"{shown(p)}: tokenizer_path names a folder holding tokenizer.json (or that file)")
    return p


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataProblem(f"{shown(path)}: cannot read it as JSON ({type(e).__name__}: {e})") from None


def _named(folder: Path) -> dict:
    """The special tokens a transformers tokenizer folder names (tokenizer_config.json,
    special_tokens_map.json): {"pad": "[PAD]", ...}."""
    out = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        found = _read_json(folder / file) if (folder / file).is_file() else {}
        for role in SPECIAL:
            value = found.get(f"{role}_token") if isinstance(found, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and role not in out:
                out[role] = value
    return out


def tokenizer_layout(path) -> dict:
    """What a tokenizer folder (or tokenizer.json) declares, read as JSON: `file`, `vocab_size` (the largest
    id + 1) and `special` ({pad, unk, cls, sep, mask} ids, None where it has none). The padding token must
    have id 0 and [CLS], [SEP] (or <s>, </s>) must exist: sequences are [CLS] tokens [SEP], padded with 0."""
    file = _tokenizer_file(path)
    spec = _read_json(file)
    model = spec.get("model") if isinstance(spec, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    ids: dict[str, int] = {}
    if isinstance(vocab, dict):
        ids.update({str(k): v for k, v in vocab.items() if isinstance(v, int)})
    elif isinstance(vocab, list):                                   # Unigram: [[piece, score], ...]
        ids.update({str(e[0]): i for i, e in enumerate(vocab) if isinstance(e, list) and e})
    for added in spec.get("added_tokens") or () if isinstance(spec, dict) else ():
        if isinstance(added, dict) and isinstance(added.get("id"), int):
            ids[str(added.get("content"))] = added["id"]
    if not ids:
        raise DataProblem(f"{shown(file)}: holds no vocabulary (its model.vocab): not a tokenizers tokenizer.json")
    named = _named(file.parent) if Path(path).is_dir() else {}
    special = {}
    for role in SPECIAL:
        names = (named[role],) if role in named else _CONVENTIONAL[role]
        special[role] = next((ids[n] for n in names if n in ids), None)
    pad = named.get("pad") or next((n for n in _CONVENTIONAL["pad"] if n in ids), None)
    if special["pad"] is None:
        raise DataProblem(f"{shown(file)}: has no padding token ([PAD] or <pad>): mptc pads sequences with it")
    if special["pad"] != 0:
        raise DataProblem(f"{shown(file)}: its padding token '{pad}' has id {special['pad']}; mptc's text data "
                          f"pad with id 0 (a BERT-style vocabulary, [PAD] first)")
    for role in ("cls", "sep"):
        if special[role] is None:
            raise DataProblem(f"{shown(file)}: has no {role} token ({' or '.join(_CONVENTIONAL[role])}): "
                              f"sequences are [CLS] tokens [SEP]")
    top = max(ids.values())
    if min(ids.values()) < 0 or top >= 2 * len(ids) + 1000:  # the embedding has a row per id up to the largest
        raise DataProblem(f"{shown(file)}: its token ids run from {min(ids.values())} to {top} for {len(ids)} tokens: "
                          f"not a vocabulary of consecutive ids (the embedding would need {top + 1} rows)")
    return {"file": str(file), "vocab_size": top + 1, "special": special}


def min_vocab(tokenizer: str) -> int:
    """The smallest vocabulary a trained tokenizer can have: bpe's 256 bytes and the 5 special tokens;
    wordpiece's depends on the text's characters (checked when it is trained)."""
    return BYTES + len(SPECIAL) if tokenizer == "bpe" else len(SPECIAL) + 1


# ---- shape rules ---------------------------------------------------------------------------------
def _jsonl_shape(args, _):
    try:
        files = split_files(args)
        scans = {split: _scan(f, args["text"], args["label"], args["split_by"]) for split, f in files.items()}
        classes = classes_of(scans)
        splits = tuple(by_split(scans["all"])) if args["split_by"] else tuple(s for s in files if s != "all")
        if args["tokenizer_path"]:
            if args["corpus"]:
                raise DataProblem("corpus is text a trained tokenizer learns from; with tokenizer_path none is "
                                  "trained: drop one of them")
            vocab = tokenizer_layout(args["tokenizer_path"])["vocab_size"]
        else:
            vocab = args["vocab"]
            if vocab < min_vocab(args["tokenizer"]):
                raise DataProblem(f"a {args['tokenizer']} tokenizer needs vocab >= {min_vocab(args['tokenizer'])} "
                                  f"({BYTES} bytes and {len(SPECIAL)} special tokens), got {vocab}")
            if splits and "train" not in splits:
                raise DataProblem(f"the tokenizer is trained on the train split, and there is none (splits: "
                                  f"{', '.join(splits)}): give one, or tokenizer_path")
            if args["corpus"]:
                _format(args["corpus"], LINES, "corpus")
    except DataProblem as e:
        raise ShapeProblem(str(e)) from None
    out = {"x": (B, Tokens(args["max_length"], vocab)), "y": (B, len(classes))}
    return {**out, "splits": splits} if splits else out


def _lines_shape(args, _):
    x = args["of"]["x"]
    if not is_tokens(x):
        raise ShapeProblem(f"of must name text data (text.jsonl), whose tokenizer it uses; its x is {fmt(x)}")
    try:
        _format(args["path"], LINES, "text.lines")
    except DataProblem as e:
        raise ShapeProblem(str(e)) from None
    return {"x": x, "y": (B, 0)}


def _transformer_shape(args, in_shape):
    if args["hidden"] % args["heads"]:
        raise ShapeProblem(f"has hidden: {args['hidden']}, not a multiple of heads: {args['heads']} (each head "
                           f"attends with hidden / heads features)")
    if in_shape is not None:
        if not is_tokens(in_shape):
            raise ShapeProblem(f"expects token ids (text data: text.jsonl, text.lines), got {fmt(in_shape)}")
        length = in_shape[1].length
        if args["max_length"] is not None and args["max_length"] < length:
            raise ShapeProblem(f"has max_length: {args['max_length']}, shorter than its input's {length} tokens")
    return (B, args["hidden"])


# ---- registrations -------------------------------------------------------------------------------
_SEED = Param("seed", "int", 0, doc="the random split of the spec's split clause")
DATASETS.register("text.jsonl", [
    Param("path", "path", "", doc="a .jsonl or .jsonl.gz file, one JSON object per line"),
    Param("text", "str", "text", doc="the field holding each example's text"),
    Param("label", "str", "label", doc="the field holding its class: a string or an integer"),
    Param("split_by", "str", None, doc="a field naming each row's split: train, val or test"),
    *[Param(s, "path", "", doc=f"the {s} split's file (instead of path)") for s in SPLITS],
    Param("tokenizer", "choice", "wordpiece", choices=("wordpiece", "bpe"),
          doc="the tokenizer trained on the train split's texts (and corpus): BERT's WordPiece or byte-level BPE"),
    Param("tokenizer_path", "path", "", doc="a folder holding a tokenizer.json (tokenizers' save, or a "
          "transformers tokenizer folder) used instead of training one"),
    Param("vocab", "int", 4000, min=2, max=10 ** 7, doc="the trained tokenizer's vocabulary size (at most)"),
    Param("max_length", "int", 64, min=3, max=10 ** 6,
          doc="tokens per example: [CLS] text [SEP], truncated, then padded with [PAD] (id 0)"),
    Param("lowercase", "bool", True, doc="the trained tokenizer lowercases (and, wordpiece, strips accents)"),
    Param("corpus", "path", "", doc="a .txt or .txt.gz file, one document per line, the trained tokenizer "
          "learns from too"),
    Param("labels", "int", None, min=1, doc="a label budget: keep this many examples of the train split, a "
          "random subset drawn with seed (the tokenizer still learns from every train text)"),
    _SEED,
], target="mptc.runtime.text:text_jsonl", shape=_jsonl_shape,
    doc="Labelled text from JSON lines: x token ids [batch, max_length] (long), y one-hot classes; split all, "
        "by a field or by file.")
DATASETS.register("text.lines", [
    Param("path", "path", doc="a .txt or .txt.gz file, one document per line (blank lines skipped)"),
    Param("of", "dataset", doc="the text data (text.jsonl) whose tokenizer and max_length it uses"),
    _SEED,
], target="mptc.runtime.text:text_lines", shape=_lines_shape,
    doc="Unlabelled text, one document per line, tokenized like `of`: x token ids, y [batch, 0]; split all.")
MODELS.register("transformer", [
    Param("layers", "int", 2, min=1), Param("hidden", "int", 64, min=1), Param("heads", "int", 2, min=1),
    Param("intermediate", "int", None, min=1, doc="the feed-forward width (default 4 * hidden)"),
    Param("dropout", "float", 0.1, min=0, max=1, doc="on the embeddings, attention and hidden states"),
    Param("pool", "choice", "first", choices=("first", "mean"),
          doc="the [CLS] position's last hidden state, or the mean over the non-padding tokens"),
    Param("max_length", "int", None, min=1, doc="positions it has (default: its input's length)"),
], target="mptc.runtime.text:transformer", shape=_transformer_shape,
    doc="A transformer encoder of token ids (transformers' RobertaModel, eager attention, initialised at "
        "random), pooled to [batch, hidden].")
