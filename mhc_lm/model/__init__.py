"""The mhc-lm model: config, base model, causal-LM and sequence-classification heads.

This folder is also what `save_pretrained` copies next to the weights, so its modules import
each other only relatively (`from .x import y`) and nothing else from `mhc_lm`.
"""

from .configuration_mhc_lm import RESIDUAL_MODES, MhcLmConfig
from .h_res_maps import H_RES_MAPS, get_h_res_map
from .modeling_mhc_lm import (
    MhcLmForCausalLM,
    MhcLmForSequenceClassification,
    MhcLmModel,
    MhcLmPreTrainedModel,
)
from .sinkhorn import sinkhorn

__all__ = [
    "RESIDUAL_MODES",
    "H_RES_MAPS",
    "get_h_res_map",
    "MhcLmConfig",
    "MhcLmModel",
    "MhcLmPreTrainedModel",
    "MhcLmForCausalLM",
    "MhcLmForSequenceClassification",
    "sinkhorn",
]
