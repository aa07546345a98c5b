"""Mixing recompute with the fused kernels (Triton interpreter on CPU): every setting gives the
gradients of `none` on the same kernels, fp32 and bf16 autocast."""

import pytest
import torch

pytest.importorskip("triton")

from mhc_lm.model import MhcLmForCausalLM  # noqa: E402
from tests.kernels.test_custom_ops import _kernels_on_cpu  # noqa: E402
from tests.model.helpers import loss_and_grads, perturbed, tiny_config  # noqa: E402


def _run(mode, recompute, layers, bf16):
    torch.manual_seed(0)
    model = perturbed(MhcLmForCausalLM(tiny_config(
        mode, vocab_size=61, hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, sinkhorn_iters=6, mhc_init="identity",
        fused_kernels=True, mixing_recompute=recompute, mixing_recompute_layers=layers)))
    ids = torch.randint(3, 61, (2, 64), generator=torch.Generator().manual_seed(1))  # 128 tokens: one program
    return loss_and_grads(model, ids, bf16)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_recompute_with_fused_kernels_equals_none(monkeypatch, mode, bf16):
    calls = _kernels_on_cpu(monkeypatch)
    loss_ref, grads_ref = _run(mode, "none", None, bf16)
    assert {"pre_mix", "post_res", "post_res_backward"} <= set(calls)
    for recompute, layers in (("sublayer", None), ("block", 2)):
        loss, grads = _run(mode, recompute, layers, bf16)
        assert torch.equal(loss, loss_ref)
        for name, g in grads_ref.items():  # the interpreter is deterministic on CPU: bit for bit
            assert torch.equal(grads[name], g), f"{recompute}: {name}"
