"""Typed config of the GLUE harness, loaded from `configs/eval/glue.yaml` with dotted overrides.

    cfg = load_glue_config("configs/eval/glue.yaml", ["finetune.learning_rate=1e-4", "tasks.rte.num_epochs=20"])
    hp = cfg.finetune_for("rte")   # defaults of `finetune` with the `tasks.rte` overrides applied
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from mhc_lm.config_utils import ConfigError, from_dict, load_config, to_dict

from .tasks import ALL_TASKS

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval" / "glue.yaml"


@dataclass
class FinetuneConfig:
    """Fine-tuning hyperparameters of one task (classification head on the last token)."""

    learning_rate: float = 2.0e-5
    """Peak AdamW learning rate (linear warmup, then linear decay to 0)."""
    batch_size: int = 32
    """Training examples per optimizer step, over all processes."""
    eval_batch_size: int = 64
    """Dev examples per forward pass, per process."""
    num_epochs: float = 3.0
    """Passes over the training set (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps; overrides num_epochs."""
    warmup_ratio: float = 0.06
    """Fraction of the steps spent warming up the learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (not on norms, biases, embeddings, mixing parameters)."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 disables)."""
    max_seq_len: int = 256
    """Tokens per example after truncation (longest text of a pair truncated first)."""
    eval_every: int | None = None
    """Optimizer steps between dev evaluations; null: once per epoch."""
    patience: int = 3
    """Dev evaluations without improvement before stopping early (0: never stop early)."""
    max_train_samples: int | None = None
    """Use only this many (shuffled) training examples; null: all."""
    max_eval_samples: int | None = None
    """Evaluate on the first this many dev examples; null: all."""

    def __post_init__(self):
        if self.learning_rate <= 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("finetune: learning_rate, batch_size and eval_batch_size must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"finetune.warmup_ratio: {self.warmup_ratio} must be in [0, 1)")
        if self.max_seq_len < 4:
            raise ConfigError(f"finetune.max_seq_len: {self.max_seq_len} is too short (>= 4)")
        if self.max_steps is None and self.num_epochs <= 0:
            raise ConfigError("finetune: num_epochs must be positive when max_steps is null")


@dataclass
class ZeroShotConfig:
    """Zero-shot log-likelihood scoring (lm-evaluation-harness `multiple_choice`)."""

    batch_size: int = 32
    """Scored (context, choice) sequences per forward pass."""
    max_length: int | None = None
    """Left-truncate context+choice to this many tokens; null: the model's max_position_embeddings."""
    max_eval_samples: int | None = None
    """Score only the first this many dev examples; null: all."""


@dataclass
class GlueEvalConfig:
    seeds: list[int] = field(default_factory=lambda: [0])
    """Fine-tuning seeds; metrics are reported per seed and as their mean."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Defaults of every task."""
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Accelerate mixed precision of both protocols (bf16 on recent GPUs)."""
    tasks: dict = field(default_factory=dict)
    """Per-task overrides of `finetune`, e.g. {rte: {num_epochs: 10}}."""

    def __post_init__(self):
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        for name, overrides in self.tasks.items():
            if name not in ALL_TASKS:
                raise ConfigError(f"tasks.{name}: unknown GLUE task; valid: {list(ALL_TASKS)}")
            if not isinstance(overrides, dict):
                raise ConfigError(f"tasks.{name}: expected a mapping of finetune fields")
            self.finetune_for(name)  # validates the keys now, not mid-run

    def finetune_for(self, task: str) -> FinetuneConfig:
        merged = {**to_dict(self.finetune), **(self.tasks.get(task) or {})}
        return from_dict(FinetuneConfig, merged, prefix=f"tasks.{task}.")


def load_glue_config(path: str | Path | None = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> GlueEvalConfig:
    return load_config(GlueEvalConfig, path, overrides)


def config_dict(cfg) -> dict:
    return to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
