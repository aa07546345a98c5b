"""What a run will do, before it does anything: `launch/pretrain.py --dry-run` prints it, and every
run prints it once at its start and stops (exit 2) when it does not fit the machine.

    plan = make_plan(config)          # the model on the meta device: no data, no GPU, a few seconds
    print(format_plan(plan))
    problem = fit_problem(plan)       # None, or the one line saying why the run cannot start here

The fit rule: on CUDA, the estimate of this launch (memory_estimate.py) must fit each device's
memory less HEADROOM; on CPU (no CUDA, or train.cpu), it must fit the available RAM shared by the
processes of this machine, and a run needing more than CPU_MAX_FLOPS training FLOPs (a GPU-sized run,
e.g. configs/mhc_1b.yaml: about 1e20) is refused unless `--allow-cpu` is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mhc_lm.train import memory_estimate as mem
from mhc_lm.train.config import REPO_ROOT, RunConfig, build_model_config

CPU_MAX_FLOPS = 1e16
"""Training FLOPs above which a CPU run is refused without --allow-cpu (about a day at 100 GFLOP/s;
configs/tiny_cpu.yaml needs about 3e12)."""


@dataclass
class Plan:
    config: RunConfig
    model_config: object
    num_parameters: int
    mixing_parameters: int
    tokens_per_step: int
    micro_tokens: int
    train_flops: float
    estimates: list = field(default_factory=list)  # one per configs/accelerate/*.yaml
    this_launch: mem.Estimate | None = None
    data_source: str = ""
    data_offline: bool = True
    resume_from: str | None = None


def _meta_model(model_config):
    import torch

    from mhc_lm.model import MhcLmForCausalLM

    with torch.device("meta"):
        return MhcLmForCausalLM(model_config)


def cuda_available(config: RunConfig) -> bool:
    if config.train.cpu:
        return False
    import torch

    return torch.cuda.is_available()


def data_source(config: RunConfig) -> tuple[str, bool]:
    """(description, readable offline) of the data the run reads (nothing is opened or downloaded)."""
    d = config.data
    out = Path(d.out_dir)
    if (out / "meta.json").is_file():
        return f"prepared tokens in {out} (offline: yes)", True
    if not d.train_files:
        from mhc_lm.data.corpus import EMBEDDED_CORPORA

        ok = d.corpus in EMBEDDED_CORPORA
        return (f"embedded corpus {d.corpus!r}, prepared into {out} at the start (offline: "
                f"{'yes' if ok else 'no: unknown corpus'})"), ok
    from mhc_lm.data.sources import resolve_files

    try:
        files, hub = resolve_files(list(d.train_files), "data.train_files", True)
    except (ValueError, FileNotFoundError) as err:
        return f"{err} (offline: no)", False
    if hub is None:
        return f"{len(files)} local file(s) from {', '.join(d.train_files)}, prepared into {out} (offline: yes)", True
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0") not in ("0", "")
    cached = _hub_dataset_cached(hub)
    verdict = ("yes (in the Hugging Face cache)" if cached else
               "no: not in the Hugging Face cache" + (" and HF_HUB_OFFLINE is set" if offline else
                                                      ", it would be downloaded"))
    return f"Hub dataset {hub}{f' ({d.hub_config})' if d.hub_config else ''}, prepared into {out} " \
           f"(offline: {verdict})", cached


def _hub_dataset_cached(name: str) -> bool:
    roots = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_DATASETS_CACHE"),
             os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"),
             os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "datasets")]
    folder = "datasets--" + name.replace("/", "--")
    flat = name.replace("/", "___")
    return any(r and (Path(r, folder).is_dir() or Path(r, flat).is_dir()) for r in roots)


def resume_point(config: RunConfig) -> str | None:
    from mhc_lm.train import checkpoint as ckpt_lib

    choice = config.checkpoint.resume
    if choice == "none":
        return None
    if choice != "auto":
        ok = (Path(choice) / ckpt_lib.STATE_FILE).is_file()
        return choice if ok else f"{choice} (not a complete checkpoint: the run will refuse it)"
    run_dir = Path(config.run_dir)
    last = ckpt_lib.latest_checkpoint(run_dir) if run_dir.is_dir() else None
    return str(last) if last is not None else None


def accelerate_configs() -> list[Path]:
    return sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))


def make_plan(config: RunConfig, environ=None) -> Plan:
    from mhc_lm.train.run_log import flops_per_token

    environ = os.environ if environ is None else environ
    model_config = build_model_config(config.model)
    model = _meta_model(model_config)
    total = sum(p.numel() for p in model.parameters())
    mixing = sum(p.numel() for name, p in model.named_parameters() if "mixing" in name)
    t = config.train
    seq = config.data.seq_len
    micro = t.micro_batch_size * seq
    args = dict(num_parameters=total, c=model_config, tokens=micro, precision=t.mixed_precision,
                checkpointing=t.activation_checkpointing)
    estimates = [mem.estimate(mem.strategy_from_accelerate_yaml(p, REPO_ROOT), **args) for p in accelerate_configs()]
    this = mem.estimate(mem.strategy_from_env(environ, not cuda_available(config)), **args)
    source, offline = data_source(config)
    return Plan(config, model_config, total, mixing, t.batch_size * seq, micro,
                flops_per_token(model_config, seq) * t.batch_size * seq * t.max_steps, estimates, this,
                source, offline, resume_point(config))


def format_plan(plan: Plan) -> str:
    c, cfg = plan.model_config, plan.config
    t = cfg.train
    lines = [
        f"[mhc-lm] plan: {c.residual_mode} model, {plan.num_parameters:,} parameters ({plan.mixing_parameters:,} "
        f"in the residual mixing), {c.num_hidden_layers} layers x {c.hidden_size} wide, vocab {c.vocab_size}",
        f"[mhc-lm]   {t.max_steps:,} steps x {plan.tokens_per_step:,} tokens per step ({t.batch_size} x "
        f"{cfg.data.seq_len}) = {t.max_steps * plan.tokens_per_step:,} tokens, {plan.train_flops:.2g} training FLOPs",
        f"[mhc-lm]   memory per device ({t.mixed_precision} autocast, activation_checkpointing="
        f"{str(t.activation_checkpointing).lower()}, mixing_recompute={c.mixing_recompute}, micro-batch "
        f"{t.micro_batch_size} x {cfg.data.seq_len} tokens; estimate, see mhc_lm/train/memory_estimate.py):",
    ]
    lines += [f"[mhc-lm]     {e.line()}" for e in plan.estimates]
    if plan.this_launch is not None:
        lines.append(f"[mhc-lm]     {plan.this_launch.line()}")
    lines.append(f"[mhc-lm]   data: {plan.data_source}")
    lines.append(f"[mhc-lm]   run_dir: {cfg.run_dir} ("
                 + (f"would resume from {plan.resume_from}" if plan.resume_from else
                    "new run" if not Path(cfg.run_dir).exists() else "exists, no checkpoint: starts from step 0")
                 + ")")
    return "\n".join(lines)


def available_memory(config: RunConfig, environ=None) -> tuple[float, str]:
    """(bytes one process may use, description) on this machine."""
    environ = os.environ if environ is None else environ
    if cuda_available(config):
        import torch

        idx = int(environ.get("LOCAL_RANK", "0") or 0) % max(1, torch.cuda.device_count())
        props = torch.cuda.get_device_properties(idx)
        return props.total_memory * (1 - mem.HEADROOM), f"{props.name} with {mem.gib(props.total_memory)}"
    local = max(1, int(environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    avail = _mem_available()
    share = f", shared by {local} processes" if local > 1 else ""
    return avail * (1 - mem.HEADROOM) / local, f"no CUDA device; {mem.gib(avail)} of RAM available{share}"


def _mem_available() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def fit_problem(plan: Plan, allow_cpu: bool = False, environ=None) -> str | None:
    """None when this launch fits the machine, else one line naming the estimate and what is available."""
    cfg = plan.config
    need = plan.this_launch.total
    have, what = available_memory(cfg, environ)
    if need > have:
        where = "a CUDA machine" if not cuda_available(cfg) else "devices with more memory"
        ckpt = "" if cfg.train.activation_checkpointing else ", train.activation_checkpointing=true"
        return (f"this run needs about {mem.gib(need)} per device ({plan.this_launch.parts()}; "
                f"{plan.num_parameters / 1e6:,.0f}M parameters) but {what} ({mem.gib(have)} usable). Fix: {where}, "
                f"a sharding strategy over more devices (configs/accelerate/), a smaller train.micro_batch_size{ckpt}; "
                "launch/pretrain.py --dry-run prints the estimate per strategy")
    if not cuda_available(cfg) and plan.train_flops > CPU_MAX_FLOPS and not allow_cpu:
        return (f"this run needs {plan.train_flops:.2g} training FLOPs ({plan.num_parameters / 1e6:,.0f}M parameters, "
                f"{cfg.train.max_steps * plan.tokens_per_step:,} tokens) and {what}: it is meant for GPUs (more than "
                f"{CPU_MAX_FLOPS:.0e} FLOPs is refused on CPU). Fix: run it on a CUDA machine, or pass --allow-cpu "
                "to train on CPU anyway")
    return None


def preflight(config: RunConfig, dry_run: bool = False, allow_cpu: bool = False, environ=None) -> int | None:
    """The start-of-run hook of launch/pretrain.py: prints the plan (rank 0) and returns an exit code
    (0 after --dry-run, 2 with one line on stderr when the run does not fit), or None to go on."""
    import sys

    environ = os.environ if environ is None else environ
    plan = make_plan(config, environ)
    main = environ.get("RANK", "0") in ("0", "")
    if dry_run:
        print(format_plan(plan), flush=True)
        problem = fit_problem(plan, allow_cpu, environ)
        print(f"[mhc-lm]   fit here: {'yes' if problem is None else 'no: ' + problem}", flush=True)
        return 0
    problem = fit_problem(plan, allow_cpu, environ)
    if problem is not None:
        print(f"config error: {problem}", file=sys.stderr, flush=True)
        return 2
    if main:
        print(format_plan(plan), flush=True)
    return None
