"""AANG (Dery et al., ICLR 2023): auxiliary objectives generated from stage primitives, their weighting, and
the META-TARTAN alignment estimator (Dery et al., 2021). The primitives are declared in
components/catalog_aang.py; docs/aang.md is the user's guide.

An objective is (data, transform, represent, output). On a PT batch, `Auxiliary` samples `n` objectives of
the space (without replacement), builds each one's input once per (data, transform) -- the BERT selection
of 15% of the non-special tokens and the transform's corruption of them -- and its attention mask once per
(data, represent), runs the encoder once per (data, transform, represent) on the token states, and each
output's head and loss on them. Everything random (the sample, the selection, the corruption, a random
factorization order, the in-domain batch) is drawn once per PT batch tensor (`NoiseMemo`): evaluating the
PT loss again on the same batch (a hypergradient estimator's Hessian-vector products, the alignment
estimator's per-objective gradients) sees exactly the objectives and inputs the PT step saw.

The auxiliary term is sum_{k in S} w~_k L_k with w~_k = w_k / sum_{j in S} w_j, w = the `weights` clause
(for `weights softmax(aux_w)` with a factored aux_w: w_k proportional to exp(W_all[k] + W_d + W_t + W_r + W_o)
over the valid objectives); the PT loss is `end_task_weight * (the pretrain loss) + that term`.
"""
from __future__ import annotations

import attrs
import torch
from torch.func import functional_call

from mptc.errors import RunError

SELECT = 0.15  # BERT's share of the non-special tokens a transform selects (and denoise_token predicts)


# ---- data -------------------------------------------------------------------------------------------
class EndTaskData:
    """The end task's inputs and labels: the PT batch itself."""

    stream = "pretrain"


class InDomainData:
    """Unlabelled in-domain text: a batch of the auxiliary block's data, drawn once per PT batch."""

    stream = "auxiliary"


# ---- transforms: (ids, selected, vocab, special ids, generator) -> corrupted ids ------------------------
def _random_tokens(shape, vocab: int, gen) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=gen)


class BertOp:
    """BERT's 80/10/10: of the selected tokens 80% become [MASK], 10% a random token, 10% stay as they are."""

    def apply(self, ids, selected, vocab, special, gen):
        u = torch.rand(ids.shape, generator=gen)
        out = torch.where(selected & (u < 0.8), torch.full_like(ids, special["mask"]), ids)
        return torch.where(selected & (u >= 0.8) & (u < 0.9), _random_tokens(ids.shape, vocab, gen), out)


class MaskTokens:
    """Every selected token becomes [MASK]."""

    def apply(self, ids, selected, vocab, special, gen):
        return torch.where(selected, torch.full_like(ids, special["mask"]), ids)


class ReplaceTokens:
    """Every selected token becomes a token drawn uniformly from the vocabulary."""

    def apply(self, ids, selected, vocab, special, gen):
        return torch.where(selected, _random_tokens(ids.shape, vocab, gen), ids)


class NoTransform:
    """The input as it is (its selected tokens are still the targets of denoise_token)."""

    def apply(self, ids, selected, vocab, special, gen):
        return ids


# ---- representations: (valid [B, L] bool, generator) -> attention [B, L, L] (1: query i sees key j) ------
class Bidirectional:
    """Every token sees every token (padding is masked by the encoder)."""

    def mask(self, valid, gen):
        B, L = valid.shape
        return torch.ones(B, L, L)


class LeftToRight:
    """Token i sees tokens j <= i."""

    def mask(self, valid, gen):
        B, L = valid.shape
        return torch.tril(torch.ones(L, L)).expand(B, L, L).clone()


class RightToLeft:
    """Token i sees tokens j >= i."""

    def mask(self, valid, gen):
        B, L = valid.shape
        return torch.triu(torch.ones(L, L)).expand(B, L, L).clone()


class RandomFactorized:
    """A random factorization order per example (XLNet): token i sees the tokens before it in that order,
    not itself, and always position 0 ([CLS]), so that no row of the mask is empty."""

    def mask(self, valid, gen):
        B, L = valid.shape
        rank = torch.argsort(torch.rand(B, L, generator=gen), dim=1).argsort(dim=1)  # position -> its place
        out = (rank[:, None, :] < rank[:, :, None]).float()
        out[:, :, 0] = 1.0
        return out


# ---- outputs: (head, token states [B, L, H], AuxBatch) -> loss; the head's size by the output's traits ---
@attrs.frozen
class AuxBatch:
    """What an output reads: the original ids, the selected positions, the valid (non-pad) ones, the labels."""

    ids: torch.Tensor
    selected: torch.Tensor
    valid: torch.Tensor
    y: torch.Tensor | None


def _ce(logits, target):
    if target.numel() == 0:
        return logits.sum() * 0.0                       # nothing to predict in this batch: no gradient
    return torch.nn.functional.cross_entropy(logits, target.long())


class DenoiseToken:
    """The original token at each selected position."""

    def loss(self, head, states, b: AuxBatch):
        return _ce(head(states[b.selected]), b.ids[b.selected])


class NextToken:
    """The token after each position (where both are tokens, not padding)."""

    def loss(self, head, states, b: AuxBatch):
        keep = b.valid[:, :-1] & b.valid[:, 1:]
        return _ce(head(states[:, :-1][keep]), b.ids[:, 1:][keep])


class EndTaskOutput:
    """The end task's label from the [CLS] (first) state of the transformed input."""

    def loss(self, head, states, b: AuxBatch):
        from mptc.runtime.functions import ce
        return ce(head(states[:, 0]), b.y).mean()


# ---- the auxiliary term of a plan ------------------------------------------------------------------------
@attrs.define
class Draw:
    """The random part of one PT batch's auxiliary term: the sampled objectives (indices into the space)
    and, per (data, transform, represent) group, the encoder's input, attention mask and AuxBatch."""

    sampled: list
    groups: dict


def _load(registry, name):
    comp = registry.get(name)
    return comp.load()()


class Auxiliary:
    """The `auxiliary` block of a plan (ir.AuxiliaryPlan), executable on a Ctx (runtime/program.py)."""

    def __init__(self, prog, plan):
        from mptc.components.registry import AUX_STAGES
        from mptc.runtime.program import NoiseMemo
        self.prog, self.plan = prog, plan
        self.objectives = [tuple(o.split(".")) for o in plan.objectives]
        self.prims = {stage: {} for stage in AUX_STAGES}
        for objective in [*self.objectives, *(tuple(o.split(".")) for o in plan.extra)]:
            for stage, name in zip(AUX_STAGES, objective):
                if name not in self.prims[stage]:
                    self.prims[stage][name] = _load(AUX_STAGES[stage], name)
        self.weights = prog.compile(plan.weights)
        self.end_weight = prog.compile(plan.end_task_weight)
        self.end_loss = prog.loss(plan.end_task_loss)
        self.heads = dict(plan.heads)
        self.memo = NoiseMemo(salt=7919)
        self.memo.reseed(prog.noise_seed)
        prog.memos.append(self.memo)
        self.only: list | None = None      # a baseline's fixed objectives (names) instead of sampling
        self.uniform = False               # a baseline's uniform weights
        self.data = None                   # bound by the Trainer: the batch streams and the datasets' info

    # -- the draw, once per PT batch --------------------------------------------------------------------------
    def draw(self, c) -> Draw:
        return self.memo.get(c.x, lambda: self._draw(c))

    def _draw(self, c) -> Draw:
        gen = self.memo.gen
        if self.only is not None:
            sampled = [tuple(o.split(".")) for o in self.only]
        else:
            K, n = len(self.objectives), min(self.plan.sample, len(self.objectives))
            idx = sorted(torch.randperm(K, generator=gen)[:n].tolist())
            sampled = [self.objectives[i] for i in idx]
        info = self.data.info(self.plan.end_task_data) if self.data is not None else {}
        special, vocab = info.get("special"), info.get("vocab_size")
        if special is None or vocab is None:
            raise RunError(f"auxiliary {self.plan.space}: the end task's data '{self.plan.end_task_data}' is not "
                           f"token ids from a tokenizer (text.jsonl, text.lines): AANG's primitives need them")
        batches = {}
        for d in dict.fromkeys(o[0] for o in sampled):
            stream = self.prims["data"][d].stream
            if stream == "pretrain":
                batches[d] = (c.x, c.y)
            elif self.plan.data is None:
                raise RunError(f"auxiliary {self.plan.space}: objectives on '{d}' data need a data clause")
            else:
                batches[d] = self.data.batch("auxiliary")
        inputs, masks, groups = {}, {}, {}
        for d, t, r, _ in sampled:
            ids = batches[d][0]
            ids = (ids.round() if ids.is_floating_point() else ids).long().cpu()
            valid = ids != special["pad"]
            if (d, t) not in inputs:
                plain = valid & (ids != special.get("cls", -1)) & (ids != special.get("sep", -1))
                selected = plain & (torch.rand(ids.shape, generator=gen) < SELECT)
                inputs[d, t] = (self.prims["transform"][t].apply(ids, selected, vocab, special, gen), selected)
            if (d, r) not in masks:
                masks[d, r] = self.prims["represent"][r].mask(valid, gen)
            if (d, t, r) not in groups:
                device = c.x.device
                new, selected = inputs[d, t]
                y = batches[d][1]
                groups[d, t, r] = (new.to(device), masks[d, r].to(device=device, dtype=self.prog.dtype),
                                   AuxBatch(ids.to(device), selected.to(device), valid.to(device),
                                            y if self.prims["data"][d].stream == "pretrain" else None))
        return Draw(sampled, groups)

    # -- the losses ----------------------------------------------------------------------------------------------
    def losses(self, c) -> tuple[list, torch.Tensor]:
        """(the sampled objectives' names, their losses [n]) on the batch of `c`."""
        draw, states, out = self.draw(c), {}, []
        encoder, keys = self.prog.modules[self.plan.encoder], self.prog.keys[self.plan.encoder]
        enc_params = {k: c.params[full] for k, full in keys}
        for d, t, r, o in draw.sampled:
            ids, attention, batch = draw.groups[d, t, r]
            if (d, t, r) not in states:
                states[d, t, r] = self._encode(encoder, enc_params, ids, attention)
            out.append(self.prims["output"][o].loss(self._head(c, o), states[d, t, r], batch))
        return [".".join(o) for o in draw.sampled], torch.stack(out)

    def _encode(self, encoder, params, ids, attention):
        """The encoder's token states under an attention mask: its `forward(x, attention=, tokens=True)`
        (docs/text.md); an encoder without that contract is a named error."""
        import inspect
        accepted = inspect.signature(encoder.forward).parameters
        if not {"attention", "tokens"} <= set(accepted):
            raise RunError(f"auxiliary {self.plan.space}: encoder '{self.plan.encoder}' ({type(encoder).__name__}) "
                           f"has no forward(x, attention=None, tokens=False): AANG's representations are attention "
                           f"masks over its token states (docs/aang.md; transformer and hf have it)")
        return functional_call(encoder, params, (ids,), {"attention": attention, "tokens": True})

    def _head(self, c, output: str):
        name = self.heads[output]
        module, keys = self.prog.modules[name], self.prog.keys[name]
        params = {k: c.params[full] for k, full in keys}
        return lambda h: functional_call(module, params, (h,))

    def sampled_weights(self, c, names: list) -> torch.Tensor:
        """w~ over the sampled objectives: the `weights` clause's entries renormalized over them."""
        if self.uniform or self.only is not None:
            return torch.full((len(names),), 1.0 / len(names), device=c.x.device, dtype=self.prog.dtype)
        index = {".".join(o): i for i, o in enumerate(self.objectives)}
        w = self.weights(c)[torch.tensor([index[n] for n in names], device=c.x.device)]
        return w / w.sum()

    def term(self, c) -> torch.Tensor:
        """sum_k w~_k L_k over the sampled objectives."""
        names, losses = self.losses(c)
        return (self.sampled_weights(c, names) * losses).sum()


# ---- the META-TARTAN alignment estimator ------------------------------------------------------------------
def similarity(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """<a, b> ("dot", the paper's first-order form) or <a, b> / (|a| |b|) ("cosine", AANG's code).

        >>> float(similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), "cosine"))
        0.7071067690849304
    """
    dot = a @ b
    return dot if kind == "dot" else dot / (a.norm() * b.norm()).clamp_min(1e-12)


class Alignment:
    """`hypergradient auxiliary: alignment(...)`: META-TARTAN's estimate (Dery et al. 2021), as AANG uses it.

    At a meta-step, on the last PT batch: a dev head -- a copy of the meta-objective's heads, trained
    `dev_steps` steps of SGD (`dev_lr`) on the meta-objective's batch with the encoder fixed -- gives the
    end task's dev gradient g_dev = d L_dev / d theta_body; each sampled objective k (and the end task
    itself) its body gradient g_k. With s_k = sim(g_k, g_dev) (cosine, or the dot product), the first-order
    change of L_dev under a step on sum_k omega_k L_k is -eta sum_k omega_k s_k, so d L_dev / d omega_k is
    taken as -s_k for every loss weight omega_k (the end task's weight, each sampled objective's
    renormalized weight w~_k), and the hypergradient of every meta-parameter those weights depend on is
    -sum_k s_k d omega_k / d phi (one vector-Jacobian product)."""

    stages = ("auxiliary",)

    def __init__(self, similarity: str = "cosine", dev_steps: int = 5, dev_lr: float = 0.1):
        self.kind, self.dev_steps, self.dev_lr = similarity, dev_steps, dev_lr

    def dev_gradient(self, trainer, state, val_batch) -> list:
        """g_dev: the meta-objective's gradient in the body, through heads fitted on the dev batch."""
        params, body = state.params, trainer.shared
        heads = [k for k in trainer.val_keys if k not in set(body)]
        fitted = {k: params[k].detach().clone().requires_grad_() for k in heads}
        fixed = {k: t.detach() for k, t in params.items()}
        metas = {n: t.detach() for n, t in state.metas.items()}
        for _ in range(self.dev_steps):
            loss = trainer.loss_val({**fixed, **fitted}, metas, *val_batch)
            grads = torch.autograd.grad(loss, list(fitted.values()), allow_unused=True, materialize_grads=True)
            fitted = {k: (t - self.dev_lr * g).detach().requires_grad_() for (k, t), g in zip(fitted.items(), grads)}
        view = {**{k: t.detach() for k, t in params.items()}, **{k: params[k].detach().requires_grad_() for k in body},
                **{k: t.detach() for k, t in fitted.items()}}
        loss = trainer.loss_val(view, metas, *val_batch)
        return list(torch.autograd.grad(loss, [view[k] for k in body], allow_unused=True, materialize_grads=True))

    def scores(self, trainer, state, pt_batch, g_dev) -> tuple[list, torch.Tensor]:
        """(names, s): the end task and each sampled objective, s_k = sim(g_k, g_dev) in the body."""
        from mptc.runtime.program import Ctx
        aux, body = trainer.prog.aux, trainer.shared
        view = {**{k: t.detach() for k, t in state.params.items()},
                **{k: state.params[k].detach().requires_grad_() for k in body}}
        metas = {n: t.detach() for n, t in state.metas.items()}
        c = Ctx(view, metas, *pt_batch)
        names, losses = aux.losses(c)
        flat_dev = torch.cat([g.flatten() for g in g_dev])
        out = []
        for loss in [aux.end_loss(view, metas, *pt_batch), *losses]:
            g = torch.autograd.grad(loss, [view[k] for k in body], retain_graph=True, allow_unused=True,
                                    materialize_grads=True)
            out.append(similarity(torch.cat([t.flatten() for t in g]), flat_dev, self.kind))
        return ["end_task", *names], torch.stack(out)

    def through_aux(self, trainer, state, pt_batch, val_batch) -> tuple[dict, dict]:
        """({meta: hypergradient} of the meta-parameters the loss weights depend on, info)."""
        from mptc.runtime.program import Ctx
        aux = trainer.prog.aux
        g_dev = self.dev_gradient(trainer, state, val_batch)
        names, s = self.scores(trainer, state, pt_batch, g_dev)
        c = Ctx({k: t.detach() for k, t in state.params.items()}, state.metas, *pt_batch)
        omega = torch.cat([torch.as_tensor(aux.end_weight(c), device=s.device, dtype=s.dtype).reshape(1),
                           aux.sampled_weights(c, names[1:])])
        owned = [n for n in trainer.aux_metas]
        grads = torch.autograd.grad(omega, [state.metas[n] for n in owned], grad_outputs=-s.detach(),
                                    allow_unused=True, materialize_grads=True)
        info = {"alignment": {n: round(float(v), 6) for n, v in zip(names, s)}}
        return dict(zip(owned, grads)), info


class Bilevel:
    """`hypergradient auxiliary: bilevel`: no estimator of its own; the auxiliary weights are learned like
    every meta-parameter, through the pretrain and finetune estimators (IFT + FT unroll)."""

    stages = ("auxiliary",)


# ---- the baselines of AANG's Table 2 (components/catalog_aang.py declares them) ----------------------------
def _run(trainer, mode: str, only=None, uniform=False, loss=None, estimator="keep"):
    """A PT (or meta) run from the run's initial state with the auxiliary term changed: `only` these
    objectives (uniform weights), `uniform` weights over the sampled ones, `loss` instead of the PT loss,
    `estimator` instead of the auxiliary estimator; everything restored afterwards."""
    from mptc.runtime.loop import meta_train
    aux = trainer.prog.aux
    saved = (aux.only, aux.uniform, trainer.loss_pt, trainer.aux_est)
    aux.only, aux.uniform = only, uniform
    if loss is not None:
        trainer.loss_pt = loss
    if estimator != "keep":
        trainer.aux_est = estimator
    trainer.prog.reseed_noise(trainer.plan.train.seed)
    try:
        return meta_train(trainer, trainer.init_state(), mode=mode)
    finally:
        aux.only, aux.uniform, trainer.loss_pt, trainer.aux_est = saved


def _single(trainer, name: str):
    from mptc.components.catalog_aang import SINGLE_OBJECTIVES
    return [SINGLE_OBJECTIVES[name]]


def _aux_only(trainer, end_task: bool):
    """The PT loss of the objectives `aux.only` names at equal weights, with the end task's loss or without."""
    from mptc.runtime.program import Ctx
    aux = trainer.prog.aux

    def loss(params, metas, x, y):
        term = aux.term(Ctx(params, metas, x, y))
        return term + aux.end_loss(params, metas, x, y) if end_task else term
    return loss


def no_auxiliary(trainer):
    """The end task alone: the pretrain loss without the auxiliary term (nor its weight), the same steps."""
    return _run(trainer, "pretrain", loss=trainer.prog.aux.end_loss)


def static_multitask(trainer):
    """The end task and the space's objectives at uniform, fixed weights, sampled as in the meta run; the
    end task's weight at its initial value."""
    return _run(trainer, "pretrain", uniform=True)


def tapt(trainer):
    """Task-adaptive pre-training (Gururangan et al. 2020): BERT's masked LM alone on the end task's data."""
    return _run(trainer, "pretrain", only=_single(trainer, "tapt"), loss=_aux_only(trainer, end_task=False))


def _single_objective(name: str):
    def baseline(trainer):
        return _run(trainer, "pretrain", only=_single(trainer, name), loss=_aux_only(trainer, end_task=True))
    baseline.__name__ = baseline.__qualname__ = f"single_{name}"
    baseline.__doc__ = f"The end task and the {name} objective, equal weights."
    return baseline


single_bert, single_gpt, single_xlnet = (_single_objective(n) for n in ("bert", "gpt", "xlnet"))


def meta_tartan(trainer):
    """META-TARTAN (Dery et al. 2021): the end task and BERT's masked LM, the end task's weight learned by
    the alignment estimator (the spec's own settings when it uses alignment)."""
    est = trainer.aux_est if isinstance(trainer.aux_est, Alignment) else Alignment()
    return _run(trainer, "meta", only=_single(trainer, "meta_tartan"), estimator=est)


def bilevel(trainer):
    """The same space weighted through the spec's pretrain and finetune estimators (IFT + FT unroll)."""
    return _run(trainer, "meta", estimator=None)
