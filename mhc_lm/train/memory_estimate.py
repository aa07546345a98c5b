"""Memory per device of a training run, before anything is allocated: weights, gradients, optimizer
states and activations, for one distribution strategy.

Activations (bytes kept for backward per token) come from counting the tensors the model saves,
tensor by tensor, as `benchmarks/memory.py` measures them (method 1: saved tensors, deduplicated by
storage); `tests/train/test_memory_estimate.py` checks the formulas against that measurement. Per
decoder layer, with C = hidden_size, F = intermediate_size, h = heads, d_kv = KV heads x head_dim,
n = streams, s = 2 bytes under bf16/fp16 autocast (4 without):

    standard   fp32: 32 C + 16 F + 8 d_kv + 4 h + 8      autocast: 30 C + 8 F + 4 d_kv + 4 h + 8
               (RMSNorm in/out and normalised copy, q, attention out, o_proj in; k, v; logsumexp;
               gate, up, silu, product; the two norms' rstd)
    grid       standard - C (one fp32 C per 4-layer module less)
    hc/mhc     standard + 2 sub-layers x the mixing below (the stream is fp32 in every precision):
      none       hc:  4 n C + s C + 4 (3 n^2 + 7 n)        (stream, f, norm / tanh of the dynamic part)
                 mhc: 4 n C + s C + 4 (3 K + 3 n + n^2 + 1), K = 2 n + n^2 (projection, gates, Sinkhorn)
      sublayer   4 n C + s C + 4 (n^2 + n)                 (stream, f, H_res, H_post)
      block      s C + 4 (n^2 + n), plus 4 n C once per L_r layers
    checkpointed layers (train.activation_checkpointing): the layer input (4 C, hc/mhc 4 n C) per
    layer, plus one layer's activations alive while it is recomputed
    LM head    8 V + 16 C per token (fp32 logits kept for the loss and their gradient in backward)

Weights, gradients and AdamW states per parameter (P parameters, N processes):

    single / DDP       4 + 4 (+ 4: DDP's gradient buckets) + 8 bytes
    FSDP full shard    (4 + 4 + 8) / N
    DeepSpeed ZeRO-k   bf16/fp16: 2-byte weights and gradients plus 4 + 8 fp32 master + Adam (12),
                       fp32: 4 + 4 + 8; stage 1 shards the optimizer states, 2 also the gradients,
                       3 also the weights, over N

This is an estimate of the steady state (no allocator fragmentation, no communication buffers
beyond DDP's buckets, no CUDA context): the fit check leaves HEADROOM of the device free. The
activation formulas are those of the reference (unfused) path with mhc's Sinkhorn map; the other
H_res maps and the fused CUDA kernels keep other intermediates of the coefficients (O(n^2) floats
per token, small next to the stream's 4 n C bytes; not measured here), and on the CPU mHC's numba
mix-in (`model.cpu_kernels`, mixing_recompute none) keeps 4 (2K + n - n^2) bytes per token and
sub-layer less (144 at n = 4): the estimate is then that much high.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

GiB = 2**30
HEADROOM = 0.10
"""Fraction of a device the fit check keeps free (CUDA context, fragmentation, temporaries)."""


@dataclass
class Strategy:
    """How a launch distributes the model: name (as the configs/accelerate file), kind, processes."""

    name: str
    kind: str  # "single" | "ddp" | "fsdp" | "zero1" | "zero2" | "zero3"
    world_size: int = 1
    cpu: bool = False


@dataclass
class Estimate:
    strategy: Strategy
    weights: float
    grads: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations

    def line(self) -> str:
        s = self.strategy
        unit = ("CPU process" if s.world_size == 1 else "CPU processes") if s.cpu else \
            ("device" if s.world_size == 1 else "devices")
        return f"{s.name} ({s.kind}, {s.world_size} {unit}): {gib(self.total)} per device = {self.parts()}"

    def parts(self) -> str:
        return (f"weights {gib(self.weights)} + grads {gib(self.grads)} + optimizer {gib(self.optimizer)} + "
                f"activations {gib(self.activations)}")


def gib(x: float) -> str:
    """Bytes as MiB below 1 GiB, else GiB."""
    if x < GiB:
        return f"{x / 2**20:.1f} MiB"
    return f"{x / GiB:.2f} GiB" if x < 10 * GiB else f"{x / GiB:.1f} GiB"


def _kv_dim(c) -> int:
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    return c.num_key_value_heads * head_dim


def standard_layer_bytes(c, autocast: bool) -> float:
    """Saved bytes per token of one standard (pre-norm) decoder layer."""
    C, F, h, kv = c.hidden_size, c.intermediate_size, c.num_attention_heads, _kv_dim(c)
    if autocast:
        return 30 * C + 8 * F + 4 * kv + 4 * h + 8
    return 32 * C + 16 * F + 8 * kv + 4 * h + 8


def mixing_sublayer_bytes(c, autocast: bool, recompute: str | None = None) -> float:
    """Saved bytes per token of one hc/mhc connection around a sub-layer (0 for standard/grid); for
    block recompute the stream stored once per block is left out (see layer_bytes)."""
    mode, n, C = c.residual_mode, c.n_streams, c.hidden_size
    if mode not in ("hc", "mhc"):
        return 0.0
    s = 2 if autocast else 4
    recompute = recompute or c.mixing_recompute
    if recompute == "block":
        return s * C + 4 * (n * n + n)
    if recompute == "sublayer":
        return 4 * n * C + s * C + 4 * (n * n + n)
    if mode == "hc":
        return 4 * n * C + s * C + 4 * (3 * n * n + 7 * n)
    K = 2 * n + n * n
    return 4 * n * C + s * C + 4 * (3 * K + 3 * n + n * n + 1)


def layer_bytes(c, autocast: bool) -> float:
    """Saved bytes per token per decoder layer, as benchmarks/memory.py reports it (KiB x 1024)."""
    out = standard_layer_bytes(c, autocast)
    if c.residual_mode == "grid":
        return out - c.hidden_size
    out += 2 * mixing_sublayer_bytes(c, autocast)
    if c.residual_mode in ("hc", "mhc") and c.mixing_recompute == "block":
        out += 4 * c.n_streams * c.hidden_size / c.resolved_recompute_layers
    return out


def activation_bytes(c, tokens: int, autocast: bool, checkpointing: bool) -> float:
    """Activations of one forward of `tokens` tokens (one micro-batch on one device)."""
    per_layer = layer_bytes(c, autocast)
    if checkpointing:
        streams = c.n_streams if c.residual_mode in ("hc", "mhc") else 1
        body = c.num_hidden_layers * 4 * streams * c.hidden_size + per_layer
    else:
        body = c.num_hidden_layers * per_layer
    return tokens * (body + 8 * c.vocab_size + 16 * c.hidden_size)


def estimate(strategy: Strategy, num_parameters: int, c, tokens: int, precision: str,
             checkpointing: bool) -> Estimate:
    """Bytes per device of a run of `num_parameters` with model config `c`, `tokens` per micro-batch."""
    P, N = float(num_parameters), max(1, strategy.world_size)
    autocast = precision in ("bf16", "fp16")
    kind = strategy.kind
    if kind.startswith("zero"):
        stage = int(kind[-1])
        w, g, o = (2.0, 2.0, 12.0) if autocast else (4.0, 4.0, 8.0)
        weights = P * w / (N if stage >= 3 else 1)
        grads = P * g / (N if stage >= 2 else 1)
        optimizer = P * o / N
    elif kind == "fsdp":
        weights, grads, optimizer = 4 * P / N, 4 * P / N, 8 * P / N
    else:
        weights, grads, optimizer = 4 * P, (8 if kind == "ddp" else 4) * P, 8 * P
    return Estimate(strategy, weights, grads, optimizer, activation_bytes(c, tokens, autocast, checkpointing))


def strategy_from_accelerate_yaml(path: Path, repo_root: Path) -> Strategy:
    """The Strategy an Accelerate config file launches."""
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    world = int(cfg.get("num_processes") or 1)  # Accelerate's num_processes is the total over all machines
    dist = str(cfg.get("distributed_type") or "NO").upper()
    cpu = bool(cfg.get("use_cpu")) or Path(path).stem.startswith("cpu")
    if dist == "DEEPSPEED":
        ds = cfg.get("deepspeed_config") or {}
        stage = ds.get("zero_stage")
        if stage is None and ds.get("deepspeed_config_file"):
            ds_file = Path(ds["deepspeed_config_file"])
            ds_file = ds_file if ds_file.is_absolute() else repo_root / ds_file
            if ds_file.is_file():
                stage = json.loads(ds_file.read_text()).get("zero_optimization", {}).get("stage")
        kind = f"zero{int(stage or 0)}" if stage else "ddp"
    elif dist == "FSDP":
        sharding = str((cfg.get("fsdp_config") or {}).get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
        kind = "fsdp" if sharding in ("FULL_SHARD", "1") else "ddp"
    else:
        kind = "ddp" if world > 1 else "single"
    return Strategy(Path(path).stem, kind, world, cpu)


def strategy_from_env(environ, cpu: bool) -> Strategy:
    """The Strategy of the current process (set by `accelerate launch` / torchrun environment variables)."""
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if str(environ.get("ACCELERATE_USE_DEEPSPEED", "")).lower() == "true":
        stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        ds_file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if ds_file and Path(ds_file).is_file():
            try:
                stage = json.loads(Path(ds_file).read_text()).get("zero_optimization", {}).get("stage", stage)
            except (ValueError, OSError):
                pass
        kind = f"zero{int(stage)}" if stage not in (None, "", 0, "0") else "ddp"
    elif str(environ.get("ACCELERATE_USE_FSDP", "")).lower() == "true":
        kind = "fsdp"
    else:
        kind = "ddp" if world > 1 else "single"
    return Strategy("this launch", kind, world, cpu)
