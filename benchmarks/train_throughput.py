"""Training throughput of the four residual modes of the tiny config on CPU, in one run.

    python benchmarks/train_throughput.py                 # tiny_cpu.yaml model, batch 8 x 128
    python benchmarks/train_throughput.py --steps 30 --batch 4 --seq 256
    python benchmarks/train_throughput.py --hidden 256 --ffn 688 --vocab 4096 --batch 4 --seq 256 \
        --threads 2 --fwd-bwd-only --variants standard,hc,mhc,grid,hc:sublayer,hc:block,mhc:sublayer,mhc:block
                                                          # the step-time shape, recompute settings
    python benchmarks/train_throughput.py --hidden 256 --ffn 688 --vocab 4096 --batch 4 --seq 256 \
        --threads 2 --fwd-bwd-only --variants standard,hc,mhc,standard+compile,hc+compile,mhc+compile
                                                          # torch.compile of every decoder layer (train.compile),
                                                          # its compile time and the steps it takes to pay off
    python benchmarks/train_throughput.py ... --variants standard,mhc,mhc@sinkhorn_iters=0   # what Sinkhorn costs
    python benchmarks/train_throughput.py --saved --variants standard,mhc,mhc@h_res_map=kronecker   # + saved activations

Each mode runs the trainer's own step (forward, backward, clipping, AdamW with its decay groups)
on random tokens; the modes are interleaved round-robin so that a load change on a shared machine
hits all of them alike. Freed host memory is kept as the trainer keeps it on CPU
(`train.keep_host_memory`; `--system-malloc` leaves glibc's defaults, to measure what that gives).
Prints tokens/s and the ratio to `standard` (the mHC paper reports
about 6.7% extra training time for n = 4 with fused GPU kernels; the CPU reference path is
not fused, so expect much more here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mhc_lm.model.residual_modes import RESIDUAL_MODES  # noqa: E402

MODES = tuple(RESIDUAL_MODES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_cpu.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None, help="override hidden_size")
    parser.add_argument("--ffn", type=int, default=None, help="override intermediate_size")
    parser.add_argument("--vocab", type=int, default=None, help="override vocab_size")
    parser.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    parser.add_argument("--variants", default=",".join(MODES),
                        help="comma-separated mode[:mixing_recompute][+compile][@field=value], e.g. mhc:block, "
                             "mhc+compile, mhc@sinkhorn_iters=0")
    parser.add_argument("--fwd-bwd-only", action="store_true", help="time forward + backward only (no optimizer)")
    parser.add_argument("--saved", action="store_true",
                        help="add the activations autograd saves in one forward, KiB per token (whole model, "
                             "fp32; benchmarks/memory.py's method 1)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc thresholds at their defaults (the trainer's "
                             "train.keep_host_memory=false)")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, print the ops' self CPU time per step of every variant (torch.profiler)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")

    import torch
    from tqdm.auto import tqdm

    from mhc_lm.model import MhcLmForCausalLM
    from mhc_lm.train.config import build_model_config, load_run_config
    from mhc_lm.train.distributed import apply_compile
    from mhc_lm.train.host_memory import keep_freed_memory
    from mhc_lm.train.optim import build_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    kept = not args.system_malloc and keep_freed_memory()
    root_config = Path(__file__).resolve().parents[1] / args.config  # run from anywhere
    cfg = load_run_config(args.config if Path(args.config).exists() or not root_config.exists() else root_config)
    runs = {}
    for variant in variants:
        name, *overrides = variant.split("@")  # mhc@sinkhorn_iters=0: any model field, for what-if runs
        name, compile_it = name.removesuffix("+compile"), name.endswith("+compile")
        mode, _, recompute = name.partition(":")
        torch.manual_seed(0)
        mcfg = build_model_config(cfg.model)
        mcfg.residual_mode, mcfg.mixing_recompute = mode, recompute or "none"
        for field, value in (("hidden_size", args.hidden), ("intermediate_size", args.ffn),
                             ("vocab_size", args.vocab), ("num_hidden_layers", args.layers)):
            if value is not None:
                setattr(mcfg, field, value)
        for override in overrides:
            field, _, value = override.partition("=")
            if not hasattr(mcfg, field):
                raise SystemExit(f"variant {variant!r}: the model config has no field {field!r}")
            current = getattr(mcfg, field)
            if isinstance(current, bool):  # bool("false") is True
                if value.lower() not in ("true", "false"):
                    raise SystemExit(f"variant {variant!r}: {field} takes true or false, got {value!r}")
                setattr(mcfg, field, value.lower() == "true")
            else:
                setattr(mcfg, field, type(current)(value))
        model = MhcLmForCausalLM(mcfg).train()
        if compile_it:  # as the trainer does with train.compile: each decoder layer, compiled on its first call
            apply_compile(model)
        runs[variant] = (model, build_optimizer(model, cfg.optim), mcfg.vocab_size)

    def step(mode):
        model, opt, vocab = runs[mode]
        ids = torch.randint(0, vocab, (args.batch, args.seq + 1))
        t0 = time.perf_counter()
        loss = model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:]).loss
        loss.backward()
        if not args.fwd_bwd_only:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times = {m: [] for m in variants}
    warm = {m: 0.0 for m in variants}  # seconds of the warm-up steps (a compiled variant compiles in them)
    for i in tqdm(range(args.warmup + args.steps), desc="round-robin steps"):
        for mode in variants:
            dt = step(mode)
            if i >= args.warmup:
                times[mode].append(dt)
            else:
                warm[mode] += dt
    tokens = args.batch * args.seq
    tps = {m: tokens / statistics.median(t) for m, t in times.items()}
    saved = {}
    if args.saved:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from memory import saved_bytes

        ids = torch.randint(0, runs[variants[0]][2], (args.batch, args.seq + 1),
                            generator=torch.Generator().manual_seed(0))
        saved = {m: f" {saved_bytes(runs[m][0], ids, False) / 1024 / tokens:.2f} |" for m in variants}
    shape = runs[variants[0]][0].config
    print(f"\n{args.config}: C = {shape.hidden_size}, FFN {shape.intermediate_size}, {shape.num_hidden_layers} layers, "
          f"batch {args.batch} x seq {args.seq}, {torch.get_num_threads()} threads, median of {args.steps} steps, "
          f"{'forward + backward' if args.fwd_bwd_only else 'full training step'}, "
          f"{'freed host memory kept' if kept else 'system malloc defaults'}")
    print("| mode | params | tokens/s | ratio to standard | time vs standard | min step vs standard's |"
          + (" saved act. KiB/token |" if saved else "") + "\n|---|---:|---:|---:|---:|---:|" + ("---:|" if saved else ""))
    for mode in variants:
        n = sum(p.numel() for p in runs[mode][0].parameters())
        ratio = tps[mode] / tps["standard"]
        fastest = min(times[mode]) / min(times["standard"])  # the least disturbed step of each: the steadiest ratio
        print(f"| {mode} | {n:,} | {tps[mode]:.0f} | {ratio:.3f} | {1 / ratio - 1:+.1%} | {fastest:.3f}x |"
              + saved.get(mode, ""))
    compiled = [v for v in variants if "+compile" in v]
    if compiled:
        print("\n| compiled variant | compile time s (warm-up minus steady steps) | step ms eager -> compiled | "
              "steps to pay off |\n|---|---:|---:|---:|")
        for v in compiled:
            eager = v.replace("+compile", "")
            step_c = statistics.median(times[v])
            cost = warm[v] - args.warmup * step_c
            line = f"| {v} | {cost:.1f} | "
            if eager in times:
                step_e = statistics.median(times[eager])
                gain = step_e - step_c
                pays = f"{cost / gain:,.0f}" if gain > 0 else "never"
                line += f"{step_e * 1e3:.0f} -> {step_c * 1e3:.0f} | {pays} |"
            else:
                line += f"- -> {step_c * 1e3:.0f} | (add {eager} to the variants) |"
            print(line)
    if args.profile:
        print_profile(variants, step)
    return 0


def print_profile(variants, step, rows: int = 16) -> None:
    """Self CPU time (ms per step) and calls of the top ops, one column per variant."""
    from torch.profiler import profile

    per = {}
    for v in variants:
        step(v)
        with profile() as prof:
            step(v)
        per[v] = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()}
    keys = sorted(set().union(*per.values()), key=lambda k: -max(p.get(k, (0, 0))[0] for p in per.values()))
    print("\n| op | " + " | ".join(f"{v} ms (calls)" for v in variants) + " |\n|---|" + "---:|" * len(variants))
    for k in keys[:rows]:
        print(f"| {k[:40]} | " + " | ".join(f"{per[v].get(k, (0, 0))[0]:.1f} ({per[v].get(k, (0, 0))[1]})" for v in variants) + " |")
    print("| total | " + " | ".join(f"{sum(t for t, _ in per[v].values()):.0f}" for v in variants) + " |")


if __name__ == "__main__":
    sys.exit(main())
