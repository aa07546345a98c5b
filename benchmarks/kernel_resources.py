"""Static resource report of the fused kernels for a GPU architecture, without a GPU.

Compiles every Triton kernel of `mhc_lm.kernels` at the block shapes its launch policy picks on
CUDA (Triton's own compiler, offline, for `--arch`; sm_90 = H100/H200 by default), assembles the
PTX with the ptxas that ships with Triton, and prints per kernel: registers per thread, spilled
bytes, shared memory, and how the global loads and stores are vectorised (16-byte accesses are
what a memory-bound kernel needs; counted per instruction, so the few small scalar loads of the
mixing coefficients weigh as much as a stream's 16-byte vector). "programs/SM" is how many
programs fit on one SM by registers (65,536), threads (2,048) and shared memory (228 KiB), the
Hopper limits, ignoring allocation granularity.

This is a proxy for speed, not a measurement: `benchmarks/mixing.py` on a GPU is the measurement.
It needs only the CPU and the `ptxas` inside the triton wheel.

    python benchmarks/kernel_resources.py                      # n = 2, 4, 8; fp32+bf16, bf16, fp32; 1B shape
    python benchmarks/kernel_resources.py --n 4 --dtypes bf16 --arch 100
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mhc_lm.kernels import coefficients, launch, sinkhorn, stream_mix  # noqa: E402

TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# stream dtype, branch-output dtype; "fp32+bf16" is training under bf16 autocast: the residual
# streams stay fp32 (fp32 parameters), the sub-layer output F is bf16
DTYPES = {
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float16),
    "fp32+bf16": (torch.float32, torch.bfloat16),
}
WARP_THREADS, SM_REGS, MAX_THREADS, SM_SMEM = 32, 65536, 2048, 228 * 1024  # Hopper SM limits


def ptxas_path(arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def compile_kernel(fn, args: dict, consts: dict, arch: int, num_warps: int) -> dict:
    """args: name -> torch dtype (a pointer) or int (a scalar); ints divisible by 16 and all pointers get
    Triton's runtime divisibility specialisation, as a real launch on aligned tensors would."""
    sig, attrs = {}, {}
    for name, value in args.items():
        idx = (fn.arg_names.index(name),)
        if isinstance(value, torch.dtype):
            sig[name] = "*" + TRITON_TYPE[value]
            attrs[idx] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if value % 16 == 0:
                attrs[idx] = [["tt.divisibility", 16]]
    sig.update({k: "constexpr" for k in consts})
    target = GPUTarget("cuda", arch, 32)
    kernel = triton.compile(ASTSource(fn, sig, consts, attrs), target=target, options={"num_warps": num_warps})
    ptx = kernel.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(ptx)
    try:
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        res = subprocess.run([ptxas_path(arch), f"-arch={sm}", "-v", fh.name, "-o", os.devnull], capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    info = res.stdout + res.stderr
    if res.returncode:
        raise RuntimeError(f"ptxas failed for {fn.__name__}: {info[-500:]}")
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    spill = int(re.search(r"(\d+) bytes spill stores", info).group(1))

    def widths(op: str) -> str:  # share of global accesses by width, e.g. "v4 86% / b32 14%"
        kinds = Counter(re.findall(rf"{op}\.global(?:\.[a-zA-Z0-9_:]+)*?\.((?:v[248]\.)?[bf]\d+)\b", ptx))
        if op == "ld":  # pipelined tiles load global -> shared asynchronously: "cp.async 16" = 16 bytes
            sizes = re.findall(r"cp\.async\.c[ag]\.shared\.global[^,]*,[^,]*,\s*(0x[0-9a-f]+|\d+)", ptx)
            kinds.update(f"cp.async {int(b, 0)}B" for b in sizes)
        total = sum(kinds.values()) or 1
        top = sorted(kinds.items(), key=lambda kv: -kv[1])[:2]
        return " / ".join(f"{k.split('.')[0] if k[0] in 'vbf' else k} {100 * v // total}%" for k, v in top) or "-"

    return dict(regs=regs, spill=spill, smem=kernel.metadata.shared, loads=widths("ld"), stores=widths("st"),
                occupancy=min(MAX_THREADS // (WARP_THREADS * num_warps), SM_REGS // (WARP_THREADS * num_warps * max(regs, 1)),
                              SM_SMEM // max(kernel.metadata.shared, 1)))


def cases(T: int, C: int, ns: list[int], dtypes: list[str], iters: int):
    """(label, kernel, args, consts, num_warps) at the CUDA launch policy of each op."""
    cuda = torch.device("cuda", 0)
    f32 = torch.float32
    for n in ns:
        NP = launch.next_pow2(n)
        for name in dtypes:
            dt, ft = DTYPES[name]  # stream x (and its gradients), branch output f (and df)
            fwd = launch.mix_blocks(T, C, n, dt, cuda, backward=False)
            bwd = launch.mix_blocks(T, C, n, dt, cuda, backward=True)
            mix = dict(N=n, NP=NP, VEC=launch.channel_vec(C))
            yield ("pre_mix fwd", n, name, fwd, stream_mix._pre_mix_fwd_kernel,
                   dict(X=dt, H=f32, Y=dt, T=T, C=C), dict(mix, BT=fwd.BT, BC=fwd.BC))
            yield ("pre_mix bwd", n, name, bwd, stream_mix._pre_mix_bwd_kernel,
                   dict(X=dt, H=f32, G=dt, GX=dt, GH=f32, T=T, C=C, SPLITS=bwd.splits), dict(mix, BT=bwd.BT, BC=bwd.BC))
            yield ("post_res fwd", n, name, fwd, stream_mix._post_res_fwd_kernel,
                   dict(X=dt, F=ft, HR=f32, HP=f32, OUT=dt, T=T, C=C), dict(mix, BT=fwd.BT, BC=fwd.BC))
            yield ("post_res bwd", n, name, bwd, stream_mix._post_res_bwd_kernel,
                   dict(X=dt, F=ft, HR=f32, HP=f32, G=dt, GX=dt, GF=ft, GHR=f32, GHP=f32, T=T, C=C, SPLITS=bwd.splits),
                   dict(mix, BT=bwd.BT, BC=bwd.BC))
            K, M = n * C, 2 * n + n * n
            MP = max(16, launch.next_pow2(M))
            cp = coefficients.plan(T, K, M, cuda)
            cb, cd, prec = cp.main, cp.dphi, cp.precision
            yield (f"coefficients fwd ({prec})", n, name, cb, coefficients._coef_fwd_kernel,
                   dict(X=dt, PHI=f32, ALPHA=f32, BIAS=f32, HPRE=f32, HPOST=f32, LOGITS=f32, PROJ=f32, RSTD=f32,
                        T=T, K=K, EPS=1e-6), dict(N=n, M=M, MP=MP, BT=cb.BT, BK=cb.BC, PREC=prec))
            yield (f"coefficients dx ({prec})", n, name, cb, coefficients._coef_dx_kernel,
                   dict(X=dt, PHI=f32, GP=f32, PROJ=f32, RSTD=f32, GX=dt, T=T, K=K),
                   dict(M=M, MP=MP, BT=cb.BT, BK=cb.BC, PREC=prec))
            yield (f"coefficients dphi ({prec})", n, name, cd, coefficients._coef_dphi_kernel,
                   dict(X=dt, GP=f32, RSTD=f32, PART=f32, T=T, K=K, SPLITS=cd.splits),
                   dict(M=M, MP=MP, BT=cd.BT, BK=cd.BC, PREC=prec))
        sb = sinkhorn.blocks(T, n, cuda)
        consts = dict(N=n, NP=NP, ITERS=iters, BT=sb.BT)
        yield ("sinkhorn fwd", n, "fp32", sb, sinkhorn._sinkhorn_fwd_kernel, dict(L_ptr=f32, P_ptr=f32, T=T, EPS=1e-6), consts)
        yield ("sinkhorn bwd", n, "fp32", sb, sinkhorn._sinkhorn_bwd_kernel,
               dict(L_ptr=f32, G_ptr=f32, GL_ptr=f32, T=T, EPS=1e-6), consts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200, 100: B200)")
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per micro-batch (1B config: 8 x 2048)")
    ap.add_argument("--channels", type=int, default=2048, help="hidden size C (1B config: 2048)")
    ap.add_argument("--n", type=int, nargs="+", default=[2, 4, 8], help="stream counts")
    ap.add_argument("--dtypes", nargs="+", default=["fp32+bf16", "bf16", "fp32"], choices=sorted(DTYPES),
                    help="stream dtype (+ sub-layer output dtype when it differs)")
    ap.add_argument("--iters", type=int, default=20, help="Sinkhorn iterations")
    ap.add_argument("--only", default="", help="comma-separated substrings: report only kernels whose name has one")
    args = ap.parse_args(argv)
    try:
        ptxas_path(args.arch)
    except Exception as e:  # no nvidia backend / ptxas in this triton build
        print(f"kernel_resources: no ptxas for sm_{args.arch} in this Triton install ({e})", file=sys.stderr)
        return 2
    launch.sm_count = lambda index: 132  # the split heuristics need an SM count; H100/H200 SXM have 132

    print(f"sm_{args.arch}, T = {args.tokens}, C = {args.channels}")
    print("| kernel | n | dtype | BT x BC (warps, splits) | regs | spill B | smem B | programs/SM | loads | stores |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, n, dt, b, fn, kargs, consts in cases(args.tokens, args.channels, args.n, args.dtypes, args.iters):
        if args.only and not any(part in label for part in args.only.split(",")):
            continue
        r = compile_kernel(fn, kargs, consts, args.arch, b.warps)
        shape = f"{b.BT} x {b.BC} ({b.warps}, {b.splits})"
        print(f"| {label} | {n} | {dt} | {shape} | {r['regs']} | {r['spill']} | {r['smem']} | "
              f"{r['occupancy']} | {r['loads']} | {r['stores']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
