"""Tiny models and batches shared by the metrics tests."""

import torch

from mhc_lm.model import MhcLmConfig, MhcLmForCausalLM


def tiny(mode: str, layers: int = 2, **overrides) -> MhcLmForCausalLM:
    torch.manual_seed(0)
    kwargs = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                  residual_mode=mode, n_streams=2, grid_size=1, sinkhorn_iters=5)
    return MhcLmForCausalLM(MhcLmConfig(**{**kwargs, **overrides}))


def batch(seed: int = 0) -> dict:
    ids = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
