"""The run config: one typed tree (`model`, `data`, `train`, `optim`, `checkpoint`, `logging`,
`metrics`, `run_dir`) loaded from YAML with dotted command-line overrides.

    cfg = load_run_config("configs/tiny_cpu.yaml", ["train.max_steps=200", "model.residual_mode=hc"])

The `model` section is either inline MhcLmConfig keyword arguments, or a `preset:` path to a
`configs/model/*.yaml` file whose values the inline fields override (unset fields are None and
fall back to the preset, then to MhcLmConfig's own defaults). Unknown keys and wrong types are
rejected by `mhc_lm.config_utils` with the dotted key and the valid choices named.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from mhc_lm.config_utils import ConfigError, from_dict, load_config, save_config, to_dict
from mhc_lm.train import quiet  # noqa: F401  (filters DeepSpeed's CPU "unable to detect" warning at its source)
from mhc_lm.data.config import DataConfig
from mhc_lm.metrics.config import MetricsConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: a larger lr is inf in the optimizer


@dataclass
class ModelSection:
    """MhcLmConfig keyword arguments; None = take the preset's value (or MhcLmConfig's default).

    The fields are MhcLmConfig's parameters, name for name (tests/model/test_model_section.py checks
    both ways); their values are checked by MhcLmConfig itself, except the registry names
    (residual_mode, h_res_map), checked here so the error names the dotted key."""

    preset: str | None = None
    """Path to a model preset YAML (e.g. configs/model/tiny.yaml), relative to the cwd or the repo root."""
    vocab_size: int | None = None
    """Embedding rows; must be >= the tokenizer's vocabulary (checked at start)."""
    hidden_size: int | None = None
    """Width C of the residual stream."""
    intermediate_size: int | None = None
    """SwiGLU hidden width."""
    num_hidden_layers: int | None = None
    """Decoder layers (grid: K * grid_size**2)."""
    num_attention_heads: int | None = None
    """Query heads."""
    num_key_value_heads: int | None = None
    """Key/value heads (GQA)."""
    head_dim: int | None = None
    """Per-head width; None = hidden_size / num_attention_heads."""
    max_position_embeddings: int | None = None
    """Longest sequence; must be >= data.seq_len."""
    rope_theta: float | None = None
    """RoPE base."""
    rms_norm_eps: float | None = None
    """RMSNorm epsilon."""
    initializer_range: float | None = None
    """Std of the normal init of linear and embedding weights."""
    tie_word_embeddings: bool | None = None
    """Share the input embedding with the LM head."""
    residual_mode: str | None = None
    """Residual topology, a name of mhc_lm.model.RESIDUAL_MODES: standard | hc | mhc | grid."""
    n_streams: int | None = None
    """Residual streams n of hc/mhc."""
    sinkhorn_iters: int | None = None
    """Sinkhorn-Knopp iterations of mhc's H_res."""
    grid_size: int | None = None
    """R of the R x R grid."""
    mhc_init: Literal["uniform", "identity"] | None = None
    """mhc bias init: uniform (H_res ~ 1/n) or identity-biased."""
    mhc_gate_init: float | None = None
    """Initial value of mhc's gates a_*."""
    hc_dynamic: bool | None = None
    """HC: add the dynamic (tanh) part of the connections."""
    stream_collapse: str | None = None
    """Retired (the streams' mean was the only choice): accepted as null or "mean" so run configs written
    before its removal still load, and ignored."""
    fused_kernels: bool | None = None
    """Use the Triton kernels on CUDA when installed."""
    cpu_kernels: bool | None = None
    """Use the numba kernels on CPU when installed (the default); false runs the torch references."""
    mixing_recompute: Literal["none", "sublayer", "block"] | None = None
    """hc/mhc: recompute the stream mixing in backward: none | sublayer | block."""
    mixing_recompute_layers: int | None = None
    """L_r of mixing_recompute=block; None = the mHC paper's sqrt(n L / (n + 2))."""
    h_res_map: str | None = None
    """mhc: the map from the projection to H_res, a name of mhc_lm.model.H_RES_MAPS."""
    block_norm: Literal["pre", "post"] | None = None
    """standard/grid: pre-norm x + F(norm x) or post-norm norm(x + F(x))."""
    attention_dropout: float | None = None
    """Attention dropout probability."""
    qk_norm: bool | None = None
    """RMSNorm on each head's queries and keys before RoPE (every residual mode)."""
    pad_token_id: int | None = None
    """Padding id (the exported config takes the tokenizer's ids when they exist)."""
    bos_token_id: int | None = None
    """Beginning-of-sequence id."""
    eos_token_id: int | None = None
    """End-of-sequence id."""

    def __post_init__(self) -> None:
        from mhc_lm.model import H_RES_MAPS, RESIDUAL_MODES

        for key, value, names in (("residual_mode", self.residual_mode, RESIDUAL_MODES),
                                  ("h_res_map", self.h_res_map, H_RES_MAPS)):
            if value is not None and value not in names:
                raise ConfigError(f"model.{key}: {value!r} is not one of {list(names)}")
        if self.stream_collapse not in (None, "mean"):
            raise ConfigError(f"model.stream_collapse: retired, only 'mean' (the streams' mean) was ever defined; "
                              f"got {self.stream_collapse!r}")


RETIRED_MODEL_FIELDS = ("stream_collapse",)
"""ModelSection fields kept only so old run configs load; never passed to MhcLmConfig."""


@dataclass
class TrainConfig:
    seed: int = 0
    """Replicate seed: the model init, the python/numpy/torch RNGs (dropout) and, unless data.order_seed is
    set, the training data order. Not the validation set or the tokenizer (data.seed)."""
    max_steps: int = 1000
    """Optimizer steps of the run."""
    batch_size: int = 32
    """Global batch in sequences per optimizer step (= micro_batch_size * world size * accumulation)."""
    micro_batch_size: int = 8
    """Sequences per forward pass per process."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast dtype (parameters and optimizer states stay fp32)."""
    grad_clip: float = 1.0
    """Clip the global grad norm to this value; 0 disables clipping (the norm is still logged)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer in backward (applied from outside the model)."""
    compile: bool = False
    """torch.compile each decoder layer (applied from outside the model)."""
    eval_every: int = 100
    """Steps between validation losses (0 = only at the end)."""
    eval_batches: int = 2
    """Validation loss over eval_batches x batch_size sequences (global batches, split over processes and
    micro-batches): the same windows, so the same val_loss, for any micro_batch_size and world size."""
    export_hf: bool = True
    """Write run_dir/hf (save_pretrained + tokenizer) at the end of the run."""
    cpu: bool = False
    """Force CPU even when CUDA is available (CPU is used anyway without CUDA)."""
    keep_host_memory: bool = True
    """CPU runs: glibc keeps freed memory for the next step instead of returning it and page-faulting
    it back (mhc_lm/train/host_memory.py; resident memory stays at its peak). No effect without glibc."""
    dist_backend: str | None = None
    """torch.distributed backend override; None = nccl on CUDA, gloo on CPU."""
    on_spike: Literal["none", "skip", "rewind"] = "none"
    """What a loss / grad-norm spike (metrics.spike_window / spike_sigma rule) does: none (log it only), skip
    (drop that optimizer update, decided on device) or rewind (restore the last checkpoint, skip batches).
    docs/training.md, "Spike policy"."""
    rewind_skip_batches: int = 1
    """rewind: the data goes on this many global batches after the spiking step's batch (1 = drop that batch)."""
    max_rewinds: int = 3
    """rewind: rewinds allowed in the run; the next spike after them stops it as diverged (exit 3)."""
    init_from: str | None = None
    """Model folder (mhc-lm or Llama) or Hub name whose weights start the run (fresh optimizer); its tokenizer
    becomes data.tokenizer and unset model fields come from it (mhc_lm/train/init_from.py)."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine floor / WSD decay target)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (never applied to norms, biases, gates or `mixing.` parameters)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    fused: bool | None = None
    """Fused AdamW kernel; None = on CUDA only."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """warmup + cosine, warmup-stable-decay (WSD), or warmup + constant."""
    warmup_steps: int = 100
    """Linear warmup steps from 0 to the peak."""
    decay_fraction: float = 0.2
    """WSD: fraction of max_steps spent in the final (linear) decay."""
    z_loss: float = 0.0
    """PaLM's auxiliary z-loss coefficient: adds z_loss * mean(log^2 Z) to the training loss (0 = off; PaLM 1e-4)."""


@dataclass
class CheckpointConfig:
    every: int = 500
    """Steps between checkpoints (0 = only on signals and at the end)."""
    keep_last: int = 3
    """Complete checkpoints kept (older ones are deleted)."""
    resume: str = "auto"
    """auto (latest complete checkpoint of run_dir, if any) | none | path to a checkpoint directory."""
    save_at_end: bool = True
    """Write a checkpoint after the last step."""
    resume_with: list[str] = field(default_factory=list)
    """Dotted settings allowed to differ from the checkpointed run on resume (sanctioned changes, e.g.
    [optim.lr]; launch/pretrain.py --resume-with KEY=VALUE sets both). Choices: mhc_lm/train/resume_with.py."""


@dataclass
class LoggingConfig:
    log_every: int = 1
    """Steps between metrics.jsonl training lines."""
    trackers: list[str] = field(default_factory=list)
    """Accelerate trackers to also log to: tensorboard, wandb, ..."""
    project: str = "mhc-lm"
    """Tracker project name."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device for MFU; None = a known GPU's bf16 peak, else no MFU."""
    progress_bar: bool = True
    """tqdm bar on the main process when stderr is a terminal (none in a log file: metrics.jsonl has every step)."""
    progress_every_s: float = 10.0
    """stdout not a terminal: a plain progress line every log_every steps, at most one per this many seconds
    (plus the first and last step; 0 = every log_every steps; mhc_lm/train/progress.py)."""


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    """The model (MhcLmConfig kwargs or preset + overrides)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus, tokenizer and window length (mhc_lm.data)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Steps, batch, precision, distribution-independent training knobs."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW and the learning-rate schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence, retention, resume."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """metrics.jsonl, trackers, MFU."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Stability callbacks (mhc_lm.metrics)."""
    run_dir: str = "runs/default"
    """Output directory: config.yaml, meta.json, metrics.jsonl, checkpoints/, hf/, tokenizer/."""

    def __post_init__(self) -> None:
        t = self.train
        for name in ("max_steps", "batch_size", "micro_batch_size"):
            if getattr(t, name) <= 0:
                raise ConfigError(f"train.{name}: must be > 0, got {getattr(t, name)}")
        if t.batch_size % t.micro_batch_size:
            raise ConfigError(f"train.batch_size ({t.batch_size}) must be a multiple of "
                              f"train.micro_batch_size ({t.micro_batch_size})")
        if self.checkpoint.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last: must be >= 1, got {self.checkpoint.keep_last}")
        if self.optim.warmup_steps < 0 or not 0 <= self.optim.min_lr_ratio <= 1:
            raise ConfigError("optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1]")
        if not 0 < self.optim.decay_fraction <= 1:
            raise ConfigError(f"optim.decay_fraction: must be in (0, 1], got {self.optim.decay_fraction}")
        o = self.optim
        checks = [
            ("optim.lr", o.lr, math.isfinite(o.lr) and 0 < o.lr <= FLOAT32_MAX,
             f"a finite number > 0 and <= {FLOAT32_MAX:.4g} (the float32 maximum)"),
            ("optim.weight_decay", o.weight_decay, math.isfinite(o.weight_decay) and o.weight_decay >= 0, ">= 0"),
            ("optim.beta1", o.beta1, 0 <= o.beta1 < 1, "in [0, 1)"),
            ("optim.beta2", o.beta2, 0 <= o.beta2 < 1, "in [0, 1)"),
            ("optim.eps", o.eps, math.isfinite(o.eps) and o.eps > 0, "> 0"),
            ("train.grad_clip", t.grad_clip, math.isfinite(t.grad_clip) and t.grad_clip >= 0, ">= 0 (0 = no clipping)"),
            ("train.eval_every", t.eval_every, t.eval_every >= 0, ">= 0 (0 = only at the end)"),
            ("train.eval_batches", t.eval_batches, t.eval_batches >= 1, ">= 1"),
            ("checkpoint.every", self.checkpoint.every, self.checkpoint.every >= 0, ">= 0 (0 = on signals and at the end)"),
            ("logging.log_every", self.logging.log_every, self.logging.log_every >= 1, ">= 1"),
            ("train.rewind_skip_batches", t.rewind_skip_batches, t.rewind_skip_batches >= 0, ">= 0"),
            ("train.max_rewinds", t.max_rewinds, t.max_rewinds >= 0, ">= 0"),
            ("optim.z_loss", o.z_loss, math.isfinite(o.z_loss) and o.z_loss >= 0, ">= 0 (0 = off)"),
            ("logging.progress_every_s", self.logging.progress_every_s,
             math.isfinite(self.logging.progress_every_s) and self.logging.progress_every_s >= 0, ">= 0"),
        ]
        for name, value, ok, want in checks:
            if not ok:
                raise ConfigError(f"{name}: must be {want}, got {value!r}")
        if t.on_spike == "rewind" and self.checkpoint.every == 0:
            raise ConfigError("train.on_spike=rewind restores the last checkpoint before a spike, and checkpoint.every=0 "
                              "writes none during the run: set checkpoint.every (e.g. 25), or use on_spike=skip")
        from mhc_lm.train.resume_with import check_keys

        check_keys(self.checkpoint.resume_with)
        unknown = sorted(set(self.logging.trackers) - known_trackers())
        if unknown:
            raise ConfigError(f"logging.trackers: unknown {unknown}; known: {sorted(known_trackers())}")
        if not self.run_dir.strip():
            raise ConfigError("run_dir: must not be empty")
        if t.init_from:  # tokenizer from there, and an architecture mismatch named before anything runs
            from mhc_lm.train.init_from_check import check_run_config

            check_run_config(self, model_kwargs(self.model),
                             lambda run_dir: build_model_config(load_run_config(run_dir / "config.yaml").model))


def known_trackers() -> set[str]:
    """Tracker names Accelerate's `log_with` accepts."""
    try:
        from accelerate.utils import LoggerType

        return {t.value for t in LoggerType} | {"all"}
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return {"all", "tensorboard", "wandb"}


def resolve_preset_path(preset: str) -> Path:
    """A preset path as given (cwd-relative or absolute), else relative to the repo root."""
    path = Path(preset)
    if path.is_file():
        return path
    if not path.is_absolute() and (REPO_ROOT / path).is_file():
        return REPO_ROOT / path
    raise ConfigError(f"model.preset: file not found: {preset} (looked in the cwd and {REPO_ROOT})")


def model_kwargs(section: ModelSection) -> dict[str, Any]:
    """MhcLmConfig kwargs: preset YAML values overridden by the section's non-None fields."""
    kwargs: dict[str, Any] = {}
    if section.preset:
        path = resolve_preset_path(section.preset)
        data = yaml.safe_load(path.read_text()) or {}
        # validates keys and types of the preset against the typed section (names the bad key)
        from_dict(ModelSection, data, prefix=f"{path}: model.")
        kwargs.update(data)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name != "preset" and value is not None:
            kwargs[f.name] = value
    for name in RETIRED_MODEL_FIELDS:
        kwargs.pop(name, None)
    return kwargs


def build_model_config(section: ModelSection):
    """The MhcLmConfig described by the model section."""
    from mhc_lm.model import MhcLmConfig

    return MhcLmConfig(**model_kwargs(section))


def resolved(cfg: RunConfig, model_config=None) -> RunConfig:
    """A self-contained copy: every model field written inline (from `model_config` when given,
    e.g. after the tokenizer's special ids were applied, else from preset + overrides)."""
    kwargs = model_config.to_dict() if model_config is not None else model_kwargs(cfg.model)
    known = {f.name for f in dataclasses.fields(ModelSection)} - {"preset", *RETIRED_MODEL_FIELDS}
    section = ModelSection(preset=cfg.model.preset, **{k: kwargs[k] for k in known if k in kwargs})
    return dataclasses.replace(cfg, model=section)


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults < YAML file < dotted overrides; the preset (if any) is checked too."""
    cfg = load_config(RunConfig, path, overrides)
    try:  # fail early on a missing or bad preset and on inconsistent model settings
        model = build_model_config(cfg.model)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from err
    if cfg.data.seq_len > model.max_position_embeddings:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_position_embeddings="
                          f"{model.max_position_embeddings}: raise model.max_position_embeddings or lower data.seq_len")
    return cfg


__all__ = [
    "RunConfig", "ModelSection", "TrainConfig", "OptimConfig", "CheckpointConfig", "LoggingConfig",
    "DataConfig", "MetricsConfig", "load_run_config", "build_model_config", "model_kwargs", "resolved",
    "save_config", "to_dict", "ConfigError",
]
