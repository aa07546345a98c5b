"""Time of one n-stream sub-layer's mixing on CPU, op by op, numba kernels against torch references.

    python benchmarks/cpu_mixing_ops.py                     # C = 256, n = 4, 4 x 256 tokens, 2 threads
    python benchmarks/cpu_mixing_ops.py --hidden 128 --tokens 1024 --threads 1   # the stress shape

For hc and mhc: the mix-in forward, its forward + backward, and the whole connection (mix-in, a
stand-in F = 1.5 h, post + residual) forward + backward, with `model.cpu_kernels` true and false;
the rows are interleaved round-robin, and the table gives each one's fastest and median repeat in
ms. What the connections cost beyond standard's step is what the model's step-time ratio is made
of (`train_throughput.py` times whole steps). Freed host memory is kept as the trainer keeps it
(`train.keep_host_memory`; `--system-malloc` for glibc's defaults).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1024, help="batch x sequence")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc thresholds at their defaults")
    args = ap.parse_args(argv)

    import torch

    from mhc_lm.model.configuration_mhc_lm import MhcLmConfig
    from mhc_lm.model.residual_modes import RESIDUAL_MODES
    from mhc_lm.train.host_memory import keep_freed_memory

    torch.set_num_threads(args.threads)
    kept = not args.system_malloc and keep_freed_memory()
    N, n, C = args.tokens, args.streams, args.hidden
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, N, n, C, generator=g, requires_grad=True)
    cot_in, cot_out = torch.randn(N, C, generator=g), torch.randn(1, N, n, C, generator=g)
    cases = {}
    for mode in ("hc", "mhc"):
        for kernels in (True, False):
            cfg = MhcLmConfig(hidden_size=C, n_streams=n, residual_mode=mode, cpu_kernels=kernels,
                              num_attention_heads=4, num_hidden_layers=2, intermediate_size=2 * C)
            residual = RESIDUAL_MODES[mode](cfg)
            conn = residual.connection(1)
            residual.init_weights(conn)
            with torch.no_grad():  # off the init: every coefficient carries signal
                for p in conn.parameters():
                    p.add_(0.02 * torch.randn(p.shape, generator=g))
            leaves = [x] + list(conn.parameters())
            tag = f"{mode}, cpu_kernels={str(kernels).lower()}"

            def mix_in(conn=conn):
                return conn._mix_in(x.view(N, n, C), *conn._mixing_params())[0]

            def mix_in_fb(conn=conn, leaves=leaves, mix_in=mix_in):
                torch.autograd.grad(mix_in(), leaves, cot_in, allow_unused=True)  # A_r, B: not in the layer input

            def connection_fb(conn=conn, leaves=leaves):
                torch.autograd.grad(conn(x, lambda h: 1.5 * h), leaves, cot_out)

            cases[f"{tag}: mix-in forward"] = mix_in
            cases[f"{tag}: mix-in forward + backward"] = mix_in_fb
            cases[f"{tag}: connection forward + backward"] = connection_fb
    times = {k: [] for k in cases}
    for fn in cases.values():
        fn()  # compile or load the kernels, warm the allocator
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"\nC = {C}, n = {n}, {N} tokens, {args.threads} threads, {args.repeats} interleaved repeats, "
          f"{'freed host memory kept' if kept else 'system malloc defaults'}")
    print("| op | fastest ms | median ms |\n|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts) * 1e3:.3f} | {statistics.median(ts) * 1e3:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
