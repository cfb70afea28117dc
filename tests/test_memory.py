"""runtime/memory.py: on glibc, the memory a meta-step frees is reused by the next one, not faulted in again."""
import subprocess
import sys

import pytest

from mptc.cli import main
from mptc.runtime import executor, memory

from tests.conftest import tiny_spec  # noqa: E402

GLIBC = memory.GLIBC

ROUNDS = """
import resource, sys, torch
torch.manual_seed(0)
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    from mptc.runtime.memory import keep_freed_memory
    assert keep_freed_memory()
W = [torch.randn(1024, 1024, requires_grad=True) for _ in range(3)]
x = torch.randn(128, 1024)
def faults_of_a_round():   # a Hessian-vector product at width 1024: the buffers a meta-step allocates and frees
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    h = x
    for w in W:
        h = torch.tanh(h @ w)
    g = torch.autograd.grad(h.square().mean(), W, create_graph=True)
    v = [torch.randn_like(w) for w in W]
    hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), W)
    del h, g, v, hv
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[faults_of_a_round() for _ in range(int(sys.argv[2]))])
"""


def _rounds(mode: str, rounds: int) -> list[int]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode, str(rounds)], capture_output=True, text=True, check=True)
    return [int(n) for n in out.stdout.split()]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    """After two warm-up rounds, glibc's defaults fault in thousands of pages a round again (measured: 35-41k
    over 12 rounds, one 4 KiB page each); kept, only the heap's growth to a new high-water mark faults (2-7k)."""
    default, kept = _rounds("default", 14)[2:], _rounds("keep", 14)[2:]
    assert sum(default) > 12_000
    assert sum(kept) * 3 < sum(default)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_users_own_glibc_settings_stand(monkeypatch):
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert memory.keep_freed_memory() is False
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert memory.keep_freed_memory() is False


def test_a_cpu_run_keeps_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(executor, "keep_freed_memory", lambda: calls.append(1))
    spec = tmp_path / "tiny.mpt"
    spec.write_text(tiny_spec(meta_steps=1))
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert calls == [1]
