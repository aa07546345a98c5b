"""Training throughput of the four residual modes of the tiny config on CPU, in one run.

    python benchmarks/train_throughput.py                 # tiny_cpu.yaml model, batch 8 x 128
    python benchmarks/train_throughput.py --steps 30 --batch 4 --seq 256

Each mode runs the trainer's own step (forward, backward, clipping, AdamW with its decay groups)
on random tokens; the modes are interleaved round-robin so that a load change on a shared machine
hits all of them alike. Prints tokens/s and the ratio to `standard` (the mHC paper reports
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

MODES = ("standard", "hc", "mhc", "grid")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_cpu.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from mhc_lm.model import MhcLmForCausalLM
    from mhc_lm.train.config import build_model_config, load_run_config
    from mhc_lm.train.optim import build_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_run_config(args.config)
    runs = {}
    for mode in MODES:
        torch.manual_seed(0)
        mcfg = build_model_config(cfg.model)
        mcfg.residual_mode = mode
        model = MhcLmForCausalLM(mcfg).train()
        runs[mode] = (model, build_optimizer(model, cfg.optim), mcfg.vocab_size)

    def step(mode):
        model, opt, vocab = runs[mode]
        ids = torch.randint(0, vocab, (args.batch, args.seq + 1))
        t0 = time.perf_counter()
        loss = model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times = {m: [] for m in MODES}
    for i in tqdm(range(args.warmup + args.steps), desc="round-robin steps"):
        for mode in MODES:
            dt = step(mode)
            if i >= args.warmup:
                times[mode].append(dt)
    tokens = args.batch * args.seq
    tps = {m: tokens / statistics.median(t) for m, t in times.items()}
    print(f"\ntiny config ({args.config}), batch {args.batch} x seq {args.seq}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps")
    print("| mode | params | tokens/s | ratio to standard | time vs standard |\n|---|---:|---:|---:|---:|")
    for mode in MODES:
        n = sum(p.numel() for p in runs[mode][0].parameters())
        ratio = tps[mode] / tps["standard"]
        print(f"| {mode} | {n:,} | {tps[mode]:.0f} | {ratio:.3f} | {1 / ratio - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
