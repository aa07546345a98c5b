"""What one Sinkhorn projection costs on CPU, and the forms that were tried instead.

    python benchmarks/sinkhorn_cpu.py                    # N = 1024 tokens, n = 4, 20 iterations, 2 threads
    python benchmarks/sinkhorn_cpu.py --tokens 4096 --no-compile

Prints one table: ms per call of the reference (`mhc_lm.model.sinkhorn`: forward without a graph,
and the one-node backward that re-runs the iteration and walks it back), of three rewritten
forward forms (each checked equal to the reference to 1e-5), of `torch.compile` of the forward and
the backward (with the compile seconds and the steps of `--sublayers` projections it takes to earn
them back), and the cost of single small ops, which is what bounds the reference: ~400 of them
per projection, forward + backward.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mhc_lm.model.sinkhorn import SINKHORN_EPS, _sinkhorn_backward, _sinkhorn_forward  # noqa: E402


def reference_forward(lt, iters):
    return _sinkhorn_forward(lt, iters, SINKHORN_EPS)


def reference_backward(lt, g, iters):
    """What `_Sinkhorn.backward` runs on (n, n, M) tensors (re-run + vector-Jacobian products)."""
    return _sinkhorn_backward(lt, g, iters, SINKHORN_EPS)


def scaled_forward(lt, iters):
    """P = diag(u) P0 diag(v): only the 2n scales change (same op count, smaller tensors)."""
    eps = SINKHORN_EPS
    p0 = torch.softmax(lt, dim=1) + eps
    n, _, m = lt.shape
    u = torch.ones(n, 1, m)
    v = 1.0 / (p0.sum(0, keepdim=True) + eps)
    eps_t = torch.tensor(eps)
    for _ in range(iters - 1):
        u = u / torch.addcmul(eps_t, u, torch.linalg.vecdot(p0, v, dim=1).unsqueeze(1))
        v = v / torch.addcmul(eps_t, v, torch.linalg.vecdot(p0, u, dim=0).unsqueeze(0))
    return u * p0 * v


def gemm_sum_forward(lt, iters):
    """Row and column sums as small gemms with eps folded in: 2 ops per normalisation, not 3."""
    n, _, m = lt.shape
    eps_t = torch.tensor(SINKHORN_EPS)
    ones_col, ones_row = torch.ones(1, n), torch.ones(n, 1, n)
    p = torch.softmax(lt, dim=1) + SINKHORN_EPS
    p = p / torch.addmm(eps_t, ones_col, p.view(n, n * m)).view(1, n, m)
    for _ in range(iters - 1):
        p = p / torch.baddbmm(eps_t, ones_row, p)
        p = p / torch.addmm(eps_t, ones_col, p.view(n, n * m)).view(1, n, m)
    return p


def block_matmul_forward(lt, iters):
    """Tokens first, (N, n^2), sums broadcast back by one matmul with a block 0/1 matrix."""
    n, _, m = lt.shape
    idx = torch.arange(n * n)
    same_col = (idx.view(-1, 1) % n == idx.view(1, -1) % n).float()
    same_row = (idx.view(-1, 1) // n == idx.view(1, -1) // n).float()
    eps_v = torch.full((n * n,), SINKHORN_EPS)
    p = (torch.softmax(lt, dim=1) + SINKHORN_EPS).permute(2, 0, 1).reshape(m, n * n)
    p = p / torch.addmm(eps_v, p, same_col)
    for _ in range(iters - 1):
        p = p / torch.addmm(eps_v, p, same_row)
        p = p / torch.addmm(eps_v, p, same_col)
    return p.view(m, n, n).permute(1, 2, 0)


def timed(fn, reps):
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--sublayers", type=int, default=8, help="projections per training step (2 per layer)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (needs a C++ compiler)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="let torch.compile reuse the inductor cache of earlier runs (default: a fresh one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, m, iters = args.streams, args.tokens, args.iters
    lt, g = torch.randn(n, n, m) * 2, torch.randn(n, n, m)

    ref = reference_forward(lt, iters)
    rows = [("reference forward (no graph)", timed(lambda: reference_forward(lt, iters), args.reps), "")]
    ref_bwd_ms = timed(lambda: reference_backward(lt, g, iters), args.reps)
    rows.append(("reference backward (re-run + walk back)", ref_bwd_ms, ""))
    for name, form in (("scaling vectors u, v", scaled_forward), ("sums as gemms, eps folded", gemm_sum_forward),
                       ("(N, n^2) with block matmuls", block_matmul_forward)):
        error = (form(lt, iters) - ref).abs().max().item()
        if error > 1e-5:
            raise SystemExit(f"{name}: differs from the reference by {error:.2e}")
        rows.append((f"forward: {name}", timed(lambda: form(lt, iters), args.reps), f"max abs diff {error:.1e}"))
    if not args.no_compile:
        if not args.warm_cache:  # a first compile, as a new user meets it: no inductor cache from earlier runs
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="sinkhorn_cpu_inductor_")
        fwd_c = torch.compile(reference_forward, dynamic=False)
        bwd_c = torch.compile(reference_backward, dynamic=False)
        t0 = time.perf_counter()
        fwd_c(lt, iters)
        bwd_c(lt, g, iters)
        compile_s = time.perf_counter() - t0
        fwd_ms, bwd_ms = timed(lambda: fwd_c(lt, iters), args.reps), timed(lambda: bwd_c(lt, g, iters), args.reps)
        saved_ms = rows[0][1] + ref_bwd_ms - fwd_ms - bwd_ms  # per projection (the backward re-runs the forward too)
        pays = f"{compile_s * 1e3 / (saved_ms * args.sublayers):,.0f} steps" if saved_ms > 0 else "never"
        rows.append(("torch.compile forward", fwd_ms, f"compiled fwd + bwd in {compile_s:.0f} s"))
        rows.append(("torch.compile backward", bwd_ms, f"pays after {pays} of {args.sublayers} projections"))
    x, d, small = torch.rand(n, n, m), torch.rand(1, n, m), torch.rand(n, m)
    ops = [(f"sum over the old streams, ({n}, {n}, {m})", timed(lambda: x.sum(0, keepdim=True), args.reps * 10)),
           ("divide by those sums", timed(lambda: x / d, args.reps * 10)),
           ("+ eps on the sums", timed(lambda: d + SINKHORN_EPS, args.reps * 10)),
           (f"+ eps on a ({n}, {m}) tensor", timed(lambda: small + SINKHORN_EPS, args.reps * 10))]

    print(f"Sinkhorn on CPU: N = {m} tokens, n = {n}, {iters} iterations, {torch.get_num_threads()} threads, "
          f"mean of {args.reps} calls")
    print("| what | ms per call | note |\n|---|---:|---|")
    for name, ms, note in rows:
        print(f"| {name} | {ms:.3f} | {note} |")
    print("\n| one op | us per call |\n|---|---:|")
    for name, ms in ops:
        print(f"| {name} | {ms * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
