"""The CPU kernels as torch ops: same signatures, semantics and output dtypes as the references
in `mhc_lm.model.stream_ops` and `mhc_lm.model.sinkhorn`, numba loops inside (`sinkhorn.py`,
`stream_mix.py`). Computed as the references: Sinkhorn and pre-mix in float32 or float64 when
given, post + residual in float32 whatever the input; tensors are
handed to numba as zero-copy numpy views of contiguous CPU tensors."""

from __future__ import annotations

import numba
import torch

from . import sinkhorn as _sk
from . import stream_mix as _sm
from .cache_lock import run


def _threads() -> None:
    """numba's parallel loops use torch's intra-op thread count (`torch.set_num_threads`). numba's
    OpenMP pool, launched on first use, sets the OpenMP thread count that torch shares (torch's
    count read 2 after a kernel ran under `torch.set_num_threads(1)`): torch's is put back."""
    torch_threads = torch.get_num_threads()
    want = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


def _dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _np(t: torch.Tensor, dtype: torch.dtype):
    """A contiguous numpy view of t in dtype (a copy only when t is not already that)."""
    return t.detach().to(dtype).contiguous().numpy()


def _np_param(t: torch.Tensor, dtype: torch.dtype):
    """A numpy copy of a (small) parameter: `.numpy()` on the parameter's own memory would make its
    storage non-resizable, and FSDP resizes the storage of the flat parameter it lives in."""
    return t.detach().to(dtype, copy=True).numpy()


def apply_mix_in(function, x: torch.Tensor, args: tuple, stream_grad: bool):
    """function.apply(x, *args, through), autocast off: the mix-in ops' (`hc_ops`, `mhc_ops`) 3 outputs,
    or with `stream_grad` a fourth, the stream for post + residual to read: a view of x whose gradient
    the op's backward adds into x's, or None where x is not float32 or no graph is built (post +
    residual reads x itself)."""
    through = stream_grad and x.dtype == torch.float32 and torch.is_grad_enabled()
    with torch.autocast(device_type="cpu", enabled=False):
        outs = function.apply(x, *args, through)
    return (*outs, None) if stream_grad and not through else outs


def _tokens_last(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = logits.shape[-1]
    return logits.detach().to(dtype).reshape(-1, n, n).permute(1, 2, 0).contiguous()


def _scalar(value: float, dtype: torch.dtype):
    return torch.tensor(value, dtype=dtype).numpy()[()]  # numpy scalar of the compute dtype (no float64 promotion)


def _flush_below(dtype: torch.dtype) -> float:
    """Magnitude under which the Sinkhorn backward writes 0: tiny / eps (fp32: ~1e-31). Walking 2 iters
    normalisations back shrinks the part of g that the projection removes towards subnormals, which
    cost ~100x a normal value on x86 (the backward took 10x as long in the model); values this small
    are far below any gradient's rounding."""
    info = torch.finfo(dtype)
    return info.tiny / info.eps


def _sinkhorn_forward(logits, iters, eps):
    dtype = _dtype(logits)
    lt = _tokens_last(logits, dtype)
    out = torch.empty_like(lt)
    _threads()
    run(_sk.sinkhorn_forward, lt.numpy(), iters, _scalar(eps, dtype), out.numpy())
    return out.permute(2, 0, 1).reshape(logits.shape), lt


class _CpuSinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, iters, eps):
        out, lt = _sinkhorn_forward(logits, iters, eps)
        ctx.save_for_backward(lt)
        ctx.iters, ctx.eps = iters, eps
        return out

    @staticmethod
    def backward(ctx, grad):
        (lt,) = ctx.saved_tensors
        g = _tokens_last(grad, lt.dtype)
        dl = torch.empty_like(lt)
        _threads()
        run(_sk.sinkhorn_backward, lt.numpy(), g.numpy(), ctx.iters, _scalar(ctx.eps, lt.dtype),
                              _scalar(_flush_below(lt.dtype), lt.dtype), dl.numpy())
        return dl.permute(2, 0, 1).reshape(grad.shape), None, None


def cpu_sinkhorn(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """`sinkhorn_reference` (one autograd node, only the logits saved) with numba loops."""
    if iters < 0:
        raise ValueError(f"sinkhorn_iters must be >= 0, got {iters}")
    with torch.autocast(device_type="cpu", enabled=False):
        logits = logits.to(_dtype(logits))
        if not (torch.is_grad_enabled() and logits.requires_grad):
            return _sinkhorn_forward(logits, iters, eps)[0]
        return _CpuSinkhorn.apply(logits, iters, eps)


class _CpuPreMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h_pre):
        ctx.save_for_backward(x, h_pre)
        out = x.new_empty(x.shape[0], x.shape[2])
        _threads()
        run(_sm.pre_mix_forward, x.numpy(), h_pre.numpy(), out.numpy())
        return out

    @staticmethod
    def backward(ctx, grad):
        x, h_pre = ctx.saved_tensors
        dx, dh = torch.empty_like(x), torch.empty_like(h_pre)
        _threads()
        run(_sm.pre_mix_backward, x.numpy(), h_pre.numpy(), _np(grad, x.dtype), dx.numpy(), dh.numpy())
        return dx, dh


def cpu_pre_mix(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    """`pre_mix_reference`: x (N, n, C), h_pre (N, n) -> (N, C) in x's dtype, fp32 inside."""
    with torch.autocast(device_type="cpu", enabled=False):
        dtype = _dtype(x)
        out = _CpuPreMix.apply(x.to(dtype).contiguous(), h_pre.to(dtype).contiguous())
    return out.to(x.dtype)


def cpu_post_res(x, f_out, h_res, h_post):
    """`post_res_reference`'s forward (no graph: `stream_ops.post_res` is the autograd node); fp32
    inside whatever the input dtype, as the reference."""
    dtype = torch.float32
    out = torch.empty(x.shape, dtype=dtype)
    _threads()
    run(_sm.post_res_forward, _np(x, dtype), _np(f_out, dtype), _np(h_res, dtype), _np(h_post, dtype), out.numpy())
    return out.to(x.dtype)


def cpu_post_res_backward(x, f_out, h_res, h_post, grad):
    """`post_res_backward_reference`: (dx, df, dH_res, dh_post) in the inputs' dtypes, fp32 inside."""
    dtype = torch.float32
    dx = torch.empty(x.shape, dtype=dtype)
    df = torch.empty(f_out.shape, dtype=dtype)
    dh_res = torch.empty(h_res.shape, dtype=dtype)
    dh_post = torch.empty(h_post.shape, dtype=dtype)
    _threads()
    run(_sm.post_res_backward, _np(x, dtype), _np(f_out, dtype), _np(h_res, dtype), _np(h_post, dtype), _np(grad, dtype),
                          dx.numpy(), df.numpy(), dh_res.numpy(), dh_post.numpy())
    return dx.to(x.dtype), df.to(f_out.dtype), dh_res.to(h_res.dtype), dh_post.to(h_post.dtype)
