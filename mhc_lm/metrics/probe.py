"""One probe pass on a fixed batch: Amax gains, per-layer RMS, vanished-gradient ratio.

Shared by the online callback (`mhc_lm.metrics.callbacks`) and the offline checkpoint probe
(`python -m evals.stability`), so both report the same quantities under the same names.

One forward (with mixing matrices recorded and each decoder layer's output captured by a
forward hook) and one backward via `torch.autograd.grad` (the gradient at each layer output is
read by a tensor hook and kept only as its RMS), which returns gradients without
writing `.grad`: the training gradients and the optimizer are untouched, and DDP's
gradient-reduction hooks (which sit on `.grad` accumulation) never fire. Run it on the
unwrapped model (`trainer.unwrapped_model`); under FSDP pass the wrapped model as
`forward_model` (outside FSDP's forward the root unit's parameters are flat 1-D shards). Under
DeepSpeed ZeRO-3 or FSDP the parameters are partitioned and this view is not the full model: the
callback skips the gradient part there.

Memory: the probe keeps the model's activation checkpointing on (Hugging Face checkpoints a
layer only in training mode, and the probe runs in eval mode), so its forward + backward hold no
more activations than a training micro-batch of the same shape.

Names (see docs/stability.md):
    amax/{fwd,bwd}/layer_XX, amax/{fwd,bwd}/composite[_max], amax/inf_norm/composite
    spectral/composite[_max]   spectral norm of the composite mixing (the gain of orthogonal maps)
    rms/act/layer_XX   RMS of the residual stream after layer XX (all n streams for hc/mhc)
    rms/grad/layer_XX  RMS of dLoss/d(residual stream after layer XX)
    vanished/1e-04 ... vanished/1e-07, grad_std, probe/loss
    vanished_backbone/1e-04 ..., grad_std_backbone   the same without hc/mhc mixing parameters
    streams/..., h_res/...   hc/mhc stream diversity and distances of H_res from I and J/n (`streams.py`)
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from .amax import mixing_amax_metrics
from .streams import stream_metrics
from .vanished import vanished_counts, vanished_from_counts


MIXING_MARK = "_mixing."
"""Substring of every hc/mhc mixing parameter name (`layers.N.attn_mixing.*`, `layers.N.mlp_mixing.*`)."""


def base_model(model: nn.Module) -> nn.Module:
    """The MhcLmModel inside an MhcLmForCausalLM (or the model itself)."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise TypeError(f"{type(model).__name__} has no .model.layers: expected an MhcLmForCausalLM (docs/CONTRACTS.md)")
    return inner


def gradient_params(model: nn.Module, exclude: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters counted by the vanished ratio (tied weights once), minus `exclude` substrings."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and not any(x in n for x in exclude)]


def probe_model(
    model: nn.Module,
    batch: dict,
    eps: Sequence[float] = (1e-4, 1e-5, 1e-6, 1e-7),
    exclude: Sequence[str] = ("embed_tokens", "lm_head"),
    amax: bool = True,
    gradients: bool = True,
    reduce_counts=None,
    forward_model: nn.Module | None = None,
    streams: bool = True,
) -> dict[str, float]:
    """Probe metrics of `model` (an MhcLmForCausalLM) on batch {"input_ids", "labels"} (B, T).

    labels are next-token targets (already shifted, as WindowLoader yields them).
    reduce_counts: optional callable summing a tensor over ranks (vanished counts of every
    rank's probe batch are then pooled); it must be called on every rank.
    forward_model: what to call for the forward (default `model`), e.g. the FSDP-wrapped model;
    hooks and parameters are still read from `model`.
    streams: also the hc/mhc stream telemetry of `streams.py` (H_res distances need `amax`, which records H_res).
    """
    inner = base_model(model)
    mixers = list(inner.mixing_modules()) if (amax and hasattr(inner, "mixing_modules")) else []
    outputs: list[torch.Tensor | None] = [None] * len(inner.layers)

    def capture(idx):
        def hook(module, args, output):
            outputs[idx] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [layer.register_forward_hook(capture(i)) for i, layer in enumerate(inner.layers)]
    for m in mixers:
        m.record_mixing = True
    metrics: dict[str, float] = {}
    try:
        grad_ctx = torch.enable_grad() if gradients else torch.no_grad()
        with grad_ctx, checkpointing_kept_on(model if gradients else None):
            loss = (forward_model or model)(input_ids=batch["input_ids"], shift_labels=batch["labels"],
                                            use_cache=False).loss
        mats = [m.last_mixing for m in mixers]
    finally:
        for h in handles:
            h.remove()
        for m in mixers:
            m.record_mixing = False
            m.last_mixing = None
    metrics["probe/loss"] = loss.detach().float()

    if amax:
        if mats and all(m is not None for m in mats):
            metrics.update(mixing_amax_metrics(mats))
        elif not mixers:  # standard / grid: the residual is the identity (grid merges are means: row sums 1)
            metrics.update({"amax/fwd/composite": 1.0, "amax/bwd/composite": 1.0, "spectral/composite": 1.0})

    if streams:
        metrics.update(stream_metrics(outputs, mats if (amax and all(m is not None for m in mats)) else ()))

    for i, out in enumerate(outputs):
        if out is not None:
            metrics[f"rms/act/layer_{i:02d}"] = out.detach().float().pow(2).mean().sqrt()

    if gradients:
        params = gradient_params(model, exclude)
        acts = [(i, o) for i, o in enumerate(outputs) if o is not None and o.requires_grad]
        # dLoss/d(layer output) is reduced to its RMS as backward produces it (a tensor hook), so
        # the probe never holds the L activation-sized gradients at once
        act_rms: dict[int, torch.Tensor] = {}

        def rms_of(idx):
            def hook(grad):
                act_rms[idx] = grad.detach().float().pow(2).mean().sqrt()
            return hook

        handles = [o.register_hook(rms_of(i)) for i, o in acts]
        try:
            grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        pgrads = [g if g is not None else torch.zeros_like(p) for g, (_, p) in zip(grads, params)]
        # also over the block F and embeddings only (no hc/mhc mixing parameters), so that the
        # modes are compared on the parameters they share: mHC's phi gradients are tiny by design.
        # Each gradient is counted once: all = backbone + mixing.
        backbone = vanished_counts([g for g, (name, _) in zip(pgrads, params) if MIXING_MARK not in name], eps)
        mixing = [g for g, (name, _) in zip(pgrads, params) if MIXING_MARK in name]
        total = backbone + vanished_counts(mixing, eps) if mixing else backbone
        counts = torch.cat([total, backbone])
        if reduce_counts is not None:
            counts = reduce_counts(counts)
        half = counts.numel() // 2
        metrics.update(vanished_from_counts(counts[:half], eps))
        metrics.update(vanished_from_counts(counts[half:], eps, prefix="vanished_backbone", std_key="grad_std_backbone"))
        for i, _ in acts:
            if i in act_rms:
                metrics[f"rms/grad/layer_{i:02d}"] = act_rms[i]
        del grads, pgrads

    # one host sync for all tensor-valued entries
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    if keys:
        values = torch.stack([metrics[k].reshape(()).float() for k in keys]).cpu().tolist()
        metrics.update(zip(keys, values))
    return metrics


@contextlib.contextmanager
def checkpointing_kept_on(model: nn.Module | None):
    """Layers with activation checkpointing enabled checkpoint even in eval mode.

    transformers' GradientCheckpointingLayer checkpoints only when the layer's own `training`
    flag is set; that one flag is set on those layers (not on their children, so attention
    dropout stays off), and restored after."""
    layers = []
    if model is not None:
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)
                  and m.gradient_checkpointing and not m.training]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m in layers:
            m.training = False


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Temporarily switch to eval mode (no dropout) and back to what it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
