"""AANG's stage primitives (Dery et al., ICLR 2023, "AANG: Automating Auxiliary Learning"), declared once.

An auxiliary objective is one choice per stage: the data it reads, the transform applied to the input,
the representation (an attention mask over the tokens) and the output predicted. Each choice is a
registry entry (components/registry.py: AUX_DATA, TRANSFORMS, REPRESENTATIONS, OUTPUTS) whose
implementation lives in runtime/aang.py; a user's own primitive registers the same way from a file the
spec imports (docs/aang.md) and can then be named in a space.

Primitives carry traits, from which the paper's illegal combinations follow as default exclude rules
(`default_rules`), applied to every space whose stages are data, transform, represent and output:

    >>> [(why.split(":")[0], conds) for why, conds in default_rules(
    ...     {"data": ("end_task", "in_domain"), "represent": ("bidirectional", "left_to_right"),
    ...      "output": ("denoise_token", "end_task")})]   # doctest: +NORMALIZE_WHITESPACE
    [('a sentence-level output', (('represent', ('left_to_right',)), ('output', ('end_task',)))),
     ('an end-task output', (('data', ('in_domain',)), ('output', ('end_task',))))]
"""
from __future__ import annotations

from mptc.components.registry import (AUX_DATA, AUX_STAGES, BASELINES, ESTIMATORS, OUTPUTS, REPRESENTATIONS,
                                      TRANSFORMS, Param)

_RT = "mptc.runtime.aang"

# ---- data: which batch an objective reads ----------------------------------------------------------
AUX_DATA.register("end_task", [], target=f"{_RT}:EndTaskData", traits=("labelled",),
                  doc="the end task's own inputs (the pretrain stage's data, with its labels)")
AUX_DATA.register("in_domain", [], target=f"{_RT}:InDomainData",
                  doc="unlabelled in-domain text: the auxiliary block's `data` clause (e.g. text.lines)")

# ---- transforms of the input tokens (BERT's selection: 15% of the non-special tokens) ----------------
TRANSFORMS.register("bert_op", [], target=f"{_RT}:BertOp",
                    doc="BERT's corruption: of the selected tokens 80% become [MASK], 10% a random token, 10% stay")
TRANSFORMS.register("mask", [], target=f"{_RT}:MaskTokens", doc="every selected token becomes [MASK]")
TRANSFORMS.register("replace", [], target=f"{_RT}:ReplaceTokens", doc="every selected token becomes a random token")
TRANSFORMS.register("none", [], target=f"{_RT}:NoTransform",
                    doc="the input unchanged (the tokens are still selected: the outputs' targets)")

# ---- representations: attention masks over the tokens --------------------------------------------------
REPRESENTATIONS.register("bidirectional", [], target=f"{_RT}:Bidirectional",
                         doc="every token attends to every token (BERT)")
REPRESENTATIONS.register("left_to_right", [], target=f"{_RT}:LeftToRight", traits=("unidirectional", "causal"),
                         doc="token i attends to tokens j <= i (GPT)")
REPRESENTATIONS.register("right_to_left", [], target=f"{_RT}:RightToLeft", traits=("unidirectional",),
                         doc="token i attends to tokens j >= i")
REPRESENTATIONS.register("random_factorized", [], target=f"{_RT}:RandomFactorized",
                         doc="a random factorization order per batch (XLNet): token i attends to the tokens before "
                             "it in that order, never to itself, and to [CLS] (so no row is empty)")

# ---- outputs: what is predicted, each with its own head (a linear map) ----------------------------------
OUTPUTS.register("denoise_token", [], target=f"{_RT}:DenoiseToken", traits=("vocab",),
                 doc="the original token at every selected position (a vocabulary-sized head on the token states)")
OUTPUTS.register("next_token", [], target=f"{_RT}:NextToken", traits=("next", "vocab"),
                 doc="the token after each position (a vocabulary-sized head on the token states)")
OUTPUTS.register("end_task", [], target=f"{_RT}:EndTaskOutput", traits=("sentence", "labels"),
                 doc="the end task's label from the [CLS] state of the transformed input (a class-sized head)")

# ---- how the auxiliary block's weights are learned (`hypergradient auxiliary: ...`) -----------------------
ESTIMATORS.register("alignment", [
    Param("similarity", "choice", "cosine", choices=("cosine", "dot"),
          doc="cosine (AANG's code) or the dot product (the paper's first-order form)"),
    Param("dev_steps", "int", 5, min=0, max=10 ** 4, doc="SGD steps fitting the dev head on the meta-objective's batch"),
    Param("dev_lr", "float", 0.1, min=0, min_exclusive=True),
], target=f"{_RT}:Alignment", traits=("auxiliary",),
    doc="META-TARTAN: d L_dev / d (an objective's loss weight) = -sim(its body gradient, the dev gradient)")
ESTIMATORS.register("bilevel", [], target=f"{_RT}:Bilevel", traits=("auxiliary",),
                    doc="the weights learned like every meta-parameter: through the pretrain and finetune "
                        "estimators (IFT + FT unroll)")
AUX_ESTIMATOR_DEFAULT = "alignment"

# ---- the baselines of AANG's Table 2 (each needs an auxiliary block) ----------------------------------------
# the single objectives of the classic pre-training recipes, by baseline
SINGLE_OBJECTIVES = {"tapt": "end_task.bert_op.bidirectional.denoise_token",
                     "bert": "end_task.bert_op.bidirectional.denoise_token",
                     "gpt": "end_task.none.left_to_right.next_token",
                     "xlnet": "end_task.none.random_factorized.denoise_token",
                     "meta_tartan": "end_task.bert_op.bidirectional.denoise_token"}
_B = "mptc.runtime.aang"
BASELINES.register("no_auxiliary", [], target=f"{_B}:no_auxiliary", traits=("auxiliary",),
                   doc="the end task alone: the pretrain loss without the auxiliary term, the same steps")
BASELINES.register("static_multitask", [], target=f"{_B}:static_multitask", traits=("auxiliary",),
                   doc="the end task and the space's objectives at uniform, fixed weights (sampled as the meta run)")
BASELINES.register("tapt", [], target=f"{_B}:tapt", traits=("auxiliary",),
                   doc="task-adaptive pre-training: BERT's masked LM alone on the end task's data, then fine-tuning")
for _name, _style in (("bert", "BERT"), ("gpt", "GPT"), ("xlnet", "XLNet")):
    BASELINES.register(_name, [], target=f"{_B}:single_{_name}", traits=("auxiliary",),
                       doc=f"the end task with one {_style}-style objective ({SINGLE_OBJECTIVES[_name]}), equal weights")
BASELINES.register("meta_tartan", [], target=f"{_B}:meta_tartan", traits=("auxiliary",),
                   doc="META-TARTAN: the end task and BERT's masked LM, the end task's weight learned by alignment")
BASELINES.register("bilevel", [], target=f"{_B}:bilevel", traits=("auxiliary",),
                   doc="the same space weighted by the spec's pretrain and finetune estimators (IFT + FT unroll) "
                       "instead of alignment")

# The paper's illegal combinations, by trait: (why, [(stage, trait the stage's choice has, or not)])
_RULES = (
    ("a sentence-level output needs a representation that sees the whole input",
     (("represent", "unidirectional", True), ("output", "sentence", True))),
    ("an end-task output needs the end task's labels", (("data", "labelled", False), ("output", "labels", True))),
    ("a next-token output needs a left-to-right representation (else the next token is in view)",
     (("output", "next", True), ("represent", "causal", False))),
)


def is_aang(choices: dict) -> bool:
    """Whether a space's stages are AANG's four, every choice a registered primitive of its stage."""
    return set(choices) == set(AUX_STAGES) and all(
        all(c in AUX_STAGES[stage] for c in names) for stage, names in choices.items())


def default_rules(choices: dict) -> list[tuple[str, tuple]]:
    """The default exclude rules of a space with AANG's stages: (why, ((stage, choices), ...)) for each rule
    that matches some choice on every condition, the choices in the space's order."""
    out = []
    for why, conditions in _RULES:
        conds = []
        for stage, trait, has in conditions:
            if stage not in choices:
                break
            hit = tuple(c for c in choices[stage] if c in AUX_STAGES[stage]
                        and (trait in AUX_STAGES[stage].get(c).traits) == has)
            if not hit:
                break
            conds.append((stage, hit))
        else:
            out.append((why, tuple(conds)))
    return out
