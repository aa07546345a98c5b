"""Cost per token of each H_res map, side by side: projection + map, forward + backward.

    python benchmarks/maps.py                 # CPU, 1 thread: C = 2048, n = 4, 8, 16, N = 256 tokens (~1 min)
    python benchmarks/mixing.py --maps        # the same table
    python benchmarks/maps.py --device cuda   # GPU: N = 16384 tokens

Per map and n, two timed pieces of one mHC sub-layer's coefficient path:
- proj: the dynamic projection v phi, v (N, nC) @ phi (nC, 2n + K), forward + backward (dv, dphi).
  Its width 2n + K is where the maps differ most: K = n^2 (sinkhorn), n! (permutation),
  log2 n (kronecker), n(n-1)/2 (orthostochastic, orthogonal).
- map: logits (N, K) -> H_res (N, n, n), forward + backward (mhc_lm/model/h_res_maps.py).
Configurations run round-robin, one timing each per round, so a load change on a shared machine
hits every map alike; the CPU table reports the fastest round (the least disturbed one: other
processes only ever add time), the GPU table the median. A second table gives the mixing parameters of the
mhc_1b preset (configs/model/mhc_1b.yaml) per map at n = 4, 6, 8, 16: phi (nC x (2n + K)), biases (2n + K) and
3 gates per sub-layer, 2 sub-layers per layer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mhc_lm.model.configuration_mhc_lm import PERMUTATION_MAX_STREAMS  # noqa: E402
from mhc_lm.model.h_res_maps import H_RES_MAPS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def supported(name: str, n: int) -> bool:
    if name == "permutation" and n > PERMUTATION_MAX_STREAMS:  # n! logits: the config refuses more
        return False
    try:
        H_RES_MAPS[name].validate(n)
    except ValueError:
        return False
    return True


def sublayer_params(name: str, n: int, C: int) -> dict:
    """Mixing parameters of one mHC sub-layer: phi (nC x (2n + K)), bias (2n + K), 3 gates."""
    K = H_RES_MAPS[name].num_outputs(n)
    width = 2 * n + K
    return dict(K=K, phi_res=n * C * K, params=n * C * width + width + 3)


def make_runs(name: str, n: int, C: int, N: int, device, iters: int):
    """(proj fwd+bwd, map fwd+bwd) closures on fixed random inputs."""
    K = H_RES_MAPS[name].num_outputs(n)
    g = torch.Generator(device=device).manual_seed(0)
    v = torch.randn(N, n * C, device=device, generator=g).requires_grad_()  # RMSNorm'd flat stream
    phi = (0.02 * torch.randn(n * C, 2 * n + K, device=device, generator=g)).requires_grad_()
    logits = torch.randn(N, K, device=device, generator=g).requires_grad_()

    def proj():
        out = v @ phi  # (N, 2n + K)
        torch.autograd.grad(out, (v, phi), torch.ones_like(out))

    def mapping():
        h = H_RES_MAPS[name](logits, n, sinkhorn_iters=iters)  # (N, n, n)
        torch.autograd.grad(h, (logits,), torch.ones_like(h))

    return proj, mapping


def timed_once(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def bench_maps(names, streams, C: int, N: int, device, reps: int, iters: int, progress=None) -> list[dict]:
    configs = [(name, n) for n in streams for name in names if supported(name, n)]
    runs = {cfg: make_runs(*cfg, C, N, device, iters) for cfg in configs}
    times = {cfg: ([], []) for cfg in configs}
    for rnd in range(reps + 1):  # round 0 warms up
        for cfg, (proj, mapping) in runs.items():
            t_proj, t_map = timed_once(proj, device), timed_once(mapping, device)
            if rnd:
                times[cfg][0].append(t_proj)
                times[cfg][1].append(t_map)
        if progress:
            progress(rnd)
    rows = []
    pick = statistics.median if device.type == "cuda" else min
    for (name, n), (t_proj, t_map) in times.items():
        proj_us, map_us = (1e3 * pick(t) / N for t in (t_proj, t_map))  # ms -> us per token
        rows.append(dict(map=name, n=n, **sublayer_params(name, n, C), proj_us=proj_us, map_us=map_us,
                         total_us=proj_us + map_us))
    return rows


def preset_param_rows(streams=(4, 6, 8, 16)) -> tuple[str, list[dict]]:
    import yaml

    preset = yaml.safe_load(open(REPO / "configs/model/mhc_1b.yaml"))
    C, layers = preset["hidden_size"], preset["num_hidden_layers"]
    rows = []
    for n in streams:
        for name in H_RES_MAPS:
            if supported(name, n):
                p = sublayer_params(name, n, C)
                rows.append(dict(map=name, n=n, K=p["K"], per_sublayer=p["params"], model=2 * layers * p["params"]))
    return f"mhc_1b preset (C = {C}, {layers} layers, 2 sub-layers each; its own n is {preset['n_streams']})", rows


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n{title}")
    cells = [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streams", default="4,8,16", help="n values, comma separated")
    parser.add_argument("--hidden", type=int, default=2048, help="C (2048 as the 1B presets)")
    parser.add_argument("--tokens", type=int, default=None, help="N (CPU 256, GPU 16384)")
    parser.add_argument("--maps", default=",".join(H_RES_MAPS), help="maps, comma separated")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (CPU 21, GPU 20)")
    parser.add_argument("--sinkhorn-iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1: steady numbers on a shared machine)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if not gpu or args.threads:
        torch.set_num_threads(args.threads or 1)
    names = [m for m in args.maps.split(",") if m]
    unknown = [m for m in names if m not in H_RES_MAPS]
    if unknown:
        parser.error(f"unknown maps {unknown}; valid: {list(H_RES_MAPS)}")
    streams = [int(s) for s in args.streams.split(",")]
    N, reps = args.tokens or (16384 if gpu else 256), args.reps or (20 if gpu else 21)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}; torch {torch.__version__}; N = {N} tokens, C = {args.hidden}, "
          f"{args.sinkhorn_iters} Sinkhorn iterations, {'median' if gpu else 'fastest'} of {reps} round-robin rounds")
    t0 = time.perf_counter()
    rows = bench_maps(names, streams, args.hidden, N, device, reps, args.sinkhorn_iters,
                      progress=lambda r: print(f"round {r}/{reps}", file=sys.stderr, flush=True))
    print_table("H_res maps: fwd + bwd per token (us), proj = v phi (nC x (2n + K)), map = logits -> H_res; "
                "params = mixing parameters per sub-layer", rows,
                ["map", "n", "K", "phi_res", "params", "proj_us", "map_us", "total_us"])
    title, param_rows = preset_param_rows()
    print_table(f"mixing parameters at the {title}", param_rows, ["map", "n", "K", "per_sublayer", "model"])
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
