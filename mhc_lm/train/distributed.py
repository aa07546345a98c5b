"""Everything the model must not know: the Accelerator (DDP / FSDP / DeepSpeed ZeRO from the
`accelerate launch --config_file` in use), activation checkpointing and torch.compile.

Following torchtitan's `parallelize.py`, these are applied to an already-built model from
outside; `mhc_lm/model/` never imports torch.distributed.
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from mhc_lm.config_utils import ConfigError
from mhc_lm.train.config import RunConfig


def launched_world_size() -> int:
    """World size set by `accelerate launch` / torchrun (1 when run as a plain script)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def using_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin():
    """The FSDP settings of the accelerate config (read from the environment, as Accelerate does),
    with a mixed-precision policy that keeps parameters, gradient reduction and buffers in fp32.

    Accelerate's default under mixed_precision=bf16 is param_dtype = reduce_dtype = bf16: every
    parameter, the mHC coefficients and HC static matrices included, and all n residual streams
    would be bf16 inside forward and gradients summed in bf16, unlike DDP. Here bf16 compute comes
    from autocast alone (which Accelerate still applies to the forward), as under DDP."""
    from accelerate import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    plugin.set_mixed_precision(torch.float32, override=True)  # kept: Accelerate's later call does not override
    return plugin


def accumulation_steps(cfg: RunConfig, world_size: int) -> int:
    """Micro-batches per optimizer step so that micro * world * accumulation == batch_size."""
    per_step = cfg.train.micro_batch_size * world_size
    if cfg.train.batch_size % per_step:
        per_rank = cfg.train.batch_size // world_size if cfg.train.batch_size % world_size == 0 else 0
        fits = [m for m in range(cfg.train.micro_batch_size, 0, -1) if per_rank and per_rank % m == 0]
        hint = f"e.g. train.micro_batch_size={fits[0]}" if fits else f"make train.batch_size a multiple of {per_step}"
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not a multiple of train.micro_batch_size="
            f"{cfg.train.micro_batch_size} x {world_size} processes; {hint}")
    return cfg.train.batch_size // per_step


def build_accelerator(cfg: RunConfig) -> Accelerator:
    """Accelerator for this launch; gloo on CPU (see docs/training.md for the CPU caveats)."""
    cpu = cfg.train.cpu or not torch.cuda.is_available()
    if cpu and cfg.train.mixed_precision == "fp16":  # Accelerate would silently run fp32 and record fp16
        raise ConfigError("train.mixed_precision=fp16 needs CUDA: on CPU Accelerate runs in fp32; use bf16 (CPU "
                          "autocast) or no")
    backend = cfg.train.dist_backend or ("gloo" if cpu else "nccl")
    accum = accumulation_steps(cfg, launched_world_size())
    kwargs = dict(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=accum,
        log_with=list(cfg.logging.trackers) or None,
        project_dir=cfg.run_dir,
    )
    if launched_world_size() > 1 or using_deepspeed():  # a plain single process has no process group
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend=backend, timeout=timedelta(minutes=30))]
    if using_fsdp():
        kwargs["fsdp_plugin"] = fsdp_plugin()
    if cpu and not using_deepspeed():  # accelerate refuses cpu=True together with DeepSpeed
        kwargs["cpu"] = True
    if launched_world_size() == 1 and not using_deepspeed():
        # a second run in the same process (tests, notebooks, the quickstart) may change precision
        AcceleratorState._reset_state()
    accelerator = Accelerator(**kwargs)
    if accelerator.num_processes != launched_world_size():
        raise RuntimeError(f"Accelerate sees {accelerator.num_processes} processes but WORLD_SIZE="
                           f"{launched_world_size()}; on CPU launch with --multi_gpu (see docs/training.md)")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator, cfg)
    return accelerator


def shutdown(accelerator: Accelerator | None = None) -> None:
    """End of a launched process: free the run's objects and destroy the process group while the
    interpreter is still whole. `destroy_process_group` only drops torch's own reference to the
    group: a DDP model (its reducer) or the Accelerator's list of prepared models keeps it alive,
    and a group destroyed in interpreter teardown can take gloo's threads down with it and abort
    the process after the run completed ("terminate called without an active exception", SIGABRT),
    which the launcher reports as a failed run. Callers drop their Trainer first; `accelerator`
    (when given) releases its models, optimizers and dataloaders."""
    if accelerator is not None:
        accelerator.free_memory()
    gc.collect()  # a finished Trainer sits in reference cycles (callbacks, hooks) until collected
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()


def configure_deepspeed(accelerator: Accelerator, cfg: RunConfig) -> None:
    """Fill the "auto" entries that Accelerate cannot infer without a prepared DataLoader."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds.get("optimizer") or ds.get("scheduler"):
        raise ConfigError("the DeepSpeed JSON must not define optimizer/scheduler: the trainer owns them "
                         "(AdamW without decay on mixing/norm/bias parameters, warmup + cosine/WSD)")
    ds["train_micro_batch_size_per_gpu"] = cfg.train.micro_batch_size
    ds["train_batch_size"] = cfg.train.batch_size
    ds["gradient_accumulation_steps"] = accelerator.gradient_accumulation_steps
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.train.grad_clip
    ds.setdefault("zero_allow_untested_optimizer", True)


def apply_activation_checkpointing(model) -> None:
    """Recompute every decoder layer in backward (HF GradientCheckpointingLayer, non-reentrant)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def apply_compile(model) -> None:
    """torch.compile each decoder layer in place (state-dict names unchanged, as torchtitan does)."""
    for layer in model.model.layers:
        layer.compile()
