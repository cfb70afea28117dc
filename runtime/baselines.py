"""The co-training baselines of Raghu et al. (2021), Table 1: one network trained on the PT and the FT
labels together, with the same budget as the meta run (``warmup + meta_steps * P`` steps, each on one
PT batch and one FT-train batch, from the same initialisation and batch streams).

``cotrain``: alternating batches, one optimizer (the PT stage's) over every parameter either loss
trains: a step on the PT loss (task weights at their initial values), then a step on the FT loss,
which here also trains the encoder.

``cotrain_pcgrad``: one step per PT/FT batch pair on the sum of both gradients after PCGrad
(Yu et al. 2020, "Gradient Surgery for Multi-Task Learning") on the shared parameters: where the two
gradients conflict (``g_pt . g_ft < 0``) each is projected onto the normal plane of the other,

    g_pt' = g_pt - (g_pt . g_ft / |g_ft|^2) g_ft,   g_ft' = g_ft - (g_ft . g_pt / |g_pt|^2) g_pt,

and the heads keep their own gradients (the projection is over the encoder's parameters, flattened).

    >>> a, b = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]
    >>> [g.tolist() for g in pcgrad(a, b)]
    [[0.5, 1.5]]
"""
from __future__ import annotations

import torch

__all__ = ["cotrain", "cotrain_pcgrad", "no_pretrain", "pcgrad", "plain_pretrain"]


def no_pretrain(trainer):
    """The `no_pretrain` baseline: the encoder at its initialisation."""
    return trainer.init_state()


def plain_pretrain(trainer):
    """The `pretrain` baseline: the same PT steps with the meta-parameters fixed at their initial values."""
    from mptc.runtime.loop import meta_train
    return meta_train(trainer, trainer.init_state(), mode="pretrain")


def pcgrad(g1: list, g2: list) -> list:
    """``g1' + g2'`` after projecting each conflicting gradient onto the normal plane of the other."""
    f1, f2 = torch.cat([g.flatten() for g in g1]), torch.cat([g.flatten() for g in g2])
    dot = f1 @ f2
    if dot < 0:  # conflict: remove from each the component along the other (both from the originals)
        f1, f2 = (f1 - dot / (f2 @ f2).clamp_min(1e-30) * f2, f2 - dot / (f1 @ f1).clamp_min(1e-30) * f1)
    total, out, start = f1 + f2, [], 0
    for g in g1:
        out.append(total[start:start + g.numel()].view_as(g))
        start += g.numel()
    return out


def _keys(trainer) -> list[str]:
    """Every parameter the PT or the FT loss trains (encoder, PT head, FT head), in a stable order."""
    return list(dict.fromkeys([*trainer.pt_keys, *trainer.shared, *trainer.ft_keys]))


def _grads(loss_fn, params: dict, metas: dict, batch, keys: list[str]) -> list:
    """d loss / d params[keys]; zeros for parameters the loss does not reach (the other stage's head)."""
    loss = loss_fn(params, metas, *batch)
    grads = torch.autograd.grad(loss, [params[k] for k in keys], allow_unused=True)
    return [torch.zeros_like(params[k]) if g is None else g for k, g in zip(keys, grads)]


def _budget(trainer) -> int:
    plan = trainer.plan
    return plan.train.warmup + plan.train.meta_steps * plan.pretrain.steps


def _setup(trainer):
    state = trainer.init_state()
    keys = _keys(trainer)
    metas = {n: t.detach() for n, t in state.metas.items()}  # task weights fixed at their initial values
    return state, keys, metas, trainer.pt_opt.init([state.params[k] for k in keys])


def cotrain(trainer):
    """The ``cotrain`` baseline (module docstring): alternating PT and FT steps of one optimizer."""
    state, keys, metas, opt_state = _setup(trainer)
    for _ in range(_budget(trainer)):
        for stream, loss in (("pretrain", trainer.loss_pt), ("finetune", trainer.loss_ft)):
            grads = _grads(loss, state.params, metas, trainer.data.batch(stream), keys)
            opt_state = trainer.apply(state, keys, trainer.pt_opt, opt_state, grads)
    return state


def cotrain_pcgrad(trainer):
    """The ``cotrain_pcgrad`` baseline (module docstring): PCGrad between the PT and FT gradients."""
    state, keys, metas, opt_state = _setup(trainer)
    shared = [i for i, k in enumerate(keys) if k in set(trainer.shared)]
    for _ in range(_budget(trainer)):
        g_pt = _grads(trainer.loss_pt, state.params, metas, trainer.data.batch("pretrain"), keys)
        g_ft = _grads(trainer.loss_ft, state.params, metas, trainer.data.batch("finetune"), keys)
        grads = [a + b for a, b in zip(g_pt, g_ft)]                  # heads: their own gradients
        if shared:
            merged = pcgrad([g_pt[i] for i in shared], [g_ft[i] for i in shared])
            for i, g in zip(shared, merged):
                grads[i] = g
        opt_state = trainer.apply(state, keys, trainer.pt_opt, opt_state, grads)
    return state
