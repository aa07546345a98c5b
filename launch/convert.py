"""Convert checkpoints between transformers' Llama and mhc-lm, and upcycle standard into hc / mhc.

    python launch/convert.py from-llama HuggingFaceTB/SmolLM-135M models/smollm   # or a local folder
    python launch/convert.py to-llama runs/tiny models/tiny_llama                # standard run or folder
    python launch/convert.py upcycle models/smollm models/smollm_mhc4 --residual-mode mhc --n-streams 4

from-llama: a LlamaForCausalLM folder (config.json + safetensors) -> an mhc-lm `standard` folder
  (remote code, `trust_remote_code=True`). Config fields mhc-lm cannot represent (rope scaling,
  biases, an activation other than SiLU, unknown fields) are refused, never dropped.
to-llama: a standard-mode run directory or mhc-lm folder -> a native LlamaForCausalLM folder (no
  remote code: transformers, vLLM and llama.cpp's converter read it). hc, mhc and grid are refused.
upcycle: a standard model (run, mhc-lm or Llama folder) -> hc / mhc with n streams computing the
  same function at conversion (checked on a fixed batch before writing; docs/continued_pretraining.md).
The tokenizer files are copied along. OUT must be new, empty or an earlier export (it is replaced).
Then continue pretraining: `python launch/pretrain.py --config ... train.init_from=OUT`.

Exit codes: 0 written, 2 refused (one line naming why; nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("from-llama", "Llama folder or Hub name -> mhc-lm standard folder"),
                       ("to-llama", "standard run dir or mhc-lm folder -> LlamaForCausalLM folder")):
        p = sub.add_parser(name, help=text)
        p.add_argument("src")
        p.add_argument("out", type=Path)
    p = sub.add_parser("upcycle", help="standard model -> exact hc / mhc (n streams)")
    p.add_argument("src")
    p.add_argument("out", type=Path)
    p.add_argument("--residual-mode", required=True, choices=["hc", "mhc", "grid"])
    p.add_argument("--n-streams", type=int, default=4, help="streams n of hc / mhc (default 4)")
    p.add_argument("--h-res-map", default=None,
                   choices=["sinkhorn", "permutation", "kronecker", "orthostochastic", "orthogonal"],
                   help="mhc: the H_res map (default sinkhorn)")
    p.add_argument("--mhc-init", default=None, choices=["uniform", "identity"],
                   help="mhc: H_res starts uniform (b_res = 0, default) or near identity (b_res = 6I - 3)")
    p.add_argument("--pre-home-weight", type=float, default=0.5,
                   help="mhc: H_pre on the sub-layer's home stream; the others share the rest (default 0.5)")
    p.add_argument("--grid-size", type=int, default=None, help="grid: only 1 is exact (the same stack)")
    p.add_argument("--no-check", action="store_true", help="skip the logits comparison before writing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mhc_lm.convert import ConversionError, from_llama, to_llama, upcycle
    from mhc_lm.config_utils import ConfigError

    try:
        if args.command == "from-llama":
            out = from_llama(args.src, args.out)
        elif args.command == "to-llama":
            out = to_llama(args.src, args.out)
        else:
            out = upcycle(args.src, args.out, args.residual_mode, args.n_streams, args.h_res_map, args.mhc_init,
                          args.grid_size, args.pre_home_weight, check=not args.no_check)
    except (ConversionError, ConfigError, FileNotFoundError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only or unwritable OUT: one line, as export_hf.py
        from mhc_lm.train.faults import as_write_fault

        fault = as_write_fault(err)
        if fault is None:
            raise
        print(f"error: {fault.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
