"""Tiny configs shared by the model tests."""

from mhc_lm.model import MhcLmConfig

MODES = ("standard", "hc", "mhc", "grid")


def tiny_config(mode: str = "standard", **overrides) -> MhcLmConfig:
    kwargs = dict(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        residual_mode=mode, n_streams=4, grid_size=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(overrides)
    return MhcLmConfig(**kwargs)
