"""One PT step of the reference problem (`../shared/bench/common.py`, width 256 by default), three ways, and
the Adam update alone, each the median of alternated repeats in one process:

* `plain`: the benchmark harness's baseline step (torch.optim.Adam defaults, loss.backward());
* `mptc`: the executor's `Trainer.pt_step` on the same batches (an online step: fused Adam kernel);
* `mptc_keep`: the same step keeping its gradient graph (the fused schedule's last PT step);
* `adam_foreach`, `adam_fused`, `adam_torch`: the update alone over the model's tensors by the
  `_foreach_*` kernels, torch's fused Adam kernel (what mptc's step uses where `_fusable`), and
  torch.optim.Adam's CPU default.

    .venv/bin/python benchmarks/pt_step.py [--width 256] [--repeat 30]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meta_step import BENCH, load_state, trainer_for  # noqa: E402


def median_ms(fns: dict, repeat: int, inner: int) -> dict:
    """Median wall time in ms of one call of each function, the functions alternated `repeat` times."""
    taken = {name: [] for name in fns}
    for rep in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            for i in range(inner):
                fn(rep, i)
            taken[name].append((time.perf_counter() - start) / inner * 1e3)
    return {name: round(statistics.median(t[3:] or t), 3) for name, t in taken.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    sys.path.insert(0, str(BENCH))
    import common
    from mptc.runtime import optim
    from mptc.runtime.optim import adam
    common.HERE = tempfile.mkdtemp(prefix="mptc-bench-")
    S = common.Setup(args.width)
    trainer = trainer_for(args.width, "fused")
    state = load_state(trainer, S)
    net = S.new_net()
    opt = torch.optim.Adam(net.parameters(), lr=common.LR_PT)

    def plain(m, p):
        x, y = S.pt_batch(m % common.N_META, p)
        opt.zero_grad(set_to_none=True)
        common.pt_loss(net(x), y, S.phi0).backward()
        opt.step()

    def mptc(m, p):
        trainer.pt_step(state, S.pt_batch(m % common.N_META, p))

    def mptc_keep(m, p):
        trainer.pt_step(state, S.pt_batch(m % common.N_META, p), keep=True)
        state.est.pop("kept", None)

    out = median_ms({"plain": plain, "mptc": mptc, "mptc_keep": mptc_keep}, args.repeat, common.P_STEPS)
    tensors = [q.detach().clone() for q in net.parameters()]
    grads = [torch.randn_like(q) for q in tensors]
    ours = adam(common.LR_PT)
    ours_state = ours.init(tensors)
    for q, g in zip(net.parameters(), grads):
        q.grad = g.clone()

    foreach_state = ours.init(tensors)

    def adam_foreach(m, p):                               # the same step with the fused kernel ruled out
        nonlocal foreach_state
        fusable, optim._fusable = optim._fusable, lambda *a: False
        try:
            foreach_state = ours.step_(tensors, grads, foreach_state)
        finally:
            optim._fusable = fusable

    def adam_fused(m, p):
        nonlocal ours_state
        ours_state = ours.step_(tensors, grads, ours_state)

    out.update(median_ms({"adam_foreach": adam_foreach, "adam_fused": adam_fused,
                          "adam_torch": lambda m, p: opt.step()}, args.repeat, 20))
    print(json.dumps({"width": args.width, "threads": torch.get_num_threads(), "ms": out}))


if __name__ == "__main__":
    main()
