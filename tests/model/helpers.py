"""Tiny configs and steps shared by the model tests."""


import torch

from mhc_lm.model import RESIDUAL_MODES, MhcLmConfig
from tests.threads import one_thread  # noqa: F401  (re-exported for the model tests)

MODES = tuple(RESIDUAL_MODES)  # the built-in modes (read before any test registers one)

# Cross-process comparisons (a model saved here, reloaded in a fresh process): both sides run torch
# on one thread, so the BLAS picks the same kernels and reduction order however loaded the machine
# is, and logits are compared with a tolerance far below what a wrong reload changes (a missing or
# re-initialised tensor moves logits by 1e-2 or more).
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
RELOAD_ATOL = 1e-5


def tiny_config(mode: str = "standard", **overrides) -> MhcLmConfig:
    kwargs = dict(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        residual_mode=mode, n_streams=4, grid_size=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(overrides)
    return MhcLmConfig(**kwargs)


def perturbed(model, scale=0.05, seed=1):
    """Move every parameter off its init (its own generator), so every mixing path carries signal and
    H_res is a generic point of the map's manifold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def loss_and_grads(model, ids, bf16=False):
    """One forward + backward with ids as their own labels: (loss, {name: grad})."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}
