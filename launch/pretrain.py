"""Pretrain an mhc-lm model.

    python launch/pretrain.py --config configs/tiny_cpu.yaml train.max_steps=200 model.residual_mode=hc
    accelerate launch --config_file configs/accelerate/deepspeed_zero2_8gpu.yaml \\
        launch/pretrain.py --config configs/mhc_1b.yaml
    # two CPU processes (gloo): note --multi_gpu, `--cpu --num_processes 2` starts only one
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no launch/pretrain.py --config configs/tiny_cpu.yaml

Overrides are dotted `section.key=value` pairs (CLI > file > defaults). An existing run_dir is
resumed from its latest complete checkpoint (checkpoint.resume=auto); SIGTERM/SIGINT write a
checkpoint and stop. `--dry-run` prints what the run needs (parameters, tokens, memory per device
for each configs/accelerate/ strategy, data source, resume point) without touching data or GPUs;
every run prints the same at its start, and one that does not fit the machine (or a GPU-sized run
on a machine without CUDA, unless --allow-cpu) stops with exit 2 (mhc_lm/train/plan.py).
Exit codes: 0 completed, 2 bad config (or a run_dir / checkpoint that cannot be used, or a run
that does not fit), 3 diverged, 4 interrupted by a signal (checkpoint written: rerun the same command to
resume), so `pretrain.py ... && next-step` never goes on with an unfinished run.
`--resume-with KEY=VALUE` (repeatable) resumes with a sanctioned change of a setting that resume
otherwise refuses to change (optim.lr, optim.warmup_steps, optim.min_lr_ratio, optim.z_loss,
train.grad_clip; mhc_lm/train/resume_with.py); the change is recorded in meta.json. Under
`accelerate launch` the launcher returns 1 for any non-zero worker code (the workers' codes and
messages are in the log).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from mhc_lm.config_utils import ConfigError  # noqa: E402

EXIT_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config YAML (configs/*.yaml)")
    parser.add_argument("--resume", default=None, help="checkpoint dir, 'auto' or 'none' (= checkpoint.resume)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print parameters, tokens, memory per strategy, data source and resume point; exit")
    parser.add_argument("--allow-cpu", action="store_true", help="train a GPU-sized run on CPU anyway (debugging)")
    parser.add_argument("--resume-with", action="append", default=[], metavar="KEY=VALUE",
                        help="resume with this sanctioned change (repeatable), e.g. --resume-with optim.lr=1e-3")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=200")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])

    from mhc_lm.metrics import build_callbacks
    from mhc_lm.train import Trainer, TrainingDiverged, load_run_config
    from mhc_lm.train.resume_with import parse_cli

    try:
        changed, keys = parse_cli(args.resume_with)
        config = load_run_config(args.config, overrides + changed)
        config.checkpoint.resume_with = sorted(set(config.checkpoint.resume_with) | set(keys))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    from mhc_lm.train.plan import preflight

    code = preflight(config, dry_run=args.dry_run, allow_cpu=args.allow_cpu)  # the plan; exit 2 if it cannot fit
    if code is not None:
        return code
    from mhc_lm.train.distributed import shutdown
    from mhc_lm.train.checkpoint import latest_checkpoint
    from mhc_lm.train.faults import as_write_fault

    try:
        status = Trainer(config, callbacks=build_callbacks(config)).fit()
    except TrainingDiverged as err:
        print(f"[mhc-lm] training diverged: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except ConfigError as err:  # found once the run starts: data, tokenizer, run_dir, checkpoint to resume
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:  # a full disk, a read-only or unwritable run_dir / data cache
        fault = as_write_fault(err, Path(config.run_dir), latest_checkpoint(config.run_dir))
        if fault is None:
            raise
        print(f"error: {fault.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        shutdown()
    if os.environ.get("RANK", "0") == "0":
        print(f"[mhc-lm] {status}: {config.run_dir}", flush=True)
    return EXIT_INTERRUPTED if status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
