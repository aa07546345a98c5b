"""AdamW with decay-free groups, and the learning-rate schedules (warmup + cosine, WSD).

No weight decay on norms, biases, gates and every residual-mixing parameter (names containing
`mixing.`, which holds HC's static connections and mHC's phi/alpha/bias): the HC authors
(Zhu et al., arXiv 2409.19606) advise against decaying the static connections, and decaying
mHC's biases would pull H_res towards the uniform matrix. Embeddings are decayed (as in Llama).

WSD (warmup-stable-decay) follows MiniCPM (Hu et al., arXiv 2404.06395): linear warmup, a long
constant phase, then a linear decay over the last `decay_fraction` of the steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mhc_lm.train.config import OptimConfig

# gates (mHC alpha, HC scales) all live under `mixing.`; "gate" alone would also hit mlp.gate_proj
NO_DECAY_MARKERS = ("mixing.", "norm")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for biases, 0/1-d tensors (norm weights, gates, scales) and mixing or norm parameters."""
    lowered = name.lower()
    return param.ndim < 2 or name.endswith(".bias") or any(m in lowered for m in NO_DECAY_MARKERS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, and everything `no_weight_decay` selects (named, for tests)."""
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():  # tied weights appear once
        if not p.requires_grad:
            continue
        if no_weight_decay(name, p):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW over `param_groups`; fused kernel on CUDA unless `cfg.fused` says otherwise."""
    fused = cfg.fused if cfg.fused is not None else device_type == "cuda"
    groups = param_groups(model, cfg.weight_decay)
    for g in groups:
        g.pop("names")
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak lr before optimizer step `step` (0-based)."""
    warmup = min(cfg.warmup_steps, max_steps)
    if warmup and step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max(1, max_steps - 1 - warmup)  # the last step (max_steps - 1) trains at the floor
        progress = min(1.0, (step - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: stable until the decay phase, then linear to the floor at the last step
    decay_steps = max(1, int(round(cfg.decay_fraction * max_steps)))
    decay_start = max(warmup, max_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, max_steps - decay_start))
    return 1.0 - (1 - floor) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    """LambdaLR over `lr_factor`; stepped once per optimizer step by the trainer (not by Accelerate,
    which would step it once per process)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, max_steps))


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """`param_groups` as an optimizer takes them (no names, no empty group): the decay rule for any
    other AdamW over an mhc-lm model, e.g. GLUE fine-tuning (evals/glue/finetune.py)."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, weight_decay)]
    return [g for g in groups if g["params"]]
