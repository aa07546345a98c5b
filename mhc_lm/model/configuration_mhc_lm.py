"""Configuration of the mhc-lm decoder: Llama-style block F plus a swappable residual mode."""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

from .h_res_maps import H_RES_MAPS
from .residual_modes import RESIDUAL_MODES, get_residual_mode, write_plugin_modes
from .residual_plugins import PLUGIN_MODES  # noqa: F401  (modes registered from outside, written in by an export)

MHC_INITS = ("uniform", "identity")
MIXING_RECOMPUTES = ("none", "sublayer", "block")
PERMUTATION_MAX_STREAMS = H_RES_MAPS["permutation"].max_streams  # the map's own limit, under its old name
BLOCK_NORMS = ("pre", "post")
MAX_STREAMS = 64
"""Largest n_streams: the mixing costs n^2 per token and the stream n times the memory of one;
64 is far past the published 2 to 8 and keeps a typo (100000) from allocating petabytes."""
AUTO_MAP = {
    "AutoConfig": "configuration_mhc_lm.MhcLmConfig",
    "AutoModel": "modeling_mhc_lm.MhcLmModel",
    "AutoModelForCausalLM": "modeling_mhc_lm.MhcLmForCausalLM",
    "AutoModelForSequenceClassification": "modeling_mhc_lm.MhcLmForSequenceClassification",
}

DEFAULT_H_RES_MAP = "sinkhorn"


def modes_with(flag: str) -> list[str]:
    """Names of the registered residual modes whose capability `flag` is set."""
    return [name for name, mode in RESIDUAL_MODES.items() if getattr(mode, flag)]


class MhcLmConfig(PreTrainedConfig):
    """Hugging Face config of an mhc-lm model.

    Block hyperparameters use the Llama names. The residual topology is chosen by
    `residual_mode`, a name of the `residual_modes.RESIDUAL_MODES` registry:
      - "standard": pre-norm residual x + F(x);
      - "hc": Hyper-Connections (Zhu et al., arXiv 2409.19606) with `n_streams` streams;
      - "mhc": Manifold-Constrained HC (DeepSeek-AI, arXiv 2512.24880) with `n_streams`
        streams, H_res projected by `sinkhorn_iters` Sinkhorn-Knopp iterations;
      - "grid": blocks on a `grid_size` x `grid_size` bifurcation-merge grid (Park & Han),
        repeated num_hidden_layers / grid_size**2 times.
    `n_streams` only matters for hc/mhc; `grid_size` only for grid.
    `mhc_init`: "uniform" (b = 0, H_res ~ 1/n, the Megatron/DeepSeek-V4 default) or
    "identity" (b_res = 6I - 3, b_pre = +3 on the layer's home stream, -3 elsewhere).
    `fused_kernels`: use the Triton kernels of `mhc_lm.kernels` on CUDA when importable.
    `cpu_kernels`: use the numba kernels of `mhc_lm.cpu_kernels` on the CPU when importable (same
    maths as the torch references, to float rounding; False runs the references).
    `mixing_recompute` (hc/mhc): "none", "sublayer" (recompute each sub-layer's mixing in
    backward from its stored stream input) or "block" (keep only the stream entering every
    `mixing_recompute_layers`-th layer; None = the mHC paper's sqrt(n L / (n + 2))).
    `h_res_map` (mhc): how the projection becomes H_res: "sinkhorn" (default), "permutation"
    (mHC-lite), "kronecker" (KromHC), "orthostochastic" (go-mHC), "orthogonal" (JPmHC-like).
    `block_norm` (standard/grid): "pre" (x + F(norm x)) or "post" (norm(x + F(x)), original
    Transformer).
    `qk_norm`: RMSNorm on each head's queries and keys before RoPE (every mode).
    """

    model_type = "mhc_lm"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 512,
        intermediate_size: int = 1376,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        residual_mode: str = "standard",
        n_streams: int = 4,
        sinkhorn_iters: int = 20,
        grid_size: int = 2,
        mhc_init: str = "uniform",
        mhc_gate_init: float = 0.01,
        hc_dynamic: bool = True,
        fused_kernels: bool = False,
        cpu_kernels: bool = True,
        mixing_recompute: str = "none",
        mixing_recompute_layers: int | None = None,
        h_res_map: str = "sinkhorn",
        block_norm: str = "pre",
        attention_dropout: float = 0.0,
        qk_norm: bool = False,
        use_cache: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self.residual_mode = residual_mode
        self.n_streams = n_streams
        self.sinkhorn_iters = sinkhorn_iters
        self.grid_size = grid_size
        self.mhc_init = mhc_init
        self.mhc_gate_init = mhc_gate_init
        self.hc_dynamic = hc_dynamic
        self.fused_kernels = fused_kernels
        self.cpu_kernels = cpu_kernels
        self.mixing_recompute = mixing_recompute
        self.mixing_recompute_layers = mixing_recompute_layers
        self.h_res_map = h_res_map
        self.block_norm = block_norm
        self.attention_dropout = attention_dropout
        self.qk_norm = qk_norm
        self.use_cache = use_cache
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self._validate_mhc_lm()
        # save_pretrained only records the class being saved; map every Auto class so an
        # exported folder loads with any of them (remote code, trust_remote_code=True).
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)

    def _validate_mhc_lm(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        def positive_number(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            positive(name)
        if self.head_dim is not None:
            positive("head_dim")
        for name in ("rms_norm_eps", "rope_theta"):
            positive_number(name)
        p = self.attention_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"attention_dropout must be a probability in [0, 1), got {p!r}")
        if self.residual_mode not in RESIDUAL_MODES:
            raise ValueError(f"residual_mode must be one of {list(RESIDUAL_MODES)}, got {self.residual_mode!r}")
        if not isinstance(self.n_streams, int) or self.n_streams < 1:
            raise ValueError(f"n_streams must be an integer >= 1, got {self.n_streams!r}")
        if self.n_streams > MAX_STREAMS:
            raise ValueError(f"n_streams must be <= {MAX_STREAMS}, got {self.n_streams}")
        if not isinstance(self.sinkhorn_iters, int) or self.sinkhorn_iters < 0:
            raise ValueError(f"sinkhorn_iters must be an integer >= 0, got {self.sinkhorn_iters!r}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size}); "
                "set head_dim explicitly otherwise"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide num_attention_heads ({self.num_attention_heads})"
            )
        if (self.head_dim or self.hidden_size // self.num_attention_heads) % 2 != 0:
            raise ValueError("head_dim must be even for rotary embeddings")
        if self.mhc_init not in MHC_INITS:
            raise ValueError(f"mhc_init must be one of {list(MHC_INITS)}, got {self.mhc_init!r}")
        self._validate_variants()

    def _validate_variants(self) -> None:
        """mixing_recompute, h_res_map, block_norm: valid values, and only where the mode says they mean
        something (its capability flags); then the mode's own rules (`ResidualMode.validate`)."""
        mode = get_residual_mode(self.residual_mode)
        name = self.residual_mode
        if self.mixing_recompute not in MIXING_RECOMPUTES:
            raise ValueError(f"mixing_recompute must be one of {list(MIXING_RECOMPUTES)}, got {self.mixing_recompute!r}")
        if self.mixing_recompute != "none" and not mode.stream_mixing:
            raise ValueError(f"mixing_recompute={self.mixing_recompute!r} applies to residual_mode "
                             f"{' or '.join(modes_with('stream_mixing'))} only (got {name!r}, which has no stream "
                             "mixing to recompute); use 'none'")
        if self.mixing_recompute_layers is not None:
            L_r = self.mixing_recompute_layers
            if not isinstance(L_r, int) or isinstance(L_r, bool) or L_r < 1:
                raise ValueError(f"mixing_recompute_layers must be a positive integer (or null for the paper's "
                                 f"sqrt(n L / (n + 2))), got {L_r!r}")
            if self.mixing_recompute != "block":
                raise ValueError(f"mixing_recompute_layers={L_r} only applies to mixing_recompute='block' "
                                 f"(got {self.mixing_recompute!r})")
        if self.h_res_map not in H_RES_MAPS:
            raise ValueError(f"h_res_map must be one of {list(H_RES_MAPS)}, got {self.h_res_map!r}")
        if self.h_res_map != DEFAULT_H_RES_MAP and not mode.uses_h_res_map:
            raise ValueError(f"h_res_map={self.h_res_map!r} applies to residual_mode "
                             f"{' or '.join(repr(m) for m in modes_with('uses_h_res_map'))} only (got {name!r})")
        if self.block_norm not in BLOCK_NORMS:
            raise ValueError(f"block_norm must be one of {list(BLOCK_NORMS)}, got {self.block_norm!r}")
        if self.block_norm == "post" and not mode.supports_post_norm:
            raise ValueError(f"block_norm='post' is defined for residual_mode {' and '.join(modes_with('supports_post_norm'))}, "
                             f"not {name!r}: normalising after the stream mixing would rescale every stream and undo "
                             "the gain bound that H_res is built for; use block_norm='pre'")
        mode.validate(self)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """HF's save, plus the source of a mode registered from outside this folder (`write_plugin_modes`)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_plugin_modes(save_directory, self.residual_mode)
        return out

    @property
    def resolved_recompute_layers(self) -> int:
        """L_r of mixing_recompute='block': the configured value, else round(sqrt(n L / (n + 2))) (mHC paper)."""
        if self.mixing_recompute_layers is not None:
            return self.mixing_recompute_layers
        n, L = self.n_streams, self.num_hidden_layers
        return max(1, min(L, round(math.sqrt(n * L / (n + 2)))))

    @property
    def streams(self) -> int:
        """Residual streams actually carried: n_streams for hc/mhc, 1 otherwise (the mode's `streams`)."""
        return get_residual_mode(self.residual_mode)(self).streams

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads
