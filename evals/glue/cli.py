"""`python -m evals.glue`: evaluate one model on GLUE, or compare finished evaluations.

    python -m evals.glue --model runs/mhc_1b --tasks cola,sst2,mrpc --protocol finetune --out glue/mhc
    python -m evals.glue --model runs/mhc_1b/hf --tasks all --protocol zeroshot --out glue/mhc_zs \\
        --data-dir ~/glue_data zeroshot.batch_size=64
    python -m evals.glue --compare glue/standard glue/hc glue/mhc glue/grid [--out compare.md]

Trailing `key=value` arguments override configs/eval/glue.yaml (`tasks.rte.num_epochs=20`).
Finished tasks in --out (same protocol and model) are skipped; --overwrite redoes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mhc_lm.config_utils import ConfigError
from mhc_lm.files import write_json_atomic, write_text_atomic

from .config import DEFAULT_CONFIG, config_dict, load_glue_config
from .data import GlueDataError
from .report import compare, write_run_report
from .tasks import parse_tasks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.glue", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="exported HF folder, or a training run dir (its hf/ is used)")
    p.add_argument("--tasks", default="all", help="comma-separated GLUE tasks, or 'all' (default)")
    p.add_argument("--protocol", choices=("finetune", "zeroshot"), default="finetune")
    p.add_argument("--out", help="results folder (with --compare: the Markdown file to write)")
    p.add_argument("--data-dir", help="local GLUE data (original TSV layout, or parquet/json); "
                                      "default: nyu-mll/glue from the Hub")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="hyperparameters (default: %(default)s)")
    p.add_argument("--seeds", help="comma-separated fine-tuning seeds (overrides the config's seeds)")
    p.add_argument("--name", help="model name in tables (default: the --out folder name)")
    p.add_argument("--overwrite", action="store_true", help="redo tasks already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="results folders to put side by side")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. finetune.learning_rate=1e-4")
    return p


def _settings(args, cfg, spec, model_path: str, data_dir) -> dict:
    """What a task's result depends on; a finished result is reused only when all of it matches."""
    task_cfg = ({"hyperparameters": config_dict(cfg.finetune_for(spec.name)), "seeds": list(cfg.seeds)}
                if args.protocol == "finetune" else {"zeroshot": config_dict(cfg.zeroshot)})
    return {"protocol": args.protocol, "model": model_path, "data": str(data_dir) if data_dir else "hub:nyu-mll/glue",
            "mixed_precision": cfg.mixed_precision, **task_cfg}


def _is_done(path: Path, settings: dict) -> bool:
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return old.get("settings") == json.loads(json.dumps(settings))  # settings as JSON stores them


def run(args) -> str:
    from .model_io import load_causal_lm, load_tokenizer, model_info, resolve_model_dir

    overrides = list(args.overrides)
    if args.seeds:
        overrides.append(f"seeds=[{args.seeds}]")
    cfg = load_glue_config(args.config, overrides)
    specs = parse_tasks(args.tasks)
    model_dir = resolve_model_dir(args.model)
    info = model_info(model_dir)
    out_dir = Path(args.out)
    name = args.name or out_dir.name
    progress = not args.no_progress
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None

    import torch
    from accelerate import Accelerator

    # cpu=True without CUDA: several CPU processes then talk over gloo (`accelerate launch --cpu` would start one process only)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    tokenizer = load_tokenizer(model_dir)
    lm = None
    for spec in specs:
        path = out_dir / f"{spec.name}.json"
        settings = _settings(args, cfg, spec, info["path"], data_dir)
        if not args.overwrite and _is_done(path, settings):
            accelerator.print(f"[glue] {spec.name}: already in {path} with the same settings, skipped "
                              "(--overwrite redoes it)")
            continue
        if args.protocol == "zeroshot" and spec.prompt is None:
            accelerator.print(f"[glue] {spec.name}: skipped, no zero-shot prompt (lm-evaluation-harness "
                              f"has no {spec.name} task)")
            continue
        t0 = time.time()
        if args.protocol == "finetune":
            from .finetune import finetune_task

            hp = cfg.finetune_for(spec.name)
            result = finetune_task(spec, model_dir, tokenizer, hp, cfg.seeds, accelerator, data_dir, progress)
            result["hyperparameters"] = config_dict(hp)
        else:
            from .zeroshot import zeroshot_task

            if lm is None:
                lm = accelerator.prepare_model(load_causal_lm(model_dir), evaluation_mode=True).eval()
            if accelerator.is_main_process:
                with accelerator.autocast():
                    result = zeroshot_task(spec, lm, tokenizer, cfg.zeroshot, data_dir, accelerator.device,
                                           progress)
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            result["model"] = info
            result["settings"] = settings
            write_json_atomic(path, result)
            shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in result["metrics"].items())
            print(f"[glue] {spec.name} ({args.protocol}): {shown}  [{time.time() - t0:.1f}s] -> {path}")
    if not accelerator.is_main_process:
        return ""
    table = write_run_report(out_dir, name, info, args.protocol, config_dict(cfg))
    print(f"\n{table}\nresults: {out_dir}/results.md, {out_dir}/<task>.json")
    return table


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.compare:
            table = compare(args.compare)
            print(table)
            if args.out:
                write_text_atomic(Path(args.out), "# GLUE comparison\n\n" + table)
            return 0
        if not args.model or not args.out:
            parser.error("--model and --out are required (or --compare DIR...)")
        run(args)
    except (ConfigError, GlueDataError, FileNotFoundError, ValueError) as err:  # ConfigError: RunDirError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
