"""Export a Hugging Face folder (weights, config, remote code, tokenizer) from a run directory.

    python launch/export_hf.py runs/tiny                        # latest checkpoint -> runs/tiny/hf
    python launch/export_hf.py runs/tiny --checkpoint runs/tiny/checkpoints/step_0000200 --out /tmp/m

Then: AutoModelForCausalLM.from_pretrained("runs/tiny/hf", trust_remote_code=True).
Works for plain, FSDP and DeepSpeed checkpoints: under DeepSpeed the fp32 master weights are
consolidated from the optimizer partitions of any ZeRO stage, BF16_Optimizer (bf16 + ZeRO-1) included.
--out replaces only an earlier export (or an empty folder): the run directory, a folder above it,
its checkpoints/, a file and a folder holding other files are refused (exit code 2, nothing deleted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: latest complete checkpoint")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: RUN_DIR/hf; a new or empty folder, or an earlier export (replaced)")
    args = parser.parse_args(argv)

    from mhc_lm.config_utils import ConfigError
    from mhc_lm.train.export import ExportTargetError, export_run_dir
    from mhc_lm.train.safe_pickle import UnsafePickleError

    if not (args.run_dir / "config.yaml").is_file():
        print(f"error: {args.run_dir} is not a run directory (no config.yaml): pass the run_dir of "
              "launch/pretrain.py", file=sys.stderr)
        return 2
    try:
        out = export_run_dir(args.run_dir, args.out, args.checkpoint)
    except (ConfigError, FileNotFoundError, ExportTargetError, UnsafePickleError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only or unwritable --out
        from mhc_lm.train.faults import as_write_fault

        fault = as_write_fault(err)
        if fault is None:
            raise
        print(f"error: {fault.strerror}", file=sys.stderr)
        return 2
    print(f"exported {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
