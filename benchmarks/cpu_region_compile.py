"""CPU prototype: `torch.compile` of only mHC's Sinkhorn region, with a persistent inductor cache.

    python benchmarks/cpu_region_compile.py --shape step      # C = 256, 4 layers, 4 x 256 tokens, fwd + bwd, 2 threads
    python benchmarks/cpu_region_compile.py --shape stress    # configs/stress_cpu.yaml: C = 128, 12 layers, full step, 1 thread
    python benchmarks/cpu_region_compile.py --shape step --cache-dir /tmp/x   # rerun: the warm-cache compile time

Measures, does not change the model: the reference Sinkhorn (`mhc_lm.model.sinkhorn`, one autograd
node whose forward and backward are the graph-free functions `_sinkhorn_forward` /
`_sinkhorn_backward` on (n, n, N) tensors) gets both functions swapped for `torch.compile`d copies
(fullgraph, static shapes) while the `mhc+sinkhorn_compile` variant steps, and only then. The
variants step round-robin (a load change hits all alike) and the table gives the median step and
its ratio to standard. The compile time is the variant's warm-up steps minus as many steady steps;
inductor's FX graph cache lives in `--cache-dir` (default ~/.cache/mhc_lm/inductor), so a second run
shows what a warm cache costs (the time a quickstart would pay after the first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # config, overrides, batch, seq, threads, optimizer step
    "step": ("configs/tiny_cpu.yaml", dict(hidden_size=256, intermediate_size=688, vocab_size=4096), 4, 256, 2, False),
    "stress": ("configs/stress_cpu.yaml", {}, 8, 128, 1, True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="step")
    ap.add_argument("--variants", default="standard,hc,mhc,mhc+sinkhorn_compile,grid")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "mhc_lm" / "inductor"))
    args = ap.parse_args(argv)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache_dir  # before inductor reads it
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    warm_cache = Path(args.cache_dir).exists() and any(Path(args.cache_dir).iterdir())

    import importlib

    import torch

    sk = importlib.import_module("mhc_lm.model.sinkhorn")  # the module (mhc_lm.model exports a function of that name)
    from mhc_lm.model import MhcLmForCausalLM
    from mhc_lm.train.config import build_model_config, load_run_config
    from mhc_lm.train.optim import build_optimizer

    config, overrides, batch, seq, threads, full_step = SHAPES[args.shape]
    torch.set_num_threads(args.threads or threads)
    cfg = load_run_config(ROOT / config)
    state = {"on": False}
    eager_fwd, eager_bwd = sk._sinkhorn_forward, sk._sinkhorn_backward
    comp_fwd = torch.compile(eager_fwd, fullgraph=True, dynamic=False)
    comp_bwd = torch.compile(eager_bwd, fullgraph=True, dynamic=False)
    sk._sinkhorn_forward = lambda lt, iters, eps: (comp_fwd if state["on"] else eager_fwd)(lt, iters, eps)
    sk._sinkhorn_backward = lambda lt, g, iters, eps: (comp_bwd if state["on"] else eager_bwd)(lt, g, iters, eps)

    variants = args.variants.split(",")
    runs = {}
    for v in variants:
        torch.manual_seed(0)
        mcfg = build_model_config(cfg.model)
        mcfg.residual_mode = v.split("+")[0]
        for k, val in overrides.items():
            setattr(mcfg, k, val)
        model = MhcLmForCausalLM(mcfg).train()
        runs[v] = (model, build_optimizer(model, cfg.optim), mcfg.vocab_size)

    def step(v):
        model, opt, vocab = runs[v]
        ids = torch.randint(0, vocab, (batch, seq + 1))
        state["on"] = v.endswith("+sinkhorn_compile")
        t0 = time.perf_counter()
        model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:]).loss.backward()
        if full_step:
            opt.step()
        opt.zero_grad(set_to_none=True)
        state["on"] = False
        return time.perf_counter() - t0

    times, warm = {v: [] for v in variants}, dict.fromkeys(variants, 0.0)
    for i in range(args.warmup + args.steps):
        for v in variants:
            dt = step(v)
            if i < args.warmup:
                warm[v] += dt
            else:
                times[v].append(dt)
    med = {v: statistics.median(t) for v, t in times.items()}
    c = runs[variants[0]][0].config
    print(f"\n{args.shape} shape ({config}): C = {c.hidden_size}, {c.num_hidden_layers} layers, batch {batch} x {seq}, "
          f"{torch.get_num_threads()} threads, {'full step' if full_step else 'forward + backward'}, "
          f"median of {args.steps} interleaved steps; inductor cache {'warm' if warm_cache else 'cold'} ({args.cache_dir})")
    print("| variant | step ms | vs standard |\n|---|---:|---:|")
    for v in variants:
        print(f"| {v} | {med[v] * 1e3:.0f} | {med[v] / med['standard']:.2f}x |")
    for v in (v for v in variants if v.endswith("+sinkhorn_compile")):
        base = v.removesuffix("+sinkhorn_compile")
        cost = warm[v] - args.warmup * med[v]
        gain = med.get(base, float("nan")) - med[v]
        pays = f"{cost / gain:.0f} steps" if gain > 0 else "never"
        print(f"\n{v}: compile {cost:.1f} s (warm-up minus steady steps), {gain * 1e3:.0f} ms per step saved vs {base}: pays after {pays}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
