"""Mixing recompute for hc / mhc (`model.mixing_recompute`; mHC, arXiv 2512.24880, section 4.3).

What each n-stream sub-layer keeps for backward, per token (N tokens, n streams, width C):

    none      x (n C), the coefficient path's intermediates, H, and f (C) for post + residual
    sublayer  x (n C), H_res, H_post (n^2 + n) and f (C); the coefficients, the Sinkhorn projection
              and the pre-mix are recomputed in backward from x (`_RecomputedMixIn`)
    block     as sublayer, but x only for the first sub-layer of every L_r layers: inside the block
              the streams are rebuilt in backward from x_{l0} with the kept f, H_res, H_post,
              x_{k+1} = post_res(x_k, f_k, H_res_k, H_post_k) (`RecomputeBlock`)

F's own activations are F's business (plain autograd or the trainer's layer checkpointing).

    layer l0 ──► [mix-in] ─► F ─► [post+res] ──► ... ──► layer l0 + L_r
                 x_{l0} kept      f, H kept     x_k (k > 0) dropped, rebuilt in backward

Gradients equal those of `none` bit for bit on CPU: the recomputed ops are the same ops on the
same values (deterministic), and the `none` path groups the stream gradient the same way
(`mix_in` takes the coefficient + pre-mix path through one alias of x, as the recomputing node
does; with two consumers, x's gradient sum is then order-independent).
"""

from __future__ import annotations

from typing import Callable

import torch

SUBLAYER = "sublayer"


class RecomputeBlock:
    """The stream state of one block of consecutive sub-layers (block recompute).

    Forward: sub-layer k records (f_k, H_res_k, H_post_k) and the post + residual function; k = 0
    also its input x_0, the only stream the block stores. Backward walks the block last to first:
    the first request rebuilds x_1..x_k from x_0 (one post + residual each, no graph) and caches
    them; each is dropped once both of its sub-layer's nodes are done, so at most one block of
    streams is alive at a time, as in the paper."""

    def __init__(self) -> None:
        self.x0: torch.Tensor | None = None
        self.steps: dict[int, tuple] = {}
        self.cache: dict[int, torch.Tensor] = {}

    def stream(self, k: int) -> "StreamRef":
        return StreamRef(self, k)

    def rebuild(self, k: int) -> torch.Tensor:
        if k in self.cache:
            return self.cache[k]
        if k == 0:
            return self.x0
        j = max([i for i in self.cache if i < k], default=0)
        x = self.cache.get(j, self.x0)
        if x is None:
            raise RuntimeError("block mixing recompute: stream already released (backward through the graph twice? "
                               "use mixing_recompute='sublayer' or 'none' with retain_graph)")
        with torch.no_grad():
            for i in range(j, k):
                f_out, h_res, h_post, forward_fn = self.steps[i]
                x = forward_fn(x, f_out, h_res, h_post)
                self.cache[i + 1] = x
        return x


class StreamRef:
    """Sub-layer k's view of its block: the stream x_k, stored (k = 0) or rebuilt."""

    def __init__(self, block: RecomputeBlock, k: int):
        self.block, self.k = block, k

    @property
    def stored(self) -> bool:
        return self.k == 0

    def record_step(self, x, f_out, h_res, h_post, forward_fn) -> None:
        if self.k == 0:
            self.block.x0 = x.detach()
        self.block.steps[self.k] = (f_out.detach(), h_res.detach(), h_post.detach(), forward_fn)

    def get(self) -> torch.Tensor:
        return self.block.rebuild(self.k)

    def release_step(self) -> None:
        """post + residual k is done: x_{k+1} was consumed, its recipe is no longer needed."""
        self.block.steps.pop(self.k, None)

    def release_input(self) -> None:
        """mix-in k is done: nothing needs x_k any more."""
        if self.k == 0:
            self.block.x0 = None
        self.block.cache.pop(self.k, None)


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _RecomputedMixIn(torch.autograd.Function):
    """run(x, *params) -> (layer input, H_res, H_post) as one node that saves only x (or, inside a
    block, nothing: x is rebuilt) and the parameters; backward re-runs `run` with a graph, under
    the forward's autocast state, and differentiates it."""

    @staticmethod
    def forward(ctx, run, stream, x, *params):
        ctx.run, ctx.stream = run, stream
        ctx.autocast = _autocast_state(x.device.type)
        keep_x = stream is None or stream.stored
        ctx.save_for_backward(x if keep_x else None, *params)
        outs = run(x, *params)
        # outputs may be views of the inputs (HC's static weights expanded); hand out own memory
        return tuple(o.clone() if o._base is not None else o for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        x, *params = ctx.saved_tensors
        stream = ctx.stream
        if x is None:
            x = stream.get()
        inputs = [x.detach().requires_grad_(ctx.needs_input_grad[2])]
        inputs += [p.detach().requires_grad_(need) for p, need in zip(params, ctx.needs_input_grad[3:])]
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
            outs = ctx.run(*inputs)
        wanted = [t for t in inputs if t.requires_grad]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
                   if pairs and wanted else [None] * len(wanted))
        result = [next(got) if t.requires_grad else None for t in inputs]
        if stream is not None:
            stream.release_input()
        ctx.run = ctx.stream = None
        return (None, None, *result)


def mix_in(run: Callable, x: torch.Tensor, params: tuple, recompute) -> tuple[torch.Tensor, ...]:
    """The coefficient + pre-mix path of one sub-layer: run(x, *params) -> (layer input, H_res, H_post),
    returned with the stream post + residual reads: x, or without recompute the view of x that an
    op with a fused stream gradient hands out (`StreamConnection._mix_in`).

    recompute: None (keep everything), SUBLAYER, or the sub-layer's `StreamRef` (block)."""
    if recompute is None or not torch.is_grad_enabled():
        # one alias of x: the same gradient grouping as the recomputing node
        layer_in, h_res, h_post, x_post = run(x.view_as(x), *params, stream_grad=True)
        return layer_in, h_res, h_post, x if x_post is None else x_post
    stream = recompute if isinstance(recompute, StreamRef) else None
    return (*_RecomputedMixIn.apply(run, stream, x, *params), x)


def stream_of(recompute) -> StreamRef | None:
    """The block stream reference post + residual needs, if any."""
    return recompute if isinstance(recompute, StreamRef) else None


class RecomputePlan:
    """What each layer's two sub-layers get, for one forward pass (built by the model).

    mode "sublayer": every sub-layer gets SUBLAYER. mode "block": layers are grouped by L_r;
    sub-layer s of layer l gets its block's StreamRef at k = 2 (l mod L_r) + s. Layers that the
    trainer checkpoints as a whole get None: the layer checkpoint already recomputes all of the
    layer from its stored input, so the plain mixing runs inside it."""

    def __init__(self, mode: str, layers_per_block: int):
        self.mode, self.layers_per_block = mode, layers_per_block
        self.block: RecomputeBlock | None = None

    def for_layer(self, layer_idx: int, checkpointed: bool):
        if self.mode == "none" or checkpointed or not torch.is_grad_enabled():
            self.block = None  # a checkpointed layer's input is stored by the checkpoint: a block restarts after it
            return None
        if self.mode == SUBLAYER:
            return (SUBLAYER, SUBLAYER)
        if layer_idx % self.layers_per_block == 0 or self.block is None:
            self.block, self.first = RecomputeBlock(), layer_idx
        k = 2 * (layer_idx - self.first)
        return (self.block.stream(k), self.block.stream(k + 1))
