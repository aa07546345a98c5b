"""Sinkhorn-Knopp on CPU as numba loops: the maths of `mhc_lm.model.sinkhorn.sinkhorn_reference`.

Tokens last, (n, n, M), in blocks of `BLOCK` tokens: every loop over the block is contiguous and
vectorises, and a block's iterates stay in L1/L2. The forward keeps one (n, n, BLOCK) tile; the
backward re-runs the iteration storing every iterate of the block (2 iters x n^2 x BLOCK values)
and walks it back:

    P = softmax_rows(L) + eps;  P /= colsum(P) + eps;  (iters - 1) x [rows, then columns]
    normalisation p_out = p / (s + eps):   dp = (g - sum(g * p_out)) / (s + eps)
    row softmax S:                         dL = S * (g - sum_row(g * S))

Each division by (s + eps) is one reciprocal and n multiplies (the reference divides: the two
differ by one rounding per normalisation). Blocks are independent, so the result does not depend
on the thread count.
"""

from __future__ import annotations

import numba as nb
import numpy as np

BLOCK = 64


@nb.njit(cache=True, inline="always")
def _softmax_rows(lt, t0, w, p, soft):
    """p[i, j, b] = softmax_j(lt[i, :, t0 + b]); soft keeps it when given (backward)."""
    n = lt.shape[0]
    mx = np.empty(w, lt.dtype)
    s = np.empty(w, lt.dtype)
    for i in range(n):
        for b in range(w):
            mx[b] = lt[i, 0, t0 + b]
        for j in range(1, n):
            for b in range(w):
                mx[b] = max(mx[b], lt[i, j, t0 + b])
        for b in range(w):
            s[b] = 0
        for j in range(n):
            for b in range(w):
                e = np.exp(lt[i, j, t0 + b] - mx[b])
                p[i, j, b] = e
                s[b] += e
        for b in range(w):
            s[b] = s.dtype.type(1) / s[b]
        for j in range(n):
            for b in range(w):
                p[i, j, b] *= s[b]


@nb.njit(cache=True, inline="always")
def _normalise(src, dst, den, dim, eps, w):
    """dst = src / (sum_dim src + eps); den = that denominator (n, w), then its reciprocal is used.
    dim 0 = columns (sum over the first axis), 1 = rows."""
    n = src.shape[0]
    rec = np.empty(w, src.dtype)
    if dim == 0:
        for a in range(n):
            for b in range(w):
                den[a, b] = src[0, a, b]
            for k in range(1, n):
                for b in range(w):
                    den[a, b] += src[k, a, b]
            for b in range(w):
                den[a, b] += eps
        for a in range(n):
            for b in range(w):
                rec[b] = den.dtype.type(1) / den[a, b]
            for k in range(n):
                for b in range(w):
                    dst[k, a, b] = src[k, a, b] * rec[b]
    else:
        for a in range(n):
            for b in range(w):
                den[a, b] = src[a, 0, b]
            for k in range(1, n):
                for b in range(w):
                    den[a, b] += src[a, k, b]
            for b in range(w):
                den[a, b] += eps
            for b in range(w):
                rec[b] = den.dtype.type(1) / den[a, b]
            for k in range(n):
                for b in range(w):
                    dst[a, k, b] = src[a, k, b] * rec[b]


@nb.njit(cache=True, inline="always")
def _walk_back_columns(g, out, den, acc, rec, w, tiny):
    """g <- (g - colsum(g * out)) / den, in place: the VJP of a column normalisation."""
    n = g.shape[0]
    for a in range(n):
        for b in range(w):
            acc[b] = g[0, a, b] * out[0, a, b]
        for q in range(1, n):
            for b in range(w):
                acc[b] += g[q, a, b] * out[q, a, b]
        for b in range(w):
            rec[b] = den.dtype.type(1) / den[a, b]
        for q in range(n):
            for b in range(w):
                v = (g[q, a, b] - acc[b]) * rec[b]
                g[q, a, b] = v if abs(v) >= tiny else v * g.dtype.type(0)


@nb.njit(cache=True, inline="always")
def _walk_back_rows(g, out, den, acc, rec, w, tiny):
    """g <- (g - rowsum(g * out)) / den, in place: the VJP of a row normalisation."""
    n = g.shape[0]
    for a in range(n):
        for b in range(w):
            acc[b] = g[a, 0, b] * out[a, 0, b]
        for q in range(1, n):
            for b in range(w):
                acc[b] += g[a, q, b] * out[a, q, b]
        for b in range(w):
            rec[b] = den.dtype.type(1) / den[a, b]
        for q in range(n):
            for b in range(w):
                v = (g[a, q, b] - acc[b]) * rec[b]
                g[a, q, b] = v if abs(v) >= tiny else v * g.dtype.type(0)


@nb.njit(parallel=True, cache=True)
def sinkhorn_forward(lt, iters, eps, out):
    """out (n, n, M) = the projection of lt (n, n, M)."""
    n, M = lt.shape[0], lt.shape[2]
    for blk in nb.prange((M + BLOCK - 1) // BLOCK):
        t0 = blk * BLOCK
        w = min(BLOCK, M - t0)
        p = np.empty((n, n, BLOCK), lt.dtype)
        den = np.empty((n, BLOCK), lt.dtype)
        _softmax_rows(lt, t0, w, p, p)
        for i in range(n):
            for j in range(n):
                for b in range(w):
                    p[i, j, b] += eps
        if iters == 0:
            _normalise(p, p, den, 0, 0 * eps, w)
        else:
            _normalise(p, p, den, 0, eps, w)
            for _ in range(iters - 1):
                _normalise(p, p, den, 1, eps, w)
                _normalise(p, p, den, 0, eps, w)
        for i in range(n):
            for j in range(n):
                for b in range(w):
                    out[i, j, t0 + b] = p[i, j, b]


@nb.njit(parallel=True, cache=True)
def sinkhorn_backward(lt, g_in, iters, eps, tiny, dl):
    """dl (n, n, M) = dL/d logits for g_in = dL/d output, all tokens last."""
    n, M = lt.shape[0], lt.shape[2]
    steps = 1 if iters == 0 else 2 * iters - 1  # normalisations after the softmax
    for blk in nb.prange((M + BLOCK - 1) // BLOCK):
        t0 = blk * BLOCK
        w = min(BLOCK, M - t0)
        soft = np.empty((n, n, BLOCK), lt.dtype)
        ps = np.empty((steps + 1, n, n, BLOCK), lt.dtype)  # ps[k]: input of normalisation k; ps[steps]: output
        dens = np.empty((steps, n, BLOCK), lt.dtype)
        _softmax_rows(lt, t0, w, soft, soft)
        for i in range(n):
            for j in range(n):
                for b in range(w):
                    ps[0, i, j, b] = soft[i, j, b] + eps
        for k in range(steps):
            dim = 0 if k % 2 == 0 else 1
            _normalise(ps[k], ps[k + 1], dens[k], dim, eps if iters > 0 else 0 * eps, w)
        g = np.empty((n, n, BLOCK), lt.dtype)
        acc = np.empty(BLOCK, lt.dtype)
        for i in range(n):
            for j in range(n):
                for b in range(w):
                    g[i, j, b] = g_in[i, j, t0 + b]
        rec = np.empty(BLOCK, lt.dtype)
        for k in range(steps - 1, -1, -1):
            if k % 2 == 0:
                _walk_back_columns(g, ps[k + 1], dens[k], acc, rec, w, tiny)
            else:
                _walk_back_rows(g, ps[k + 1], dens[k], acc, rec, w, tiny)
        for i in range(n):  # row softmax
            for b in range(w):
                acc[b] = 0
            for j in range(n):
                for b in range(w):
                    acc[b] += g[i, j, b] * soft[i, j, b]
            for j in range(n):
                for b in range(w):
                    v = soft[i, j, b] * (g[i, j, b] - acc[b])
                    dl[i, j, t0 + b] = v if abs(v) >= tiny else v * g.dtype.type(0)
