"""Memory traffic of the fused kernels, counted without a GPU, against its minimum.

Runs every Triton kernel of `mhc_lm.kernels` under the Triton interpreter (CPU) at the CUDA
launch policy's block shapes for the full micro-batch (`--full-tokens`, mhc_1b: 4 x 4096) but
on fewer tokens, and counts the bytes of every `tl.load` / `tl.store` (masked-in elements x
element size; benchmarks/traffic_counter.py). Each count is exactly affine in the token count
once it is a multiple of the kernels' token blocks, so it is taken at `--tokens` and twice that
and extrapolated to `--full-tokens`. Per kernel and direction it prints

    moved   bytes requested by the kernel's loads and stores (every re-read counted);
    unique  distinct bytes touched: what HBM sees if every re-read hits in L2;
    HBM est. re-reads of tensors that fit in L2 (`--l2-mib`, H100: 50) counted once, of larger
            ones in full (the coefficient backward's two kernels each read the whole stream);
    minimum each input read once and each output written once (a split reduction's output
            once, not once per split);
    t       moved / bandwidth and minimum / bandwidth at H100 HBM (3.35 TB/s by default).

then the arguments re-read more than once, and the projection of mHC's mixing cost per training
step at the mhc_1b shape under the configured recompute. Everything is counted or computed,
nothing is timed: the times are what the bytes would take at the given bandwidth.

    python benchmarks/kernel_traffic.py                      # mhc_1b: C = 2048, n = 4, fp32 streams + bf16 F
    python benchmarks/kernel_traffic.py --dtypes bf16 fp32 --json traffic.json
    python benchmarks/kernel_traffic.py --measure traffic.json   # on CUDA: measured GB/s next to the projection

`--measure` (CUDA, no interpreter) times each op at `--full-tokens` with triton's do_bench and
prints measured microseconds and GB/s next to the counted bytes of the JSON written earlier.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
if "--measure" not in sys.argv:
    import traffic_counter  # noqa: F401,E402  (sets TRITON_INTERPRET=1 before triton is imported)

import torch  # noqa: E402
import yaml  # noqa: E402

from mhc_lm.kernels import coefficients, launch, sinkhorn, stream_mix  # noqa: E402
from traffic_model import print_projection, project_step, recompute_setting  # noqa: E402

DTYPES = {  # name: (stream dtype x and its gradients, sub-layer output dtype f and df)
    "fp32+bf16": (torch.float32, torch.bfloat16),  # training under bf16 autocast: fp32 streams
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp32": (torch.float32, torch.float32),
}
PARTIALS = {"GH", "GHR", "GHP", "PART"}  # per-split partial sums: their minimum is one split's size
H100_GBS = 3350.0


def cuda_policy(T: int, C: int, n: int, dt: torch.dtype) -> dict:
    """Block shapes the CUDA policy picks at T tokens (132 SMs, as H100/H200 SXM), computed here
    whatever device the kernels then run on."""
    saved = launch.INTERPRETED, launch.sm_count
    launch.INTERPRETED, launch.sm_count = False, (lambda index: 132)
    try:
        cuda = torch.device("cuda", 0)
        K, M = n * C, 2 * n + n * n
        return dict(fwd=launch.mix_blocks(T, C, n, dt, cuda, backward=False),
                    bwd=launch.mix_blocks(T, C, n, dt, cuda, backward=True),
                    coef=coefficients.plan(T, K, M, cuda), sink=sinkhorn.blocks(T, n, cuda))
    finally:
        launch.INTERPRETED, launch.sm_count = saved


def force_policy(p: dict, interpreter: bool) -> None:
    """Make the ops launch with policy p (the interpreter's own policy would pick other tiles)."""
    stream_mix.blocks = lambda T, C, n, dtype, device, backward: p["bwd"] if backward else p["fwd"]
    prec = "ieee" if interpreter else p["coef"].precision  # the interpreter has no tf32; bytes are the same
    coefficients.plan = lambda T, K, M, device: coefficients.CoefPlan(p["coef"].main, p["coef"].dphi, prec)
    sinkhorn.blocks = lambda T, n, device: p["sink"]


def op_calls(T: int, C: int, n: int, dt, ft, iters: int, device) -> list[tuple[str, str, object]]:
    """(op, direction, zero-argument callable) for every kernel launch site, on fresh inputs."""
    torch.manual_seed(0)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, device=device).to(dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, device=device)  # noqa: E731
    K, M = n * C, 2 * n + n * n
    x, f, gy, gout = r(T, n, C, dtype=dt), r(T, C, dtype=ft), r(T, C, dtype=dt), r(T, n, C, dtype=dt)
    h_pre, h_res, h_post = u(T, n), u(T, n, n), u(T, n)
    phi, alpha, bias = r(K, M) * 0.02, torch.full((3,), 0.01, device=device), r(M)
    gp, proj, rstd = r(T, M), r(T, M), u(T) + 0.5
    logits, gP = r(T, n, n), r(T, n, n)
    return [
        ("pre_mix", "fwd", lambda: stream_mix.fused_pre_mix(x, h_pre)),
        ("pre_mix", "bwd", lambda: stream_mix._pre_mix_backward_op(x, h_pre, gy)),
        ("post_res", "fwd", lambda: stream_mix.fused_post_res(x, f, h_res, h_post)),
        ("post_res", "bwd", lambda: stream_mix.fused_post_res_backward(x, f, h_res, h_post, gout)),
        ("coefficients", "fwd", lambda: coefficients._coef_op(x.reshape(T, K), phi, alpha, bias, n, 1e-6)),
        ("coefficients", "bwd", lambda: coefficients._coef_backward_op(x.reshape(T, K), phi, gp, proj, rstd)),
        ("sinkhorn", "fwd", lambda: sinkhorn._sinkhorn_op(logits, iters, 1e-6)),
        ("sinkhorn", "bwd", lambda: sinkhorn._sinkhorn_backward_op(logits, gP, iters, 1e-6)),
    ]


def splits_of(launch_rec) -> int:
    return int(launch_rec.grid[1]) if len(launch_rec.grid) > 1 and launch_rec.kernel.endswith(("bwd_kernel", "dphi_kernel")) else 1


def summarise(launch_rec) -> dict:
    """Bytes of one launch: totals and per argument (moved / unique / minimum)."""
    s = splits_of(launch_rec)
    args = {}
    for name, a in launch_rec.args.items():
        share = a.nbytes // s if name in PARTIALS else a.nbytes
        args[name] = dict(loaded=a.loaded, stored=a.stored, unique=a.unique_loaded + a.unique_stored,
                          minimum=share * ((a.loaded > 0) + (a.stored > 0)), nbytes=a.nbytes, share=share)
    tot = {k: sum(v[k] for v in args.values()) for k in ("loaded", "stored", "unique", "minimum")}
    return dict(kernel=launch_rec.kernel.lstrip("_").removesuffix("_kernel"), grid=list(launch_rec.grid), args=args,
                moved=tot["loaded"] + tot["stored"], unique=tot["unique"], minimum=tot["minimum"])


def count(T: int, C: int, n: int, dt, ft, iters: int, policy: dict, ops=None) -> list[dict]:
    """Counted bytes of every launch of the ops (all by default) at T tokens under `policy`."""
    force_policy(policy, interpreter=True)
    rows = []
    for op, direction, call in op_calls(T, C, n, dt, ft, iters, torch.device("cpu")):
        if ops is not None and op not in ops:
            continue
        with traffic_counter.counting() as launches:
            call()
        rows += [dict(op=op, dir=direction, **summarise(rec)) for rec in launches]
        if len(launches) > 1:
            rows.append(op_total(op, direction, launches, rows[-len(launches):]))
    return rows


def op_total(op: str, direction: str, launches, rows: list[dict]) -> dict:
    """One op made of several launches (the coefficient backward: dx, then dphi): per distinct
    tensor, the bytes moved by all launches and the union of the elements touched, so a tensor read
    by two kernels counts once in `unique` and in the minimum."""
    seen = {}  # (address, size) -> argument record of the op
    for rec, row in zip(launches, rows):
        for name, a in rec.args.items():
            e = seen.setdefault((a.ptr, a.nbytes), dict(name=name, loaded=0, stored=0, nbytes=a.nbytes,
                                                         share=row["args"][name]["share"], bits=[None, None], size=a.itemsize))
            e["loaded"] += a.loaded
            e["stored"] += a.stored
            for i, bits in enumerate((a.load_seen, a.store_seen)):
                if bits is not None:
                    e["bits"][i] = bits if e["bits"][i] is None else e["bits"][i] | bits
    args = {}
    for e in seen.values():
        unique = sum(int(b.sum()) * e["size"] for b in e["bits"] if b is not None)
        args[e["name"]] = dict(loaded=e["loaded"], stored=e["stored"], unique=unique, nbytes=e["nbytes"], share=e["share"],
                               minimum=e["share"] * ((e["loaded"] > 0) + (e["stored"] > 0)))
    kernels = " + ".join(r["kernel"] for r in rows)
    return dict(op=op, dir=direction, kernel=f"({kernels})", total=True, args=args,
                moved=sum(r["moved"] for r in rows), unique=sum(a["unique"] for a in args.values()),
                minimum=sum(a["minimum"] for a in args.values()))


def hbm_estimate(row: dict, l2_bytes: float) -> int:
    """HBM bytes if re-reads of a tensor that fits in L2 hit there and re-reads of a larger one do not."""
    return sum(a["unique"] if a["nbytes"] <= l2_bytes else a["loaded"] + a["stored"] for a in row["args"].values())


def extrapolate(a: list[dict], b: list[dict], Ta: int, Tb: int, T: int) -> list[dict]:
    """Affine fit through the counts at Ta and Tb tokens, evaluated at T (per kernel and argument)."""
    lin = lambda va, vb: round(va + (vb - va) * (T - Ta) / (Tb - Ta))  # noqa: E731
    out = []
    for ra, rb in zip(a, b):
        assert (ra["op"], ra["kernel"]) == (rb["op"], rb["kernel"])
        row = {k: ra[k] for k in ("op", "dir", "kernel")}
        row["total"] = ra.get("total", False)
        row.update({k: lin(ra[k], rb[k]) for k in ("moved", "unique", "minimum")})
        row["args"] = {name: {k: lin(v[k], rb["args"][name][k]) for k in v} for name, v in ra["args"].items()}
        out.append(row)
    return out


def blocks_label(row: dict, policy: dict) -> str:
    k = row["kernel"]
    if row.get("total"):
        return "whole op"
    if k.startswith("coef"):
        b = policy["coef"].dphi if "dphi" in k else policy["coef"].main
        return f"{b.BT} x {b.BC} s{b.splits}" if "dphi" in k else f"{b.BT} x {b.BC}"
    if k.startswith("sinkhorn"):
        return f"{policy['sink'].BT} tok"
    b = policy["bwd" if k.endswith("bwd") else "fwd"]
    return f"{b.BT} x {b.BC} s{b.splits}"


def print_tables(rows: list[dict], policy: dict, label: str, T: int, gbs: float, l2_bytes: float) -> None:
    MB, us = 1e6, lambda b: b / (gbs * 1e3)  # noqa: E731  (bytes / (GB/s) in microseconds)
    print(f"\n### {label}: T = {T} tokens (counted at fewer, extrapolated), {gbs:.0f} GB/s, "
          f"L2 {l2_bytes / 2**20:.0f} MiB\n")
    print("| op | dir | kernel | blocks | moved MB | unique MB | minimum MB | moved / min | unique / min | HBM est. / min "
          "| t moved us | t HBM est. us | t min us |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        hbm = r["hbm"]
        print(f"| {r['op']} | {r['dir']} | {r['kernel']} | {blocks_label(r, policy)} | {r['moved'] / MB:.1f} | "
              f"{r['unique'] / MB:.1f} | {r['minimum'] / MB:.1f} | {r['moved'] / r['minimum']:.2f} | "
              f"{r['unique'] / r['minimum']:.2f} | {hbm / r['minimum']:.2f} | {us(r['moved']):.0f} | {us(hbm):.0f} | "
              f"{us(r['minimum']):.0f} |")
    print("\nArguments moved more than once (moved / own bytes > 1.01, or per-split partials):\n")
    print("| kernel | argument | own MB | moved MB | times | unique MB |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        for name, a in r["args"].items():
            moved = a["loaded"] + a["stored"]
            own = a["minimum"]
            if own and (moved > 1.01 * own or name in PARTIALS and moved > own):
                print(f"| {r['kernel']} | {name} | {own / MB:.2f} | {moved / MB:.2f} | {moved / own:.1f} | {a['unique'] / MB:.2f} |")


def measure(path: str, reps: int) -> int:
    """CUDA: time each op of the JSON's cases with do_bench and print measured GB/s beside the counts."""
    if not torch.cuda.is_available():
        print("kernel_traffic: --measure needs a CUDA device", file=sys.stderr)
        return 2
    if launch.INTERPRETED:  # main(["--measure", ...]) from a process that imported the counter
        print("kernel_traffic: --measure must run as its own command (the kernels were built for the interpreter)",
              file=sys.stderr)
        return 2
    if not Path(path).is_file():
        print(f"kernel_traffic: no counts at {path} (write them first: kernel_traffic.py --json {path})", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    data = json.loads(Path(path).read_text())
    gbs = data["gbs"]
    print(f"{torch.cuda.get_device_name(0)}; projection at {gbs:.0f} GB/s from {path}\n")
    print("| dtypes | op | dir | moved MB | minimum MB | projected us (moved) | measured us | GB/s of moved | GB/s of minimum | % of projection |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in data["cases"]:
        dt, ft = DTYPES[case["dtypes"]]
        force_policy(cuda_policy(data["full_tokens"], data["hidden"], data["n"], dt), interpreter=False)
        calls = op_calls(data["full_tokens"], data["hidden"], data["n"], dt, ft, data["iters"], torch.device("cuda"))
        for op, direction, call in calls:
            rs = [r for r in case["rows"] if (r["op"], r["dir"]) == (op, direction) and not r.get("total")]
            moved, minimum = sum(r["moved"] for r in rs), sum(r["minimum"] for r in rs)
            ms = do_bench(call, warmup=25, rep=max(50, reps), return_mode="median")
            us_proj = moved / (gbs * 1e3)
            print(f"| {case['dtypes']} | {op} | {direction} | {moved / 1e6:.1f} | {minimum / 1e6:.1f} | {us_proj:.0f} | "
                  f"{ms * 1e3:.0f} | {moved / ms / 1e6:.0f} | {minimum / ms / 1e6:.0f} | {100 * us_proj / (ms * 1e3):.0f} |",
                  flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=str(HERE.parent / "configs/mhc_1b.yaml"), help="run config (model preset + train)")
    ap.add_argument("--hidden", type=int, default=None, help="C (default: the preset's)")
    ap.add_argument("--n", type=int, default=None, help="streams (default: the preset's)")
    ap.add_argument("--iters", type=int, default=None, help="Sinkhorn iterations (default: the preset's)")
    ap.add_argument("--full-tokens", type=int, default=None, help="tokens per micro-batch (default: micro_batch x seq_len)")
    ap.add_argument("--tokens", type=int, default=64, help="counted at this many tokens and twice as many (multiple of 64)")
    ap.add_argument("--dtypes", nargs="+", default=["fp32+bf16"], choices=sorted(DTYPES))
    ap.add_argument("--gbs", type=float, default=H100_GBS, help="HBM bandwidth for the times (GB/s)")
    ap.add_argument("--recompute", default=None, choices=["layer", "none", "sublayer", "block"],
                    help="projection's recompute (default: the run config's; layer = train.activation_checkpointing)")
    ap.add_argument("--l2-mib", type=float, default=50.0, help="L2 size for the HBM estimate (H100: 50 MiB)")
    ap.add_argument("--coef-tiles", type=int, nargs=2, default=None, metavar=("BT", "BK"),
                    help="what-if: tokens per coefficient fwd / dx program and nC-block width of dphi instead of the policy's")
    ap.add_argument("--json", default=None, help="write the counts here (input of --measure)")
    ap.add_argument("--counts", default=None, metavar="JSON", help="print the tables and projection of counts written earlier")
    ap.add_argument("--measure", default=None, metavar="JSON", help="CUDA: time the ops, print GB/s beside JSON's counts")
    ap.add_argument("--reps", type=int, default=100, help="--measure: do_bench milliseconds per op")
    args = ap.parse_args(argv)
    if args.measure:
        return measure(args.measure, args.reps)
    run = yaml.safe_load(Path(args.preset).read_text())
    model = yaml.safe_load((Path(args.preset).parent.parent / run["model"]["preset"]).read_text()) if "model" in run else run
    model.update({k: v for k, v in run.get("model", {}).items() if k != "preset"})
    C, n = args.hidden or model["hidden_size"], args.n or model["n_streams"]
    iters = model.get("sinkhorn_iters", 20) if args.iters is None else args.iters
    T = args.full_tokens or run["train"]["micro_batch_size"] * run["data"]["seq_len"]
    model.update(hidden_size=C, n_streams=n)
    if args.tokens % max(64, *(args.coef_tiles or [0])):
        print("kernel_traffic: --tokens must be a multiple of 64 and of --coef-tiles' BT", file=sys.stderr)
        return 2
    check = traffic_counter.copy_traffic(1000, reads=1)
    assert check.total("loaded") == check.total("stored") == 4000, "counter check failed"
    print(f"counter check: a copy of 1000 fp32 moves {check.total('loaded')} B in, {check.total('stored')} B out")
    cases = []
    if args.counts:  # shape and counts of an earlier run
        saved = json.loads(Path(args.counts).read_text())
        C, n, iters, T, cases = saved["hidden"], saved["n"], saved["iters"], saved["full_tokens"], saved["cases"]
        model.update(hidden_size=C, n_streams=n)
    for case in cases:
        dt = DTYPES[case["dtypes"]][0]
        for r in case["rows"]:
            r["hbm"] = hbm_estimate(r, args.l2_mib * 2**20)
        print_tables(case["rows"], cuda_policy(T, C, n, dt), f"C = {C}, n = {n}, {iters} Sinkhorn iterations, "
                     f"{case['dtypes']} (from {args.counts})", T, args.gbs, args.l2_mib * 2**20)
    for name in [] if args.counts else args.dtypes:
        dt, ft = DTYPES[name]
        policy = cuda_policy(T, C, n, dt)
        if args.coef_tiles:
            c, (bt, bk) = policy["coef"], args.coef_tiles
            policy["coef"] = dataclasses.replace(c, main=dataclasses.replace(c.main, BT=bt), dphi=dataclasses.replace(c.dphi, BC=bk))
        a = count(args.tokens, C, n, dt, ft, iters, policy)
        b = count(2 * args.tokens, C, n, dt, ft, iters, policy)
        rows = extrapolate(a, b, args.tokens, 2 * args.tokens, T)
        for r in rows:
            r["hbm"] = hbm_estimate(r, args.l2_mib * 2**20)
        print_tables(rows, policy, f"C = {C}, n = {n}, {iters} Sinkhorn iterations, {name}", T, args.gbs, args.l2_mib * 2**20)
        cases.append(dict(dtypes=name, rows=rows))
    setting = args.recompute or recompute_setting(run, model)
    for case in cases:
        p = project_step(case["rows"], run, model, C, n, T, DTYPES[case["dtypes"]], setting)
        print_projection(p, args.gbs, f"dtypes {case['dtypes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(hidden=C, n=n, iters=iters, full_tokens=T, gbs=args.gbs, cases=cases)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
