"""model.mixing_recompute: gradients equal `none` bit for bit on CPU, memory is saved.

Reference path here; the fused kernels (Triton interpreter) in tests/kernels/test_recompute_kernels.py,
a resume from a checkpoint in tests/train/test_recompute_resume.py."""

import pytest
import torch

from mhc_lm.model import MhcLmForCausalLM
from tests.model.helpers import loss_and_grads, perturbed, tiny_config

SETTINGS = [("sublayer", None), ("block", None), ("block", 1), ("block", 3)]  # L_r None = paper default (2 here)


def _model(mode, recompute="none", layers=None, **kw):
    torch.manual_seed(0)
    return perturbed(MhcLmForCausalLM(tiny_config(mode, mixing_recompute=recompute, mixing_recompute_layers=layers,
                                                  mhc_init="identity", sinkhorn_iters=6, **kw)))


def _step(model, bf16=False):
    return loss_and_grads(model, torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1)), bf16)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_gradients_equal_none_bit_for_bit(mode, bf16):
    loss_ref, grads_ref = _step(_model(mode), bf16)
    for recompute, layers in SETTINGS:
        loss, grads = _step(_model(mode, recompute, layers), bf16)
        assert torch.equal(loss, loss_ref), (recompute, layers)
        for name, g in grads_ref.items():
            assert torch.equal(grads[name], g), f"{recompute} L_r={layers}: {name}"


def test_static_hc_and_layer_checkpointing_equal_none():
    loss_ref, grads_ref = _step(_model("hc", hc_dynamic=False))
    loss, grads = _step(_model("hc", "block", hc_dynamic=False))
    assert torch.equal(loss, loss_ref) and all(torch.equal(grads[n], g) for n, g in grads_ref.items())
    # the trainer's activation checkpointing wraps each layer: recompute runs the plain mixing inside it
    for recompute in ("none", "sublayer", "block"):
        model = _model("mhc", recompute)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        loss, grads = _step(model)
        ref_loss, ref_grads = _step(_model("mhc"))
        assert torch.equal(loss, ref_loss) and all(torch.equal(grads[n], g) for n, g in ref_grads.items()), recompute


def saved_bytes(model, bf16=False) -> int:
    """Bytes of the tensors autograd saves for backward in one forward, deduplicated by storage,
    parameters excluded (the method of benchmarks/memory.py)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(3, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(ids, labels=ids)
    del out
    return sum(seen.values())


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_recompute_saves_memory(mode, bf16):
    """Deterministic saved-tensor byte counts: none > sublayer > block (L_r = 2) > block (L_r = 4)."""
    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4)
    none, sub = saved_bytes(_model(mode, **kw), bf16), saved_bytes(_model(mode, "sublayer", **kw), bf16)
    block2, block4 = (saved_bytes(_model(mode, "block", L, **kw), bf16) for L in (2, 4))
    assert none > sub > block2 > block4, (none, sub, block2, block4)
    # sublayer keeps one fp32 copy of the n streams per sub-layer; block one per L_r layers
    N, n, C, L = 2 * 16, 4, 64, 4
    stream = N * n * C * 4
    assert sub - block2 == stream * (2 * L - L // 2), (sub, block2)
    assert block2 - block4 == stream * (L // 2 - L // 4)
    assert saved_bytes(_model(mode, "sublayer", **kw), bf16) == sub  # deterministic


def test_no_grad_and_generation_unaffected():
    model = _model("mhc", "block").eval()
    ref = _model("mhc").eval()
    ids = torch.randint(3, 97, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=0, rtol=0)
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False),
                       ref.generate(ids, max_new_tokens=4, do_sample=False))


def test_block_state_is_released_after_backward():
    from mhc_lm.model import recompute as rc

    blocks = []
    real = rc.RecomputeBlock.__init__

    def spy(self):
        real(self)
        blocks.append(self)

    rc.RecomputeBlock.__init__ = spy
    try:
        _step(_model("mhc", "block", 2))
    finally:
        rc.RecomputeBlock.__init__ = real
    assert len(blocks) == 2  # 4 layers / L_r 2
    for b in blocks:  # nothing of the block outlives its backward (the loss may stay referenced)
        assert b.x0 is None and not b.steps and not b.cache
