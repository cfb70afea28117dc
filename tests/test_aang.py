"""AANG (issue 16): the stage primitives on a batch, the attention masks against hand-built ones, the auxiliary
term's sampling, the alignment estimator in float64 against its formula (finite differences of the loss
weights), the checks, a user's own primitive, and runs end to end with every baseline."""
import json

import pytest
import torch

from mptc.cli import main
from mptc.compiler.lower import compile_spec, factored_choices
from mptc.errors import SpecErrors
from mptc.runtime import aang
from mptc.runtime.data import Data
from mptc.runtime.loop import Trainer
from mptc.runtime.program import Ctx, Program
from tests.conftest import FIXTURES, aang_spec, tiny_spec

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


@pytest.fixture(autouse=True)
def restore(restored_registries):
    """The user primitives and models these tests register are gone after each (tests/conftest.py)."""
    yield
CPU = torch.device("cpu")


# ---- primitives on a batch -----------------------------------------------------------------------
def _ids(B=300, L=40, vocab=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, L), generator=g)
    selected = torch.rand(B, L, generator=g) < 0.15
    return ids, selected, torch.Generator().manual_seed(seed + 1)


def test_mask_replace_none_touch_the_selected_tokens_only():
    ids, sel, gen = _ids()
    masked = aang.MaskTokens().apply(ids, sel, 500, SPECIAL, gen)
    assert (masked[sel] == 4).all() and torch.equal(masked[~sel], ids[~sel])
    replaced = aang.ReplaceTokens().apply(ids, sel, 500, SPECIAL, gen)
    assert torch.equal(replaced[~sel], ids[~sel]) and (replaced[sel] < 500).all()
    assert (replaced[sel] != ids[sel]).float().mean() > 0.95          # uniform over 500 ids: almost all change
    assert torch.equal(aang.NoTransform().apply(ids, sel, 500, SPECIAL, gen), ids)


def test_bert_op_is_80_10_10_on_the_selected_tokens():
    ids, sel, gen = _ids(B=2000)
    out = aang.BertOp().apply(ids, sel, 500, SPECIAL, gen)
    assert torch.equal(out[~sel], ids[~sel])
    n = sel.sum().item()
    masked = (out[sel] == 4).sum().item() / n
    random = ((out[sel] != 4) & (out[sel] != ids[sel])).sum().item() / n
    kept = (out[sel] == ids[sel]).sum().item() / n
    assert abs(masked - 0.8) < 0.01 and abs(random - 0.1 * 499 / 500) < 0.01 and abs(kept - 0.1) < 0.01


def test_representation_masks_against_hand_built_ones():
    valid = torch.ones(2, 4, dtype=torch.bool)
    l2r = torch.tensor([[1., 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.equal(aang.LeftToRight().mask(valid, None), l2r.expand(2, 4, 4))
    assert torch.equal(aang.RightToLeft().mask(valid, None), l2r.T.expand(2, 4, 4))
    assert torch.equal(aang.Bidirectional().mask(valid, None), torch.ones(2, 4, 4))
    got = aang.RandomFactorized().mask(valid, torch.Generator().manual_seed(3))
    order = torch.rand(2, 4, generator=torch.Generator().manual_seed(3)).argsort(dim=1)   # the same draw
    for b in range(2):
        place = {int(p): k for k, p in enumerate(order[b])}              # position -> its place in the order
        want = torch.tensor([[1.0 if j == 0 or place[j] < place[i] else 0.0 for j in range(4)] for i in range(4)])
        assert torch.equal(got[b], want)
        assert all(got[b, i, i] == 0 for i in range(1, 4))               # never itself (but [CLS] its own)


def test_outputs_are_cross_entropies_on_their_positions():
    torch.manual_seed(0)
    B, L, H, V = 3, 6, 8, 11
    states, head = torch.randn(B, L, H), torch.nn.Linear(H, V)
    ids = torch.randint(5, V, (B, L))
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[0, 4:] = False
    sel = torch.zeros(B, L, dtype=torch.bool)
    sel[0, 1], sel[2, 3] = True, True
    y = torch.eye(3)[[0, 2, 1]]
    batch = aang.AuxBatch(ids, sel, valid, y)
    ce = torch.nn.functional.cross_entropy
    want = ce(torch.stack([head(states[0, 1]), head(states[2, 3])]), torch.stack([ids[0, 1], ids[2, 3]]))
    assert torch.allclose(aang.DenoiseToken().loss(head, states, batch), want)
    pairs = [(b, i) for b in range(B) for i in range(L - 1) if valid[b, i] and valid[b, i + 1]]
    want = ce(torch.stack([head(states[b, i]) for b, i in pairs]), torch.stack([ids[b, i + 1] for b, i in pairs]))
    assert torch.allclose(aang.NextToken().loss(head, states, batch), want)
    cls_head = torch.nn.Linear(H, 3)
    assert torch.allclose(aang.EndTaskOutput().loss(cls_head, states, batch), ce(cls_head(states[:, 0]), y.argmax(1)))
    none = aang.AuxBatch(ids, torch.zeros(B, L, dtype=torch.bool), valid, y)
    assert aang.DenoiseToken().loss(head, states, none).item() == 0.0   # nothing selected: 0, no NaN


# ---- the auxiliary term on a plan --------------------------------------------------------------------
def _trainer(text=None, dtype=None):
    text = text or aang_spec()
    plan = compile_spec(text, str(FIXTURES / "aang.mpt"))
    torch.manual_seed(0)
    return Trainer(plan, Program(plan, CPU, dtype), Data(plan, CPU, dtype))


def test_the_plan_of_an_auxiliary_block():
    plan = compile_spec(aang_spec(), str(FIXTURES / "aang.mpt"))
    aux = plan.auxiliary
    assert len(aux.objectives) == 24 and aux.sample == 3 and aux.encoder == "encoder" and aux.data is None
    assert aux.heads == (("denoise_token", "_aux_denoise_token"), ("end_task", "_aux_end_task"))
    heads = {m.name: m.component.args["out"] for m in plan.modules if m.name.startswith("_aux")}
    assert heads == {"_aux_denoise_token": 400, "_aux_end_task": 5}      # vocabulary, classes
    assert set(plan.pretrain.trains) >= {"encoder", "task_head", "_aux_denoise_token", "_aux_end_task"}
    meta = {m.name: m for m in plan.metas}
    assert meta["aux_w"].size == 24 + sum(len(c) for c in factored_choices(aux.objectives)) == 35
    assert (meta["end_w"].rate, meta["aux_w"].rate) == (0.05, None)
    assert [(e.stage, e.method.name) for e in plan.estimators][-1] == ("auxiliary", "alignment")
    bert = aang_spec(against="tapt, gpt")                                  # gpt's next_token: a head of its own
    assert compile_spec(bert, "a.mpt").auxiliary.extra == ("end_task.none.left_to_right.next_token",)


def test_sampling_is_drawn_once_per_batch_and_the_weights_renormalize():
    tr = _trainer()
    st = tr.init_state()
    aux = tr.prog.aux
    x, y = tr.data.batch("pretrain")
    c = Ctx(st.params, st.metas, x, y)
    first = aux.draw(c)
    assert aux.draw(c) is first and len(first.sampled) == 3                 # the same batch: the same draw
    assert all(".".join(o) in aux.plan.objectives for o in first.sampled)
    other = aux.draw(Ctx(st.params, st.metas, *tr.data.batch("pretrain")))
    assert other is not first
    ids, _, batch = next(iter(first.groups.values()))
    plain = batch.valid & (batch.ids != SPECIAL["cls"]) & (batch.ids != SPECIAL["sep"])
    assert not (batch.selected & ~plain).any()                              # never [PAD], [CLS], [SEP]
    assert 0.08 < batch.selected.sum() / plain.sum() < 0.22                 # ~15% of the tokens
    with torch.no_grad():
        st.metas["aux_w"].normal_()
    names, losses = aux.losses(c)
    w = aux.sampled_weights(c, names)
    logits = tr.prog.factored_logits("aux_w", st.metas["aux_w"])
    index = [aux.plan.objectives.index(n) for n in names]
    assert torch.allclose(w, torch.softmax(logits[index], 0)) and torch.allclose(aux.term(c), (w * losses).sum())


def test_factored_logits_are_the_sum_of_the_stage_weights():
    tr = _trainer()
    raw = torch.randn(35)
    objectives = tr.plan.auxiliary.objectives
    choices, K = factored_choices(objectives), len(objectives)
    offsets = [K + sum(len(c) for c in choices[:i]) for i in range(4)]
    want = [raw[k] + sum(raw[offsets[i] + choices[i].index(o.split(".")[i])] for i in range(4))
            for k, o in enumerate(objectives)]
    assert torch.allclose(tr.prog.factored_logits("aux_w", raw), torch.stack(want))


@pytest.mark.parametrize("kind", ["cosine", "dot"])
def test_alignment_hypergradient_against_its_formula_in_float64(kind):
    """hg = -sum_k s_k d omega_k / d phi with s_k = sim(g_k, g_dev): the loss weights' Jacobian by central
    differences, the similarities from each objective's own gradient and the fitted dev head."""
    text = aang_spec().replace("device cpu", "device cpu dtype float64").replace(
        "alignment", f"alignment(similarity: {kind}, dev_steps: 3, dev_lr: 0.2)")
    tr = _trainer(text, torch.float64)
    st = tr.init_state()
    for _ in range(3):
        tr.pt_step(st, tr.data.batch("pretrain"))
    torch.manual_seed(1)
    with torch.no_grad():
        st.metas["aux_w"].normal_()
        st.metas["end_w"].fill_(0.3)
    pt, val = tr.data.batch("pretrain"), tr.data.batch("objective")
    hg, info = tr.aux_est.through_aux(tr, st, pt, val)
    aux, body = tr.prog.aux, tr.shared

    # g_dev: the FT head refitted by 3 SGD steps (lr 0.2) on the dev batch, the encoder fixed
    params = {k: t.detach() for k, t in st.params.items()}
    head = [k for k in tr.val_keys if k not in body]
    for _ in range(3):
        view = {**params, **{k: params[k].clone().requires_grad_() for k in head}}
        g = torch.autograd.grad(tr.loss_val(view, st.metas, *val), [view[k] for k in head])
        params.update({k: view[k].detach() - 0.2 * gk for k, gk in zip(head, g)})
    view = {**params, **{k: params[k].clone().requires_grad_() for k in body}}
    g_dev = torch.cat([g.flatten() for g in torch.autograd.grad(tr.loss_val(view, st.metas, *val),
                                                                  [view[k] for k in body])])
    # each loss's gradient in the body, its similarity to g_dev
    view = {**{k: t.detach() for k, t in st.params.items()}, **{k: st.params[k].detach().requires_grad_() for k in body}}
    c = Ctx(view, st.metas, *pt)
    names, losses = aux.losses(c)
    sims = []
    for loss in [aux.end_loss(view, st.metas, *pt), *losses]:
        g = torch.cat([t.flatten() for t in torch.autograd.grad(loss, [view[k] for k in body], retain_graph=True,
                                                                allow_unused=True, materialize_grads=True)])
        sims.append(float(g @ g_dev / (g.norm() * g_dev.norm())) if kind == "cosine" else float(g @ g_dev))
    assert list(info["alignment"]) == ["end_task", *names]
    assert [round(s, 6) for s in sims] == list(info["alignment"].values())

    # omega(phi) = [2 sigmoid(end_w), softmax over the sampled objectives' factored logits]
    def omega(metas):
        logits = tr.prog.factored_logits("aux_w", metas["aux_w"])
        index = torch.tensor([aux.plan.objectives.index(n) for n in names])
        return torch.cat([(2 * torch.sigmoid(metas["end_w"])).reshape(1), torch.softmax(logits[index], 0)])

    s, h = torch.tensor(sims, dtype=torch.float64), 1e-6
    for name in ("aux_w", "end_w"):
        base = st.metas[name].detach()
        want = torch.zeros_like(base).flatten()
        for i in range(want.numel()):
            e = torch.zeros_like(base).flatten()
            e[i] = h
            up = omega({**st.metas, name: base + e.view_as(base)})
            down = omega({**st.metas, name: base - e.view_as(base)})
            want[i] = -(s * (up - down) / (2 * h)).sum()
        assert torch.allclose(hg[name].flatten(), want, rtol=1e-7, atol=1e-11), name
    sampled = {aux.plan.objectives.index(n) for n in names}
    assert all(abs(hg["aux_w"][k]) < 1e-15 for k in range(24) if k not in sampled)   # W_all: the sampled only


def test_a_rate_rescales_the_meta_step():
    text = aang_spec().replace("meta_optimizer adam(lr: 0.05)", "meta_optimizer sgd(lr: 1.0)")
    tr = _trainer(text)
    st = tr.init_state()
    before = {n: t.detach().clone() for n, t in st.metas.items()}
    hg = {n: torch.ones_like(t) for n, t in st.metas.items()}
    tr.meta_update(st, hg)
    assert torch.allclose(st.metas["aux_w"], before["aux_w"] - 1.0)          # the optimizer's lr
    assert torch.allclose(st.metas["end_w"], before["end_w"] - 0.05)         # its own rate


# ---- the checks ------------------------------------------------------------------------------------
def _errors(text):
    with pytest.raises(SpecErrors) as info:
        compile_spec(text, "a.mpt")
    return [(e.span.line, e.message, e.hint) for e in info.value.errors]


@pytest.mark.parametrize("old, new, message, hint", [
    ("transform{bert_op,", "transform{bert_opp,", "unknown transform primitive 'bert_opp'", "bert_op"),
    ("x output{denoise_token, end_task}", "x out{denoise_token, end_task}", "must have the stages", None),
    ("weights softmax(aux_w)", "weights softmax(end_w)", "the weights must have one entry per objective", None),
    ("sample 3 per step", "sample 30 per step", "sample 30 exceeds the 24 objectives", None),
    ("sample 3 per step  weights softmax(aux_w)", "sample 3 per step", "needs a 'weights' clause", None),
    ("data{end_task}", "data{end_task, in_domain}", "need a data clause", None),
    ("auxiliary aux {", "auxiliary aux {  data task.val batch 4", "has no in_domain data choice", None),
    ("auxiliary aux {", "auxiliary auxx {", "unknown space 'auxx'", "aux"),
    ("end_w: scalar = 0.0 rate 0.05", "end_w: scalar = 0.0 rate 0", "rate", None),
    ("alignment", "alignment(similarity: sine)", "similarity", None),
    ("end_task_weight 2 * sigmoid(end_w)", "end_task_weight 2 * sigmoid(aux_w)", "single number", None),
])
def test_auxiliary_mistakes_are_located_errors(old, new, message, hint):
    text = aang_spec()
    assert text.count(old) == 1, old
    errors = _errors(text.replace(old, new))
    assert any(message in m and (hint is None or h == hint) for _, m, h in errors), errors


def test_auxiliary_parts_without_an_auxiliary_block_or_token_data():
    base = tiny_spec(against="tapt")
    assert any("compares auxiliary objectives" in m for _, m, _ in _errors(base))
    assert any("no auxiliary block" in m for _, m, _ in _errors(
        tiny_spec() + "hypergradient auxiliary: alignment\n"))
    vectors = tiny_spec() + """space aux = data{end_task} x transform{mask} x represent{bidirectional}
      x output{denoise_token}
meta a: factored(aux)
auxiliary aux { weights softmax(a) }"""
    assert any("need token ids" in m for _, m, _ in _errors(vectors))


# ---- runs -------------------------------------------------------------------------------------------------
def test_a_run_with_every_baseline(tmp_path, capsys):
    spec = tmp_path / "aang.mpt"
    spec.write_text(aang_spec(meta_steps=2, against="no_auxiliary, static_multitask, tapt, meta_tartan, "
                                                    "bilevel, bert, gpt, xlnet"))
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "aux_w: 24 values, one per objective of space aux" in out and "end_w: 0 →" in out
    found = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert set(found) == {"meta", "no_auxiliary", "static_multitask", "tapt", "meta_tartan", "bilevel", "bert",
                          "gpt", "xlnet"}
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["aux_w"]["names"][0] == "end_task.bert_op.bidirectional.denoise_token"
    assert abs(sum(meta["aux_w"]["values"]) - 1) < 1e-6 and len(meta["aux_w.stages"]["names"]) == 11
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("alignment_s" in r for r in rows)


def test_the_space_weighted_by_ift_instead(tmp_path):
    spec = tmp_path / "aang.mpt"
    spec.write_text(aang_spec(meta_steps=2).replace("hypergradient auxiliary: alignment",
                                                    "hypergradient pretrain: ift(neumann(terms: 2)), auxiliary: bilevel"))
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["end_w"] != 0.0 and len(set(meta["aux_w"]["values"])) > 1


USER_PRIMITIVE = '''
import torch
from mptc.components.registry import TRANSFORMS


class Shuffle:
    """The selected tokens shuffled among themselves."""

    def apply(self, ids, selected, vocab, special, gen):
        out = ids.clone()
        values = ids[selected]
        out[selected] = values[torch.randperm(len(values), generator=gen)]
        return out


TRANSFORMS.register("shuffle", [], target=Shuffle, doc="the selected tokens in a random order")
'''


def test_a_users_own_transform_appears_in_the_space_and_runs(tmp_path, capsys):
    (tmp_path / "prims.py").write_text(USER_PRIMITIVE)
    text = 'import "prims.py"\n' + aang_spec(meta_steps=2).replace("transform{bert_op, mask,", "transform{shuffle, mask,")
    spec = tmp_path / "own.mpt"
    spec.write_text(text)
    assert main(["space", str(spec), "--json"]) == 0
    objectives = json.loads(capsys.readouterr().out)["spaces"][0]["objectives"]
    assert len(objectives) == 24 and "end_task.shuffle.bidirectional.denoise_token" in objectives
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    names = json.loads((tmp_path / "run" / "meta.json").read_text())["aux_w.stages"]["names"]
    assert "transform=shuffle" in names


def test_mptc_space_lists_the_default_rules(capsys):
    from pathlib import Path
    spec = Path(__file__).resolve().parent.parent / "specs" / "paper"
    assert main(["space", str(spec / "aang_td.mpt"), "--json"]) == 0
    (td,) = json.loads(capsys.readouterr().out)["spaces"]
    assert len(td["objectives"]) == 24 and td["combinations"] == 32
    assert td["excludes"] == [{"rule": "exclude represent in {left_to_right, right_to_left} and output == end_task",
                               "removed": 8, "default": "a sentence-level output needs a representation that sees "
                                                        "the whole input"}]
    assert main(["space", str(spec / "aang_td_ed.mpt"), "--json"]) == 0
    (ed,) = json.loads(capsys.readouterr().out)["spaces"]
    assert len(ed["objectives"]) == 40 and [r["removed"] for r in ed["excludes"]] == [16, 8]


def test_in_domain_objectives_read_the_auxiliary_data(tmp_path):
    text = aang_spec(meta_steps=2).replace("data{end_task}", "data{end_task, in_domain}").replace(
        "model encoder", f'data domain = text.lines(path: "{FIXTURES / "docstrings_domain.txt"}", of: task)\n'
                         "model encoder").replace("auxiliary aux {", "auxiliary aux {  data domain batch 7")
    tr = _trainer(text)
    aux = tr.prog.aux
    aux.only = ["in_domain.mask.left_to_right.denoise_token", "end_task.none.bidirectional.end_task"]
    st = tr.init_state()
    draw = aux.draw(Ctx(st.params, st.metas, *tr.data.batch("pretrain")))
    ids, attention, batch = draw.groups["in_domain", "mask", "left_to_right"]
    assert ids.shape[0] == 7 and batch.y is None                            # the domain batch, unlabelled
    assert torch.equal(attention[0], torch.tril(torch.ones(24, 24)))
    assert (ids[batch.selected] == 4).all()                                 # masked where selected
    assert draw.groups["end_task", "none", "bidirectional"][2].y.shape == (16, 5)
    spec = tmp_path / "ed.mpt"
    spec.write_text(text)
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0


def test_a_second_auxiliary_block_is_a_located_error():
    text = aang_spec().replace("hypergradient auxiliary", "space aux2 = data{end_task} x transform{mask} x "
                               "represent{bidirectional} x output{denoise_token}\nmeta w2: factored(aux2)\n"
                               "auxiliary aux2 { weights softmax(w2) }\nhypergradient auxiliary")
    assert any("a second auxiliary block" in m for _, m, _ in _errors(text))


BAG_OF_TOKENS = '''
import torch
from mptc.components.registry import MODELS, Param


def bag(width, in_dim):
    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(in_dim.vocab, width)

        def forward(self, x):
            return self.emb(x.long())
    return Bag()


MODELS.register("bag", [Param("width", "int", 8)], target=bag, shape=lambda a, s: ("B", a["width"]))
'''


def test_an_encoder_without_the_attention_contract_is_a_named_error(tmp_path, capsys):
    (tmp_path / "bag.py").write_text(BAG_OF_TOKENS)
    spec = tmp_path / "bag.mpt"
    spec.write_text('import "bag.py"\n' + aang_spec(meta_steps=2).replace(
        "transformer(layers: 1, hidden: 16, heads: 2, dropout: 0.0)", "bag(width: 16)"))
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no forward(x, attention=None, tokens=False)" in err and "Traceback" not in err


@pytest.mark.parametrize("domain", [
    'text.jsonl(path: "SAMPLE", split_by: "split", vocab: 800, max_length: 24)',      # its own tokenizer
    "synthetic.multitask(examples: 64, dim: 16, tasks: 4, related: 2)",               # not text at all
])
def test_auxiliary_data_of_another_tokenizer_is_a_located_error(domain):
    """The in-domain data went through check and failed at run (an index past the embedding), or trained on
    ids from another vocabulary: it must be the end task's data or text.lines(of: it)."""
    domain = domain.replace("SAMPLE", str(FIXTURES / "docstrings_sample.jsonl"))
    text = aang_spec().replace("data{end_task}", "data{end_task, in_domain}").replace(
        "model encoder", f"data domain = {domain}\nmodel encoder").replace(
        "auxiliary aux {", "auxiliary aux {  data domain batch 7")
    errors = _errors(text)
    assert any("'domain' must be token ids from the end task's tokenizer" in m and "of: task" in m
               for _, m, _ in errors), errors
