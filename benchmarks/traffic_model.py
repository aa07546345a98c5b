"""Projection of mHC's mixing cost per training step from counted kernel bytes (benchmarks/kernel_traffic.py).

A model, not a measurement. Per sub-layer (two per decoder layer) mHC runs coefficients,
Sinkhorn, pre-mix and post + residual forward, and their backward kernels. How often each forward
kernel runs depends on the recompute setting:

    train.activation_checkpointing: every decoder layer re-runs its forward in backward: x 2;
    model.mixing_recompute sublayer: the mix-in (coefficients, Sinkhorn, pre-mix) x 2;
    model.mixing_recompute block: as sublayer, plus one post + residual per rebuilt stream
        (L_r - 1 of every L_r sub-layer pairs' streams: x (2 - 1 / L_r) for post + residual).

Added to the kernels' counted bytes, the torch ops around them (analytic, per token):
    autograd's sum of the stream's three gradients (coefficients, pre-mix, post + residual):
    two adds of n C elements, each reading two and writing one; the coefficient backward's
    (N, 2n + n^2) fp32 glue (~12 passes over M floats) and the dphi split partials' sum.
Subtracted, what standard moves in the same place: its residual add x + F (x in the streams'
dtype, F in its own; forward count as above) and the sum of x's two gradients (one add of C).

Time = bytes / bandwidth (the mixing ops are memory-bound), at the peak and at 75% of it.
Standard's step is estimated from its FLOPs: matmuls 2 x (weights) per token, causal attention
2 x 2 x (seq / 2) x C per layer, times 4 with layer checkpointing (forward, its re-run, and a
backward of twice the forward) or 3 without, at an assumed model FLOPs utilisation of the
989 TFLOP/s bf16 dense peak (H100 SXM).
"""

from __future__ import annotations

import math

H100_TFLOPS = 989.0


def recompute_setting(run: dict, model: dict) -> str:
    """"layer" when the trainer checkpoints every decoder layer, else model.mixing_recompute."""
    return "layer" if run.get("train", {}).get("activation_checkpointing") else model.get("mixing_recompute", "none")


def forward_multipliers(setting: str, model: dict, n: int) -> tuple[str, dict]:
    if setting == "layer":
        return "train.activation_checkpointing (every layer re-runs its forward)", dict.fromkeys(
            ("coefficients", "sinkhorn", "pre_mix", "post_res"), 2.0)
    mode = setting
    mult = dict.fromkeys(("coefficients", "sinkhorn", "pre_mix", "post_res"), 1.0)
    if mode in ("sublayer", "block"):
        mult.update(coefficients=2.0, sinkhorn=2.0, pre_mix=2.0)
    if mode == "block":
        L = model["num_hidden_layers"]
        L_r = model.get("mixing_recompute_layers") or max(1, round(math.sqrt(n * L / (n + 2))))
        mult["post_res"] = 2.0 - 1.0 / L_r
    return f"model.mixing_recompute = {mode}", mult


def standard_flops_per_token(model: dict, seq: int, recompute_layers: bool) -> float:
    C, F, L = model["hidden_size"], model["intermediate_size"], model["num_hidden_layers"]
    heads, kv = model["num_attention_heads"], model.get("num_key_value_heads") or model["num_attention_heads"]
    hd = C // heads
    per_layer = C * heads * hd + 2 * C * kv * hd + heads * hd * C + 3 * C * F  # q, k, v, o, gated MLP
    fwd = 2 * (L * per_layer + C * model["vocab_size"]) + L * 2 * 2 * (seq / 2) * C
    return fwd * (4 if recompute_layers else 3)


def project_step(rows: list[dict], run: dict, model: dict, C: int, n: int, T: int, dtypes, setting: str) -> dict:
    dt, ft = dtypes
    e, ef = dt.itemsize, ft.itemsize
    M = 2 * n + n * n
    how, mult = forward_multipliers(setting, model, n)
    items = []
    for r in rows:
        if r.get("total"):
            continue
        k = mult[r["op"]] if r["dir"] == "fwd" else 1.0
        items.append((f"{r['op']} {r['dir']} ({r['kernel']})", k, r["moved"], r["hbm"]))
    dphi = next((r["args"]["PART"] for r in rows if "dphi" in r["kernel"]), {"stored": 0, "minimum": 0})
    items += [
        ("torch: sum of the stream's 3 gradients (2 adds)", 1.0, 2 * 3 * n * C * e * T, 2 * 3 * n * C * e * T),
        ("torch: coefficient backward glue on (N, 2n+n^2)", 1.0, 12 * M * 4 * T, 12 * M * 4 * T),
        ("torch: dphi partials summed (read all, write one)", 1.0, dphi["stored"] + dphi["minimum"],
         dphi["stored"] + dphi["minimum"]),
    ]
    fwd_k = mult["post_res"]
    std = [("standard: residual add x + F", fwd_k, (e + ef + e) * C * T),  # its stream in the streams' dtype
           ("standard: sum of x's 2 gradients (1 add)", 1.0, 3 * C * e * T)]
    std = [(name, k, b, b) for name, k, b in std]
    L = model["num_hidden_layers"]
    seq = run.get("data", {}).get("seq_len", 4096)
    flops = standard_flops_per_token(model, seq, setting == "layer") * T
    return dict(how=how, items=items, standard=std, sublayers=2 * L, T=T, flops=flops, C=C, n=n, e=e, ef=ef)


def print_projection(p: dict, gbs: float, label: str) -> None:
    GB = 1e9
    print(f"\n### Projected mixing cost per micro-batch ({label}): {p['sublayers']} sub-layers x {p['T']} tokens, {p['how']}\n")
    print("| item | runs per sub-layer | MB moved per run | MB HBM est. per run | GB HBM est. per micro-batch |")
    print("|---|---:|---:|---:|---:|")
    totals = [0.0, 0.0]  # moved, HBM estimate (GB per micro-batch)
    for sign, items in ((1, p["items"]), (-1, p["standard"])):
        for name, k, moved, hbm in items:
            gb = k * hbm * p["sublayers"] / GB
            totals[0] += sign * k * moved * p["sublayers"] / GB
            totals[1] += sign * gb
            print(f"| {name} | {k:g} | {moved / 1e6:.1f} | {hbm / 1e6:.1f} | {sign * gb:.1f} |")
    print(f"| **mHC minus standard** | | | | **{totals[1]:.1f}** (every re-read from HBM: {totals[0]:.1f}) |")
    print(f"\nStandard's step: {p['flops'] / 1e12:.0f} TFLOP per micro-batch (estimated from the preset).\n")
    print("| assumed MFU of standard | standard ms | mixing ms at 100% / 75% of HBM | mHC step overhead at 100% / 75% |")
    print("|---:|---:|---:|---:|")
    t_mix = totals[1] * GB / (gbs * 1e9) * 1e3
    for mfu in (0.3, 0.4, 0.5):
        t_std = p["flops"] / (H100_TFLOPS * 1e12 * mfu) * 1e3
        print(f"| {mfu:.0%} | {t_std:.0f} | {t_mix:.0f} / {t_mix / 0.75:.0f} | "
              f"+{100 * t_mix / t_std:.1f}% / +{100 * t_mix / 0.75 / t_std:.1f}% |")
    print("\nmHC paper (arXiv 2512.24880), n = 4 with its fused kernels and recompute: +6.7% (measured, its own models).")
