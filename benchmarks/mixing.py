"""Stream-mixing benchmark: per-op fwd+bwd time and bandwidth, sub-layer peers, end-to-end overhead.

    python benchmarks/mixing.py                  # CPU: small shapes, reference vs torch.compile (~1 min)
    python benchmarks/mixing.py --sweep          # GPU: 1B shape (N = 8 x 2048, C = 2048, n = 4) + C / n sweep
    python benchmarks/mixing.py --peak-gbs 3350  # bandwidth to report % of, when the device is not in the table
    python benchmarks/mixing.py --maps           # only the H_res map table (benchmarks/maps.py)

Three tables, measured in one run (see docs/kernels.md for how to read them):
1. ops: forward + backward of each mixing op (mHC coefficients, Sinkhorn, pre-mix, post + residual)
   for the eager reference, `torch.compile` of the reference, and the fused Triton kernels (CUDA
   only). GB/s counts the *ideal* bytes (every input read once, every output written once, for
   forward and backward), so % of peak is an honest lower bound for the kernel's efficiency.
2. sub-layer: a whole HC / mHC connection around an identity branch, ours vs the
   `hyper-connections` package (eager PyTorch) when installed; `liger-kernel` rows when installed.
3. end-to-end: training-step time (forward, backward, AdamW) of `standard`, `hc` and `mhc`,
   interleaved round-robin, and the overhead over `standard` (mHC paper: 6.7% at n = 4 fused).
With `--maps`: the cost per token of each H_res map (sinkhorn, permutation, kronecker,
orthostochastic, orthogonal) at n = 4, 8, 16 and C = 2048 instead; the remaining arguments go to
benchmarks/maps.py (see its --help).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM  # noqa: E402
from mhc_lm.model.residual_hc import HyperConnection  # noqa: E402
from mhc_lm.model.residual_mhc import ManifoldHyperConnection  # noqa: E402
from mhc_lm.model.sinkhorn import sinkhorn_reference  # noqa: E402
from mhc_lm.model.stream_ops import mhc_coefficients_reference, post_res_reference, pre_mix_reference  # noqa: E402

# Peak HBM bandwidth (GB/s) from vendor datasheets, matched by substring of the device name.
PEAK_GBS = {
    "H200": 4800, "GH200": 4000, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "H800": 3350,
    "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L4": 300, "A10G": 600,
    "RTX 4090": 1008, "RTX 3090": 936, "V100": 900, "MI300X": 5300, "MI250X": 3277,
}
REPO = Path(__file__).resolve().parents[1]


def peak_gbs(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def peak_for_name(name: str) -> float | None:
    """The longest table key found in the device name wins ("GH200" before "H200", "H100 PCIe" before "H100")."""
    return next((PEAK_GBS[k] for k in sorted(PEAK_GBS, key=len, reverse=True) if k in name), None)


def timed(fn, device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of fn(); on CUDA triton's do_bench (flushes L2 between runs)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=max(50, reps * 5), return_mode="median")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------ ops
def op_inputs(op: str, N: int, n: int, C: int, dtype, device, iters: int):
    """(reference fn, args, extra non-tensor args, ideal fwd+bwd bytes)."""
    e, M = torch.finfo(dtype).bits // 8, 2 * n + n * n
    r = lambda *s, dt=torch.float32: torch.randn(*s, device=device, dtype=dt)  # noqa: E731
    if op == "coefficients":
        args = [r(N, n * C, dt=dtype), r(n * C, M) * 0.02, torch.full((3,), 0.01, device=device), r(M)]
        return mhc_coefficients_reference, args, (n, 1e-6), N * (3 * n * C * e + 2 * M * 4)
    if op == "sinkhorn":
        return sinkhorn_reference, [r(N, n, n)], (iters, 1e-6), N * 5 * n * n * 4
    if op == "pre_mix":
        return pre_mix_reference, [r(N, n, C, dt=dtype), torch.rand(N, n, device=device)], (), N * ((3 * n + 2) * C * e + 3 * n * 4)
    if op == "post_res":
        args = [r(N, n, C, dt=dtype), r(N, C, dt=dtype), torch.rand(N, n, n, device=device), torch.rand(N, n, device=device)]
        return post_res_reference, args, (), N * ((5 * n + 3) * C * e + 3 * (n * n + n) * 4)
    raise ValueError(op)


def fwd_bwd(fn, args, extra):
    leaves = [a.detach().requires_grad_() for a in args]
    cots = None

    def run():
        nonlocal cots
        outs = fn(*leaves, *extra)
        outs = outs if isinstance(outs, tuple) else (outs,)
        if cots is None:
            cots = [torch.ones_like(o) for o in outs]
        torch.autograd.grad(outs, leaves, cots)

    return run


def fused_op(op: str):
    import mhc_lm.kernels as k

    return {"coefficients": k.fused_mhc_coefficients, "sinkhorn": k.fused_sinkhorn, "pre_mix": k.fused_pre_mix, "post_res": k.fused_post_res}[op]


def bench_ops(shapes, dtypes, device, reps, iters, fused: bool, compile_: bool, peak, progress):
    rows = []
    for dtype in dtypes:
        for N, n, C in shapes:
            for op in ("coefficients", "sinkhorn", "pre_mix", "post_res"):
                ref, args, extra, nbytes = op_inputs(op, N, n, C, dtype, device, iters)
                impls = {"eager": ref}
                if compile_:
                    impls["compile"] = torch.compile(ref, dynamic=False)
                if fused:
                    impls["fused"] = fused_op(op)
                for name, fn in impls.items():
                    progress.set_postfix_str(f"{op} {name} N={N} n={n} C={C}")
                    ms = timed(fwd_bwd(fn, args, extra), device, reps)
                    gbs = nbytes / ms / 1e6
                    rows.append(dict(op=op, impl=name, dtype=str(dtype).replace("torch.", ""), N=N, n=n, C=C, ms=ms,
                                     gbs=gbs, pct=100 * gbs / peak if peak else None))
                    progress.update()
    return rows


# ------------------------------------------------------------------ sub-layer peers
def bench_sublayer(N: int, n: int, C: int, device, reps, fused: bool, compile_: bool, autocast_bf16: bool, progress):
    cfg = MhcLmConfig(hidden_size=C, n_streams=n, fused_kernels=fused, intermediate_size=4 * C, num_attention_heads=1,
                      num_key_value_heads=1, vocab_size=8)
    B, T = 1, N
    identity = lambda h: h  # noqa: E731
    impls = {}
    for mode, cls in (("mhc", ManifoldHyperConnection), ("hc", HyperConnection)):
        mod = cls(cfg, 0).to(device)
        if mode == "hc":
            with torch.no_grad():
                for name, v in mod.reset_static().items():
                    getattr(mod, name).copy_(v)
        tag = "ours fused" if fused else "ours eager"
        impls[(mode, tag)] = lambda x, mod=mod: mod(x, identity)
        if compile_:
            impls[(mode, "ours compile")] = torch.compile(lambda x, mod=mod: mod(x, identity), dynamic=False)
    if importlib.util.find_spec("hyper_connections") is not None:
        from hyper_connections import HyperConnections, ManifoldConstrainedHyperConnections

        for mode, cls in (("mhc", ManifoldConstrainedHyperConnections), ("hc", HyperConnections)):
            peer = cls(n, dim=C, layer_index=0).to(device)

            def run_peer(x, peer=peer):  # their layout: ((B n), T, C)
                branch_in, add_residual = peer(x.permute(0, 2, 1, 3).reshape(B * n, T, C))
                return add_residual(branch_in)

            impls[(mode, "hyper-connections")] = run_peer
    if importlib.util.find_spec("liger_kernel") is not None:
        print("note: liger-kernel is installed but its mHC ops are not wired into this benchmark yet")
    rows = []
    for (mode, name), fn in impls.items():
        x = torch.randn(B, T, n, C, device=device, requires_grad=True)

        def run(fn=fn, x=x):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                out = fn(x)
            out.float().sum().backward()

        progress.set_postfix_str(f"sub-layer {mode} {name}")
        rows.append(dict(mode=mode, impl=name, N=N, n=n, C=C, ms=timed(run, device, reps)))
        progress.update()
    return rows


# ------------------------------------------------------------------ end to end
def bench_e2e(model_kw: dict, batch: int, seq: int, steps: int, device, fused: bool, autocast_bf16: bool, progress):
    variants = [("standard", False), ("hc", fused), ("mhc", fused)]
    if fused:
        variants += [("hc", False), ("mhc", False)]

    def build(key):
        mode, use_fused = key
        torch.manual_seed(0)
        model = MhcLmForCausalLM(MhcLmConfig(**{**model_kw, "residual_mode": mode, "fused_kernels": use_fused})).to(device)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(run):
        model, opt = run
        ids = torch.randint(3, model.config.vocab_size, (batch, seq + 1), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed_step(run) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(run)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    times = {key: [] for key in variants}
    if device.type == "cuda":  # one model at a time (five 1B models + AdamW would not fit), warm-up first
        for key in variants:
            run = build(key)
            step(run), step(run)
            times[key] = [timed_step(run) for _ in range(steps)]
            del run
            torch.cuda.empty_cache()
            progress.update(steps // len(variants))
    else:  # round-robin: a load change on a shared machine hits every variant alike
        runs = {key: build(key) for key in variants}
        for run in runs.values():
            step(run), step(run)
        for _ in range(steps):
            for key, run in runs.items():
                times[key].append(timed_step(run))
            progress.update()
    base = statistics.median(times[("standard", False)])
    rows = []
    for (mode, use_fused), ts in times.items():
        ms = statistics.median(ts)
        rows.append(dict(mode=mode, kernels="fused" if use_fused else "reference", ms=ms, overhead_pct=100 * (ms / base - 1),
                         tokens_per_s=batch * seq / ms * 1e3))
    return rows


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n{title}")
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--maps" in argv:  # the H_res map table lives in its own script (it needs none of the imports above)
        spec = importlib.util.spec_from_file_location("maps_benchmark", Path(__file__).resolve().parent / "maps.py")
        maps = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(maps)
        return maps.main([a for a in argv if a != "--maps"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", action="store_true", help="only the H_res map cost table (benchmarks/maps.py)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=None, help="N for the op table (GPU 16384 = 8 x 2048, CPU 512)")
    parser.add_argument("--hidden", type=int, default=None, help="C (GPU 2048 as the 1B presets, CPU 128)")
    parser.add_argument("--streams", type=int, default=4, help="n")
    parser.add_argument("--sweep", action="store_true", help="also C in {1024, 2048, 4096} and n in {2, 8}")
    parser.add_argument("--dtypes", default=None, help="stream dtypes, comma separated (GPU float32,bfloat16; CPU float32)")
    parser.add_argument("--sinkhorn-iters", type=int, default=20)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--peak-gbs", type=float, default=None, help="device peak memory bandwidth in GB/s")
    parser.add_argument("--e2e-layers", type=int, default=None, help="layers of the end-to-end model (GPU: 1B preset's 20)")
    parser.add_argument("--e2e-steps", type=int, default=None)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1: steady numbers on a shared machine)")
    args = parser.parse_args(argv)
    if args.device == "cpu" or args.threads:
        torch.set_num_threads(args.threads or 1)

    import yaml
    from tqdm.auto import tqdm

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    fused = gpu and importlib.util.find_spec("triton") is not None
    compile_ = not args.no_compile
    N = args.tokens or (16384 if gpu else 512)
    C = args.hidden or (2048 if gpu else 128)
    n = args.streams
    dtypes = [getattr(torch, d) for d in (args.dtypes or ("float32,bfloat16" if gpu else "float32")).split(",")]
    reps = args.reps or (20 if gpu else 3)
    shapes = [(N, n, C)]
    if args.sweep:
        shapes += [(N, n, c) for c in (1024, 2048, 4096) if c != C] + [(N, m, C) for m in (2, 8) if m != n]
    peak = peak_gbs(device, args.peak_gbs)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; peak bandwidth: {f'{peak:.0f} GB/s' if peak else 'unknown (pass --peak-gbs)'}; "
          f"torch {torch.__version__}; fused kernels: {'yes' if fused else 'no (CUDA + triton only)'}")

    preset = yaml.safe_load(open(REPO / "configs/model/mhc_1b.yaml"))
    if gpu:
        model_kw = {k: preset[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rope_theta")}
        batch, seq, steps = 1, 2048, args.e2e_steps or 10
    else:
        model_kw = dict(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256)
        batch, seq, steps = 2, 128, args.e2e_steps or 4
    model_kw.update(n_streams=n, sinkhorn_iters=args.sinkhorn_iters, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2)
    if args.e2e_layers:
        model_kw["num_hidden_layers"] = args.e2e_layers

    n_impl = 1 + compile_ + fused
    total = len(dtypes) * len(shapes) * 4 * n_impl + 2 * (1 + (compile_ and gpu) + 1) + (0 if args.skip_e2e else steps)
    t0 = time.perf_counter()
    with tqdm(total=total, desc="mixing benchmark", file=sys.stderr) as progress:
        op_rows = bench_ops(shapes, dtypes, device, reps, args.sinkhorn_iters, fused, compile_, peak, progress)
        t1 = time.perf_counter()
        # compiling whole connections costs ~20 s each with the CPU compiler: GPU only
        sub_rows = bench_sublayer(min(N, 4096), n, C, device, reps, fused, compile_ and gpu, gpu, progress)
        t2 = time.perf_counter()
        e2e_rows = [] if args.skip_e2e else bench_e2e(model_kw, batch, seq, steps, device, fused, gpu, progress)
    t3 = time.perf_counter()

    print_table(f"ops: forward + backward, {args.sinkhorn_iters} Sinkhorn iterations (GB/s of ideal bytes)", op_rows,
                ["op", "impl", "dtype", "N", "n", "C", "ms", "gbs", "pct"])
    print_table(f"sub-layer connection around an identity branch, fwd + bwd ({'bf16 autocast' if gpu else 'fp32'})", sub_rows,
                ["mode", "impl", "N", "n", "C", "ms"])
    if e2e_rows:
        desc = f"{model_kw['num_hidden_layers']} layers, hidden {model_kw['hidden_size']}, batch {batch} x {seq}"
        print_table(f"end-to-end training step ({desc}; median of {steps})", e2e_rows,
                    ["mode", "kernels", "ms", "overhead_pct", "tokens_per_s"])
    print(f"\nwall time: ops {t1 - t0:.0f} s (incl. compilation), sub-layer {t2 - t1:.0f} s, end-to-end {t3 - t2:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
