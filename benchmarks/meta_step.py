"""One meta-step of mptc's runtime against the hand-written reference, in one process.

The problem is `../shared/bench/common.py` (MLP 128 -> H -> H, 500 PT tasks, 10 FT tasks, batch 256,
P=10 Adam PT steps, K=1 SGD FT step with the FT head reset to a fixed init, Neumann J=5, alpha=1e-2,
meta Adam 1e-2), written as a `.mpt` spec (SPEC below) and run through `compile_spec`, `Program` and
the executor's `Trainer` on the benchmark's own data, initial weights and batch schedule. Measured:

* ratio: meta-step time / time of 10 plain PT steps (torch.optim.Adam, loss.backward()), alternated
  in the same process by the benchmark's own harness (`common.run_benchmark`), for the hand-written
  implementation (`impl_manual.py`), mptc with the same estimator, and mptc with `fused: true` (the
  last PT step's gradient graph serves the Hessian-vector products and the mixed term: one forward
  and backward pass less);
* agreement: at each of the first meta-steps, the hand-written hypergradient and mptc's (same
  estimator) on the same state and batches; their cosine similarity and relative error;
* quality of the fused schedule: FT-val loss after `--long` meta-steps, fused vs the same estimator.

    .venv/bin/python benchmarks/meta_step.py --widths 256 1024
    .venv/bin/python benchmarks/meta_step.py --json [--quick]    # the contract: one JSON object, last line

`--json` takes each ratio over `--measure` meta-steps (default 60, after the harness's 3 warm-up ones; the
harness's own default, 20, left the ratios near their targets spread by +-0.03 from run to run on a 2-core
VM: benchmarks/RESULTS.md) and adds the variants `hessian_batch: 64` (with `fused: true`: the Hessian-vector products on the first
64 examples of the batch, the mixed term from the last PT step's kept graph, so the full-batch gradient is
not formed again; its FT-val gap stays well within 1%) and the amortized solver (`amortized(iters: 1, method:
richardson)` with `fused`), each one's FT-val gap after `--long` meta-steps, the amortized hypergradient's
cosine to the unamortized one at the same states, the IFT peak RSS at P = 100 over P = 10 (separate
processes) and the meta-step time with 10^6 over 10^2 meta-parameters, and prints them as one JSON object
(`--quick`: width 256 only, fewer steps, within a minute). `ratio_manual_hessian_batch_64` is the same
`hessian_batch: 64` schedule hand-written in plain torch.autograd (`make_manual_hessian_batch`): what the
variant costs without mptc, on the same machine in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench"
SPEC = """
spec bench "the reference problem of shared/bench/common.py"
data pt = synthetic.multitask(examples: 8, dim: 128, tasks: 500, related: 0)
data ft = synthetic.multitask_ft(of: pt, examples: 8, tasks: 10) split train 0.5, val 0.5
model encoder = mlp(hidden: [{h}, {h}])
head pt_head = linear(out: 500)
head ft_head = linear(out: 10)
meta w: vector[{n_phi}] = 0.0
let task_weight = {weight}
pretrain {{
  data pt batch 256
  loss mean(task_weight * bce(pt_head(encoder(x)), y))
  optimizer adam(lr: 1e-3)
  steps {P}
}}
finetune {{
  data ft.train batch 256
  loss mean(bce(ft_head(encoder(x)), y))
  optimizer sgd(lr: 0.1)
  unroll 1 update ft_head
}}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
hypergradient pretrain: ift({ift}), finetune: unroll
meta_optimizer adam(lr: 1e-2)
train meta_steps 1 seed 0 device cpu
"""


FUSED = ", fused: true"  # the ift options of the fused variant (--fused-options)
NEUMANN = "neumann(terms: 5, scale: 1e-2)"
VARIANTS = {"plain": "", "fused": None, "hessian_batch_64": ", fused: true, hessian_batch: 64",
            "amortized": "AMORTIZED"}             # ift(...) options after the solver (None: FUSED)
AMORTIZED = "amortized(iters: 1, method: richardson, scale: 1e-2), fused: true"


def ift_options(variant) -> str:
    """The ift(...) arguments of a variant (True/False: the fused and plain ones, as before)."""
    if variant is True or variant == "fused":
        return NEUMANN + FUSED
    if variant is False or variant == "plain":
        return NEUMANN
    return AMORTIZED if variant == "amortized" else NEUMANN + VARIANTS[variant]


def spec_text(width: int, variant, P: int = 10, n_phi: int = 500) -> str:
    weight = "2 * sigmoid(w)" if n_phi == 500 else "mean(2 * sigmoid(w))"   # n_phi != 500: one shared weight
    return SPEC.format(h=width, ift=ift_options(variant), P=P, n_phi=n_phi, weight=weight)


def trainer_for(width: int, fused, P: int = 10, n_phi: int = 500):
    """A Trainer over the spec at `width` (its data unused: batches come from the benchmark); `fused`: a
    variant's name, or True/False for the fused/plain estimator."""
    from mptc.compiler.lower import compile_spec
    from mptc.runtime.loop import Trainer
    from mptc.runtime.program import Program
    plan = compile_spec(spec_text(width, fused, P, n_phi), "bench.mpt")
    prog = Program(plan, torch.device("cpu"))
    return Trainer(plan, prog, data=None)


def load_state(trainer, S):
    """mptc's State at the benchmark's initial weights: net0 -> encoder/pt_head, phi0 -> w."""
    state = trainer.init_state()
    names = {"enc.0": "encoder.0", "enc.2": "encoder.2", "pt_head": "pt_head"}
    for key, t in S.net0.state_dict().items():
        module, _, leaf = key.rpartition(".")
        state.params[f"{names[module]}.{leaf}"] = t.detach().clone().requires_grad_()
    state.pt_opt = trainer.pt_opt.init(trainer.sel(state.params, trainer.pt_keys))
    state.metas["w"] = S.phi0.clone().requires_grad_()
    state.meta_opt = trainer.meta_opt.init([state.metas["w"]])
    return state


def reset_ft(state, S):
    """The FT head at its fixed init psi_FT0, as the benchmark does at every meta-step."""
    state.params["ft_head.weight"] = S.ft0[0].clone().requires_grad_()
    state.params["ft_head.bias"] = S.ft0[1].clone().requires_grad_()


def make_mptc(fused: bool):
    """`make_meta_step(S)` for common.run_benchmark: P PT steps, FT unroll, IFT, meta-step."""
    import common

    def make(S):
        trainer = trainer_for(S.net0.enc[0].out_features, fused)
        state = load_state(trainer, S)

        def meta_step(m):
            keeps = trainer.pt.keeps_last_step
            for p in range(common.P_STEPS):
                batch = S.pt_batch(m, p)
                trainer.pt_step(state, batch, keep=keeps and p == common.P_STEPS - 1)
            S.t_pt_end = __import__("time").perf_counter()
            reset_ft(state, S)
            xt, yt, xv, yv = S.ft_batches(m)
            _, hg, _ = trainer.hypergradient(state, batch, [(xt, yt)], (xv, yv))
            trainer.meta_update(state, hg)
            return hg["w"]
        make.state, make.trainer = state, trainer
        return meta_step
    return make


def make_manual_hessian_batch(S, sub: int = 64):
    """`make_meta_step(S)`: the `hessian_batch_64` schedule hand-written in plain torch.autograd, the floor
    for what mptc's variant can cost: the last PT step's differentiable gradient at theta_{P-1} (taken on
    copies of the weights, so the optimizer's in-place step leaves its graph intact) gives the optimizer its
    gradient and the mixed term; the Neumann products use the gradient on the batch's first `sub` examples;
    v comes from the hand-written FT unroll at theta_P."""
    import time
    import common
    import impl_manual
    from torch.func import functional_call
    net = S.new_net()
    names = [n for n, _ in net.named_parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=common.LR_PT)
    phi = S.phi0.clone().requires_grad_()
    meta_opt = torch.optim.Adam([phi], lr=common.LR_META)

    def loss_at(ps, x, y, w):
        return common.pt_loss(functional_call(net, dict(zip(names, ps)), (x,)), y, w)

    def meta_step(m):
        for p in range(common.P_STEPS - 1):
            x, y = S.pt_batch(m, p)
            opt.zero_grad(set_to_none=True)
            common.pt_loss(net(x), y, phi.detach()).backward()
            opt.step()
        x, y = S.pt_batch(m, common.P_STEPS - 1)
        ps = [q.detach().clone().requires_grad_() for q in net.parameters()]   # theta_{P-1}
        g = torch.autograd.grad(loss_at(ps, x, y, phi), ps, create_graph=True)
        for q, gq in zip(net.parameters(), g):
            q.grad = gq.detach()
        opt.step()
        S.t_pt_end = time.perf_counter()
        v_enc = impl_manual.unrolled_ft_v(net, S.ft0, S.ft_batches(m))
        g_sub = torch.autograd.grad(loss_at(ps, x[:sub], y[:sub], phi.detach()), ps, create_graph=True)
        v = list(v_enc) + [torch.zeros_like(q) for q in net.pt_head.parameters()]
        acc = v
        for _ in range(common.NEUMANN_J):
            hv = torch.autograd.grad(g_sub, ps, grad_outputs=v, retain_graph=True)
            v = [vi - common.NEUMANN_ALPHA * hi for vi, hi in zip(v, hv)]
            acc = [ai + vi for ai, vi in zip(acc, v)]
        p_ = [-common.NEUMANN_ALPHA * ai for ai in acc]
        phi.grad = torch.autograd.grad(g, phi, grad_outputs=p_)[0]
        meta_opt.step()
        return phi.grad
    return meta_step


def agreement(width: int, steps: int) -> dict:
    """Cosine and relative error of mptc's hypergradient to the hand-written one, same state and batches."""
    import common
    import impl_manual
    S = common.Setup(width)
    make = make_mptc(False)
    step = make(S)
    trainer, state = make.trainer, make.state
    cosines, errors = [], []
    for m in range(steps):
        for p in range(common.P_STEPS):
            batch = S.pt_batch(m, p)
            trainer.pt_step(state, batch)
        reset_ft(state, S)
        net = S.new_net()                               # the hand-written reference at mptc's state
        names = {"encoder.0": "enc.0", "encoder.2": "enc.2", "pt_head": "pt_head"}
        net.load_state_dict({f"{names[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}": v.detach()
                             for k, v in state.params.items() if not k.startswith("ft_head")})
        phi = state.metas["w"].detach().clone().requires_grad_()
        v_enc = impl_manual.unrolled_ft_v(net, S.ft0, S.ft_batches(m))
        ref = impl_manual.ift_hypergrad(net, phi, *batch, v_enc)
        xt, yt, xv, yv = S.ft_batches(m)
        _, hg, _ = trainer.hypergradient(state, batch, [(xt, yt)], (xv, yv))
        ours = hg["w"].detach()
        cosines.append(float(ours @ ref / (ours.norm() * ref.norm())))
        errors.append(float((ours - ref).norm() / ref.norm()))
        trainer.meta_update(state, hg)
    del step
    return {"width": width, "steps": steps, "min_cosine": min(cosines), "max_rel_err": max(errors)}


def long_run(width: int, steps: int, fused: bool) -> float:
    """FT-val loss (the meta-objective on the whole FT-val set, FT head after its K=1 step) after `steps`."""
    import common
    common.N_META = steps
    S = common.Setup(width)
    make = make_mptc(fused)
    step = make(S)
    for m in range(steps):
        step(m)
    trainer, state = make.trainer, make.state
    reset_ft(state, S)
    l_val, _, _ = trainer.ft.through_ft(trainer, state, [(S.x_tr, S.y_tr)], (S.x_val, S.y_val))
    return float(l_val)


def amortized_cosine(width: int, steps: int) -> float:
    """Mean cosine, over `steps` meta-steps of the amortized run, of its hypergradient to the unamortized
    estimator's (Neumann J = 5, not fused) at the same state and batches."""
    import common
    S = common.Setup(width)
    make = make_mptc("amortized")
    step = make(S)
    trainer, state = make.trainer, make.state
    plain = trainer_for(width, "plain")
    cosines = []
    for m in range(steps):
        for p in range(common.P_STEPS):
            batch = S.pt_batch(m, p)
            trainer.pt_step(state, batch, keep=p == common.P_STEPS - 1)
        reset_ft(state, S)
        twin = plain.init_state({k: v.detach().clone().requires_grad_() for k, v in state.params.items()})
        twin.metas = {k: v.detach().clone().requires_grad_() for k, v in state.metas.items()}
        xt, yt, xv, yv = S.ft_batches(m)
        _, ref, _ = plain.hypergradient(twin, batch, [(xt, yt)], (xv, yv))
        _, hg, _ = trainer.hypergradient(state, batch, [(xt, yt)], (xv, yv))
        a, b = hg["w"].detach(), ref["w"].detach()
        cosines.append(float(a @ b / (a.norm() * b.norm())))
        trainer.meta_update(state, hg)
    del step
    return sum(cosines) / len(cosines)


def rss_probe(P: int, width: int = 256, steps: int = 3) -> None:
    """(In a child process) a few meta-steps of the plain IFT run with P PT steps; prints the peak RSS in MB."""
    import resource
    import common
    S = common.Setup(width)
    trainer = trainer_for(width, "plain", P=P)
    state = load_state(trainer, S)
    for m in range(steps):
        for p in range(P):
            batch = S.pt_batch(m, p % common.P_STEPS)
            trainer.pt_step(state, batch)
        reset_ft(state, S)
        xt, yt, xv, yv = S.ft_batches(m)
        _, hg, _ = trainer.hypergradient(state, batch, [(xt, yt)], (xv, yv))
        trainer.meta_update(state, hg)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def rss_ratio(bench: str) -> float:
    import subprocess
    peaks = []
    for P in (10, 100):
        out = subprocess.run([sys.executable, __file__, "--bench", bench, "--rss-probe", str(P)], check=True,
                             capture_output=True, text=True).stdout
        peaks.append(float(out.strip().splitlines()[-1]))
    return peaks[1] / peaks[0]


def phi_time_ratio(width: int, steps: int) -> float:
    """Median meta-step time with 10^6 meta-parameters over 10^2: the PT loss weighted by mean(2 sigmoid(w)),
    so only the meta level grows. A meta-step is what the harness's ratios time (common.run_benchmark): its
    P PT steps, the hypergradient and the meta update. The two runs alternate meta-steps, so a busy machine
    slows both alike."""
    import statistics
    import time
    import common
    runs = {}
    for n in (100, 10 ** 6):
        trainer = trainer_for(width, "plain", n_phi=n)
        runs[n] = (common.Setup(width), trainer, trainer.init_state(), [])
    for m in range(steps + 1):
        for S, trainer, state, taken in runs.values():
            t0 = time.perf_counter()
            for p in range(common.P_STEPS):
                batch = S.pt_batch(m, p)
                trainer.pt_step(state, batch)
            xt, yt, xv, yv = S.ft_batches(m)
            _, hg, _ = trainer.hypergradient(state, batch, [(xt, yt)], (xv, yv))
            trainer.meta_update(state, hg)
            taken.append(time.perf_counter() - t0)
    times = {n: statistics.median(run[3][1:]) for n, run in runs.items()}     # the first meta-step aside
    return times[10 ** 6] / times[100]


def contract(args) -> dict:
    """The benchmark contract's JSON object (module docstring)."""
    import common
    import impl_manual
    out = {}
    widths = [256] if args.quick else [256, 1024]
    common.WARMUP, common.MEASURE = (1, 3) if args.quick else (common.WARMUP, args.measure)
    common.N_META = common.WARMUP + common.MEASURE
    n_meta = common.N_META
    for width in widths:
        ratios = {}
        for name, make in (("manual", impl_manual.make), ("plain", make_mptc("plain")),
                           ("fused", make_mptc("fused")), ("hessian_batch_64", make_mptc("hessian_batch_64")),
                           ("manual_hessian_batch_64", make_manual_hessian_batch),
                           ("amortized", make_mptc("amortized"))):
            if width != 256 and name in ("hessian_batch_64", "manual_hessian_batch_64", "amortized"):
                continue
            common.N_META = n_meta
            ratios[name] = common.run_benchmark(name, width, make)["ratio_med"]
        out[f"ratio_{width}"], out[f"ratio_manual_{width}"] = ratios["plain"], ratios["manual"]
        out[f"ratio_fused_{width}"] = ratios["fused"]
        if width == 256:
            out["ratio_hessian_batch_64"], out["ratio_amortized_256"] = ratios["hessian_batch_64"], ratios["amortized"]
            out["ratio_manual_hessian_batch_64"] = ratios["manual_hessian_batch_64"]
        out[f"cos_{width}"] = agreement(width, 2 if args.quick else args.agree_steps)["min_cosine"]
    long = 10 if args.quick else args.long
    ref = long_run(256, long, "plain")
    for key, variant in (("ft_val_gap_fused", "fused"), ("ft_val_gap_hessian_batch_64", "hessian_batch_64"),
                         ("ft_val_gap_amortized", "amortized")):
        out[key] = (long_run(256, long, variant) - ref) / ref
    out["cos_amortized_256"] = amortized_cosine(256, 3 if args.quick else 20)
    out["rss_ratio_p100_p10"] = rss_ratio(args.bench)
    out["time_ratio_phi_1e6_1e2"] = phi_time_ratio(256, 3 if args.quick else args.measure)
    out["long_meta_steps"], out["quick"] = long, bool(args.quick)
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--agree-steps", type=int, default=5)
    p.add_argument("--long", type=int, default=200, help="meta-steps of the fused-vs-reference quality run")
    p.add_argument("--bench", default=str(BENCH), help="the folder of the reference benchmark")
    p.add_argument("--fused-options", default="fused: true",
                   help="ift options of the fused variant, e.g. 'fused: true, hessian_batch: 128'")
    p.add_argument("--json", action="store_true", help="the contract: print one JSON object (the last line)")
    p.add_argument("--measure", type=int, default=60,
                   help="with --json: measured meta-steps behind each ratio (the reference harness's default: 20)")
    p.add_argument("--quick", action="store_true", help="with --json: width 256 only, fewer steps (< 1 min)")
    p.add_argument("--rss-probe", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    global FUSED
    FUSED = ", " + args.fused_options
    sys.path.insert(0, args.bench)
    from mptc.runtime.memory import keep_freed_memory
    keep_freed_memory()                                 # as `mptc run` on the CPU: every implementation under it
    import common
    import impl_manual
    common.HERE = tempfile.mkdtemp(prefix="mptc-bench-")  # its hypergradient dumps stay out of shared/
    if args.rss_probe:
        return rss_probe(args.rss_probe)
    if args.json:
        result = contract(args)
        print(json.dumps(result), flush=True)
        return
    rows = []
    for width in args.widths:
        for name, make in (("manual", impl_manual.make), ("mptc", make_mptc(False)),
                           ("mptc-fused", make_mptc(True))):
            res = common.run_benchmark(name, width, make)
            rows.append(res)
        print("AGREEMENT " + json.dumps(agreement(width, args.agree_steps)), flush=True)
    print("\n| impl | width | meta-step ms (median) | 10 plain PT steps ms | ratio |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['width']} | {r['meta_med_ms']:.1f} | {r['plain10_med_ms']:.1f} | "
              f"{r['ratio_med']:.2f} |")
    for width in args.widths:
        manual = next(r for r in rows if r["impl"] == "manual" and r["width"] == width)["ratio_med"]
        for name in ("mptc", "mptc-fused"):
            ratio = next(r for r in rows if r["impl"] == name and r["width"] == width)["ratio_med"]
            print(f"width {width}: {name} ratio / manual ratio = {ratio / manual:.3f}")
    if args.long:
        width = args.widths[0]
        ref, fused = long_run(width, args.long, False), long_run(width, args.long, True)
        print(f"FT-val loss after {args.long} meta-steps, width {width}: same estimator {ref:.5f}, "
              f"fused {fused:.5f} ({100 * (fused - ref) / ref:+.2f}%)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
