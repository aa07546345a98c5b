"""Activation memory of the residual modes and of `model.mixing_recompute` (docs/performance.md).

    python benchmarks/memory.py                      # tiny + 1B width, fp32 + bf16, every setting (~10 min CPU)
    python benchmarks/memory.py --shapes tiny        # the tiny shape only (~1 min)
    python benchmarks/memory.py --step-time          # + CPU step time of each setting (tiny shape)

For every mode (standard, hc, mhc, grid) and recompute setting (none, sublayer, block) it
prints the activation bytes kept for backward, per token per layer, and the ratio to standard.

Method 1 (saved tensors): `torch.autograd.graph.saved_tensors_hooks` around one forward; the
bytes of every saved tensor's storage, deduplicated by storage, parameters and autocast's bf16
copies of them excluded (weights, not activations: they do not grow with the tokens).
Method 2 (live memory, the cross-check): the profiler's allocator events (`profile_memory`)
over one forward with the graph alive, minus the same forward under `no_grad` (outputs only),
taken at T and T/2 tokens: 2 (M(T) - M(T/2)) keeps the part that grows with the tokens.
It counts what the graph keeps alive by any route, including what saved-tensor hooks cannot see
(what `torch.utils.checkpoint` keeps, Python references held by autograd nodes).

Per layer: both are measured at two depths, L1 and L2 = 2 L1, and the difference divided by
L2 - L1 layers and by the tokens, which removes the embedding, the LM head and the loss. L1 is
the block length L_r for `block` (the L_r of the *full-depth* model, so the block amortisation is
the full model's) and one grid module (4 layers) for grid, else 1.
1B shape: the width of configs/model/*_1b.yaml (C = 2048, FFN 5632, 16 heads / 8 KV, n = 4,
L_r = 4 from its 20 layers) at L1 and L2 layers, 1 x 64 tokens: a per-layer figure does not
depend on the depth, and every saved activation is linear in the tokens (SDPA keeps no T x T
matrix), so it is the full model's per-layer figure.
On CUDA it also prints `torch.cuda.max_memory_allocated` for one real training step (forward,
backward, AdamW) of the full-depth model at the same settings.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the profiler of method 2 (libkineto) prints a `USDT: ... profiler_start` / `profiler_stop` line on
# stderr per profiled forward (256 for --shapes tiny); its levels end at USDT (5), so 6 silences it
# (its warnings and errors too: method 2 is a cross-check). Read when a profile starts.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402

from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM  # noqa: E402

SHAPES = {
    # the tiny shape: C = 512, 2 x 256 tokens
    "tiny": dict(model=dict(vocab_size=4096, hidden_size=512, intermediate_size=1376, num_attention_heads=8,
                            num_key_value_heads=8), full_layers=4, batch=2, seq=256),
    "1b": dict(model=dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_attention_heads=16,
                          num_key_value_heads=8, rope_theta=500000.0), full_layers=20, batch=1, seq=64),
}
VARIANTS = [("standard", "none"), ("grid", "none"), ("hc", "none"), ("hc", "sublayer"), ("hc", "block"),
            ("mhc", "none"), ("mhc", "sublayer"), ("mhc", "block")]


def build(shape: dict, mode: str, recompute: str, layers: int, device: str) -> MhcLmForCausalLM:
    L_r = base_layers(shape, "mhc", "block") if recompute == "block" else None  # the full model's block length
    # the torch reference path, which CUDA composes too; on the CPU, mHC's numba mix-in keeps 4 (2K + n - n^2)
    # bytes per token and sub-layer less (`mhc_lm/train/memory_estimate.py`)
    cfg = MhcLmConfig(**shape["model"], num_hidden_layers=layers, residual_mode=mode, n_streams=4, grid_size=2,
                      mixing_recompute=recompute, mixing_recompute_layers=L_r, cpu_kernels=False)
    torch.manual_seed(0)
    return MhcLmForCausalLM(cfg).to(device).train()


def base_layers(shape: dict, mode: str, recompute: str) -> int:
    if recompute == "block":
        return MhcLmConfig(**shape["model"], num_hidden_layers=shape["full_layers"], residual_mode=mode,
                           mixing_recompute="block").resolved_recompute_layers
    return 4 if mode == "grid" else 1


def _batch(model, shape, device):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (shape["batch"], shape["seq"] + 1), generator=g).to(device)


def is_parameter_copy(t: torch.Tensor, params: set[int]) -> bool:
    """A parameter, or autocast's bf16 copy of one (a view / cast chain ending at its leaf): weights,
    not activations, and independent of the tokens (autocast keeps those copies alive anyway)."""
    if t.untyped_storage().data_ptr() in params:
        return True
    fn = t.grad_fn
    for _ in range(4):
        if fn is None or not fn.next_functions:
            return False
        name = type(fn).__name__
        if not (name.startswith("ToCopy") or name.startswith("T") or "View" in name or name.startswith("Transpose")):
            return False
        fn = fn.next_functions[0][0]
        variable = getattr(fn, "variable", None)
        if variable is not None:
            return variable.untyped_storage().data_ptr() in params
    return False


def saved_bytes(model, ids, bf16: bool) -> int:
    """Method 1: storages of the saved tensors of one forward, deduplicated, parameters (and their
    autocast copies) excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if not is_parameter_copy(t, params):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:])
    del out
    return sum(seen.values())


def live_bytes(model, ids, bf16: bool) -> int:
    """Method 2: net allocations of a forward with the graph alive, minus a graph-free forward."""
    from torch.profiler import ProfilerActivity, profile

    def net(grad: bool) -> int:
        gc.collect()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.set_grad_enabled(grad), \
                torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:])
        total = sum(e.self_cpu_memory_usage for e in prof.key_averages())
        del out
        return total

    def graph(x) -> int:
        return net_of(x, True) - net_of(x, False)

    def net_of(x, grad):
        nonlocal ids
        ids, keep = x, ids
        try:
            return net(grad)
        finally:
            ids = keep

    # token-linear part only: 2 (M(T) - M(T/2)) drops what does not scale with the tokens
    # (autocast's bf16 weight copies, which the graph keeps alive under bf16)
    half = ids[:, : ids.shape[1] // 2 + 1]
    return 2 * (graph(ids) - graph(half))


def cuda_step_peak(shape, mode, recompute, bf16: bool) -> int:
    """torch.cuda.max_memory_allocated over one training step of the full-depth model."""
    model = build(shape, mode, recompute, shape["full_layers"], "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = _batch(model, shape, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:]).loss
    loss.backward()
    opt.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del model, opt, loss
    torch.cuda.empty_cache()
    return peak


def per_layer(shape, mode, recompute, bf16, device, method) -> float:
    """KiB per token per layer, differential over depths L1 and 2 L1."""
    L1 = base_layers(shape, mode, recompute)
    values = []
    for layers in (L1, 2 * L1):
        model = build(shape, mode, recompute, layers, device)
        values.append(method(model, _batch(model, shape, device), bf16))
        del model
        gc.collect()  # the HF model sits in reference cycles: free its weights before building the next
    tokens = shape["batch"] * shape["seq"]
    return (values[1] - values[0]) / L1 / tokens / 1024


def step_time(shape, rounds: int, threads: int) -> dict:
    """Median forward + backward time per setting, all settings interleaved round-robin."""
    torch.set_num_threads(threads)
    models = {v: build(shape, *v, shape["full_layers"], "cpu") for v in VARIANTS}
    ids = _batch(models[VARIANTS[0]], shape, "cpu")
    times = {v: [] for v in VARIANTS}
    for r in range(rounds + 1):
        for v, model in models.items():
            t = time.perf_counter()
            model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:]).loss.backward()
            model.zero_grad(set_to_none=True)
            if r:
                times[v].append(time.perf_counter() - t)
    return {v: statistics.median(t) for v, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,1b")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--no-live", action="store_true", help="skip method 2 (the profiler cross-check)")
    parser.add_argument("--step-time", action="store_true", help="CPU step time per setting (tiny shape)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated mode:recompute to measure (standard:none always runs first, for the ratio)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = args.dtypes.split(",")
    chosen = VARIANTS if args.variants is None else \
        [("standard", "none")] + [tuple(v.split(":")) for v in args.variants.split(",") if v != "standard:none"]
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        m = shape["model"]
        print(f"\n### {shape_name}: C = {m['hidden_size']}, FFN {m['intermediate_size']}, n = 4, "
              f"{shape['batch']} x {shape['seq']} tokens, L_r = {base_layers(shape, 'mhc', 'block')} "
              f"(full depth {shape['full_layers']}), {device}")
        head = "| mode | recompute |" + "".join(f" {d} KiB/tok/layer | {d} vs std |" for d in dtypes)
        if not args.no_live:
            head += "".join(f" {d} live KiB/tok/layer |" for d in dtypes)
        print(head + "\n|---|---|" + "---:|" * (head.count("|") - 3))
        std = {}
        for mode, rc in chosen:
            cells = []
            for dtype in dtypes:
                kib = per_layer(shape, mode, rc, dtype == "bf16", device, saved_bytes)
                std.setdefault(dtype, kib)  # standard is first
                cells.append(f" {kib:.1f} | {kib / std[dtype]:.2f}x |")
            if not args.no_live:
                for dtype in dtypes:
                    cells.append(f" {per_layer(shape, mode, rc, dtype == 'bf16', device, live_bytes):.1f} |")
            print(f"| {mode} | {rc} |" + "".join(cells), flush=True)
        if device == "cuda":
            print("\n| mode | recompute | " + " | ".join(f"{d} max_memory_allocated GiB" for d in dtypes) + " |")
            for mode, rc in chosen:
                peaks = [cuda_step_peak(shape, mode, rc, d == "bf16") / 2**30 for d in dtypes]
                print(f"| {mode} | {rc} | " + " | ".join(f"{p:.2f}" for p in peaks) + " |", flush=True)
    if args.step_time:
        shape = SHAPES["tiny"]
        times = step_time(shape, args.rounds, args.threads)
        base = times[("standard", "none")]
        print(f"\n### step time (forward + backward), tiny shape, {args.threads} thread(s), "
              f"median of {args.rounds} interleaved rounds\n| mode | recompute | ms | vs standard |\n|---|---|---:|---:|")
        for (mode, rc), t in times.items():
            print(f"| {mode} | {rc} | {t * 1e3:.0f} | {t / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
