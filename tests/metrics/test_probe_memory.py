"""Issue 16, finding 4: the gradient probe holds no more activations than a training micro-batch
of the same shape. The probe runs in eval mode, where Hugging Face layers skip activation
checkpointing; at the 1B shape that was ~56 GiB of activations at step 0.

The CPU test counts the bytes autograd saves for backward (a saved-tensors hook: deterministic,
no allocator involved); non-reentrant checkpointing saves inside a layer through its own hook,
so what the outer hook sees is what stays alive until backward."""

import pytest
import torch

from mhc_lm.metrics.probe import eval_mode, probe_model
from mhc_lm.train.distributed import apply_activation_checkpointing
from tests.metrics.helpers import tiny


def _ids(batch_size: int, seq: int, vocab: int = 64, seed: int = 0) -> dict:
    ids = torch.randint(3, vocab, (batch_size, seq + 1), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while `fn` runs (outside checkpointed regions)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def train_step_bytes(model, batch) -> int:
    model.train()

    def step():
        loss = model(input_ids=batch["input_ids"], shift_labels=batch["labels"]).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return saved_bytes(step)


def probe_bytes(model, batch) -> int:
    with eval_mode(model):
        return saved_bytes(lambda: probe_model(model, batch))


@pytest.mark.parametrize("mode", ["standard", "mhc"])
def test_probe_saves_no_more_than_a_training_step(mode):
    model = tiny(mode, layers=4, max_position_embeddings=64)
    apply_activation_checkpointing(model)
    batch = _ids(4, 64)
    train, probe = train_step_bytes(model, batch), probe_bytes(model, batch)
    # without checkpointing every layer's internals are saved: the probe used to hold ~6-10x more
    no_ckpt = tiny(mode, layers=4, max_position_embeddings=64)
    full = train_step_bytes(no_ckpt, batch)
    assert train * 3 < full, (train, full)  # the training step does checkpoint
    assert probe <= train, f"probe saves {probe} bytes for backward, a training micro-batch {train}"
    model.eval()
    probe_model(model, batch)
    assert not any(m.training for m in model.modules())  # the probe put the layers' flags back


def test_probe_values_unchanged_by_checkpointing():
    batch = _ids(2, 16)
    plain = tiny("mhc")
    ckpt = tiny("mhc")
    apply_activation_checkpointing(ckpt)
    with eval_mode(plain):
        want = probe_model(plain, batch)
    with eval_mode(ckpt):
        got = probe_model(ckpt, batch)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


@pytest.mark.gpu
def test_probe_peak_memory_at_most_a_training_step_on_gpu():
    """The same on CUDA with the allocator's peak: probe peak <= training-step peak (bf16 autocast)."""
    model = tiny("mhc", layers=8, hidden_size=256, intermediate_size=688, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, max_position_embeddings=1024).cuda()
    apply_activation_checkpointing(model)
    batch = {k: v.cuda() for k, v in _ids(4, 1024, vocab=4096).items()}

    def peak(fn) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    def step():
        model.train()
        model(input_ids=batch["input_ids"], shift_labels=batch["labels"]).loss.backward()
        model.zero_grad(set_to_none=True)

    def probe():
        with eval_mode(model):
            probe_model(model, batch)

    step()  # warm-up (lazy allocations)
    train_peak, probe_peak = peak(step), peak(probe)
    assert probe_peak <= train_peak * 1.05, (probe_peak, train_peak)


def test_layer_gradient_rms_matches_autograd():
    """rms/grad/layer_XX (read by tensor hooks during the probe's backward) = RMS of
    torch.autograd.grad(loss, layer output), computed here directly."""
    model = tiny("mhc", layers=3)
    batch = _ids(2, 16)
    outs = []
    handles = [layer.register_forward_hook(lambda m, a, out: outs.append(out)) for layer in model.model.layers]
    loss = model(input_ids=batch["input_ids"], shift_labels=batch["labels"]).loss
    for h in handles:
        h.remove()
    want = [g.pow(2).mean().sqrt().item() for g in torch.autograd.grad(loss, outs)]
    got = probe_model(model, batch)
    for i, w in enumerate(want):
        assert got[f"rms/grad/layer_{i:02d}"] == pytest.approx(w, rel=1e-5), i
