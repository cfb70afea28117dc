"""Text (docs/text.md): `text.jsonl` and `text.lines` data with a trained (deterministic) or loaded tokenizer,
the `(B, Tokens(length, vocab))` shape, the `transformer` encoder and `hf` on token ids with the encoders'
`forward(x, attention=None, tokens=False)` contract (a custom attention mask that really reaches the
attention, padding always masked, twice differentiable), every bad input a named error (exit 2, no
traceback), and a whole `mptc run` that leaves the tokenizer beside the run."""
import gzip
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mptc.cli import main
from mptc.errors import SpecErrors
from mptc.compiler.lower import compile_spec
from mptc.components.datafiles import DataProblem
from mptc.components.shapes import B, Tokens, fmt, is_tokens
from mptc.runtime.data import _build
from mptc.runtime.text import encode, load_tokenizer, text_jsonl, text_lines, transformer

transformers = pytest.importorskip("transformers")

POS, NEG = ["good", "great", "lovely", "superb"], ["bad", "awful", "poor", "boring"]
FILLER = ["the", "film", "was", "a", "plot", "and", "actors", "very", "story", "it"]


def rows(n=90, seed=0, labels=("pos", "neg"), split=True, val_word=None):
    """Reviews: filler words and one word of the label's sentiment; the first third train, then val, test."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = labels[rng.randrange(len(labels))]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 7))]
        words.append(rng.choice(POS if label == labels[0] else NEG))
        rng.shuffle(words)
        row = {"text": " ".join(words), "label": label}
        if split:
            row["split"] = "train" if i < n // 3 else "val" if i < 2 * n // 3 else "test"
            if val_word and row["split"] != "train":
                row["text"] += f" {val_word}"
        out.append(row)
    return out


def write_jsonl(path: Path, items, lines=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in items) if lines is None else lines
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


SPEC = """spec text_tiny "a transformer on labelled text, a learned L2 strength"
data ft = {data}
model encoder = {encoder}
head pt_head = linear(out: 2)
head ft_head = linear(out: 2)
meta log_lambda: scalar = -4.0
pretrain {{
  data {pt} batch 16
  loss mean(ce(pt_head(encoder(x)), y)) + exp(log_lambda) * l2(encoder)
  optimizer adam(lr: 1e-3)
  steps 2
}}
finetune {{
  data ft.train batch 16
  loss mean(ce(ft_head(encoder(x)), y))
  unroll 1 update ft_head
}}
meta_objective mean(ce(ft_head(encoder(x)), y)) on ft.val
meta_optimizer adam(lr: 0.1)
train meta_steps 2 warmup 1 seed 0 device cpu
evaluate finetune(epochs: 3, lr: 3e-3, metric: top1, seeds: 2) against no_pretrain
{extra}"""
DATA = 'text.jsonl(path: "reviews.jsonl", split_by: "split", vocab: 100, max_length: 12)'
ENCODER = "transformer(layers: 1, hidden: 16, heads: 2)"


@pytest.fixture
def proj(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "reviews.jsonl", rows())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def spec(root: Path, data=DATA, encoder=ENCODER, pt="ft.train", extra="", name="s.mpt") -> Path:
    path = root / name
    path.write_text(SPEC.format(data=data, encoder=encoder, pt=pt, extra=extra), encoding="utf-8")
    return path


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def built(path: Path) -> dict:
    plan = compile_spec(path.read_text(encoding="utf-8"), str(path))
    sets = {}
    for source in plan.datasets:
        sets[source.name] = _build(source, sets)
    return sets


# ---- the shape -----------------------------------------------------------------------------------
def test_the_tokens_shape_reads_and_reaches_the_factory(proj):
    assert fmt((B, Tokens(64, 4000))) == "[batch, tokens(64, vocab 4000)]"
    assert is_tokens((B, Tokens(3, 9))) and not is_tokens((B, 9))
    plan = compile_spec(spec(proj).read_text(), str(proj / "s.mpt"))
    assert [(m.name, m.in_dim) for m in plan.modules][0] == ("encoder", Tokens(12, 100))
    from mptc.components.registry import input_args
    assert input_args(transformer, Tokens(12, 100)) == {"in_dim": Tokens(12, 100)}


# ---- data ----------------------------------------------------------------------------------------
def test_jsonl_split_by_a_field(proj):
    ds = text_jsonl(str(proj / "reviews.jsonl"), split_by="split", vocab=100, max_length=12)
    assert list(ds.splits) == ["train", "val", "test"]
    x, y = ds.splits["train"]
    assert x.dtype == torch.long and x.shape == (30, 12) and y.shape == (30, 2) and y.dtype == torch.float32
    info = ds.info
    assert info["classes"] == ["neg", "pos"] and info["task_names"] == ["neg", "pos"]
    assert info["special"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert info["vocab_size"] <= 100 and int(x.max()) < info["vocab_size"]
    assert (x[:, 0] == 2).all() and torch.equal(y.sum(1), torch.ones(30))
    lengths = (x != 0).sum(1)
    assert all(x[i, n - 1] == 3 for i, n in enumerate(lengths.tolist()))         # [SEP] then padding
    first = rows()[0]
    assert y[0].tolist() == ([0.0, 1.0] if first["label"] == "pos" else [1.0, 0.0])
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(info["tokenizer_json"])
    assert tok.encode(first["text"]).ids == x[0, :lengths[0]].tolist()           # its post-processor agrees


def test_data_keeps_long_ids_on_the_device_in_any_dtype(proj):
    from mptc.runtime.data import _placed
    ids = torch.tensor([[2, 5, 3, 0]])
    assert _placed(ids, torch.device("cpu"), torch.float64).dtype == torch.long


def test_split_all_and_the_split_clause(proj):
    write_jsonl(proj / "all.jsonl", rows(split=False))
    sets = built(spec(proj, data='text.jsonl(path: "all.jsonl", vocab: 100, max_length: 12) '
                                 'split train 0.5, val 0.25, test 0.25'))
    assert {k: len(v[0]) for k, v in sets["ft"].splits.items()} == {"train": 45, "val": 23, "test": 22}


def test_split_files_gzip_and_integer_labels(proj):
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        write_jsonl(proj / f"{split}.jsonl.gz", [{"body": r["text"], "y": 1 if r["label"] == "pos" else 0}
                                                  for r in rows(30, seed, split=False)])
    data = ('text.jsonl(train: "train.jsonl.gz", val: "val.jsonl.gz", test: "test.jsonl.gz", text: "body", '
            'label: "y", vocab: 100, max_length: 10)')
    ds = built(spec(proj, data=data))["ft"]
    assert list(ds.splits) == ["train", "val", "test"] and ds.info["classes"] == [0, 1]
    assert ds.info["task_names"] == ["0", "1"] and ds.splits["test"][0].shape == (30, 10)


def test_the_tokenizer_learns_from_the_train_split_and_the_corpus_only(proj):
    write_jsonl(proj / "leak.jsonl", rows(val_word="xylophone"))
    alone = text_jsonl(str(proj / "leak.jsonl"), split_by="split", vocab=200)
    assert "xylophone" not in json.loads(alone.info["tokenizer_json"])["model"]["vocab"]
    (proj / "corpus.txt").write_text("xylophone music\n\n" * 40, encoding="utf-8")
    more = text_jsonl(str(proj / "leak.jsonl"), split_by="split", vocab=200, corpus=str(proj / "corpus.txt"))
    assert "xylophone" in json.loads(more.info["tokenizer_json"])["model"]["vocab"]


TRAIN_IN_A_PROCESS = """
import hashlib, json, sys
from mptc.runtime.text import text_jsonl
ds = text_jsonl(sys.argv[1], split_by="split", vocab=120, tokenizer=sys.argv[2])
print(hashlib.sha256(ds.info["tokenizer_json"].encode()).hexdigest())
"""


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_tokenizers_are_trained_deterministically(proj, kind):
    """The same files give the same tokenizer and ids, in this process and in another one (the tokenizers
    library's hash maps are seeded differently each time)."""
    vocab = 120 if kind == "wordpiece" else 300
    write_jsonl(proj / "many.jsonl", rows(300, seed=5))
    a, b = (text_jsonl(str(proj / "many.jsonl"), split_by="split", vocab=vocab, tokenizer=kind) for _ in range(2))
    assert a.info["tokenizer_json"] == b.info["tokenizer_json"]
    assert all(torch.equal(a.splits[s][0], b.splits[s][0]) for s in a.splits)
    if kind == "wordpiece":
        code = TRAIN_IN_A_PROCESS
        done = subprocess.run([sys.executable, "-c", code, str(proj / "many.jsonl"), kind], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-1] == hashlib.sha256(a.info["tokenizer_json"].encode()).hexdigest()


def test_bpe(proj):
    ds = text_jsonl(str(proj / "reviews.jsonl"), split_by="split", tokenizer="bpe", vocab=300, max_length=12)
    assert ds.info["special"]["pad"] == 0 and ds.info["vocab_size"] <= 300
    assert json.loads(ds.info["tokenizer_json"])["model"]["type"] == "BPE"


def test_a_saved_tokenizer_is_loaded_from_its_folder(proj):
    trained = text_jsonl(str(proj / "reviews.jsonl"), split_by="split", vocab=100, max_length=12)
    from tokenizers import Tokenizer
    (proj / "tok").mkdir()
    Tokenizer.from_str(trained.info["tokenizer_json"]).save(str(proj / "tok" / "tokenizer.json"))
    data = 'text.jsonl(path: "reviews.jsonl", split_by: "split", tokenizer_path: "tok", max_length: 12)'
    plan = compile_spec(spec(proj, data=data).read_text(), str(proj / "s.mpt"))
    assert plan.datasets[0].x_dim == Tokens(12, trained.info["vocab_size"])        # read from tokenizer.json
    loaded = built(proj / "s.mpt")["ft"]
    assert all(torch.equal(loaded.splits[s][0], trained.splits[s][0]) for s in trained.splits)
    # a transformers tokenizer folder: its tokenizer_config.json names the special tokens
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(trained.info["tokenizer_json"]),
                                                pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                                sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(str(proj / "hf_tok"))
    ds = text_jsonl(str(proj / "reviews.jsonl"), split_by="split", tokenizer_path=str(proj / "hf_tok"), max_length=12)
    assert ds.info["special"] == trained.info["special"]
    assert torch.equal(ds.splits["val"][0], trained.splits["val"][0])


def test_lines_use_the_tokenizer_of_their_text_data(proj):
    with gzip.open(proj / "docs.txt.gz", "wt", encoding="utf-8") as f:
        f.write("a good film\n\n   \nthe plot was awful and the actors were boring\n")
    extra = 'data more = text.lines(path: "docs.txt.gz", of: ft)\n'
    path = spec(proj, pt="more", extra=extra).read_text().replace(
        "loss mean(ce(pt_head(encoder(x)), y)) + ", "loss mean(pt_head(encoder(x))) + ")
    (proj / "s.mpt").write_text(path)
    plan = compile_spec(path, str(proj / "s.mpt"))
    assert [(d.name, d.x_dim, d.y_dim) for d in plan.datasets] == [("ft", Tokens(12, 100), 2),
                                                                    ("more", Tokens(12, 100), 0)]
    sets = built(proj / "s.mpt")
    x, y = sets["more"].splits["all"]
    assert x.shape == (2, 12) and y.shape == (2, 0) and x.dtype == torch.long
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(sets["ft"].info["tokenizer_json"])
    assert torch.equal(x, encode(tok, ["a good film", "the plot was awful and the actors were boring"],
                                 sets["ft"].info["special"], 12))
    assert sets["more"].info["tokenizer_json"] == sets["ft"].info["tokenizer_json"]


# ---- bad inputs: named errors --------------------------------------------------------------------
def _lines(*items) -> str:
    return "".join(i + "\n" for i in items)


OK = '{"text": "good film", "label": "pos", "split": "train"}'
BAD_FILES = [
    ("missing", None, 'text.jsonl(path: "nothing.jsonl")', "'path': no such file or folder 'nothing.jsonl'"),
    ("bad_json", _lines(OK, '{"text": "bad", "label": "neg",', OK), 'text.jsonl(path: "f.jsonl")',
     "f.jsonl: line 2 is not valid JSON"),
    ("not_object", _lines(OK, "[1, 2]"), 'text.jsonl(path: "f.jsonl")', "line 2 is a list, not a JSON object"),
    ("no_text", _lines(OK, '{"txt": "bad", "label": "neg"}'), 'text.jsonl(path: "f.jsonl")',
     "line 2 has no text field 'text' (it has: txt, label); did you mean 'txt'?"),
    ("no_label", _lines('{"text": "bad", "lable": "neg"}'), 'text.jsonl(path: "f.jsonl")',
     "line 1 has no label field 'label' (it has: text, lable); did you mean 'lable'?"),
    ("empty_text", _lines(OK, '{"text": "  ", "label": "neg"}'), 'text.jsonl(path: "f.jsonl")',
     "line 2: text field 'text' is empty"),
    ("text_number", _lines('{"text": 3, "label": "neg"}'), 'text.jsonl(path: "f.jsonl")',
     "line 1: text field 'text' holds a number, not a string"),
    ("one_class", _lines(OK, OK), 'text.jsonl(path: "f.jsonl")', 'every label is "pos": one class only'),
    ("mixed", _lines(OK, '{"text": "bad", "label": 1}'), 'text.jsonl(path: "f.jsonl")', "the labels mix kinds"),
    ("bad_label", _lines(OK, '{"text": "bad", "label": 1.5}'), 'text.jsonl(path: "f.jsonl")',
     "line 2: label field 'label' is a number (1.5), not a class"),
    ("split_typo", _lines(OK, '{"text": "bad", "label": "neg", "split": "tset"}'),
     'text.jsonl(path: "f.jsonl", split_by: "split")',
     "holds 'tset', not one of train, val, test; did you mean 'test'?"),
    ("empty", "\n\n", 'text.jsonl(path: "f.jsonl")', "f.jsonl: empty: no rows"),
    ("csv", None, 'text.jsonl(path: "s.mpt")', "text.jsonl reads .jsonl (.jsonl.gz) or .ndjson (.ndjson.gz) files"),
    ("no_tokenizer_json", _lines(OK, '{"text": "bad", "label": "neg"}'),
     'text.jsonl(path: "f.jsonl", tokenizer_path: "empty_dir")', "empty_dir: no tokenizer.json in it"),
    ("corpus_and_path", _lines(OK, '{"text": "bad", "label": "neg"}'),
     'text.jsonl(path: "f.jsonl", tokenizer_path: "tok", corpus: "f.jsonl")', "drop one of them"),
    ("bpe_vocab", _lines(OK, '{"text": "bad", "label": "neg"}'), 'text.jsonl(path: "f.jsonl", tokenizer: "bpe", '
     'vocab: 100)', "a bpe tokenizer needs vocab >= 261"),
    ("no_train", _lines('{"text": "a", "label": "x", "split": "val"}', '{"text": "b", "label": "y", "split": "test"}'),
     'text.jsonl(path: "f.jsonl", split_by: "split")',
     "the tokenizer is trained on the train split, and there is none"),
]


@pytest.mark.parametrize("case, content, data, message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_text_data_are_located_errors(proj, capsys, case, content, data, message):
    if content is not None:
        (proj / "f.jsonl").write_text(content, encoding="utf-8")
    (proj / "empty_dir").mkdir()
    (proj / "tok").mkdir()
    (proj / "tok" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"[PAD]": 0, "[CLS]": 1,
                                                                                 "[SEP]": 2}}}))
    code, err = cli(capsys, "check", spec(proj, data=data))
    assert code == 2 and message in err, err
    assert "s.mpt:2:" in err                                     # at the data declaration


@pytest.mark.parametrize("tokenizer, message", [
    ({"model": {"vocab": {"[CLS]": 0, "[SEP]": 1, "[PAD]": 2}}}, "its padding token '[PAD]' has id 2; mptc's text "
                                                                 "data pad with id 0"),
    ({"model": {"vocab": {"[PAD]": 0, "[SEP]": 1}}}, "has no cls token"),
    ({"model": {"vocab": {"[CLS]": 0, "[SEP]": 1}}}, "has no padding token"),
    ({"model": {}}, "holds no vocabulary"),
    ("{not json", "cannot read it as JSON"),
])
def test_bad_tokenizer_folders(proj, capsys, tokenizer, message):
    (proj / "tok").mkdir()
    (proj / "tok" / "tokenizer.json").write_text(tokenizer if isinstance(tokenizer, str) else json.dumps(tokenizer))
    code, err = cli(capsys, "check", spec(proj, data='text.jsonl(path: "reviews.jsonl", split_by: "split", '
                                                     'tokenizer_path: "tok")'))
    assert code == 2 and message in err, err


@pytest.mark.parametrize("data, encoder, extra, message", [
    (DATA, "mlp(hidden: [8])", "", "encoder expects inputs of shape [batch, features], got [batch, tokens(12, "
                                   "vocab 100)]"),
    (DATA, "transformer(hidden: 10, heads: 4)", "", "encoder has hidden: 10, not a multiple of heads: 4"),
    (DATA, "transformer(max_length: 8)", "", "shorter than its input's 12 tokens"),
    (DATA, ENCODER, 'data other = synthetic.multitask(examples: 10, dim: 3, tasks: 2, related: 1)\n'
                    'data more = text.lines(path: "s.mpt", of: other)\n', "of must name text data (text.jsonl)"),
    (DATA, ENCODER, 'data more = text.lines(path: "reviews.jsonl", of: ft)\n', "text.lines reads .txt (.txt.gz)"),
])
def test_bad_uses_are_located_errors(proj, capsys, data, encoder, extra, message):
    code, err = cli(capsys, "check", spec(proj, data=data, encoder=encoder, extra=extra))
    assert code == 2 and message in err, err


def test_the_transformer_refuses_other_data(proj, capsys):
    text = spec(proj).read_text().replace(f"data ft = {DATA}",
                                          'data ft = synthetic.multitask(examples: 90, dim: 4, tasks: 2, related: 1) '
                                          'split train 0.4, val 0.3, test 0.3')
    (proj / "s.mpt").write_text(text)
    code, err = cli(capsys, "check", proj / "s.mpt")
    assert code == 2 and "encoder expects token ids (text data: text.jsonl, text.lines), got [batch, 4]" in err


@pytest.mark.parametrize("setup, data, message", [
    (lambda p: (p / "wide.jsonl").write_text("".join(json.dumps({"text": chr(0x4E00 + i) * 2, "label": i % 2,
                                                                 "split": ["train", "val", "test"][i % 3]}) + "\n"
                                                         for i in range(300))),
     'text.jsonl(path: "wide.jsonl", split_by: "split", vocab: 50)',
     "mptc: error: data 'ft': the wordpiece tokenizer needs"),
    (lambda p: (p / "blank.txt").write_text("\n  \n"), DATA, "mptc: error: data 'more': blank.txt: no text: every "
                                                            "line is blank"),
])
def test_problems_found_at_run_time_are_named(proj, capsys, setup, data, message):
    setup(proj)
    extra = 'data more = text.lines(path: "blank.txt", of: ft)\n' if "blank" in message else ""
    code, err = cli(capsys, "run", spec(proj, data=data, extra=extra), "--out", "run", "--quiet")
    assert code == 2 and message in err, err
    assert not (proj / "run").exists()


def test_loaders_raise_data_problems_themselves(proj):
    with pytest.raises(DataProblem, match="needs path"):
        text_jsonl()
    with pytest.raises(DataProblem, match="of must be text data"):
        from mptc.runtime.datasets import Dataset
        text_lines(str(proj / "reviews.jsonl"), Dataset({"all": (torch.zeros(1, 2), torch.zeros(1, 1))}, {}))
    (proj / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataProblem, match="bad.jsonl.gz: cannot read it"):
        text_jsonl(str(proj / "bad.jsonl.gz"))


# ---- encoders ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return transformer(layers=2, hidden=16, heads=2, dropout=0.1, in_dim=Tokens(8, 30)).eval()


IDS = torch.tensor([[2, 5, 6, 7, 9, 3, 0, 0], [2, 11, 12, 3, 0, 0, 0, 0]])


def test_a_custom_attention_mask_reaches_the_attention(encoder):
    changed = IDS.clone()
    changed[:, 3] = 20
    left_to_right = torch.tril(torch.ones(8, 8))
    with torch.no_grad():
        for mask in (left_to_right, left_to_right.expand(2, 8, 8)):      # [L, L] or [B, L, L]
            a, b = encoder(IDS, mask, tokens=True), encoder(changed, mask, tokens=True)
            assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)          # positions before 3 cannot see it
            assert not torch.allclose(a[:, 3], b[:, 3], atol=1e-4)
        full = torch.ones(2, 8, 8)
        a, b = encoder(IDS, full, tokens=True), encoder(changed, full, tokens=True)
        assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)
        assert torch.allclose(encoder(IDS, full, tokens=True), encoder(IDS, tokens=True), atol=1e-5)


def test_padding_is_masked_and_pooled_out(encoder):
    longer = torch.cat([IDS, torch.zeros(2, 3, dtype=torch.long)], 1)            # three more pads
    with torch.no_grad():
        h = encoder(IDS, tokens=True)
        assert h.shape == (2, 8, 16)
        assert torch.allclose(encoder(IDS), h[:, 0])                                    # pool: first
        encoder.pool = "mean"
        mean = encoder(IDS)
        encoder.pool = "first"
        keys = (IDS != 0).float()[..., None]
        assert torch.allclose(mean, (h * keys).sum(1) / keys.sum(1), atol=1e-6)
        shorter = encoder(IDS[:, :6], tokens=True)                       # two pads fewer: the same states
        assert torch.allclose(shorter[0], h[0, :6], atol=1e-5) and torch.allclose(encoder(IDS.float()), h[:, 0])
        assert torch.allclose(encoder(longer, torch.ones(11, 11)), h[:, 0], atol=1e-5)


def test_a_bad_attention_shape_is_named(encoder):
    with pytest.raises(ValueError, match=r"attention must be \[batch, length, length\]"):
        encoder(IDS, torch.ones(7, 7))


def test_the_transformer_is_twice_differentiable():
    torch.manual_seed(0)
    enc = transformer(layers=1, hidden=8, heads=2, dropout=0.0, in_dim=Tokens(8, 30), pool="mean")
    params = list(enc.parameters())
    loss = enc(IDS, torch.tril(torch.ones(8, 8))).pow(2).sum()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in grads), params, allow_unused=True)
    assert sum(float(s.abs().sum()) for s in second if s is not None) > 0
    assert enc.model.pooler is None                                   # every parameter reaches the output
    assert all(g is not None for g in torch.autograd.grad(enc(IDS).sum(), params, allow_unused=True))


def test_hf_reads_token_ids_of_text_data(proj, capsys):
    """A tiny BERT whose vocabulary is a trained tokenizer's: text data with tokenizer_path feed it; the same
    attention contract as the transformer's."""
    trained = text_jsonl(str(proj / "reviews.jsonl"), split_by="split", vocab=100, max_length=12)
    from tokenizers import Tokenizer
    (proj / "bert").mkdir()
    Tokenizer.from_str(trained.info["tokenizer_json"]).save(str(proj / "bert" / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                     vocab_size=trained.info["vocab_size"], max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(proj / "bert")
    data = 'text.jsonl(path: "reviews.jsonl", split_by: "split", tokenizer_path: "bert", max_length: 12)'
    assert cli(capsys, "check", spec(proj, data=data, encoder='hf(path: "bert", pool: first)'))[0] == 0
    code, err = cli(capsys, "check", spec(proj, encoder='hf(path: "bert")', data=DATA.replace("100", "400")))
    assert code == 2 and "encoder has " in err and "its input's go up to 399" in err, err
    code, err = cli(capsys, "check", spec(proj, encoder='hf(path: "bert")', data=data.replace("12)", "20)")))
    assert code == 2 and "has 16 positions" in err, err
    from mptc.runtime.hf import hf
    enc = hf(str(proj / "bert"), pool="first").eval()
    ids = trained.splits["val"][0][:2]
    changed = ids.clone()
    changed[:, 2] = 7
    mask = torch.tril(torch.ones(12, 12))
    with torch.no_grad():
        assert enc(ids, tokens=True).shape == (2, 12, 8) and enc(ids).shape == (2, 8)
        assert torch.allclose(enc(ids, mask, tokens=True)[:, :2], enc(changed, mask, tokens=True)[:, :2], atol=1e-6)
        assert not torch.allclose(enc(ids)[:, :2], enc(changed)[:, :2], atol=1e-4)
        assert torch.allclose(enc(ids, torch.ones(12, 12)), enc(ids), atol=1e-5)


# ---- the whole path ------------------------------------------------------------------------------
def test_check_imports_neither_torch_nor_transformers_nor_tokenizers(proj):
    (proj / "docs.txt").write_text("a good film\n")
    spec(proj, extra='data more = text.lines(path: "docs.txt", of: ft)\n')
    probe = ("import sys; from mptc.cli import main; rc = main(['check', 's.mpt']); "
             "print(rc, *[m in sys.modules for m in ('torch', 'transformers', 'tokenizers')])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=proj, capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-4:] == ["0", "False", "False", "False"], done.stdout + done.stderr


def test_a_whole_run_writes_the_tokenizer_beside_it(proj, capsys):
    code, out = cli(capsys, "run", spec(proj), "--out", "run", "--quiet")
    assert code == 0, out
    run = proj / "run"
    tokenizer = json.loads((run / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "WordPiece" and tokenizer["model"]["vocab"]["[PAD]"] == 0
    evals = json.loads((run / "eval.json").read_text())
    assert evals["meta"]["metric"] == "top1" and 0 <= evals["meta"]["mean"] <= 1
    meta = json.loads((run / "meta.json").read_text())
    assert meta["log_lambda"] != -4.0
    ir = json.loads((run / "ir.json").read_text())
    assert ir["modules"][0]["in_dim"] == {"node": "Tokens", "length": 12, "vocab": 100}
    assert "tokenizer.json" in (run / "summary.txt").read_text()
    loaded, special = load_tokenizer(str(run))
    assert special["cls"] == 2 and loaded.get_vocab_size() == len(tokenizer["model"]["vocab"])


def test_a_tokenizer_with_a_far_token_id_is_refused_at_check(proj):
    """One id of 10^9 made the embedding 10^9 rows: the run died allocating 64 GB."""
    trained = text_jsonl(str(proj / "reviews.jsonl"), split_by="split", vocab=100, max_length=12)
    spec_json = json.loads(trained.info["tokenizer_json"])
    spec_json["model"]["vocab"]["far"] = 10 ** 9
    (proj / "tok").mkdir()
    (proj / "tok" / "tokenizer.json").write_text(json.dumps(spec_json))
    data = 'text.jsonl(path: "reviews.jsonl", split_by: "split", tokenizer_path: "tok", max_length: 12)'
    with pytest.raises(SpecErrors) as info:
        compile_spec(spec(proj, data=data).read_text(), str(proj / "s.mpt"))
    assert "not a vocabulary of consecutive ids (the embedding would need 1000000001 rows)" in \
        info.value.errors[0].message
