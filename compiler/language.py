"""The language's vocabulary in one table: each declaration's keyword and AST class, each clause's keyword
and class, which stage takes which clauses, and the roots `--set` reaches. The grammar (grammar/mpt.lark)
is the syntax; tests/test_language.py checks this table against it, so the two cannot drift apart.

    >>> DECLARATIONS["meta_objective"].__name__, CLAUSE_NAME[ast.StepsClause]
    ('ObjectiveDecl', 'steps')
"""
from __future__ import annotations

from mptc.compiler import ast

# keyword -> the AST class its declaration builds (the three stage keywords build a Stage)
DECLARATIONS = {"spec": ast.SpecHeader, "import": ast.ImportDecl, "data": ast.DataDecl, "model": ast.ModelDecl, "head": ast.HeadDecl,
                "meta": ast.MetaDecl, "let": ast.LetDecl, "pretrain": ast.Stage, "finetune": ast.Stage,
                "auxiliary": ast.Stage, "space": ast.SpaceDecl, "meta_objective": ast.ObjectiveDecl,
                "hypergradient": ast.HypergradientDecl, "meta_optimizer": ast.MetaOptimizerDecl,
                "train": ast.TrainDecl, "evaluate": ast.EvaluateDecl}
KEYWORDS = tuple(DECLARATIONS)
STAGES = ("pretrain", "finetune", "auxiliary")
NAMED = (ast.DataDecl, ast.ModelDecl, ast.HeadDecl, ast.MetaDecl, ast.LetDecl, ast.SpaceDecl)  # introduce a name
REPEATED = (ast.ImportDecl,)  # neither named nor single: a spec gives as many as it needs
SINGLE_KEYWORD = {cls: kw for kw, cls in DECLARATIONS.items()
                  if cls not in NAMED and cls not in REPEATED and kw not in STAGES}
SINGLE = tuple(SINGLE_KEYWORD)  # declarations a spec gives at most once

# clause keyword -> its AST class; stage -> the clauses it takes
CLAUSES = {"data": ast.DataClause, "loss": ast.LossClause, "optimizer": ast.OptimizerClause,
           "steps": ast.StepsClause, "unroll": ast.UnrollClause, "augment": ast.AugmentClause,
           "sample": ast.SampleClause, "weights": ast.WeightsClause, "end_task_weight": ast.EndTaskWeightClause}
CLAUSE_NAME = {cls: name for name, cls in CLAUSES.items()}
STAGE_CLAUSES = {"pretrain": ("data", "loss", "optimizer", "steps", "augment"),
                 "finetune": ("data", "loss", "optimizer", "unroll"),
                 "auxiliary": ("data", "sample", "weights", "end_task_weight")}

# what `--set ROOT.…=VALUE` reaches (compiler/overrides.py)
OVERRIDE_PREFIX = "--set "  # an override's errors point into the synthetic file `--set ITEM`, whose text is ITEM
OVERRIDE_ROOTS = ("data", "model", "head", "train", "meta_optimizer", "evaluate", "pretrain", "finetune", "meta",
                  "hypergradient")
