"""The mhc-lm model: config, base model, causal-LM and sequence-classification heads.

This folder is also what `save_pretrained` copies next to the weights, so its modules import
each other only relatively (`from .x import y`) and nothing else from `mhc_lm`.
"""

from .configuration_mhc_lm import MhcLmConfig
from .fused_ops import FUSED_OPS, sinkhorn
from .h_res_maps import H_RES_MAPS, get_h_res_map
from .modeling_mhc_lm import (
    MhcLmForCausalLM,
    MhcLmForSequenceClassification,
    MhcLmModel,
    MhcLmPreTrainedModel,
)
from .residual_mode import ResidualMode
from .residual_modes import RESIDUAL_MODES, get_residual_mode, register_residual_mode

__all__ = [
    "RESIDUAL_MODES",
    "ResidualMode",
    "get_residual_mode",
    "register_residual_mode",
    "H_RES_MAPS",
    "get_h_res_map",
    "FUSED_OPS",
    "MhcLmConfig",
    "MhcLmModel",
    "MhcLmPreTrainedModel",
    "MhcLmForCausalLM",
    "MhcLmForSequenceClassification",
    "sinkhorn",
]
