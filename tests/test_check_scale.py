"""Specs far larger than people write still check and lower without recursion errors: long `let`
chains (each let's shape and free names are computed once, dependencies first)."""
from pathlib import Path

import pytest

from mptc.compiler.lower import compile_spec
from mptc.errors import SpecErrors

QUICKSTART = (Path(__file__).parents[1] / "specs" / "quickstart.mpt").read_text()
N = 1500


def _chain(first: str) -> str:
    lets = "\n".join(f"let t{i} = t{i - 1} + {first if i == 1 else '1'}" for i in range(1, N))
    return QUICKSTART.replace("let task_weight = 2 * sigmoid(w)",
                              f"let t0 = w\n{lets}\nlet task_weight = 2 * sigmoid(w) + 0 * t{N - 1}")


def test_a_long_let_chain_compiles():
    plan = compile_spec(_chain("1"), "chain.mpt")
    assert len(plan.lets) == N + 1 and all(let.meta_only for let in plan.lets)


def test_a_long_let_chain_reading_the_batch_reports_its_one_shape_error():
    with pytest.raises(SpecErrors) as info:
        compile_spec(_chain("x"), "chain.mpt")
    assert [e.message for e in info.value.errors] == ["cannot combine shapes [100] and [batch, 32] with '+'"]
